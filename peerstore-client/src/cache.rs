//! The local cache of chunks known to be stored in the ring, so a rerun (or the next backup)
//! does not send them again: chunk id -> where it lives (pack key, offset, sealed length).
//!
//! An append-only file of fixed-size records in the client's data directory, after an 8-byte
//! header naming the format. A torn last record (crash mid-append) is dropped on load; a file of
//! another format (the one-key-per-record cache of format 1) is started afresh, which only
//! costs re-sending (the ring deduplicates nothing, but nothing is lost). A chunk enters the
//! cache only once the ring acknowledged its pack.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crypto::ChunkId;

use crate::error::{ClientError, Result};
use crate::model::ChunkRef;

/// First bytes of a cache file of this format.
const MAGIC: &[u8; 8] = b"PSKC\x00\x00\x00\x02";
/// Bytes per record: chunk id, pack key, offset, sealed length (little endian).
pub const RECORD_LEN: usize = 32 + 32 + 4 + 4;

/// Where a stored chunk lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    /// Key of the pack (what the ring returned for it).
    pub pack: [u8; 32],
    pub offset: u32,
    pub sealed_len: u32,
}

impl ChunkLoc {
    /// The location a manifest's chunk reference names.
    #[must_use]
    pub fn of(c: &ChunkRef) -> ChunkLoc {
        ChunkLoc {
            pack: c.pack,
            offset: c.offset,
            sealed_len: c.sealed_len,
        }
    }
}

fn encode(id: &ChunkId, loc: &ChunkLoc, out: &mut Vec<u8>) {
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&loc.pack);
    out.extend_from_slice(&loc.offset.to_le_bytes());
    out.extend_from_slice(&loc.sealed_len.to_le_bytes());
}

fn decode(rec: &[u8]) -> Option<(ChunkId, ChunkLoc)> {
    let id: [u8; 32] = rec.get(..32)?.try_into().ok()?;
    let pack: [u8; 32] = rec.get(32..64)?.try_into().ok()?;
    let offset = u32::from_le_bytes(rec.get(64..68)?.try_into().ok()?);
    let sealed_len = u32::from_le_bytes(rec.get(68..72)?.try_into().ok()?);
    Some((
        ChunkId(id),
        ChunkLoc {
            pack,
            offset,
            sealed_len,
        },
    ))
}

/// Chunks known stored.
pub struct KnownBlocks {
    map: Mutex<HashMap<ChunkId, ChunkLoc>>,
    file: Mutex<Option<File>>,
    path: Option<PathBuf>,
}

impl KnownBlocks {
    /// A cache that lives only in memory.
    #[must_use]
    pub fn in_memory() -> KnownBlocks {
        KnownBlocks {
            map: Mutex::new(HashMap::new()),
            file: Mutex::new(None),
            path: None,
        }
    }

