//! A client endpoint: a small libp2p endpoint that sends requests of the client, admin (and,
//! for members' tools and tests, member) protocols to nodes and waits for the answers, many in
//! flight at once. Used by `peerstore-node status`, by peerstore-client and by the tests. It is
//! not a ring member and answers no requests.
//!
//! With [`RpcClient::routed`] the endpoint also learns the ring's members from its node's status
//! and sends block puts and gets straight to a member of the key's replica set, which saves the
//! entry node a relay of every block (one transfer instead of two for most gets). Routing is
//! only a shortcut: a member that is not the right one routes the request itself, and a member
//! that does not answer is forgotten and the request goes through the entry node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::admission::{Gate, HelloGate, Identity, Revocations};
use crate::net::{build_swarm, Behaviour, BehaviourEvent, LONG_REQUEST_TIMEOUT};
use crate::{
    key_id, AdminRequest, AdminResponse, BlockKey, ClientRequest, ClientResponse, ErrorCode,
    Incoming, MemberRequest, MemberResponse, NodeAddr,
};

/// Why a call did not produce an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach node {addr}: {reason}; check that it runs and the address is right")]
    Unreachable { addr: String, reason: String },
    #[error("the connection to the node was closed")]
    Closed,
    #[error("node {addr} did not answer within {after:?}; it may be overloaded or gone")]
    Timeout { addr: String, after: Duration },
    #[error("node {addr} refused the connection: {reason}")]
    Refused { addr: String, reason: String },
}

type Reply<T> = oneshot::Sender<Result<T, RpcError>>;

/// One request for the event loop, with where its answer goes.
enum Call {
    Client(ClientRequest, Reply<ClientResponse>),
    Member(MemberRequest, Reply<MemberResponse>),
    Admin(AdminRequest, Reply<AdminResponse>),
    /// A greeting carrying a revocation list, outside the usual first greeting.
    Greet(Revocations, Reply<()>),
}

/// How long a learned member map is used before it is refreshed from the node's status.
const MEMBERS_TTL: Duration = Duration::from_secs(10);

/// A handle to the client endpoint. Cheap to clone; dropping every clone stops the endpoint.
#[derive(Clone)]
pub struct RpcClient {
    tx: mpsc::Sender<(NodeAddr, Call)>,
    pub node: NodeAddr,
    /// Bound on one request ([`LONG_REQUEST_TIMEOUT`] at least for long-running ones).
    timeout: Duration,
    /// Present when requests are routed to replica-set members directly.
    routes: Option<Arc<Mutex<Routes>>>,
}

/// The ring members this client knows, by ring id.
#[derive(Default)]
struct Routes {
    members: BTreeMap<chord::Id, NodeAddr>,
    replication: usize,
    refreshed: Option<Instant>,
    refreshing: bool,
}

impl Routes {
    /// Up to `replication` known members at and after `key`'s position: the replica set as far
    /// as this client knows the ring.
    fn replica_set(&self, key: &BlockKey) -> Vec<NodeAddr> {
        let id = key_id(key);
        self.members
            .range(id..)
            .chain(self.members.range(..id))
            .take(self.replication.max(1))
            .map(|(_, a)| a.clone())
            .collect()
    }
}

use crate::lock as lock_routes;

impl RpcClient {
    /// Starts an endpoint without a credential that talks to `node` (a ring that admits only
    /// its members refuses everything it asks; see [`RpcClient::start_as`]). `timeout` bounds
    /// every request.
    pub fn start(node: NodeAddr, timeout: Duration) -> Result<RpcClient, RpcError> {
        RpcClient::start_as(node, timeout, None)
    }

