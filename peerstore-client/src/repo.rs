//! A user's backup repository in the ring: the signed root, the chain of snapshot objects and
//! their manifests. Reads verify everything (signatures, AEAD tags bound to what refers to the
//! object, and, on a ring that stores documents under their hash, the hash of every document);
//! writes store the manifest and snapshot documents first and the root last.
//!
//! The root is read through several ring members (the entry node and up to three more); the
//! newest validly signed answer wins, a member that serves an older one is reported, and the
//! answer must not be older than the newest root this client has seen (`root-seen`).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crypto::{Identity, RootRecord, UserId, UserKeys};
use peerstore_proto::{BlockKey, MAX_BLOCK_SIZE};
use rand::rngs::OsRng;
use rand::RngCore;
use tracing::warn;

use crate::error::{ClientError, Result};
use crate::model::{
    decode_root_payload, encode_root_payload, manifest_context, snapshot_context,
    snapshot_context_v2, Manifest, ParentRef, RootPointer, Snapshot, SnapshotHeader, SplitSnapshot,
    SNAPSHOT_FLAG_HASHED_KEYS, SNAPSHOT_FORMAT,
};
use crate::store::{BlockStoreApi, StoreError};

/// What this client knows about how the ring keys documents.
const KEYS_UNKNOWN: u8 = 0;
/// Documents are stored under BLAKE3 of their bytes (a ring without entanglement).
const KEYS_HASHED: u8 = 1;
/// Documents are stored under the key of a document record (an entangled ring).
const KEYS_OPAQUE: u8 = 2;

fn keys_mode(hashed: bool) -> u8 {
    if hashed {
        KEYS_HASHED
    } else {
        KEYS_OPAQUE
    }
}

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
    /// How the ring keys documents, as an authenticated snapshot object says (`KEYS_*`). Once
    /// it says "hashed", every document read must hash to its key.
    read_keys: Arc<AtomicU8>,
    /// How the ring keyed the documents this process stored (`KEYS_*`): every put must agree.
    put_keys: Arc<AtomicU8>,
    /// Reading through a share: the keys of the shared chunks (none: the user's own keys).
    shared_chunks: Option<Arc<std::collections::HashMap<crypto::ChunkId, [u8; 32]>>>,
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

/// Checks that a document read from a ring that keys documents by their hash hashes to `key`.
fn check_hash(data: &[u8], key: [u8; 32], what: &str) -> Result<()> {
    if BlockKey::of(data).0 == key {
        return Ok(());
    }
    Err(ClientError::Untrusted(format!(
        "the ring served a {what} whose bytes do not hash to its key {}: a node is lying or \
         serves a damaged copy; try another --peer",
        hex::encode(key)
    )))
}

/// A snapshot with the key of its object block.
#[derive(Clone, Debug)]
pub struct SnapshotRef {
    pub key: [u8; 32],
    pub snapshot: Snapshot,
    /// The object's format: 2 is bound to the user, number and parent; 1 is not (written by
    /// older clients, still read).
    pub format: u8,
    /// Whether the ring stored this snapshot's documents under the hash of their bytes (format
    /// 2; false for format 1, where it is not known).
    pub hashed_keys: bool,
    /// BLAKE3 of the object's bytes (what a child names as its parent's hash).
    pub content_hash: Option<[u8; 32]>,
    /// The parent's key and hash as the object's header names them (format 2).
    pub parent_ref: Option<ParentRef>,
    /// The number the parent must have (`None` without a parent): one less than this
    /// snapshot's, unless the header names another (snapshots between were forgotten).
    pub parent_number: Option<u64>,
}

impl SnapshotRef {
    /// A snapshot whose object's format and hashes are not known (format 1, nothing to check
    /// it against): for tools and tests that build one by hand.
    #[must_use]
    pub fn new(key: [u8; 32], snapshot: Snapshot) -> SnapshotRef {
        let parent_number = snapshot.parent.map(|_| snapshot.number.saturating_sub(1));
        SnapshotRef {
            key,
            snapshot,
            format: 1,
            hashed_keys: false,
            content_hash: None,
            parent_ref: None,
            parent_number,
        }
    }

    /// Short printable id (first 8 hex digits of the object's key).
    #[must_use]
    pub fn short_id(&self) -> String {
        hex::encode(&self.key[..4])
    }

    /// Whether the object is bound to its user, number and parent (format 2).
    #[must_use]
    pub fn bound(&self) -> bool {
        self.format >= 2
    }
}

/// One verified root as a ring member served it.
struct RootAnswer {
    from: String,
    root: Root,
}

/// A verified root record: its sequence number grows with every update (publish or forget).
#[derive(Clone, Debug)]
pub struct Root {
    pub rec: RootRecord,
    pub ptr: RootPointer,
    /// BLAKE3 of the latest snapshot object's bytes, if the root names it (roots written by
    /// older clients do not): the latest object read must hash to it.
    pub latest_hash: Option<[u8; 32]>,
    /// The user's prune epoch (0: never pruned; `crate::prune`).
    pub prune_epoch: u64,
}

impl Root {
    /// The root's sequence number.
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.rec.seq
    }
}

/// How many times a root update (publish, forget) is redone after another device of the same
/// user updated the root first.
pub const ROOT_ATTEMPTS: u32 = 6;