    /// Opens (or creates) the cache file at `path`.
    pub fn open(path: &Path) -> Result<KnownBlocks> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ClientError::io(dir, e))?;
        }
        let io = |e| ClientError::io(path, e);
        let mut map = HashMap::new();
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let good_len = if bytes.starts_with(MAGIC) {
            let body = &bytes[MAGIC.len()..];
            for rec in body.chunks_exact(RECORD_LEN) {
                if let Some((id, loc)) = decode(rec) {
                    map.insert(id, loc);
                }
            }
            MAGIC.len() + body.len() - body.len() % RECORD_LEN
        } else {
            0
        };
        if good_len != bytes.len() || bytes.is_empty() {
            // Drop a torn tail (so later appends stay aligned), or start a file of another
            // format (or a new one) afresh with the header.
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(path)
                .map_err(io)?;
            f.set_len(good_len as u64).map_err(io)?;
            if good_len == 0 {
                f.write_all(MAGIC).map_err(io)?;
            }
        }
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(KnownBlocks {
            map: Mutex::new(map),
            file: Mutex::new(Some(file)),
            path: Some(path.to_path_buf()),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, ChunkLoc>> {
        peerstore_proto::lock(&self.map)
    }

    /// Where chunk `id` is stored, if known.
    #[must_use]
    pub fn get(&self, id: &ChunkId) -> Option<ChunkLoc> {
        self.map().get(id).copied()
    }

    /// Whether chunk `id` is known stored.
    #[must_use]
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.map().contains_key(id)
    }

    /// Number of chunks known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map().len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds chunks known from elsewhere (e.g. the previous snapshot) without persisting them.
    pub fn extend_volatile(&self, chunks: impl IntoIterator<Item = (ChunkId, ChunkLoc)>) {
        let mut m = self.map();
        for (id, loc) in chunks {
            m.entry(id).or_insert(loc);
        }
    }

    /// Records that the chunks are now stored (persisted, in one append, when the cache has a
    /// file). A chunk already known keeps its first location.
    pub fn insert_many(&self, chunks: &[(ChunkId, ChunkLoc)]) -> Result<()> {
        let mut out = Vec::with_capacity(chunks.len() * RECORD_LEN);
        {
            let mut m = self.map();
            for (id, loc) in chunks {
                if let std::collections::hash_map::Entry::Vacant(v) = m.entry(*id) {
                    v.insert(*loc);
                    encode(id, loc, &mut out);
                }
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            f.write_all(&out)
                .map_err(|e| ClientError::io(self.path.clone().unwrap_or_default(), e))?;
        }
        Ok(())
    }

    /// Forgets every chunk stored in one of `packs` (packs a `check` found missing), on disk
    /// too: the file is rewritten without them (temp file, fsync, rename). Returns how many
    /// chunks were forgotten.
    pub fn purge_packs(&self, packs: &std::collections::HashSet<[u8; 32]>) -> Result<usize> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = self.map();
        let before = m.len();
        m.retain(|_, loc| !packs.contains(&loc.pack));
        let purged = before - m.len();
        let Some(path) = self.path.as_ref().filter(|_| purged > 0) else {
            return Ok(purged);
        };
        let io = |e| ClientError::io(path, e);
        let mut bytes = MAGIC.to_vec();
        for (id, loc) in m.iter() {
            encode(id, loc, &mut bytes);
        }
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        *file = Some(OpenOptions::new().append(true).open(path).map_err(io)?);
        Ok(purged)
    }

    /// Records that one chunk is now stored.
    pub fn insert(&self, id: ChunkId, loc: ChunkLoc) -> Result<()> {
        self.insert_many(&[(id, loc)])
    }

    /// Makes the cache one of prune epoch `epoch` (`crate::prune`): if it was filled under
    /// another epoch (kept in `<cache>.epoch`; none recorded is epoch 0), a prune may have
    /// deleted packs it names, so it is emptied (in memory and on disk) first. Returns whether
    /// it was emptied.
    pub fn align_epoch(&self, epoch: u64) -> Result<bool> {
        let Some(path) = self.path.as_ref() else {
            return Ok(false);
        };
        let epoch_file = path.with_extension("epoch");
        let seen: u64 = std::fs::read_to_string(&epoch_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        if seen == epoch {
            return Ok(false);
        }
        {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            self.map().clear();
            let io = |e| ClientError::io(path, e);
            let tmp = path.with_extension("tmp");
            let mut f = File::create(&tmp).map_err(io)?;
            f.write_all(MAGIC).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
            *file = Some(OpenOptions::new().append(true).open(path).map_err(io)?);
        }
        let tmp = epoch_file.with_extension("epoch.tmp");
        std::fs::write(&tmp, format!("{epoch}\n")).map_err(|e| ClientError::io(&tmp, e))?;
        std::fs::rename(&tmp, &epoch_file).map_err(|e| ClientError::io(&epoch_file, e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(n: u8) -> ChunkLoc {
        ChunkLoc {
            pack: [n; 32],
            offset: u32::from(n) * 1000,
            sealed_len: 41 + u32::from(n),
        }
    }

    #[test]
    fn purged_packs_are_forgotten_on_disk_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known");
        let k = KnownBlocks::open(&path).unwrap();
        for n in 0..6u8 {
            k.insert(ChunkId([n; 32]), loc(n % 3)).unwrap();
        }
        let gone: std::collections::HashSet<[u8; 32]> = [[1u8; 32]].into_iter().collect();
        assert_eq!(k.purge_packs(&gone).unwrap(), 2);
        assert!(!k.contains(&ChunkId([1; 32])) && k.contains(&ChunkId([0; 32])));
        k.insert(ChunkId([9; 32]), loc(2)).unwrap();
        drop(k);
        let again = KnownBlocks::open(&path).unwrap();
        assert_eq!(again.len(), 5);
        assert!(!again.contains(&ChunkId([4; 32])) && again.contains(&ChunkId([9; 32])));
    }

    #[test]
    fn persists_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known");
        {
            let c = KnownBlocks::open(&path).unwrap();
            c.insert(ChunkId([1; 32]), loc(1)).unwrap();
            c.insert_many(&[(ChunkId([2; 32]), loc(2)), (ChunkId([1; 32]), loc(7))])
                .unwrap();
            c.extend_volatile([(ChunkId([9; 32]), loc(9))]);
            assert!(c.contains(&ChunkId([9; 32])));
            assert_eq!(c.get(&ChunkId([1; 32])), Some(loc(1)));
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (MAGIC.len() + 2 * RECORD_LEN) as u64
        );
        // A crash mid-append leaves a partial record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[3; 10]).unwrap();
        drop(f);
        let c = KnownBlocks::open(&path).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&ChunkId([1; 32])), Some(loc(1)));
        assert_eq!(c.get(&ChunkId([2; 32])), Some(loc(2)));
        assert!(!c.contains(&ChunkId([9; 32])));
        c.insert(ChunkId([4; 32]), loc(4)).unwrap();
        drop(c);
        let c = KnownBlocks::open(&path).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&ChunkId([4; 32])), Some(loc(4)));
    }

    #[test]
    fn a_cache_of_the_old_format_is_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known");
        // Format 1: bare 32-byte keys.
        std::fs::write(&path, [7u8; 96]).unwrap();
        let c = KnownBlocks::open(&path).unwrap();
        assert!(c.is_empty());
        c.insert(ChunkId([5; 32]), loc(5)).unwrap();
        drop(c);
        let c = KnownBlocks::open(&path).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&ChunkId([5; 32])), Some(loc(5)));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (MAGIC.len() + RECORD_LEN) as u64
        );
    }
}
