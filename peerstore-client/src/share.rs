//! Read capabilities (issue 15; docs/SHARING.md): a string that both names and opens a file,
//! a folder or a whole snapshot of one user's backup, for someone with their own key.
//!
//! - **What a capability opens.** `share` writes a *share manifest*: the shared entries (paths
//!   relative to the shared folder) and the key of each of their chunks (format 2 chunks have
//!   their own keys, `crypto::chunk_key`), sealed under a fresh random share key and stored
//!   as documents of the ring. The share's *record* (a root record of a sub-identity drawn for
//!   the share, chain-replicated, signed) holds, sealed under the share key, where that
//!   manifest is and its BLAKE3, or "revoked". The capability is `ps1r:` and the hex of
//!   (format, kind, the record's signer, the share key): it carries no key of the user (not
//!   the master key, not the manifest key, not the chunk key every chunk key derives from).
//!   Nothing outside the shared subtree is decryptable with it: the chunk keys it leads to are
//!   one-way functions of the user's key and of those chunks' ids.
//! - **Keeping it alive.** The user's *share list* (a record of the sub-identity
//!   `peerstore-shares-v1`, sealed under the user's keys) names every share; `prune` keeps the
//!   documents of every listed share that is neither revoked nor expired
//!   ([`live_documents`]).
//! - **Revocation** (`unshare`) writes "revoked" into the share's record (a newer signed
//!   version; the ring's chain makes every later read see it): the capability answers
//!   "revoked" from then on, and the manifest and the chunks only it kept go at the next
//!   prune. It cannot take back what a holder already downloaded, nor the chunk keys of what
//!   was shared then (those chunks stay readable with them for as long as the user's own
//!   snapshots keep them).
//! - **Expiry** is sealed in the record and in the manifest; readers refuse an expired share,
//!   and `prune` drops its documents.

use std::collections::{BTreeSet, HashMap};

use crypto::{ChunkId, Identity};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};
use crate::model::{Entry, EntryKind, Manifest};
use crate::pack::PackCache;
use crate::repo::{Repo, RootBackoff, SnapshotRef};
use peerstore_proto::MAX_BLOCK_SIZE;

use peerstore_proto::share::{manifest_context, record_context, ShareError};
pub use peerstore_proto::share::{
    Capability, ShareKind, ShareManifest, ShareState, CAP_PREFIX, MAX_CAP_LEN, MAX_SHARE_PIECES,
    SHARE_FORMAT,
};

/// Shares one user's list holds.
pub const MAX_SHARES: usize = 256;

impl From<ShareError> for ClientError {
    fn from(e: ShareError) -> ClientError {
        match e {
            ShareError::Malformed(m) => ClientError::Config(m),
            ShareError::OtherVersion(v) => ClientError::OtherVersion(format!(
                "capability format {v} (this client reads {SHARE_FORMAT})"
            )),
            ShareError::Integrity(m) => ClientError::Integrity(m),
        }
    }
}

/// The entries of a share manifest as a manifest, and its chunk keys as a map (for restore).
#[must_use]
pub fn into_parts(sm: ShareManifest) -> (Manifest, HashMap<ChunkId, [u8; 32]>) {
    (
        Manifest::new(sm.entries),
        sm.chunk_keys.into_iter().collect(),
    )
}

/// One share in the user's list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The label its signer derives from (`Identity::derived`).
    pub label: [u8; 16],
    pub cap: Capability,
    /// Its manifest's documents (kept by `prune` while the share is live).
    pub pieces: Vec<[u8; 32]>,
    /// The shared path ("" for a whole snapshot).
    pub path: String,
    pub snapshot: u64,
    pub created_us: u64,
    pub expires_us: Option<u64>,
    pub revoked: bool,
    /// A live share: it follows the owner's later snapshots (`share --live`).
    pub follow: bool,
}

impl Listed {
    /// Whether the share still resolves at `now_us`.
    #[must_use]
    pub fn live(&self, now_us: u64) -> bool {
        !self.revoked && self.expires_us.is_none_or(|e| e > now_us)
    }
}

fn list_identity(user: &Identity) -> Identity {
    user.derived(b"peerstore-shares-v1")
}

fn share_identity(user: &Identity, label: &[u8; 16]) -> Identity {
    let mut l = b"peerstore-share-v1:".to_vec();
    l.extend_from_slice(label);
    user.derived(&l)
}

