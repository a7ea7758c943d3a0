//! `prune`: deletes from the ring the documents (packs, manifest pieces, snapshot objects) that
//! this user wrote and that no kept snapshot references any more, in two phases with a grace
//! period (as rustic does), never with locks:
//!
//! 1. **Mark.** A run lists the user's documents (`ListDocuments`, by writer) and what the kept
//!    snapshots reference ([`crate::forget::live_keys`]). Unreferenced documents older than the
//!    grace period are marked: their keys and the time go to a marks file in the client's data
//!    directory. Before the marks are saved the run raises the user's **prune epoch** in the
//!    root (a compare-and-swap like every root update): any client whose chunk cache was filled
//!    under an older epoch empties it before its next backup deduplicates against it, so no
//!    backup that starts after the mark can reuse a marked document.
//! 2. **Delete.** A later run (or the same run with `--grace 0s`) deletes the marked documents
//!    that were marked at least the grace period ago **and** are still unreferenced now (the
//!    live keys are read again just before). A backup that started before the mark and reused a
//!    marked document has published its snapshot by then (backups shorter than the grace
//!    period), so the document is referenced again and stays; its mark is dropped.
//!
//! Deletion is a `crypto::DeleteStatement` signed with the user's key; every node checks it
//! (only the writer can delete). A document whose blocks live documents use as pointers is
//! **pinned**: it stays marked and a later prune deletes it once they are gone. A crash at any
//! point leaves marks (a file written atomically) and documents that the next run deletes or
//! keeps by the same rules; nothing a kept snapshot references is ever deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::cache::KnownBlocks;
use crate::error::{ClientError, Result};
use crate::repo::{Repo, RootBackoff, RootUpdate};
use crate::store::StoreError;

/// Documents asked for per listing page.
const LIST_PAGE: u32 = 1024;
/// Documents per deletion statement (the statement bound is larger; a smaller batch keeps each
/// request short).
const DELETE_BATCH: usize = 64;

/// What `prune` does.
#[derive(Clone, Copy, Debug)]
pub struct PruneOptions {
    /// How old a document must be, and how long ago it must have been marked, to be deleted.
    pub grace: Duration,
    /// Report what would happen; mark and delete nothing.
    pub dry_run: bool,
}

/// What a prune found and did (`prune --json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    /// The user's documents in the ring.
    pub documents: u64,
    pub document_bytes: u64,
    /// Of those, referenced by a kept snapshot.
    pub referenced: u64,
    /// Unreferenced but younger than the grace period (a backup may be about to use them).
    pub too_young: u64,
    /// Marked by this run.
    pub marked: u64,
    /// Marked earlier, still waiting for the grace period.
    pub waiting: u64,
    /// Marks dropped because the document is referenced again (or gone).
    pub unmarked: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// Kept because live documents point at their blocks (still marked).
    pub pinned: u64,
    /// Not deleted this time (with why); run prune again.
    pub failed: Vec<String>,
    /// Stored bytes the nodes removed (all copies).
    pub bytes_freed: u64,
    /// The prune epoch after this run.
    pub epoch: u64,
}

impl PruneReport {
    /// One line for a terminal.
    #[must_use]
    pub fn text(&self) -> String {
        format!(
            "{}{} documents ({}) of this user in the ring, {} referenced by kept snapshots; \
             {} marked now, {} waiting for the grace period, {} too young, {} unmarked; \
             deleted {} ({}), {} pinned by live documents, {} failed; nodes freed {}",
            if self.dry_run { "dry run: " } else { "" },
            self.documents,
            crate::progress::human(self.document_bytes),
            self.referenced,
            self.marked,
            self.waiting,
            self.too_young,
            self.unmarked,
            self.deleted,
            crate::progress::human(self.deleted_bytes),
            self.pinned,
            self.failed.len(),
            crate::progress::human(self.bytes_freed),
        )
    }
}

