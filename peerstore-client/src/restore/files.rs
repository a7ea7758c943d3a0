//! The file stage of a tree restore: which files are already restored (a resumed restore),
//! which packs to fetch in which order, writing temp files on a pool of writers, and making
//! each file durable before its name appears.
//!
//! A file goes through three steps:
//! 1. **plan**: in a directory this restore did not create, a file whose name already shows
//!    the manifest's size, mtime (to the nanosecond), mode (and owner, when restored) is taken
//!    as restored whole by an earlier run and skipped (see [`already_restored`]); temp files an
//!    interrupted run left there are removed first ([`remove_stale_temps`]);
//! 2. **write**: the files whose chunks all lie in one pack are grouped by pack, in the order
//!    the manifest first needs each pack (which is the order the backup wrote them); the packs
//!    are fetched [`PACKS_AHEAD`] ahead of the writers, each once, and the files of a pack are
//!    written [`UNIT_FILES`] at a time by [`WRITERS`] blocking writers, with no round trip per
//!    file. A file that spans several packs streams its chunks through the pack cache
//!    ([`SPANNING_IN_FLIGHT`] such files at once). Each file is written to a fresh temp file
//!    (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600) in its directory, every chunk checked, then
//!    given its owner, mode and mtime on the open descriptor: a [`Written`] file;
//! 3. **commit**: written files are made durable and only then renamed to their names
//!    (`renameat` in the same directory descriptor), in one of two ways ([`Durability`]):
//!    - `Syncfs` (Linux 5.8 and later, where `syncfs` reports write-back errors): written files
//!      are closed and collected in batches (up to [`SYNC_BATCH_FILES`] files,
//!      [`SYNC_BATCH_BYTES`] bytes or [`SYNC_BATCH_DIRS`] directories, and no longer than
//!      [`SYNC_BATCH_WAIT`] once a batch has its first file); each batch gets `syncfs` (twice,
//!      see [`sync_file_system`]) on each file system it touches, then its renames, while the
//!      writers go on with the next batch. One write-back pass and a few cache flushes per
//!      batch instead of an fsync (data, inode, often the parent directory, and a cache flush)
//!      per file; on a source tree of 10,000 files this is most of the difference;
//!    - `Fsync` (elsewhere): each written file is fsynced on the blocking pool
//!      ([`FSYNCS_IN_FLIGHT`] at once, so that the file system commits many together), then
//!      renamed.
//!
//!    Directories are fsynced once each, at the end of the restore, not per file.
//!
//! What "durable" means here: when a name appears, the file's data and inode (size, mode,
//! mtime, owner) have reached stable storage (its fsync, or its batch's `syncfs`, returned
//! without error), so a crash at any point leaves either no name or the whole file under it;
//! never a name on a partial file. The renames themselves become durable with the directory
//! fsyncs at the end: a crash before those may lose some names (never show a partial file),
//! and the next run restores those files again. The restore reports success only after every
//! directory that got a name (or holds a file a rerun skipped) was fsynced. A crash leaves temp
//! files behind; the next run into the same destination removes them.
//!
//! Bounded resources: at most [`PACKS_AHEAD`] fetched packs wait for the writers and each of
//! the [`WRITERS`] holds one (besides the pack cache's own bound, which they may outlive),
//! and one chunk's plaintext at a time, and
//! at most [`COMMIT_QUEUE`] written files wait in the queue, plus [`FSYNCS_IN_FLIGHT`] being
//! fsynced or two batches being synced. A written file holds its directory's descriptor (and,
//! until its fsync, its own), which is why a batch spans at most [`SYNC_BATCH_DIRS`]
//! directories: a restore stays within the usual limit of 1,024 open files.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use rand::RngCore;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use tokio::sync::mpsc;

use super::{check_chunks, mtime_of, Dir, DirSyncs, RestoreOptions, Walk};
use crate::error::{ClientError, Result};
use crate::model::{Entry, EntryKind};
use crate::pack::{for_file, open_in_pack, PackCache};
use crate::progress::Progress;

