//! Restore: write a snapshot's tree (or one file) below a destination directory, never outside it.
//!
//! Safety rules, applied to every manifest whatever its origin:
//! - every path component must be a plain name (no `..`, `.`, empty, separators, NUL), checked
//!   for the whole manifest before anything is written;
//! - no entry may lie below a symlink entry of the same manifest;
//! - the walk goes through directory file descriptors, never through paths: the destination
//!   (the caller's, followed if it is a link) is opened once with `O_DIRECTORY`, and every
//!   directory below it is reached one component at a time with `openat(parent, name,
//!   O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)` (a missing one is made first with `mkdirat`, mode
//!   0700). A symlink (or a non-directory) where a directory is expected stops the restore,
//!   and since each step starts from the descriptor of a directory already checked, swapping a
//!   checked directory for a link afterwards cannot redirect anything: there is no window
//!   between a check and a use. Descriptors of recently used directories are kept (at most
//!   [`DIR_FDS_CACHED`]) so that a file does not reopen its whole path;
//! - everything is done relative to a directory descriptor: temp files are created with
//!   `openat(dir, tmp, O_CREAT | O_EXCL | O_NOFOLLOW ...)` (so a temp name cannot be a
//!   pre-planted link), renamed with `renameat`, links made with `symlinkat` (after `unlinkat`
//!   of a non-directory at that name) and given their owner with `fchownat(..,
//!   AT_SYMLINK_NOFOLLOW)`; a directory's metadata is set and it is fsynced through its own
//!   descriptor;
//! - symlinks are created last, after every file and directory;
//! - files are written to a fresh temp file in their directory, every chunk verified (its slice
//!   of the pack, the AEAD tag against the chunk id, its length), made durable, and only then
//!   renamed into place: a name never shows half a file, not even after a crash (see `files`).
//!
//! What descriptors do not cover: a directory that someone else may rename (one in a directory
//! they can write, that they own) can be moved after it was opened, and what the restore then
//! writes into it goes where it went, as with any program holding a directory open. The
//! directories a restore creates are 0700 and the user's own, so others cannot move them to
//! another parent (that needs write access to the directory itself).
//!
//! Permissions and ownership:
//! - while a restore runs, nothing it writes is open to other users: temp files are created
//!   0600, the directories of the manifest are created 0700 (an existing one is set to 0700)
//!   and get their own mode only at the end, deepest first; a file gets its final mode with
//!   `fchmod` on the open temp file, after its contents and before it is made durable and
//!   renamed;
//! - setuid and setgid bits (0o6000) are dropped, as tar does without `--same-owner`, unless
//!   the restore runs as root and the manifest records the entry's owner: then the owner is
//!   restored (`fchown`/`fchownat`, before the mode, since a chown clears those bits) and the
//!   bits are kept (see [`restored_mode`]). The sticky bit is kept.
//!
//! Durability: a file's data and inode are on stable storage before its name appears: each
//! file is fsynced before its rename, or (Linux 5.8 and later) a batch of files is made durable
//! with `syncfs` before the batch is renamed ([`SYNC_BATCH_FILES`] files at most, cut after
//! [`SYNC_BATCH_WAIT`]); see `files`. Every directory that got a new name (a file renamed in, a
//! link or directory created) or new metadata is fsynced once, at the end (not once per file),
//! before the restore reports success.
//!
//! Speed: the files that lie in one pack (small files: nearly all of a source tree) are
//! written by pack, in the order the backup wrote the packs, each pack fetched once and
//! [`PACKS_AHEAD`] packs ahead of [`WRITERS`] blocking writers; files spanning several packs
//! stream their chunks through a [`PackCache`] (bounded memory, see `pack`). No per-file round
//! trip to the ring, no per-file directory fsync.
//!
//! Resuming: a restore into a destination an earlier run did not finish skips the files that
//! run restored whole: in a directory that existed before this run, a regular file at a file's
//! name with the manifest's size, mtime to the nanosecond and (restored) mode, and owner when
//! the restore sets owners, is kept (the quick check of rsync and of the backup itself: a file
//! changed behind the restore's back with size and mtime kept is not noticed). This is sound
//! for what a restore leaves behind because it shows a name only once the file under it is
//! complete and durable with its final mode and mtime. Temp files an interrupted run left there
//! (`.<name>.peerstore-<12 hex digits>.tmp`, regular files, for a file of the manifest in that
//! directory) are removed first. [`RestoreSummary::files_skipped`] and
//! [`RestoreSummary::temp_files_removed`] count them. Two restores into one destination at
//! once are not supported (one would remove the other's temp files).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, DirBuilder, File};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{fchown, DirBuilderExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;
use serde::Serialize;

