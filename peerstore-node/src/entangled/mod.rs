//! Entangled storage in the ring (RECAST step-archive, docs/ENTANGLEMENT-RING.md).
//!
//! The node that accepts a client's [`Request::PutDocument`] is the encoder: it splits the
//! document into codewords of `s * B` bytes, picks `t` pointers per codeword (half from its
//! in-memory tail of recent parities, half from a uniform sample of the ring's parities that a
//! background task keeps prefetched), encodes with the `entangle` crate and stores only the `p`
//! self-describing parities, as ordinary content-addressed blocks. Codeword records and the
//! document record are content-addressed and immutable, kept in the store's record table
//! ([`meta::TABLE`]); reverse references are union-merged entries in the store's
//! `REVERSE_REFS` table at `refs_position(parity)`. Both live on `m` nodes (the
//! `metadata_replication`, larger than the data's r: see [`meta`]), with their own
//! anti-entropy ([`meta`], [`refs`]).
//!
//! - [`read`]: [`Request::GetDocument`], fetching symbols in parallel, first `s + t` that verify.
//! - [`repair`]: the repair worker, [`Request::Repair`] and [`Request::Audit`].
//! - [`scrub`]: replica management ([`Request::Scrub`]) and [`Request::EntangleStats`] for du.
//!
//! Scrubbed parities keep one copy in a second block store (`<data-dir>/single`), which the
//! replication anti-entropy does not see, so it does not put the removed replicas back.

pub mod format;
pub mod meta;
pub mod read;
pub mod refs;
pub mod repair;
pub mod scrub;
pub mod write;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::proto::{key_id, BlockKey, ErrorCode, NodeAddr, Request, Response};
use crate::service::Service;
use crate::store::BlockStore;

/// `type` of the ring's entanglement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntanglementType {
    /// RECAST step-archive: documents are stored as parities only.
    Step,
    /// Plain replicated blocks.
    None,
}

/// The ring's entanglement settings (`entanglement = { type = "step", s = 4, t = 8, p = 12,
/// block_size = 262144 }` in the node's TOML). Every node of a ring must use the same values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntanglementConfig {
    /// "step" or "none".
    #[serde(rename = "type")]
    pub kind: EntanglementType,
    /// Source blocks per codeword.
    pub s: u16,
    /// Pointers per codeword.
    pub t: u16,
    /// Parities per codeword.
    pub p: u16,
    /// The ring's fixed block size B in bytes.
    pub block_size: u32,
    /// Newest parities the encoder keeps in memory for tail pointers (the tail window).
    pub tail_window: usize,
    /// How often the repair worker checks the codewords this node owns, in milliseconds.
    pub repair_ms: u64,
    /// m: codeword records, document records and reverse references live on the owner of
    /// their ring position and its next m - 1 successors (every node in a ring of at most m),
    /// so that losing nodes loses metadata far less often than data
    /// (docs/ENTANGLEMENT-RING.md, "Metadata replication"). At least `replication`.
    pub metadata_replication: usize,
}

impl Default for EntanglementConfig {
    /// (4, 8, 12) with 256 KiB blocks: 3x like (2, 10, 6) but without the 50% cliff, and half
    /// the reads and coding work per byte (docs/ENTANGLEMENT-RING.md, "Defaults").
    fn default() -> Self {
        EntanglementConfig {
            kind: EntanglementType::Step,
            s: 4,
            t: 8,
            p: 12,
            block_size: 256 * 1024,
            tail_window: 100,
            repair_ms: 60_000,
            metadata_replication: 10,
        }
    }
}

impl EntanglementConfig {
    /// The code parameters, `None` for type "none".
    #[must_use]
    pub fn params(&self) -> Option<entangle::Params> {
        match self.kind {
            EntanglementType::Step => Some(entangle::Params::new(
                self.s,
                self.t,
                self.p,
                self.block_size,
            )),
            EntanglementType::None => None,
        }
    }

