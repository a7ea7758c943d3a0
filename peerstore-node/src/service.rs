//! The data service: answers data-protocol requests. Client-facing requests are routed through
//! the ring (a Chord lookup gives the key's replica set); node-to-node requests act on the local
//! store. Blocking store calls run on tokio's blocking pool.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};

use crate::driver::{Handle, Inbound, RingView};
use crate::proto::{
    key_id, BlockKey, ErrorCode, MemberInfo, NodeAddr, Request, Response, StatusReport,
    MAX_BLOCK_SIZE, MAX_DIGEST_BUCKETS, MAX_LIST_PAGE, MAX_RECORD_SIZE,
};
use crate::store::{BlockStore, RecordTable, RecordUpdate, Role, StoreError};

/// Mutable signed records (users' roots), keyed by the record key.
pub const ROOTS: RecordTable = RecordTable::MUTABLE;

/// Most data requests served at once; beyond that the driver answers "busy".
const MAX_CONCURRENT: usize = 512;
/// Attempts of a lookup before a routed request fails.
const LOOKUP_TRIES: usize = 4;

pub struct Service {
    pub handle: Handle,
    pub store: Arc<BlockStore>,
    pub replication: usize,
    /// The entangled storage layer (PutDocument, repair, scrub).
    pub entangled: Arc<crate::entangled::Entangled>,
}