/// Writes version `seq` of the share record of `cap`, signed by `signer`.
async fn write_state(
    repo: &Repo,
    signer: &Identity,
    cap: &Capability,
    seq: u64,
    state: &ShareState,
) -> Result<()> {
    let plain = postcard::to_allocvec(state)
        .map_err(|e| ClientError::Corrupt(format!("share record: {e}")))?;
    let payload = crypto::seal_share(&cap.key, &record_context(cap), &plain, &mut OsRng);
    let rec = crypto::RootRecord::sign(signer, seq, payload)
        .and_then(|r| r.encode())
        .map_err(|e| ClientError::Corrupt(format!("cannot sign a share record: {e}")))?;
    repo.store.put_record(cap.record_key(), rec).await?;
    Ok(())
}

/// The newest version of the share record of `cap` that verifies and opens: (seq, state).
async fn read_state(repo: &Repo, cap: &Capability) -> Result<Option<(u64, ShareState)>> {
    let mut best: Option<(u64, ShareState)> = None;
    for a in repo.store.get_record_replicas(cap.record_key()).await? {
        let Some(bytes) = a.record else { continue };
        if let Some((seq, state)) = peerstore_proto::share::open_record(cap, &bytes) {
            if best.as_ref().is_none_or(|(s, _)| *s < seq) {
                best = Some((seq, state));
            }
        }
    }
    Ok(best)
}

#[must_use]
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The user's shares (newest last).
pub async fn list(repo: &Repo) -> Result<Vec<Listed>> {
    match crate::devices::read_record(repo, &list_identity(repo.identity())).await? {
        None => Ok(Vec::new()),
        Some((_, plain)) => decode_list(&plain),
    }
}

fn decode_list(plain: &[u8]) -> Result<Vec<Listed>> {
    let list: Vec<Listed> = postcard::from_bytes(plain)
        .map_err(|e| ClientError::Corrupt(format!("share list: {e}")))?;
    if list.len() > MAX_SHARES {
        return Err(ClientError::Corrupt(format!(
            "the share list holds more than {MAX_SHARES} shares"
        )));
    }
    Ok(list)
}

/// Changes the share list with `f` (read, change, write; retried when another device wrote it
/// meanwhile). `f` returns `false` to leave the list as it is.
async fn update_list(
    repo: &Repo,
    what: &str,
    mut f: impl FnMut(&mut Vec<Listed>) -> Result<bool>,
) -> Result<()> {
    let who = list_identity(repo.identity());
    let mut backoff = RootBackoff::new();
    loop {
        let (seq, mut list) = match crate::devices::read_record(repo, &who).await? {
            None => (0, Vec::new()),
            Some((seq, plain)) => (seq, decode_list(&plain)?),
        };
        if !f(&mut list)? {
            return Ok(());
        }
        let plain = postcard::to_allocvec(&list)
            .map_err(|e| ClientError::Corrupt(format!("share list: {e}")))?;
        if crate::devices::write_record(repo, &who, seq + 1, &plain).await? {
            return Ok(());
        }
        backoff.wait(what).await?;
    }
}

/// The share manifest of `path` (components; empty: the whole snapshot) of snapshot `snap`,
/// whose manifest is `m`, with the keys of its chunks (refused if a chunk is of format 1).
async fn build(
    repo: &Repo,
    snap: &SnapshotRef,
    m: &Manifest,
    path: &[String],
    expires_us: Option<u64>,
) -> Result<ShareManifest> {
    let (kind, name, entries) = if path.is_empty() {
        (
            ShareKind::Snapshot,
            snap.snapshot.number.to_string(),
            m.entries.clone(),
        )
    } else {
        let entry = m
            .find(path)
            .ok_or_else(|| ClientError::NotInSnapshot(path.join("/")))?;
        let name = path[path.len() - 1].clone();
        match entry.kind {
            EntryKind::Dir => {
                let entries = m
                    .entries
                    .iter()
                    .filter(|e| e.path.len() > path.len() && e.is_under(path))
                    .map(|e| Entry {
                        path: e.path[path.len()..].to_vec(),
                        ..e.clone()
                    })
                    .collect();
                (ShareKind::Folder, name, entries)
            }
            _ => {
                let e = Entry {
                    path: vec![name.clone()],
                    ..entry.clone()
                };
                (ShareKind::File, name, vec![e])
            }
        }
    };
    // Every chunk must be of format 2 (its own key); check the bytes in their packs.
    let cache = PackCache::with_defaults(repo);
    let mut ids = BTreeSet::new();
    for e in &entries {
        if let EntryKind::File { chunks, .. } = &e.kind {
            for c in chunks {
                if !ids.insert(c.id) {
                    continue;
                }
                let pack = cache
                    .get(c.pack)
                    .await
                    .map_err(|e| ClientError::Missing(format!("{e} (needed to share)")))?;
                let format = c
                    .range_in(pack.len())
                    .and_then(|r| crypto::chunk_format(&pack[r]));
                if format != Some(crypto::CHUNK_FORMAT_VERSION) {
                    return Err(ClientError::Refused(format!(
                        "{} was backed up by an older client (chunk format {}) and cannot be \
                         shared; change it or back it up with `backup --reread` after a \
                         `forget` of the snapshots that hold it",
                        e.display_path(),
                        format.map_or_else(|| "unknown".into(), |f| f.to_string())
                    )));
                }
            }
        }
    }
    let chunk_keys = ids
        .into_iter()
        .map(|id| (id, crypto::chunk_key(repo.keys(), &id)))
        .collect();
    Ok(ShareManifest {
        format: SHARE_FORMAT,
        kind,
        name,
        snapshot: snap.snapshot.number,
        time_ns: snap.snapshot.time_ns,
        expires_us,
        entries,
        chunk_keys,
    })
}