    /// Starts an endpoint that talks to `node` as `identity`: its first message to every node
    /// is a hello with the identity's certificate, and it checks that the node answers with a
    /// member's certificate of the same ring before sending anything else.
    pub fn start_as(
        node: NodeAddr,
        timeout: Duration,
        identity: Option<Identity>,
    ) -> Result<RpcClient, RpcError> {
        let keypair = identity
            .as_ref()
            .map(|i| i.keypair.clone())
            .unwrap_or_else(Keypair::generate_ed25519);
        let swarm = build_swarm(keypair, timeout, false).map_err(|e| RpcError::Unreachable {
            addr: node.to_string(),
            reason: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(event_loop(swarm, rx, identity));
        Ok(RpcClient {
            tx,
            node,
            timeout,
            routes: None,
        })
    }

    /// Like [`RpcClient::start`], but block and document puts and gets go straight to a member
    /// of the key's replica set (learned from the node's status, refreshed every few seconds).
    pub fn routed(
        node: NodeAddr,
        timeout: Duration,
        identity: Option<Identity>,
    ) -> Result<RpcClient, RpcError> {
        let mut c = RpcClient::start_as(node, timeout, identity)?;
        c.routes = Some(Arc::new(Mutex::new(Routes::default())));
        Ok(c)
    }

    /// Sends one request and waits for its answer. On a routed client a `Put` goes to the
    /// key's owner and a `Get` to one of its replicas (spread by key); a member that does not
    /// answer is forgotten and the next one of the set is tried, then the entry node.
    pub async fn call(&self, request: ClientRequest) -> Result<ClientResponse, RpcError> {
        let route = self.route(&request);
        if route.is_empty() {
            return self.call_to(&self.node.clone(), request).await;
        }
        let mut last = None;
        for target in &route {
            match self.call_to(target, request.clone()).await {
                Ok(r) if routed_answer_is_final(&r) => return Ok(r),
                Ok(r) => {
                    debug!(to = %target, answer = %describe(&r), "routed request failed");
                    last = Some(Ok(r));
                }
                Err(e) => {
                    debug!(to = %target, error = %e, "member unreachable");
                    last = Some(Err(e));
                }
            }
            self.forget(target);
        }
        if route.contains(&self.node) {
            return last.unwrap_or(Err(RpcError::Closed));
        }
        self.call_to(&self.node.clone(), request).await
    }

    /// Sends one client request to `to` (any ring member) and waits at most the client's
    /// timeout for its answer.
    pub async fn call_to(
        &self,
        to: &NodeAddr,
        request: ClientRequest,
    ) -> Result<ClientResponse, RpcError> {
        self.send(to, self.timeout, |tx| Call::Client(request, tx))
            .await
    }

    /// Sends one admin request to the entry node. Waits at most the client's timeout for
    /// storage figures, [`LONG_REQUEST_TIMEOUT`] (if longer) for ring-wide repair, audit and
    /// scrub.
    pub async fn admin(&self, request: AdminRequest) -> Result<AdminResponse, RpcError> {
        let limit = match request {
            AdminRequest::EntangleStats => self.timeout,
            _ => self.timeout.max(LONG_REQUEST_TIMEOUT),
        };
        let to = self.node.clone();
        self.send(&to, limit, |tx| Call::Admin(request, tx)).await
    }

    /// Greets the entry node with `list` (a newer revocation list, signed by the ring key),
    /// which it keeps and passes on to the ring. Needs an identity.
    pub async fn greet_with(&self, list: Revocations) -> Result<(), RpcError> {
        let to = self.node.clone();
        self.send(&to, self.timeout, |tx| Call::Greet(list, tx))
            .await
    }

    /// Sends one member request to `to` and waits for the answer (members' tools and tests; a
    /// ring that admits only its members refuses it from anyone else).
    pub async fn member_to(
        &self,
        to: &NodeAddr,
        request: MemberRequest,
    ) -> Result<MemberResponse, RpcError> {
        let limit = if request.is_long_running() {
            self.timeout.max(LONG_REQUEST_TIMEOUT)
        } else {
            self.timeout
        };
        self.send(to, limit, |tx| Call::Member(request, tx)).await
    }

    async fn send<T>(
        &self,
        to: &NodeAddr,
        limit: Duration,
        call: impl FnOnce(Reply<T>) -> Call,
    ) -> Result<T, RpcError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((to.clone(), call(tx)))
            .await
            .map_err(|_| RpcError::Closed)?;
        match tokio::time::timeout(limit, rx).await {
            Ok(answer) => answer.map_err(|_| RpcError::Closed)?,
            Err(_) => Err(RpcError::Timeout {
                addr: to.to_string(),
                after: limit,
            }),
        }
    }

    /// The member a routed [`ClientRequest::GetSymbol`] of `key` asks first (none while no
    /// members are known): how a reader groups the keys of its [`ClientRequest::GetSymbols`]
    /// batches, which are routed by their first key.
    pub fn symbol_holder(&self, key: BlockKey) -> Option<NodeAddr> {
        self.route(&ClientRequest::GetSymbol { key })
            .into_iter()
            .next()
    }

    /// The members to try for `request`, in order (none if it is not routable or nothing is
    /// known yet; the caller then asks the entry node, and also after a route that left it out).
    fn route(&self, request: &ClientRequest) -> Vec<NodeAddr> {
        let Some(routes) = self.routes.as_ref() else {
            return Vec::new();
        };
        let hashed;
        let (key, spread) = match request {
            ClientRequest::Put { key, .. } => (key, false),
            ClientRequest::Get { key }
            | ClientRequest::GetDocument { key }
            | ClientRequest::DocumentSources { key }
            | ClientRequest::SourcesHeld { key } => (key, true),
            // A symbol brought to one copy by replica management is kept by its key's owner; a
            // batch goes where its first key's `GetSymbol` would (the reader groups it so).
            ClientRequest::GetSymbol { key } => (key, false),
            ClientRequest::GetSymbols { keys } => match keys.first() {
                Some(key) => (key, false),
                None => return Vec::new(),
            },
            // On a ring without entanglement a document is the block BLAKE3(data), stored by
            // the owner of that key; on an entangled ring any node may encode it, and the
            // owner of the hash spreads the encoders evenly.
            ClientRequest::PutDocument { data, .. } => {
                hashed = BlockKey::of(data);
                (&hashed, false)
            }
            _ => return Vec::new(),
        };
        let mut set = {
            let mut r = lock_routes(routes);
            let stale = r.refreshed.is_none_or(|t| t.elapsed() > MEMBERS_TTL);
            if stale && !r.refreshing {
                r.refreshing = true;
                let this = self.clone();
                tokio::spawn(async move { this.refresh().await });
            }
            r.replica_set(key)
        };
        if spread && !set.is_empty() {
            // Gets start at a replica chosen by the key, so readers share the load.
            let i = (key.0[31] as usize) % set.len();
            set.rotate_left(i);
        }
        set
    }

    /// Relearns the members from the entry node's status (itself, predecessor, successors and
    /// fingers). Routed calls do this by themselves every few seconds; call it to start with a
    /// full map.
    pub async fn refresh(&self) {
        let Some(routes) = &self.routes else { return };
        let status = self
            .call_to(&self.node.clone(), ClientRequest::Status)
            .await;
        let mut r = lock_routes(routes);
        r.refreshing = false;
        r.refreshed = Some(Instant::now());
        if let Ok(ClientResponse::Status(s)) = status {
            r.members.clear();
            r.replication = s.replication as usize;
            r.members.insert(s.id, s.addr.clone());
            for m in s.predecessor.iter().chain(&s.successors).chain(&s.fingers) {
                r.members.insert(m.id, m.addr.clone());
            }
        }
    }

    /// Drops a member that failed a request; the next refresh may bring it back.
    fn forget(&self, who: &NodeAddr) {
        if let Some(routes) = &self.routes {
            lock_routes(routes).members.retain(|_, a| a != who);
        }
    }
}

/// Whether a routed member's answer stands (anything but "could not do it right now").
fn routed_answer_is_final(r: &ClientResponse) -> bool {
    !matches!(
        r,
        ClientResponse::Error {
            code: ErrorCode::Unavailable | ErrorCode::Internal,
            ..
        }
    )
}

/// Where the answers of one protocol's requests go.
type Pending<T> = HashMap<OutboundRequestId, (NodeAddr, Reply<T>)>;

async fn event_loop(
    mut swarm: libp2p::Swarm<Behaviour>,
    mut rx: mpsc::Receiver<(NodeAddr, Call)>,
    identity: Option<Identity>,
) {
    let mut client: Pending<ClientResponse> = HashMap::new();
    let mut member: Pending<MemberResponse> = HashMap::new();
    let mut admin: Pending<AdminResponse> = HashMap::new();
    // Calls wait here until the node has answered our hello.
    let mut gate: HelloGate<(NodeAddr, Call)> = HelloGate::new(4096);
    let mut greeting: HashMap<OutboundRequestId, NodeAddr> = HashMap::new();
    let mut greets: HashMap<OutboundRequestId, Reply<()>> = HashMap::new();
    let mut closed = false;
    loop {
        if closed
            && client.is_empty()
            && member.is_empty()
            && admin.is_empty()
            && greeting.is_empty()
        {
            return;
        }
        tokio::select! {
            cmd = rx.recv(), if !closed => match cmd {
                Some((to, Call::Greet(list, reply))) => match identity.as_ref() {
                    Some(id) => {
                        let rid = swarm.behaviour_mut().hello.send_request_with_addresses(
                            &to.peer, Incoming::Message(id.hello(list)), vec![to.addr.clone()]);
                        greets.insert(rid, reply);
                    }
                    None => {
                        let _ = reply.send(Err(RpcError::Refused { addr: to.to_string(), reason: "no credential to greet with".into() }));
                    }
                },
                Some((to, call)) => {
                    let Some(id) = identity.as_ref() else {
                        send_call(&mut swarm, to, call, &mut client, &mut member, &mut admin);
                        continue;
                    };
                    match gate.submit(to.peer, (to.clone(), call)) {
                        Gate::Send((to, call)) => send_call(&mut swarm, to, call, &mut client, &mut member, &mut admin),
                        Gate::Greet => {
                            let hello = id.hello(Revocations::default());
                            let rid = swarm.behaviour_mut().hello.send_request_with_addresses(
                                &to.peer, Incoming::Message(hello), vec![to.addr.clone()]);
                            greeting.insert(rid, to);
                        }
                        Gate::Queued => {}
                        Gate::Full((to, call)) => fail_call(call, RpcError::Refused {
                            addr: to.to_string(),
                            reason: "too many requests wait for this node's greeting".into(),
                        }),
                    }
                }
                None => closed = true,
            },
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::Behaviour(BehaviourEvent::Client(ev)) => answer(ev, &mut client),
                SwarmEvent::Behaviour(BehaviourEvent::Member(ev)) => answer(ev, &mut member),
                SwarmEvent::Behaviour(BehaviourEvent::Admin(ev)) => answer(ev, &mut admin),
                SwarmEvent::Behaviour(BehaviourEvent::Hello(ev)) => {
                    let (rid, peer, outcome) = match ev {
                        request_response::Event::Message {
                            peer,
                            message: request_response::Message::Response { request_id, response },
                            ..
                        } => {
                            let check = identity
                                .as_ref()
                                .map(|i| i.check_welcome(&peer, &response, &Revocations::default()))
                                .unwrap_or(Ok(()))
                                .map_err(HelloFailure::Refused);
                            (request_id, peer, check)
                        }
                        request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                            (request_id, peer, Err(HelloFailure::Unreachable(error.to_string())))
                        }
                        _ => continue,
                    };
                    if let Some(reply) = greets.remove(&rid) {
                        let _ = reply.send(outcome.map_err(|f| f.into_error(peer.to_string())));
                        continue;
                    }
                    let Some(to) = greeting.remove(&rid) else { continue };
                    match outcome {
                        Ok(()) => {
                            for (to, call) in gate.admitted(peer) {
                                send_call(&mut swarm, to, call, &mut client, &mut member, &mut admin);
                            }
                        }
                        Err(failure) => {
                            debug!(node = %to, ?failure, "hello failed");
                            for (to, call) in gate.refused(&peer) {
                                fail_call(call, failure.clone().into_error(to.to_string()));
                            }
                        }
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                    for (_, call) in gate.disconnected(&peer_id) {
                        fail_call(call, RpcError::Closed);
                    }
                }
                _ => {}
            },
        }
    }
}

