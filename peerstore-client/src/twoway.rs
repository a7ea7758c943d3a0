//! The two-way part of a sync pass (issue 12): after the folder's changes are backed up, they
//! become changes of this device's synced tree ([`crate::merge`]); the trees of the user's
//! other devices that changed are merged in; what the merged tree holds that the folder does
//! not is written into the folder, what it no longer holds is removed; and the tree is
//! published through this device's head ([`crate::devices`]).
//!
//! Applying is careful: every path is checked against the scan the merge started from just
//! before it is touched, and left alone if it changed meanwhile (a local edit: the next pass
//! sees it as a change of this device, concurrent with the remote one, so both are kept); no
//! path is written through a symbolic link (an ancestor that is not a real directory stops
//! it); files are written to a temporary name and renamed, with their mode and modification
//! time (the restore's file writer); a directory is removed only when empty. The folder's
//! manifest after applying is what the next backup compares with, so the files just written
//! are taken over by size and time and never uploaded again.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::devices::{self, Device};
use crate::error::{ClientError, Result};
use crate::merge::{self, DeviceId, SyncTree};
use crate::model::{Entry, EntryKind, Manifest};
use crate::progress::Progress;
use crate::repo::{now_ns, Repo};

/// What a device remembers of two-way sync between passes (in the watcher's state file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwoWayState {
    pub tree: SyncTree,
    /// This device's head sequence number (0: never published).
    pub head_seq: u64,
    /// The head sequence number of every other device whose tree is merged in.
    pub seen: BTreeMap<DeviceId, u64>,
    /// Whether this device is in the user's directory.
    pub registered: bool,
    /// Paths whose merged state could not be written into the folder (changed locally
    /// meanwhile): their local change keeps the other content as a version.
    pub unapplied: std::collections::BTreeSet<Vec<String>>,
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PassReport {
    /// Paths this device changed (new, modified, deleted) since the last pass.
    pub local_changes: usize,
    /// Other devices whose newer trees were merged in.
    pub merged_devices: usize,
    /// Paths written into the folder and removed from it.
    pub written: usize,
    pub removed: usize,
    /// Paths left alone because they changed locally while the pass ran.
    pub deferred: usize,
    /// The head published, if the tree changed.
    pub published: Option<u64>,
}

