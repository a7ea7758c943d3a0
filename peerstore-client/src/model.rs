//! What a backup stores besides file chunks: the manifest (the tree), the snapshot object and the
//! root pointer. All of it is postcard-encoded and sealed with the user's manifest key before it
//! leaves the machine; see docs/CLIENT.md for the layout.

use serde::{Deserialize, Serialize};

/// Manifest format version (inside the sealed bytes; the first byte of the postcard encoding).
/// Version 1 stored one chunk per block; version 2 stores chunks in pack files; version 3 adds
/// each entry's owner (uid/gid). Postcard has no field tags, so a new field needs a new version.
pub const MANIFEST_VERSION: u8 = 3;

/// The oldest manifest format this client still reads: format 2, whose entries have no owner
/// (read as `owner: None`).
pub const MANIFEST_VERSION_MIN: u8 = 2;

pub use peerstore_proto::tree::{ChunkRef, Entry, EntryKind, Owner};

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

    /// Decodes a manifest's plaintext, refusing other format versions with a clear error. A
    /// manifest of format 2 is upgraded in memory (entries without an owner, `version` set to
    /// [`MANIFEST_VERSION`], so that encoding it again writes the current format).
    pub fn decode(plain: &[u8]) -> Result<Manifest, ManifestError> {
        let malformed = |e: postcard::Error| ManifestError::Malformed(e.to_string());
        match plain.first() {
            None => Err(ManifestError::Malformed("empty".into())),
            Some(&MANIFEST_VERSION) => postcard::from_bytes(plain).map_err(malformed),
            Some(&2) => {
                let old: v2::Manifest = postcard::from_bytes(plain).map_err(malformed)?;
                Ok(old.upgrade())
            }
            Some(&v) => Err(ManifestError::OtherVersion(v)),
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
                    // Sizes come from stored manifests: saturate rather than overflow.
                    t.bytes = t.bytes.saturating_add(*size);
                }
                EntryKind::Symlink { .. } => t.symlinks += 1,
            }
        }
        t
    }
}

/// Why a manifest's plaintext is not readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "manifest format {0} was made by another version of peerstore-client (this one reads formats {MANIFEST_VERSION_MIN} to {MANIFEST_VERSION})"
    )]
    OtherVersion(u8),
    #[error("manifest: {0}")]
    Malformed(String),
}

/// Manifest format 2, as it was written (entries without an owner): read, never written.
mod v2 {
    use serde::{Deserialize, Serialize};

    use super::EntryKind;

    #[derive(Serialize, Deserialize)]
    pub(super) struct Entry {
        pub(super) path: Vec<String>,
        pub(super) kind: EntryKind,
        pub(super) mode: u32,
        pub(super) mtime_ns: i64,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct Manifest {
        pub(super) version: u8,
        pub(super) entries: Vec<Entry>,
    }