/// Why a greeting did not admit this client: the node could not be reached (dial or stream
/// failure: the call may succeed later), or it answered and refused us (or its welcome did not
/// check out: retrying will not help).
#[derive(Debug, Clone)]
enum HelloFailure {
    Unreachable(String),
    Refused(String),
}

impl HelloFailure {
    fn into_error(self, addr: String) -> RpcError {
        match self {
            HelloFailure::Unreachable(reason) => RpcError::Unreachable { addr, reason },
            HelloFailure::Refused(reason) => RpcError::Refused { addr, reason },
        }
    }
}

/// Sends one call to its node.
fn send_call(
    swarm: &mut libp2p::Swarm<Behaviour>,
    to: NodeAddr,
    call: Call,
    client: &mut Pending<ClientResponse>,
    member: &mut Pending<MemberResponse>,
    admin: &mut Pending<AdminResponse>,
) {
    let b = swarm.behaviour_mut();
    let addrs = vec![to.addr.clone()];
    match call {
        Call::Client(req, reply) => {
            let id = b
                .client
                .send_request_with_addresses(&to.peer, Incoming::Message(req), addrs);
            client.insert(id, (to, reply));
        }
        Call::Member(req, reply) => {
            let id = b
                .member
                .send_request_with_addresses(&to.peer, Incoming::Message(req), addrs);
            member.insert(id, (to, reply));
        }
        Call::Admin(req, reply) => {
            let id = b
                .admin
                .send_request_with_addresses(&to.peer, Incoming::Message(req), addrs);
            admin.insert(id, (to, reply));
        }
        Call::Greet(_, reply) => {
            let _ = reply.send(Err(RpcError::Closed));
        }
    }
}

/// Fails a call that was never sent.
fn fail_call(call: Call, err: RpcError) {
    match call {
        Call::Client(_, r) => {
            let _ = r.send(Err(err));
        }
        Call::Member(_, r) => {
            let _ = r.send(Err(err));
        }
        Call::Admin(_, r) => {
            let _ = r.send(Err(err));
        }
        Call::Greet(_, r) => {
            let _ = r.send(Err(err));
        }
    }
}

/// Hands an answer (or the failure of a request) to whoever waits for it.
fn answer<Req, Resp>(
    ev: request_response::Event<Incoming<Req>, Resp>,
    pending: &mut Pending<Resp>,
) {
    match ev {
        request_response::Event::Message {
            message:
                request_response::Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some((_, r)) = pending.remove(&request_id) {
                let _ = r.send(Ok(response));
            }
        }
        request_response::Event::OutboundFailure {
            request_id, error, ..
        } => {
            if let Some((to, r)) = pending.remove(&request_id) {
                let _ = r.send(Err(RpcError::Unreachable {
                    addr: to.to_string(),
                    reason: error.to_string(),
                }));
            }
        }
        _ => {}
    }
}

pub use crate::client::describe;