/// Packs fetched ahead of the writers, in the order the files need them.
pub const PACKS_AHEAD: usize = 4;
/// Files of one pack written by one writer task in one go.
pub const UNIT_FILES: usize = 32;
/// Blocking writer tasks at once.
pub const WRITERS: usize = 4;
/// Files spanning several packs written at once (each streams its chunks).
pub const SPANNING_IN_FLIGHT: usize = 4;
/// Chunks fetched at once per spanning file.
pub const CHUNKS_IN_FLIGHT: usize = 4;
/// Written files waiting to be committed (each holds its directory's descriptor, and until its
/// fsync its own).
pub const COMMIT_QUEUE: usize = 128;
/// File fsyncs at once (each on the blocking pool).
pub const FSYNCS_IN_FLIGHT: usize = 64;
/// Written files made durable together by one `syncfs` (Linux 5.8 and later).
pub const SYNC_BATCH_FILES: usize = 2048;
/// Bytes made durable together by one `syncfs` at most.
pub const SYNC_BATCH_BYTES: u64 = 256 << 20;
/// Directories one `syncfs` batch may span at most: a written file keeps its directory's
/// descriptor open until its rename, and the two batches in progress must stay well inside
/// the usual limit of 1,024 open files even when every file has a directory of its own.
pub const SYNC_BATCH_DIRS: usize = 192;
/// How long the first file of a batch waits for the batch to fill: when packs come in slowly,
/// names still appear (and a rerun can skip them) every so often.
pub const SYNC_BATCH_WAIT: Duration = Duration::from_secs(1);

/// What the file stage did.
#[derive(Default)]
pub(super) struct FilesDone {
    pub files: u64,
    pub bytes: u64,
    pub chunks: u64,
    pub skipped: u64,
    pub bytes_skipped: u64,
    pub temps_removed: u64,
}

/// Names of temp files: `.<name>.peerstore-<12 hex digits>.tmp`, the digits a random start
/// (per restore) plus a counter, so that a restore does not ask the kernel for randomness once
/// per file. The name is only a convenience: the temp file is created with `O_EXCL`, and a
/// taken name (a planted file, a link) just moves on to the next number.
pub(super) struct TempNames {
    start: u64,
    next: AtomicU64,
}

impl TempNames {
    pub(super) fn new() -> TempNames {
        let mut rnd = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut rnd);
        TempNames {
            start: u64::from_le_bytes(rnd),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self, name: &str) -> String {
        let n = self
            .start
            .wrapping_add(self.next.fetch_add(1, Ordering::Relaxed));
        format!(".{name}.peerstore-{:012x}.tmp", n & 0xffff_ffff_ffff)
    }

    /// Creates a fresh temp file for `name` in `dir` (mode 0600, never through a link).
    pub(super) fn create(&self, dir: &Dir, name: &str) -> Result<(File, String)> {
        let mut tries = 0;
        loop {
            let tmp = self.next(name);
            match rustix::fs::openat(
                &*dir.fd,
                tmp.as_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(super::TEMP_FILE_MODE),
            ) {
                Ok(fd) => return Ok((File::from(fd), tmp)),
                Err(Errno::EXIST) if tries < 16 => tries += 1,
                Err(e) => return Err(ClientError::io(dir.path.join(&tmp), e.into())),
            }
        }
    }
}

/// The name `tmp` is the temp file name of, if it is one.
fn temp_name_target(tmp: &str) -> Option<&str> {
    let t = tmp.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (name, hex) = t.rsplit_once(".peerstore-")?;
    (hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty())
        .then_some(name)
}

/// A file written completely to its temp file (content checked, owner, mode and mtime set),
/// not yet durable nor under its name. Dropping it removes the temp file.
pub(super) struct Written {
    dir: Arc<OwnedFd>,
    dir_path: PathBuf,
    dev: u64,
    /// The directory's components below the walk's root, for the final directory fsync.
    pub(super) parent: Vec<String>,
    tmp: String,
    name: String,
    file: Option<File>,
    pub(super) bytes: u64,
    pub(super) chunks: u64,
    done: bool,
}

impl Written {
    /// Makes the file durable (fsync, if it is still open: with [`Durability::Syncfs`] the
    /// batch's `syncfs` did) and then gives it its name (`renameat` in the same directory).
    /// Blocking.
    pub(super) fn commit(mut self) -> Result<Written> {
        if let Some(f) = self.file.take() {
            f.sync_all()
                .map_err(|e| ClientError::io(self.dir_path.join(&self.tmp), e))?;
        }
        rustix::fs::renameat(
            &*self.dir,
            self.tmp.as_str(),
            &*self.dir,
            self.name.as_str(),
        )
        .map_err(|e| match e {
            Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST => ClientError::Refused(format!(
                "{} exists and is a directory",
                self.dir_path.join(&self.name).display()
            )),
            e => ClientError::io(self.dir_path.join(&self.name), e.into()),
        })?;
        self.done = true;
        Ok(self)
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if !self.done {
            self.file = None;
            let _ = rustix::fs::unlinkat(&*self.dir, self.tmp.as_str(), AtFlags::empty());
        }
    }
}