    impl Manifest {
        pub(super) fn upgrade(self) -> super::Manifest {
            super::Manifest {
                version: super::MANIFEST_VERSION,
                entries: self
                    .entries
                    .into_iter()
                    .map(|e| super::Entry {
                        path: e.path,
                        kind: e.kind,
                        mode: e.mode,
                        mtime_ns: e.mtime_ns,
                        owner: None,
                    })
                    .collect(),
            }
        }
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

/// A snapshot object: stored sealed as one document, after a clear [`SnapshotHeader`] and bound
/// to the user, its number and its parent ([`snapshot_context_v2`]; format 1: sealed alone,
/// under [`snapshot_context`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Snapshot number: the root sequence number that first published it. `forget` keeps it
    /// when it rewrites the object (with a new parent), so numbers stay stable and are never
    /// reused; along the chain they fall, with gaps where snapshots were forgotten.
    pub number: u64,
    /// Random id that binds the manifest blocks to this snapshot (manifest sealing context).
    pub nonce: [u8; 16],
    /// Creation time, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// Document key of the previous snapshot object.
    pub parent: Option<[u8; 32]>,
    /// The directory that was backed up (as given, absolute).
    pub source: String,
    /// What made it: "backup", "sync", "rm".
    pub origin: String,
    pub totals: Totals,
    /// Document keys of the pieces (at most 4 MiB each) of the sealed manifest, in order.
    pub manifest_blocks: Vec<[u8; 32]>,
    /// Total length of the sealed manifest.
    pub manifest_len: u64,
}

/// The plaintext of the root record's payload (postcard), optionally followed by the BLAKE3 of
/// the latest snapshot object's bytes ([`encode_root_payload`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPointer {
    /// Document key of the latest snapshot object.
    pub latest: [u8; 32],
    /// The latest snapshot's number: at most the root's sequence number (equal when the root was
    /// written by the publish of that snapshot; lower once `forget` rewrote the chain, since a
    /// rewritten snapshot keeps its number while the root's number grows).
    pub number: u64,
}

/// The root payload's plaintext: the pointer, then the BLAKE3 of the latest snapshot object's
/// bytes (32 bytes), then, once a prune has marked documents for deletion, the user's prune
/// epoch (u64 LE; `prune` raises it when it marks documents, and a client whose chunk cache
/// was filled under another epoch empties it before deduplicating against it). Clients that
/// predate the hash read the pointer and ignore what follows it; those that predate the epoch
/// ignore what follows the hash. No epoch is written without a hash.
#[must_use]
pub fn encode_root_payload(
    ptr: &RootPointer,
    latest_hash: Option<&[u8; 32]>,
    prune_epoch: u64,
) -> Vec<u8> {
    let mut out = postcard::to_allocvec(ptr).unwrap_or_default();
    if let Some(h) = latest_hash {
        out.extend_from_slice(h);
        if prune_epoch > 0 {
            out.extend_from_slice(&prune_epoch.to_le_bytes());
        }
    }
    out
}

/// A decoded root payload: the pointer, the latest object's hash if present, and the prune
/// epoch (0 if absent).
pub type RootPayload = (RootPointer, Option<[u8; 32]>, u64);

/// Decodes a root payload's plaintext: the pointer and, if present, the latest object's hash
/// and the prune epoch (bytes after them are ignored: room for later versions).
pub fn decode_root_payload(plain: &[u8]) -> Result<RootPayload, String> {
    let (ptr, rest) = postcard::take_from_bytes::<RootPointer>(plain).map_err(|e| e.to_string())?;
    match rest.len() {
        0 => Ok((ptr, None, 0)),
        n if n >= 32 => {
            let mut h = [0u8; 32];
            h.copy_from_slice(&rest[..32]);
            let epoch = rest
                .get(32..40)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes);
            Ok((ptr, Some(h), epoch))
        }
        n => Err(format!("{n} stray bytes after the pointer")),
    }
}

/// Sealing context of a snapshot's manifest.
#[must_use]
pub fn manifest_context(nonce: &[u8; 16]) -> Vec<u8> {
    let mut c = b"peerstore-client manifest v1 ".to_vec();
    c.extend_from_slice(nonce);
    c
}

/// Sealing context of snapshot objects of format 1 (read, never written): a constant, so it
/// binds an object to nothing but the user's key.
#[must_use]
pub fn snapshot_context() -> &'static [u8] {
    b"peerstore-client snapshot v1"
}

/// Snapshot object format written by this client. Format 2 binds the object to the user, its
/// number and its parent ([`snapshot_context_v2`]); format 1 (the sealed bytes alone, under
/// [`snapshot_context`]) is still read.
pub const SNAPSHOT_FORMAT: u8 = 2;

/// First bytes of a format-2 snapshot object. A format-1 object starts with the sealing
/// format's version byte (1), so the two cannot be confused.
pub const SNAPSHOT_V2_MAGIC: &[u8; 4] = b"PSS\x02";

/// Header flag: when the snapshot was published, the ring stored documents under the BLAKE3
/// of their bytes (a ring without entanglement), so every document it references, and the
/// object itself, must hash to its key.
pub const SNAPSHOT_FLAG_HASHED_KEYS: u8 = 1;

/// The parent as a format-2 snapshot object names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParentRef {
    /// Document key of the parent snapshot object (also inside the sealed snapshot).
    pub key: [u8; 32],
    /// BLAKE3 of the parent object's bytes: the parent read back must hash to it, whatever the
    /// ring's keys are (on an entangled ring the key is not a hash of the bytes).
    pub hash: [u8; 32],
}

