//! The folder sync watcher: watches a directory (notify), waits for a short quiet period after a
//! burst of changes, then pushes the changes into the ring as a new snapshot (a backup that takes
//! unchanged files over from the previous tree without reading them).
//!
//! Durability: the tree last published is kept in a state file in the client's data directory
//! (path -> size, mtime, mode, chunk list). On start, and after any failure, the watcher rescans
//! the folder and compares it with that state, so changes made while it was down or while the
//! ring was unreachable are never lost: they are re-derived from the file system. Failures are
//! retried with exponential backoff.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::backup::{backup, previous_manifest, BackupOptions, BackupSummary};
use crate::cache::KnownBlocks;
use crate::error::{ClientError, Result};
use crate::forget::Policy;
use crate::model::Manifest;
use crate::progress::Progress;
use crate::repo::Repo;

/// Knobs of the watcher.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Quiet time after the last change before syncing.
    pub debounce: Duration,
    /// Longest a sync waits for quiet while changes keep coming.
    pub max_wait: Duration,
    /// Largest retry backoff after a failure.
    pub max_backoff: Duration,
    pub backup: BackupOptions,
    /// Retention applied (`forget`) after every snapshot the watcher publishes; `None` keeps
    /// every snapshot. A failure is only logged: the next publish tries again.
    pub retention: Option<Policy>,
    /// Prune (`prune --grace`) every so often, so forgotten snapshots give their space back;
    /// `None`: never (the default of the library; the CLI prunes every hour).
    pub prune: Option<AutoPrune>,
    /// Two-way sync as this device (`crate::twoway`): the other devices' changes come into
    /// the folder. `None`: push only.
    pub device: Option<crate::devices::Device>,
    /// How often the other devices' heads are checked for news (two-way only).
    pub poll: Duration,
}

/// The watcher's prune: every `every`, with `grace` (see `peerstore-client prune`).
#[derive(Clone, Debug)]
pub struct AutoPrune {
    pub every: Duration,
    pub grace: Duration,
    /// The user's prune marks (`<user data>/prune-marks`).
    pub marks: std::path::PathBuf,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            debounce: Duration::from_millis(250),
            max_wait: Duration::from_secs(2),
            max_backoff: Duration::from_secs(10),
            backup: BackupOptions {
                origin: "sync".into(),
                publish_unchanged: false,
                ..BackupOptions::default()
            },
            retention: Some(Policy::sync_default()),
            prune: None,
            device: None,
            poll: Duration::from_millis(500),
        }
    }
}

/// Decides when a burst of events is over: `quiet` after the last event, but no later than
/// `max_wait` after the first one.
#[derive(Clone, Debug)]
pub struct Debouncer {
    quiet: Duration,
    max_wait: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debouncer {
    #[must_use]
    pub fn new(quiet: Duration, max_wait: Duration) -> Debouncer {
        Debouncer {
            quiet,
            max_wait,
            first: None,
            last: None,
        }
    }

    /// Records a change at `now`.
    pub fn event(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// Whether changes are waiting.
    #[must_use]
    pub fn pending(&self) -> bool {
        self.last.is_some()
    }

    /// When the pending burst is due (None if nothing is pending).
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        match (self.first, self.last) {
            (Some(f), Some(l)) => Some((l + self.quiet).min(f + self.max_wait)),
            _ => None,
        }
    }

    /// If the burst is due at `now`, clears it and returns true.
    pub fn take_due(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(d) if d <= now => {
                self.first = None;
                self.last = None;
                true
            }
            _ => false,
        }
    }
}

/// The watcher's durable state: the tree it last published for one folder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub source: String,
    /// Key of the snapshot object that published `manifest`.
    pub snapshot: Option<[u8; 32]>,
    pub manifest: Manifest,
    /// The two-way state (`crate::twoway`; empty when syncing one way).
    pub two_way: crate::twoway::TwoWayState,
}