/// What became of a root update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootUpdate {
    /// The ring took it.
    Stored,
    /// The ring refused it because it already has a root at least as new (another device of
    /// the same user updated it since it was read): read again and redo the work.
    Conflict,
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
            read_keys: Arc::new(AtomicU8::new(KEYS_UNKNOWN)),
            put_keys: Arc::new(AtomicU8::new(KEYS_UNKNOWN)),
            shared_chunks: None,
        }
    }

    /// This repository reading chunks through a share: with the keys of exactly the shared
    /// chunks, never the user's own.
    #[must_use]
    pub fn with_shared_chunks(
        mut self,
        keys: std::collections::HashMap<crypto::ChunkId, [u8; 32]>,
    ) -> Repo {
        self.shared_chunks = Some(Arc::new(keys));
        self
    }

    /// The keys chunks are opened with (the user's, or a share's).
    #[must_use]
    pub fn chunk_keys(&self) -> crate::pack::ChunkKeys {
        match &self.shared_chunks {
            Some(map) => crate::pack::ChunkKeys::Shared(map.clone()),
            None => crate::pack::ChunkKeys::User(self.keys.clone()),
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
                "the ring served root {s}, older than root {seen} this client has seen: the nodes \
                 asked may be stale or lying; try another --peer (or remove {} to trust it)",
                path.display()
            ))),
            Some(s) => raise_watermark(path, s),
            None => Ok(()),
        }
    }

    /// The user's signing identity.
    #[must_use]
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The user's keys.
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

    /// Whether an authenticated snapshot object said that the ring stores documents under the
    /// BLAKE3 of their bytes: then every document read must hash to its key.
    #[must_use]
    pub fn hashed_keys(&self) -> bool {
        self.read_keys.load(Ordering::Relaxed) == KEYS_HASHED
    }

    /// Reads a document that must exist, retrying "not found" a few times (a replica may be
    /// catching up after a node died). No check here: see [`Repo::get_required`].
    async fn fetch(&self, key: [u8; 32], what: &str) -> Result<Vec<u8>> {
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

    /// Reads a document that must exist. On a ring known to store documents under their hash
    /// ([`Repo::hashed_keys`]) the bytes must hash to `key`; on an entangled ring the key names
    /// a document record, which the node checked the bytes against. Either way the caller opens
    /// the bytes (AEAD, chunk ids) before using any of them.
    pub async fn get_required(&self, key: [u8; 32], what: &str) -> Result<Vec<u8>> {
        let data = self.fetch(key, what).await?;
        if self.hashed_keys() {
            check_hash(&data, key, what)?;
        }
        Ok(data)
    }

    /// Stores a document and checks the key the ring returned for it: on a ring that keys
    /// documents by their hash it must be BLAKE3 of the bytes, on an entangled ring it must
    /// not be. A key of the other kind than the documents before it (in this process, or as
    /// the latest snapshot recorded) is a node lying about what it stored, and an error.
    pub async fn put_document(&self, data: Vec<u8>) -> Result<[u8; 32]> {
        let hash = BlockKey::of(&data);
        let len = data.len();
        let key = self.store.put_document(data).await?;
        let mode = keys_mode(key == hash);
        let read = self.read_keys.load(Ordering::Relaxed);
        let earlier = match self.put_keys.compare_exchange(
            KEYS_UNKNOWN,
            mode,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => mode,
            Err(m) => m,
        };
        let (against, known) = if read != KEYS_UNKNOWN {
            ("the latest snapshot records", read)
        } else {
            ("the documents stored before it", earlier)
        };
        if known != mode {
            return Err(ClientError::Untrusted(format!(
                "the ring stored a document of {len} bytes under key {}, which {} the hash of \
                 its bytes, unlike what {against}: a node may be lying about what it stored; \
                 try another --peer",
                key.to_hex(),
                if mode == KEYS_HASHED { "is" } else { "is not" },
            )));
        }
        Ok(key.0)
    }

    /// Decodes and verifies one root record: its signature, its owner, its payload and the
    /// pointer's number (at most the root's: a rewritten chain keeps its snapshots' numbers).
    fn open_root(&self, bytes: &[u8]) -> Result<Root> {
        let rec = RootRecord::decode(bytes)
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
        let (ptr, latest_hash, prune_epoch) = decode_root_payload(&plain)
            .map_err(|e| ClientError::Corrupt(format!("root payload: {e}")))?;
        if ptr.number == 0 || ptr.number > rec.seq {
            return Err(ClientError::Corrupt(format!(
                "root {} points at snapshot {}",
                rec.seq, ptr.number
            )));
        }
        Ok(Root {
            rec,
            ptr,
            latest_hash,
            prune_epoch,
        })
    }

    /// Reads the root through several ring members ([`BlockStoreApi::get_record_replicas`]),
    /// verifies every answer (signature, owner, payload) and takes the newest. A member that
    /// serves an older root, or none, while another serves a newer one is reported (a
    /// warning); answers that do not verify are ignored. The newest must not be older than the
    /// watermark.
    pub async fn read_root(&self) -> Result<Option<(RootRecord, RootPointer)>> {
        Ok(self.root().await?.map(|r| (r.rec, r.ptr)))
    }

    /// [`Repo::read_root`], with the latest object's hash if the root names it.
    pub async fn root(&self) -> Result<Option<Root>> {
        let answers = self.store.get_record_replicas(self.root_key()).await?;
        let mut roots: Vec<RootAnswer> = Vec::new();
        let mut absent: Vec<String> = Vec::new();
        let mut refused: Option<ClientError> = None;
        for a in answers {
            match a.record {
                None => absent.push(a.from),
                Some(bytes) => match self.open_root(&bytes) {
                    Ok(root) => roots.push(RootAnswer { from: a.from, root }),
                    Err(e) => {
                        warn!(node = %a.from, error = %e,
                            "a ring member served a root record that does not verify; ignored");
                        refused.get_or_insert(e);
                    }
                },
            }
        }
        // The newest; among different roots of that number (two devices raced and the loser
        // reached a minority of replicas before it was refused), the one most members serve,
        // then the greatest signature (the nodes' rule: every reader picks the same one).
        let top = roots.iter().map(|r| r.root.seq()).max();
        let count = |r: &RootAnswer| {
            roots
                .iter()
                .filter(|o| o.root.rec.signature == r.root.rec.signature)
                .count()
        };
        let best = roots
            .iter()
            .filter(|r| Some(r.root.seq()) == top)
            .max_by(|a, b| {
                count(a)
                    .cmp(&count(b))
                    .then(a.root.rec.signature.cmp(&b.root.rec.signature))
            });
        let Some(best) = best else {
            if let (true, Some(e)) = (absent.is_empty(), refused) {
                return Err(e);
            }
            self.check_fresh(None)?;
            return Ok(None);
        };
        for r in &roots {
            if r.root.seq() < best.root.seq() {
                warn!(node = %r.from, served = r.root.seq(), newest = best.root.seq(),
                    newest_from = %best.from,
                    "a ring member served an older root than another; using the newest");
            } else if r.root.ptr.latest != best.root.ptr.latest {
                warn!(node = %r.from, other = %best.from, seq = r.root.seq(),
                    "two ring members serve different roots with the same number");
            }
        }
        for from in &absent {
            warn!(node = %from, newest = best.root.seq(), newest_from = %best.from,
                "a ring member says this user has no root while another served one; using the newest");
        }
        self.check_fresh(Some(best.root.seq()))?;
        Ok(Some(best.root.clone()))
    }

    /// Reads and opens snapshot `number` from the object that `referrer` ("the root",
    /// "snapshot 5") names by `key`. A format-2 object must open as snapshot `number` of this
    /// user (its sealing context binds the user, the number and its header, which names its
    /// parent) and, if it says the ring keys documents by their hash, hash to `key`; a format-1
    /// object must carry `number`. Anything else means the ring served another object than the
    /// one referenced: an [`ClientError::Untrusted`] error that names the snapshot.
    pub async fn load_snapshot(
        &self,
        key: [u8; 32],
        number: u64,
        referrer: &str,
    ) -> Result<SnapshotRef> {
        self.load_snapshot_expecting(key, number, referrer, None)
            .await
    }

    /// [`Repo::load_snapshot`], and the object's bytes must hash to `hash` if given (what a
    /// format-2 child names as its parent's hash).
    async fn load_snapshot_expecting(
        &self,
        key: [u8; 32],
        number: u64,
        referrer: &str,
        hash: Option<[u8; 32]>,
    ) -> Result<SnapshotRef> {
        let doc = self.fetch(key, "snapshot").await?;
        let id = hex::encode(&key[..4]);
        let swapped = |why: &str| {
            ClientError::Untrusted(format!(
                "snapshot {number} ({id}): the ring served a different snapshot object than the \
                 one {referrer} references ({why}); a node may be lying or stale, try another \
                 --peer"
            ))
        };
        let content_hash = BlockKey::of(&doc).0;
        if (self.hashed_keys() && content_hash != key) || hash.is_some_and(|h| h != content_hash) {
            return Err(swapped("its bytes do not hash to what it references"));
        }
        let corrupt = |e: &dyn std::fmt::Display| {
            ClientError::Corrupt(format!("snapshot {number} ({}): {e}", hex::encode(key)))
        };
        let (snapshot, format, hashed_keys, parent_ref, parent_number) =
            match SnapshotHeader::split(&doc) {
                Some(Err(e)) => return Err(corrupt(&e)),
                Some(Ok(SplitSnapshot {
                    header,
                    header_bytes,
                    sealed,
                })) => {
                    let context = snapshot_context_v2(&self.user.0, number, header_bytes);
                    let plain =
                        crypto::open_manifest(&self.keys, &context, sealed).map_err(|_| {
                            swapped(&format!(
                                "it does not open as snapshot {number} of this user"
                            ))
                        })?;
                    let snapshot: Snapshot =
                        postcard::from_bytes(&plain).map_err(|e| corrupt(&e))?;
                    if snapshot.number != number || snapshot.parent != header.parent.map(|p| p.key)
                    {
                        return Err(corrupt(&"its number or parent differs from its header"));
                    }
                    if header.hashed_keys() && content_hash != key {
                        return Err(swapped("its bytes do not hash to its key"));
                    }
                    // The first authenticated snapshot read (the latest) says how the ring keys
                    // documents; every later read and put is held to it.
                    let _ = self.read_keys.compare_exchange(
                        KEYS_UNKNOWN,
                        keys_mode(header.hashed_keys()),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    let parent_number = header
                        .parent
                        .map(|_| header.parent_number.unwrap_or(number.saturating_sub(1)));
                    (
                        snapshot,
                        2,
                        header.hashed_keys(),
                        header.parent,
                        parent_number,
                    )
                }
                None => {
                    let plain = crypto::open_manifest(&self.keys, snapshot_context(), &doc)
                        .map_err(|e| corrupt(&e))?;
                    let snapshot: Snapshot =
                        postcard::from_bytes(&plain).map_err(|e| corrupt(&e))?;
                    if snapshot.number != number {
                        return Err(swapped(&format!("it is snapshot {}", snapshot.number)));
                    }
                    let parent_number = snapshot.parent.map(|_| number.saturating_sub(1));
                    (snapshot, 1, false, None, parent_number)
                }
            };
        Ok(SnapshotRef {
            key,
            snapshot,
            format,
            hashed_keys,
            content_hash: Some(content_hash),
            parent_ref,
            parent_number,
        })
    }

    /// The latest snapshot, if any.
    pub async fn latest(&self) -> Result<Option<SnapshotRef>> {
        Ok(self.head().await?.map(|(_, s)| s))
    }

    /// The root and the latest snapshot it names (which must hash to what the root names, if
    /// it names a hash), if there is a root.
    pub async fn head(&self) -> Result<Option<(Root, SnapshotRef)>> {
        let Some(root) = self.root().await? else {
            return Ok(None);
        };
        let latest = self
            .load_snapshot_expecting(
                root.ptr.latest,
                root.ptr.number,
                "the root",
                root.latest_hash,
            )
            .await?;
        Ok(Some((root, latest)))
    }

    /// The parent of `s` (snapshot `number - 1`, or the lower number its header names), if it
    /// has one; for a format-2 `s` it must hash to what `s` names.
    pub async fn parent(&self, s: &SnapshotRef) -> Result<Option<SnapshotRef>> {
        let Some(key) = s.snapshot.parent else {
            return Ok(None);
        };
        let n = s.snapshot.number;
        let pn = s.parent_number.unwrap_or(n.saturating_sub(1));
        if pn == 0 || pn >= n {
            return Err(ClientError::Corrupt(format!(
                "snapshot chain broken at {}: snapshot {n} names a parent numbered {pn}",
                s.short_id()
            )));
        }
        let referrer = format!("snapshot {n}");
        let hash = s.parent_ref.map(|p| p.hash);
        Ok(Some(
            self.load_snapshot_expecting(key, pn, &referrer, hash)
                .await?,
        ))
    }

    /// All snapshots, newest first (follows the parent chain). Each object must be the
    /// snapshot its referrer names: the root's number, then a lower number at every step
    /// (one less, or the number the child's authenticated header names), so a swapped or
    /// looping chain is an error.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotRef>> {
        let mut out: Vec<SnapshotRef> = Vec::new();
        let mut next = self.latest().await?;
        while let Some(s) = next {
            next = self.parent(&s).await?;
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
        pick(&all, sel).cloned()
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
            let piece = self.get_required(*key, "manifest").await?;
            if s.hashed_keys {
                check_hash(&piece, *key, "manifest")?;
            }
            sealed.extend_from_slice(&piece);
        }
        let plain =
            crypto::open_manifest(&self.keys, &manifest_context(&s.snapshot.nonce), &sealed)
                .map_err(|e| ClientError::Corrupt(format!("manifest: {e}")))?;
        Ok(Manifest::decode(&plain)?)
    }

    /// Stores a manifest and a snapshot object, then points the root at it. Returns the new
    /// snapshot and the number of metadata blocks written.
    ///
    /// The root update is a compare-and-swap on its sequence number (nodes take only a newer
    /// root): if another device of the same user updated the root since it was read (a backup
    /// or a `forget`), the snapshot object is written again on top of the new latest snapshot
    /// (the manifest is stored once) and the root update retried, at most [`ROOT_ATTEMPTS`]
    /// times.
    pub async fn publish(
        &self,
        manifest: &Manifest,
        source: &str,
        origin: &str,
    ) -> Result<(SnapshotRef, u64)> {
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        let plain = postcard::to_allocvec(manifest)
            .map_err(|e| ClientError::Corrupt(format!("cannot encode manifest: {e}")))?;
        let sealed =
            crypto::seal_manifest(&self.keys, &manifest_context(&nonce), &plain, &mut OsRng);
        drop(plain);
        // Whether the ring keys documents by their hash: what it did with the manifest pieces
        // (every later put of this process must agree: `put_document`).
        let mut hashed = true;
        let puts = sealed.chunks(MAX_BLOCK_SIZE).map(|piece| {
            let hash = BlockKey::of(piece).0;
            let put = self.put_document(piece.to_vec());
            async move { put.await.map(|key| (key, key == hash)) }
        });
        let mut blocks = Vec::new();
        for r in futures::future::join_all(puts).await {
            let (key, is_hash) = r?;
            hashed &= is_hash;
            blocks.push(key);
        }
        let meta_blocks = blocks.len() as u64 + 1;
        let time_ns = now_ns();
        let mut backoff = RootBackoff::new();
        loop {
            // The parent is verified like any read (and its hash goes into the new header).
            let head = self.head().await?;
            let seq = head.as_ref().map_or(1, |(root, _)| root.seq() + 1);
            let epoch = head.as_ref().map_or(0, |(root, _)| root.prune_epoch);
            let snapshot = Snapshot {
                number: seq,
                nonce,
                time_ns,
                parent: None,
                source: source.to_string(),
                origin: origin.to_string(),
                totals: manifest.totals(),
                manifest_blocks: blocks.clone(),
                manifest_len: sealed.len() as u64,
            };
            let s = self
                .write_snapshot(snapshot, head.as_ref().map(|(_, latest)| latest), hashed)
                .await?;
            match self.put_root(seq, &s, epoch).await? {
                RootUpdate::Stored => return Ok((s, meta_blocks)),
                RootUpdate::Conflict => backoff.wait("publish").await?,
            }
        }
    }

    /// Seals `snapshot` as a format-2 object whose parent is `parent` (key, hash of its bytes,
    /// and its number when that is not `snapshot.number - 1`), stores it and returns it.
    /// `snapshot.parent` is set from `parent`. `hashed`: whether the ring stored the
    /// snapshot's manifest pieces under their hash (the header flag). Used by `publish` for a
    /// new snapshot and by `forget` to rewrite a kept one onto a new parent.
    pub async fn write_snapshot(
        &self,
        mut snapshot: Snapshot,
        parent: Option<&SnapshotRef>,
        hashed: bool,
    ) -> Result<SnapshotRef> {
        let number = snapshot.number;
        if let Some(p) = parent {
            if p.snapshot.number == 0 || p.snapshot.number >= number {
                return Err(ClientError::Corrupt(format!(
                    "cannot make snapshot {} the parent of snapshot {number}",
                    p.snapshot.number
                )));
            }
        }
        let parent_ref = parent.map(|p| ParentRef {
            key: p.key,
            hash: p.content_hash.unwrap_or_default(),
        });
        let parent_number = parent.map(|p| p.snapshot.number);
        snapshot.parent = parent_ref.map(|p| p.key);
        let plain = postcard::to_allocvec(&snapshot)
            .map_err(|e| ClientError::Corrupt(format!("cannot encode snapshot: {e}")))?;
        // Format 2: a clear header (flags, parent), then the snapshot sealed under a context
        // that binds it to this user, its number and that header.
        let header = SnapshotHeader {
            flags: if hashed { SNAPSHOT_FLAG_HASHED_KEYS } else { 0 },
            parent: parent_ref,
            parent_number: parent_number.filter(|&n| n + 1 != number),
        };
        let mut doc = header.encode();
        let context = snapshot_context_v2(&self.user.0, number, &doc);
        doc.extend_from_slice(&crypto::seal_manifest(
            &self.keys, &context, &plain, &mut OsRng,
        ));
        let doc_hash = BlockKey::of(&doc).0;
        let key = self.put_document(doc).await?;
        Ok(SnapshotRef {
            key,
            snapshot,
            format: SNAPSHOT_FORMAT,
            hashed_keys: hashed,
            content_hash: Some(doc_hash),
            parent_ref,
            parent_number,
        })
    }

    /// Points the root at `latest` with sequence number `seq` (signed; the payload names the
    /// latest object's key, number and hash), then raises the watermark. The nodes take a root
    /// only if it is newer than theirs, which makes this a compare-and-swap on `seq`: a refusal
    /// while the ring has a root numbered `seq` or more is a [`RootUpdate::Conflict`] (another
    /// device got there first); any other refusal is an error.
    /// `prune_epoch` is carried as the root read had it (raised by `prune` only).
    pub async fn put_root(
        &self,
        seq: u64,
        latest: &SnapshotRef,
        prune_epoch: u64,
    ) -> Result<RootUpdate> {
        if latest.snapshot.number == 0 || latest.snapshot.number > seq {
            return Err(ClientError::Corrupt(format!(
                "root {seq} cannot point at snapshot {}",
                latest.snapshot.number
            )));
        }
        let ptr = RootPointer {
            latest: latest.key,
            number: latest.snapshot.number,
        };
        let ptr_bytes = encode_root_payload(&ptr, latest.content_hash.as_ref(), prune_epoch);
        let payload =
            crypto::seal_root_payload(&self.keys, &self.user, seq, &ptr_bytes, &mut OsRng);
        let rec = RootRecord::sign(&self.identity, seq, payload)
            .map_err(|e| ClientError::Corrupt(format!("cannot sign root: {e}")))?;
        let bytes = rec
            .encode()
            .map_err(|e| ClientError::Corrupt(format!("cannot encode root: {e}")))?;
        match self.store.put_record(self.root_key(), bytes).await {
            Ok(()) => {}
            Err(StoreError::Rejected(why)) => {
                // Refused: a conflict if the ring now has a root at least as new as this one.
                return match self.root().await {
                    Ok(Some(now)) if now.seq() >= seq => {
                        warn!(seq, ring = now.seq(), reason = %why,
                            "the root was updated by another device meanwhile; redoing the update");
                        Ok(RootUpdate::Conflict)
                    }
                    _ => Err(StoreError::Rejected(why).into()),
                };
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(path) = &self.watermark {
            raise_watermark(path, seq)?;
        }
        Ok(RootUpdate::Stored)
    }
}

/// Picks a snapshot of `all` (newest first) by number, id (key) prefix, or `latest`.
pub fn pick<'a>(all: &'a [SnapshotRef], sel: &str) -> Result<&'a SnapshotRef> {
    if all.is_empty() {
        return Err(ClientError::NoBackup);
    }
    let sel = sel.trim().to_ascii_lowercase();
    if sel == "latest" {
        return Ok(&all[0]);
    }
    if let Ok(n) = sel.parse::<u64>() {
        if let Some(s) = all.iter().find(|s| s.snapshot.number == n) {
            return Ok(s);
        }
        // A short decimal selector is a number, never an id prefix: a forgotten snapshot's
        // number must not select another snapshot whose id happens to start with it.
        if sel.len() < 8 {
            return Err(ClientError::Config(format!(
                "no snapshot {n} (it may have been forgotten; see `peerstore-client snapshots`)"
            )));
        }
    }
    let matches: Vec<_> = all
        .iter()
        .filter(|s| !sel.is_empty() && hex::encode(s.key).starts_with(&sel))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(ClientError::Config(format!(
            "no snapshot {sel:?} (see `peerstore-client snapshots`)"
        ))),
        _ => Err(ClientError::Config(format!(
            "snapshot prefix {sel:?} is ambiguous"
        ))),
    }
}