    /// Checks the parameters and that a parity fits in one block of the protocol.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = self.params() {
            p.validate().map_err(|e| format!("entanglement: {e}"))?;
            let stored = entangle::block::header_len(p.t(), p.p()) + p.block();
            if stored > crate::proto::MAX_BLOCK_SIZE {
                return Err(format!(
                    "entanglement: a parity of {stored} bytes exceeds the block bound {}",
                    crate::proto::MAX_BLOCK_SIZE
                ));
            }
            if self.repair_ms == 0 {
                return Err("entanglement: repair_ms must be positive".into());
            }
        }
        Ok(())
    }

    /// Checks `metadata_replication` against the ring's replication factor r: metadata must
    /// be at least as replicated as the data it describes.
    pub fn validate_metadata(&self, replication: usize) -> Result<(), String> {
        if self.params().is_some() && self.metadata_replication < replication.max(1) {
            return Err(format!(
                "entanglement: metadata_replication ({}) must be at least replication ({})",
                self.metadata_replication, replication
            ));
        }
        Ok(())
    }
}

/// Replica management policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScrubMode {
    /// A parity pointed at by at least `threshold` codewords keeps one copy.
    Pointers { threshold: u32 },
    /// A parity that is not among the `blocks` most recently written ones keeps one copy.
    Window { blocks: u64 },
}

/// What a scrub did (summed over the nodes it ran on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    /// Nodes that ran it.
    pub nodes: u32,
    /// Replicated parities examined.
    pub examined: u64,
    /// Parities brought down to one copy in this run.
    pub scrubbed: u64,
    /// Replica files removed from disk.
    pub replicas_removed: u64,
    /// Bytes those files held.
    pub bytes_freed: u64,
    /// Parities already at one copy.
    pub single: u64,
    /// Errors (the parity keeps its replicas; a later run retries).
    pub errors: u64,
}

impl ScrubReport {
    fn add(&mut self, o: &ScrubReport) {
        self.nodes += o.nodes;
        self.examined += o.examined;
        self.scrubbed += o.scrubbed;
        self.replicas_removed += o.replicas_removed;
        self.bytes_freed += o.bytes_freed;
        self.single += o.single;
        self.errors += o.errors;
    }
}

/// What a repair did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairSummary {
    /// Passes over the ring (a pass can unlock codewords for the next one).
    pub passes: u32,
    /// Codewords checked (over all passes).
    pub checked: u64,
    /// Codewords found missing symbols.
    pub damaged: u64,
    /// Blocks rebuilt, verified and stored.
    pub rebuilt: u64,
    /// Codewords still undecodable at the end.
    pub undecodable: u64,
    /// Requested keys (targeted repair) still missing at the end.
    pub still_missing: Vec<BlockKey>,
    /// Errors (unreachable nodes, stores that failed).
    pub errors: u64,
}

impl RepairSummary {
    fn add(&mut self, o: &RepairSummary) {
        self.checked += o.checked;
        self.damaged += o.damaged;
        self.rebuilt += o.rebuilt;
        self.undecodable += o.undecodable;
        self.errors += o.errors;
    }
}

/// One damaged codeword found by an audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodewordAudit {
    /// Key of its codeword-record block.
    pub record: BlockKey,
    /// Its codeword id.
    pub codeword: [u8; 32],
    /// Its pointers and parities that no node holds.
    pub missing: Vec<BlockKey>,
    /// Whether the symbols still held decode it (`missing <= p - s`).
    pub decodable: bool,
    /// Blocks rebuilt for it (audit with `fix`).
    pub rebuilt: u32,
}

/// One page of an audit over the codeword records of the ring, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    /// Codewords checked in this page.
    pub checked: u64,
    /// The damaged ones.
    pub damaged: Vec<CodewordAudit>,
    /// Cursor for the next page (`Audit { after: next }`); `None` at the end of the ring.
    pub next: Option<BlockKey>,
}

/// Storage figures for `du`, summed over the ring (or one node).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntangleStats {
    /// "step" or "none".
    pub kind: String,
    /// (s, t, p, B) when step.
    pub params: Option<entangle::Params>,
    /// Replication factor r.
    pub replication: u32,
    /// Nodes counted.
    pub nodes: u32,
    /// Codewords in the ring (each counted once, by its record's owner).
    pub codewords: u64,
    /// Document bytes they carry.
    pub logical_bytes: u64,
    /// Parity copies held as replicated blocks.
    pub parity_copies_replicated: u64,
    /// Parity copies held as single copies (scrubbed).
    pub parity_copies_single: u64,
    /// Bytes of all parity copies.
    pub parity_bytes: u64,
    /// Bytes of all other blocks held (records, documents, plain blocks, all copies).
    pub other_bytes: u64,
    /// Reverse-reference entries held (all copies).
    pub refs_entries: u64,
}

