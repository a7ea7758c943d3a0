//! Restore: write a snapshot's tree (or one file) below a destination directory, never outside it.
//!
//! Safety rules, applied to every manifest whatever its origin:
//! - every path component must be a plain name (no `..`, `.`, empty, separators, NUL), checked
//!   for the whole manifest before anything is written;
//! - no entry may lie below a symlink entry of the same manifest;
//! - every directory on the way from the destination to a file is checked with
//!   `symlink_metadata`: a symlink (or a non-directory) there stops the restore, so nothing is
//!   ever written through a link;
//! - symlinks are created last, after every file and directory;
//! - files are written to a fresh temp file (`create_new`, so it cannot be a pre-planted link) in
//!   their directory, every chunk verified (its slice of the pack, the AEAD tag against the
//!   chunk id, its length), fsynced, and renamed into place: a name never shows half a file.
//!
//! Chunks are read through a [`PackCache`]: each pack is fetched once while it is in use, with
//! bounded memory (see `pack`).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use rand::RngCore;
use serde::Serialize;

use crate::error::{ClientError, Result};
use crate::model::{check_components, Entry, EntryKind, Manifest, UnsafePath};
use crate::pack::PackCache;
use crate::progress::Progress;
use crate::repo::Repo;

/// Large files (more than one chunk) restored at once.
pub const FILES_IN_FLIGHT: usize = 4;
/// Small files (at most one chunk) restored at once.
pub const SMALL_FILES_IN_FLIGHT: usize = 32;
/// Chunks fetched at once per file.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// What a restore did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub chunks_fetched: u64,
    /// Pack files read from the ring.
    pub packs_fetched: u64,
    pub seconds: f64,
}

/// Checks a whole manifest before restoring any of it (see the module docs).
pub fn check_manifest(m: &Manifest) -> Result<(), UnsafePath> {
    let links: BTreeSet<&[String]> = m
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Symlink { .. }))
        .map(|e| e.path.as_slice())
        .collect();
    let mut seen = BTreeSet::new();
    for e in &m.entries {
        check_components(&e.path)?;
        if !seen.insert(e.path.as_slice()) {
            return Err(UnsafePath {
                path: e.display_path(),
                reason: "listed twice",
            });
        }
        for i in 1..e.path.len() {
            if links.contains(&e.path[..i]) {
                return Err(UnsafePath {
                    path: e.display_path(),
                    reason: "lies below a symlink",
                });
            }
        }
    }
    Ok(())
}