/// Waits between root update attempts after a conflict (randomized, growing), and gives up
/// after [`ROOT_ATTEMPTS`].
pub struct RootBackoff {
    attempt: u32,
    delay: Duration,
}

impl Default for RootBackoff {
    fn default() -> Self {
        RootBackoff::new()
    }
}

impl RootBackoff {
    #[must_use]
    pub fn new() -> RootBackoff {
        RootBackoff {
            attempt: 1,
            delay: Duration::from_millis(50),
        }
    }

    /// Called after a conflict: sleeps before the next attempt, or fails once every attempt
    /// was used.
    pub async fn wait(&mut self, what: &str) -> Result<()> {
        if self.attempt >= ROOT_ATTEMPTS {
            return Err(ClientError::Refused(format!(
                "{what}: the root changed under this client {ROOT_ATTEMPTS} times in a row \
                 (another device of this user keeps updating it); try again"
            )));
        }
        self.attempt += 1;
        let jitter = Duration::from_millis(OsRng.next_u64() % 50);
        tokio::time::sleep(self.delay + jitter).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(2));
        Ok(())
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

    async fn doc(store: &MemStore, k: [u8; 32]) -> Vec<u8> {
        store.get_document(BlockKey(k)).await.unwrap().unwrap()
    }

    async fn publish3(r: &Repo) -> [SnapshotRef; 3] {
        let mut out = Vec::new();
        for _ in 0..3 {
            let (s, _) = r
                .publish(&Manifest::default(), "/a", "backup")
                .await
                .unwrap();
            assert_eq!(s.format, SNAPSHOT_FORMAT);
            out.push(s);
        }
        out.try_into().unwrap()
    }

