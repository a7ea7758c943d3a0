//! The block store as the client sees it: documents (every object the client stores: packs,
//! manifest blocks, snapshot objects), content-addressed blocks, and signed mutable records.
//!
//! [`BlockStoreApi`] is the small seam between the client logic and the network. [`RingStore`]
//! speaks the node's data protocol over [`RpcClient`] (with retries, backoff and fail-over to
//! other ring members); [`MemStore`] keeps everything in memory for unit tests.
//!
//! A document's key is whatever the ring returns for it: on a plain ring (`entanglement =
//! none`) BLAKE3 of the bytes, on an entangled ring the key of the document record, which is not
//! a hash of the data. The store hands documents over as they come; the repository
//! (`crate::repo::Repo`) checks them: against their hash where the ring keys documents by their
//! hash, and always through the AEAD tag and chunk-id MAC that every reader of the bytes
//! verifies (chunks, manifests and snapshot objects are all sealed, snapshot objects bound to
//! what refers to them).
//!
//! Signed records (a user's root) can be read through several ring members at once
//! ([`BlockStoreApi::get_record_replicas`]), so that one lying or stale entry node cannot show
//! an old root.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use peerstore_proto::client::describe;
use peerstore_proto::{
    ring_id, AdminRequest, AdminResponse, BlockKey, ClientRequest as Request,
    ClientResponse as Response, ErrorCode, ErrorResponse, NodeAddr, RpcClient, RpcError,
    StatusReport,
};
use tracing::{debug, warn};

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No node answered (after retries and fail-over).
    #[error(
        "no node reachable at {addr}; start one with peerstore-node or pass --peer ({reason})"
    )]
    Unreachable { addr: String, reason: String },
    /// The ring has no room.
    #[error("node full: {0}")]
    Full(String),
    /// The ring answered but could not complete the request (after retries).
    #[error("ring unavailable: {0}; retry later")]
    Unavailable(String),
    /// A record update was refused (bad signature or stale sequence number).
    #[error("record rejected by the ring: {0}")]
    Rejected(String),
    /// A block came back whose hash is not its key.
    #[error("block {0} is corrupt (hash mismatch)")]
    Corrupt(String),
    /// The user has stored as much as the node allows (`--user-quota`).
    #[error("{0}")]
    Quota(String),
    /// The ring refused this client: no credential, another ring's, or a revoked one.
    #[error("refused by the ring: {0}; get an invite (`peerstore-node invite --role user` on the ring's first node) and run `peerstore-client join <invite>`")]
    Forbidden(String),
    /// Any other refusal or unexpected answer.
    #[error("node error: {0}")]
    Other(String),
}

impl StoreError {
    /// Whether retrying later may help (used by the sync watcher).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. } | StoreError::Unavailable(_)
        )
    }
}

/// One ring member's answer to a record read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordAnswer {
    /// Who answered (an address, for warnings).
    pub from: String,
    /// The record it served (`None`: it says there is none). Not verified yet.
    pub record: Option<Vec<u8>>,
}

/// Kept documents a [`RingStore`] queues for the node at most (the node samples a few dozen).
const MAX_PENDING_KEEP: usize = 16_384;