use crate::error::{ClientError, Result};
use crate::model::{check_components, Entry, EntryKind, Manifest, Owner, UnsafePath};
use crate::pack::PackCache;
use crate::progress::Progress;
use crate::repo::Repo;

mod files;

use files::Durability;
pub use files::{
    CHUNKS_IN_FLIGHT, COMMIT_QUEUE, FSYNCS_IN_FLIGHT, PACKS_AHEAD, SPANNING_IN_FLIGHT,
    SYNC_BATCH_BYTES, SYNC_BATCH_DIRS, SYNC_BATCH_FILES, SYNC_BATCH_WAIT, UNIT_FILES, WRITERS,
};

/// Directory fsyncs at once at the end of a restore.
pub const DIR_SYNCS_IN_FLIGHT: usize = 16;
/// Directory file descriptors a restore keeps open for reuse (the most recently used ones).
pub const DIR_FDS_CACHED: usize = 128;

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
    /// Files now in place: written by this run, or found restored whole ([`Self::files_skipped`]).
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Files an earlier, interrupted run had already restored whole: not written again (see
    /// "Resuming" in the module docs).
    pub files_skipped: u64,
    /// Bytes of those files.
    pub bytes_skipped: u64,
    /// Temp files an interrupted run had left, removed.
    pub temp_files_removed: u64,
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

/// A directory to fsync at the end of a restore.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SyncDir {
    /// Above the walk's root (the destination's parent when the restore created it): the
    /// caller's, opened by path.
    Outside(PathBuf),
    /// The walk's root (no components) or a directory below it, reached through descriptors.
    Below(Vec<String>),
}

/// The directories to fsync once each before a restore reports success: those that got new
/// names (files renamed in, links and directories created) or new metadata.
#[derive(Default)]
struct DirSyncs(Mutex<BTreeSet<SyncDir>>);

impl DirSyncs {
    fn insert(&self, d: SyncDir) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(d);
    }

    /// Notes the walk's root (`comps` empty) or the directory `comps` below it.
    fn add(&self, comps: &[String]) {
        self.insert(SyncDir::Below(comps.to_vec()));
    }

    /// Notes the parent of `p`, a path above the walk's root.
    fn add_parent_of(&self, p: &Path) {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => {
                self.insert(SyncDir::Outside(parent.to_path_buf()));
            }
            _ => self.insert(SyncDir::Outside(PathBuf::from("."))),
        }
    }

    /// Fsyncs every directory noted (several at once, on the blocking pool), those below the
    /// root through `walk`'s descriptors. Returns how many.
    async fn sync(&self, walk: &Arc<Walk>) -> Result<u64> {
        let dirs = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        let n = dirs.len() as u64;
        futures::stream::iter(dirs.into_iter().map(|d| {
            let walk = walk.clone();
            async move {
                tokio::task::spawn_blocking(move || match d {
                    SyncDir::Outside(p) => File::open(&p)
                        .and_then(|f| f.sync_all())
                        .map_err(|e| ClientError::io(&p, e)),
                    SyncDir::Below(comps) => {
                        let dir = walk.dir(&comps, None)?;
                        rustix::fs::fsync(&*dir.fd)
                            .map_err(|e| ClientError::io(&dir.path, e.into()))
                    }
                })
                .await
                .map_err(|e| ClientError::Refused(format!("fsync task failed: {e}")))?
            }
        }))
        .buffer_unordered(DIR_SYNCS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(n)
    }
}

/// An open directory of a restore and its path (for messages).
struct Dir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
    /// The file system it is on (`st_dev`).
    dev: u64,
}

/// The directories of one restore, reached from its root through directory descriptors only
/// (see the module docs). Keeps the descriptors of the [`DIR_FDS_CACHED`] most recently used
/// directories.
struct Walk {
    root: Arc<OwnedFd>,
    root_path: PathBuf,
    root_dev: u64,
    cache: Mutex<DirCache>,
    /// For each file system the restore reached, the first directory opened on it: a
    /// descriptor opened before the restore wrote anything there, for `syncfs` (which reports
    /// the write-back errors since the descriptor was opened).
    devs: Mutex<HashMap<u64, Arc<OwnedFd>>>,
    /// Whether this restore created the root.
    root_fresh: AtomicBool,
    /// The directories below the root this restore created (`mkdirat`): nothing of an earlier
    /// run can be in them.
    fresh: Mutex<HashSet<Vec<String>>>,
}