    /// A fresh client (no watermark, nothing learned yet) of the same user on the same store.
    fn reader(store: &MemStore) -> Repo {
        repo(store, None)
    }

    fn untrusted(err: &ClientError, number: u64, referrer: &str) {
        let text = err.to_string();
        assert!(matches!(err, ClientError::Untrusted(_)), "{err:?}");
        assert!(
            text.contains(&format!("snapshot {number} ("))
                && text.contains(&format!(
                    "the ring served a different snapshot object than the one {referrer} references"
                )),
            "{text}"
        );
    }

    /// Swapping snapshot objects of the same user fails on a ring that keys documents by their
    /// hash and on one that does not (entangled): the objects are bound to their number and
    /// their parent (key and hash).
    #[tokio::test]
    async fn swapped_snapshot_objects_are_refused_on_either_kind_of_ring() {
        for opaque in [false, true] {
            let store = MemStore::new();
            store.set_opaque_keys(opaque);
            let r = repo(&store, None);
            let [s1, s2, s3] = publish3(&r).await;
            assert_eq!(s3.hashed_keys, !opaque);
            assert_eq!(reader(&store).snapshots().await.unwrap().len(), 3);
            let (b1, b2, b3) = (
                doc(&store, s1.key).await,
                doc(&store, s2.key).await,
                doc(&store, s3.key).await,
            );

            // The latest object replaced by an older one of the same user.
            store.tamper(BlockKey(s3.key), b1.clone());
            untrusted(&reader(&store).latest().await.unwrap_err(), 3, "the root");
            store.tamper(BlockKey(s3.key), b3.clone());

            // A parent replaced by an older snapshot (the numbers would still fall), or by
            // its own child (the chain would loop).
            for other in [&b1, &b3] {
                store.tamper(BlockKey(s2.key), other.clone());
                let err = reader(&store).snapshots().await.unwrap_err();
                untrusted(&err, 2, "snapshot 3");
            }

            // A genuine object with the right number and parent that is not the one referenced
            // (as a lost publish race leaves behind): its hash differs from what snapshot 3
            // names.
            let rival = {
                let header = SnapshotHeader {
                    flags: if opaque { 0 } else { SNAPSHOT_FLAG_HASHED_KEYS },
                    parent: s2.parent_ref,
                    parent_number: None,
                };
                let mut d = header.encode();
                let context = snapshot_context_v2(&r.user().0, 2, &d);
                let plain = postcard::to_allocvec(&Snapshot {
                    time_ns: 1,
                    ..s2.snapshot.clone()
                })
                .unwrap();
                d.extend(crypto::seal_manifest(
                    r.keys(),
                    &context,
                    &plain,
                    &mut OsRng,
                ));
                d
            };
            store.tamper(BlockKey(s2.key), rival);
            let err = reader(&store).snapshots().await.unwrap_err();
            untrusted(&err, 2, "snapshot 3");
            store.tamper(BlockKey(s2.key), b2.clone());
            assert_eq!(reader(&store).snapshots().await.unwrap().len(), 3);

            // The header cannot be changed: another flag, or another parent.
            let mut flipped = b3.clone();
            flipped[4] ^= SNAPSHOT_FLAG_HASHED_KEYS;
            store.tamper(BlockKey(s3.key), flipped);
            assert!(reader(&store).latest().await.is_err());
            let mut reparented = b3.clone();
            reparented[6] ^= 1;
            store.tamper(BlockKey(s3.key), reparented);
            untrusted(&reader(&store).latest().await.unwrap_err(), 3, "the root");
            store.tamper(BlockKey(s3.key), b3);
        }
    }

