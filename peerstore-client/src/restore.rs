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
//! Permissions and ownership:
//! - while a restore runs, nothing it writes is open to other users: temp files are created
//!   0600, the directories of the manifest are created 0700 (an existing one is set to 0700)
//!   and get their own mode only at the end, deepest first; a file gets its final mode with
//!   `fchmod` on the open temp file, after its contents and just before the rename;
//! - setuid and setgid bits (0o6000) are dropped, as tar does without `--same-owner`, unless
//!   the restore runs as root and the manifest records the entry's owner: then the owner is
//!   restored (`fchown`/`lchown`, before the mode, since a chown clears those bits) and the
//!   bits are kept (see [`restored_mode`]). The sticky bit is kept.
//!
//! Durability: every directory that got a new name (a file renamed in, a link or directory
//! created) or new metadata is fsynced once, at the end, before the restore reports success.
//!
//! Chunks are read through a [`PackCache`]: each pack is fetched once while it is in use, with
//! bounded memory (see `pack`).

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{fchown, lchown, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use rand::RngCore;
use serde::Serialize;

use crate::error::{ClientError, Result};
use crate::model::{check_components, Entry, EntryKind, Manifest, Owner, UnsafePath};
use crate::pack::PackCache;
use crate::progress::Progress;
use crate::repo::Repo;

/// Large files (more than one chunk) restored at once.
pub const FILES_IN_FLIGHT: usize = 4;
/// Small files (at most one chunk) restored at once.
pub const SMALL_FILES_IN_FLIGHT: usize = 32;
/// Chunks fetched at once per file.
pub const CHUNKS_IN_FLIGHT: usize = 4;
/// Directory fsyncs at once at the end of a restore.
pub const DIR_SYNCS_IN_FLIGHT: usize = 16;

/// Setuid and setgid: kept only together with the owner they were set for.
pub const SETID_BITS: u32 = 0o6000;
/// Mode of a temp file while it is written.
pub const TEMP_FILE_MODE: u32 = 0o600;
/// Mode of the manifest's directories until the end of the restore.
pub const WORK_DIR_MODE: u32 = 0o700;

/// How a restore treats ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Whether the restore runs as root: then each entry's recorded owner (if the manifest has
    /// one) is restored and its setuid/setgid bits kept. Default: [`running_as_root`]. Setting
    /// it in a process that is not root makes the first `chown` fail.
    pub as_root: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            as_root: running_as_root(),
        }
    }
}

impl RestoreOptions {
    /// The owner to give `e`, if any.
    fn owner(&self, e: &Entry) -> Option<Owner> {
        if self.as_root {
            e.owner
        } else {
            None
        }
    }

    /// The mode to give `e`.
    fn mode(&self, e: &Entry) -> u32 {
        restored_mode(e.mode, self.as_root, e.owner.is_some())
    }

    /// Whether restoring `e` drops setuid/setgid bits it was backed up with.
    fn drops_setid(&self, e: &Entry) -> bool {
        !matches!(e.kind, EntryKind::Symlink { .. }) && self.mode(e) != e.mode & 0o7777
    }
}

/// The permission bits a restored file or directory gets: `mode & 0o7777`, without setuid and
/// setgid unless the restore runs as root and restores the owner recorded in the manifest
/// (otherwise a root restore would make a user's setuid file a root-owned setuid file).
#[must_use]
pub fn restored_mode(mode: u32, as_root: bool, owner_known: bool) -> u32 {
    if as_root && owner_known {
        mode & 0o7777
    } else {
        mode & 0o7777 & !SETID_BITS
    }
}

/// Whether this process runs with effective uid 0, read from `/proc/self/status` (the
/// workspace denies `unsafe`, so no `geteuid`). False when that cannot be read: the safe side.
#[must_use]
pub fn running_as_root() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    // "Uid:	<real>	<effective>	<saved>	<filesystem>"
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse::<u32>().ok())
        == Some(0)
}

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
    /// Files and directories restored without the setuid/setgid bits they were backed up with
    /// (the restore is not root, or the manifest has no owner).
    pub setid_dropped: u64,
    /// Directories fsynced at the end.
    pub dirs_synced: u64,
    pub seconds: f64,
}

/// The directories to fsync once each before a restore reports success: those that got new
/// names (files renamed in, links and directories created) or new metadata.
#[derive(Default)]
struct DirSyncs(Mutex<BTreeSet<PathBuf>>);

