//! The entries of a backup's tree, as the client's manifests and the shares' manifests hold
//! them (docs/CLIENT.md, docs/SHARING.md): here so that a node's gateway can read a share.

use serde::{Deserialize, Serialize};

use crypto::ChunkId;

/// One chunk of a file: a slice of a pack file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Keyed MAC of the plaintext (also the AEAD's associated data).
    pub id: ChunkId,
    /// Ring key to read the pack with (`GetDocument`): what the ring returned for the pack.
    pub pack: [u8; 32],
    /// Where the sealed chunk starts in the pack.
    pub offset: u32,
    /// Length of the sealed chunk (plaintext + `crypto::CHUNK_OVERHEAD`).
    pub sealed_len: u32,
    /// Plaintext length.
    pub len: u32,
}

impl ChunkRef {
    /// The byte range of the sealed chunk inside a pack of `pack_len` bytes, if the reference
    /// is consistent (lengths agree, range inside the pack).
    #[must_use]
    pub fn range_in(&self, pack_len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(self.offset).ok()?;
        let sealed = usize::try_from(self.sealed_len).ok()?;
        let plain = usize::try_from(self.len).ok()?;
        if plain.checked_add(crypto::CHUNK_OVERHEAD)? != sealed {
            return None;
        }
        let end = start.checked_add(sealed)?;
        (end <= pack_len).then_some(start..end)
    }
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    File { size: u64, chunks: Vec<ChunkRef> },
    Symlink { target: String },
}

/// One path of the tree. `path` holds the components below the backup root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: Vec<String>,
    pub kind: EntryKind,
    /// Unix permission bits (mode & 0o7777).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Numeric owner at backup time (format 3 on); `None` in manifests of format 2. Restore
    /// applies it, and keeps setuid/setgid bits, only when it runs as root.
    pub owner: Option<Owner>,
}

/// The numeric owner of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Entry {
    /// The path joined with '/'.
    #[must_use]
    pub fn display_path(&self) -> String {
        self.path.join("/")
    }

    /// Logical size (0 for directories and symlinks).
    #[must_use]
    pub fn size(&self) -> u64 {
        match &self.kind {
            EntryKind::File { size, .. } => *size,
            _ => 0,
        }
    }

    /// Whether `self.path` starts with `prefix`.
    #[must_use]
    pub fn is_under(&self, prefix: &[String]) -> bool {
        self.path.len() >= prefix.len() && self.path[..prefix.len()] == *prefix
    }
}