    /// Snapshot objects of format 1 (sealed under a constant context by older clients) are
    /// still read, and a new snapshot chains onto them.
    #[tokio::test]
    async fn format_1_snapshots_are_still_read() {
        let store = MemStore::new();
        let r = repo(&store, None);
        // Snapshot 1 as an older client wrote it.
        let nonce = [3u8; 16];
        let plain = postcard::to_allocvec(&Manifest::new(Vec::new())).unwrap();
        let sealed = crypto::seal_manifest(r.keys(), &manifest_context(&nonce), &plain, &mut OsRng);
        let manifest_len = sealed.len() as u64;
        let piece = store.put_document(sealed).await.unwrap();
        let old = Snapshot {
            number: 1,
            nonce,
            time_ns: 5,
            parent: None,
            source: "/a".into(),
            origin: "backup".into(),
            totals: crate::model::Totals::default(),
            manifest_blocks: vec![piece.0],
            manifest_len,
        };
        let sealed_old = crypto::seal_manifest(
            r.keys(),
            snapshot_context(),
            &postcard::to_allocvec(&old).unwrap(),
            &mut OsRng,
        );
        let old_key = store.put_document(sealed_old).await.unwrap();
        let ptr = postcard::to_allocvec(&RootPointer {
            latest: old_key.0,
            number: 1,
        })
        .unwrap();
        let payload = crypto::seal_root_payload(r.keys(), &r.user(), 1, &ptr, &mut OsRng);
        let rec = RootRecord::sign(&r.identity, 1, payload).unwrap();
        store
            .put_record(r.root_key(), rec.encode().unwrap())
            .await
            .unwrap();

        let latest = reader(&store).latest().await.unwrap().unwrap();
        assert_eq!((latest.format, latest.bound()), (1, false));
        assert_eq!(latest.snapshot, old);
        reader(&store).load_manifest(&latest).await.unwrap();

        // A new snapshot on top of it is format 2 and names the old one (key and hash).
        let (new, _) = r
            .publish(&Manifest::default(), "/a", "backup")
            .await
            .unwrap();
        let all = reader(&store).snapshots().await.unwrap();
        let formats: Vec<_> = all.iter().map(|s| (s.snapshot.number, s.format)).collect();
        assert_eq!(formats, vec![(2, 2), (1, 1)]);
        assert_eq!(all[0].key, new.key);
        assert_eq!(
            all[0].parent_ref.map(|p| p.key),
            Some(old_key.0),
            "the new snapshot names the old one"
        );
        // The old object swapped for another format-1 object is still caught by its number.
        let mut other = old.clone();
        other.number = 7;
        store.tamper(
            old_key,
            crypto::seal_manifest(
                r.keys(),
                snapshot_context(),
                &postcard::to_allocvec(&other).unwrap(),
                &mut OsRng,
            ),
        );
        let err = reader(&store).snapshots().await.unwrap_err();
        untrusted(&err, 1, "snapshot 2");
    }