/// Seals `sm` under `key` and stores it: its pieces and the BLAKE3 of the sealed bytes.
async fn store(
    repo: &Repo,
    key: &[u8; 32],
    sm: &ShareManifest,
) -> Result<(Vec<[u8; 32]>, [u8; 32])> {
    let plain = postcard::to_allocvec(sm)
        .map_err(|e| ClientError::Corrupt(format!("cannot encode the share: {e}")))?;
    let sealed = crypto::seal_share(key, &manifest_context(sm.kind), &plain, &mut OsRng);
    if sealed.len() > MAX_SHARE_PIECES * MAX_BLOCK_SIZE {
        return Err(ClientError::Refused(
            "the share is too large (its manifest exceeds 256 MiB); share a smaller folder".into(),
        ));
    }
    let mut pieces = Vec::new();
    for piece in sealed.chunks(MAX_BLOCK_SIZE) {
        pieces.push(repo.put_document(piece.to_vec()).await?);
    }
    Ok((pieces, *blake3::hash(&sealed).as_bytes()))
}

/// Shares `path` (components; empty: the whole snapshot) of snapshot `snap`, whose manifest
/// is `m`: writes the share manifest, lists the share, writes its record, returns its
/// capability. `follow`: a live share, re-published after each later snapshot
/// ([`refresh_live`]).
pub async fn share(
    repo: &Repo,
    snap: &SnapshotRef,
    m: &Manifest,
    path: &[String],
    expires_us: Option<u64>,
    follow: bool,
) -> Result<Capability> {
    let sm = build(repo, snap, m, path, expires_us).await?;
    let kind = sm.kind;
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let mut label = [0u8; 16];
    OsRng.fill_bytes(&mut label);
    let signer = share_identity(repo.identity(), &label);
    let (pieces, hash) = store(repo, &key, &sm).await?;
    let cap = Capability {
        format: SHARE_FORMAT,
        kind,
        signer: signer.user_id().0,
        key,
    };
    // Listed first, so that a prune running meanwhile keeps the manifest; then the record.
    let listed = Listed {
        label,
        cap: cap.clone(),
        pieces: pieces.clone(),
        path: path.join("/"),
        snapshot: snap.snapshot.number,
        created_us: now_us(),
        expires_us,
        revoked: false,
        follow,
    };
    update_list(repo, "list the share", |list| {
        if list.len() >= MAX_SHARES {
            // Make room: drop the oldest share that no longer resolves.
            if let Some(i) = list.iter().position(|l| !l.live(now_us())) {
                list.remove(i);
            } else {
                return Err(ClientError::Refused(format!(
                    "this user already has {MAX_SHARES} live shares; `unshare` one first"
                )));
            }
        }
        list.push(listed.clone());
        Ok(true)
    })
    .await?;
    let state = ShareState::Live {
        pieces,
        hash,
        expires_us,
    };
    write_state(repo, &signer, &cap, 1, &state).await?;
    Ok(cap)
}

