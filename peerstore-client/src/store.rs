//! The block store as the client sees it: documents (every object the client stores: packs,
//! manifest blocks, snapshot objects), content-addressed blocks, and signed mutable records.
//!
//! [`BlockStoreApi`] is the small seam between the client logic and the network. [`RingStore`]
//! speaks the node's data protocol over [`RpcClient`] (with retries, backoff and fail-over to
//! other ring members); [`MemStore`] keeps everything in memory for unit tests.
//!
//! A document's key is whatever the ring returns for it: on a plain ring (`entanglement =
//! none`) BLAKE3 of the bytes, on an entangled ring the key of the document record, which is not
//! a hash of the data. Then integrity rests on the node's document check (length and content
//! hash in the record) and on the AEAD tag and chunk-id MAC that every reader of the bytes
//! verifies (chunks, manifests and snapshot objects are all sealed).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use peerstore_proto::{
    AdminRequest, AdminResponse, BlockKey, ClientRequest as Request, ClientResponse as Response,
    ErrorCode, ErrorResponse, NodeAddr, RpcClient, RpcError, StatusReport,
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
}

impl MemStore {
    #[must_use]
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        peerstore_proto::lock(&self.inner)
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

#[async_trait]
impl BlockStoreApi for MemStore {
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
    timeout: Duration,
    policy: RetryPolicy,
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
    pub async fn connect(node: NodeAddr, timeout: Duration) -> Result<RingStore, StoreError> {
        let unreachable = |reason: String| StoreError::Unreachable {
            addr: node.to_string(),
            reason,
        };
        let client =
            RpcClient::routed(node.clone(), timeout).map_err(|e| unreachable(e.to_string()))?;
        let status = match client.call(Request::Status).await {
            Ok(Response::Status(s)) => *s,
            Ok(other) => return Err(unreachable(format!("unexpected answer {other:?}"))),
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
            timeout,
            policy: RetryPolicy::default(),
        })
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
        match RpcClient::routed(next.clone(), self.timeout) {
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
                            ErrorCode::BadRequest | ErrorCode::Forbidden => {
                                return Err(StoreError::Other(message))
                            }
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
                        },
                    };
                    self.fail_over(idx);
                }
            }
        }
        Err(last)
    }

    /// Status of the node in use.
    pub async fn status(&self) -> Result<StatusReport, StoreError> {
        match self.call(Request::Status).await? {
            Response::Status(s) => Ok(*s),
            other => Err(StoreError::Other(format!("unexpected answer {other:?}"))),
        }
    }
}

/// Asks one specific node for its status (no retries beyond one call).
pub async fn status_of(node: &NodeAddr, timeout: Duration) -> Result<StatusReport, StoreError> {
    let unreachable = |reason: String| StoreError::Unreachable {
        addr: node.to_string(),
        reason,
    };
    let client = RpcClient::start(node.clone(), timeout).map_err(|e| unreachable(e.to_string()))?;
    match client.call(Request::Status).await {
        Ok(Response::Status(s)) => Ok(*s),
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
        match self.call(Request::PutDocument { data }).await? {
            Response::DocumentStored { key } => Ok(key),
            other => Err(StoreError::Other(format!(
                "unexpected answer to put-document: {other:?}"
            ))),
        }
    }

    async fn get_document(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
        let data = match self.call(Request::GetDocument { key }).await? {
            Response::Block { data } => data,
            Response::NotFound => return Ok(None),
            other => {
                return Err(StoreError::Other(format!(
                    "unexpected answer to get-document: {other:?}"
                )))
            }
        };
        // On a plain ring the bytes hash to the key (the node verifies that on every read). On
        // an entangled ring the key names a document record, not a hash of the data, and the
        // node checked the decoded bytes against the record's length and content hash. A key
        // alone does not say which, so a mismatch is not an error here: the AEAD tag and
        // chunk-id MAC that every reader verifies before using a byte decide.
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
}