/// Gives an open temp file the entry's owner (root only), mode and mtime: owner first (a chown
/// clears setuid/setgid), then the mode, on the descriptor.
fn finish_meta(f: &File, e: &Entry, opts: &RestoreOptions, path: &std::path::Path) -> Result<()> {
    if let Some(o) = opts.owner(e) {
        std::os::unix::fs::fchown(f, Some(o.uid), Some(o.gid))
            .map_err(|err| ClientError::io(path, err))?;
    }
    rustix::fs::fchmod(f, Mode::from_raw_mode(opts.mode(e)))
        .map_err(|err| ClientError::io(path, err.into()))?;
    f.set_modified(mtime_of(e.mtime_ns))
        .map_err(|err| ClientError::io(path, err))
}

/// Writes `e` as a temp file in `dir` from its chunks, streamed through `cache`
/// ([`CHUNKS_IN_FLIGHT`] at once): for files spanning several packs, and for `getfile`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write_streaming(
    cache: &PackCache,
    e: &Entry,
    dir: &Dir,
    parent: &[String],
    name: &str,
    names: &TempNames,
    progress: &Progress,
    opts: &RestoreOptions,
) -> Result<Written> {
    let EntryKind::File { size, chunks } = &e.kind else {
        return Err(ClientError::Refused(format!(
            "{} is not a file",
            e.display_path()
        )));
    };
    check_chunks(e, *size, chunks)?;
    let (mut f, tmp) = names.create(dir, name)?;
    let tmp_path = dir.path.join(&tmp);
    // From here on, dropping `w` (an error, or the restore ending) removes the temp file.
    let mut w = Written {
        dir: dir.fd.clone(),
        dir_path: dir.path.clone(),
        dev: dir.dev,
        parent: parent.to_vec(),
        tmp,
        name: name.to_string(),
        file: None,
        bytes: 0,
        chunks: chunks.len() as u64,
        done: false,
    };
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
            .map_err(|err| ClientError::io(&tmp_path, err))?;
        w.bytes += plain.len() as u64;
        progress.add_bytes(plain.len() as u64);
    }
    if w.bytes != *size {
        return Err(ClientError::Corrupt(format!(
            "{}: chunks add up to {} bytes, manifest says {size}",
            e.display_path(),
            w.bytes
        )));
    }
    finish_meta(&f, e, opts, &tmp_path)?;
    w.file = Some(f);
    Ok(w)
}

/// What the writers share.
struct Shared {
    durability: Durability,
    walk: Arc<Walk>,
    synced: Arc<DirSyncs>,
    keys: crate::pack::ChunkKeys,
    names: TempNames,
    opts: RestoreOptions,
    progress: Arc<Progress>,
}

/// Writes the files of one unit (all in `pack`, or all empty) as temp files, and hands each to
/// the committer as soon as it is written. Blocking.
fn write_unit(
    sh: &Shared,
    files: &[Entry],
    pack: Option<&[u8]>,
    tx: &mpsc::Sender<Written>,
) -> Result<()> {
    for e in files {
        let EntryKind::File { size, chunks } = &e.kind else {
            continue;
        };
        let (parent, name) = e.path.split_at(e.path.len() - 1);
        let name = &name[0];
        let dir = sh.walk.dir(parent, Some(&sh.synced))?;
        let (mut f, tmp) = sh.names.create(&dir, name)?;
        let tmp_path = dir.path.join(&tmp);
        let mut w = Written {
            dir: dir.fd.clone(),
            dir_path: dir.path.clone(),
            dev: dir.dev,
            parent: parent.to_vec(),
            tmp,
            name: name.clone(),
            file: None,
            bytes: 0,
            chunks: chunks.len() as u64,
            done: false,
        };
        let path = e.display_path();
        for c in chunks {
            let Some(pack) = pack else {
                return Err(ClientError::Refused(format!("{path}: no pack")));
            };
            let plain = open_in_pack(&sh.keys, pack, c, &path)?;
            f.write_all(&plain)
                .map_err(|err| ClientError::io(&tmp_path, err))?;
            w.bytes += plain.len() as u64;
        }
        if w.bytes != *size {
            return Err(ClientError::Corrupt(format!(
                "{path}: chunks add up to {} bytes, manifest says {size}",
                w.bytes
            )));
        }
        finish_meta(&f, e, &sh.opts, &tmp_path)?;
        if sh.durability == Durability::Fsync {
            w.file = Some(f);
        }
        sh.progress.add_bytes(w.bytes);
        if tx.blocking_send(w).is_err() {
            // The committer stopped: the restore is failing; its error is reported.
            return Err(ClientError::Refused("restore stopped".into()));
        }
    }
    Ok(())
}