/// Makes sure `dest/comps...` is a real directory (creating missing ones), refusing to pass
/// through a symlink or a non-directory. Returns the directory's path.
pub fn ensure_dir(dest: &Path, comps: &[String]) -> Result<PathBuf> {
    let mut p = dest.to_path_buf();
    for c in comps {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(md) if md.file_type().is_dir() => {}
            Ok(md) if md.file_type().is_symlink() => {
                return Err(ClientError::Refused(format!(
                    "{} is a symlink; refusing to restore through it",
                    p.display()
                )))
            }
            Ok(_) => {
                return Err(ClientError::Refused(format!(
                    "{} exists and is not a directory",
                    p.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&p).map_err(|e| ClientError::io(&p, e))?;
            }
            Err(e) => return Err(ClientError::io(&p, e)),
        }
    }
    Ok(p)
}

fn mtime_of(ns: i64) -> std::time::SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Restores every entry of `m` below `dest` (created if missing).
pub async fn restore_tree(
    repo: &Repo,
    m: &Manifest,
    dest: &Path,
    progress: &Arc<Progress>,
) -> Result<RestoreSummary> {
    let started = std::time::Instant::now();
    check_manifest(m)?;
    fs::create_dir_all(dest).map_err(|e| ClientError::io(dest, e))?;
    let mut summary = RestoreSummary::default();
    let cache = PackCache::with_defaults(repo);
    // 1. Directories.
    for e in &m.entries {
        if matches!(e.kind, EntryKind::Dir) {
            ensure_dir(dest, &e.path)?;
            summary.dirs += 1;
        }
    }
    // 2. Files, several at a time: many small ones, a few large ones (bounded memory).
    let (small, large): (Vec<&Entry>, Vec<&Entry>) = m
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File { .. }))
        .partition(|e| matches!(&e.kind, EntryKind::File { chunks, .. } if chunks.len() <= 1));
    for (files, parallel) in [(small, SMALL_FILES_IN_FLIGHT), (large, FILES_IN_FLIGHT)] {
        let cache = &cache;
        let results: Vec<(u64, u64)> = futures::stream::iter(files.into_iter().map(|e| {
            let progress = progress.clone();
            async move {
                let (parent, name) = e.path.split_at(e.path.len() - 1);
                let dir = ensure_dir(dest, parent)?;
                let r = write_file(cache, e, &dir, &name[0], &progress).await?;
                progress.file_done();
                Ok::<_, ClientError>(r)
            }
        }))
        .buffer_unordered(parallel)
        .try_collect()
        .await?;
        for (bytes, chunks) in results {
            summary.files += 1;
            summary.bytes += bytes;
            summary.chunks_fetched += chunks;
        }
    }
    // 3. Symlinks, last.
    for e in &m.entries {
        if let EntryKind::Symlink { target } = &e.kind {
            let (parent, name) = e.path.split_at(e.path.len() - 1);
            let dir = ensure_dir(dest, parent)?;
            make_symlink(&dir.join(&name[0]), target)?;
            summary.symlinks += 1;
        }
    }
    // 4. Directory modes and mtimes, deepest first (writing into them changed their mtime).
    for e in m.entries.iter().rev() {
        if matches!(e.kind, EntryKind::Dir) {
            let p = ensure_dir(dest, &e.path)?;
            set_dir_meta(&p, e)?;
        }
    }
    summary.packs_fetched = cache.fetched();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn set_dir_meta(p: &Path, e: &Entry) -> Result<()> {
    let d = File::open(p).map_err(|err| ClientError::io(p, err))?;
    d.set_modified(mtime_of(e.mtime_ns))
        .map_err(|err| ClientError::io(p, err))?;
    fs::set_permissions(p, fs::Permissions::from_mode(e.mode & 0o7777))
        .map_err(|err| ClientError::io(p, err))
}

fn make_symlink(path: &Path, target: &str) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => {
            return Err(ClientError::Refused(format!(
                "{} exists and is a directory",
                path.display()
            )))
        }
        Ok(_) => fs::remove_file(path).map_err(|e| ClientError::io(path, e))?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, path).map_err(|e| ClientError::io(path, e))
}

/// Restores one entry (file, symlink or empty directory) as `target`, whose parent directory
/// must exist. A directory entry restores the subtree below it.
pub async fn restore_entry(
    repo: &Repo,
    m: &Manifest,
    entry: &Entry,
    target: &Path,
    progress: &Arc<Progress>,
) -> Result<RestoreSummary> {
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ClientError::Config(format!("bad destination {}", target.display())))?
        .to_string();
    match &entry.kind {
        EntryKind::File { .. } => {
            let cache = PackCache::with_defaults(repo);
            let (bytes, chunks) = write_file(&cache, entry, parent, &name, progress).await?;
            Ok(RestoreSummary {
                files: 1,
                bytes,
                chunks_fetched: chunks,
                packs_fetched: cache.fetched(),
                ..RestoreSummary::default()
            })
        }
        EntryKind::Symlink { target: t } => {
            make_symlink(target, t)?;
            Ok(RestoreSummary {
                symlinks: 1,
                ..RestoreSummary::default()
            })
        }
        EntryKind::Dir => {
            // The subtree, re-rooted at `target`.
            let n = entry.path.len();
            let sub: Vec<Entry> = m
                .entries
                .iter()
                .filter(|e| e.is_under(&entry.path) && e.path.len() > n)
                .map(|e| Entry {
                    path: e.path[n..].to_vec(),
                    ..e.clone()
                })
                .collect();
            let mut s = restore_tree(repo, &Manifest::new(sub), target, progress).await?;
            set_dir_meta(target, entry)?;
            s.dirs += 1;
            Ok(s)
        }
    }
}

