//! Backup: walk a directory tree (sorted, deterministic), split each file into content-defined
//! chunks, encrypt them, upload the ones the ring does not have yet with many puts in flight,
//! then publish the manifest, the snapshot object and (last) the signed root.
//!
//! Reading, chunking and encryption run on one blocking thread that streams sealed chunks
//! through a small bounded channel to the uploader, which keeps at most `concurrency` puts in
//! flight: memory stays bounded whatever the file sizes.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, Metadata};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crypto::UserKeys;
use peerstore_node::proto::{BlockKey, MAX_BLOCK_SIZE};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::cache::KnownBlocks;
use crate::error::{ClientError, Result};
use crate::model::{ChunkRef, Entry, EntryKind, Manifest};
use crate::progress::Progress;
use crate::repo::{Repo, SnapshotRef};

/// Content-defined chunking: smallest chunk (except a file's last).
pub const CHUNK_MIN: u32 = 256 * 1024;
/// Content-defined chunking: average chunk size.
pub const CHUNK_AVG: u32 = 1024 * 1024;
/// Content-defined chunking: largest chunk. Sealed, it stays below the ring's block limit.
pub const CHUNK_MAX: u32 = 3 * 1024 * 1024;

const _: () = assert!(CHUNK_MAX as usize + crypto::CHUNK_OVERHEAD <= MAX_BLOCK_SIZE);

/// Knobs of one backup run.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// Block puts in flight at once.
    pub concurrency: usize,
    /// How often a file that changed while it was read is read again before giving up on it.
    pub change_retries: u32,
    /// Recorded in the snapshot ("backup", "sync").
    pub origin: String,
    /// Publish a snapshot even if the tree equals the previous one.
    pub publish_unchanged: bool,
    /// Re-read files even when size and mtime match the previous snapshot.
    pub reread_all: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            concurrency: 32,
            change_retries: 3,
            origin: "backup".into(),
            publish_unchanged: true,
            reread_all: false,
        }
    }
}

/// What a backup did. Printed as a summary line, or as JSON with `--json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BackupSummary {
    /// Snapshot number and short id (None if nothing was published).
    pub snapshot: Option<u64>,
    pub snapshot_id: Option<String>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Logical bytes of the tree.
    pub bytes: u64,
    /// Files read (new or changed since the previous snapshot).
    pub files_read: u64,
    /// Files taken over from the previous snapshot unread (same size and mtime).
    pub files_unchanged: u64,
    pub bytes_read: u64,
    /// Data chunks of the files read.
    pub chunks: u64,
    /// Data chunks sent to the ring.
    pub chunks_uploaded: u64,
    /// Ciphertext bytes of the data chunks sent.
    pub bytes_uploaded: u64,
    /// Data chunks not sent because the ring already has them.
    pub chunks_deduplicated: u64,
    /// Manifest and snapshot blocks written.
    pub metadata_blocks: u64,
    /// Paths not saved (changed during every read attempt, unreadable, non-UTF-8 names). For
    /// a changed file the previous snapshot's version is kept if there is one.
    pub skipped: Vec<String>,
    pub seconds: f64,
}

/// A sealed chunk on its way to the ring.
struct Upload {
    key: BlockKey,
    data: Vec<u8>,
}

/// What the scanning thread produced.
struct Scan {
    entries: Vec<Entry>,
    summary: BackupSummary,
}

