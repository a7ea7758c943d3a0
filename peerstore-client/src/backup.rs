//! Backup: walk a directory tree (sorted, deterministic), split each file into content-defined
//! chunks, encrypt them one by one, pack the new ones into pack files of up to 4 MiB, upload the
//! packs with many in flight, then publish the manifest, the snapshot object and (last) the
//! signed root.
//!
//! Reading, chunking, encryption and packing run on one blocking thread that streams full packs
//! through a small bounded channel to the uploader, which keeps at most `concurrency` packs in
//! flight: memory stays bounded whatever the file sizes. A pack's key is what the ring returns
//! for it (on an entangled ring it is not a hash of the bytes), so the scanner refers to the
//! packs of this run by their sequence number and the chunk references are completed once every
//! pack is stored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, Metadata};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crypto::{ChunkId, UserKeys};
use peerstore_proto::MAX_BLOCK_SIZE;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::cache::{ChunkLoc, KnownBlocks};
use crate::error::{ClientError, Result};
use crate::model::{ChunkRef, Entry, EntryKind, Manifest, Owner};
use crate::progress::Progress;
use crate::repo::{Repo, SnapshotRef};

/// Content-defined chunking: smallest chunk (except a file's last).
pub const CHUNK_MIN: u32 = 256 * 1024;
/// Content-defined chunking: average chunk size.
pub const CHUNK_AVG: u32 = 1024 * 1024;
/// Content-defined chunking: largest chunk. Sealed, it stays below the ring's block limit.
pub const CHUNK_MAX: u32 = 3 * 1024 * 1024;
/// A pack is stored when the next sealed chunk would make it larger than this (one ring
/// document, at most one protocol block).
pub const PACK_TARGET: usize = MAX_BLOCK_SIZE;
/// Most packs in flight whatever `concurrency` says: 8 x 4 MiB messages keep the libp2p stack
/// busy (docs/ARCHITECTURE.md: large messages, several in flight), and each in-flight pack
/// costs about three copies (ours, the retry copy, the frame being sent).
pub const MAX_PACKS_IN_FLIGHT: usize = 8;
/// Full packs waiting between the scanner and the uploader.
const PACK_QUEUE: usize = 2;

const _: () = assert!(CHUNK_MAX as usize + crypto::CHUNK_OVERHEAD <= PACK_TARGET);

/// Knobs of one backup run.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// Pack uploads in flight at once (each up to 4 MiB), at most [`MAX_PACKS_IN_FLIGHT`].
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
    /// New data chunks sent to the ring (inside packs).
    pub chunks_uploaded: u64,
    /// Sealed bytes of the new data chunks sent.
    pub bytes_uploaded: u64,
    /// Pack files stored.
    pub packs_uploaded: u64,
    /// Data chunks not sent because the ring already has them (or this run packed them).
    pub chunks_deduplicated: u64,
    /// Manifest and snapshot blocks written.
    pub metadata_blocks: u64,
    /// Paths not saved (changed during every read attempt, unreadable, non-UTF-8 names). For
    /// a changed file the previous snapshot's version is kept if there is one.
    pub skipped: Vec<String>,
    pub seconds: f64,
}

/// A full pack on its way to the ring.
struct PackJob {
    /// Sequence number of the pack in this run.
    seq: u32,
    data: Vec<u8>,
    /// The chunks inside: id, offset, sealed length.
    chunks: Vec<(ChunkId, u32, u32)>,
}

/// A pack the ring acknowledged: its sequence number, the key it returned, its chunks.
struct StoredPack {
    seq: u32,
    key: [u8; 32],
    chunks: Vec<(ChunkId, u32, u32)>,
}

/// A chunk reference whose pack is one of this run's, known only once the pack is stored.
struct Fixup {
    entry: usize,
    chunk: usize,
    seq: u32,
}

/// What the scanning thread produced.
struct Scan {
    entries: Vec<Entry>,
    fixups: Vec<Fixup>,
    summary: BackupSummary,
}