/// Whether the file at a name, as `lstat` shows it, is `e` restored whole by an earlier run:
/// a regular file with the manifest's size, mtime (nanoseconds), restored mode and, when the
/// restore sets owners, owner. A restore only ever shows a name once the file under it is
/// complete and durable, with its mtime set last before the rename, so a name with all of these
/// is either such a file or one that already matched (as rsync's and the backup's own quick
/// check assume: a change that keeps size and mtime to the nanosecond is not seen).
fn already_restored(st: &rustix::fs::Stat, e: &Entry, opts: &RestoreOptions) -> bool {
    let EntryKind::File { size, .. } = &e.kind else {
        return false;
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between architectures
    let mtime_ns = (st.st_mtime as i64)
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(st.st_mtime_nsec as i64));
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
        && u64::try_from(st.st_size).ok() == Some(*size)
        && mtime_ns == Some(e.mtime_ns)
        && st.st_mode & 0o7777 == opts.mode(e)
        && opts
            .owner(e)
            .is_none_or(|o| st.st_uid == o.uid && st.st_gid == o.gid)
}

/// Removes the temp files an interrupted restore left in `dir` for the names in `names`
/// (regular files named `.<name>.peerstore-<12 hex>.tmp`, never followed). Returns how many.
fn remove_stale_temps(dir: &Dir, names: &HashSet<&str>) -> Result<u64> {
    let io = |e: Errno| ClientError::io(&dir.path, e.into());
    let mut removed = 0;
    for entry in rustix::fs::Dir::read_from(&*dir.fd).map_err(io)? {
        let entry = entry.map_err(io)?;
        let Ok(tmp) = entry.file_name().to_str() else {
            continue;
        };
        if !temp_name_target(tmp).is_some_and(|n| names.contains(n)) {
            continue;
        }
        let regular = match entry.file_type() {
            FileType::Unknown => rustix::fs::statat(&*dir.fd, tmp, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile),
            t => t == FileType::RegularFile,
        };
        if regular {
            match rustix::fs::unlinkat(&*dir.fd, tmp, AtFlags::empty()) {
                Ok(()) => removed += 1,
                Err(Errno::NOENT) => {}
                Err(e) => return Err(ClientError::io(dir.path.join(tmp), e.into())),
            }
        }
    }
    Ok(removed)
}

