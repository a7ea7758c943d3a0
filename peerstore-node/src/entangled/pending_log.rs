//! The encoder's log of pending parities (module `later`): which acknowledged documents still
//! wait for their parities, so that a node restarted after a crash resumes storing them at once
//! instead of leaving them to the repair worker's grace (`later::grace_us`, ten minutes and
//! more by default).
//!
//! The log is an aid, not what durability rests on: each entry is appended with a plain
//! `write` (it survives the process being killed, as the page cache keeps it; not the machine
//! losing power, which would need an fsync per document), and a document whose entry is lost
//! has its parities rebuilt by the owners of its codeword records after the grace, as before.
//! So the log never slows a write down by a disk flush.
//!
//! Format: a sequence of entries, each `tag (1 byte: 1 = waits, 2 = stored) | document key
//! (32) | n (u16 LE) | n codeword record keys (32 each) | check (the first 8 bytes of the
//! BLAKE3 of everything before it in the entry)`. Replay stops at the first entry that is cut
//! short or fails its check (a write the crash interrupted); what follows is dropped. On open,
//! and whenever it has grown past [`COMPACT_AT`] and twice its last size while nothing was
//! being stored, the log is rewritten with only the documents that still wait (temporary
//! file, fsync, rename); it is emptied whenever the queue is.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use peerstore_proto::BlockKey;
use tracing::warn;

const TAG_WAITS: u8 = 1;
const TAG_STORED: u8 = 2;
/// Codeword records one entry may list (a 4 MiB document at B = 1 KiB and s = 4 has 1,024).
const MAX_RECORDS: usize = 1024;
/// The largest log read on open; a larger one is read this far (the rest is left to repair).
const MAX_LOG: u64 = 256 << 20;

/// Where a node keeps its log.
#[must_use]
pub fn file(data_dir: &Path) -> PathBuf {
    data_dir.join("pending-parities.log")
}

/// One entry's bytes.
fn entry(tag: u8, doc: &BlockKey, records: &[BlockKey]) -> Vec<u8> {
    let n = records.len().min(MAX_RECORDS);
    let mut out = Vec::with_capacity(1 + 32 + 2 + 32 * n + 8);
    out.push(tag);
    out.extend_from_slice(&doc.0);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    for r in &records[..n] {
        out.extend_from_slice(&r.0);
    }
    let check = blake3::hash(&out);
    out.extend_from_slice(&check.as_bytes()[..8]);
    out
}

fn key_at(bytes: &[u8], at: usize) -> Option<BlockKey> {
    let b: [u8; 32] = bytes.get(at..at + 32)?.try_into().ok()?;
    Some(BlockKey(b))
}

/// A document whose parities wait, with its codeword records.
pub type Waiting = (BlockKey, Vec<BlockKey>);

/// The documents that still wait, oldest first, with their codeword records, and the length
/// of the prefix of `bytes` made of whole, checked entries. Pure.
#[must_use]
pub fn replay(bytes: &[u8]) -> (Vec<Waiting>, usize) {
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut stored = std::collections::BTreeSet::new();
    let mut at = 0;
    while let Some(&tag) = bytes.get(at) {
        let Some(doc) = key_at(bytes, at + 1) else {
            break;
        };
        let Some(n) = bytes
            .get(at + 33..at + 35)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        else {
            break;
        };
        if n > MAX_RECORDS {
            break;
        }
        let body = at + 35 + 32 * n;
        let Some(check) = bytes.get(body..body + 8) else {
            break;
        };
        if blake3::hash(&bytes[at..body]).as_bytes()[..8] != *check {
            break;
        }
        match tag {
            TAG_WAITS => {
                let records = (0..n)
                    .filter_map(|i| key_at(bytes, at + 35 + 32 * i))
                    .collect();
                stored.remove(&doc);
                waiting.push((doc, records));
            }
            TAG_STORED => {
                stored.insert(doc);
            }
            _ => break,
        }
        at = body + 8;
    }
    // A document logged as stored after it was logged as waiting is done.
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (doc, records) in waiting.into_iter().rev() {
        if !stored.contains(&doc) && seen.insert(doc) {
            out.push((doc, records));
        }
    }
    out.reverse();
    (out, at)
}