impl SyncState {
    /// Loads a state file; `None` if there is none. A damaged file is treated as absent (the
    /// next scan re-derives everything).
    pub fn load(path: &Path) -> Result<Option<SyncState>> {
        match fs::read(path) {
            Ok(bytes) => match postcard::from_bytes::<SyncState>(&bytes) {
                Ok(s) if s.manifest.version == crate::model::MANIFEST_VERSION => Ok(Some(s)),
                Ok(_) => {
                    warn!(path = %path.display(), "sync state of another version; rescanning");
                    Ok(None)
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "sync state unreadable; rescanning");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::io(path, e)),
        }
    }

    /// Saves durably (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = postcard::to_allocvec(self)
            .map_err(|e| ClientError::Corrupt(format!("cannot encode sync state: {e}")))?;
        crate::config::write_private(path, &bytes, true)
    }
}

/// Where the state of the watcher of `source` (absolute) lives.
#[must_use]
pub fn state_path(user_data: &Path, source: &Path) -> PathBuf {
    let h = blake3::hash(source.as_os_str().as_encoded_bytes());
    user_data
        .join("sync")
        .join(format!("{}.state", &h.to_hex()[..16]))
}

fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// One pass: scan the folder against the state, publish if anything changed, save the state,
/// then apply the retention (if any) when a snapshot was published.
pub async fn sync_once(
    repo: &Repo,
    known: &Arc<KnownBlocks>,
    source: &Path,
    state: &mut SyncState,
    state_file: &Path,
    opts: &SyncOptions,
) -> Result<BackupSummary> {
    // Another device's prune may have deleted packs this cache names.
    crate::prune::align_cache(repo, known).await?;
    let mut bopts = opts.backup.clone();
    bopts.publish_unchanged = state.snapshot.is_none();
    let prev = if state.snapshot.is_some() {
        Some(&state.manifest)
    } else {
        None
    };
    let progress = Arc::new(Progress::hidden());
    let (summary, manifest, snap) =
        backup(repo, known.clone(), source, prev, &bopts, &progress).await?;
    if let Some(me) = &opts.device {
        let (folder, report) =
            crate::twoway::pass(repo, me, source, &manifest, &mut state.two_way).await?;
        if let Some(s) = &snap {
            state.snapshot = Some(s.key);
        }
        state.manifest = folder;
        state.save(state_file)?;
        tracing::debug!(?report, "two-way pass");
        if snap.is_none() {
            return Ok(summary);
        }
    } else {
        let Some(s) = &snap else {
            return Ok(summary);
        };
        state.snapshot = Some(s.key);
        state.manifest = manifest;
        state.save(state_file)?;
    }
    if let Some(policy) = &opts.retention {
        match crate::forget::forget(repo, policy, &[], false).await {
            Ok(r) if !r.removed.is_empty() => {
                info!(
                    forgotten = r.removed.len(),
                    rewritten = r.rewritten,
                    root = r.root,
                    "retention applied"
                );
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "retention not applied; trying again after the next snapshot");
            }
        }
    }
    Ok(summary)
}

/// How soon a prune that was due but could not run (a pass pending) is tried again.
const PRUNE_RETRY: Duration = Duration::from_secs(5);

/// One prune of the watcher: failures are logged, the next period tries again.
async fn prune_pass(repo: &Repo, known: &Arc<KnownBlocks>, p: &AutoPrune) {
    let opts = crate::prune::PruneOptions {
        grace: p.grace,
        dry_run: false,
    };
    match crate::prune::prune(repo, &p.marks, Some(known), opts).await {
        Ok(r) => info!(
            deleted = r.deleted,
            marked = r.marked,
            waiting = r.waiting,
            pinned = r.pinned,
            bytes_freed = r.bytes_freed,
            "prune"
        ),
        Err(e) => warn!(error = %e, "prune failed; trying again in the next period"),
    }
}

