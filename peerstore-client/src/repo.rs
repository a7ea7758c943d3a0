//! A user's backup repository in the ring: the signed root, the chain of snapshot objects and
//! their manifests. Reads verify everything (document checks in the store, AEAD tags,
//! signatures); writes store the manifest and snapshot documents first and the root last.

use std::sync::Arc;
use std::time::Duration;

use crypto::{Identity, RootRecord, UserId, UserKeys};
use peerstore_proto::{BlockKey, MAX_BLOCK_SIZE};
use rand::rngs::OsRng;
use rand::RngCore;

use crate::error::{ClientError, Result};
use crate::model::{manifest_context, snapshot_context, Manifest, RootPointer, Snapshot};
use crate::store::BlockStoreApi;

/// How often a block the ring says it does not have is asked for again (a replica may be
/// catching up after a node died).
const NOT_FOUND_RETRIES: u32 = 5;

/// A user's view of the ring.
#[derive(Clone)]
pub struct Repo {
    pub store: Arc<dyn BlockStoreApi>,
    identity: Arc<Identity>,
    keys: Arc<UserKeys>,
    user: UserId,
    /// Where the highest root sequence number this client has seen is kept, if anywhere.
    watermark: Option<Arc<std::path::PathBuf>>,
}

/// The highest root sequence number kept in `path` (0 when there is none yet).
fn read_watermark(path: &std::path::Path) -> Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(t) => t.trim().parse().map_err(|_| {
            ClientError::Corrupt(format!(
                "{} is not a root sequence number; remove it to trust the ring's current root",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(ClientError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Raises the watermark in `path` to `seq` (temp file, fsync, rename).
fn raise_watermark(path: &std::path::Path, seq: u64) -> Result<()> {
    use std::io::Write;
    if read_watermark(path)? >= seq {
        return Ok(());
    }
    let io = |e: std::io::Error| ClientError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(format!("{seq}\n").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A snapshot with the key of its object block.
#[derive(Clone, Debug)]
pub struct SnapshotRef {
    pub key: [u8; 32],
    pub snapshot: Snapshot,
}

impl SnapshotRef {
    /// Short printable id (first 8 hex digits of the object's key).
    #[must_use]
    pub fn short_id(&self) -> String {
        hex::encode(&self.key[..4])
    }
}

/// Current wall-clock time in nanoseconds since the Unix epoch.
#[must_use]
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Repo {
    #[must_use]
    pub fn new(store: Arc<dyn BlockStoreApi>, identity: Arc<Identity>) -> Repo {
        let keys = Arc::new(identity.keys());
        let user = identity.user_id();
        Repo {
            store,
            identity,
            keys,
            user,
            watermark: None,
        }
    }

    /// Keeps the highest root sequence number seen in `path` and refuses any root older than
    /// it: a node cannot roll this client back to an older snapshot, nor hide every snapshot.
    #[must_use]
    pub fn with_root_watermark(mut self, path: std::path::PathBuf) -> Repo {
        self.watermark = Some(Arc::new(path));
        self
    }

    /// Refuses a root older than the watermark, then raises the watermark to it.
    fn check_fresh(&self, seq: Option<u64>) -> Result<()> {
        let Some(path) = &self.watermark else {
            return Ok(());
        };
        let seen = read_watermark(path)?;
        match seq {
            None if seen > 0 => Err(ClientError::Untrusted(format!(
                "the ring says this user has no backup, but this client has seen root {seen}: \
                 the node may be stale or lying; try another --peer (or remove {} to trust it)",
                path.display()
            ))),
            Some(s) if s < seen => Err(ClientError::Untrusted(format!(
                "the ring served root {s}, older than root {seen} this client has seen: the node \
                 may be stale or lying; try another --peer (or remove {} to trust it)",
                path.display()
            ))),
            Some(s) => raise_watermark(path, s),
            None => Ok(()),
        }
    }

    #[must_use]
    pub fn keys(&self) -> &UserKeys {
        &self.keys
    }

    #[must_use]
    pub fn keys_arc(&self) -> Arc<UserKeys> {
        self.keys.clone()
    }

    #[must_use]
    pub fn user(&self) -> UserId {
        self.user
    }

    /// Where this user's root record lives.
    #[must_use]
    pub fn root_key(&self) -> BlockKey {
        BlockKey(crypto::root_key(&self.user))
    }

    /// Reads a document that must exist, retrying "not found" a few times. The store verifies
    /// it (its hash, or its document record); the caller opens it (AEAD).
    pub async fn get_required(&self, key: [u8; 32], what: &str) -> Result<Vec<u8>> {
        let mut delay = Duration::from_millis(200);
        for attempt in 0..=NOT_FOUND_RETRIES {
            if let Some(data) = self.store.get_document(BlockKey(key)).await? {
                return Ok(data);
            }
            if attempt < NOT_FOUND_RETRIES {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(ClientError::Missing(format!(
            "{what} block {}",
            hex::encode(key)
        )))
    }

    /// Reads and verifies the root: its signature, its owner and its payload.
    pub async fn read_root(&self) -> Result<Option<(RootRecord, RootPointer)>> {
        let Some(bytes) = self.store.get_record(self.root_key()).await? else {
            self.check_fresh(None)?;
            return Ok(None);
        };
        let rec = RootRecord::decode(&bytes)
            .map_err(|e| ClientError::Corrupt(format!("root record: {e}")))?;
        rec.verify()
            .map_err(|e| ClientError::Corrupt(format!("root record: {e}")))?;
        if rec.user != self.user {
            return Err(ClientError::Corrupt(
                "root record belongs to another user".into(),
            ));
        }
        let plain = crypto::open_root_payload(&self.keys, &rec.user, rec.seq, &rec.payload)
            .map_err(|e| ClientError::Corrupt(format!("root payload: {e}")))?;
        let ptr: RootPointer = postcard::from_bytes(&plain)
            .map_err(|e| ClientError::Corrupt(format!("root payload: {e}")))?;
        if ptr.number != rec.seq {
            return Err(ClientError::Corrupt(format!(
                "root {} points at snapshot {}",
                rec.seq, ptr.number
            )));
        }
        self.check_fresh(Some(rec.seq))?;
        Ok(Some((rec, ptr)))
    }

    /// Reads and opens one snapshot object.
    pub async fn load_snapshot(&self, key: [u8; 32]) -> Result<SnapshotRef> {
        let sealed = self.get_required(key, "snapshot").await?;
        let plain = crypto::open_manifest(&self.keys, snapshot_context(), &sealed)
            .map_err(|e| ClientError::Corrupt(format!("snapshot {}: {e}", hex::encode(key))))?;
        let snapshot: Snapshot = postcard::from_bytes(&plain)
            .map_err(|e| ClientError::Corrupt(format!("snapshot {}: {e}", hex::encode(key))))?;
        Ok(SnapshotRef { key, snapshot })
    }

    /// The latest snapshot, if any.
    pub async fn latest(&self) -> Result<Option<SnapshotRef>> {
        match self.read_root().await? {
            None => Ok(None),
            Some((_, ptr)) => {
                let s = self.load_snapshot(ptr.latest).await?;
                if s.snapshot.number != ptr.number {
                    return Err(ClientError::Untrusted(format!(
                        "the root names snapshot {} but its object is snapshot {}: a node \
                         served another snapshot object; try another --peer",
                        ptr.number, s.snapshot.number
                    )));
                }
                Ok(Some(s))
            }
        }
    }

    /// All snapshots, newest first (follows the parent chain). Numbers must fall strictly
    /// along the chain, starting at the root's: a swapped or looping chain is an error.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotRef>> {
        let mut out: Vec<SnapshotRef> = Vec::new();
        let root = self.read_root().await?;
        let mut expect_at_most = root.as_ref().map_or(0, |(_, p)| p.number);
        let mut next = root.map(|(_, p)| p.latest);
        while let Some(key) = next {
            let s = self.load_snapshot(key).await?;
            let n = s.snapshot.number;
            let first = out.is_empty();
            if (first && n != expect_at_most) || (!first && n >= expect_at_most) || n == 0 {
                return Err(ClientError::Untrusted(format!(
                    "snapshot chain broken at {}: snapshot {n} where a number {} {expect_at_most} \
                     was expected; a node served another snapshot object; try another --peer",
                    s.short_id(),
                    if first { "equal to" } else { "below" }
                )));
            }
            expect_at_most = n;
            next = s.snapshot.parent;
            out.push(s);
        }
        Ok(out)
    }

    /// Selects a snapshot by number or key prefix; `None` selects the latest.
    pub async fn select(&self, which: Option<&str>) -> Result<SnapshotRef> {
        let Some(sel) = which else {
            return self.latest().await?.ok_or(ClientError::NoBackup);
        };
        let all = self.snapshots().await?;
        if all.is_empty() {
            return Err(ClientError::NoBackup);
        }
        let sel = sel.trim().to_ascii_lowercase();
        if sel == "latest" {
            return Ok(all[0].clone());
        }
        if let Ok(n) = sel.parse::<u64>() {
            if let Some(s) = all.iter().find(|s| s.snapshot.number == n) {
                return Ok(s.clone());
            }
        }
        let matches: Vec<_> = all
            .iter()
            .filter(|s| hex::encode(s.key).starts_with(&sel))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ClientError::Config(format!(
                "no snapshot {sel:?} (see `peerstore-client snapshots`)"
            ))),
            _ => Err(ClientError::Config(format!(
                "snapshot prefix {sel:?} is ambiguous"
            ))),
        }
    }

    /// Reads, checks and decodes a snapshot's manifest.
    pub async fn load_manifest(&self, s: &SnapshotRef) -> Result<Manifest> {
        // The length comes from a stored object (a hint only): reserve no more than its blocks
        // can hold.
        let most = s
            .snapshot
            .manifest_blocks
            .len()
            .saturating_mul(MAX_BLOCK_SIZE);
        let claimed = usize::try_from(s.snapshot.manifest_len).unwrap_or(usize::MAX);
        let mut sealed = Vec::with_capacity(claimed.min(most));
        for key in &s.snapshot.manifest_blocks {
            sealed.extend_from_slice(&self.get_required(*key, "manifest").await?);
        }
        let plain =
            crypto::open_manifest(&self.keys, &manifest_context(&s.snapshot.nonce), &sealed)
                .map_err(|e| ClientError::Corrupt(format!("manifest: {e}")))?;
        Ok(Manifest::decode(&plain)?)
    }

    /// Stores a manifest and a snapshot object, then points the root at it. Returns the new
    /// snapshot and the number of metadata blocks written.
    pub async fn publish(
        &self,
        manifest: &Manifest,
        source: &str,
        origin: &str,
    ) -> Result<(SnapshotRef, u64)> {
        let root = self.read_root().await?;
        let (seq, parent) = match &root {
            Some((rec, ptr)) => (rec.seq + 1, Some(ptr.latest)),
            None => (1, None),
        };
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        let plain = postcard::to_allocvec(manifest)
            .map_err(|e| ClientError::Corrupt(format!("cannot encode manifest: {e}")))?;
        let sealed =
            crypto::seal_manifest(&self.keys, &manifest_context(&nonce), &plain, &mut OsRng);
        drop(plain);
        let puts = sealed
            .chunks(MAX_BLOCK_SIZE)
            .map(|piece| self.store.put_document(piece.to_vec()));
        let mut blocks = Vec::new();
        for r in futures::future::join_all(puts).await {
            blocks.push(r?.0);
        }
        let snapshot = Snapshot {
            number: seq,
            nonce,
            time_ns: now_ns(),
            parent,
            source: source.to_string(),
            origin: origin.to_string(),
            totals: manifest.totals(),
            manifest_blocks: blocks,
            manifest_len: sealed.len() as u64,
        };
        let plain = postcard::to_allocvec(&snapshot)
            .map_err(|e| ClientError::Corrupt(format!("cannot encode snapshot: {e}")))?;
        let sealed_snap = crypto::seal_manifest(&self.keys, snapshot_context(), &plain, &mut OsRng);
        let snap_key = self.store.put_document(sealed_snap).await?;
        let meta_blocks = snapshot.manifest_blocks.len() as u64 + 1;

        let ptr = RootPointer {
            latest: snap_key.0,
            number: seq,
        };
        let ptr_bytes = postcard::to_allocvec(&ptr)
            .map_err(|e| ClientError::Corrupt(format!("cannot encode root: {e}")))?;
        let payload =
            crypto::seal_root_payload(&self.keys, &self.user, seq, &ptr_bytes, &mut OsRng);
        let rec = RootRecord::sign(&self.identity, seq, payload)
            .map_err(|e| ClientError::Corrupt(format!("cannot sign root: {e}")))?;
        let bytes = rec
            .encode()
            .map_err(|e| ClientError::Corrupt(format!("cannot encode root: {e}")))?;
        self.store.put_record(self.root_key(), bytes).await?;
        if let Some(path) = &self.watermark {
            raise_watermark(path, seq)?;
        }
        Ok((
            SnapshotRef {
                key: snap_key.0,
                snapshot,
            },
            meta_blocks,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use rand::SeedableRng;

    fn repo(store: &MemStore, watermark: Option<std::path::PathBuf>) -> Repo {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let r = Repo::new(
            Arc::new(store.clone()),
            Arc::new(Identity::generate(&mut rng)),
        );
        match watermark {
            Some(p) => r.with_root_watermark(p),
            None => r,
        }
    }

    #[tokio::test]
    async fn an_old_root_or_no_root_is_refused_once_a_newer_one_was_seen() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("root-seen");
        let store = MemStore::new();
        let r = repo(&store, Some(mark.clone()));
        r.publish(&Manifest::default(), "/a", "backup")
            .await
            .unwrap();
        let old = store.get_record(r.root_key()).await.unwrap().unwrap();
        r.publish(&Manifest::default(), "/a", "backup")
            .await
            .unwrap();
        assert_eq!(read_watermark(&mark).unwrap(), 2);
        // A node serves the old (validly signed) root.
        store.put_record(r.root_key(), old).await.unwrap();
        let err = r.latest().await.unwrap_err();
        assert!(matches!(err, ClientError::Untrusted(_)), "{err}");
        assert!(err.to_string().contains("older than root 2"), "{err}");
        assert!(r.snapshots().await.is_err());
        // A client without the watermark cannot tell: it reads snapshot 1.
        let fresh = repo(&store, None);
        assert_eq!(fresh.latest().await.unwrap().unwrap().snapshot.number, 1);
        // A node that hides the root.
        store.remove_record(r.root_key());
        let err = r.latest().await.unwrap_err();
        assert!(err.to_string().contains("no backup"), "{err}");
        // The watermark survives a new client on the same data directory.
        let again = repo(&store, Some(mark));
        assert!(again.latest().await.is_err());
    }

    #[tokio::test]
    async fn a_swapped_snapshot_object_is_detected() {
        let store = MemStore::new();
        let r = repo(&store, None);
        let (s1, _) = r
            .publish(&Manifest::default(), "/a", "backup")
            .await
            .unwrap();
        let (s2, _) = r
            .publish(&Manifest::default(), "/a", "backup")
            .await
            .unwrap();
        let (s3, _) = r
            .publish(&Manifest::default(), "/a", "backup")
            .await
            .unwrap();
        assert_eq!(r.snapshots().await.unwrap().len(), 3);
        let bytes = |k: [u8; 32]| {
            let store = store.clone();
            async move { store.get_document(BlockKey(k)).await.unwrap().unwrap() }
        };
        // The latest snapshot's object replaced by an older one.
        let latest = bytes(s3.key).await;
        store.tamper(BlockKey(s3.key), bytes(s1.key).await);
        let err = r.latest().await.unwrap_err();
        assert!(matches!(err, ClientError::Untrusted(_)), "{err}");
        store.tamper(BlockKey(s3.key), latest);
        // A parent replaced by its own child: the chain would loop.
        store.tamper(BlockKey(s2.key), bytes(s3.key).await);
        let err = r.snapshots().await.unwrap_err();
        assert!(err.to_string().contains("chain broken"), "{err}");
    }
}
