//! `check`: walks every kept snapshot, makes sure everything it references can be read from
//! the ring, and forgets what cannot, so that the next backup stores it again (restic's
//! `check`, for a ring that may have lost data behind the client's back).
//!
//! Every snapshot object and manifest is read and verified (each object bound to the number and
//! parent its referrer names, AEAD tags). Every pack that a kept manifest references is fetched
//! once and checked: against its key where the ring keys documents by their hash (the node
//! checked it against its document record on an entangled ring), and its length must cover
//! every chunk the manifests place in it. With `--read-data` every chunk is also decrypted and
//! checked against its id. A pack that cannot be had is reported, removed from
//! the dedup cache and listed in the user's `missing-packs` file, which the next backup reads:
//! files whose chunks live in a missing pack are read again instead of being taken over from
//! the previous snapshot, so their data is uploaded again. Snapshots that reference a missing
//! pack stay broken (what is gone from every node is gone); the report names them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::cache::KnownBlocks;
use crate::error::{ClientError, Result};
use crate::model::{EntryKind, Manifest};
use crate::pack::PackCache;
use crate::repo::Repo;

/// What `check` found.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    /// Snapshots walked.
    pub snapshots: u64,
    /// Distinct packs referenced.
    pub packs: u64,
    /// Chunks decrypted and verified (`--read-data`).
    pub chunks_verified: u64,
    /// Packs that could not be read (hex keys).
    pub missing_packs: Vec<String>,
    /// Chunks whose bytes failed verification (`--read-data`): "path: error".
    pub bad_chunks: Vec<String>,
    /// Snapshot numbers that reference something missing or bad.
    pub damaged_snapshots: Vec<u64>,
    /// Dedup-cache entries forgotten.
    pub cache_entries_purged: u64,
}

impl CheckReport {
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.missing_packs.is_empty() && self.bad_chunks.is_empty()
    }
}

/// Checks every kept snapshot (see the module docs).
pub async fn check(
    repo: &Repo,
    known: &KnownBlocks,
    missing_file: &Path,
    read_data: bool,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let snapshots = repo.snapshots().await?;
    report.snapshots = snapshots.len() as u64;
    // pack -> the snapshots that use it
    let mut users: BTreeMap<[u8; 32], BTreeSet<u64>> = BTreeMap::new();
    // pack -> the end of the last chunk any manifest places in it
    let mut ends: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    let mut manifests: Vec<(u64, Manifest)> = Vec::new();
    for s in &snapshots {
        let m = repo.load_manifest(s).await?;
        for e in &m.entries {
            if let EntryKind::File { chunks, .. } = &e.kind {
                for c in chunks {
                    users.entry(c.pack).or_default().insert(s.snapshot.number);
                    let end = u64::from(c.offset) + u64::from(c.sealed_len);
                    let e = ends.entry(c.pack).or_default();
                    *e = (*e).max(end);
                }
            }
        }
        if read_data {
            manifests.push((s.snapshot.number, m));
        }
    }
    report.packs = users.len() as u64;
    let packs = PackCache::with_defaults(repo);
    let mut missing: HashSet<[u8; 32]> = HashSet::new();
    let mut damaged: BTreeSet<u64> = BTreeSet::new();
    for (pack, used_by) in &users {
        // A pack that cannot be read, fails its hash or is shorter than its chunks need.
        let whole = match packs.get(*pack).await {
            Ok(bytes) => (bytes.len() as u64) >= ends.get(pack).copied().unwrap_or(0),
            Err(_) => false,
        };
        if !whole {
            missing.insert(*pack);
            report.missing_packs.push(hex::encode(pack));
            damaged.extend(used_by);
        }
    }
    let mut bad_packs: HashSet<[u8; 32]> = HashSet::new();
    for (number, m) in &manifests {
        for e in &m.entries {
            let EntryKind::File { chunks, .. } = &e.kind else {
                continue;
            };
            for c in chunks.iter().filter(|c| !missing.contains(&c.pack)) {
                match packs.open_chunk(c, &e.display_path()).await {
                    Ok(_) => report.chunks_verified += 1,
                    Err(err) => {
                        report
                            .bad_chunks
                            .push(format!("{}: {err}", e.display_path()));
                        bad_packs.insert(c.pack);
                        damaged.insert(*number);
                    }
                }
            }
        }
    }
    missing.extend(bad_packs);
    report.damaged_snapshots = damaged.into_iter().collect();
    if !missing.is_empty() {
        report.cache_entries_purged = known.purge_packs(&missing)? as u64;
        let mut all = load_missing(missing_file)?;
        all.extend(missing);
        save_missing(missing_file, &all)?;
    }
    Ok(report)
}

/// The packs a `check` found missing (none if the file does not exist).
pub fn load_missing(path: &Path) -> Result<HashSet<[u8; 32]>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(ClientError::io(path, e)),
    };
    let mut out = HashSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut k = [0u8; 32];
        hex::decode_to_slice(line.trim(), &mut k).map_err(|_| {
            ClientError::Corrupt(format!(
                "{}: {line:?} is not a pack key; remove the file and run check again",
                path.display()
            ))
        })?;
        out.insert(k);
    }
    Ok(out)
}

fn save_missing(path: &Path, packs: &HashSet<[u8; 32]>) -> Result<()> {
    use std::io::Write;
    let mut keys: Vec<String> = packs.iter().map(hex::encode).collect();
    keys.sort();
    let tmp = path.with_extension("tmp");
    let io = |e| ClientError::io(path, e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all((keys.join("\n") + "\n").as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Removes from a previous manifest the files that have chunks in `missing` packs, so that a
/// backup reads them again instead of taking them over. Returns how many were removed.
pub fn forget_files_in(prev: &mut Manifest, missing: &HashSet<[u8; 32]>) -> usize {
    let before = prev.entries.len();
    prev.entries.retain(|e| match &e.kind {
        EntryKind::File { chunks, .. } => !chunks.iter().any(|c| missing.contains(&c.pack)),
        _ => true,
    });
    before - prev.entries.len()
}