/// Open directories by components below the root, with their device and the tick of their
/// last use.
#[derive(Default)]
struct DirCache {
    dirs: HashMap<Vec<String>, (Arc<OwnedFd>, u64, u64)>,
    tick: u64,
}

impl DirCache {
    fn get(&mut self, comps: &[String]) -> Option<(Arc<OwnedFd>, u64)> {
        self.tick += 1;
        let tick = self.tick;
        self.dirs.get_mut(comps).map(|(fd, dev, used)| {
            *used = tick;
            (fd.clone(), *dev)
        })
    }

    fn insert(&mut self, comps: &[String], fd: Arc<OwnedFd>, dev: u64) {
        if self.dirs.len() >= DIR_FDS_CACHED && !self.dirs.contains_key(comps) {
            let oldest = self
                .dirs
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.dirs.remove(&k);
            }
        }
        self.tick += 1;
        self.dirs.insert(comps.to_vec(), (fd, dev, self.tick));
    }
}

/// The device of an open file (`st_dev`).
fn dev_of(fd: &OwnedFd, path: &Path) -> Result<u64> {
    let st = rustix::fs::fstat(fd).map_err(|e| ClientError::io(path, e.into()))?;
    #[allow(clippy::unnecessary_cast)] // u64 on most targets, not all
    Ok(st.st_dev as u64)
}

/// Flags of every directory opened below the root: never through a link.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Walk {
    /// Opens `root`, the caller's directory (a symlink there is followed: the caller chose the
    /// path).
    fn open(root: &Path) -> Result<Walk> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => {
                ClientError::Refused(format!("{} exists and is not a directory", root.display()))
            }
            e => ClientError::io(root, e.into()),
        })?;
        let root_dev = dev_of(&fd, root)?;
        let fd = Arc::new(fd);
        Ok(Walk {
            root: fd.clone(),
            root_path: root.to_path_buf(),
            root_dev,
            cache: Mutex::new(DirCache::default()),
            devs: Mutex::new(HashMap::from([(root_dev, fd)])),
            root_fresh: AtomicBool::new(false),
            fresh: Mutex::new(HashSet::new()),
        })
    }

    /// Notes that this restore created the root.
    fn set_root_fresh(&self) {
        self.root_fresh.store(true, Ordering::Relaxed);
    }

    /// Whether this restore created the directory `comps` (the root when empty).
    fn is_fresh(&self, comps: &[String]) -> bool {
        if comps.is_empty() {
            self.root_fresh.load(Ordering::Relaxed)
        } else {
            self.fresh
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(comps)
        }
    }

    fn path_of(&self, comps: &[String]) -> PathBuf {
        let mut p = self.root_path.clone();
        p.extend(comps);
        p
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, DirCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the directory `comps` below the root, one component at a time from the nearest
    /// directory already open, never following a link. With `create`, missing directories are
    /// made ([`WORK_DIR_MODE`]) and their parents noted there for the final fsync; without,
    /// a missing one is an error.
    fn dir(&self, comps: &[String], create: Option<&DirSyncs>) -> Result<Dir> {
        let (mut fd, mut dev, start) = {
            let mut cache = self.cache();
            (0..=comps.len())
                .rev()
                .find_map(|i| match i {
                    0 => Some((self.root.clone(), self.root_dev, 0)),
                    i => cache.get(&comps[..i]).map(|(fd, dev)| (fd, dev, i)),
                })
                .unwrap_or_else(|| (self.root.clone(), self.root_dev, 0))
        };
        for i in start..comps.len() {
            let child = Arc::new(self.open_child(&fd, &comps[..=i], create)?);
            dev = dev_of(&child, &self.path_of(&comps[..=i]))?;
            self.devs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(dev)
                .or_insert_with(|| child.clone());
            self.cache().insert(&comps[..=i], child.clone(), dev);
            fd = child;
        }
        Ok(Dir {
            fd,
            path: self.path_of(comps),
            dev,
        })
    }

    /// The descriptor to `syncfs` the file system `dev` through (see [`Walk::devs`]).
    fn sync_fd(&self, dev: u64) -> Option<Arc<OwnedFd>> {
        self.devs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&dev)
            .cloned()
    }

    /// Opens the last component of `comps` in `parent` (the directory of the others).
    fn open_child(
        &self,
        parent: &OwnedFd,
        comps: &[String],
        create: Option<&DirSyncs>,
    ) -> Result<OwnedFd> {
        let name = comps[comps.len() - 1].as_str();
        let mut made = false;
        loop {
            match rustix::fs::openat(parent, name, dir_flags(), Mode::empty()) {
                Ok(fd) => return Ok(fd),
                Err(Errno::NOENT) if !made && create.is_some() => {
                    made = true;
                    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(WORK_DIR_MODE)) {
                        Ok(()) => {
                            if let Some(synced) = create {
                                synced.add(&comps[..comps.len() - 1]);
                            }
                            self.fresh
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .insert(comps.to_vec());
                        }
                        // Made meanwhile by another file of this restore (or someone else:
                        // the open checks what it is).
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(ClientError::io(self.path_of(comps), e.into())),
                    }
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let p = self.path_of(comps);
                    let link = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                    return Err(ClientError::Refused(if link {
                        format!(
                            "{} is a symlink; refusing to restore through it",
                            p.display()
                        )
                    } else {
                        format!("{} exists and is not a directory", p.display())
                    }));
                }
                Err(e) => return Err(ClientError::io(self.path_of(comps), e.into())),
            }
        }
    }
}