/// Re-publishes every live share that follows the owner's snapshots (`share --live`) from
/// the new snapshot `snap` (manifest `m`): a new share manifest under the same share key, and
/// a newer version of the share's record pointing at it. A revoked or expired share is left
/// alone, so what changes after `unshare` never reaches its holders. A followed path that is
/// gone from the snapshot is shared as empty. Returns how many shares were updated.
pub async fn refresh_live(repo: &Repo, snap: &SnapshotRef, m: &Manifest) -> Result<usize> {
    let now = now_us();
    let mut updated = 0;
    for l in list(repo).await? {
        if !l.follow || !l.live(now) {
            continue;
        }
        let path: Vec<String> = if l.path.is_empty() {
            Vec::new()
        } else {
            l.path.split('/').map(str::to_string).collect()
        };
        let sm = match build(repo, snap, m, &path, l.expires_us).await {
            Ok(sm) => sm,
            Err(ClientError::NotInSnapshot(_)) => ShareManifest {
                format: SHARE_FORMAT,
                kind: l.cap.kind,
                name: path.last().cloned().unwrap_or_default(),
                snapshot: snap.snapshot.number,
                time_ns: snap.snapshot.time_ns,
                expires_us: l.expires_us,
                entries: Vec::new(),
                chunk_keys: Vec::new(),
            },
            Err(e) => return Err(e),
        };
        let signer = share_identity(repo.identity(), &l.label);
        let (pieces, hash) = store(repo, &l.cap.key, &sm).await?;
        // The list first (prune keeps the new manifest), then the record.
        update_list(repo, "update a live share", |list| {
            let Some(x) = list.iter_mut().find(|x| x.cap == l.cap) else {
                return Ok(false);
            };
            if x.revoked {
                return Ok(false);
            }
            x.pieces = pieces.clone();
            x.snapshot = snap.snapshot.number;
            Ok(true)
        })
        .await?;
        // Re-read: an `unshare` from another device meanwhile wins.
        match read_state(repo, &l.cap).await? {
            Some((_, ShareState::Revoked { .. })) => continue,
            Some((seq, _)) => {
                let state = ShareState::Live {
                    pieces,
                    hash,
                    expires_us: l.expires_us,
                };
                write_state(repo, &signer, &l.cap, seq + 1, &state).await?;
                updated += 1;
            }
            None => continue,
        }
    }
    Ok(updated)
}

/// Makes `dir` hold nothing `m` does not name: removes every path below it that is not in
/// `m`, or is a directory where `m` has something else, or the reverse (for `sync --from`,
/// before restoring `m` into it). Returns how many paths were removed.
pub fn remove_extraneous(dir: &std::path::Path, m: &Manifest) -> Result<u64> {
    fn walk(
        root: &std::path::Path,
        rel: &mut Vec<String>,
        m: &Manifest,
        removed: &mut u64,
    ) -> Result<()> {
        let here = root.join(rel.join("/"));
        let rd = match std::fs::read_dir(&here) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ClientError::io(&here, e)),
        };
        for d in rd {
            let d = d.map_err(|e| ClientError::io(&here, e))?;
            let Ok(name) = d.file_name().into_string() else {
                continue;
            };
            let ft = d.file_type().map_err(|e| ClientError::io(d.path(), e))?;
            rel.push(name);
            let keep = m.find(rel).is_some_and(|e| {
                matches!(e.kind, EntryKind::Dir) == ft.is_dir()
                    && matches!(e.kind, EntryKind::Symlink { .. }) == ft.is_symlink()
            });
            if !keep {
                let p = d.path();
                let r = if ft.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(|e| ClientError::io(&p, e))?;
                *removed += 1;
            } else if ft.is_dir() {
                walk(root, rel, m, removed)?;
            }
            rel.pop();
        }
        Ok(())
    }
    let mut removed = 0;
    walk(dir, &mut Vec::new(), m, &mut removed)?;
    Ok(removed)
}

/// What `cap` opens now, and the BLAKE3 of its sealed manifest (changes when a live share
/// follows a new snapshot).
pub async fn resolve_with_hash(repo: &Repo, cap: &Capability) -> Result<([u8; 32], ShareManifest)> {
    resolve_inner(repo, cap).await
}

