//! The ring helper: the one place where the node's subsystems locate a key's holders, call
//! other members and wait for quorums (in the spirit of Garage's `RpcHelper`).
//!
//! - [`Ring::lookup`] and [`Ring::locate`]: a Chord lookup with one retry policy (a hop that
//!   died a moment ago is routed around by the next try), and the first `n` distinct members
//!   from the key's owner on (the replica set for `n = r`, the metadata set for `n = m`).
//! - [`Ring::call`]: one member request, served in-process when the member is this node, with
//!   typed errors ([`RingError`]) that keep the wire's [`ErrorCode`] from end to end.
//! - [`Ring::call_quorum`]: the same request to a set of members, returning once a quorum
//!   answered well; the others complete in the background.
//! - [`Ring::members`]: every member this node can find.
//!
//! The node's inbound member service registers itself as the [`LocalMember`] so that calls to
//! this node never go through the network or back through the driver.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use peerstore_proto::{
    key_id, ring_id, BlockKey, EntRequest, EntResponse, ErrorCode, ErrorResponse, MemberRequest,
    MemberResponse, NodeAddr,
};
use tokio::sync::mpsc;
use tracing::debug;

use crate::driver::{Handle, RingView};
use crate::placement::{Place, Placements};
use crate::store::StoreError;

/// Attempts of a lookup before it fails.
const LOOKUP_TRIES: usize = 4;
/// Wait before the first retry of a lookup (doubled each time).
const LOOKUP_BACKOFF: Duration = Duration::from_millis(100);
/// How long [`Ring::members`] waits for one member's status.
const STATUS_WAIT: Duration = Duration::from_secs(3);
/// How long a member's place is waited for.
const PLACE_WAIT: Duration = Duration::from_secs(2);

/// A failed ring operation: the code the wire carries, and a message that says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RingError {
    pub code: ErrorCode,
    pub message: String,
}

impl RingError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RingError {
        RingError {
            code,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> RingError {
        RingError::new(ErrorCode::Unavailable, message)
    }

    pub fn bad_request(message: impl Into<String>) -> RingError {
        RingError::new(ErrorCode::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> RingError {
        RingError::new(ErrorCode::Internal, message)
    }

    /// The error as an answer of any protocol.
    pub fn to_response<R: ErrorResponse>(&self) -> R {
        R::error(self.code, self.message.clone())
    }

    /// An unexpected answer of a member.
    pub fn unexpected(answer: &impl std::fmt::Debug) -> RingError {
        RingError::internal(format!("unexpected answer {answer:?}"))
    }
}

/// Subsystems whose errors are messages keep the message.
impl From<RingError> for String {
    fn from(e: RingError) -> String {
        e.message
    }
}

/// The one mapping of store errors to wire errors: a full store stays "node full" however
/// many hops away it is.
impl From<StoreError> for RingError {
    fn from(e: StoreError) -> RingError {
        let code = match &e {
            StoreError::Full { .. } => ErrorCode::Full,
            StoreError::HashMismatch { .. } | StoreError::InvalidArgument(_) => {
                ErrorCode::BadRequest
            }
            _ => ErrorCode::Internal,
        };
        RingError::new(code, e.to_string())
    }
}

/// Runs a store call on tokio's blocking pool.
pub async fn blocking<T, F>(f: F) -> Result<T, RingError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(RingError::from),
        Err(e) => Err(RingError::internal(format!("store task failed: {e}"))),
    }
}

/// This node's answerer of member requests (the inbound member service).
pub trait LocalMember: Send + Sync {
    fn serve_member(&self, request: MemberRequest) -> BoxFuture<'_, MemberResponse>;
}

/// What [`Ring::call_quorum`] got: the good answers (in arrival order) and the errors, at the
/// moment the quorum was reached or every member had answered.
#[derive(Debug, Default)]
pub struct QuorumOutcome {
    pub ok: Vec<(NodeAddr, MemberResponse)>,
    pub errors: Vec<(NodeAddr, RingError)>,
}

impl QuorumOutcome {
    /// The most telling error: "node full" if any member was full, else the last one.
    #[must_use]
    pub fn worst(&self) -> Option<&RingError> {
        self.errors
            .iter()
            .map(|(_, e)| e)
            .find(|e| e.code == ErrorCode::Full)
            .or_else(|| self.errors.last().map(|(_, e)| e))
    }
}

/// The node's view of the ring as its subsystems use it.
pub struct Ring {
    pub handle: Handle,
    /// Replication factor r.
    pub replication: usize,
    local: OnceLock<Weak<dyn LocalMember>>,
    /// This node's own Chord lookups (routing its requests), for `/metrics`.
    pub lookups: LookupCounters,
    /// Where this node runs (`--host`, `--zone`).
    pub place: Place,
    /// Where the members this node asked run (module `placement`; the driver forgets a member
    /// whose connections all close).
    pub placements: Arc<Placements>,
}

/// Counters of the Chord lookups a node runs for itself: how many answered, how many failed
/// (after the retries), and the remote hops of those that answered.
#[derive(Debug, Default)]
pub struct LookupCounters {
    pub answered: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub hops: std::sync::atomic::AtomicU64,
}

impl LookupCounters {
    fn record<T>(&self, res: &Result<chord::LookupResult<T>, String>) {
        use std::sync::atomic::Ordering::Relaxed;
        match res {
            Ok(r) => {
                self.answered.fetch_add(1, Relaxed);
                self.hops.fetch_add(u64::from(r.hops), Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Relaxed);
            }
        }
    }