/// Modification time in ns since the epoch.
#[must_use]
pub fn mtime_ns(md: &Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

/// The numeric owner of a file, as recorded in the manifest.
#[must_use]
pub fn owner_of(md: &Metadata) -> Owner {
    Owner {
        uid: md.uid(),
        gid: md.gid(),
    }
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
                known.extend_volatile(chunks.iter().map(|c| (c.id, ChunkLoc::of(c))));
                if !opts.reread_all {
                    prev_files.insert(e.path.clone(), e.clone());
                }
            }
        }
    }

    let (tx, mut rx) = mpsc::channel::<PackJob>(PACK_QUEUE);
    let scan_known = known.clone();
    let keys = repo.keys_arc();
    let scan_source = source.clone();
    let retries = opts.change_retries;
    let scan_progress = progress.clone();
    // One write session per run: this run's documents point only into each other and into the
    // packs the new snapshot keeps (named as the scan finds them).
    repo.store.begin_session();
    let scan_store = repo.store.clone();
    let scanner = tokio::task::spawn_blocking(move || {
        let mut s = Scanner {
            keys,
            known: scan_known,
            tx,
            prev: prev_files,
            packed: HashMap::new(),
            sealed_for_file: HashSet::new(),
            pack: Vec::new(),
            pack_chunks: Vec::new(),
            next_seq: 0,
            retries,
            entries: Vec::new(),
            fixups: Vec::new(),
            summary: BackupSummary::default(),
            progress: scan_progress,
            store: scan_store,
            kept: HashSet::new(),
        };
        s.walk(&scan_source, &mut Vec::new())?;
        // The scan is over: the last, partial pack goes up now (a sync round ends here too).
        s.flush_pack()?;
        Ok::<Scan, ClientError>(Scan {
            entries: s.entries,
            fixups: s.fixups,
            summary: s.summary,
        })
    });

    // Upload loop: at most `concurrency` packs in flight.
    let concurrency = opts.concurrency.clamp(1, MAX_PACKS_IN_FLIGHT);
    let mut inflight: JoinSet<Result<StoredPack>> = JoinSet::new();
    let mut upload_err: Option<ClientError> = None;
    let mut pack_keys: BTreeMap<u32, [u8; 32]> = BTreeMap::new();
    while let Some(job) = rx.recv().await {
        while inflight.len() >= concurrency {
            if let Some(r) = inflight.join_next().await {
                if let Err(e) = finish_pack(r, &known, &mut pack_keys) {
                    upload_err = Some(e);
                    break;
                }
            }
        }
        if upload_err.is_some() {
            break;
        }
        let repo = repo.clone();
        inflight.spawn(async move {
            // The key is checked against the pack's hash (`Repo::put_document`).
            let key = repo.put_document(job.data).await?;
            Ok(StoredPack {
                seq: job.seq,
                key,
                chunks: job.chunks,
            })
        });
    }
    drop(rx); // stops the scanner if we bailed out early
    while let Some(r) = inflight.join_next().await {
        if let Err(e) = finish_pack(r, &known, &mut pack_keys) {
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
        mut entries,
        fixups,
        mut summary,
    } = scan??;
    summary.packs_uploaded = pack_keys.len() as u64;
    for f in fixups {
        let key = pack_keys.get(&f.seq).copied().ok_or_else(|| {
            ClientError::Refused(format!("pack {} of this backup was not stored", f.seq))
        })?;
        if let Some(Entry {
            kind: EntryKind::File { chunks, .. },
            ..
        }) = entries.get_mut(f.entry)
        {
            if let Some(c) = chunks.get_mut(f.chunk) {
                c.pack = key;
            }
        }
    }

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
        // Live shares follow the new snapshot; the backup itself is done either way.
        if let Err(e) = crate::share::refresh_live(repo, &s, &manifest).await {
            tracing::warn!(error = %e, "live shares not updated to this snapshot; the next one retries");
        }
        summary.snapshot_id = Some(s.short_id());
        snap = Some(s);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok((summary, manifest, snap))
}

/// Records a stored pack: its key, and its chunks in the known-chunks cache (only now that the
/// ring acknowledged it, so an interrupted run re-sends what did not make it).
fn finish_pack(
    r: std::result::Result<Result<StoredPack>, tokio::task::JoinError>,
    known: &KnownBlocks,
    pack_keys: &mut BTreeMap<u32, [u8; 32]>,
) -> Result<()> {
    match r {
        Ok(Ok(StoredPack { seq, key, chunks })) => {
            pack_keys.insert(seq, key);
            let locs: Vec<(ChunkId, ChunkLoc)> = chunks
                .into_iter()
                .map(|(id, offset, sealed_len)| {
                    (
                        id,
                        ChunkLoc {
                            pack: key,
                            offset,
                            sealed_len,
                        },
                    )
                })
                .collect();
            known.insert_many(&locs)
        }
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ClientError::Refused(format!("upload task failed: {e}"))),
    }
}