/// The clear header of a format-2 snapshot object: `magic | flags | 0`, or
/// `magic | flags | 1 | parent key | parent hash` (the parent is snapshot `number - 1`), or
/// `magic | flags | 2 | parent key | parent hash | parent number (u64 LE)` (a parent further
/// back: the snapshots between were forgotten). It is authenticated (part of the sealing
/// context), so it cannot be changed without the object failing to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// [`SNAPSHOT_FLAG_HASHED_KEYS`] or 0.
    pub flags: u8,
    pub parent: Option<ParentRef>,
    /// The parent's number when it is not this snapshot's number minus one (written only then,
    /// so that chains without gaps stay readable by older clients). Ignored without a parent.
    pub parent_number: Option<u64>,
}

impl SnapshotHeader {
    /// Whether documents of this snapshot are stored under the hash of their bytes.
    #[must_use]
    pub fn hashed_keys(&self) -> bool {
        self.flags & SNAPSHOT_FLAG_HASHED_KEYS != 0
    }

    /// The header's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = SNAPSHOT_V2_MAGIC.to_vec();
        out.push(self.flags);
        match &self.parent {
            None => out.push(0),
            Some(p) => {
                out.push(if self.parent_number.is_some() { 2 } else { 1 });
                out.extend_from_slice(&p.key);
                out.extend_from_slice(&p.hash);
                if let Some(n) = self.parent_number {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        out
    }

    /// Splits a format-2 snapshot object into its header, the header's bytes and the sealed
    /// snapshot. `None` if `doc` does not start with [`SNAPSHOT_V2_MAGIC`] (format 1).
    #[must_use]
    pub fn split(doc: &[u8]) -> Option<Result<SplitSnapshot<'_>, String>> {
        let rest = doc.strip_prefix(SNAPSHOT_V2_MAGIC.as_slice())?;
        let fixed = SNAPSHOT_V2_MAGIC.len() + 2;
        let parsed = match rest {
            [flags, ..] if flags & !SNAPSHOT_FLAG_HASHED_KEYS != 0 => Err(format!(
                "unknown snapshot flags {flags:#x} (made by another version of peerstore-client)"
            )),
            [flags, 0, ..] => Ok((
                SnapshotHeader {
                    flags: *flags,
                    parent: None,
                    parent_number: None,
                },
                fixed,
            )),
            [flags, tag @ (1 | 2), tail @ ..] if tail.len() >= 64 + 8 * usize::from(*tag - 1) => {
                let (mut key, mut hash) = ([0u8; 32], [0u8; 32]);
                key.copy_from_slice(&tail[..32]);
                hash.copy_from_slice(&tail[32..64]);
                let parent_number = (*tag == 2).then(|| {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&tail[64..72]);
                    u64::from_le_bytes(n)
                });
                Ok((
                    SnapshotHeader {
                        flags: *flags,
                        parent: Some(ParentRef { key, hash }),
                        parent_number,
                    },
                    fixed + 64 + 8 * usize::from(*tag - 1),
                ))
            }
            _ => Err("truncated or malformed snapshot header".to_string()),
        };
        Some(parsed.map(|(header, n)| SplitSnapshot {
            header,
            header_bytes: &doc[..n],
            sealed: &doc[n..],
        }))
    }
}

/// A format-2 snapshot object taken apart ([`SnapshotHeader::split`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitSnapshot<'a> {
    pub header: SnapshotHeader,
    /// The header as stored (part of the sealing context).
    pub header_bytes: &'a [u8],
    /// The sealed snapshot after it.
    pub sealed: &'a [u8],
}