    /// (answered, failed, hops) so far.
    #[must_use]
    pub fn snapshot(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.answered.load(Relaxed),
            self.failed.load(Relaxed),
            self.hops.load(Relaxed),
        )
    }
}

impl Ring {
    #[must_use]
    pub fn new(handle: Handle, replication: usize) -> Ring {
        Ring {
            replication: replication.max(1),
            local: OnceLock::new(),
            lookups: LookupCounters::default(),
            place: Place::this_machine(),
            placements: handle.placements.clone(),
            handle,
        }
    }

    /// Runs at `place` (default: this machine, [`Place::this_machine`]).
    #[must_use]
    pub fn with_place(mut self, place: Place) -> Ring {
        self.place = place;
        self
    }

    /// Registers this node's member service (once).
    pub fn set_local(&self, local: Weak<dyn LocalMember>) {
        let _ = self.local.set(local);
    }

    /// This node's address.
    #[must_use]
    pub fn me(&self) -> &NodeAddr {
        &self.handle.local
    }

    /// The driver's view of the ring; `None` once the node shuts down.
    pub async fn view(&self) -> Option<RingView> {
        self.handle.view().await
    }

    /// The key range this node owns, once it is a member with a predecessor (before that, an
    /// anti-entropy round has no range to compare).
    pub async fn settled_owned_range(&self) -> Option<(chord::Id, chord::Id)> {
        let view = self.view().await?;
        (view.member && view.predecessor.is_some()).then_some(view.ranges.owned)
    }