/// Gives an existing directory [`WORK_DIR_MODE`] until its own mode is set at the end of the
/// restore (which replaces its mode anyway), through its descriptor.
fn close_dir(d: &Dir) -> Result<()> {
    let st = rustix::fs::fstat(&*d.fd).map_err(|e| ClientError::io(&d.path, e.into()))?;
    if st.st_mode & 0o7777 != WORK_DIR_MODE {
        rustix::fs::fchmod(&*d.fd, Mode::from_raw_mode(WORK_DIR_MODE))
            .map_err(|e| ClientError::io(&d.path, e.into()))?;
    }
    Ok(())
}

/// Creates `dir` if it is missing: its missing ancestors with the default mode (0777 less the
/// umask), `dir` itself with `mode`; notes the parents of what it created for the final
/// fsync. Fails if `dir` exists and is not a directory. `dir` is the caller's path (the
/// destination), so this goes by path; everything below it goes through [`Walk`]. Returns
/// whether it created `dir`.
fn create_dirs(dir: &Path, mode: u32, synced: &DirSyncs) -> Result<bool> {
    let mut created = false;
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
            Ok(()) => {
                synced.add_parent_of(p);
                created |= p == dir;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ClientError::io(p, e)),
        }
    }
    match fs::metadata(dir) {
        Ok(md) if md.is_dir() => Ok(created),
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
    restore_tree_durably(repo, m, dest, progress, opts, Durability::best()).await
}