/// Sealing context of a format-2 snapshot object: the user, the snapshot's number and its
/// header (flags, parent key, parent hash and parent number). An object opens only as the snapshot it was
/// sealed as: a node that serves another snapshot object of the same user in its place, or
/// changes the header, makes the AEAD fail.
#[must_use]
pub fn snapshot_context_v2(user: &[u8; 32], number: u64, header: &[u8]) -> Vec<u8> {
    let mut c = b"peerstore-client snapshot v2 ".to_vec();
    c.extend_from_slice(user);
    c.extend_from_slice(&number.to_le_bytes());
    c.extend_from_slice(header);
    c
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
    use crypto::ChunkId;

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
            owner: Some(Owner {
                uid: 1000,
                gid: 100,
            }),
        };
        let m = Manifest::new(vec![e(&["b"]), e(&["a", "x"]), e(&["a"])]);
        let paths: Vec<_> = m.entries.iter().map(Entry::display_path).collect();
        assert_eq!(paths, ["a", "a/x", "b"]);
        assert!(m.find(&p(&["a", "x"])).is_some());
        assert!(m.find(&p(&["c"])).is_none());
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn other_manifest_versions_are_a_clear_error() {
        let m = Manifest::new(vec![Entry {
            path: p(&["f"]),
            kind: EntryKind::File {
                size: 3,
                chunks: vec![ChunkRef {
                    id: ChunkId([1; 32]),
                    pack: [2; 32],
                    offset: 7,
                    sealed_len: 44,
                    len: 3,
                }],
            },
            mode: 0o644,
            mtime_ns: 0,
            owner: None,
        }]);
        let mut bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(bytes[0], MANIFEST_VERSION);
        for v in [0u8, 1, MANIFEST_VERSION + 1, 255] {
            bytes[0] = v;
            let err = Manifest::decode(&bytes).unwrap_err();
            assert_eq!(err, ManifestError::OtherVersion(v));
            assert!(err
                .to_string()
                .contains("another version of peerstore-client"));
        }
        assert!(matches!(
            Manifest::decode(&[]),
            Err(ManifestError::Malformed(_))
        ));
        assert!(matches!(
            Manifest::decode(&[MANIFEST_VERSION, 0xff, 0xff]),
            Err(ManifestError::Malformed(_))
        ));
    }

    #[test]
    fn format_2_manifests_are_read_without_owners() {
        let chunk = ChunkRef {
            id: ChunkId([3; 32]),
            pack: [4; 32],
            offset: 0,
            sealed_len: 5 + crypto::CHUNK_OVERHEAD as u32,
            len: 5,
        };
        let old = v2::Manifest {
            version: 2,
            entries: vec![
                v2::Entry {
                    path: p(&["d"]),
                    kind: EntryKind::Dir,
                    mode: 0o2775,
                    mtime_ns: -5,
                },
                v2::Entry {
                    path: p(&["d", "f"]),
                    kind: EntryKind::File {
                        size: 5,
                        chunks: vec![chunk.clone()],
                    },
                    mode: 0o4755,
                    mtime_ns: 1_700_000_000_000_000_000,
                },
                v2::Entry {
                    path: p(&["l"]),
                    kind: EntryKind::Symlink {
                        target: "d/f".into(),
                    },
                    mode: 0o777,
                    mtime_ns: 0,
                },
            ],
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        assert_eq!(bytes[0], 2);
        let m = Manifest::decode(&bytes).unwrap();
        // Upgraded in memory: encoding it again writes the current format.
        assert_eq!(m.version, MANIFEST_VERSION);
        let want = |path: &[&str], kind, mode, mtime_ns| Entry {
            path: p(path),
            kind,
            mode,
            mtime_ns,
            owner: None,
        };
        assert_eq!(
            m.entries,
            vec![
                want(&["d"], EntryKind::Dir, 0o2775, -5),
                want(
                    &["d", "f"],
                    EntryKind::File {
                        size: 5,
                        chunks: vec![chunk],
                    },
                    0o4755,
                    1_700_000_000_000_000_000
                ),
                want(
                    &["l"],
                    EntryKind::Symlink {
                        target: "d/f".into()
                    },
                    0o777,
                    0
                ),
            ]
        );
        let again = postcard::to_allocvec(&m).unwrap();
        assert_eq!(again[0], MANIFEST_VERSION);
        assert_eq!(Manifest::decode(&again).unwrap(), m);
        // Format 3 round-trips owners.
        let mut with_owner = m.clone();
        with_owner.entries[1].owner = Some(Owner { uid: 0, gid: 4242 });
        let b3 = postcard::to_allocvec(&with_owner).unwrap();
        assert_eq!(Manifest::decode(&b3).unwrap(), with_owner);
        // A truncated format-2 manifest is malformed, not a panic.
        assert!(matches!(
            Manifest::decode(&bytes[..bytes.len() - 3]),
            Err(ManifestError::Malformed(_))
        ));
    }

    #[test]
    fn root_payloads_with_and_without_the_latest_hash() {
        let ptr = RootPointer {
            latest: [9; 32],
            number: 300,
        };
        // As older clients wrote it: the pointer alone.
        let old = postcard::to_allocvec(&ptr).unwrap();
        assert_eq!(encode_root_payload(&ptr, None, 0), old);
        assert_eq!(decode_root_payload(&old).unwrap(), (ptr.clone(), None, 0));
        // No epoch without a hash.
        assert_eq!(encode_root_payload(&ptr, None, 5), old);
        // With the hash: older clients still read the pointer (postcard ignores the rest).
        let new = encode_root_payload(&ptr, Some(&[4; 32]), 0);
        assert_eq!(new.len(), old.len() + 32);
        assert_eq!(postcard::from_bytes::<RootPointer>(&new).unwrap(), ptr);
        assert_eq!(
            decode_root_payload(&new).unwrap(),
            (ptr.clone(), Some([4; 32]), 0)
        );
        // With a prune epoch: 8 more bytes, read back; clients of the hash ignore them.
        let pruned = encode_root_payload(&ptr, Some(&[4; 32]), 7);
        assert_eq!(pruned.len(), new.len() + 8);
        assert_eq!(
            decode_root_payload(&pruned).unwrap(),
            (ptr.clone(), Some([4; 32]), 7)
        );
        // Later versions may append more; a cut hash is an error.
        let mut longer = new.clone();
        longer.extend_from_slice(b"more");
        assert_eq!(decode_root_payload(&longer).unwrap().1, Some([4; 32]));
        assert!(decode_root_payload(&new[..new.len() - 1]).is_err());
        assert!(decode_root_payload(&[]).is_err());
    }

    #[test]
    fn a_parent_further_back_is_named_in_the_header() {
        let parent = Some(ParentRef {
            key: [1; 32],
            hash: [2; 32],
        });
        let next = SnapshotHeader {
            flags: 0,
            parent,
            parent_number: None,
        };
        let gap = SnapshotHeader {
            parent_number: Some(5),
            ..next
        };
        let (a, b) = (next.encode(), gap.encode());
        // Tag 1 (readable by older clients) without a gap, tag 2 and the number with one.
        assert_eq!((a[5], a.len()), (1, 6 + 64));
        assert_eq!((b[5], b.len()), (2, 6 + 64 + 8));
        assert_eq!(&b[70..], &5u64.to_le_bytes());
        for (h, d) in [(next, a), (gap, b)] {
            let split = SnapshotHeader::split(&d).unwrap().unwrap();
            assert_eq!(split.header, h);
            assert!(split.sealed.is_empty());
        }
        // Without a parent no number is written.
        let none = SnapshotHeader {
            flags: 0,
            parent: None,
            parent_number: Some(5),
        };
        assert_eq!(none.encode(), b"PSS\x02\x00\x00");
    }

    #[test]
    fn chunk_ranges_are_checked() {
        let c = |offset, sealed_len, len| ChunkRef {
            id: ChunkId([0; 32]),
            pack: [0; 32],
            offset,
            sealed_len,
            len,
        };
        let o = crypto::CHUNK_OVERHEAD as u32;
        assert_eq!(c(10, 5 + o, 5).range_in(100), Some(10..(15 + o as usize)));
        assert_eq!(c(0, o, 0).range_in(o as usize), Some(0..o as usize));
        assert_eq!(c(60, 5 + o, 5).range_in(100), None); // past the end
        assert_eq!(c(10, 6 + o, 5).range_in(100), None); // lengths disagree
        assert_eq!(c(u32::MAX, u32::MAX, u32::MAX - o).range_in(4 << 20), None);
        assert_eq!(c(0, 3, 0).range_in(100), None); // shorter than the overhead
    }
}