/// The open log. Write errors are logged once and otherwise ignored (see the module docs).
#[derive(Debug)]
pub struct PendingLog {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Length past which the log is rewritten with only what waits ([`PendingLog::compact`]).
    compact_at: u64,
    warned: bool,
}

/// A log is rewritten once it is this long and twice what waited at its last rewrite: the
/// queue need not empty while clients keep writing, and the log would grow without bound.
const COMPACT_AT: u64 = 4 << 20;

/// Writes a log holding only `waiting` at `path` durably (the project's temporary file, fsync,
/// rename, fsync of the directory) and opens it for appending; returns it and its length.
fn rewrite<'a>(
    path: &Path,
    waiting: impl IntoIterator<Item = (&'a BlockKey, &'a [BlockKey])>,
) -> Result<(File, u64), String> {
    let mut fresh = Vec::new();
    for (doc, records) in waiting {
        fresh.extend(entry(TAG_WAITS, doc, records));
    }
    crate::identity::write_durable(path, &fresh, false).map_err(|e| format!("{e:#}"))?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((file, fresh.len() as u64))
}

impl PendingLog {
    /// Opens (or creates) the log at `path`, returns it and the documents that still wait.
    pub fn open(path: &Path) -> Result<(Self, Vec<Waiting>), String> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(f) => {
                f.take(MAX_LOG)
                    .read_to_end(&mut bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        let (waiting, _) = replay(&bytes);
        let (file, len) = rewrite(path, waiting.iter().map(|(d, r)| (d, r.as_slice())))?;
        Ok((
            PendingLog {
                path: path.to_path_buf(),
                file,
                len,
                compact_at: COMPACT_AT.max(2 * len),
                warned: false,
            },
            waiting,
        ))
    }

    fn append(&mut self, bytes: &[u8]) {
        match self.file.write_all(bytes) {
            Ok(()) => self.len += bytes.len() as u64,
            Err(e) => self.failed(&e.to_string()),
        }
    }

    fn failed(&mut self, e: &str) {
        if !self.warned {
            warn!(
                path = %self.path.display(),
                error = %e,
                "the log of pending parities cannot be written; after a crash the repair worker rebuilds them"
            );
            self.warned = true;
        }
    }

    /// Whether the log has grown enough to be rewritten ([`PendingLog::compact`]).
    #[must_use]
    pub fn wants_compaction(&self) -> bool {
        self.len > self.compact_at
    }

    /// Rewrites the log with only `waiting` (every document that still waits).
    pub fn compact<'a>(
        &mut self,
        waiting: impl IntoIterator<Item = (&'a BlockKey, &'a [BlockKey])>,
    ) {
        match rewrite(&self.path, waiting) {
            Ok((file, len)) => {
                self.file = file;
                self.len = len;
                self.compact_at = COMPACT_AT.max(2 * len);
            }
            Err(e) => {
                self.failed(&e);
                // Not again before it has grown as much once more.
                self.compact_at = self.len.saturating_mul(2);
            }
        }
    }

    /// Logs a document whose parities wait.
    pub fn waits(&mut self, doc: &BlockKey, records: &[BlockKey]) {
        self.append(&entry(TAG_WAITS, doc, records));
    }