/// [`restore_tree_with`] with the way files are made durable chosen.
async fn restore_tree_durably(
    repo: &Repo,
    m: &Manifest,
    dest: &Path,
    progress: &Arc<Progress>,
    opts: &RestoreOptions,
    durability: Durability,
) -> Result<RestoreSummary> {
    let started = std::time::Instant::now();
    check_manifest(m)?;
    let synced = Arc::new(DirSyncs::default());
    let created = create_dirs(dest, 0o777, &synced)?;
    let walk = Arc::new(Walk::open(dest)?);
    if created {
        walk.set_root_fresh();
    }
    let mut summary = tree(repo, m, &walk, progress, opts, &synced, durability).await?;
    summary.dirs_synced = synced.sync(&walk).await?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Restores every entry of `m` (already checked with [`check_manifest`]) below `walk`'s root,
/// without the final fsyncs: the directories to sync are noted in `synced`.
async fn tree(
    repo: &Repo,
    m: &Manifest,
    walk: &Arc<Walk>,
    progress: &Arc<Progress>,
    opts: &RestoreOptions,
    synced: &Arc<DirSyncs>,
    durability: Durability,
) -> Result<RestoreSummary> {
    synced.add(&[]);
    let mut summary = RestoreSummary {
        setid_dropped: m.entries.iter().filter(|e| opts.drops_setid(e)).count() as u64,
        ..RestoreSummary::default()
    };
    let cache = PackCache::with_defaults(repo);
    // 1. Directories, closed to others until step 4.
    for e in &m.entries {
        if matches!(e.kind, EntryKind::Dir) {
            close_dir(&walk.dir(&e.path, Some(synced))?)?;
            summary.dirs += 1;
        }
    }
    // 2. Files: those restored whole by an earlier run skipped, the others written by pack,
    // fsynced and renamed (see `files`).
    let files: Vec<&Entry> = m
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File { .. }))
        .collect();
    progress.add_total(files.iter().map(|e| e.size()).sum(), files.len() as u64);
    let done = files::restore_files(
        &cache,
        repo.chunk_keys(),
        files,
        walk,
        synced,
        progress,
        opts,
        durability,
    )
    .await?;
    summary.files = done.files + done.skipped;
    summary.bytes = done.bytes + done.bytes_skipped;
    summary.files_skipped = done.skipped;
    summary.bytes_skipped = done.bytes_skipped;
    summary.temp_files_removed = done.temps_removed;
    summary.chunks_fetched = done.chunks;
    // 3. Symlinks, last.
    for e in &m.entries {
        if let EntryKind::Symlink { target } = &e.kind {
            let (parent, name) = e.path.split_at(e.path.len() - 1);
            let dir = walk.dir(parent, Some(synced))?;
            make_symlink(&dir, &name[0], target)?;
            set_link_owner(&dir, &name[0], e, opts)?;
            synced.add(parent);
            summary.symlinks += 1;
        }
    }
    // 4. Directory owners, modes and mtimes, deepest first (writing into them changed their
    // mtime; a parent opens to others only after everything below it is final).
    for e in m.entries.iter().rev() {
        if matches!(e.kind, EntryKind::Dir) {
            set_dir_meta(&walk.dir(&e.path, Some(synced))?, e, opts)?;
            synced.add(&e.path);
        }
    }
    summary.packs_fetched = cache.fetched();
    Ok(summary)
}

/// Sets a directory's owner (root only, when recorded), mode and mtime, through its
/// descriptor.
fn set_dir_meta(d: &Dir, e: &Entry, opts: &RestoreOptions) -> Result<()> {
    let io = |err: std::io::Error| ClientError::io(&d.path, err);
    if let Some(o) = opts.owner(e) {
        fchown(&*d.fd, Some(o.uid), Some(o.gid)).map_err(io)?;
    }
    rustix::fs::fchmod(&*d.fd, Mode::from_raw_mode(opts.mode(e))).map_err(|err| io(err.into()))?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: e.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: e.mtime_ns.rem_euclid(1_000_000_000) as _,
        },
    };
    rustix::fs::futimens(&*d.fd, &times).map_err(|err| io(err.into()))
}