impl Service {
    /// Serves inbound requests until the driver goes away.
    pub async fn serve(self: Arc<Self>, mut inbound: mpsc::Receiver<Inbound>) {
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT));
        while let Some(Inbound {
            peer,
            request,
            channel,
        }) = inbound.recv().await
        {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let kind = request.kind();
                let response = this.handle_request(request).await;
                if let Response::Error { code, message } = &response {
                    debug!(%peer, kind, ?code, %message, "request failed");
                }
                this.handle.respond(channel, response).await;
                drop(permit);
            });
        }
    }

    /// Answers one request. Boxed because routing can come back to this node (a put whose
    /// replica set includes us), which makes the future recursive.
    pub fn handle_request(&self, request: Request) -> futures::future::BoxFuture<'_, Response> {
        Box::pin(self.handle_request_inner(request))
    }

    async fn handle_request_inner(&self, request: Request) -> Response {
        match request {
            Request::Put { key, data } => self.put(key, data).await,
            Request::Get { key } => self.get(key).await,
            Request::Lookup { key } => match self.handle.lookup(key_id(&key)).await {
                Ok(res) => Response::Owner {
                    owner: member(&res.owner),
                    replicas: self
                        .replica_set_of(&res)
                        .iter()
                        .map(|a| MemberInfo {
                            id: crate::proto::ring_id(&a.peer),
                            addr: a.clone(),
                        })
                        .collect(),
                    hops: res.hops,
                },
                Err(e) => Response::error(ErrorCode::Unavailable, e),
            },
            Request::Status => match self.status().await {
                Some(s) => Response::Status(Box::new(s)),
                None => Response::error(ErrorCode::Internal, "node is shutting down"),
            },
            Request::PutRecord { key, record } => self.put_record(key, record).await,
            Request::GetRecord { key } => self.get_record(key).await,
            Request::StoreLocal { key, data } => self.store_local(key, data, Role::Replica).await,
            Request::FetchLocal { key } => self.fetch_local(key).await,
            Request::RangeDigest { from, to, buckets } => {
                if buckets == 0 || buckets > MAX_DIGEST_BUCKETS {
                    return Response::error(
                        ErrorCode::BadRequest,
                        format!("buckets must be 1..={MAX_DIGEST_BUCKETS}"),
                    );
                }
                let store = self.store.clone();
                blocking(move || {
                    store
                        .bucket_digests(&BlockKey(from.0), &BlockKey(to.0), u32::from(buckets))
                        .map(|buckets| Response::Digests {
                            buckets: buckets
                                .into_iter()
                                .map(|d| (d.digest.count, d.digest.digest))
                                .collect(),
                        })
                })
                .await
            }
            Request::ListRange {
                from,
                to,
                after,
                limit,
            } => {
                let limit = limit.clamp(1, MAX_LIST_PAGE) as usize;
                let store = self.store.clone();
                // Continuing after a cursor is listing (cursor, to].
                let start = after.unwrap_or(BlockKey(from.0));
                blocking(move || {
                    store
                        .list_range(&start, &BlockKey(to.0), Some(limit))
                        .map(|page| Response::Keys {
                            more: page.next.is_some(),
                            keys: page.keys,
                        })
                })
                .await
            }
            Request::StoreRecordLocal { key, record } => self.store_record_local(key, record).await,
            Request::HasLocal { keys } => {
                if keys.len() > MAX_LIST_PAGE as usize {
                    return Response::error(
                        ErrorCode::BadRequest,
                        format!("at most {MAX_LIST_PAGE} keys per request"),
                    );
                }
                let store = self.store.clone();
                blocking(move || {
                    let present = keys
                        .iter()
                        .map(|k| store.has(k))
                        .collect::<Result<Vec<bool>, StoreError>>()?;
                    Ok(Response::Has { present })
                })
                .await
            }
            Request::ListRecords { from, to, after } => {
                let store = self.store.clone();
                blocking(move || {
                    let (records, more) = list_record_digests(&store, from, to, after)?;
                    Ok(Response::RecordDigests { records, more })
                })
                .await
            }
            r @ (Request::PutDocument { .. }
            | Request::GetDocument { .. }
            | Request::Repair { .. }
            | Request::Audit { .. }
            | Request::Scrub { .. }
            | Request::EntangleStats
            | Request::Entangle(_)) => crate::entangled::handle(self, r).await,
            Request::FetchRecordLocal { key } => {
                let store = self.store.clone();
                blocking(move || {
                    store.record_get(ROOTS, &key.0).map(|r| match r {
                        Some(record) => Response::Record { record },
                        None => Response::NotFound,
                    })
                })
                .await
            }
        }
    }

    /// The replica set of a looked-up key: the owner and the next r-1 distinct successors.
    pub fn replica_set_of(&self, res: &chord::LookupResult<NodeAddr>) -> Vec<NodeAddr> {
        let mut set = vec![res.owner.addr.clone()];
        for s in &res.successors {
            if set.len() >= self.replication {
                break;
            }
            if !set.contains(&s.addr) {
                set.push(s.addr.clone());
            }
        }
        set
    }

    /// The replica set of `key`. A lookup that fails while the ring is repairing itself (a hop
    /// died a moment ago) is retried a few times before the request fails.
    async fn replica_set(&self, key: &BlockKey) -> Result<Vec<NodeAddr>, Response> {
        let mut delay = std::time::Duration::from_millis(100);
        let mut last = String::new();
        for _ in 0..LOOKUP_TRIES {
            match self.handle.lookup(key_id(key)).await {
                Ok(res) => return Ok(self.replica_set_of(&res)),
                Err(e) => {
                    debug!(%key, error = %e, "lookup failed, retrying");
                    last = e;
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Err(Response::error(
            ErrorCode::Unavailable,
            format!("cannot route to the owner of {key}: {last}; the ring may be repairing itself, retry shortly"),
        ))
    }

    /// Sends `request` to `to`, or serves it locally when `to` is this node.
    pub async fn call(&self, to: &NodeAddr, request: Request) -> Response {
        if *to == self.handle.local {
            return self.handle_request(request).await;
        }
        match self.handle.request(to.clone(), request).await {
            Ok(r) => r,
            Err(e) => Response::error(ErrorCode::Unavailable, e.to_string()),
        }
    }

    async fn put(&self, key: BlockKey, data: Vec<u8>) -> Response {
        if data.len() > MAX_BLOCK_SIZE {
            return Response::error(
                ErrorCode::BadRequest,
                format!("block of {} bytes exceeds {MAX_BLOCK_SIZE}", data.len()),
            );
        }
        if BlockKey::of(&data) != key {
            return Response::error(ErrorCode::BadRequest, "block bytes do not hash to its key");
        }
        let set = match self.replica_set(&key).await {
            Ok(s) => s,
            Err(r) => return r,
        };
        let need = set.len() / 2 + 1;
        let (tx, mut rx) = mpsc::channel(set.len());
        // Every replica gets its own copy of the bytes but the last, which takes the original.
        let mut data = Some(data);
        for (i, to) in set.iter().enumerate() {
            let bytes = if i + 1 == set.len() {
                data.take().unwrap_or_default()
            } else {
                data.clone().unwrap_or_default()
            };
            let tx = tx.clone();
            let to = to.clone();
            let this = self.clone_for_task();
            tokio::spawn(async move {
                let role = if i == 0 { Role::Owner } else { Role::Replica };
                let r = if to == this.handle.local {
                    // Verified above: the store need not hash it again.
                    this.store_verified(key, bytes, role).await
                } else {
                    this.call(&to, Request::StoreLocal { key, data: bytes })
                        .await
                };
                let _ = tx.send(r).await;
            });
        }
        drop(tx);
        let (mut ok, mut full, mut last_err) = (0usize, 0usize, String::new());
        while let Some(r) = rx.recv().await {
            match r {
                Response::Ok => ok += 1,
                Response::Error {
                    code: ErrorCode::Full,
                    message,
                } => {
                    full += 1;
                    last_err = message;
                }
                Response::Error { message, .. } => last_err = message,
                other => last_err = format!("unexpected answer {other:?}"),
            }
            if ok >= need {
                // The rest complete in the background; anti-entropy covers any that fail.
                return Response::Stored {
                    replicas: ok as u32,
                };
            }
        }
        if full > 0 && full + ok >= need {
            Response::error(
                ErrorCode::Full,
                format!("node full: the replica set of {key} has no room ({last_err})"),
            )
        } else {
            Response::error(
                ErrorCode::Unavailable,
                format!(
                    "block {key} reached only {ok} of the {need} replicas needed: {last_err}; retry"
                ),
            )
        }
    }

    async fn get(&self, key: BlockKey) -> Response {
        // A block is content addressed and verified on read: if this node holds a copy, it is
        // the right bytes whoever owns the key, and no hop is needed.
        if let Response::Block { data } = self.fetch_local(key).await {
            return Response::Block { data };
        }
        let set = match self.replica_set(&key).await {
            Ok(s) => s,
            Err(r) => return r,
        };
        let mut last = Response::NotFound;
        for to in set.iter().filter(|a| **a != self.handle.local) {
            match self.call(to, Request::FetchLocal { key }).await {
                Response::Block { data } if BlockKey::of(&data) == key => {
                    return Response::Block { data }
                }
                Response::Block { .. } => {
                    warn!(%key, peer = %to.peer, "replica served a block that fails its hash");
                }
                Response::NotFound => {}
                other => last = other,
            }
        }
        last
    }

    async fn store_local(&self, key: BlockKey, data: Vec<u8>, role: Role) -> Response {
        let store = self.store.clone();
        blocking(move || store.put(key, &data, role).map(|_| Response::Ok)).await
    }

    /// Stores a block whose hash the caller has just checked.
    async fn store_verified(&self, key: BlockKey, data: Vec<u8>, role: Role) -> Response {
        let store = self.store.clone();
        blocking(move || store.put_verified(key, &data, role).map(|_| Response::Ok)).await
    }

    async fn fetch_local(&self, key: BlockKey) -> Response {
        let store = self.store.clone();
        blocking(move || {
            store.get(&key).map(|b| match b {
                Some(data) => Response::Block { data },
                None => Response::NotFound,
            })
        })
        .await
    }

    async fn put_record(&self, key: BlockKey, record: Vec<u8>) -> Response {
        if record.len() > MAX_RECORD_SIZE {
            return Response::error(ErrorCode::BadRequest, "record too large");
        }
        if let Err(e) = check_record(&key, &record, None) {
            return Response::error(ErrorCode::Rejected, e);
        }
        let set = match self.replica_set(&key).await {
            Ok(s) => s,
            Err(r) => return r,
        };
        let need = set.len() / 2 + 1;
        let mut ok = 0;
        let mut last = String::new();
        let calls = set.iter().map(|to| {
            self.call(
                to,
                Request::StoreRecordLocal {
                    key,
                    record: record.clone(),
                },
            )
        });
        for r in futures::future::join_all(calls).await {
            match r {
                Response::Ok => ok += 1,
                Response::Error {
                    code: ErrorCode::Rejected,
                    message,
                } => return Response::error(ErrorCode::Rejected, message),
                Response::Error { message, .. } => last = message,
                other => last = format!("unexpected answer {other:?}"),
            }
        }
        if ok >= need {
            Response::Stored {
                replicas: ok as u32,
            }
        } else {
            Response::error(
                ErrorCode::Unavailable,
                format!("record stored on {ok} of {need} replicas needed: {last}"),
            )
        }
    }

    async fn get_record(&self, key: BlockKey) -> Response {
        let set = match self.replica_set(&key).await {
            Ok(s) => s,
            Err(r) => return r,
        };
        // Take the newest valid record any replica has: a replica that missed an update must not
        // roll the user back.
        let calls = set
            .iter()
            .map(|to| self.call(to, Request::FetchRecordLocal { key }));
        let mut best: Option<(u64, Vec<u8>)> = None;
        let mut errors = 0;
        for r in futures::future::join_all(calls).await {
            match r {
                Response::Record { record } => {
                    if let Ok(seq) = check_record(&key, &record, None) {
                        if best.as_ref().is_none_or(|(s, _)| seq > *s) {
                            best = Some((seq, record));
                        }
                    }
                }
                Response::NotFound => {}
                _ => errors += 1,
            }
        }
        match best {
            Some((_, record)) => Response::Record { record },
            None if errors == set.len() => {
                Response::error(ErrorCode::Unavailable, "no replica of the record answered")
            }
            None => Response::NotFound,
        }
    }

    async fn store_record_local(&self, key: BlockKey, record: Vec<u8>) -> Response {
        if record.len() > MAX_RECORD_SIZE {
            return Response::error(ErrorCode::BadRequest, "record too large");
        }
        let store = self.store.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut refusal = None;
            let r =
                store.record_update(ROOTS, &key.0, &record, |current, new| {
                    match check_record(&key, new, current) {
                        Ok(_) => true,
                        Err(e) => {
                            refusal = Some(e);
                            false
                        }
                    }
                });
            (r, refusal)
        })
        .await;
        match outcome {
            Ok((Ok(RecordUpdate::Stored), _)) => Response::Ok,
            Ok((Ok(RecordUpdate::Rejected { .. }), e)) => Response::error(
                ErrorCode::Rejected,
                e.unwrap_or_else(|| "record update refused".into()),
            ),
            Ok((Err(e), _)) => store_error(e),
            Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
        }
    }

    /// This node's status: ring view plus storage figures.
    pub async fn status(&self) -> Option<StatusReport> {
        let view = self.handle.view().await?;
        let store = self.store.clone();
        let (from, to) = view.ranges.owned;
        let figures = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let stats = store.stats();
            // Owned = keys in (pred, self]; everything else held is held as a replica.
            let owned = if view_has_pred(from, to) {
                store
                    .range_digest(&BlockKey(from.0), &BlockKey(to.0))?
                    .count
            } else {
                stats.roles.blocks()
            };
            let records = store.record_list(ROOTS, None, usize::MAX)?.len() as u64;
            Ok(Figures {
                owned,
                replica: stats.roles.blocks().saturating_sub(owned),
                used: stats.used_bytes,
                capacity: stats.capacity,
                records,
            })
        })
        .await
        .ok()?
        .ok()?;
        Some(status_report(&view, self.replication, &figures))
    }

    fn clone_for_task(&self) -> Arc<Service> {
        Arc::new(Service {
            handle: self.handle.clone(),
            store: self.store.clone(),
            replication: self.replication,
            entangled: self.entangled.clone(),
        })
    }
}