/// The marks file: one line per marked document, `<hex key> <marked at, µs since the epoch>`.
fn load_marks(path: &Path) -> Result<BTreeMap<[u8; 32], u64>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(ClientError::io(path, e)),
    };
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(t)) = (it.next(), it.next()) else {
            continue;
        };
        let (Ok(k), Ok(t)) = (hex::decode(k), t.parse::<u64>()) else {
            continue;
        };
        if let Ok(k) = <[u8; 32]>::try_from(k.as_slice()) {
            out.insert(k, t);
        }
    }
    Ok(out)
}

/// Writes the marks file atomically (temporary file, fsync, rename).
fn save_marks(path: &Path, marks: &BTreeMap<[u8; 32], u64>) -> Result<()> {
    use std::io::Write;
    let io = |e| ClientError::io(path, e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut text = String::new();
    for (k, t) in marks {
        text.push_str(&format!("{} {t}\n", hex::encode(k)));
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Every document the user wrote, from the ring: key -> (length, created).
async fn list_all(repo: &Repo) -> Result<BTreeMap<[u8; 32], (u64, u64)>> {
    let mut out = BTreeMap::new();
    let mut after = None;
    loop {
        let page = repo
            .store
            .list_documents(repo.user().0, after, LIST_PAGE)
            .await?;
        for d in page.documents {
            out.insert(d.key.0, (d.len, d.created_us));
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// Raises the user's prune epoch in the root (compare-and-swap, redone on conflicts).
async fn raise_epoch(repo: &Repo) -> Result<u64> {
    let mut backoff = RootBackoff::new();
    loop {
        let Some((root, latest)) = repo.head().await? else {
            return Ok(0);
        };
        let epoch = root.prune_epoch + 1;
        match repo.put_root(root.seq() + 1, &latest, epoch).await? {
            RootUpdate::Stored => return Ok(epoch),
            RootUpdate::Conflict => backoff.wait("prune").await?,
        }
    }
}

/// Empties `known` if a prune raised the user's prune epoch since it was filled (it may name
/// deleted packs): before every backup, and before every pass of the sync watcher.
pub async fn align_cache(repo: &Repo, known: &KnownBlocks) -> Result<()> {
    let epoch = repo.root().await?.map_or(0, |r| r.prune_epoch);
    if known.align_epoch(epoch)? {
        tracing::info!(
            epoch,
            "a prune ran since the chunk cache was filled: emptied it"
        );
    }
    Ok(())
}

/// Runs a prune (see the module documentation). `marks` is the marks file; `known` the
/// client's chunk cache, from which the deleted packs are purged.
pub async fn prune(
    repo: &Repo,
    marks_path: &Path,
    known: Option<&KnownBlocks>,
    opts: PruneOptions,
) -> Result<PruneReport> {
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..PruneReport::default()
    };
    let grace_us = opts.grace.as_micros() as u64;
    let live = crate::forget::live_keys(repo).await?.all();
    let docs = list_all(repo).await?;
    report.documents = docs.len() as u64;
    report.document_bytes = docs.values().map(|(len, _)| len).sum();
    let now = now_us();
    let mut marks = load_marks(marks_path)?;
    let before = marks.len();
    // Marks of documents referenced again, or gone from the ring, are dropped.
    marks.retain(|k, _| docs.contains_key(k) && !live.contains(k));
    report.unmarked = (before - marks.len()) as u64;
    let mut new_marks = Vec::new();
    for (k, (_, created)) in &docs {
        if live.contains(k) {
            report.referenced += 1;
        } else if now.saturating_sub(*created) < grace_us {
            report.too_young += 1;
        } else if !marks.contains_key(k) {
            new_marks.push(*k);
        }
    }
    report.marked = new_marks.len() as u64;
    report.epoch = repo.root().await?.map_or(0, |r| r.prune_epoch);
    if opts.dry_run {
        report.waiting = marks
            .values()
            .filter(|t| now.saturating_sub(**t) < grace_us)
            .count() as u64;
        return Ok(report);
    }
    if !new_marks.is_empty() {
        // The epoch first: once a mark is saved, no backup may start deduplicating against a
        // cache that names the marked documents.
        report.epoch = raise_epoch(repo).await?;
        for k in &new_marks {
            marks.insert(*k, now);
        }
        save_marks(marks_path, &marks)?;
    }
    // Due: marked at least the grace period ago (all of them with --grace 0s), and still
    // unreferenced by what the kept snapshots name now.
    let due: Vec<[u8; 32]> = marks
        .iter()
        .filter(|(_, t)| now.saturating_sub(**t) >= grace_us)
        .map(|(k, _)| *k)
        .collect();
    report.waiting = (marks.len() - due.len()) as u64;
    if due.is_empty() {
        return Ok(report);
    }
    let live = crate::forget::live_keys(repo).await?.all();
    let mut due: Vec<[u8; 32]> = due.into_iter().filter(|k| !live.contains(k)).collect();
    // Newest first: a newer document that points into an older one goes first.
    due.sort_by_key(|k| std::cmp::Reverse(docs.get(k).map_or(0, |d| d.1)));
    let mut deleted_packs = std::collections::HashSet::new();
    for batch in due.chunks(DELETE_BATCH) {
        let st = crypto::DeleteStatement::sign(repo.identity(), now_us(), batch.to_vec())
            .map_err(|e| ClientError::Refused(format!("cannot sign the deletion: {e}")))?;
        let bytes = postcard::to_allocvec(&st)
            .map_err(|e| ClientError::Refused(format!("cannot encode the deletion: {e}")))?;
        let r = match repo.store.delete_documents(bytes).await {
            Ok(r) => r,
            Err(StoreError::Forbidden(m)) => {
                return Err(ClientError::Refused(format!(
                    "the ring refused the deletion: {m}"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        report.bytes_freed += r.bytes_freed;
        for k in &r.deleted {
            marks.remove(&k.0);
            deleted_packs.insert(k.0);
            report.deleted += 1;
            report.deleted_bytes += docs.get(&k.0).map_or(0, |d| d.0);
        }
        report.pinned += r.pinned.len() as u64;
        report
            .failed
            .extend(r.failed.iter().map(|(k, e)| format!("{k}: {e}")));
        save_marks(marks_path, &marks)?;
    }
    if let Some(known) = known {
        known.purge_packs(&deleted_packs)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_skip_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("marks");
        assert!(load_marks(&p).unwrap().is_empty());
        let m: BTreeMap<[u8; 32], u64> = [([1; 32], 5), ([2; 32], 7)].into_iter().collect();
        save_marks(&p, &m).unwrap();
        assert_eq!(load_marks(&p).unwrap(), m);
        std::fs::write(&p, "zz 1\n0101 2\nnot a line\n").unwrap();
        assert!(load_marks(&p).unwrap().is_empty());
    }

    #[test]
    fn a_cache_of_another_epoch_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known-blocks");
        let loc = crate::cache::ChunkLoc {
            pack: [1; 32],
            offset: 0,
            sealed_len: 10,
        };
        let k = KnownBlocks::open(&path).unwrap();
        k.insert(crypto::ChunkId([7; 32]), loc).unwrap();
        assert!(
            !k.align_epoch(0).unwrap(),
            "same epoch (none recorded = 0): kept"
        );
        assert_eq!(k.len(), 1);
        assert!(k.align_epoch(1).unwrap(), "a new epoch empties the cache");
        assert!(k.is_empty());
        assert!(KnownBlocks::open(&path).unwrap().is_empty(), "on disk too");
        k.insert(crypto::ChunkId([8; 32]), loc).unwrap();
        let again = KnownBlocks::open(&path).unwrap();
        assert_eq!(again.len(), 1, "appends still work after emptying");
        assert!(!again.align_epoch(1).unwrap());
        assert!(KnownBlocks::in_memory().align_epoch(5).is_ok());
    }
}