/// Gives a restored symlink `dir/name` its recorded owner (root only), without following it.
fn set_link_owner(dir: &Dir, name: &str, e: &Entry, opts: &RestoreOptions) -> Result<()> {
    let Some(Owner { uid, gid }) = opts.owner(e) else {
        return Ok(());
    };
    rustix::fs::chownat(
        &*dir.fd,
        name,
        Some(Uid::from_raw_unchecked(uid)),
        Some(Gid::from_raw_unchecked(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|err| ClientError::io(dir.path.join(name), err.into()))
}

/// Makes `dir/name` a symlink to `target`, replacing a file or link there (never following
/// it); a directory there is an error.
fn make_symlink(dir: &Dir, name: &str, target: &str) -> Result<()> {
    let io = |err: Errno| ClientError::io(dir.path.join(name), err.into());
    match rustix::fs::statat(&*dir.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            return Err(ClientError::Refused(format!(
                "{} exists and is a directory",
                dir.path.join(name).display()
            )))
        }
        Ok(_) => match rustix::fs::unlinkat(&*dir.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io(e)),
        },
        Err(_) => {}
    }
    rustix::fs::symlinkat(target, &*dir.fd, name).map_err(io)
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
    let synced = Arc::new(DirSyncs::default());
    let (walk, mut summary) = match &entry.kind {
        EntryKind::File { .. } => {
            let walk = Arc::new(Walk::open(parent)?);
            let cache = PackCache::with_defaults(repo);
            let dir = walk.dir(&[], None)?;
            progress.add_total(entry.size(), 1);
            let (bytes, chunks) = write_file(&cache, entry, &dir, &name, progress, opts).await?;
            synced.add(&[]);
            progress.file_done();
            let s = RestoreSummary {
                files: 1,
                bytes,
                chunks_fetched: chunks,
                packs_fetched: cache.fetched(),
                setid_dropped: u64::from(opts.drops_setid(entry)),
                ..RestoreSummary::default()
            };
            (walk, s)
        }
        EntryKind::Symlink { target: t } => {
            let walk = Arc::new(Walk::open(parent)?);
            let dir = walk.dir(&[], None)?;
            make_symlink(&dir, &name, t)?;
            set_link_owner(&dir, &name, entry, opts)?;
            synced.add(&[]);
            let s = RestoreSummary {
                symlinks: 1,
                ..RestoreSummary::default()
            };
            (walk, s)
        }
        EntryKind::Dir => {
            // The subtree, re-rooted at `target`, checked before anything is written.
            let n = entry.path.len();
            let sub = Manifest::new(
                m.entries
                    .iter()
                    .filter(|e| e.is_under(&entry.path) && e.path.len() > n)
                    .map(|e| Entry {
                        path: e.path[n..].to_vec(),
                        ..e.clone()
                    })
                    .collect(),
            );
            check_manifest(&sub)?;
            // Closed to others like every directory below it until its own mode is set.
            let created = create_dirs(target, WORK_DIR_MODE, &synced)?;
            let walk = Arc::new(Walk::open(target)?);
            if created {
                walk.set_root_fresh();
            }
            let root = walk.dir(&[], None)?;
            close_dir(&root)?;
            let mut s = tree(
                repo,
                &sub,
                &walk,
                progress,
                opts,
                &synced,
                Durability::best(),
            )
            .await?;
            set_dir_meta(&root, entry, opts)?;
            synced.add(&[]);
            s.dirs += 1;
            s.setid_dropped += u64::from(opts.drops_setid(entry));
            (walk, s)
        }
    };
    summary.dirs_synced = synced.sync(&walk).await?;
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
/// and a rename, all relative to the directory's descriptor. Returns (bytes, chunks). The
/// caller fsyncs `dir` later.
async fn write_file(
    cache: &PackCache,
    e: &Entry,
    dir: &Dir,
    name: &str,
    progress: &Arc<Progress>,
    opts: &RestoreOptions,
) -> Result<(u64, u64)> {
    if let Ok(st) = rustix::fs::statat(&*dir.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(ClientError::Refused(format!(
                "{} exists and is a directory",
                dir.path.join(name).display()
            )));
        }
    }
    let names = files::TempNames::new();
    let w = files::write_streaming(cache, e, dir, &[], name, &names, progress, opts).await?;
    // If this future is dropped while the fsync runs, the blocking task still finishes it: the
    // file then either gets its name whole or its temp file is removed.
    let w = tokio::task::spawn_blocking(move || w.commit())
        .await
        .map_err(|err| ClientError::Refused(format!("write task failed: {err}")))??;
    Ok((w.bytes, w.chunks))
}

#[cfg(test)]
mod walk_tests {
    //! The descriptor walk on its own: what it refuses, what it creates, what it caches.

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn comps(p: &str) -> Vec<String> {
        p.split('/').map(str::to_string).collect()
    }

    fn refusal(r: Result<Dir>) -> String {
        match r {
            Err(ClientError::Refused(m)) => m,
            Err(e) => panic!("not a refusal: {e}"),
            Ok(d) => panic!("opened {}", d.path.display()),
        }
    }