impl EntangleStats {
    fn add(&mut self, o: &EntangleStats) {
        self.nodes += o.nodes;
        self.codewords += o.codewords;
        self.logical_bytes += o.logical_bytes;
        self.parity_copies_replicated += o.parity_copies_replicated;
        self.parity_copies_single += o.parity_copies_single;
        self.parity_bytes += o.parity_bytes;
        self.other_bytes += o.other_bytes;
        self.refs_entries += o.refs_entries;
    }

    /// Stored parity bytes per document byte (RECAST: `p/s x r` before scrub, `p/s` after a
    /// full scrub, plus the header and padding).
    #[must_use]
    pub fn overhead(&self) -> f64 {
        if self.logical_bytes == 0 {
            0.0
        } else {
            self.parity_bytes as f64 / self.logical_bytes as f64
        }
    }
}

/// Node-to-node requests of the entangled layer (carried in [`Request::Entangle`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntRequest {
    /// A block from this node's replicated or single-copy store ([`EntResponse::Block`]).
    FetchSymbol { key: BlockKey },
    /// Which keys this node holds in either store ([`EntResponse::Has`]).
    HasSymbols { keys: Vec<BlockKey> },
    /// Merge reverse-reference entries into this node's table.
    StoreRefs { entries: Vec<RefsEntry> },
    /// Reverse-reference entries at these positions ([`EntResponse::Refs`]).
    FetchRefs { positions: Vec<BlockKey> },
    /// Positions and digests of entries in (from, to], after `after` ([`EntResponse::RefDigests`]).
    ListRefs {
        from: chord::Id,
        to: chord::Id,
        after: Option<BlockKey>,
    },
    /// Up to `count` random parity keys this node knows (from its reverse-reference table).
    SampleParities { count: u32 },
    /// Drop the replicated copy of `key` (scrub); refused unless `holder` holds the single copy.
    DropReplica { key: BlockKey, holder: NodeAddr },
    /// Which of `keys` this node holds as single (scrubbed) copies ([`EntResponse::Has`]).
    HasSingle { keys: Vec<BlockKey> },
    /// Keep the single copy of a scrubbed parity (hand-off when ownership moves).
    StoreSingle { key: BlockKey, data: Vec<u8> },
    /// Run one repair round over the codeword records this node owns.
    RepairLocal,
    /// Audit (and with `fix`, repair) the records this node owns in (after, its id].
    AuditLocal {
        after: BlockKey,
        limit: u32,
        fix: bool,
    },
    /// Scrub the parities this node owns; `cutoff_us` is the window mode's age limit.
    ScrubLocal {
        mode: ScrubMode,
        cutoff_us: Option<u64>,
    },
    /// Creation times of the newest `count` parities whose entries this node owns.
    NewestCreated { count: u64 },
    /// Set (or with `None` clear) the scrub daemon on this node.
    SetScrubDaemon { policy: Option<(ScrubMode, u64)> },
    /// This node's figures for du.
    LocalStats,
    // Appended (postcard numbers variants in order): the metadata record table.
    /// Keep these codeword / document records (each keyed by its BLAKE3; anything that is not
    /// a record is refused).
    StoreRecords { records: Vec<Vec<u8>> },
    /// The records at `keys` held here ([`EntResponse::Records`]).
    FetchRecords { keys: Vec<BlockKey> },
    /// Keys of the records held here in (from, to], after `after` ([`EntResponse::RecordKeys`]).
    ListRecords {
        from: chord::Id,
        to: chord::Id,
        after: Option<BlockKey>,
    },
}