/// Restores the file entries `files` of a checked manifest below `walk`'s root (see the module
/// docs). Directories that get names are noted in `synced`; the caller fsyncs them.
#[allow(clippy::too_many_arguments)]
pub(super) async fn restore_files(
    cache: &PackCache,
    keys: crate::pack::ChunkKeys,
    files: Vec<&Entry>,
    walk: &Arc<Walk>,
    synced: &Arc<DirSyncs>,
    progress: &Arc<Progress>,
    opts: &RestoreOptions,
    durability: Durability,
) -> Result<FilesDone> {
    let mut done = FilesDone::default();
    // 1. Plan: skip what an earlier run restored whole (only where a directory existed before
    // this restore), after removing its leftover temp files.
    let mut names_in: HashMap<&[String], HashSet<&str>> = HashMap::new();
    for e in &files {
        let (parent, name) = e.path.split_at(e.path.len() - 1);
        names_in.entry(parent).or_default().insert(name[0].as_str());
    }
    let mut cleaned: HashSet<&[String]> = HashSet::new();
    let mut todo = Vec::with_capacity(files.len());
    for e in files {
        let (parent, name) = e.path.split_at(e.path.len() - 1);
        if !walk.is_fresh(parent) {
            let dir = walk.dir(parent, Some(synced))?;
            if cleaned.insert(parent) {
                done.temps_removed += remove_stale_temps(&dir, &names_in[parent])?;
            }
            match rustix::fs::statat(&*dir.fd, name[0].as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if already_restored(&st, e, opts) => {
                    done.skipped += 1;
                    done.bytes_skipped += e.size();
                    progress.add_bytes(e.size());
                    progress.file_done();
                    // Its name may not be durable yet (an interrupted run fsyncs directories
                    // only at its end).
                    synced.add(parent);
                    continue;
                }
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    return Err(ClientError::Refused(format!(
                        "{} exists and is a directory",
                        dir.path.join(&name[0]).display()
                    )));
                }
                _ => {}
            }
        }
        if let EntryKind::File { size, chunks } = &e.kind {
            check_chunks(e, *size, chunks)?;
        }
        todo.push(e);
    }
    // 2. Group by pack: files within one pack (or empty) by the pack, in the order of first
    // need; the others stream on their own.
    let mut groups: Vec<(Option<[u8; 32]>, Vec<Entry>)> = Vec::new();
    let mut group_of: HashMap<Option<[u8; 32]>, usize> = HashMap::new();
    let mut spanning = Vec::new();
    for e in todo {
        let EntryKind::File { chunks, .. } = &e.kind else {
            continue;
        };
        let pack = chunks.first().map(|c| c.pack);
        if chunks.iter().any(|c| Some(c.pack) != pack) {
            spanning.push(e);
            continue;
        }
        let i = *group_of.entry(pack).or_insert_with(|| {
            groups.push((pack, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(e.clone());
    }
    let sh = Arc::new(Shared {
        walk: walk.clone(),
        synced: synced.clone(),
        keys,
        names: TempNames::new(),
        opts: *opts,
        durability,
        progress: progress.clone(),
    });
    let (tx, mut rx) = mpsc::channel::<Written>(COMMIT_QUEUE);
    // 3. Write: packs fetched ahead in order, files written by the blocking writers.
    let packed = {
        let (sh, tx) = (sh.clone(), tx.clone());
        async move {
            let r = futures::stream::iter(groups.into_iter().map(|(key, files)| async move {
                let pack = match key {
                    Some(k) => Some(cache.get(k).await.map_err(|err| {
                        for_file(
                            &err,
                            &files.first().map(Entry::display_path).unwrap_or_default(),
                        )
                    })?),
                    None => None,
                };
                Ok::<_, ClientError>((pack, files))
            }))
            .buffered(PACKS_AHEAD)
            .map_ok(|(pack, files)| {
                let units: Vec<_> = files
                    .chunks(UNIT_FILES)
                    .map(|u| Ok((pack.clone(), u.to_vec())))
                    .collect();
                futures::stream::iter(units)
            })
            .try_flatten()
            .map_ok(|(pack, files)| {
                let (sh, tx) = (sh.clone(), tx.clone());
                async move {
                    tokio::task::spawn_blocking(move || {
                        write_unit(&sh, &files, pack.as_deref().map(Vec::as_slice), &tx)
                    })
                    .await
                    .map_err(|e| ClientError::Refused(format!("write task failed: {e}")))?
                }
            })
            .try_buffer_unordered(WRITERS)
            .try_collect::<Vec<()>>()
            .await;
            drop(tx);
            r
        }
    };
    let spanning = {
        let (sh, tx) = (sh.clone(), tx.clone());
        async move {
            let r = futures::stream::iter(spanning.into_iter().map(|e| {
                let (sh, tx) = (sh.clone(), tx.clone());
                async move {
                    let (parent, name) = e.path.split_at(e.path.len() - 1);
                    let dir = sh.walk.dir(parent, Some(&sh.synced))?;
                    let mut w = write_streaming(
                        cache,
                        e,
                        &dir,
                        parent,
                        &name[0],
                        &sh.names,
                        &sh.progress,
                        &sh.opts,
                    )
                    .await?;
                    if sh.durability == Durability::Syncfs {
                        w.file = None;
                    }
                    tx.send(w)
                        .await
                        .map_err(|_| ClientError::Refused("restore stopped".into()))
                }
            }))
            .buffer_unordered(SPANNING_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await;
            drop(tx);
            r
        }
    };
    drop(tx);
    // 4. Commit: make the files durable, then give them their names.
    let commit = async {
        match durability {
            Durability::Fsync => commit_each(&mut rx, synced, progress, &mut done).await,
            Durability::Syncfs => commit_batches(&mut rx, walk, synced, progress, &mut done).await,
        }
    };
    let (_, _, ()) = futures::try_join!(packed, spanning, commit)?;
    Ok(done)
}

/// How written files are made durable before they get their names (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Durability {
    /// Each file is fsynced (on the blocking pool, [`FSYNCS_IN_FLIGHT`] at once, so that the
    /// file system can commit many together) and then renamed. Portable.
    Fsync,
    /// Files are closed once written and collected in batches ([`SYNC_BATCH_FILES`],
    /// [`SYNC_BATCH_BYTES`]); each batch is made durable with `syncfs` on every file system it
    /// touches, then renamed. One write-back pass and one cache flush per batch instead of one
    /// per file. Linux 5.8 or later only: older kernels do not report write-back errors from
    /// `syncfs`.
    Syncfs,
}

impl Durability {
    /// [`Durability::Syncfs`] where `syncfs` reports write-back errors, [`Durability::Fsync`]
    /// elsewhere.
    pub(super) fn best() -> Durability {
        if syncfs_reports_errors() {
            Durability::Syncfs
        } else {
            Durability::Fsync
        }
    }
}

/// Whether `syncfs` reports write-back errors here: Linux 5.8 or later (read from
/// `/proc/sys/kernel/osrelease`; unknown counts as no).
fn syncfs_reports_errors() -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 8),
        _ => false,
    }
}