/// What the client needs from the ring.
#[async_trait]
pub trait BlockStoreApi: Send + Sync {
    /// Stores `data` under `key` (= BLAKE3(data)); returns once the ring holds it durably.
    async fn put(&self, key: BlockKey, data: Vec<u8>) -> Result<(), StoreError>;
    /// Reads a block; `None` if no replica has it. The returned bytes hash to `key`.
    async fn get(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores a document (at most `MAX_BLOCK_SIZE` bytes; entangled when the ring is
    /// configured so) and returns the key that reads it back.
    async fn put_document(&self, data: Vec<u8>) -> Result<BlockKey, StoreError>;
    /// Reads a document by the key [`BlockStoreApi::put_document`] returned; `None` if the ring
    /// does not have it.
    async fn get_document(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores a signed mutable record.
    async fn put_record(&self, key: BlockKey, record: Vec<u8>) -> Result<(), StoreError>;
    /// Reads the newest mutable record under `key`.
    async fn get_record(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError>;
    /// Starts a write session (a backup run, a sync pass): the ring entangles the documents
    /// put from now on only with each other and with the documents named by
    /// [`BlockStoreApi::keep_documents`], so that forgetting older snapshots frees their
    /// blocks (`peerstore_proto::EntangleSession`). Default: nothing.
    fn begin_session(&self) {}
    /// Names documents the snapshot being written still references (its writer's own); sent
    /// with the next document put. Default: nothing.
    fn keep_documents(&self, _docs: &[BlockKey]) {}
    /// Reads the record under `key` through several distinct ring members, one answer per
    /// member that answered (the caller verifies them and takes the newest). Fails only if no
    /// member answered. The default asks once, like [`BlockStoreApi::get_record`].
    async fn get_record_replicas(&self, key: BlockKey) -> Result<Vec<RecordAnswer>, StoreError> {
        Ok(vec![RecordAnswer {
            from: "the ring".into(),
            record: self.get_record(key).await?,
        }])
    }
    /// A page of the documents `writer` stored, in key order after `after` (`prune`).
    async fn list_documents(
        &self,
        _writer: [u8; 32],
        _after: Option<BlockKey>,
        _limit: u32,
    ) -> Result<peerstore_proto::DocumentPage, StoreError> {
        Err(StoreError::Other("this store cannot list documents".into()))
    }
    /// Deletes the documents a signed `crypto::DeleteStatement` (postcard bytes) names.
    async fn delete_documents(
        &self,
        _statement: Vec<u8>,
    ) -> Result<peerstore_proto::DeleteReport, StoreError> {
        Err(StoreError::Other(
            "this store cannot delete documents".into(),
        ))
    }
}

/// An in-memory store for tests. Records replace each other without checks (the nodes check).
#[derive(Default, Clone)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    blocks: BTreeMap<BlockKey, Vec<u8>>,
    records: BTreeMap<BlockKey, Vec<u8>>,
    puts: u64,
    /// Keys of stored documents, in put order.
    documents: Vec<BlockKey>,
    fail_puts: bool,
    /// Documents get keys that are not the hash of their bytes (like an entangled ring).
    opaque_keys: bool,
    /// Puts that may still succeed before every put fails (None: no limit).
    fail_after: Option<u64>,
    /// What other ring members answer to a record read (tests of the multi-member root read):
    /// `(key, answer)`, asked after the store's own records.
    other_members: Vec<(BlockKey, Option<Vec<u8>>)>,
    /// Sessions begun, and the documents named as kept in the current one.
    sessions: u64,
    kept: BTreeSet<BlockKey>,
}

impl MemStore {
    #[must_use]
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        peerstore_proto::lock(&self.inner)
    }

    /// Write sessions begun, and the documents named as kept in the current one.
    #[must_use]
    pub fn session(&self) -> (u64, BTreeSet<BlockKey>) {
        let g = self.lock();
        (g.sessions, g.kept.clone())
    }

    /// Number of successful block and document puts so far.
    #[must_use]
    pub fn puts(&self) -> u64 {
        self.lock().puts
    }

    /// Number of distinct blocks held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().blocks.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every following put fail as unavailable (simulates an outage).
    pub fn set_fail_puts(&self, fail: bool) {
        self.lock().fail_puts = fail;
    }

    /// Lets `n` more puts succeed, then fails every put (simulates an outage mid-backup).
    pub fn fail_after(&self, n: Option<u64>) {
        self.lock().fail_after = n;
    }

    /// Every block's bytes (for leak checks in tests).
    #[must_use]
    pub fn all_blocks(&self) -> Vec<Vec<u8>> {
        self.lock().blocks.values().cloned().collect()
    }

    /// Overwrites a stored block's bytes (to test corruption handling).
    pub fn tamper(&self, key: BlockKey, data: Vec<u8>) {
        self.lock().blocks.insert(key, data);
    }

    /// Makes other "ring members" answer record reads of `key` with `answers` (`None`: "no
    /// such record"), after the store itself (the entry node): to test the multi-member root
    /// read. Replaces earlier answers for `key`.
    pub fn set_other_members(&self, key: BlockKey, answers: Vec<Option<Vec<u8>>>) {
        let mut g = self.lock();
        g.other_members.retain(|(k, _)| *k != key);
        g.other_members
            .extend(answers.into_iter().map(|a| (key, a)));
    }

    /// Forgets a mutable record (to test a node that hides it).
    pub fn remove_record(&self, key: BlockKey) -> bool {
        self.lock().records.remove(&key).is_some()
    }

    /// Forgets a block or document (to test a loss).
    pub fn remove(&self, key: BlockKey) -> bool {
        self.lock().blocks.remove(&key).is_some()
    }

    /// Keys of the documents stored so far, in put order.
    #[must_use]
    pub fn documents(&self) -> Vec<BlockKey> {
        self.lock().documents.clone()
    }

    /// Makes document keys opaque (not the hash of the bytes), as an entangled ring does.
    pub fn set_opaque_keys(&self, opaque: bool) {
        self.lock().opaque_keys = opaque;
    }

    /// Counts one put, or fails it when an outage is simulated.
    fn count_put(g: &mut MemInner) -> Result<(), StoreError> {
        if g.fail_puts || g.fail_after == Some(0) {
            return Err(StoreError::Unavailable("simulated outage".into()));
        }
        if let Some(n) = g.fail_after.as_mut() {
            *n -= 1;
        }
        g.puts += 1;
        Ok(())
    }
}

/// What a [`HookedStore`] runs before each document read: a future the read awaits first.
pub type DocumentHook =
    Arc<dyn Fn(BlockKey) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// A [`MemStore`] whose document reads first await a hook, for tests that look at the
/// destination while a restore waits for a pack, or hold a read to interrupt a restore.
/// Everything else goes straight to the inner store.
#[derive(Clone)]
pub struct HookedStore {
    pub inner: MemStore,
    hook: DocumentHook,
}

impl HookedStore {
    pub fn new(inner: MemStore, hook: DocumentHook) -> HookedStore {
        HookedStore { inner, hook }
    }
}

#[async_trait]
impl BlockStoreApi for HookedStore {
    async fn put(&self, key: BlockKey, data: Vec<u8>) -> Result<(), StoreError> {
        self.inner.put(key, data).await
    }
    async fn get(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key).await
    }
    async fn put_document(&self, data: Vec<u8>) -> Result<BlockKey, StoreError> {
        self.inner.put_document(data).await
    }
    fn begin_session(&self) {
        self.inner.begin_session();
    }
    fn keep_documents(&self, docs: &[BlockKey]) {
        self.inner.keep_documents(docs);
    }
    async fn get_document(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
        (self.hook)(key).await;
        self.inner.get_document(key).await
    }
    async fn put_record(&self, key: BlockKey, record: Vec<u8>) -> Result<(), StoreError> {
        self.inner.put_record(key, record).await
    }
    async fn get_record(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_record(key).await
    }
}

#[async_trait]
impl BlockStoreApi for MemStore {
    fn begin_session(&self) {
        let mut g = self.lock();
        g.sessions += 1;
        g.kept.clear();
    }