fn member(p: &chord::Peer<NodeAddr>) -> MemberInfo {
    MemberInfo {
        id: p.id,
        addr: p.addr.clone(),
    }
}

/// A record's key and the BLAKE3 of its bytes.
pub type RecordDigest = (BlockKey, [u8; 32]);

/// Keys and digests of the records held in (from, to], one page.
pub fn list_record_digests(
    store: &BlockStore,
    from: chord::Id,
    to: chord::Id,
    after: Option<BlockKey>,
) -> Result<(Vec<RecordDigest>, bool), StoreError> {
    // Records are few (one per user); the table is scanned in key order and filtered by range.
    let (a, b) = (BlockKey(from.0), BlockKey(to.0));
    let mut out = Vec::new();
    let mut cursor = after.map(|k| k.0);
    loop {
        let page = store.record_list(ROOTS, cursor.as_ref(), 1024)?;
        let Some(last) = page.last().map(|(k, _)| *k) else {
            return Ok((out, false));
        };
        for (k, v) in page {
            let key = BlockKey(k);
            if crate::store::in_interval(&a, &b, &key) {
                out.push((key, *blake3::hash(&v).as_bytes()));
                if out.len() >= MAX_LIST_PAGE as usize {
                    return Ok((out, true));
                }
            }
        }
        cursor = Some(last);
    }
}