/// Makes the file system `fd` is on durable: `syncfs` twice. The first writes back every dirty
/// page and inode and flushes the device cache; the second flushes again, for what the first
/// wrote after its flush (ext4 without a journal, for one, writes inode blocks last), so that
/// everything written before the call is on stable storage when it returns. Errors: write-back
/// errors on that file system since `fd` was opened or last synced (Linux 5.8 and later).
#[cfg(target_os = "linux")]
fn sync_file_system(fd: &OwnedFd) -> std::io::Result<()> {
    rustix::fs::syncfs(fd)?;
    rustix::fs::syncfs(fd)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_file_system(_fd: &OwnedFd) -> std::io::Result<()> {
    Err(std::io::Error::other("syncfs is Linux only"))
}

/// Accounts for a file that got its name.
fn committed(done: &mut FilesDone, synced: &DirSyncs, progress: &Progress, w: &Written) {
    synced.add(&w.parent);
    progress.file_done();
    done.files += 1;
    done.bytes += w.bytes;
    done.chunks += w.chunks;
}

/// [`Durability::Fsync`]: each file fsynced, then renamed, [`FSYNCS_IN_FLIGHT`] at once.
async fn commit_each(
    rx: &mut mpsc::Receiver<Written>,
    synced: &DirSyncs,
    progress: &Progress,
    done: &mut FilesDone,
) -> Result<()> {
    futures::stream::poll_fn(|cx| rx.poll_recv(cx))
        .map(|w| async move {
            tokio::task::spawn_blocking(move || w.commit())
                .await
                .map_err(|e| ClientError::Refused(format!("fsync task failed: {e}")))?
        })
        .buffer_unordered(FSYNCS_IN_FLIGHT)
        .try_for_each(|w| {
            committed(done, synced, progress, &w);
            futures::future::ok(())
        })
        .await
}

/// [`Durability::Syncfs`]: batches of written files (cut at [`SYNC_BATCH_FILES`],
/// [`SYNC_BATCH_BYTES`], [`SYNC_BATCH_DIRS`] or [`SYNC_BATCH_WAIT`]), each made durable by
/// [`sync_file_system`] on every file system it touches and then renamed, while the next batch
/// is written.
async fn commit_batches(
    rx: &mut mpsc::Receiver<Written>,
    walk: &Arc<Walk>,
    synced: &DirSyncs,
    progress: &Progress,
    done: &mut FilesDone,
) -> Result<()> {
    let mut pending: Option<tokio::task::JoinHandle<Result<Vec<Written>>>> = None;
    loop {
        // The next batch fills while the previous one is made durable.
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut dirs = HashSet::new();
        let mut deadline = None;
        while batch.len() < SYNC_BATCH_FILES
            && bytes < SYNC_BATCH_BYTES
            && dirs.len() < SYNC_BATCH_DIRS
        {
            let next = match deadline {
                None => rx.recv().await,
                Some(t) => match tokio::time::timeout_at(t, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some(w) = next else { break };
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + SYNC_BATCH_WAIT);
            bytes += w.bytes;
            dirs.insert(Arc::as_ptr(&w.dir).addr());
            batch.push(w);
        }
        if let Some(h) = pending.take() {
            let ws = h
                .await
                .map_err(|e| ClientError::Refused(format!("sync task failed: {e}")))??;
            for w in &ws {
                committed(done, synced, progress, w);
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let walk = walk.clone();
        pending = Some(tokio::task::spawn_blocking(move || {
            let devs: std::collections::BTreeSet<u64> = batch.iter().map(|w| w.dev).collect();
            for dev in devs {
                let fd = walk.sync_fd(dev).ok_or_else(|| {
                    ClientError::Refused(format!("no directory open on device {dev}"))
                })?;
                sync_file_system(&fd).map_err(|e| ClientError::io(&walk.root_path, e))?;
            }
            batch.into_iter().map(Written::commit).collect()
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_for_their_file_only() {
        let names = TempNames::new();
        let t = names.next("a.txt");
        assert_eq!(temp_name_target(&t), Some("a.txt"));
        let t2 = names.next("a.txt");
        assert_ne!(t, t2);
        for not in [
            ".a.txt.peerstore-12345.tmp",
            ".a.txt.peerstore-xyzxyzxyzxyz.tmp",
            "a.txt.peerstore-0123456789ab.tmp",
            "..peerstore-0123456789ab.tmp",
            ".a.txt.peerstore-0123456789ab",
        ] {
            assert_eq!(temp_name_target(not), None, "{not}");
        }
        assert_eq!(
            temp_name_target(".x.peerstore-1.peerstore-0123456789ab.tmp"),
            Some("x.peerstore-1")
        );
    }

    /// Both ways of making files durable restore the same tree: many small files in a few
    /// directories, an empty one, one of several chunks in more than one pack; and a rerun
    /// skips every file either way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fsync_and_syncfs_batches_restore_the_same_tree() {
        use rand::{Rng, SeedableRng};
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let mut want = std::collections::BTreeMap::new();
        for i in 0..300 {
            let size = if i == 0 { 0 } else { rng.gen_range(1..30_000) };
            let mut data = vec![0u8; size];
            rng.fill(&mut data[..]);
            want.insert(format!("d{}/e{}/f{i:03}", i % 7, i % 3), data);
        }
        let mut big = vec![0u8; 5 << 20];
        rng.fill(&mut big[..]);
        want.insert("big".to_string(), big);
        for (p, data) in &want {
            let p = src.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        let store = crate::store::MemStore::new();
        let id = Arc::new(crypto::Identity::generate(&mut rng));
        let repo = crate::repo::Repo::new(Arc::new(store), id);
        let progress = Arc::new(Progress::hidden());
        let (_, m, _) = crate::backup::backup(
            &repo,
            Arc::new(crate::cache::KnownBlocks::in_memory()),
            &src,
            None,
            &crate::backup::BackupOptions::default(),
            &progress,
        )
        .await
        .unwrap();
        let opts = RestoreOptions { as_root: false };
        for durability in [Durability::Fsync, Durability::Syncfs] {
            if durability == Durability::Syncfs && !syncfs_reports_errors() {
                continue;
            }
            let dest = tmp.path().join(format!("{durability:?}"));
            let s =
                super::super::restore_tree_durably(&repo, &m, &dest, &progress, &opts, durability)
                    .await
                    .unwrap();
            assert_eq!((s.files, s.files_skipped), (301, 0), "{durability:?}");
            for (p, data) in &want {
                assert_eq!(
                    &std::fs::read(dest.join(p)).unwrap(),
                    data,
                    "{durability:?} {p}"
                );
            }
            let again =
                super::super::restore_tree_durably(&repo, &m, &dest, &progress, &opts, durability)
                    .await
                    .unwrap();
            assert_eq!((again.files_skipped, again.packs_fetched), (301, 0));
        }
    }

    #[test]
    fn syncfs_is_used_on_linux_from_5_8() {
        if cfg!(target_os = "linux") {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
            println!("{release}: {:?}", Durability::best());
        } else {
            assert_eq!(Durability::best(), Durability::Fsync);
        }
    }
}