    /// Logs documents whose parities are stored (or left to the repair worker).
    pub fn stored<'a>(&mut self, docs: impl IntoIterator<Item = &'a BlockKey>) {
        let mut bytes = Vec::new();
        for d in docs {
            bytes.extend(entry(TAG_STORED, d, &[]));
        }
        if !bytes.is_empty() {
            self.append(&bytes);
        }
    }

    /// Nothing waits any more: the log is emptied.
    pub fn clear(&mut self) {
        if self.len == 0 {
            return;
        }
        match self.file.set_len(0) {
            Ok(()) => self.len = 0,
            Err(e) => self.failed(&e.to_string()),
        }
    }

    /// Bytes in the file.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> BlockKey {
        BlockKey([b; 32])
    }

    #[test]
    fn replay_keeps_what_waits_in_order() {
        let mut log = Vec::new();
        log.extend(entry(TAG_WAITS, &k(1), &[k(11), k(12)]));
        log.extend(entry(TAG_WAITS, &k(2), &[k(21)]));
        log.extend(entry(TAG_WAITS, &k(3), &[]));
        log.extend(entry(TAG_STORED, &k(2), &[]));
        let (waiting, whole) = replay(&log);
        assert_eq!(whole, log.len());
        assert_eq!(
            waiting,
            vec![(k(1), vec![k(11), k(12)]), (k(3), vec![])],
            "stored documents are done"
        );
        // Logged as waiting again after it was stored (a write of the same record): waits.
        log.extend(entry(TAG_WAITS, &k(2), &[k(22)]));
        assert_eq!(replay(&log).0.last(), Some(&(k(2), vec![k(22)])));
    }

    #[test]
    fn replay_stops_at_a_cut_or_damaged_entry() {
        let mut log = Vec::new();
        log.extend(entry(TAG_WAITS, &k(1), &[k(11)]));
        let whole = log.len();
        let second = entry(TAG_WAITS, &k(2), &[k(21)]);
        for cut in 0..second.len() {
            let mut l = log.clone();
            l.extend(&second[..cut]);
            assert_eq!(
                replay(&l),
                (vec![(k(1), vec![k(11)])], whole),
                "cut at {cut}"
            );
        }
        // A flipped bit anywhere in an entry ends the replay there.
        for at in 0..second.len() {
            let mut l = log.clone();
            let mut bad = second.clone();
            bad[at] ^= 0x10;
            l.extend(bad);
            l.extend(entry(TAG_WAITS, &k(3), &[]));
            let (w, n) = replay(&l);
            assert_eq!(n, whole, "flipped byte {at}");
            assert_eq!(w.len(), 1);
        }
        // A huge count is refused before anything is read for it.
        let mut l = vec![TAG_WAITS];
        l.extend([0u8; 32]);
        l.extend(u16::MAX.to_le_bytes());
        assert_eq!(replay(&l), (vec![], 0));
    }

    #[test]
    fn a_log_that_never_empties_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path());
        let (mut log, _) = PendingLog::open(&path).unwrap();
        let records = vec![k(7); 64];
        let mut i = 0u32;
        while !log.wants_compaction() {
            let mut doc = [0u8; 32];
            doc[..4].copy_from_slice(&i.to_le_bytes());
            log.waits(&BlockKey(doc), &records);
            log.stored([&BlockKey(doc)]);
            i += 1;
        }
        assert!(std::fs::metadata(&path).unwrap().len() > COMPACT_AT);
        // Only what waits now is kept.
        let still = [(k(1), vec![k(11)]), (k(2), vec![])];
        log.compact(still.iter().map(|(d, r)| (d, r.as_slice())));
        assert!(!log.wants_compaction());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, log.len());
        assert_eq!(replay(&bytes).0, still.to_vec());
        // Appends go on after the rewrite.
        log.waits(&k(3), &[]);
        assert_eq!(replay(&std::fs::read(&path).unwrap()).0.len(), 3);
    }

    #[test]
    fn the_log_survives_reopening_and_empties_with_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path());
        let (mut log, waiting) = PendingLog::open(&path).unwrap();
        assert!(waiting.is_empty() && log.is_empty());
        log.waits(&k(1), &[k(11)]);
        log.waits(&k(2), &[k(21), k(22)]);
        log.stored([&k(1)]);
        drop(log);
        // A crash cut the last write short.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&entry(TAG_WAITS, &k(3), &[])[..20]).unwrap();
        drop(f);
        let (mut log, waiting) = PendingLog::open(&path).unwrap();
        assert_eq!(waiting, vec![(k(2), vec![k(21), k(22)])]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            log.len(),
            "rewritten with only what waits"
        );
        log.waits(&k(4), &[]);
        let (again, _) = replay(&std::fs::read(&path).unwrap());
        assert_eq!(again.len(), 2);
        log.clear();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        log.waits(&k(5), &[]);
        drop(log);
        let (_, waiting) = PendingLog::open(&path).unwrap();
        assert_eq!(
            waiting,
            vec![(k(5), vec![])],
            "appends after a clear land at the start"
        );
        assert!(!dir.path().join("pending-parities.tmp").exists());
    }
}