impl DirSyncs {
    fn add(&self, dir: &Path) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(dir.to_path_buf());
    }

    fn add_parent_of(&self, p: &Path) {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => self.add(parent),
            _ => self.add(Path::new(".")),
        }
    }

    /// Fsyncs every directory noted (several at once, on the blocking pool). Returns how many.
    async fn sync(self) -> Result<u64> {
        let dirs = self.0.into_inner().unwrap_or_else(PoisonError::into_inner);
        let n = dirs.len() as u64;
        futures::stream::iter(dirs.into_iter().map(|d| async move {
            tokio::task::spawn_blocking(move || {
                File::open(&d)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| ClientError::io(&d, e))
            })
            .await
            .map_err(|e| ClientError::Refused(format!("fsync task failed: {e}")))?
        }))
        .buffer_unordered(DIR_SYNCS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(n)
    }
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

/// Makes sure `dest/comps...` is a real directory (creating missing ones with
/// [`WORK_DIR_MODE`]), refusing to pass through a symlink or a non-directory. Returns the
/// directory's path.
fn ensure_dir(dest: &Path, comps: &[String], synced: &DirSyncs) -> Result<PathBuf> {
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
                DirBuilder::new()
                    .mode(WORK_DIR_MODE)
                    .create(&p)
                    .map_err(|e| ClientError::io(&p, e))?;
                synced.add_parent_of(&p);
            }
            Err(e) => return Err(ClientError::io(&p, e)),
        }
    }
    Ok(p)
}

/// Gives an existing directory [`WORK_DIR_MODE`] until its own mode is set at the end of the
/// restore (which replaces its mode anyway).
fn close_dir(p: &Path) -> Result<()> {
    let md = fs::metadata(p).map_err(|e| ClientError::io(p, e))?;
    if md.permissions().mode() & 0o7777 != WORK_DIR_MODE {
        fs::set_permissions(p, fs::Permissions::from_mode(WORK_DIR_MODE))
            .map_err(|e| ClientError::io(p, e))?;
    }
    Ok(())
}

/// Creates `dir` if it is missing: its missing ancestors with the default mode (0777 less the
/// umask), `dir` itself with `mode`; notes the parents of what it created for the final
/// fsync. Fails if `dir` exists and is not a directory.
fn create_dirs(dir: &Path, mode: u32, synced: &DirSyncs) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = dir;
    while matches!(fs::symlink_metadata(p), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        missing.push(p);
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q,
            _ => break,
        }
    }
    for p in missing.into_iter().rev() {
        let mode = if p == dir { mode } else { 0o777 };
        match DirBuilder::new().mode(mode).create(p) {
            Ok(()) => synced.add_parent_of(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ClientError::io(p, e)),
        }
    }
    match fs::metadata(dir) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(ClientError::Refused(format!(
            "{} exists and is not a directory",
            dir.display()
        ))),
        Err(e) => Err(ClientError::io(dir, e)),
    }
}

fn mtime_of(ns: i64) -> std::time::SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Restores every entry of `m` below `dest` (created if missing), with the default
/// [`RestoreOptions`] (ownership restored only when running as root).
pub async fn restore_tree(
    repo: &Repo,
    m: &Manifest,
    dest: &Path,
    progress: &Arc<Progress>,
) -> Result<RestoreSummary> {
    restore_tree_with(repo, m, dest, progress, &RestoreOptions::default()).await
}