/// Answers to [`EntRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntResponse {
    Block {
        data: Vec<u8>,
    },
    NotFound,
    Has {
        present: Vec<bool>,
    },
    Refs {
        entries: Vec<Option<RefsEntry>>,
    },
    RefDigests {
        entries: Vec<(BlockKey, [u8; 32])>,
        more: bool,
    },
    Keys {
        keys: Vec<BlockKey>,
    },
    Repaired(RepairSummary),
    Audit(AuditPage),
    Scrubbed(ScrubReport),
    Created {
        times: Vec<u64>,
    },
    Stats(EntangleStats),
    Ok,
    // Appended (postcard numbers variants in order).
    /// Records in the order asked for (`None`: not held); shorter than the request when the
    /// answer reached its size bound (ask again for the rest).
    Records {
        records: Vec<Option<Vec<u8>>>,
    },
    RecordKeys {
        keys: Vec<BlockKey>,
        more: bool,
    },
}

pub use format::{DocRecord, RefsEntry};

/// A stored block with shared bytes.
pub type Held = (BlockKey, Arc<Vec<u8>>);

/// The encoder's memory: the newest parities it wrote (tail) and a uniform sample of the
/// ring's parities (pool), both with their bytes so writes never wait for pointer fetches.
pub struct EncoderState {
    pub tail: VecDeque<Held>,
    pub pool: Vec<Held>,
    pub rng: ChaCha8Rng,
}

/// Codeword records found in the record table, by key, and keys known not to be codeword
/// records (document records).
pub type RecordCache = (
    BTreeMap<BlockKey, Arc<entangle::CodewordRecord>>,
    BTreeSet<BlockKey>,
);

/// The entangled layer of one node.
pub struct Entangled {
    pub config: EntanglementConfig,
    pub replication: usize,
    /// Single copies of scrubbed parities.
    pub single: Arc<BlockStore>,
    pub encoder: Mutex<EncoderState>,
    /// Codeword records found in the record table, by key (a cache: records are immutable),
    /// and keys known to be document records.
    pub records: Mutex<RecordCache>,
    pub scrub_daemon: Mutex<Option<(ScrubMode, u64)>>,
}

impl Entangled {
    pub fn new(config: EntanglementConfig, replication: usize, single: Arc<BlockStore>) -> Self {
        Entangled {
            config,
            replication,
            single,
            encoder: Mutex::new(EncoderState {
                tail: VecDeque::new(),
                pool: Vec::new(),
                rng: ChaCha8Rng::from_entropy(),
            }),
            records: Mutex::new((BTreeMap::new(), BTreeSet::new())),
            scrub_daemon: Mutex::new(None),
        }
    }

    /// The code parameters, `None` for type "none".
    #[must_use]
    pub fn params(&self) -> Option<entangle::Params> {
        self.config.params()
    }

    /// m, the number of nodes that hold each piece of metadata.
    #[must_use]
    pub fn metadata_replication(&self) -> usize {
        self.config
            .metadata_replication
            .max(self.replication)
            .max(1)
    }

    /// Size of a stored parity of this ring.
    #[must_use]
    pub fn parity_size(&self) -> Option<u64> {
        self.params()
            .map(|p| (entangle::block::header_len(p.t(), p.p()) + p.block()) as u64)
    }
}

/// Locks a mutex, using the data even if a panicking thread poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers the entangled layer's requests (client-facing and [`Request::Entangle`]).
pub async fn handle(svc: &Service, request: Request) -> Response {
    match request {
        Request::PutDocument { data } => write::put_document(svc, data).await,
        Request::GetDocument { key } => read::get_document(svc, key).await,
        Request::Repair { keys } => Response::Repaired(repair::repair_ring(svc, keys).await),
        Request::Audit { after, limit, fix } => {
            match repair::audit_ring(svc, after, limit, fix).await {
                Ok(p) => Response::AuditPage(p),
                Err(e) => Response::error(ErrorCode::Unavailable, e),
            }
        }
        Request::Scrub {
            mode,
            once,
            interval_ms,
        } => scrub::scrub_request(svc, mode, once, interval_ms).await,
        Request::EntangleStats => match scrub::ring_stats(svc).await {
            Ok(s) => Response::EntangleStats(Box::new(s)),
            Err(e) => Response::error(ErrorCode::Unavailable, e),
        },
        Request::Entangle(r) => match local(svc, r).await {
            Ok(r) => Response::Entangle(r),
            Err(e) => e,
        },
        other => {
            debug!(kind = other.kind(), "not an entangled request");
            Response::error(ErrorCode::BadRequest, "not an entangled request")
        }
    }
}