/// Storage figures for status.
struct Figures {
    owned: u64,
    replica: u64,
    used: u64,
    capacity: u64,
    records: u64,
}

/// A ring of one node owns everything: its owned range is (self, self].
fn view_has_pred(from: chord::Id, to: chord::Id) -> bool {
    from != to
}

fn status_report(view: &RingView, replication: usize, stats: &Figures) -> StatusReport {
    StatusReport {
        id: view.me.id,
        addr: view.me.addr.clone(),
        member: view.member,
        predecessor: view.predecessor.as_ref().map(member),
        successors: view.successors.iter().map(member).collect(),
        distinct_fingers: view.fingers.len() as u32,
        fingers: view.fingers.iter().map(member).collect(),
        replication: replication as u32,
        owned_range: view.ranges.owned,
        keys_owned: stats.owned,
        keys_replica: stats.replica,
        bytes_used: stats.used,
        capacity: stats.capacity,
        records: stats.records,
    }
}

/// Checks a signed record against its storage key and, if given, the record it would replace.
/// Returns the record's sequence number.
fn check_record(key: &BlockKey, record: &[u8], current: Option<&[u8]>) -> Result<u64, String> {
    let new = crypto::RootRecord::decode(record).map_err(|e| format!("bad record: {e}"))?;
    if current == Some(record) {
        // Storing the record a replica already has (a retry, or anti-entropy) is not a replay.
        return Ok(new.seq);
    }
    if crypto::root_key(&new.user) != key.0 {
        return Err("record stored under a key that is not its user's root key".into());
    }
    let current = match current {
        Some(bytes) => Some(
            crypto::RootRecord::decode(bytes)
                .map_err(|e| format!("stored record unreadable: {e}"))?,
        ),
        None => None,
    };
    crypto::accept_root_update(current.as_ref(), &new).map_err(|e| e.to_string())?;
    Ok(new.seq)
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Full { .. } => Response::error(ErrorCode::Full, e.to_string()),
        StoreError::HashMismatch { .. } | StoreError::InvalidArgument(_) => {
            Response::error(ErrorCode::BadRequest, e.to_string())
        }
        StoreError::Corrupt { .. } | StoreError::Missing { .. } => {
            warn!(error = %e, "local block lost; anti-entropy will restore it");
            Response::NotFound
        }
        _ => Response::error(ErrorCode::Internal, e.to_string()),
    }
}

async fn blocking<F>(f: F) -> Response
where
    F: FnOnce() -> Result<Response, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => store_error(e),
        Err(e) => Response::error(ErrorCode::Internal, format!("store task failed: {e}")),
    }
}