    /// The root is read through several members: an entry node that serves an older (validly
    /// signed) root, none, or garbage is outvoted by one that serves the newest; only when
    /// every answer is older than the watermark is the read refused.
    #[tokio::test]
    async fn the_newest_root_of_several_members_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("root-seen");
        let store = MemStore::new();
        let r = repo(&store, Some(mark.clone()));
        let [_, s2, _] = publish3(&r).await;
        let root = r.root_key();
        let newest = store.get_record(root).await.unwrap().unwrap();
        // Root 2, as a member that missed the last update still has it.
        let ptr = postcard::to_allocvec(&RootPointer {
            latest: s2.key,
            number: 2,
        })
        .unwrap();
        let payload = crypto::seal_root_payload(r.keys(), &r.user(), 2, &ptr, &mut OsRng);
        let old = RootRecord::sign(&r.identity, 2, payload)
            .unwrap()
            .encode()
            .unwrap();

        // The entry node serves the old root, another member the newest: a fresh client (no
        // watermark) sees snapshot 3.
        store.put_record(root, old.clone()).await.unwrap();
        store.set_other_members(root, vec![Some(old.clone()), Some(newest.clone())]);
        let fresh = reader(&store);
        assert_eq!(fresh.latest().await.unwrap().unwrap().snapshot.number, 3);
        assert_eq!(fresh.snapshots().await.unwrap().len(), 3);
        // The entry node serves garbage or says "no root".
        store
            .put_record(root, b"not a root".to_vec())
            .await
            .unwrap();
        assert_eq!(fresh.latest().await.unwrap().unwrap().snapshot.number, 3);
        store.remove_record(root);
        assert_eq!(fresh.latest().await.unwrap().unwrap().snapshot.number, 3);
        // The entry node is right and a member is stale.
        store.put_record(root, newest.clone()).await.unwrap();
        store.set_other_members(root, vec![Some(old.clone()), None]);
        assert_eq!(fresh.latest().await.unwrap().unwrap().snapshot.number, 3);

