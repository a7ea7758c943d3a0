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
            Some((_, ptr)) => Ok(Some(self.load_snapshot(ptr.latest).await?)),
        }
    }

    /// All snapshots, newest first (follows the parent chain).
    pub async fn snapshots(&self) -> Result<Vec<SnapshotRef>> {
        let mut out = Vec::new();
        let mut next = self.read_root().await?.map(|(_, p)| p.latest);
        while let Some(key) = next {
            if out.len() > 1_000_000 {
                return Err(ClientError::Corrupt("snapshot chain does not end".into()));
            }
            let s = self.load_snapshot(key).await?;
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
        let mut sealed = Vec::with_capacity(usize::try_from(s.snapshot.manifest_len).unwrap_or(0));
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
        Ok((
            SnapshotRef {
                key: snap_key.0,
                snapshot,
            },
            meta_blocks,
        ))
    }
}