/// Runs the watcher until `shutdown` resolves. `report` is called after every published
/// snapshot.
pub async fn run(
    repo: &Repo,
    known: Arc<KnownBlocks>,
    source: &Path,
    state_file: &Path,
    opts: &SyncOptions,
    shutdown: impl Future<Output = ()>,
    mut report: impl FnMut(&BackupSummary),
) -> Result<()> {
    let source = fs::canonicalize(source).map_err(|e| ClientError::io(source, e))?;
    let mut state = match SyncState::load(state_file)? {
        Some(s) if s.source == source.to_string_lossy() => s,
        _ => {
            // No local state: start from the latest snapshot of this folder in the ring, if the
            // ring is reachable (otherwise everything is read once; uploads still deduplicate).
            let manifest = match previous_manifest(repo, &source, 20).await {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "cannot read the previous snapshot; full scan");
                    None
                }
            };
            SyncState {
                source: source.to_string_lossy().to_string(),
                snapshot: None,
                manifest: manifest.unwrap_or_default(),
                two_way: crate::twoway::TwoWayState::default(),
            }
        }
    };

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let wanted = match &res {
            Ok(ev) => relevant(&ev.kind),
            Err(_) => true, // overflow or error: rescan
        };
        if wanted {
            let _ = tx.send(());
        }
    })
    .map_err(|e| ClientError::Config(format!("cannot watch {}: {e}", source.display())))?;
    watcher
        .watch(&source, RecursiveMode::Recursive)
        .map_err(|e| ClientError::Config(format!("cannot watch {}: {e}", source.display())))?;
    info!(dir = %source.display(), "watching");

    let mut deb = Debouncer::new(opts.debounce, opts.max_wait);
    deb.event(
        Instant::now()
            .checked_sub(opts.max_wait)
            .unwrap_or_else(Instant::now),
    ); // initial scan right away
    let mut backoff = Duration::from_millis(500);
    let mut retry_at: Option<Instant> = None;
    // The first prune runs once the first pass is done (it marks; the next one deletes).
    let mut prune_at: Option<Instant> = opts.prune.as_ref().map(|_| Instant::now());
    // Two-way: the other devices' heads are checked every `poll` between passes.
    let mut poll_at: Option<Instant> = opts.device.as_ref().map(|_| Instant::now() + opts.poll);
    tokio::pin!(shutdown);
    loop {
        let wake = match (deb.deadline(), retry_at) {
            (Some(d), Some(r)) => Some(d.max(r)),
            (d, None) => d,
            (None, Some(r)) => Some(r),
        };
        let wake = match (wake, prune_at) {
            (Some(w), Some(p)) => Some(w.min(p)),
            (w, p) => w.or(p),
        };
        let wake = match (wake, poll_at) {
            (Some(w), Some(p)) => Some(w.min(p)),
            (w, p) => w.or(p),
        };
        let sleep = async {
            match wake {
                Some(w) => tokio::time::sleep_until(w.into()).await,
                None => futures::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            ev = rx.recv() => match ev {
                Some(()) => deb.event(Instant::now()),
                None => return Err(ClientError::Config("file watcher stopped".into())),
            },
            _ = sleep => {
                let now = Instant::now();
                if let (Some(p), Some(at)) = (&opts.prune, prune_at) {
                    if at <= now {
                        // Only between passes, once this folder has a snapshot.
                        if state.snapshot.is_some() && deb.deadline().is_none() {
                            tokio::select! {
                                _ = &mut shutdown => break,
                                _ = prune_pass(repo, &known, p) => {}
                            }
                            prune_at = Some(Instant::now() + p.every);
                            continue;
                        }
                        prune_at = Some(now + PRUNE_RETRY.min(p.every));
                    }
                }
                if let (Some(me), Some(at)) = (&opts.device, poll_at) {
                    if at <= now {
                        poll_at = Some(now + opts.poll);
                        if deb.deadline().is_none() {
                            let news = tokio::select! {
                                _ = &mut shutdown => break,
                                r = crate::twoway::remote_changed(repo, me, &state.two_way) => r,
                            };
                            match news {
                                Ok(true) => deb.event(
                                    now.checked_sub(opts.max_wait).unwrap_or(now),
                                ),
                                Ok(false) => {}
                                Err(e) => warn!(error = %e, "cannot check the other devices"),
                            }
                        }
                    }
                }
                if retry_at.is_some_and(|r| r > now) || !deb.take_due(now) {
                    continue;
                }
                let result = tokio::select! {
                    _ = &mut shutdown => break,
                    r = sync_once(repo, &known, &source, &mut state, state_file, opts) => r,
                };
                match result {
                    Ok(summary) => {
                        retry_at = None;
                        backoff = Duration::from_millis(500);
                        if summary.snapshot.is_some() {
                            report(&summary);
                        }
                        if !summary.skipped.is_empty() {
                            // Files that were being written: look again soon.
                            deb.event(Instant::now());
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?backoff, "sync failed; will retry");
                        if !e.is_transient() {
                            eprintln!("warning: sync failed: {e}; retrying in {backoff:?}");
                        }
                        deb.event(Instant::now());
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(opts.max_backoff);
                    }
                }
            }
        }
    }
    drop(watcher);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debouncer_waits_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(250), ms(1000));
        assert!(!d.pending());
        assert_eq!(d.deadline(), None);
        d.event(t0);
        assert_eq!(d.deadline(), Some(t0 + ms(250)));
        d.event(t0 + ms(100));
        assert!(!d.take_due(t0 + ms(300)));
        assert!(d.take_due(t0 + ms(350)));
        assert!(!d.pending());
        // A steady stream of events: flushed after max_wait.
        let t1 = t0 + ms(2000);
        for i in 0..20 {
            d.event(t1 + ms(i * 100));
        }
        assert_eq!(d.deadline(), Some(t1 + ms(1000)));
        assert!(d.take_due(t1 + ms(1000)));
    }

    #[test]
    fn state_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = state_path(dir.path(), Path::new("/some/dir"));
        assert_ne!(p, state_path(dir.path(), Path::new("/other/dir")));
        assert_eq!(SyncState::load(&p).unwrap(), None);
        let s = SyncState {
            source: "/some/dir".into(),
            snapshot: Some([3; 32]),
            manifest: Manifest::new(vec![]),
            two_way: crate::twoway::TwoWayState::default(),
        };
        s.save(&p).unwrap();
        assert_eq!(SyncState::load(&p).unwrap(), Some(s));
        fs::write(&p, b"\xff\xff garbage").unwrap();
        assert_eq!(SyncState::load(&p).unwrap(), None);
    }

    /// After each snapshot it publishes, the watcher applies its retention.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_retention_is_applied_after_each_publish() {
        use rand::SeedableRng;
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::MemStore::new();
        let repo = Repo::new(
            Arc::new(store.clone()),
            Arc::new(crypto::Identity::generate(
                &mut rand_chacha::ChaCha20Rng::seed_from_u64(3),
            )),
        );
        let src = tmp.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let state_file = tmp.path().join("state");
        let known = Arc::new(KnownBlocks::in_memory());
        let mut state = SyncState::default();
        let opts = SyncOptions {
            retention: Some(Policy {
                keep_last: 2,
                ..Policy::default()
            }),
            ..SyncOptions::default()
        };
        for i in 0..4 {
            fs::write(src.join(format!("f{i}")), format!("file {i}")).unwrap();
            let s = sync_once(&repo, &known, &src, &mut state, &state_file, &opts)
                .await
                .unwrap();
            assert!(s.snapshot.is_some());
        }
        let numbers: Vec<u64> = repo
            .snapshots()
            .await
            .unwrap()
            .iter()
            .map(|s| s.snapshot.number)
            .collect();
        // Roots 1-3 published snapshots 1-3, root 4 forgot snapshot 1, root 5 published
        // snapshot 5 and root 6 forgot snapshot 2.
        assert_eq!(numbers, [5, 3]);
        // Without a retention every snapshot stays.
        let opts = SyncOptions {
            retention: None,
            ..opts
        };
        fs::write(src.join("g"), b"g").unwrap();
        sync_once(&repo, &known, &src, &mut state, &state_file, &opts)
            .await
            .unwrap();
        assert_eq!(repo.snapshots().await.unwrap().len(), 3);
    }

    #[test]
    fn own_reads_are_not_changes() {
        assert!(!relevant(&EventKind::Access(AccessKind::Open(
            notify::event::AccessMode::Read
        ))));
        assert!(!relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(relevant(&EventKind::Remove(
            notify::event::RemoveKind::File
        )));
    }
}