/// Whether another device published a tree this device has not merged yet (a few record
/// reads: the watcher asks this every poll period).
pub async fn remote_changed(repo: &Repo, me: &Device, state: &TwoWayState) -> Result<bool> {
    for d in devices::list(repo).await? {
        if d.id == me.id {
            continue;
        }
        if let Some(h) = devices::head(repo, &d.id).await? {
            if h.seq > state.seen.get(&d.id).copied().unwrap_or(0) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// One two-way pass over `root`, whose backup just scanned it as `scan`. Returns what the folder
/// holds afterwards (for the next backup to compare with) and the report.
pub async fn pass(
    repo: &Repo,
    me: &Device,
    root: &Path,
    scan: &Manifest,
    state: &mut TwoWayState,
) -> Result<(Manifest, PassReport)> {
    let mut report = PassReport::default();
    if !state.registered {
        devices::register(repo, me).await?;
        state.registered = true;
    }
    let before = state.tree.clone();
    report.local_changes =
        state
            .tree
            .observe_keeping(scan, me.id, now_ns(), &std::mem::take(&mut state.unapplied));
    for d in devices::list(repo).await? {
        if d.id == me.id {
            continue;
        }
        let Some(head) = devices::head(repo, &d.id).await? else {
            continue;
        };
        if head.seq <= state.seen.get(&d.id).copied().unwrap_or(0) {
            continue;
        }
        let theirs = devices::load(repo, &d.id, &head).await?;
        state.tree.merge(&theirs);
        state.seen.insert(d.id, head.seq);
        report.merged_devices += 1;
    }
    let target = state.tree.manifest();
    let plan = merge::plan(scan, &target);
    let folder = apply(
        repo,
        root,
        scan,
        &target,
        &plan,
        &mut report,
        &mut state.unapplied,
    )
    .await?;
    if state.tree != before || state.head_seq == 0 {
        let head = devices::publish(repo, me, state.head_seq, &state.tree).await?;
        state.head_seq = head.seq;
        report.published = Some(head.seq);
    }
    if report.written + report.removed > 0 {
        info!(
            written = report.written,
            removed = report.removed,
            deferred = report.deferred,
            "applied the other devices' changes"
        );
    }
    Ok((folder, report))
}

/// Whether `path` still is what `e` says (kind, and size and time for a file).
fn unchanged(path: &Path, e: &Entry) -> bool {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return false;
    };
    let ft = m.file_type();
    match &e.kind {
        EntryKind::Dir => ft.is_dir(),
        EntryKind::Symlink { .. } => ft.is_symlink(),
        EntryKind::File { size, .. } => {
            ft.is_file() && m.len() == *size && mtime_ns(&m) == e.mtime_ns
        }
    }
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// Whether every ancestor of `components` below `root` is a real directory (or missing).
fn no_links_above(root: &Path, components: &[String]) -> bool {
    let mut p = root.to_path_buf();
    for c in &components[..components.len().saturating_sub(1)] {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return false,
            Err(_) => return true,
        }
    }
    true
}

async fn apply(
    repo: &Repo,
    root: &Path,
    scan: &Manifest,
    target: &Manifest,
    plan: &merge::Plan,
    report: &mut PassReport,
    unapplied: &mut std::collections::BTreeSet<Vec<String>>,
) -> Result<Manifest> {
    let mut now: BTreeMap<Vec<String>, Entry> = scan
        .entries
        .iter()
        .map(|e| (e.path.clone(), e.clone()))
        .collect();
    for e in &plan.remove {
        let p = root.join(e.path.join("/"));
        if !no_links_above(root, &e.path) || !unchanged(&p, e) {
            report.deferred += 1;
            unapplied.insert(e.path.clone());
            continue;
        }
        let r = if matches!(e.kind, EntryKind::Dir) {
            std::fs::remove_dir(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match r {
            Ok(()) => {
                now.remove(&e.path);
                report.removed += 1;
            }
            Err(err) => {
                // A directory that got new content meanwhile: the next pass sees it.
                warn!(path = %p.display(), error = %err, "not removed; left for the next pass");
                report.deferred += 1;
            }
        }
    }
    let progress = Arc::new(Progress::hidden());
    for e in &plan.write {
        let p = root.join(e.path.join("/"));
        let local_now = now.get(&e.path);
        let untouched = match local_now {
            Some(l) => unchanged(&p, l),
            None => std::fs::symlink_metadata(&p).is_err(),
        };
        if !untouched || !no_links_above(root, &e.path) {
            report.deferred += 1;
            unapplied.insert(e.path.clone());
            continue;
        }
        match &e.kind {
            EntryKind::Dir => {
                if !p.is_dir() {
                    std::fs::create_dir(&p).map_err(|err| ClientError::io(&p, err))?;
                }
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode & 0o777))
                    .map_err(|err| ClientError::io(&p, err))?;
            }
            EntryKind::File { .. } | EntryKind::Symlink { .. } => {
                if matches!(e.kind, EntryKind::Symlink { .. }) && local_now.is_some() {
                    // A symlink is replaced by a new one, not written through.
                    std::fs::remove_file(&p).map_err(|err| ClientError::io(&p, err))?;
                }
                crate::restore::restore_entry(repo, target, e, &p, &progress).await?;
            }
        }
        // What is on disk now (the time the restore gave it).
        let mut got = e.clone();
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            got.mtime_ns = mtime_ns(&m);
        }
        now.insert(e.path.clone(), got);
        report.written += 1;
    }
    Ok(Manifest::new(now.into_values().collect()))
}