/// Restores every entry of `m` below `dest` (created if missing).
pub async fn restore_tree_with(
    repo: &Repo,
    m: &Manifest,
    dest: &Path,
    progress: &Arc<Progress>,
    opts: &RestoreOptions,
) -> Result<RestoreSummary> {
    let started = std::time::Instant::now();
    let synced = DirSyncs::default();
    let mut summary = tree(repo, m, dest, progress, opts, &synced).await?;
    summary.dirs_synced = synced.sync().await?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// [`restore_tree_with`] without the final fsyncs: the directories to sync are noted in
/// `synced`.
async fn tree(
    repo: &Repo,
    m: &Manifest,
    dest: &Path,
    progress: &Arc<Progress>,
    opts: &RestoreOptions,
    synced: &DirSyncs,
) -> Result<RestoreSummary> {
    check_manifest(m)?;
    create_dirs(dest, 0o777, synced)?;
    synced.add(dest);
    let mut summary = RestoreSummary {
        setid_dropped: m.entries.iter().filter(|e| opts.drops_setid(e)).count() as u64,
        ..RestoreSummary::default()
    };
    let cache = PackCache::with_defaults(repo);
    // 1. Directories, closed to others until step 4.
    for e in &m.entries {
        if matches!(e.kind, EntryKind::Dir) {
            let p = ensure_dir(dest, &e.path, synced)?;
            close_dir(&p)?;
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
                let dir = ensure_dir(dest, parent, synced)?;
                let r = write_file(cache, e, &dir, &name[0], &progress, opts).await?;
                synced.add(&dir);
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
            let dir = ensure_dir(dest, parent, synced)?;
            let path = dir.join(&name[0]);
            make_symlink(&path, target)?;
            set_link_owner(&path, e, opts)?;
            synced.add(&dir);
            summary.symlinks += 1;
        }
    }
    // 4. Directory owners, modes and mtimes, deepest first (writing into them changed their
    // mtime; a parent opens to others only after everything below it is final).
    for e in m.entries.iter().rev() {
        if matches!(e.kind, EntryKind::Dir) {
            let p = ensure_dir(dest, &e.path, synced)?;
            set_dir_meta(&p, e, opts)?;
            synced.add(&p);
        }
    }
    summary.packs_fetched = cache.fetched();
    Ok(summary)
}

/// Sets a directory's owner (root only, when recorded), mode and mtime, through one open file
/// descriptor.
fn set_dir_meta(p: &Path, e: &Entry, opts: &RestoreOptions) -> Result<()> {
    let d = File::open(p).map_err(|err| ClientError::io(p, err))?;
    if let Some(o) = opts.owner(e) {
        fchown(&d, Some(o.uid), Some(o.gid)).map_err(|err| ClientError::io(p, err))?;
    }
    d.set_permissions(fs::Permissions::from_mode(opts.mode(e)))
        .map_err(|err| ClientError::io(p, err))?;
    d.set_modified(mtime_of(e.mtime_ns))
        .map_err(|err| ClientError::io(p, err))
}

/// Gives a restored symlink its recorded owner (root only).
fn set_link_owner(path: &Path, e: &Entry, opts: &RestoreOptions) -> Result<()> {
    match opts.owner(e) {
        Some(o) => lchown(path, Some(o.uid), Some(o.gid)).map_err(|err| ClientError::io(path, err)),
        None => Ok(()),
    }
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
/// must exist. A directory entry restores the subtree below it. Uses the default
/// [`RestoreOptions`].
pub async fn restore_entry(
    repo: &Repo,
    m: &Manifest,
    entry: &Entry,
    target: &Path,
    progress: &Arc<Progress>,
) -> Result<RestoreSummary> {
    restore_entry_with(repo, m, entry, target, progress, &RestoreOptions::default()).await
}

/// Restores one entry as `target` (see [`restore_entry`]).
pub async fn restore_entry_with(
    repo: &Repo,
    m: &Manifest,
    entry: &Entry,
    target: &Path,
    progress: &Arc<Progress>,
    opts: &RestoreOptions,
) -> Result<RestoreSummary> {
    let started = std::time::Instant::now();
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ClientError::Config(format!("bad destination {}", target.display())))?
        .to_string();
    let synced = DirSyncs::default();
    let mut summary = match &entry.kind {
        EntryKind::File { .. } => {
            let cache = PackCache::with_defaults(repo);
            let (bytes, chunks) = write_file(&cache, entry, parent, &name, progress, opts).await?;
            synced.add(parent);
            RestoreSummary {
                files: 1,
                bytes,
                chunks_fetched: chunks,
                packs_fetched: cache.fetched(),
                setid_dropped: u64::from(opts.drops_setid(entry)),
                ..RestoreSummary::default()
            }
        }
        EntryKind::Symlink { target: t } => {
            make_symlink(target, t)?;
            set_link_owner(target, entry, opts)?;
            synced.add(parent);
            RestoreSummary {
                symlinks: 1,
                ..RestoreSummary::default()
            }
        }
        EntryKind::Dir => {
            // Closed to others like every directory below it until its own mode is set.
            create_dirs(target, WORK_DIR_MODE, &synced)?;
            close_dir(target)?;
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
            let mut s = tree(repo, &Manifest::new(sub), target, progress, opts, &synced).await?;
            set_dir_meta(target, entry, opts)?;
            synced.add(target);
            s.dirs += 1;
            s.setid_dropped += u64::from(opts.drops_setid(entry));
            s
        }
    };
    summary.dirs_synced = synced.sync().await?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
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

/// Writes a file entry as `dir/name` via a temp file (mode 0600 until it is complete), fsync
/// and a rename. Returns (bytes, chunks). The caller fsyncs `dir` later.
async fn write_file(
    cache: &PackCache,
    e: &Entry,
    dir: &Path,
    name: &str,
    progress: &Arc<Progress>,
    opts: &RestoreOptions,
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
        .mode(TEMP_FILE_MODE)
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
        // Owner first (a chown clears setuid/setgid), then the final mode: both on the open
        // file (fchown, fchmod), before the rename.
        if let Some(o) = opts.owner(e) {
            fchown(&f, Some(o.uid), Some(o.gid)).map_err(|err| ClientError::io(&tmp, err))?;
        }
        f.set_permissions(fs::Permissions::from_mode(opts.mode(e)))
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
