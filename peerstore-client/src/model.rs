//! What a backup stores besides file chunks: the manifest (the tree), the snapshot object and the
//! root pointer. All of it is postcard-encoded and sealed with the user's manifest key before it
//! leaves the machine; see docs/CLIENT.md for the layout.

use serde::{Deserialize, Serialize};

use crypto::ChunkId;

/// Manifest format version (inside the sealed bytes).
pub const MANIFEST_VERSION: u8 = 1;

/// One chunk of a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Keyed MAC of the plaintext (also the AEAD's associated data).
    pub id: ChunkId,
    /// Ring key of the encrypted chunk: BLAKE3 of the ciphertext.
    pub key: [u8; 32],
    /// Plaintext length.
    pub len: u32,
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

/// The tree of one snapshot, entries sorted by path (parents before children).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u8,
    pub entries: Vec<Entry>,
}

impl Manifest {
    #[must_use]
    pub fn new(mut entries: Vec<Entry>) -> Manifest {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            version: MANIFEST_VERSION,
            entries,
        }
    }

    /// Finds the entry at `path`.
    #[must_use]
    pub fn find(&self, path: &[String]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_slice().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Totals: (files, dirs, symlinks, logical bytes).
    #[must_use]
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for e in &self.entries {
            match &e.kind {
                EntryKind::Dir => t.dirs += 1,
                EntryKind::File { size, .. } => {
                    t.files += 1;
                    t.bytes += size;
                }
                EntryKind::Symlink { .. } => t.symlinks += 1,
            }
        }
        t
    }
}

/// Entry counts and logical bytes of a tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// A snapshot object: stored sealed (context [`snapshot_context`]) as one block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Snapshot number: the root sequence number that published it.
    pub number: u64,
    /// Random id that binds the manifest blocks to this snapshot (manifest sealing context).
    pub nonce: [u8; 16],
    /// Creation time, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// Block key of the previous snapshot object.
    pub parent: Option<[u8; 32]>,
    /// The directory that was backed up (as given, absolute).
    pub source: String,
    /// What made it: "backup", "sync", "rm".
    pub origin: String,
    pub totals: Totals,
    /// Keys of the blocks that hold the sealed manifest, in order.
    pub manifest_blocks: Vec<[u8; 32]>,
    /// Total length of the sealed manifest.
    pub manifest_len: u64,
}

/// The plaintext of the root record's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPointer {
    /// Block key of the latest snapshot object.
    pub latest: [u8; 32],
    pub number: u64,
}

/// Sealing context of a snapshot's manifest.
#[must_use]
pub fn manifest_context(nonce: &[u8; 16]) -> Vec<u8> {
    let mut c = b"peerstore-client manifest v1 ".to_vec();
    c.extend_from_slice(nonce);
    c
}

/// Sealing context of snapshot objects.
#[must_use]
pub fn snapshot_context() -> &'static [u8] {
    b"peerstore-client snapshot v1"
}

/// Why a path from a manifest (or the command line) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe path {path:?}: {reason}")]
pub struct UnsafePath {
    pub path: String,
    pub reason: &'static str,
}

/// Checks the components of a manifest path: each must be a plain name (not empty, `.`, `..`,
/// and without `/`, `\` or NUL). The empty path (the root itself) is refused too.
pub fn check_components(path: &[String]) -> Result<(), UnsafePath> {
    let bad = |reason| {
        Err(UnsafePath {
            path: path.join("/"),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty path");
    }
    for c in path {
        if c.is_empty() {
            return bad("empty component");
        }
        if c == "." || c == ".." {
            return bad("'.' or '..' component");
        }
        if c.contains('/') || c.contains('\\') {
            return bad("separator inside a component");
        }
        if c.contains('\0') {
            return bad("NUL byte");
        }
    }
    Ok(())
}

/// Splits a user-given path inside the backup ("a/b/c", "/a/b", "./a") into components.
/// `.` and empty components are dropped; `..` is refused.
pub fn parse_backup_path(s: &str) -> Result<Vec<String>, UnsafePath> {
    let mut out = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(UnsafePath {
                    path: s.to_string(),
                    reason: "'..' is not allowed",
                })
            }
            c => out.push(c.to_string()),
        }
    }
    if !out.is_empty() {
        check_components(&out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn component_checks() {
        assert!(check_components(&p(&["a", "b c", "ü"])).is_ok());
        for bad in [
            p(&[]),
            p(&[""]),
            p(&["."]),
            p(&[".."]),
            p(&["a", "..", "b"]),
            p(&["/etc"]),
            p(&["a/b"]),
            p(&["a\\b"]),
            p(&["a\0"]),
        ] {
            assert!(check_components(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parse_user_paths() {
        assert_eq!(parse_backup_path("a/b").unwrap(), p(&["a", "b"]));
        assert_eq!(parse_backup_path("/a//./b/").unwrap(), p(&["a", "b"]));
        assert_eq!(parse_backup_path("").unwrap(), Vec::<String>::new());
        assert!(parse_backup_path("a/../b").is_err());
    }

    #[test]
    fn manifest_sorted_and_find() {
        let e = |path: &[&str]| Entry {
            path: p(path),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns: 0,
        };
        let m = Manifest::new(vec![e(&["b"]), e(&["a", "x"]), e(&["a"])]);
        let paths: Vec<_> = m.entries.iter().map(Entry::display_path).collect();
        assert_eq!(paths, ["a", "a/x", "b"]);
        assert!(m.find(&p(&["a", "x"])).is_some());
        assert!(m.find(&p(&["c"])).is_none());
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<Manifest>(&bytes).unwrap(), m);
    }
}