async fn local(svc: &Service, r: EntRequest) -> Result<EntResponse, Response> {
    let ent = &svc.entangled;
    Ok(match r {
        EntRequest::FetchSymbol { key } => match read::fetch_local(svc, key).await {
            Some(data) => EntResponse::Block { data },
            None => EntResponse::NotFound,
        },
        EntRequest::HasSymbols { keys } => {
            if keys.len() > crate::proto::MAX_LIST_PAGE as usize {
                return Err(Response::error(ErrorCode::BadRequest, "too many keys"));
            }
            let (main, single) = (svc.store.clone(), ent.single.clone());
            let present = blocking(move || {
                keys.iter()
                    .map(|k| Ok(main.has(k)? || single.has(k)?))
                    .collect::<Result<Vec<bool>, crate::store::StoreError>>()
            })
            .await?;
            EntResponse::Has { present }
        }
        EntRequest::HasSingle { keys } => {
            if keys.len() > crate::proto::MAX_LIST_PAGE as usize {
                return Err(Response::error(ErrorCode::BadRequest, "too many keys"));
            }
            let single = ent.single.clone();
            let present = blocking(move || {
                keys.iter()
                    .map(|k| single.has(k))
                    .collect::<Result<Vec<bool>, crate::store::StoreError>>()
            })
            .await?;
            EntResponse::Has { present }
        }
        r @ (EntRequest::StoreRecords { .. }
        | EntRequest::FetchRecords { .. }
        | EntRequest::ListRecords { .. }) => meta::serve(svc, r).await?,
        EntRequest::StoreRefs { entries } => {
            refs::merge_local(svc, entries).await?;
            EntResponse::Ok
        }
        EntRequest::FetchRefs { positions } => {
            if positions.len() > crate::proto::MAX_LIST_PAGE as usize {
                return Err(Response::error(ErrorCode::BadRequest, "too many positions"));
            }
            EntResponse::Refs {
                entries: refs::get_local(svc, positions).await?,
            }
        }
        EntRequest::ListRefs { from, to, after } => {
            let (entries, more) = refs::list_local(svc, from, to, after).await?;
            EntResponse::RefDigests { entries, more }
        }
        EntRequest::SampleParities { count } => EntResponse::Keys {
            keys: refs::sample_local(svc, count.min(256) as usize).await?,
        },
        EntRequest::DropReplica { key, holder } => {
            EntResponse::Stats(scrub::drop_replica(svc, key, holder).await?)
        }
        EntRequest::StoreSingle { key, data } => {
            let single = ent.single.clone();
            blocking(move || {
                single
                    .put(key, &data, crate::store::Role::Owner)
                    .map(|_| ())
            })
            .await?;
            EntResponse::Ok
        }
        EntRequest::RepairLocal => EntResponse::Repaired(repair::repair_local(svc).await),
        EntRequest::AuditLocal { after, limit, fix } => {
            EntResponse::Audit(repair::audit_local(svc, after, limit, fix).await?)
        }
        EntRequest::ScrubLocal { mode, cutoff_us } => {
            EntResponse::Scrubbed(scrub::scrub_local(svc, mode, cutoff_us).await)
        }
        EntRequest::NewestCreated { count } => EntResponse::Created {
            times: refs::newest_created(svc, count).await?,
        },
        EntRequest::SetScrubDaemon { policy } => {
            *lock(&ent.scrub_daemon) = policy;
            info!(?policy, "scrub daemon set");
            EntResponse::Ok
        }
        EntRequest::LocalStats => EntResponse::Stats(scrub::local_stats(svc).await?),
    })
}

/// Runs a store call on the blocking pool, mapping errors to a response.
pub async fn blocking<T, F>(f: F) -> Result<T, Response>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Response::error(ErrorCode::Internal, e.to_string())),
        Err(e) => Err(Response::error(ErrorCode::Internal, e.to_string())),
    }
}