    #[test]
    fn the_walk_refuses_links_and_non_directories_at_every_level() {
        let tmp = tempfile::tempdir().unwrap();
        let (dest, outside) = (tmp.path().join("dest"), tmp.path().join("outside"));
        fs::create_dir_all(dest.join("a/b")).unwrap();
        fs::create_dir_all(outside.join("b")).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("a/b/link")).unwrap();
        std::os::unix::fs::symlink("../..", dest.join("a/up")).unwrap();
        fs::write(dest.join("a/file"), b"x").unwrap();
        let walk = Walk::open(&dest).unwrap();
        let synced = DirSyncs::default();
        for (p, what) in [
            ("link", "link is a symlink; refusing to restore through it"),
            (
                "link/b",
                "link is a symlink; refusing to restore through it",
            ),
            (
                "link/new",
                "link is a symlink; refusing to restore through it",
            ),
            (
                "a/b/link/x",
                "a/b/link is a symlink; refusing to restore through it",
            ),
            (
                "a/up/outside",
                "a/up is a symlink; refusing to restore through it",
            ),
            ("a/file", "a/file exists and is not a directory"),
            ("a/file/x", "a/file exists and is not a directory"),
        ] {
            let m = refusal(walk.dir(&comps(p), Some(&synced)));
            assert!(
                m.ends_with(what) && m.contains(&dest.display().to_string()),
                "{p}: {m}"
            );
        }
        // Nothing was created anywhere, and the links are still links.
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
        assert_eq!(fs::read_dir(outside.join("b")).unwrap().count(), 0);
        assert!(fs::symlink_metadata(dest.join("link"))
            .unwrap()
            .is_symlink());
    }

    #[test]
    fn missing_directories_are_made_private_and_their_parents_noted() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        fs::create_dir_all(dest.join("a")).unwrap();
        fs::set_permissions(dest.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        let walk = Walk::open(&dest).unwrap();
        let synced = DirSyncs::default();
        let d = walk.dir(&comps("a/b/c"), Some(&synced)).unwrap();
        assert_eq!(d.path, dest.join("a/b/c"));
        for p in ["a/b", "a/b/c"] {
            let mode = fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, WORK_DIR_MODE, "{p}");
        }
        // An existing directory is left as it is by the walk (close_dir closes it).
        let mode = fs::metadata(dest.join("a")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        close_dir(&walk.dir(&comps("a"), None).unwrap()).unwrap();
        let mode = fs::metadata(dest.join("a")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, WORK_DIR_MODE);
        let noted: Vec<_> = synced.0.into_inner().unwrap().into_iter().collect();
        assert_eq!(
            noted,
            vec![SyncDir::Below(comps("a")), SyncDir::Below(comps("a/b"))]
        );
        // Without `create`, a missing directory is an error, and nothing is made.
        assert!(walk.dir(&comps("a/x"), None).is_err());
        assert!(!dest.join("a/x").exists());
    }

    #[test]
    fn an_open_directory_stays_the_one_checked_when_a_link_replaces_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (dest, outside) = (tmp.path().join("dest"), tmp.path().join("outside"));
        fs::create_dir_all(dest.join("a/b")).unwrap();
        fs::create_dir_all(outside.join("b")).unwrap();
        let walk = Walk::open(&dest).unwrap();
        let synced = DirSyncs::default();
        let a = walk.dir(&comps("a"), Some(&synced)).unwrap();
        // Swap the checked directory for a link to the outside.
        fs::rename(dest.join("a"), dest.join("a.aside")).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("a")).unwrap();
        // What goes through the open descriptor (directly, or through the cache, which starts
        // from the nearest open directory) lands in the real directory.
        rustix::fs::mkdirat(&*a.fd, "made", Mode::from_raw_mode(0o700)).unwrap();
        walk.dir(&comps("a/b/c"), Some(&synced)).unwrap();
        assert!(dest.join("a.aside/made").is_dir());
        assert!(dest.join("a.aside/b/c").is_dir());
        // A fresh walk sees the link and refuses.
        let fresh = Walk::open(&dest).unwrap();
        let m = refusal(fresh.dir(&comps("a/b"), Some(&synced)));
        assert!(
            m.ends_with("is a symlink; refusing to restore through it"),
            "{m}"
        );
        assert_eq!(fs::read_dir(outside.join("b")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    fn the_descriptor_cache_is_bounded_and_keeps_what_is_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let walk = Walk::open(tmp.path()).unwrap();
        let synced = DirSyncs::default();
        let hot = comps("hot");
        walk.dir(&hot, Some(&synced)).unwrap();
        for i in 0..3 * DIR_FDS_CACHED {
            walk.dir(&comps(&format!("hot/d{i}")), Some(&synced))
                .unwrap();
            let cache = walk.cache();
            assert!(cache.dirs.len() <= DIR_FDS_CACHED);
            // Every walk below "hot" starts from it, so it stays.
            assert!(cache.dirs.contains_key(&hot), "evicted at {i}");
        }
        assert_eq!(
            fs::read_dir(tmp.path().join("hot")).unwrap().count(),
            3 * DIR_FDS_CACHED
        );
    }
}