/// Checks a file entry's chunk list before anything is fetched: lengths consistent, every
/// chunk inside the largest possible pack, and the chunks adding up to the size.
fn check_chunks(e: &Entry, size: u64, chunks: &[crate::model::ChunkRef]) -> Result<()> {
    let mut total = 0u64;
    for c in chunks {
        if c.range_in(peerstore_proto::MAX_BLOCK_SIZE).is_none() {
            return Err(ClientError::Corrupt(format!(
                "{}: a chunk reference lies outside any pack",
                e.display_path()
            )));
        }
        total += u64::from(c.len);
    }
    if total != size {
        return Err(ClientError::Corrupt(format!(
            "{}: chunks add up to {total} bytes, manifest says {size}",
            e.display_path()
        )));
    }
    Ok(())
}

/// Writes a file entry as `dir/name` via a temp file, fsync and a rename. Returns (bytes,
/// chunks).
async fn write_file(
    cache: &PackCache,
    e: &Entry,
    dir: &Path,
    name: &str,
    progress: &Arc<Progress>,
) -> Result<(u64, u64)> {
    let EntryKind::File { size, chunks } = &e.kind else {
        return Err(ClientError::Refused(format!(
            "{} is not a file",
            e.display_path()
        )));
    };
    check_chunks(e, *size, chunks)?;
    let final_path = dir.join(name);
    if let Ok(md) = fs::symlink_metadata(&final_path) {
        if md.is_dir() {
            return Err(ClientError::Refused(format!(
                "{} exists and is a directory",
                final_path.display()
            )));
        }
    }
    let mut rnd = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut rnd);
    let tmp = dir.join(format!(".{name}.peerstore-{}.tmp", hex::encode(rnd)));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|err| ClientError::io(&tmp, err))?;
    // Removes the temp file unless it was renamed into place, also when this future is
    // dropped halfway (another file's failure ends the whole restore).
    let mut guard = TempFile(Some(tmp.clone()));
    let result = async {
        let mut written = 0u64;
        let path = e.display_path();
        let path = &path;
        let mut stream = futures::stream::iter(
            chunks
                .iter()
                .map(|c| async move { cache.open_chunk(c, path).await }),
        )
        .buffered(CHUNKS_IN_FLIGHT);
        while let Some(plain) = stream.next().await {
            let plain = plain?;
            f.write_all(&plain)
                .map_err(|err| ClientError::io(&tmp, err))?;
            written += plain.len() as u64;
            progress.add_bytes(plain.len() as u64);
        }
        if written != *size {
            return Err(ClientError::Corrupt(format!(
                "{}: chunks add up to {written} bytes, manifest says {size}",
                e.display_path()
            )));
        }
        f.set_permissions(fs::Permissions::from_mode(e.mode & 0o7777))
            .map_err(|err| ClientError::io(&tmp, err))?;
        f.set_modified(mtime_of(e.mtime_ns))
            .map_err(|err| ClientError::io(&tmp, err))?;
        // fsync and rename on the blocking pool: many files' fsyncs then overlap (the file
        // system commits them together) without stalling the async workers.
        let (tmp2, final2) = (tmp.clone(), final_path.clone());
        tokio::task::spawn_blocking(move || {
            f.sync_all().map_err(|err| ClientError::io(&tmp2, err))?;
            drop(f);
            fs::rename(&tmp2, &final2).map_err(|err| ClientError::io(&final2, err))
        })
        .await
        .map_err(|err| ClientError::Refused(format!("write task failed: {err}")))??;
        Ok((written, chunks.len() as u64))
    }
    .await;
    if result.is_ok() {
        guard.0 = None;
    }
    result
}

/// A temp file that is removed when dropped while still set.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}