struct Scanner {
    keys: Arc<UserKeys>,
    known: Arc<KnownBlocks>,
    tx: mpsc::Sender<PackJob>,
    prev: BTreeMap<Vec<String>, Entry>,
    /// Chunks packed during this run: pack sequence number, offset, sealed length (so equal
    /// chunks go up once).
    packed: HashMap<ChunkId, (u32, u32, u32)>,
    /// Chunks sealed while reading the current file: a re-read (the file changed during the
    /// read) finds them packed but must not count them as deduplicated.
    sealed_for_file: HashSet<ChunkId>,
    /// The pack being filled, and its chunks.
    pack: Vec<u8>,
    pack_chunks: Vec<(ChunkId, u32, u32)>,
    next_seq: u32,
    retries: u32,
    entries: Vec<Entry>,
    fixups: Vec<Fixup>,
    summary: BackupSummary,
    progress: Arc<Progress>,
    /// Where the packs this snapshot keeps from earlier runs are named (the ring entangles
    /// this run's documents only with those and with each other: `BlockStoreApi::begin_session`).
    store: Arc<dyn crate::store::BlockStoreApi>,
    /// Packs already named.
    kept: HashSet<[u8; 32]>,
}

/// The outcome of reading one file.
enum FileRead {
    Done {
        size: u64,
        chunks: Vec<ChunkRef>,
        /// (chunk index, pack sequence number) of the chunks in this run's packs.
        pending: Vec<(usize, u32)>,
    },
    /// The file changed while it was read.
    Changed,
    /// It disappeared (or turned into something else) before it could be read.
    Gone,
}

/// How far apart two writes can be and still get the same timestamp: file systems stamp
/// mtime and ctime from a coarse clock (one tick is 4 ms at HZ = 250, 10 ms at HZ = 100).
const TIMESTAMP_GRAIN_NS: i64 = 20_000_000;

