//! The on-disk layout and durable file operations.
//!
//! ```text
//! <root>/index.redb            metadata (redb): key -> size, role, segment and offset
//! <root>/segments/0000002a.seg block records, appended (see the segments module)
//! <root>/quarantine/           copies of blocks that failed verification, for inspection
//! <root>/blocks/, <root>/tmp/  format 1 (one file per block); migrated into segments and
//!                              removed when such a store is opened
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};
use peerstore_proto::BlockKey;

#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    pub(crate) segments: PathBuf,
    pub(crate) quarantine: PathBuf,
    pub(crate) legacy_blocks: PathBuf,
    pub(crate) legacy_tmp: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            segments: root.join("segments"),
            quarantine: root.join("quarantine"),
            legacy_blocks: root.join("blocks"),
            legacy_tmp: root.join("tmp"),
        }
    }

    pub(crate) fn index_path(&self) -> PathBuf {
        self.root.join("index.redb")
    }

    /// Where format 1 kept the file of `key`.
    pub(crate) fn legacy_block_path(&self, key: &BlockKey) -> PathBuf {
        self.legacy_blocks
            .join(hex::encode([key.0[0]]))
            .join(key.to_hex())
    }

    /// Creates the directory tree and makes it durable.
    pub(crate) fn create(&self) -> Result<()> {
        let mut created = false;
        for d in [&self.root, &self.segments, &self.quarantine] {
            if !d.is_dir() {
                fs::create_dir_all(d).map_err(StoreError::io("create directory", d))?;
                created = true;
            }
        }
        if created {
            fsync_dir(&self.root)?;
        }
        Ok(())
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

/// Writes `bytes` to a new file at `path` and makes it and its name durable.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(StoreError::io("create", path))?;
    f.write_all(bytes).map_err(StoreError::io("write", path))?;
    f.sync_data().map_err(StoreError::io("fsync", path))?;
    if let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
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