/// Modification time in ns since the epoch.
#[must_use]
pub fn mtime_ns(md: &Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

/// Backs up `source` and publishes a snapshot. `prev` is the previous tree of the same source
/// (files with unchanged size and mtime are taken over without reading them, and its chunks
/// count as stored). Returns the summary and the new manifest.
pub async fn backup(
    repo: &Repo,
    known: Arc<KnownBlocks>,
    source: &Path,
    prev: Option<&Manifest>,
    opts: &BackupOptions,
    progress: &Arc<Progress>,
) -> Result<(BackupSummary, Manifest, Option<SnapshotRef>)> {
    let started = Instant::now();
    let source = fs::canonicalize(source).map_err(|e| ClientError::io(source, e))?;
    let md = fs::metadata(&source).map_err(|e| ClientError::io(&source, e))?;
    if !md.is_dir() {
        return Err(ClientError::Config(format!(
            "{} is not a directory",
            source.display()
        )));
    }
    let mut prev_files: BTreeMap<Vec<String>, Entry> = BTreeMap::new();
    if let Some(p) = prev {
        for e in &p.entries {
            if let EntryKind::File { chunks, .. } = &e.kind {
                known.extend_volatile(chunks.iter().map(|c| c.key));
                if !opts.reread_all {
                    prev_files.insert(e.path.clone(), e.clone());
                }
            }
        }
    }

    let (tx, mut rx) = mpsc::channel::<Upload>(4);
    let scan_known = known.clone();
    let keys = repo.keys_arc();
    let scan_source = source.clone();
    let retries = opts.change_retries;
    let scan_progress = progress.clone();
    let scanner = tokio::task::spawn_blocking(move || {
        let mut s = Scanner {
            keys,
            known: scan_known,
            tx,
            prev: prev_files,
            sent: HashSet::new(),
            retries,
            entries: Vec::new(),
            summary: BackupSummary::default(),
            progress: scan_progress,
        };
        s.walk(&scan_source, &mut Vec::new())?;
        Ok::<Scan, ClientError>(Scan {
            entries: s.entries,
            summary: s.summary,
        })
    });

    // Upload loop: at most `concurrency` puts in flight.
    let concurrency = opts.concurrency.max(1);
    let mut inflight: JoinSet<Result<[u8; 32]>> = JoinSet::new();
    let mut upload_err: Option<ClientError> = None;
    let mut uploaded = 0u64;
    let mut uploaded_bytes = 0u64;
    while let Some(up) = rx.recv().await {
        while inflight.len() >= concurrency {
            if let Some(r) = inflight.join_next().await {
                if let Err(e) = finish_put(r, &known) {
                    upload_err = Some(e);
                    break;
                }
            }
        }
        if upload_err.is_some() {
            break;
        }
        uploaded += 1;
        uploaded_bytes += up.data.len() as u64;
        let store = repo.store.clone();
        inflight.spawn(async move {
            store.put(up.key, up.data).await?;
            Ok(up.key.0)
        });
    }
    drop(rx); // stops the scanner if we bailed out early
    while let Some(r) = inflight.join_next().await {
        if let Err(e) = finish_put(r, &known) {
            upload_err.get_or_insert(e);
        }
    }
    let scan = scanner
        .await
        .map_err(|e| ClientError::Refused(format!("scanner task failed: {e}")));
    if let Some(e) = upload_err {
        return Err(e);
    }
    let Scan {
        entries,
        mut summary,
    } = scan??;
    summary.chunks_uploaded = uploaded;
    summary.bytes_uploaded = uploaded_bytes;

    let manifest = Manifest::new(entries);
    let totals = manifest.totals();
    summary.files = totals.files;
    summary.dirs = totals.dirs;
    summary.symlinks = totals.symlinks;
    summary.bytes = totals.bytes;

    let changed = prev.map(|p| p.entries != manifest.entries).unwrap_or(true);
    let mut snap = None;
    if changed || opts.publish_unchanged {
        let (s, meta) = repo
            .publish(&manifest, &source.to_string_lossy(), &opts.origin)
            .await?;
        summary.metadata_blocks = meta;
        summary.snapshot = Some(s.snapshot.number);
        summary.snapshot_id = Some(s.short_id());
        snap = Some(s);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok((summary, manifest, snap))
}

fn finish_put(
    r: std::result::Result<Result<[u8; 32]>, tokio::task::JoinError>,
    known: &KnownBlocks,
) -> Result<()> {
    match r {
        Ok(Ok(key)) => known.insert(key),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ClientError::Refused(format!("upload task failed: {e}"))),
    }
}

struct Scanner {
    keys: Arc<UserKeys>,
    known: Arc<KnownBlocks>,
    tx: mpsc::Sender<Upload>,
    prev: BTreeMap<Vec<String>, Entry>,
    /// Keys sent during this run (so equal chunks go up once).
    sent: HashSet<[u8; 32]>,
    retries: u32,
    entries: Vec<Entry>,
    summary: BackupSummary,
    progress: Arc<Progress>,
}

/// The outcome of reading one file.
enum FileRead {
    Done {
        size: u64,
        chunks: Vec<ChunkRef>,
    },
    /// The file changed while it was read.
    Changed,
    /// It disappeared (or turned into something else) before it could be read.
    Gone,
}

fn same_version(a: &Metadata, b: &Metadata) -> bool {
    a.len() == b.len()
        && mtime_ns(a) == mtime_ns(b)
        && a.ino() == b.ino()
        && a.dev() == b.dev()
        && a.ctime() == b.ctime()
        && a.ctime_nsec() == b.ctime_nsec()
}

impl Scanner {
    /// Visits the children of `dir` in name order. `rel` is `dir` relative to the source.
    fn walk(&mut self, dir: &Path, rel: &mut Vec<String>) -> Result<()> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if rel.is_empty() => return Err(ClientError::io(dir, e)),
            Err(e) => {
                warn!(path = %dir.display(), error = %e, "cannot read directory; skipped");
                self.summary.skipped.push(format!("{}: {e}", dir.display()));
                return Ok(());
            }
        };
        let mut names = Vec::new();
        for ent in rd {
            match ent {
                Ok(ent) => names.push(ent.file_name()),
                Err(e) => {
                    self.summary.skipped.push(format!("{}: {e}", dir.display()));
                }
            }
        }
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let Some(name) = name.to_str() else {
                self.summary
                    .skipped
                    .push(format!("{}: name is not UTF-8", path.display()));
                continue;
            };
            rel.push(name.to_string());
            let r = self.visit(&path, rel);
            rel.pop();
            r?;
        }
        Ok(())
    }

    fn visit(&mut self, path: &Path, rel: &mut Vec<String>) -> Result<()> {
        let md = match fs::symlink_metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                self.summary
                    .skipped
                    .push(format!("{}: {e}", path.display()));
                return Ok(());
            }
        };
        let mode = md.permissions().mode() & 0o7777;
        let ft = md.file_type();
        if ft.is_dir() {
            self.entries.push(Entry {
                path: rel.clone(),
                kind: EntryKind::Dir,
                mode,
                mtime_ns: mtime_ns(&md),
            });
            self.walk(path, rel)
        } else if ft.is_symlink() {
            let target = match fs::read_link(path) {
                Ok(t) => t,
                Err(e) => {
                    self.summary
                        .skipped
                        .push(format!("{}: {e}", path.display()));
                    return Ok(());
                }
            };
            let Some(target) = target.to_str() else {
                self.summary
                    .skipped
                    .push(format!("{}: symlink target is not UTF-8", path.display()));
                return Ok(());
            };
            self.entries.push(Entry {
                path: rel.clone(),
                kind: EntryKind::Symlink {
                    target: target.to_string(),
                },
                mode,
                mtime_ns: mtime_ns(&md),
            });
            Ok(())
        } else if ft.is_file() {
            self.file(path, rel, md)
        } else {
            debug!(path = %path.display(), "special file skipped");
            Ok(())
        }
    }

    fn file(&mut self, path: &Path, rel: &[String], md: Metadata) -> Result<()> {
        if let Some(p) = self.prev.get(rel) {
            if p.size() == md.len() && p.mtime_ns == mtime_ns(&md) {
                let mut e = p.clone();
                e.mode = md.permissions().mode() & 0o7777;
                self.entries.push(e);
                self.summary.files_unchanged += 1;
                self.progress.file_done();
                return Ok(());
            }
        }
        let mut md = md;
        for attempt in 0..=self.retries {
            match self.read_file(path, &md)? {
                FileRead::Done { size, chunks } => {
                    self.entries.push(Entry {
                        path: rel.to_vec(),
                        kind: EntryKind::File { size, chunks },
                        mode: md.permissions().mode() & 0o7777,
                        mtime_ns: mtime_ns(&md),
                    });
                    self.summary.files_read += 1;
                    self.progress.file_done();
                    return Ok(());
                }
                FileRead::Gone => return Ok(()),
                FileRead::Changed => {
                    debug!(path = %path.display(), attempt, "file changed while read; again");
                    std::thread::sleep(std::time::Duration::from_millis(50 << attempt.min(4)));
                    md = match fs::symlink_metadata(path) {
                        Ok(m) if m.is_file() => m,
                        _ => return Ok(()),
                    };
                }
            }
        }
        warn!(path = %path.display(), "file kept changing while it was read; not saved");
        self.summary
            .skipped
            .push(format!("{}: changed during backup", path.display()));
        if let Some(p) = self.prev.get(rel) {
            self.entries.push(p.clone());
        }
        Ok(())
    }

    /// Reads one file chunk by chunk, sending new sealed chunks to the uploader. Checks before
    /// and after that the file did not change underneath.
    fn read_file(&mut self, path: &Path, before: &Metadata) -> Result<FileRead> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileRead::Gone),
            Err(e) => {
                self.summary
                    .skipped
                    .push(format!("{}: {e}", path.display()));
                return Ok(FileRead::Gone);
            }
        };
        let fmd = f.metadata().map_err(|e| ClientError::io(path, e))?;
        if !fmd.is_file() || !same_version(before, &fmd) {
            return Ok(FileRead::Changed);
        }
        let reader = std::io::BufReader::with_capacity(1 << 20, f);
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let cdc = fastcdc::v2020::StreamCDC::new(reader, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX);
        for chunk in cdc {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    self.summary
                        .skipped
                        .push(format!("{}: read error: {e}", path.display()));
                    return Ok(FileRead::Gone);
                }
            };
            size += chunk.data.len() as u64;
            self.progress.add_bytes(chunk.data.len() as u64);
            let (id, sealed) = crypto::seal_chunk(&self.keys, &chunk.data);
            let key = BlockKey::of(&sealed);
            chunks.push(ChunkRef {
                id,
                key: key.0,
                len: chunk.data.len() as u32,
            });
            self.summary.chunks += 1;
            if self.known.contains(&key.0) || !self.sent.insert(key.0) {
                self.summary.chunks_deduplicated += 1;
                continue;
            }
            if self.tx.blocking_send(Upload { key, data: sealed }).is_err() {
                return Err(ClientError::Refused("backup aborted".into()));
            }
        }
        self.summary.bytes_read += size;
        let after = fs::symlink_metadata(path);
        match after {
            Ok(a) if same_version(before, &a) && a.len() == size => {
                Ok(FileRead::Done { size, chunks })
            }
            Ok(_) => Ok(FileRead::Changed),
            Err(_) => Ok(FileRead::Gone),
        }
    }
}

/// Previous tree of `source` among the latest snapshots (looks back at most `depth` snapshots).
pub async fn previous_manifest(
    repo: &Repo,
    source: &Path,
    depth: usize,
) -> Result<Option<Manifest>> {
    let source = fs::canonicalize(source).map_err(|e| ClientError::io(source, e))?;
    let want = source.to_string_lossy().to_string();
    let mut next = repo.read_root().await?.map(|(_, p)| p.latest);
    let mut seen = 0;
    while let Some(key) = next {
        if seen >= depth {
            break;
        }
        seen += 1;
        let s = repo.load_snapshot(key).await?;
        if s.snapshot.source == want {
            return Ok(Some(repo.load_manifest(&s).await?));
        }
        next = s.snapshot.parent;
    }
    Ok(None)
}

/// Resolves `source` to an absolute path (for messages and state file names).
pub fn absolute(source: &Path) -> Result<PathBuf> {
    fs::canonicalize(source).map_err(|e| ClientError::io(source, e))
}