/// Sends an entangled request to `to` (or serves it here).
pub async fn call(svc: &Service, to: &NodeAddr, r: EntRequest) -> Result<EntResponse, String> {
    match svc.call(to, Request::Entangle(r)).await {
        Response::Entangle(r) => Ok(r),
        Response::Error { message, .. } => Err(message),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// The replica set of `key` (a Chord lookup, retried while the ring repairs itself).
pub async fn locate(svc: &Service, key: &BlockKey) -> Result<Vec<NodeAddr>, String> {
    let mut last = String::new();
    let mut delay = Duration::from_millis(100);
    for _ in 0..4 {
        match svc.handle.lookup(key_id(key)).await {
            Ok(res) => return Ok(svc.replica_set_of(&res)),
            Err(e) => last = e,
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    Err(format!("cannot route to {key}: {last}"))
}

/// Every ring member this node can find, sorted by ring id: its own view, then the successor
/// lists of the members it learns of (members that do not answer within 3 s are left out).
pub async fn members(svc: &Service) -> Vec<(chord::Id, NodeAddr)> {
    let Some(view) = svc.handle.view().await else {
        return Vec::new();
    };
    let mut todo: Vec<(chord::Id, NodeAddr)> = view
        .successors
        .iter()
        .chain(view.predecessors.iter())
        .chain(view.fingers.iter())
        .map(|p| (p.id, p.addr.clone()))
        .collect();
    let mut asked: BTreeSet<chord::Id> = BTreeSet::new();
    asked.insert(view.me.id);
    let mut alive: BTreeMap<chord::Id, NodeAddr> = BTreeMap::new();
    alive.insert(view.me.id, view.me.addr.clone());
    while !todo.is_empty() {
        let batch: Vec<(chord::Id, NodeAddr)> =
            todo.drain(..).filter(|(id, _)| asked.insert(*id)).collect();
        let answers = futures::future::join_all(batch.iter().map(|(_, a)| async move {
            tokio::time::timeout(Duration::from_secs(3), svc.call(a, Request::Status)).await
        }))
        .await;
        for ((id, addr), ans) in batch.into_iter().zip(answers) {
            if let Ok(Response::Status(s)) = ans {
                alive.insert(id, addr);
                for m in &s.successors {
                    if !asked.contains(&m.id) {
                        todo.push((m.id, m.addr.clone()));
                    }
                }
            }
        }
    }
    alive.into_iter().collect()
}

/// Microseconds since the Unix epoch.
#[must_use]
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The background work of the entangled layer: record and reverse-reference anti-entropy and the
/// single-copy hand-off every `period`, the pointer-pool prefetch, the repair worker every
/// `repair_ms`, and the scrub daemon when one is set.
pub async fn run(svc: Arc<Service>, period: Duration) {
    if svc.entangled.params().is_none() {
        return;
    }
    let _prefetch = AbortOnDrop(tokio::spawn(write::prefetch_loop(svc.clone())));
    let repair_every = Duration::from_millis(svc.entangled.config.repair_ms);
    let mut last_repair = tokio::time::Instant::now();
    let mut last_scrub = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(period).await;
        if svc.handle.view().await.is_none() {
            return;
        }
        let r = meta::anti_entropy(&svc).await;
        if r.0 + r.1 > 0 {
            debug!(pushed = r.0, pulled = r.1, "record anti-entropy");
        }
        let r = refs::anti_entropy(&svc).await;
        if r.0 + r.1 > 0 {
            debug!(pushed = r.0, pulled = r.1, "reverse-reference anti-entropy");
        }
        scrub::hand_off_singles(&svc).await;
        scrub::drop_stale(&svc).await;
        let singles = scrub::owned_singles(&svc).await;
        let (n, _) = scrub::redrop_singles(&svc, &singles).await;
        if n > 0 {
            debug!(n, "replicated copies of single-copy parities dropped again");
        }
        if last_repair.elapsed() >= repair_every {
            last_repair = tokio::time::Instant::now();
            let s = repair::repair_local(&svc).await;
            if s.rebuilt > 0 || s.undecodable > 0 {
                info!(?s, "repair worker round");
            }
        }
        let daemon = *lock(&svc.entangled.scrub_daemon);
        if let Some((mode, every_ms)) = daemon {
            if last_scrub.elapsed() >= Duration::from_millis(every_ms.max(1)) {
                last_scrub = tokio::time::Instant::now();
                let cutoff = match mode {
                    ScrubMode::Window { blocks } => scrub::window_cutoff(&svc, blocks).await.ok(),
                    ScrubMode::Pointers { .. } => None,
                };
                if matches!(mode, ScrubMode::Pointers { .. }) || cutoff.is_some() {
                    let r = scrub::scrub_local(&svc, mode, cutoff.flatten()).await;
                    if r.scrubbed > 0 {
                        info!(?r, "scrub daemon round");
                    }
                }
            }
        }
    }
}

/// Aborts a task when dropped (the prefetcher dies with the worker).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    #[test]
    fn config_parses_and_validates() {
        let c: NodeConfig = toml::from_str(
            "replication = 3\nentanglement = { type = \"step\", s = 2, t = 10, p = 6 }",
        )
        .unwrap();
        assert_eq!(
            c.entanglement.params(),
            Some(entangle::Params::new(2, 10, 6, 256 * 1024))
        );
        c.validate().unwrap();
        let d = NodeConfig::default();
        assert_eq!(
            d.entanglement.params(),
            Some(entangle::Params::new(4, 8, 12, 256 * 1024))
        );
        d.validate().unwrap();
        let none: NodeConfig = toml::from_str("entanglement = { type = \"none\" }").unwrap();
        assert_eq!(none.entanglement.params(), None);
        none.validate().unwrap();
        let bad: NodeConfig =
            toml::from_str("entanglement = { type = \"step\", s = 6, p = 4 }").unwrap();
        assert!(bad.validate().is_err());
        let huge: NodeConfig = toml::from_str("entanglement = { block_size = 8388608 }").unwrap();
        assert!(
            huge.validate().is_err(),
            "a parity must fit one protocol block"
        );
        assert_eq!(d.entanglement.metadata_replication, 10);
        let m: NodeConfig =
            toml::from_str("replication = 3\n[entanglement]\nmetadata_replication = 5").unwrap();
        m.validate().unwrap();
        assert_eq!(m.entanglement.metadata_replication, 5);
        let low: NodeConfig = toml::from_str(
            "replication = 4\nsuccessors = 8\n[entanglement]\nmetadata_replication = 3",
        )
        .unwrap();
        assert!(low.validate().is_err(), "m must be at least r");
        let plain: NodeConfig = toml::from_str(
            "replication = 4\nsuccessors = 8\n[entanglement]\ntype = \"none\"\nmetadata_replication = 3",
        )
        .unwrap();
        plain.validate().unwrap();
        assert!(toml::from_str::<NodeConfig>("entanglement = { type = \"rs\" }").is_err());
        assert!(toml::from_str::<NodeConfig>("entanglement = { q = 1 }").is_err());
    }

    #[test]
    fn requests_round_trip_on_the_wire() {
        let reqs = vec![
            Request::PutDocument { data: vec![1, 2] },
            Request::Scrub {
                mode: ScrubMode::Window { blocks: 5 },
                once: false,
                interval_ms: 10,
            },
            Request::Entangle(EntRequest::DropReplica {
                key: BlockKey([3; 32]),
                holder: NodeAddr {
                    peer: libp2p::PeerId::random(),
                    addr: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                },
            }),
            Request::Entangle(EntRequest::StoreRecords {
                records: vec![vec![1, 2, 3]],
            }),
            Request::Entangle(EntRequest::ListRecords {
                from: chord::Id([1; 32]),
                to: chord::Id([2; 32]),
                after: Some(BlockKey([4; 32])),
            }),
        ];
        let answer = Response::Entangle(EntResponse::Records {
            records: vec![None, Some(vec![5; 10])],
        });
        let bytes = crate::proto::encode_frame(&answer, crate::proto::MAX_DATA_FRAME).unwrap();
        assert_eq!(
            crate::proto::decode_frame::<Response>(&bytes).unwrap(),
            answer
        );
        for r in reqs {
            let bytes = crate::proto::encode_frame(&r, crate::proto::MAX_DATA_FRAME).unwrap();
            let back: Request = crate::proto::decode_frame(&bytes).unwrap();
            assert_eq!(back, r);
        }
    }
}