        // Every member serves the old root: a client that has seen root 3 refuses it.
        store.put_record(root, old.clone()).await.unwrap();
        store.set_other_members(root, vec![Some(old.clone()), Some(old)]);
        let err = r.latest().await.unwrap_err();
        assert!(matches!(err, ClientError::Untrusted(_)), "{err}");
        assert!(err.to_string().contains("older than root 3"), "{err}");
        // Only garbage: a clear error, not "no backup".
        store.put_record(root, b"junk".to_vec()).await.unwrap();
        store.set_other_members(root, vec![Some(b"more junk".to_vec())]);
        let err = reader(&store).latest().await.unwrap_err();
        assert!(matches!(err, ClientError::Corrupt(_)), "{err}");
    }

    /// On a ring that keys documents by their hash, a document whose bytes do not hash to its
    /// key is refused on read, and a put answered with a key that is not the hash is refused.
    #[tokio::test]
    async fn keys_are_checked_against_the_bytes() {
        let store = MemStore::new();
        let r = repo(&store, None);
        let [_, _, s3] = publish3(&r).await;
        // A manifest piece replaced by other bytes (that would fail the AEAD too).
        let piece = s3.snapshot.manifest_blocks[0];
        let good = doc(&store, piece).await;
        store.tamper(BlockKey(piece), b"other bytes".to_vec());
        let fresh = reader(&store);
        let latest = fresh.latest().await.unwrap().unwrap();
        assert!(fresh.hashed_keys());
        let err = fresh.load_manifest(&latest).await.unwrap_err();
        assert!(matches!(err, ClientError::Untrusted(_)), "{err}");
        assert!(err.to_string().contains("do not hash to its key"), "{err}");
        store.tamper(BlockKey(piece), good);

        // The ring starts answering puts with keys that are not the hash of the bytes.
        store.set_opaque_keys(true);
        let err = reader(&store)
            .publish(&Manifest::default(), "/a", "backup")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Untrusted(_)), "{err}");
        assert!(err.to_string().contains("is not the hash"), "{err}");
        // The root still names snapshot 3.
        assert_eq!(reader(&store).latest().await.unwrap().unwrap().key, s3.key);
    }

    /// A root may point at a snapshot numbered below its own sequence number (after a forget
    /// rewrote the chain), never above; a root that names the latest object's hash holds the
    /// object to it.
    #[tokio::test]
    async fn root_numbers_and_the_latest_hash() {
        let store = MemStore::new();
        let r = repo(&store, None);
        let [_, _, s3] = publish3(&r).await;
        let root = |seq: u64, number: u64, hash: Option<[u8; 32]>| {
            let ptr = encode_root_payload(
                &RootPointer {
                    latest: s3.key,
                    number,
                },
                hash.as_ref(),
                0,
            );
            let payload = crypto::seal_root_payload(r.keys(), &r.user(), seq, &ptr, &mut OsRng);
            RootRecord::sign(&r.identity, seq, payload)
                .unwrap()
                .encode()
                .unwrap()
        };
        store
            .put_record(r.root_key(), root(9, 3, None))
            .await
            .unwrap();
        let (root9, latest) = reader(&store).head().await.unwrap().unwrap();
        assert_eq!((root9.seq(), latest.snapshot.number), (9, 3));
        assert_eq!(reader(&store).snapshots().await.unwrap().len(), 3);
        store
            .put_record(r.root_key(), root(2, 3, None))
            .await
            .unwrap();
        let err = reader(&store).latest().await.unwrap_err();
        assert!(
            err.to_string().contains("root 2 points at snapshot 3"),
            "{err}"
        );
        store
            .put_record(r.root_key(), root(10, 3, Some([0; 32])))
            .await
            .unwrap();
        untrusted(&reader(&store).latest().await.unwrap_err(), 3, "the root");
        store
            .put_record(r.root_key(), root(11, 3, s3.content_hash))
            .await
            .unwrap();
        assert_eq!(reader(&store).latest().await.unwrap().unwrap().key, s3.key);
        // The next snapshot takes the root's number and names its parent's (3).
        let (s12, _) = r
            .publish(&Manifest::default(), "/a", "backup")
            .await
            .unwrap();
        assert_eq!((s12.snapshot.number, s12.parent_number), (12, Some(3)));
        let all = reader(&store).snapshots().await.unwrap();
        let numbers: Vec<_> = all.iter().map(|s| s.snapshot.number).collect();
        assert_eq!(numbers, [12, 3, 2, 1]);
    }

    #[test]
    fn snapshot_headers_parse_strictly() {
        let p = ParentRef {
            key: [1; 32],
            hash: [2; 32],
        };
        for h in [
            SnapshotHeader {
                flags: 0,
                parent: None,
                parent_number: None,
            },
            SnapshotHeader {
                flags: SNAPSHOT_FLAG_HASHED_KEYS,
                parent: Some(p),
                parent_number: None,
            },
            SnapshotHeader {
                flags: 0,
                parent: Some(p),
                parent_number: Some(u64::MAX - 3),
            },
        ] {
            let mut d = h.encode();
            let n = d.len();
            d.extend_from_slice(b"sealed");
            let split = SnapshotHeader::split(&d).unwrap().unwrap();
            assert_eq!(
                (split.header, split.header_bytes.len(), split.sealed),
                (h, n, &b"sealed"[..])
            );
            // Truncated anywhere inside the header.
            for cut in 4..n {
                assert!(SnapshotHeader::split(&d[..cut]).unwrap().is_err(), "{cut}");
            }
        }
        // Unknown flags, unknown parent tag.
        assert!(SnapshotHeader::split(b"PSS\x02\x80\x00").unwrap().is_err());
        assert!(SnapshotHeader::split(b"PSS\x02\x00\x02").unwrap().is_err());
        assert!(
            SnapshotHeader::split(&[b"PSS\x02\x00\x03".as_slice(), &[0; 72]].concat())
                .unwrap()
                .is_err()
        );
        // Format 1 (a sealed object starts with its version byte, 1).
        assert!(SnapshotHeader::split(b"\x01abc").is_none());
        assert!(SnapshotHeader::split(b"").is_none());
    }
}