    /// A Chord lookup, retried while the ring repairs itself (a hop died a moment ago).
    pub async fn lookup(&self, id: chord::Id) -> Result<chord::LookupResult<NodeAddr>, RingError> {
        let mut delay = LOOKUP_BACKOFF;
        let mut last = String::new();
        for attempt in 0..LOOKUP_TRIES {
            let res = self.handle.lookup(id).await;
            self.lookups.record(&res);
            match res {
                Ok(res) => return Ok(res),
                Err(e) => {
                    debug!(?id, error = %e, attempt, "lookup failed");
                    last = e;
                }
            }
            if attempt + 1 < LOOKUP_TRIES {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(RingError::unavailable(format!(
            "cannot route to the owner of {}: {last}; the ring may be repairing itself, retry shortly",
            BlockKey(id.0)
        )))
    }

    /// The first `n` distinct members from `key`'s owner on, in ring order (fewer only in a
    /// ring of fewer than `n` members): its replica set for `n = r`.
    pub async fn locate(&self, key: &BlockKey, n: usize) -> Result<Vec<NodeAddr>, RingError> {
        let res = self.lookup(key_id(key)).await?;
        Ok(self.locate_from(&res, n).await)
    }

    /// [`Ring::locate`] from a lookup already made.
    async fn locate_from(&self, res: &chord::LookupResult<NodeAddr>, n: usize) -> Vec<NodeAddr> {
        let mut set = first_distinct(&res.owner.addr, res.successors.iter().map(|p| &p.addr), n);
        self.extend(&mut set, n).await;
        set
    }

    /// The replica set of `key`: its owner and r - 1 of the next members, chosen over hosts
    /// and zones ([`crate::placement::choose`] over the owner and its next
    /// [`crate::placement::window`] - 1 members); in ring order, the owner first.
    pub async fn replica_set(&self, key: &BlockKey) -> Result<Vec<NodeAddr>, RingError> {
        let res = self.lookup(key_id(key)).await?;
        Ok(self.replica_set_from(&res).await)
    }

    /// The replica sets of many keys, with one lookup per run of keys that share an owner:
    /// the keys are taken in ring order, and a key between the last key looked up and that
    /// key's owner has the same owner (a member between them would own the looked-up key).
    /// A page of 20,480 symbols of 1,024 codewords on a 4-node ring: a few lookups, where
    /// one per key made 20,480. In ring order, each key once.
    pub async fn replica_sets(
        &self,
        keys: &[BlockKey],
    ) -> Result<Vec<(BlockKey, Vec<NodeAddr>)>, RingError> {
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        // The members this node knows of: an answer that skips one of them (a lying hop) is
        // used for its own key only, so one lie cannot cover a run of keys.
        let known: Vec<BlockKey> = match self.view().await {
            Some(v) => v
                .successors
                .iter()
                .chain(&v.predecessors)
                .chain(&v.fingers)
                .map(|p| BlockKey(p.id.0))
                .collect(),
            None => Vec::new(),
        };
        let mut out: Vec<(BlockKey, Vec<NodeAddr>)> = Vec::with_capacity(sorted.len());
        // The last lookup that may serve the next keys: the key, its owner's position, the set.
        let mut last: Option<(BlockKey, BlockKey, Vec<NodeAddr>)> = None;
        for k in sorted {
            if let Some((from, owner, set)) = &last {
                if shares_owner(from, owner, &k) {
                    out.push((k, set.clone()));
                    continue;
                }
            }
            let res = self.lookup(key_id(&k)).await?;
            let set = self.replica_set_from(&res).await;
            let owner = BlockKey(res.owner.id.0);
            let skips = known
                .iter()
                .any(|m| *m != owner && shares_owner(&k, &owner, m));
            out.push((k, set.clone()));
            last = (!skips).then_some((k, owner, set));
        }
        Ok(out)
    }

    /// [`Ring::replica_set`] of the key a lookup already made was for.
    pub async fn replica_set_from(&self, res: &chord::LookupResult<NodeAddr>) -> Vec<NodeAddr> {
        let candidates = self
            .locate_from(res, crate::placement::window(self.replication))
            .await;
        self.choose(candidates).await
    }

    /// `candidates` (an owner and its successors, in ring order) narrowed to r by place.
    async fn choose(&self, candidates: Vec<NodeAddr>) -> Vec<NodeAddr> {
        if candidates.len() <= self.replication {
            return candidates;
        }
        let places: Vec<Place> = self
            .places(&candidates)
            .await
            .into_iter()
            .zip(&candidates)
            .map(|(p, m)| p.unwrap_or_else(|| Place::unknown(&m.peer)))
            .collect();
        crate::placement::choose(&places, self.replication)
            .into_iter()
            .map(|i| candidates[i].clone())
            .collect()
    }

    /// This node's part of the replica sets of the keys it owns: the members besides itself
    /// that hold them (the set [`Ring::replica_set`] gives for its own keys).
    pub async fn replica_successors(&self) -> Vec<NodeAddr> {
        let me = self.me().clone();
        let mut candidates = vec![me.clone()];
        candidates.extend(
            self.successors(crate::placement::window(self.replication) - 1)
                .await,
        );
        let mut set = self.choose(candidates).await;
        set.retain(|a| *a != me);
        set
    }

    /// The places of `members` (asked of those not known yet, in parallel, within a few
    /// seconds); `None` for a member that did not say (placement counts it as a host of its
    /// own, `status` not at all).
    pub async fn places(&self, members: &[NodeAddr]) -> Vec<Option<Place>> {
        let now = std::time::Instant::now();
        let ask: Vec<&NodeAddr> = members
            .iter()
            .filter(|m| m.peer != self.me().peer && self.placements.get(&m.peer, now).is_none())
            .collect();
        if !ask.is_empty() {
            let answers = futures::future::join_all(ask.iter().map(|m| async move {
                let r =
                    tokio::time::timeout(PLACE_WAIT, self.call(m, MemberRequest::Placement)).await;
                let place = match r {
                    Ok(Ok(MemberResponse::Placement { host, zone })) => {
                        Place::new(&host, &zone).ok()
                    }
                    _ => None,
                };
                (m.peer, place)
            }))
            .await;
            for (peer, place) in answers {
                self.placements.put(peer, place, now);
            }
        }
        members
            .iter()
            .map(|m| {
                if m.peer == self.me().peer {
                    Some(self.place.clone())
                } else {
                    self.placements.get(&m.peer, now).flatten()
                }
            })
            .collect()
    }

    /// This node's next `n` distinct successors (fewer in a ring of at most `n` nodes).
    pub async fn successors(&self, n: usize) -> Vec<NodeAddr> {
        let Some(view) = self.view().await else {
            return Vec::new();
        };
        let mut set = first_distinct(
            &view.me.addr,
            view.successors.iter().map(|p| &p.addr),
            n + 1,
        );
        self.extend(&mut set, n + 1).await;
        set.retain(|a| *a != view.me.addr);
        set
    }

    /// Extends a run of consecutive ring members to `n` nodes with the successors of its last
    /// one (a successor list, or a lookup answered from a short local view, can be shorter).
    /// Stops early when no new node turns up: the ring has fewer than `n` members.
    async fn extend(&self, set: &mut Vec<NodeAddr>, n: usize) {
        while set.len() < n {
            let Some(last) = set.last().cloned() else {
                return;
            };
            let res = self.handle.lookup(ring_id(&last.peer)).await;
            self.lookups.record(&res);
            let Ok(res) = res else {
                return;
            };
            let before = set.len();
            for a in std::iter::once(&res.owner.addr).chain(res.successors.iter().map(|p| &p.addr))
            {
                if set.len() >= n {
                    break;
                }
                if !set.contains(a) {
                    set.push(a.clone());
                }
            }
            if set.len() == before {
                return;
            }
        }
    }

    /// Sends one member request to `to` (served in-process when `to` is this node). An error
    /// answer becomes `Err` with its code.
    pub async fn call(
        &self,
        to: &NodeAddr,
        request: MemberRequest,
    ) -> Result<MemberResponse, RingError> {
        let answer = if to == self.me() {
            match self.local.get().and_then(Weak::upgrade) {
                Some(local) => local.serve_member(request).await,
                None => return Err(RingError::unavailable("the node is shutting down")),
            }
        } else {
            self.handle
                .request(to.clone(), request)
                .await
                .map_err(|e| RingError::unavailable(e.to_string()))?
        };
        match answer {
            MemberResponse::Error { code, message } => Err(RingError::new(code, message)),
            ok => Ok(ok),
        }
    }

    /// Sends one request of the entangled layer to `to`.
    pub async fn call_ent(
        &self,
        to: &NodeAddr,
        request: EntRequest,
    ) -> Result<EntResponse, RingError> {
        match self.call(to, MemberRequest::Entangled(request)).await? {
            MemberResponse::Entangled(r) => Ok(r),
            other => Err(RingError::unexpected(&other)),
        }
    }

    /// Sends `calls` at once and returns when `need` of them answered with something `good`
    /// accepts, or when all answered. Calls still running then complete in the background
    /// (their effect stands; anti-entropy covers any that fail).
    pub async fn call_quorum(
        self: &Arc<Self>,
        calls: Vec<(NodeAddr, MemberRequest)>,
        need: usize,
        good: fn(&MemberResponse) -> bool,
    ) -> QuorumOutcome {
        let (tx, mut rx) = mpsc::channel(calls.len().max(1));
        for (to, request) in calls {
            let (ring, tx) = (self.clone(), tx.clone());
            tokio::spawn(async move {
                let r = ring.call(&to, request).await;
                let _ = tx.send((to, r)).await;
            });
        }
        drop(tx);
        let mut out = QuorumOutcome::default();
        while let Some((to, r)) = rx.recv().await {
            match r {
                Ok(answer) if good(&answer) => out.ok.push((to, answer)),
                Ok(other) => out.errors.push((to, RingError::unexpected(&other))),
                Err(e) => out.errors.push((to, e)),
            }
            if out.ok.len() >= need {
                break;
            }
        }
        out
    }

    /// Every ring member this node can find, sorted by ring id: its own view, then the
    /// successor lists of the members it learns of (members that do not answer within a few
    /// seconds are left out).
    pub async fn members(&self) -> Vec<(chord::Id, NodeAddr)> {
        let Some(view) = self.view().await else {
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
            let answers = futures::stream::iter(batch)
                .map(|(id, addr)| async move {
                    let r =
                        tokio::time::timeout(STATUS_WAIT, self.call(&addr, MemberRequest::Status))
                            .await;
                    (id, addr, r)
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await;
            for (id, addr, ans) in answers {
                if let Ok(Ok(MemberResponse::Status(s))) = ans {
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
}

/// `first` and the next distinct entries of `rest`, at most `n` in all.
#[must_use]
pub fn first_distinct<'a>(
    first: &NodeAddr,
    rest: impl IntoIterator<Item = &'a NodeAddr>,
    n: usize,
) -> Vec<NodeAddr> {
    let mut set = vec![first.clone()];
    for s in rest {
        if set.len() >= n {
            break;
        }
        if !set.contains(s) {
            set.push(s.clone());
        }
    }
    set
}

/// Whether `k` has the owner found at `owner` for the key `from`: it lies in `(from, owner]`
/// (no member lies there, or it would own `from`). A key that is its owner's own position
/// tells nothing of the keys after it.
fn shares_owner(from: &BlockKey, owner: &BlockKey, k: &BlockKey) -> bool {
    from != owner && crate::store::in_interval(from, owner, k)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_between_a_key_and_its_owner_share_it() {
        let at = |b: u8| BlockKey([b; 32]);
        use super::{shares_owner, BlockKey};
        assert!(shares_owner(&at(0x10), &at(0x80), &at(0x50)));
        assert!(shares_owner(&at(0x10), &at(0x80), &at(0x80)));
        assert!(!shares_owner(&at(0x10), &at(0x80), &at(0x90)));
        // Around the top of the ring.
        assert!(shares_owner(&at(0xf0), &at(0x20), &at(0xf8)));
        assert!(shares_owner(&at(0xf0), &at(0x20), &at(0x10)));
        assert!(!shares_owner(&at(0xf0), &at(0x20), &at(0x30)));
        // A key that is its owner's position.
        assert!(!shares_owner(&at(0x80), &at(0x80), &at(0x90)));
    }

    use super::*;

    fn addr(i: u8) -> NodeAddr {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([i; 32]).unwrap();
        NodeAddr {
            peer: key.public().to_peer_id(),
            addr: format!("/ip4/127.0.0.1/tcp/{}", 1000 + u16::from(i))
                .parse()
                .unwrap(),
        }
    }

    #[test]
    fn first_distinct_takes_n_distinct_nodes_or_the_whole_ring() {
        let nodes: Vec<NodeAddr> = (0..12).map(addr).collect();
        assert_eq!(
            first_distinct(&nodes[0], &nodes[1..], 10),
            nodes[..10].to_vec()
        );
        // A ring of 4: the successor list wraps (and repeats); every node holds everything.
        let wrap: Vec<NodeAddr> = [1, 2, 3, 0, 1, 2].iter().map(|&i| addr(i)).collect();
        assert_eq!(
            first_distinct(&addr(0), &wrap, 10),
            (0..4).map(addr).collect::<Vec<_>>()
        );
    }

    #[test]
    fn store_errors_keep_their_code() {
        let full = StoreError::Full {
            needed: 10,
            free: 1,
            capacity: 100,
        };
        assert_eq!(RingError::from(full).code, ErrorCode::Full);
        let bad = StoreError::InvalidArgument("x".into());
        assert_eq!(RingError::from(bad).code, ErrorCode::BadRequest);
        let e = RingError::new(ErrorCode::Full, "node full");
        let r: MemberResponse = e.to_response();
        assert_eq!(r.as_error(), Some((ErrorCode::Full, "node full")));
    }
}