/// Revokes the share of `cap`: "revoked" in its record, and in the list. `Ok(false)`: not
/// one of this user's shares.
pub async fn unshare(repo: &Repo, cap: &Capability) -> Result<bool> {
    let Some(listed) = list(repo).await?.into_iter().find(|l| l.cap == *cap) else {
        return Ok(false);
    };
    let signer = share_identity(repo.identity(), &listed.label);
    if signer.user_id().0 != cap.signer {
        return Err(ClientError::Corrupt(
            "the share list names another signer".into(),
        ));
    }
    let seq = read_state(repo, cap).await?.map_or(0, |(s, _)| s);
    write_state(
        repo,
        &signer,
        cap,
        seq + 1,
        &ShareState::Revoked { at_us: now_us() },
    )
    .await?;
    update_list(repo, "revoke the share", |list| {
        let Some(l) = list.iter_mut().find(|l| l.cap == *cap) else {
            return Ok(false);
        };
        if l.revoked {
            return Ok(false);
        }
        l.revoked = true;
        Ok(true)
    })
    .await?;
    Ok(true)
}

/// Reads and opens the share manifest of `cap` (whose holder may be anyone: `repo` is only
/// the way to the ring). Refuses an expired share.
pub async fn resolve(repo: &Repo, cap: &Capability) -> Result<ShareManifest> {
    resolve_inner(repo, cap).await.map(|(_, sm)| sm)
}

async fn resolve_inner(repo: &Repo, cap: &Capability) -> Result<([u8; 32], ShareManifest)> {
    let (pieces, hash) = match read_state(repo, cap).await? {
        None => {
            return Err(ClientError::NotInSnapshot(format!(
                "no share {} in this ring (a capability of another ring, or mistyped)",
                cap.id()
            )))
        }
        Some((_, ShareState::Revoked { at_us })) => {
            return Err(ClientError::Refused(format!(
                "the share {} was revoked on {}",
                cap.id(),
                crate::cli::format_time((at_us as i64).saturating_mul(1000))
            )))
        }
        Some((_, ShareState::Live { pieces, hash, .. })) => (pieces, hash),
    };
    if pieces.is_empty() || pieces.len() > MAX_SHARE_PIECES {
        return Err(ClientError::Corrupt(
            "the share's manifest is out of bounds".into(),
        ));
    }
    let mut sealed = Vec::new();
    for key in &pieces {
        let piece = repo
            .store
            .get_document(peerstore_proto::BlockKey(*key))
            .await?;
        let Some(piece) = piece else {
            return Err(ClientError::Missing(format!(
                "a piece of the share {}'s manifest is gone from the ring",
                cap.id()
            )));
        };
        if sealed.len() + piece.len() > MAX_SHARE_PIECES * MAX_BLOCK_SIZE {
            return Err(ClientError::Corrupt(
                "the share manifest is too large".into(),
            ));
        }
        sealed.extend_from_slice(&piece);
    }
    let sm = peerstore_proto::share::open_manifest(cap, &hash, &sealed)?;
    if let Some(e) = sm.expires_us {
        if e <= now_us() {
            return Err(ClientError::Refused(format!(
                "the share {} expired on {}",
                cap.id(),
                crate::cli::format_time((e as i64).saturating_mul(1000))
            )));
        }
    }
    crate::restore::check_manifest(&Manifest::new(sm.entries.clone()))?;
    Ok((hash, sm))
}

/// The documents the user's live shares keep: their manifests' pieces and the packs of
/// their entries (for `prune`).
pub async fn live_documents(repo: &Repo) -> Result<BTreeSet<[u8; 32]>> {
    let mut out = BTreeSet::new();
    let now = now_us();
    for l in list(repo).await? {
        if !l.live(now) {
            continue;
        }
        out.extend(l.pieces.iter().copied());
        let sm = match resolve(repo, &l.cap).await {
            Ok(sm) => sm,
            // A share that expired between the list check and now keeps nothing.
            Err(ClientError::Refused(_)) => continue,
            Err(e) => return Err(e),
        };
        for e in &sm.entries {
            if let EntryKind::File { chunks, .. } = &e.kind {
                out.extend(chunks.iter().map(|c| c.pack));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_revocation_and_expiry() {
        let mut l = Listed {
            label: [1; 16],
            cap: Capability {
                format: SHARE_FORMAT,
                kind: ShareKind::Folder,
                signer: [7; 32],
                key: [9; 32],
            },
            pieces: vec![[2; 32]],
            path: "a".into(),
            snapshot: 1,
            created_us: 1,
            expires_us: Some(100),
            revoked: false,
            follow: false,
        };
        assert!(l.live(99));
        assert!(!l.live(100));
        l.expires_us = None;
        assert!(l.live(u64::MAX));
        l.revoked = true;
        assert!(!l.live(0));
    }
}