/// Whether the file was modified (or its inode changed) within a timestamp grain of the read
/// from `started` to `finished`: then equal metadata before and after the read does not prove
/// that nothing was written in between (a rewrite in the same clock tick keeps size, mtime and
/// ctime), so the read is treated as changed and retried. A timestamp far in the future (clock
/// skew, unpacked archives) is not racy.
fn racy(md: &Metadata, started: i64, finished: i64) -> bool {
    let ctime_ns = md
        .ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.ctime_nsec());
    let window =
        started.saturating_sub(TIMESTAMP_GRAIN_NS)..=finished.saturating_add(TIMESTAMP_GRAIN_NS);
    window.contains(&mtime_ns(md)) || window.contains(&ctime_ns)
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
                owner: Some(owner_of(&md)),
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
                owner: Some(owner_of(&md)),
            });
            Ok(())
        } else if ft.is_file() {
            let tally = self.progress.start_file(md.len());
            let r = self.file(path, rel, md);
            self.progress.end_file(tally);
            r
        } else {
            debug!(path = %path.display(), "special file skipped");
            Ok(())
        }
    }

    /// Names a pack this snapshot references that an earlier run stored (once).
    fn keep(&mut self, pack: [u8; 32]) {
        if self.kept.insert(pack) {
            self.store
                .keep_documents(&[peerstore_proto::BlockKey(pack)]);
        }
    }

    fn file(&mut self, path: &Path, rel: &[String], md: Metadata) -> Result<()> {
        if let Some(p) = self.prev.get(rel) {
            if p.size() == md.len() && p.mtime_ns == mtime_ns(&md) {
                // Mode and owner can change without touching size or mtime: both are taken
                // from the file now.
                let mut e = p.clone();
                if let EntryKind::File { chunks, .. } = &e.kind {
                    for c in chunks {
                        self.keep(c.pack);
                    }
                }
                e.mode = md.permissions().mode() & 0o7777;
                e.owner = Some(owner_of(&md));
                self.entries.push(e);
                self.summary.files_unchanged += 1;
                self.progress.add_bytes(md.len());
                self.progress.file_done();
                return Ok(());
            }
        }
        let mut md = md;
        self.sealed_for_file.clear();
        for attempt in 0..=self.retries {
            match self.read_file(path, &md)? {
                FileRead::Done {
                    size,
                    chunks,
                    pending,
                } => {
                    let entry = self.entries.len();
                    self.fixups
                        .extend(pending.into_iter().map(|(chunk, seq)| Fixup {
                            entry,
                            chunk,
                            seq,
                        }));
                    self.entries.push(Entry {
                        path: rel.to_vec(),
                        kind: EntryKind::File { size, chunks },
                        mode: md.permissions().mode() & 0o7777,
                        mtime_ns: mtime_ns(&md),
                        owner: Some(owner_of(&md)),
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
        let started = crate::repo::now_ns();
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
        let mut pending = Vec::new();
        let mut size = 0u64;
        // Counted into the summary only if this read is the one recorded.
        let (mut n_chunks, mut n_dedup) = (0u64, 0u64);
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
            let len = chunk.data.len() as u32;
            n_chunks += 1;
            let id = crypto::chunk_id(&self.keys, &chunk.data);
            let ours = self.sealed_for_file.contains(&id);
            if let Some(loc) = self.known.get(&id) {
                self.keep(loc.pack);
                n_dedup += u64::from(!ours);
                chunks.push(ChunkRef {
                    id,
                    pack: loc.pack,
                    offset: loc.offset,
                    sealed_len: loc.sealed_len,
                    len,
                });
                continue;
            }
            let (seq, offset, sealed_len) = match self.packed.get(&id) {
                Some(&at) => {
                    n_dedup += u64::from(!ours);
                    at
                }
                None => {
                    let (id2, sealed) = crypto::seal_chunk(&self.keys, &chunk.data);
                    debug_assert_eq!(id, id2);
                    let at = self.add_to_pack(id, &sealed)?;
                    self.packed.insert(id, at);
                    self.sealed_for_file.insert(id);
                    at
                }
            };
            pending.push((chunks.len(), seq));
            chunks.push(ChunkRef {
                id,
                pack: [0; 32],
                offset,
                sealed_len,
                len,
            });
        }
        let after = fs::symlink_metadata(path);
        let finished = crate::repo::now_ns();
        match after {
            Ok(a) if racy(&a, started, finished) => Ok(FileRead::Changed),
            Ok(a) if same_version(before, &a) && a.len() == size => {
                self.summary.bytes_read += size;
                self.summary.chunks += n_chunks;
                self.summary.chunks_deduplicated += n_dedup;
                Ok(FileRead::Done {
                    size,
                    chunks,
                    pending,
                })
            }
            Ok(_) => Ok(FileRead::Changed),
            Err(_) => Ok(FileRead::Gone),
        }
    }

    /// Appends a sealed chunk to the pack being filled (storing that pack first if the chunk
    /// would make it larger than [`PACK_TARGET`]). Returns (pack sequence number, offset,
    /// sealed length).
    fn add_to_pack(&mut self, id: ChunkId, sealed: &[u8]) -> Result<(u32, u32, u32)> {
        if !self.pack.is_empty() && self.pack.len() + sealed.len() > PACK_TARGET {
            self.flush_pack()?;
        }
        let offset = self.pack.len() as u32;
        let sealed_len = sealed.len() as u32;
        if self.pack.is_empty() {
            self.pack.reserve_exact(PACK_TARGET);
        }
        self.pack.extend_from_slice(sealed);
        self.pack_chunks.push((id, offset, sealed_len));
        self.summary.chunks_uploaded += 1;
        self.summary.bytes_uploaded += u64::from(sealed_len);
        Ok((self.next_seq, offset, sealed_len))
    }

    /// Sends the pack being filled to the uploader (nothing if it is empty).
    fn flush_pack(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let job = PackJob {
            seq: self.next_seq,
            data: std::mem::take(&mut self.pack),
            chunks: std::mem::take(&mut self.pack_chunks),
        };
        self.next_seq += 1;
        if self.tx.blocking_send(job).is_err() {
            return Err(ClientError::Refused("backup aborted".into()));
        }
        Ok(())
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
    let mut next = repo.latest().await?;
    let mut seen = 0;
    while let Some(s) = next {
        if seen >= depth {
            break;
        }
        seen += 1;
        if s.snapshot.source == want {
            return Ok(Some(repo.load_manifest(&s).await?));
        }
        next = repo.parent(&s).await?;
    }
    Ok(None)
}

/// Resolves `source` to an absolute path (for messages and state file names).
pub fn absolute(source: &Path) -> Result<PathBuf> {
    fs::canonicalize(source).map_err(|e| ClientError::io(source, e))
}
