//! The local cache of block keys known to be stored in the ring, so a rerun (or the next backup)
//! does not send them again. An append-only file of 32-byte keys in the client's data directory;
//! a torn last record (crash mid-append) is ignored on load.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{ClientError, Result};

/// Block keys known stored.
pub struct KnownBlocks {
    set: Mutex<HashSet<[u8; 32]>>,
    file: Mutex<Option<File>>,
    path: Option<PathBuf>,
}

impl KnownBlocks {
    /// A cache that lives only in memory.
    #[must_use]
    pub fn in_memory() -> KnownBlocks {
        KnownBlocks {
            set: Mutex::new(HashSet::new()),
            file: Mutex::new(None),
            path: None,
        }
    }

    /// Opens (or creates) the cache file at `path`.
    pub fn open(path: &Path) -> Result<KnownBlocks> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ClientError::io(dir, e))?;
        }
        let mut set = HashSet::new();
        match File::open(path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)
                    .map_err(|e| ClientError::io(path, e))?;
                for rec in bytes.chunks_exact(32) {
                    let mut k = [0u8; 32];
                    k.copy_from_slice(rec);
                    set.insert(k);
                }
                if bytes.len() % 32 != 0 {
                    // Drop the torn tail so later appends stay aligned.
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| ClientError::io(path, e))?;
                    f.set_len((bytes.len() - bytes.len() % 32) as u64)
                        .map_err(|e| ClientError::io(path, e))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ClientError::io(path, e)),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ClientError::io(path, e))?;
        Ok(KnownBlocks {
            set: Mutex::new(set),
            file: Mutex::new(Some(file)),
            path: Some(path.to_path_buf()),
        })
    }

    /// Whether `key` is known stored.
    #[must_use]
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// Number of keys known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds keys known from elsewhere (e.g. the previous snapshot) without persisting them.
    pub fn extend_volatile(&self, keys: impl IntoIterator<Item = [u8; 32]>) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(keys);
    }

    /// Records that `key` is now stored (persisted when the cache has a file).
    pub fn insert(&self, key: [u8; 32]) -> Result<()> {
        let fresh = self
            .set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        if fresh {
            if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                f.write_all(&key)
                    .map_err(|e| ClientError::io(self.path.clone().unwrap_or_default(), e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known");
        {
            let c = KnownBlocks::open(&path).unwrap();
            c.insert([1; 32]).unwrap();
            c.insert([2; 32]).unwrap();
            c.insert([1; 32]).unwrap();
            c.extend_volatile([[9; 32]]);
            assert!(c.contains(&[9; 32]));
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64);
        // A crash mid-append leaves a partial record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[3; 10]).unwrap();
        drop(f);
        let c = KnownBlocks::open(&path).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.contains(&[1; 32]) && c.contains(&[2; 32]) && !c.contains(&[9; 32]));
        c.insert([4; 32]).unwrap();
        drop(c);
        let c = KnownBlocks::open(&path).unwrap();
        assert_eq!(c.len(), 3);
        assert!(c.contains(&[4; 32]));
    }
}