    fn keep_documents(&self, docs: &[BlockKey]) {
        self.lock().kept.extend(docs.iter().copied());
    }

    async fn put(&self, key: BlockKey, data: Vec<u8>) -> Result<(), StoreError> {
        if BlockKey::of(&data) != key {
            return Err(StoreError::Other("key is not the hash of the data".into()));
        }
        let mut g = self.lock();
        MemStore::count_put(&mut g)?;
        g.blocks.insert(key, data);
        Ok(())
    }

    async fn get(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().blocks.get(&key).cloned())
    }

    async fn put_document(&self, data: Vec<u8>) -> Result<BlockKey, StoreError> {
        if data.len() > peerstore_proto::MAX_BLOCK_SIZE {
            return Err(StoreError::Other(format!(
                "document of {} bytes is too large",
                data.len()
            )));
        }
        let mut g = self.lock();
        MemStore::count_put(&mut g)?;
        let key = if g.opaque_keys {
            // Like a document record's key: depends on the data, but is not its hash.
            let mut h = blake3::Hasher::new();
            h.update(b"memstore document record");
            h.update(&data);
            BlockKey(*h.finalize().as_bytes())
        } else {
            BlockKey::of(&data)
        };
        g.blocks.insert(key, data);
        g.documents.push(key);
        Ok(key)
    }

    async fn get_document(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().blocks.get(&key).cloned())
    }

    async fn put_record(&self, key: BlockKey, record: Vec<u8>) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.fail_puts {
            return Err(StoreError::Unavailable("simulated outage".into()));
        }
        g.records.insert(key, record);
        Ok(())
    }

    async fn get_record(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().records.get(&key).cloned())
    }

    async fn get_record_replicas(&self, key: BlockKey) -> Result<Vec<RecordAnswer>, StoreError> {
        let g = self.lock();
        let mut out = vec![RecordAnswer {
            from: "memstore entry".into(),
            record: g.records.get(&key).cloned(),
        }];
        out.extend(
            g.other_members
                .iter()
                .filter(|(k, _)| *k == key)
                .enumerate()
                .map(|(i, (_, a))| RecordAnswer {
                    from: format!("memstore member {}", i + 1),
                    record: a.clone(),
                }),
        );
        Ok(out)
    }
}

/// How hard [`RingStore`] tries before giving up on one request.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts per request (at least 1).
    pub attempts: u32,
    /// First backoff; doubles each retry.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(4),
        }
    }
}

/// The ring over the node data protocol. Talks to one node at a time; when it stops answering,
/// fails over to the other ring members it learned from that node's status (successors).
pub struct RingStore {
    endpoints: Mutex<Endpoints>,
    identity: Option<peerstore_proto::Identity>,
    /// The user who signs every document this store puts (`crypto::WriteAuth`): nodes record
    /// them as its writer (only their signed statement can delete it).
    writer: Option<Arc<crypto::Identity>>,
    timeout: Duration,
    policy: RetryPolicy,
    /// The current write session: its id and the kept documents not sent yet.
    session: Mutex<Option<(u64, Vec<BlockKey>)>>,
    /// Whether documents are read from their source blocks' holders directly
    /// ([`RingStore::read_direct`]); cleared when the ring says it does not entangle.
    direct_reads: std::sync::atomic::AtomicBool,
}

