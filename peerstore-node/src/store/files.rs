//! The on-disk layout of block files and durable file operations.
//!
//! ```text
//! <root>/index.redb            metadata (redb)
//! <root>/blocks/ab/abcdef...   one file per block, named by its full hex key, fanned out by
//!                              the first byte so no directory grows huge
//! <root>/tmp/                  temp files of puts in progress (same filesystem, so rename is
//!                              atomic); anything here at open is a leftover of a crash
//! <root>/quarantine/           files that failed verification, kept for inspection
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};
use super::key::BlockKey;

#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    pub(crate) blocks: PathBuf,
    pub(crate) tmp: PathBuf,
    pub(crate) quarantine: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            blocks: root.join("blocks"),
            tmp: root.join("tmp"),
            quarantine: root.join("quarantine"),
        }
    }

    pub(crate) fn index_path(&self) -> PathBuf {
        self.root.join("index.redb")
    }

    pub(crate) fn fanout_dir(&self, key: &BlockKey) -> PathBuf {
        self.blocks.join(hex::encode([key.0[0]]))
    }

    pub(crate) fn block_path(&self, key: &BlockKey) -> PathBuf {
        self.fanout_dir(key).join(key.to_hex())
    }

    pub(crate) fn temp_path(&self, key: &BlockKey) -> PathBuf {
        self.tmp.join(format!("{}.tmp", key.to_hex()))
    }

    /// Creates the directory tree (all 256 fan-out directories up front, so a put never has to
    /// create and sync a directory) and makes it durable.
    pub(crate) fn create(&self) -> Result<()> {
        for d in [&self.root, &self.blocks, &self.tmp, &self.quarantine] {
            fs::create_dir_all(d).map_err(StoreError::io("create directory", d))?;
        }
        let mut created = false;
        for b in 0..=255u8 {
            let d = self.blocks.join(hex::encode([b]));
            match fs::create_dir(&d) {
                Ok(()) => created = true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io("create directory", d)(e)),
            }
        }
        if created {
            fsync_dir(&self.blocks)?;
        }
        fsync_dir(&self.root)
    }

    /// A free name in quarantine starting with `base`.
    pub(crate) fn quarantine_path(&self, base: &str) -> PathBuf {
        let mut p = self.quarantine.join(base);
        let mut n = 1u32;
        while p.exists() {
            p = self.quarantine.join(format!("{base}.{n}"));
            n += 1;
        }
        p
    }
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

/// Writes `bytes` to a temp file, makes its contents durable and renames it to `dest`. The
/// caller must still fsync `dest`'s directory to make the new name durable. On error the temp
/// file is removed and `dest` is untouched or complete.
pub(crate) fn write_file_and_rename(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .map_err(StoreError::io("create", tmp))?;
        f.write_all(bytes).map_err(StoreError::io("write", tmp))?;
        // fdatasync covers the contents and the size, which is all a new file needs.
        f.sync_data().map_err(StoreError::io("fsync", tmp))?;
        drop(f);
        fs::rename(tmp, dest).map_err(StoreError::io("rename into place", dest))
    })();
    if res.is_err() {
        let _ = fs::remove_file(tmp);
    }
    res
}

/// Removes a file and makes the removal durable. Returns whether it existed.
pub(crate) fn remove_durable(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::io("remove", path)(e)),
    }
    if let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(true)
}

/// Moves a file into quarantine durably.
pub(crate) fn move_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(StoreError::io("move to quarantine", from))?;
    if let Some(dir) = to.parent() {
        fsync_dir(dir)?;
    }
    if let Some(dir) = from.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Reads a whole block file. `Ok(None)` if it does not exist.
pub(crate) fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read", path)(e)),
    }
}