/// Source blocks of one document fetched at once when it is read directly.
const SYMBOLS_IN_FLIGHT: usize = 16;

/// Source blocks asked of one member in one `GetSymbols` (at most
/// [`peerstore_proto::MAX_SYMBOLS_PER_REQUEST`]).
const SYMBOLS_PER_BATCH: usize = 8;
/// `GetSymbols` batches of one document under way at once.
const SYMBOL_BATCHES_IN_FLIGHT: usize = 8;

/// The source blocks of a direct read, asked of the members that should hold them in batches
/// (`GetSymbols`: one request per member and [`SYMBOLS_PER_BATCH`] blocks, not one per block),
/// each routed by its first key like any routed call (a member that does not answer is
/// forgotten and the next one asked; before the members are known, the entry node). Only what
/// a member answered for a key it was asked is kept; anything missing, refused or unanswered is
/// left for the caller to fetch one by one. Nothing here is trusted: the caller checks the
/// assembled document against its hash.
async fn fetch_symbol_batches(
    client: &RpcClient,
    keys: &[BlockKey],
) -> std::collections::HashMap<BlockKey, Vec<u8>> {
    let mut groups: Vec<(Option<NodeAddr>, Vec<BlockKey>)> = Vec::new();
    for &k in keys {
        let holder = client.symbol_holder(k);
        match groups
            .iter_mut()
            .find(|(h, ks)| *h == holder && ks.len() < SYMBOLS_PER_BATCH)
        {
            Some((_, ks)) => ks.push(k),
            None => groups.push((holder, vec![k])),
        }
    }
    let answers = futures::stream::iter(groups)
        .map(|(_, batch)| async move {
            let req = Request::GetSymbols {
                keys: batch.clone(),
            };
            match client.call(req).await {
                Ok(Response::Symbols(blocks)) if blocks.len() == batch.len() => batch
                    .into_iter()
                    .zip(blocks)
                    .filter_map(|(k, b)| Some((k, b?.into_vec())))
                    .collect(),
                _ => Vec::new(),
            }
        })
        .buffer_unordered(SYMBOL_BATCHES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    answers.into_iter().flatten().collect()
}

/// What a direct read of a document came to.
enum Direct {
    /// The document, assembled from its sources and checked against its hash.
    Read(Vec<u8>),
    /// The ring does not entangle: documents are plain blocks, read with `GetDocument`.
    Plain,
    /// No plan, a source missing or bytes that do not check out: read with `GetDocument`
    /// (which decodes with the code where needed).
    Fallback,
}

struct Endpoints {
    /// Known ring members, the one in use first.
    addrs: Vec<NodeAddr>,
    current: usize,
    client: RpcClient,
}

impl RingStore {
    /// Connects to `node` and checks that it answers (a `Status` call). Must run inside a tokio
    /// runtime.
    /// `identity`: the credential the client shows the ring (`peerstore-client join`).
    pub async fn connect(
        node: NodeAddr,
        timeout: Duration,
        identity: Option<peerstore_proto::Identity>,
    ) -> Result<RingStore, StoreError> {
        let unreachable = |reason: String| StoreError::Unreachable {
            addr: node.to_string(),
            reason,
        };
        let client = RpcClient::routed(node.clone(), timeout, identity.clone())
            .map_err(|e| unreachable(e.to_string()))?;
        let status = match client.call(Request::Status).await {
            Ok(Response::Status(s)) => *s,
            Ok(Response::Error {
                code: peerstore_proto::ErrorCode::Forbidden,
                message,
            }) => return Err(StoreError::Forbidden(message)),
            Ok(other) => return Err(unreachable(format!("unexpected answer {other:?}"))),
            Err(RpcError::Refused { reason, .. }) => return Err(StoreError::Forbidden(reason)),
            Err(e) => return Err(unreachable(e.to_string())),
        };
        let mut addrs = vec![node];
        for m in &status.successors {
            if !addrs.iter().any(|a| a.peer == m.addr.peer) {
                addrs.push(m.addr.clone());
            }
        }
        Ok(RingStore {
            endpoints: Mutex::new(Endpoints {
                addrs,
                current: 0,
                client,
            }),
            identity,
            writer: None,
            timeout,
            policy: RetryPolicy::default(),
            session: Mutex::new(None),
            direct_reads: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Signs the documents this store puts as `user` (who is then their writer).
    #[must_use]
    pub fn with_writer(mut self, user: Arc<crypto::Identity>) -> RingStore {
        self.writer = Some(user);
        self
    }

    /// The credential this client shows the ring.
    #[must_use]
    pub fn identity(&self) -> Option<peerstore_proto::Identity> {
        self.identity.clone()
    }

    /// Replaces the retry policy.
    #[must_use]
    pub fn with_policy(mut self, policy: RetryPolicy) -> RingStore {
        self.policy = policy;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Endpoints> {
        peerstore_proto::lock(&self.endpoints)
    }

    fn client(&self) -> (RpcClient, usize) {
        let g = self.lock();
        (g.client.clone(), g.current)
    }

    /// The node in use.
    #[must_use]
    pub fn current_node(&self) -> NodeAddr {
        let g = self.lock();
        g.addrs[g.current].clone()
    }

    /// Moves to the next known member (if `failed` is still the one in use).
    fn fail_over(&self, failed: usize) {
        let mut g = self.lock();
        if g.current != failed || g.addrs.len() < 2 {
            return;
        }
        g.current = (g.current + 1) % g.addrs.len();
        let next = g.addrs[g.current].clone();
        match RpcClient::routed(next.clone(), self.timeout, self.identity.clone()) {
            Ok(c) => {
                warn!(node = %next, "failing over to another ring member");
                g.client = c;
            }
            Err(e) => warn!(node = %next, error = %e, "cannot start a client for fail-over"),
        }
    }

    /// Sends one client request, retrying transient failures with backoff.
    pub async fn call(&self, req: Request) -> Result<Response, StoreError> {
        let kind = req.kind();
        self.with_retry(kind, |client| {
            let req = req.clone();
            async move { client.call(req).await }
        })
        .await
    }

    /// Sends one admin request to the entry node, retrying transient failures with backoff.
    pub async fn admin(&self, req: AdminRequest) -> Result<AdminResponse, StoreError> {
        let kind = req.kind();
        self.with_retry(kind, |client| {
            let req = req.clone();
            async move { client.admin(req).await }
        })
        .await
    }

    /// Runs `send` on the current node's client until it gets an answer that is not a
    /// transient error, failing over to other nodes when one is unreachable.
    async fn with_retry<T, F, Fut>(&self, kind: &str, send: F) -> Result<T, StoreError>
    where
        T: ErrorResponse,
        F: Fn(RpcClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, RpcError>>,
    {
        let mut backoff = self.policy.initial_backoff;
        let mut last = StoreError::Unavailable("no attempt made".into());
        for attempt in 0..self.policy.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.policy.max_backoff);
            }
            let (client, idx) = self.client();
            let addr = client.node.to_string();
            match send(client).await {
                Ok(resp) => match resp.as_error() {
                    None => return Ok(resp),
                    Some((code, message)) => {
                        let message = message.to_string();
                        match code {
                            ErrorCode::Unavailable | ErrorCode::NotMember | ErrorCode::Internal => {
                                debug!(kind, %message, attempt, "transient error; retrying");
                                last = StoreError::Unavailable(message);
                            }
                            ErrorCode::Full => return Err(StoreError::Full(message)),
                            ErrorCode::Rejected => return Err(StoreError::Rejected(message)),
                            ErrorCode::Forbidden => return Err(StoreError::Forbidden(message)),
                            ErrorCode::QuotaExceeded => return Err(StoreError::Quota(message)),
                            ErrorCode::BadRequest => return Err(StoreError::Other(message)),
                        }
                    }
                },
                Err(e) => {
                    debug!(kind, error = %e, attempt, "node unreachable");
                    last = StoreError::Unreachable {
                        addr,
                        reason: match e {
                            RpcError::Unreachable { reason, .. } => reason,
                            RpcError::Closed => "connection closed".into(),
                            RpcError::Timeout { after, .. } => {
                                format!("no answer within {after:?}")
                            }
                            RpcError::Refused { reason, .. } => {
                                return Err(StoreError::Forbidden(reason))
                            }
                        },
                    };
                    self.fail_over(idx);
                }
            }
        }
        Err(last)
    }

    /// Reads an entangled document from the holders of its source blocks: a holder of the
    /// document's record names them and sends those it holds (`SourcesHeld`; `DocumentSources`
    /// from nodes without it), the others are fetched from their holders, those of one holder
    /// in one request (`GetSymbols`, [`fetch_symbol_batches`]) and whatever that did not bring
    /// one by one from its replica set (`GetSymbol`, routed), and the payloads are put
    /// together and checked against the
    /// document's length and hash. One attempt, no retries: whatever goes wrong, the caller
    /// reads through `GetDocument`, where the entry node decodes with the code. Each byte is
    /// hashed once here (the document's content hash), not per block as well.
    async fn read_direct(&self, key: BlockKey) -> Direct {
        let (client, _) = self.client();
        // The plan with the sources its node holds (`SourcesHeld`); a node that does not know
        // that request (or a ring that does not entangle) is asked for the plan alone.
        let (plan, held, data) = match client.call(Request::SourcesHeld { key }).await {
            Ok(Response::SourcesHeld { plan, held, data }) => (plan, held, data),
            Ok(Response::NotFound) => return Direct::Fallback,
            Ok(Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }) => match client.call(Request::DocumentSources { key }).await {
                Ok(Response::DocumentSources(plan)) => (plan, Vec::new(), Vec::new()),
                Ok(Response::Error {
                    code: ErrorCode::BadRequest,
                    ..
                }) => return Direct::Plain,
                _ => return Direct::Fallback,
            },
            _ => return Direct::Fallback,
        };
        let total: usize = plan.codewords.iter().map(Vec::len).sum();
        if plan.len > peerstore_proto::MAX_BLOCK_SIZE as u64
            || total > peerstore_proto::SourcePlan::MAX_SOURCES
            || plan.codewords.iter().any(Vec::is_empty)
        {
            return Direct::Fallback;
        }
        let keys: Vec<BlockKey> = plan.codewords.iter().flatten().copied().collect();
        // What came with the plan, read in place from the answer's buffer (an answer that does
        // not match the plan is ignored), then the rest from its holders.
        let mut got: std::collections::HashMap<BlockKey, Cow<'_, [u8]>> =
            match peerstore_proto::split_held(&held, &data) {
                Some(blocks) if blocks.len() == keys.len() => keys
                    .iter()
                    .zip(blocks)
                    .filter_map(|(k, b)| Some((*k, Cow::Borrowed(b?))))
                    .collect(),
                _ => std::collections::HashMap::new(),
            };
        let rest: Vec<BlockKey> = keys
            .iter()
            .filter(|k| !got.contains_key(*k))
            .copied()
            .collect();
        got.extend(
            fetch_symbol_batches(&client, &rest)
                .await
                .into_iter()
                .map(|(k, b)| (k, Cow::Owned(b))),
        );
        // Whatever no batch brought (a holder that moved, failed or has no `GetSymbols`), one
        // by one, routed.
        let missing: BTreeSet<BlockKey> = keys
            .iter()
            .filter(|k| !got.contains_key(*k))
            .copied()
            .collect();
        let singles = futures::stream::iter(missing)
            .map(|k| {
                let client = client.clone();
                async move {
                    match client.call(Request::GetSymbol { key: k }).await {
                        Ok(Response::Block { data }) => Some((k, data)),
                        _ => None,
                    }
                }
            })
            .buffer_unordered(SYMBOLS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        got.extend(
            singles
                .into_iter()
                .flatten()
                .map(|(k, b)| (k, Cow::Owned(b))),
        );
        let mut blocks = keys.iter().map(|k| got.get(k));
        let mut out = Vec::with_capacity(usize::try_from(plan.len).unwrap_or(0));
        for codeword in &plan.codewords {
            let mut len = None;
            let start = out.len();
            for index in 0..codeword.len() {
                let Some(Some(bytes)) = blocks.next() else {
                    return Direct::Fallback;
                };
                let Ok(block) = entangle::block::parse_unverified(bytes) else {
                    return Direct::Fallback;
                };
                let h = &block.header;
                let cw_len = usize::try_from(h.len).unwrap_or(usize::MAX);
                if !h.is_source()
                    || usize::from(h.index) != index
                    || h.params.s() != codeword.len()
                    || *len.get_or_insert(cw_len) != cw_len
                    || start + cw_len > usize::try_from(plan.len).unwrap_or(0)
                {
                    return Direct::Fallback;
                }
                let room = (start + cw_len).saturating_sub(out.len());
                out.extend_from_slice(&block.payload[..block.payload.len().min(room)]);
            }
            if len.is_some_and(|l| out.len() != start + l) {
                return Direct::Fallback;
            }
        }
        if out.len() as u64 != plan.len || *blake3::hash(&out).as_bytes() != plan.content_hash {
            debug!(%key, "directly read document does not match its hash; decoding instead");
            return Direct::Fallback;
        }
        Direct::Read(out)
    }

    /// Status of the node in use.
    pub async fn status(&self) -> Result<StatusReport, StoreError> {
        match self.call(Request::Status).await? {
            Response::Status(s) => Ok(*s),
            other => Err(StoreError::Other(format!("unexpected answer {other:?}"))),
        }
    }
}

/// How many ring members besides the entry node a record (root) read asks.
pub const RECORD_READERS: usize = 3;
/// How long a record read waits for the members besides the entry node (at most the client's
/// timeout).
const RECORD_READ_LIMIT: Duration = Duration::from_secs(10);

impl RingStore {
    fn record_read_limit(&self) -> Duration {
        self.timeout.min(RECORD_READ_LIMIT)
    }

    /// The members besides the entry node to read `key`'s record through: its replica set as
    /// the entry node reports it (the members that hold it; each must have the ring id of its
    /// PeerId), then the entry node's successors learned at connect. Distinct, at most
    /// [`RECORD_READERS`]; none on a one-node ring.
    async fn record_readers(&self, client: &RpcClient, key: BlockKey) -> Vec<NodeAddr> {
        let entry = client.node.clone();
        let mut holders = Vec::new();
        match tokio::time::timeout(
            self.record_read_limit(),
            client.call_to(&entry, Request::Lookup { key }),
        )
        .await
        {
            Ok(Ok(Response::Owner {
                owner, replicas, ..
            })) => {
                holders.extend(
                    std::iter::once(owner)
                        .chain(replicas)
                        .filter(|m| m.id == ring_id(&m.addr.peer))
                        .map(|m| m.addr),
                );
            }
            Ok(Ok(other)) => debug!(answer = %describe(&other), "no replica set for a record read"),
            Ok(Err(e)) => debug!(error = %e, "no replica set for a record read"),
            Err(_) => debug!("no replica set for a record read in time"),
        }
        let successors = self.lock().addrs.clone();
        let mut out: Vec<NodeAddr> = Vec::new();
        for a in holders.into_iter().chain(successors) {
            if a.peer != entry.peer && !out.iter().any(|o| o.peer == a.peer) {
                out.push(a);
            }
        }
        out.truncate(RECORD_READERS);
        out
    }
}

/// Asks one specific node for its status (no retries beyond one call).
pub async fn status_of(
    node: &NodeAddr,
    timeout: Duration,
    identity: Option<peerstore_proto::Identity>,
) -> Result<StatusReport, StoreError> {
    let unreachable = |reason: String| StoreError::Unreachable {
        addr: node.to_string(),
        reason,
    };
    let client = RpcClient::start_as(node.clone(), timeout, identity)
        .map_err(|e| unreachable(e.to_string()))?;
    match client.call(Request::Status).await {
        Ok(Response::Status(s)) => Ok(*s),
        Ok(Response::Error {
            code: peerstore_proto::ErrorCode::Forbidden,
            message,
        }) => Err(StoreError::Forbidden(message)),
        Err(RpcError::Refused { reason, .. }) => Err(StoreError::Forbidden(reason)),
        Ok(other) => Err(StoreError::Other(format!("unexpected answer {other:?}"))),
        Err(e) => Err(unreachable(e.to_string())),
    }
}

#[async_trait]
impl BlockStoreApi for RingStore {
    async fn put(&self, key: BlockKey, data: Vec<u8>) -> Result<(), StoreError> {
        match self.call(Request::Put { key, data }).await? {
            Response::Stored { .. } => Ok(()),
            other => Err(StoreError::Other(format!(
                "unexpected answer to put: {other:?}"
            ))),
        }
    }

    async fn get(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
        match self.call(Request::Get { key }).await? {
            Response::Block { data } => {
                if BlockKey::of(&data) != key {
                    return Err(StoreError::Corrupt(hex::encode(key.0)));
                }
                Ok(Some(data))
            }
            Response::NotFound => Ok(None),
            other => Err(StoreError::Other(format!(
                "unexpected answer to get: {other:?}"
            ))),
        }
    }

    async fn put_document(&self, data: Vec<u8>) -> Result<BlockKey, StoreError> {
        let content = *blake3::hash(&data).as_bytes();
        // The kept documents not sent yet go with this put (at most MAX_SESSION_KEEP).
        let session = peerstore_proto::lock(&self.session)
            .as_mut()
            .map(|(id, pending)| {
                let n = pending.len().min(peerstore_proto::MAX_SESSION_KEEP);
                peerstore_proto::EntangleSession {
                    id: *id,
                    keep: pending.drain(..n).collect(),
                }
            });
        let sent = session.as_ref().map(|s| s.keep.clone()).unwrap_or_default();
        // Signed afresh for every attempt (a node refuses a signature it has seen).
        let session_id = session.as_ref().map(|s| s.id);
        let answer = self
            .with_retry("put-document", |client| {
                let auth = self.writer.as_ref().map(|id| {
                    let auth =
                        crypto::WriteAuth::sign(id, &content, session_id, now_us(), rand::random());
                    postcard::to_stdvec(&auth).unwrap_or_default()
                });
                let req = Request::PutDocument {
                    data: data.clone(),
                    auth,
                    session: session.clone(),
                };
                async move { client.call(req).await }
            })
            .await;
        if !matches!(answer, Ok(Response::DocumentStored { .. })) && !sent.is_empty() {
            // Not taken: the next put names them again.
            if let Some((_, pending)) = peerstore_proto::lock(&self.session).as_mut() {
                pending.extend(sent);
            }
        }
        match answer? {
            Response::DocumentStored { key } => Ok(key),
            other => Err(StoreError::Other(format!(
                "unexpected answer to put-document: {other:?}"
            ))),
        }
    }

    fn begin_session(&self) {
        *peerstore_proto::lock(&self.session) = Some((rand::random(), Vec::new()));
    }

    fn keep_documents(&self, docs: &[BlockKey]) {
        if let Some((_, pending)) = peerstore_proto::lock(&self.session).as_mut() {
            // Enough to sample from; a snapshot naming more loses nothing but choice.
            let room = MAX_PENDING_KEEP.saturating_sub(pending.len());
            pending.extend(docs.iter().take(room).copied());
        }
    }

    async fn list_documents(
        &self,
        writer: [u8; 32],
        after: Option<BlockKey>,
        limit: u32,
    ) -> Result<peerstore_proto::DocumentPage, StoreError> {
        match self
            .call(Request::ListDocuments {
                writer,
                after,
                limit,
            })
            .await?
        {
            Response::Documents(page) => Ok(page),
            other => Err(StoreError::Other(format!(
                "unexpected answer to list-documents: {other:?}"
            ))),
        }
    }

    async fn delete_documents(
        &self,
        statement: Vec<u8>,
    ) -> Result<peerstore_proto::DeleteReport, StoreError> {
        match self.call(Request::DeleteDocuments { statement }).await? {
            Response::Deleted(report) => Ok(report),
            other => Err(StoreError::Other(format!(
                "unexpected answer to delete-documents: {other:?}"
            ))),
        }
    }

    async fn get_document(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.direct_reads.load(Relaxed) {
            match self.read_direct(key).await {
                Direct::Read(data) => return Ok(Some(data)),
                Direct::Plain => self.direct_reads.store(false, Relaxed),
                Direct::Fallback => {}
            }
        }
        let data = match self.call(Request::GetDocument { key }).await? {
            Response::Block { data } => data,
            Response::NotFound => return Ok(None),
            other => {
                return Err(StoreError::Other(format!(
                    "unexpected answer to get-document: {other:?}"
                )))
            }
        };
        // On a plain ring the bytes must hash to the key; on an entangled ring the key names a
        // document record, not a hash of the data. A key alone does not say which, so the
        // repository checks (`Repo::get_required`): it knows from the authenticated snapshot
        // object how the ring keys documents.
        Ok(Some(data))
    }

    async fn put_record(&self, key: BlockKey, record: Vec<u8>) -> Result<(), StoreError> {
        match self.call(Request::PutRecord { key, record }).await? {
            Response::Stored { .. } => Ok(()),
            other => Err(StoreError::Other(format!(
                "unexpected answer to put-record: {other:?}"
            ))),
        }
    }

    async fn get_record(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
        match self.call(Request::GetRecord { key }).await? {
            Response::Record { record } => Ok(Some(record)),
            Response::NotFound => Ok(None),
            other => Err(StoreError::Other(format!(
                "unexpected answer to get-record: {other:?}"
            ))),
        }
    }

    /// Reads the record through the entry node (with retries and fail-over) and, at the same
    /// time, through up to [`RECORD_READERS`] other members (one attempt each, bounded in
    /// time). Each member answers with the newest copy it finds on the record's replica set,
    /// so one honest member among them is enough to see the newest record.
    async fn get_record_replicas(&self, key: BlockKey) -> Result<Vec<RecordAnswer>, StoreError> {
        let (client, _) = self.client();
        let readers = self.record_readers(&client, key).await;
        let limit = self.record_read_limit();
        let others = futures::future::join_all(readers.into_iter().map(|to| {
            let client = client.clone();
            async move {
                let answer =
                    tokio::time::timeout(limit, client.call_to(&to, Request::GetRecord { key }))
                        .await;
                (to, answer)
            }
        }));
        let (entry, others) = tokio::join!(self.get_record(key), others);
        let mut out = Vec::new();
        let entry_error = match entry {
            Ok(record) => {
                out.push(RecordAnswer {
                    from: self.current_node().to_string(),
                    record,
                });
                None
            }
            Err(e) => Some(e),
        };
        for (to, answer) in others {
            let record = match answer {
                Ok(Ok(Response::Record { record })) => Some(record),
                Ok(Ok(Response::NotFound)) => None,
                Ok(Ok(other)) => {
                    debug!(node = %to, answer = %describe(&other), "record read failed");
                    continue;
                }
                Ok(Err(e)) => {
                    debug!(node = %to, error = %e, "record read failed");
                    continue;
                }
                Err(_) => {
                    debug!(node = %to, "no answer to a record read in time");
                    continue;
                }
            };
            out.push(RecordAnswer {
                from: to.to_string(),
                record,
            });
        }
        match entry_error {
            Some(e) if out.is_empty() => Err(e),
            Some(e) => {
                warn!(error = %e, "the entry node did not answer the root read; using the other members' answers");
                Ok(out)
            }
            None => Ok(out),
        }
    }
}

/// Microseconds since the Unix epoch (0 before it).
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
