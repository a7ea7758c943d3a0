//! The driver: the one task that owns the libp2p swarm, the clock and the Chord state machine.
//!
//! Everything else talks to it through a [`Handle`] (bounded command channel, `oneshot` replies),
//! the pattern of rust-libp2p's file-sharing example. After every input (a swarm event, a command,
//! a timer) the driver drains the Chord core's actions: messages to send, lookups that finished,
//! range changes. Inbound client, member and admin requests are handed to the
//! [`Service`](crate::service::Service), which answers each in its own task; the answers come
//! back as [`Command::Respond`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use peerstore_proto::admission::{Gate, HelloGate, Identity, Revocations, Role};
use peerstore_proto::net::{Behaviour, BehaviourEvent, HELLO_TIMEOUT};
use peerstore_proto::{
    ring_id, AdminRequest, AdminResponse, Audience, ChordAck, ChordEnvelope, ClientRequest,
    ClientResponse, ErrorCode, Hello, HelloResponse, Incoming, MemberRequest, MemberResponse,
    NodeAddr,
};

pub use peerstore_proto::net::{build_swarm, build_swarm_with, LONG_REQUEST_TIMEOUT};

/// An error of one outbound request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("request to {peer} failed: {reason}")]
    Failed { peer: PeerId, reason: String },
    #[error("the node is shutting down")]
    Shutdown,
}

/// What the driver knows of the ring right now (for status and for the maintenance workers).
#[derive(Clone, Debug)]
pub struct RingView {
    pub me: chord::Peer<NodeAddr>,
    pub member: bool,
    pub predecessor: Option<chord::Peer<NodeAddr>>,
    pub predecessors: Vec<chord::Peer<NodeAddr>>,
    pub successors: Vec<chord::Peer<NodeAddr>>,
    pub fingers: Vec<chord::Peer<NodeAddr>>,
    /// Owned range and the range this node replicates for r = `replication` (clean-up drops
    /// block copies outside it, single copies outside it go to their owner).
    pub ranges: chord::Ranges,
}

/// Where the answer to a lookup goes.
pub type LookupReply = oneshot::Sender<Result<chord::LookupResult<NodeAddr>, String>>;

/// Commands to the driver.
pub enum Command {
    Lookup {
        key: chord::Id,
        reply: LookupReply,
    },
    Request {
        to: NodeAddr,
        request: MemberRequest,
        reply: oneshot::Sender<Result<MemberResponse, RequestError>>,
    },
    Respond(Reply),
    View {
        reply: oneshot::Sender<RingView>,
    },
    /// Start the graceful leave of the Chord core; the reply fires when the core says Left
    /// (or after a bound).
    Leave {
        reply: oneshot::Sender<()>,
    },
}

/// The answer when the service's queue is full.
const BUSY: &str = "node busy: too many requests in flight, retry shortly";

/// A cheap, cloneable handle to the driver.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    pub local: NodeAddr,
    /// Bound on one request to another node (`request_timeout_ms`); long-running ring-wide
    /// operations get [`LONG_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// Bumped every time the Chord core reports a change of our key ranges.
    pub ranges_changed: watch::Receiver<u64>,
    /// Where the members run (module `placement`), shared with the ring: a peer whose last
    /// connection closes is forgotten, so a node restarted with another `--host` is asked anew.
    pub placements: Arc<crate::placement::Placements>,
}

impl Handle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn lookup(&self, key: chord::Id) -> Result<chord::LookupResult<NodeAddr>, String> {
        self.call(|reply| Command::Lookup { key, reply })
            .await
            .unwrap_or_else(|| Err("the node is shutting down".into()))
    }

    /// Sends one member request to another node and waits for its answer, at most
    /// `request_timeout` (or [`LONG_REQUEST_TIMEOUT`] for
    /// [`MemberRequest::is_long_running`]).
    pub async fn request(
        &self,
        to: NodeAddr,
        request: MemberRequest,
    ) -> Result<MemberResponse, RequestError> {
        let limit = if request.is_long_running() {
            LONG_REQUEST_TIMEOUT
        } else {
            self.request_timeout
        };
        let peer = to.peer;
        let call = self.call(|reply| Command::Request { to, request, reply });
        match tokio::time::timeout(limit, call).await {
            Ok(answer) => answer.unwrap_or(Err(RequestError::Shutdown)),
            Err(_) => Err(RequestError::Failed {
                peer,
                reason: format!("no answer within {limit:?}"),
            }),
        }
    }

    pub async fn respond(&self, reply: Reply) {
        let _ = self.tx.send(Command::Respond(reply)).await;
    }

    pub async fn view(&self) -> Option<RingView> {
        self.call(|reply| Command::View { reply }).await
    }

    pub async fn leave(&self) {
        let _ = self.call(|reply| Command::Leave { reply }).await;
    }
}

/// An inbound request for the service, by protocol. A request that came on the wrong protocol
/// arrives as [`Incoming::Misrouted`] and is refused. Only requests from peers whose role
/// allows the protocol get here; `role` is what their certificate says.
pub enum Inbound {
    Client {
        caller: Caller,
        request: Incoming<ClientRequest>,
        channel: ResponseChannel<ClientResponse>,
    },
    Member {
        peer: PeerId,
        request: Incoming<MemberRequest>,
        channel: ResponseChannel<MemberResponse>,
    },
    Admin {
        peer: PeerId,
        request: Incoming<AdminRequest>,
        channel: ResponseChannel<AdminResponse>,
    },
}

/// An answer to an inbound request, on the channel of its protocol.
pub enum Reply {
    Client(ResponseChannel<ClientResponse>, ClientResponse),
    Member(ResponseChannel<MemberResponse>, MemberResponse),
    Admin(ResponseChannel<AdminResponse>, AdminResponse),
}

/// Who sent a request: the peer and what its certificate says.
#[derive(Clone, Debug)]
pub struct Caller {
    pub peer: PeerId,
    pub role: Role,
    /// The certificate's label (a name for humans).
    pub label: String,
}

/// Something to send to a peer once it has admitted us.
enum Outbound {
    Chord(NodeAddr, chord::Message<NodeAddr>),
    Member(
        NodeAddr,
        MemberRequest,
        oneshot::Sender<Result<MemberResponse, RequestError>>,
    ),
}

/// Most messages held for one peer while our hello to it is in flight.
const MAX_HELD: usize = 1024;

/// Who this node is in its ring, and whom it has admitted.
pub struct Membership {
    pub identity: Identity,
    pub revocations: Revocations,
    /// Where newer revocation lists are kept (none in tests of the driver alone).
    pub revocations_dir: Option<PathBuf>,
}

/// The event loop. Create it with [`Driver::start`], then `run` it in its own task.
pub struct Driver {
    membership: Membership,
    /// The places of members (shared with [`Handle::placements`]).
    placements: Arc<crate::placement::Placements>,
    /// Peers that proved their role to us (by a hello, or by their answer to ours).
    admitted: HashMap<PeerId, Caller>,
    /// What waits for peers to admit us.
    gate: HelloGate<Outbound>,
    greeting: HashMap<OutboundRequestId, PeerId>,
    /// Connected peers that have not proved a role yet, and since when: closed after
    /// [`HELLO_TIMEOUT`].
    strangers: HashMap<PeerId, Instant>,
    /// Chord messages each peer may send (a token bucket per peer; the excess is dropped).
    chord_rate: peerstore_proto::limits::RateLimiter<PeerId>,
    /// The remote IP of each connected peer (for the limit of members per address group).
    remote_ip: HashMap<PeerId, std::net::IpAddr>,
    swarm: Swarm<Behaviour>,
    node: chord::Node<NodeAddr>,
    epoch: Instant,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Inbound>,
    ranges_tx: watch::Sender<u64>,
    pending_requests:
        HashMap<OutboundRequestId, oneshot::Sender<Result<MemberResponse, RequestError>>>,
    pending_chord: HashMap<OutboundRequestId, (NodeAddr, chord::Message<NodeAddr>)>,
    pending_lookups: HashMap<chord::LookupId, Vec<LookupReply>>,
    leave_waiters: Vec<oneshot::Sender<()>>,
    left: bool,
    /// Replication factor, for answering lookups from local state.
    replication: usize,
    /// Members to join through, tried in turn after failed joins; when to try the next one.
    join_via: Vec<NodeAddr>,
    join_tries: usize,
    rejoin_at: Option<Instant>,
    /// Whether to start a new ring once every candidate failed (no `--initial-peer`).
    create_if_alone: bool,
    /// Where the members this node knows are kept for its next start, and what was last written.
    peers_file: Option<PathBuf>,
    peers_written: Vec<NodeAddr>,
    peers_at: Instant,
}

/// How the node enters the ring.
pub enum Start {
    /// A new ring of one.
    Create,
    /// Join through the first of `via` that answers (each failed join moves on to the next,
    /// round after round). With `create_if_alone`, a new ring is started once every candidate
    /// has failed once: a node that was in a ring rejoins it if any member is up.
    Join {
        via: Vec<NodeAddr>,
        create_if_alone: bool,
    },
}

/// File in the data directory with the members this node knew, one multiaddr per line.
pub const PEERS_FILE: &str = "peers";

/// How often the members this node knows are written down (when they changed).
const PEERS_EVERY: Duration = Duration::from_secs(10);

/// The members listed in a data directory's peers file (none if it is missing or unreadable).
pub fn read_peers_file(data_dir: &std::path::Path) -> Vec<NodeAddr> {
    std::fs::read_to_string(data_dir.join(PEERS_FILE))
        .map(|t| {
            t.lines()
                .filter_map(|l| peerstore_proto::parse_node_addr(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Driver {
    /// Listens on `listen`, waits for the listen addresses, and sets up the Chord core.
    /// Returns the driver, a handle, and the receiver of inbound data requests.
    pub async fn start(
        mut swarm: Swarm<Behaviour>,
        listen: &[Multiaddr],
        announce: Option<Multiaddr>,
        chord_config: chord::Config,
        peers_file: Option<PathBuf>,
        membership: Membership,
    ) -> anyhow::Result<(Driver, Handle, mpsc::Receiver<Inbound>)> {
        for addr in listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        }
        let heard = wait_for_listen_addr(&mut swarm).await?;
        let addr = announce.unwrap_or(heard);
        let peer = *swarm.local_peer_id();
        let local = NodeAddr { peer, addr };
        let me = chord::Peer {
            id: ring_id(&peer),
            addr: local.clone(),
        };
        let replication = chord_config.replication;
        let request_timeout = chord_config.lookup_timeout;
        let node = chord::Node::new(chord_config, me);
        let (cmd_tx, commands) = mpsc::channel(1024);
        let (inbound, inbound_rx) = mpsc::channel(1024);
        let (ranges_tx, ranges_changed) = watch::channel(0);
        let placements = Arc::new(crate::placement::Placements::default());
        let driver = Driver {
            membership,
            admitted: HashMap::new(),
            gate: HelloGate::new(MAX_HELD),
            greeting: HashMap::new(),
            strangers: HashMap::new(),
            chord_rate: peerstore_proto::limits::RateLimiter::new(
                peerstore_proto::limits::CHORD_RATE,
                peerstore_proto::limits::CHORD_BURST,
            ),
            remote_ip: HashMap::new(),
            swarm,
            node,
            epoch: Instant::now(),
            commands,
            inbound,
            ranges_tx,
            pending_requests: HashMap::new(),
            pending_chord: HashMap::new(),
            pending_lookups: HashMap::new(),
            leave_waiters: Vec::new(),
            left: false,
            replication,
            join_via: Vec::new(),
            join_tries: 0,
            rejoin_at: None,
            create_if_alone: false,
            peers_file,
            peers_written: Vec::new(),
            peers_at: Instant::now(),
            placements: placements.clone(),
        };
        let handle = Handle {
            tx: cmd_tx,
            local,
            request_timeout,
            ranges_changed,
            placements,
        };
        Ok((driver, handle, inbound_rx))
    }

    fn now(&self) -> chord::Time {
        chord::Time(self.epoch.elapsed().as_millis() as u64)
    }

    fn deadline(&self, t: chord::Time) -> Instant {
        self.epoch + Duration::from_millis(t.0)
    }

    /// Runs until every command sender is gone or the graceful leave finished.
    pub async fn run(mut self, start: Start) {
        let now = self.now();
        match start {
            Start::Create => self.node.create(now),
            Start::Join {
                mut via,
                create_if_alone,
            } => {
                let me = self.node.me().addr.peer;
                let mut seen = std::collections::HashSet::new();
                via.retain(|a| a.peer != me && seen.insert(a.peer));
                for a in &via {
                    self.swarm.add_peer_address(a.peer, a.addr.clone());
                }
                self.create_if_alone = create_if_alone;
                self.join_via = via;
                match self.join_via.first().cloned() {
                    Some(first) => {
                        info!(via = %first, candidates = self.join_via.len(), "joining");
                        self.node.join(now, first)
                    }
                    None => self.node.create(now),
                }
            }
        }
        self.drain();
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let rejoin = self.rejoin_at;
            let timer = self.node.poll_timeout().map(|t| self.deadline(t));
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = sleep_until(timer) => {
                    let now = self.now();
                    self.node.handle_timeout(now);
                }
                _ = sleep_until(rejoin) => {
                    self.rejoin_at = None;
                    self.retry_join();
                }
                _ = sweep.tick() => self.close_strangers(),
            }
            self.drain();
            self.save_peers();
            if self.left {
                break;
            }
        }
        // Let the last messages (the leave notices) reach their peers before the swarm goes.
        let flush = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(flush);
        while !self.pending_chord.is_empty() {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = &mut flush => break,
            }
        }
        for w in self.leave_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Lookup { key, reply } => {
                if !self.node.is_member() {
                    let _ = reply.send(Err("this node has not joined a ring yet".into()));
                    return;
                }
                if let Some(res) = resolve_locally(&self.node, key, self.replication) {
                    let _ = reply.send(Ok(res));
                    return;
                }
                let now = self.now();
                let id = self.node.start_lookup(now, key);
                self.pending_lookups.entry(id).or_default().push(reply);
            }
            Command::Request { to, request, reply } => {
                self.submit(Outbound::Member(to, request, reply));
            }
            Command::Respond(reply) => {
                let b = self.swarm.behaviour_mut();
                let sent = match reply {
                    Reply::Client(c, r) => b.client.send_response(c, r).is_ok(),
                    Reply::Member(c, r) => b.member.send_response(c, r).is_ok(),
                    Reply::Admin(c, r) => b.admin.send_response(c, r).is_ok(),
                };
                if !sent {
                    debug!("response dropped: the requester went away");
                }
            }
            Command::View { reply } => {
                let _ = reply.send(self.view());
            }
            Command::Leave { reply } => {
                if self.left || !self.node.is_member() {
                    self.left = true;
                    let _ = reply.send(());
                } else {
                    self.leave_waiters.push(reply);
                    let now = self.now();
                    self.node.leave(now);
                }
            }
        }
    }

    /// After a failed join: the next candidate, or a new ring once all failed and that is
    /// allowed.
    fn retry_join(&mut self) {
        if self.node.is_member() || self.join_via.is_empty() {
            return;
        }
        self.join_tries += 1;
        let now = self.now();
        if self.create_if_alone && self.join_tries >= self.join_via.len() {
            warn!(
                tried = self.join_via.len(),
                "no member of the ring this node was in answered; starting a new ring (and \
                 looking for those members, to merge with their ring once they answer)"
            );
            let known: Vec<chord::Peer<NodeAddr>> = std::mem::take(&mut self.join_via)
                .into_iter()
                .map(|addr| chord::Peer {
                    id: ring_id(&addr.peer),
                    addr,
                })
                .collect();
            self.node.create(now);
            // The core probes them with back-off (chord's ring merge): if they come back,
            // this ring of one merges into theirs instead of living on beside it.
            self.node.remember(now, known);
            return;
        }
        let via = self.join_via[self.join_tries % self.join_via.len()].clone();
        info!(via = %via, "retrying the join");
        self.node.join(now, via);
    }

    /// Writes the members this node knows to the peers file when they changed (at most every
    /// few seconds), so a restart can rejoin through any of them.
    fn save_peers(&mut self) {
        let Some(path) = self.peers_file.clone() else {
            return;
        };
        let due = self.peers_written.is_empty() || self.peers_at.elapsed() >= PEERS_EVERY;
        if !self.node.is_member() || !due {
            return;
        }
        self.peers_at = Instant::now();
        let me = self.node.me().addr.peer;
        let mut known: Vec<NodeAddr> = self
            .node
            .successors()
            .iter()
            .chain(self.node.predecessors())
            .chain(self.node.fingers().iter().flatten())
            .map(|p| p.addr.clone())
            .filter(|a| a.peer != me)
            .collect();
        known.sort();
        known.dedup();
        if known.is_empty() || known == self.peers_written {
            return;
        }
        self.peers_written = known.clone();
        let text: String = known.iter().map(|a| format!("{a}\n")).collect();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::identity::write_durable(&path, text.as_bytes(), false) {
                warn!(error = %e, file = %path.display(), "cannot write the peers file");
            }
        });
    }

    fn view(&self) -> RingView {
        let mut fingers: Vec<chord::Peer<NodeAddr>> =
            self.node.fingers().into_iter().flatten().collect();
        fingers.sort();
        fingers.dedup();
        RingView {
            me: self.node.me().clone(),
            member: self.node.is_member(),
            predecessor: self.node.predecessor().cloned(),
            predecessors: self.node.predecessors().to_vec(),
            successors: self.node.successors().to_vec(),
            fingers,
            ranges: self.node.ranges(self.node.config().replication),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Hello(ev)) => self.on_hello_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Chord(ev)) => self.on_chord_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Client(ev)) => {
                self.on_inbound(ev, Audience::Client, |caller, request, channel| {
                    Inbound::Client {
                        caller,
                        request,
                        channel,
                    }
                })
            }
            SwarmEvent::Behaviour(BehaviourEvent::Admin(ev)) => {
                // The ring's storage figures (for `du`) are read-only: any admitted user may
                // ask for them; everything else on the admin protocol needs the admin role.
                let figures = matches!(
                    &ev,
                    request_response::Event::Message {
                        message: request_response::Message::Request {
                            request: Incoming::Message(AdminRequest::EntangleStats),
                            ..
                        },
                        ..
                    }
                );
                let audience = if figures {
                    Audience::Client
                } else {
                    Audience::Admin
                };
                self.on_inbound(ev, audience, |caller, request, channel| Inbound::Admin {
                    peer: caller.peer,
                    request,
                    channel,
                })
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                    self.remote_ip.insert(peer_id, ip);
                }
                if !self.admitted.contains_key(&peer_id) && !self.gate.is_ready(&peer_id) {
                    self.strangers.entry(peer_id).or_insert_with(Instant::now);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.admitted.remove(&peer_id);
                self.strangers.remove(&peer_id);
                self.chord_rate.forget(&peer_id);
                self.remote_ip.remove(&peer_id);
                self.placements.forget(&peer_id);
                for item in self.gate.disconnected(&peer_id) {
                    self.fail_outbound(item, "the connection closed before the greeting");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Member(ev)) => self.on_member_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(_)) => {}
            SwarmEvent::NewListenAddr { address, .. } => info!(%address, "listening"),
            SwarmEvent::IncomingConnectionError { error, .. } => {
                debug!(%error, "incoming connection failed")
            }
            _ => {}
        }
    }

    fn on_chord_event(&mut self, ev: request_response::Event<Incoming<ChordEnvelope>, ChordAck>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .chord
                    .send_response(channel, ChordAck);
                if !self.may(&peer, Audience::Chord) {
                    debug!(%peer, "chord message from a peer that is not an admitted member, dropped");
                    return;
                }
                if !self.chord_rate.allow(&peer, std::time::Instant::now()) {
                    let dropped = self.chord_rate.dropped();
                    if dropped.is_power_of_two() {
                        warn!(%peer, dropped, "chord messages beyond the per-peer rate, dropped");
                    }
                    return;
                }
                let Incoming::Message(request) = request else {
                    warn!(%peer, "a message of another protocol on the chord protocol, dropped");
                    return;
                };
                if request.from.peer != peer {
                    warn!(%peer, claimed = %request.from.peer, "chord message with a forged sender, dropped");
                    return;
                }
                if !peers_are_genuine(&request.msg) {
                    warn!(%peer, kind = request.msg.kind(), "chord message naming a peer whose id is not the hash of its PeerId, dropped");
                    return;
                }
                let now = self.now();
                self.node.handle_message(now, request.from, request.msg);
            }
            Event::Message {
                message: Message::Response { request_id, .. },
                ..
            } => {
                self.pending_chord.remove(&request_id);
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((to, msg)) = self.pending_chord.remove(&request_id) {
                    debug!(peer = %to.peer, %error, "chord message not delivered");
                    if matches!(error, request_response::OutboundFailure::Timeout)
                        && self.swarm.is_connected(&to.peer)
                    {
                        // The answer is an ack sent on receipt: none within the request
                        // timeout means the connection is dead (a link that went down keeps
                        // its TCP connections, whose retransmissions back off to tens of
                        // seconds). Close it, so that the next message (a ring-merge probe
                        // once the link is back) dials afresh instead of waiting on it.
                        debug!(peer = %to.peer, "closing the connection of a silent peer");
                        let _ = self.swarm.disconnect_peer_id(to.peer);
                    }
                    let now = self.now();
                    self.node.handle_send_failure(now, to, &msg);
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                if dropped_by_a_bound(&error) {
                    debug!(%peer, %error, "slow inbound chord message dropped");
                } else {
                    warn!(%peer, %error, "bad inbound chord message rejected");
                }
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Hands an inbound request to the service, or answers "busy" when its queue is full, or
    /// "forbidden" when the peer has not proved a role that may speak `audience`.
    fn on_inbound<Req, Resp>(
        &mut self,
        ev: request_response::Event<Incoming<Req>, Resp>,
        audience: Audience,
        wrap: impl FnOnce(Caller, Incoming<Req>, ResponseChannel<Resp>) -> Inbound,
    ) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let caller = self.admitted.get(&peer).cloned();
                let role = caller.as_ref().map(|c| c.role);
                let inbound = wrap(
                    caller.unwrap_or_else(|| Caller {
                        peer,
                        role: Role::User,
                        label: String::new(),
                    }),
                    request,
                    channel,
                );
                if !role.is_some_and(|r| r.may(audience)) {
                    let why = self.refusal(&peer, role, audience);
                    debug!(%peer, %audience, "refused: {why}");
                    self.answer_error(inbound, ErrorCode::Forbidden, &why);
                    return;
                }
                if let Err(mpsc::error::TrySendError::Full(refused)) =
                    self.inbound.try_send(inbound)
                {
                    self.answer_error(refused, ErrorCode::Unavailable, BUSY);
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                if dropped_by_a_bound(&error) {
                    debug!(%peer, %error, "slow inbound request dropped");
                } else {
                    warn!(%peer, %error, "bad inbound request rejected");
                }
            }
            _ => {}
        }
    }

    fn answer_error(&mut self, refused: Inbound, code: ErrorCode, message: &str) {
        let b = self.swarm.behaviour_mut();
        let _ = match refused {
            Inbound::Client { channel, .. } => b
                .client
                .send_response(channel, ClientResponse::error(code, message))
                .is_ok(),
            Inbound::Member { channel, .. } => b
                .member
                .send_response(channel, MemberResponse::error(code, message))
                .is_ok(),
            Inbound::Admin { channel, .. } => b
                .admin
                .send_response(channel, AdminResponse::error(code, message))
                .is_ok(),
        };
    }

    /// Whether `peer` proved a role that may speak `audience`.
    fn may(&self, peer: &PeerId, audience: Audience) -> bool {
        self.admitted
            .get(peer)
            .is_some_and(|c| c.role.may(audience))
    }

    /// Why a request of `audience` from `peer` (of `role`, if admitted) is refused.
    fn refusal(&self, peer: &PeerId, role: Option<Role>, audience: Audience) -> String {
        let ring = self.membership.identity.credential.ring.fingerprint();
        match role {
            None => format!(
                "peer {peer} is not admitted to ring {ring}: connect with a credential of this ring (an invite from `peerstore-node invite`)"
            ),
            Some(role) => {
                let needs = match audience {
                    Audience::Admin => "the ring's admin credential (`peerstore-node invite --role admin`)",
                    _ => "a member's certificate",
                };
                format!("peer {peer} holds a {role} certificate; {audience} requests need {needs}")
            }
        }
    }

    /// Sends `item` once its peer has admitted us (greeting it first if needed).
    fn submit(&mut self, item: Outbound) {
        let to = match &item {
            Outbound::Chord(to, _) | Outbound::Member(to, _, _) => to.clone(),
        };
        match self.gate.submit(to.peer, item) {
            Gate::Send(item) => self.send_now(item),
            Gate::Greet => self.greet(to.peer, Some(to.addr)),
            Gate::Queued => {}
            Gate::Full(item) => {
                self.fail_outbound(item, "too many messages wait for the peer's greeting")
            }
        }
    }

    fn greet(&mut self, peer: PeerId, addr: Option<Multiaddr>) {
        let hello = self
            .membership
            .identity
            .hello(self.membership.revocations.clone());
        let b = &mut self.swarm.behaviour_mut().hello;
        let id = match addr {
            Some(a) => b.send_request_with_addresses(&peer, Incoming::Message(hello), vec![a]),
            None => b.send_request(&peer, Incoming::Message(hello)),
        };
        self.greeting.insert(id, peer);
    }

    fn send_now(&mut self, item: Outbound) {
        match item {
            Outbound::Chord(to, msg) => {
                let envelope = ChordEnvelope {
                    from: self.node.me().addr.clone(),
                    msg: msg.clone(),
                };
                let id = self
                    .swarm
                    .behaviour_mut()
                    .chord
                    .send_request_with_addresses(
                        &to.peer,
                        Incoming::Message(envelope),
                        vec![to.addr.clone()],
                    );
                self.pending_chord.insert(id, (to, msg));
            }
            Outbound::Member(to, request, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .member
                    .send_request_with_addresses(
                        &to.peer,
                        Incoming::Message(request),
                        vec![to.addr.clone()],
                    );
                self.pending_requests.insert(id, reply);
            }
        }
    }

    fn fail_outbound(&mut self, item: Outbound, reason: &str) {
        match item {
            Outbound::Chord(to, msg) => {
                debug!(peer = %to.peer, reason, "chord message not delivered");
                let now = self.now();
                self.node.handle_send_failure(now, to, &msg);
            }
            Outbound::Member(to, _, reply) => {
                let _ = reply.send(Err(RequestError::Failed {
                    peer: to.peer,
                    reason: reason.to_string(),
                }));
            }
        }
    }

    fn on_hello_event(&mut self, ev: request_response::Event<Incoming<Hello>, HelloResponse>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let answer = match request {
                    Incoming::Message(hello) => self.admit(peer, hello),
                    Incoming::Misrouted(a) => HelloResponse::Refused {
                        message: format!("a {a} message on the hello protocol"),
                    },
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .hello
                    .send_response(channel, answer);
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if self.greeting.remove(&request_id).is_none() {
                    return;
                }
                if let HelloResponse::Welcome { revocations, .. } = &response {
                    self.adopt(revocations.clone());
                }
                let check = self.membership.identity.check_welcome(
                    &peer,
                    &response,
                    &self.membership.revocations,
                );
                let check = check.and_then(|()| {
                    if self.group_is_full(&peer) {
                        Err(format!(
                            "{MAX_MEMBERS_PER_GROUP} members of its address group are admitted already"
                        ))
                    } else {
                        Ok(())
                    }
                });
                match check {
                    Ok(()) => {
                        // Their answer proved their membership too.
                        let label = match &response {
                            HelloResponse::Welcome { certificate, .. } => certificate.label.clone(),
                            HelloResponse::Refused { .. } => String::new(),
                        };
                        self.admitted.insert(
                            peer,
                            Caller {
                                peer,
                                role: Role::Member,
                                label,
                            },
                        );
                        self.strangers.remove(&peer);
                        for item in self.gate.admitted(peer) {
                            self.send_now(item);
                        }
                    }
                    Err(reason) => {
                        warn!(%peer, %reason, "greeting refused");
                        for item in self.gate.refused(&peer) {
                            self.fail_outbound(item, &reason);
                        }
                    }
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if self.greeting.remove(&request_id).is_some() {
                    let reason = format!("greeting failed: {error}");
                    for item in self.gate.refused(&peer) {
                        self.fail_outbound(item, &reason);
                    }
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "bad greeting rejected");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Checks a peer's hello: our ring, a valid certificate for this very peer, not revoked.
    fn admit(&mut self, peer: PeerId, hello: Hello) -> HelloResponse {
        let ring = self.membership.identity.credential.ring;
        if hello.ring != ring {
            return HelloResponse::Refused {
                message: format!(
                    "this node belongs to ring {}, not to ring {}",
                    ring.fingerprint(),
                    hello.ring.fingerprint()
                ),
            };
        }
        self.adopt(hello.revocations);
        match hello
            .certificate
            .verify(&ring, &peer, &self.membership.revocations)
        {
            Ok(Role::Member) if self.group_is_full(&peer) => {
                let group = self.remote_ip.get(&peer).and_then(|ip| address_group(*ip));
                info!(%peer, ?group, "refused a member: too many members from its address group");
                HelloResponse::Refused {
                    message: format!(
                        "this node already has {MAX_MEMBERS_PER_GROUP} members from the address group {} (a /16); more from one network are refused",
                        group.map(|g| g.to_string()).unwrap_or_default()
                    ),
                }
            }
            Ok(role) => {
                self.admitted.insert(
                    peer,
                    Caller {
                        peer,
                        role,
                        label: hello.certificate.label.clone(),
                    },
                );
                self.strangers.remove(&peer);
                HelloResponse::Welcome {
                    certificate: self.membership.identity.credential.certificate.clone(),
                    revocations: self.membership.revocations.clone(),
                }
            }
            Err(e) => {
                info!(%peer, error = %e, "refused a peer without a valid certificate");
                HelloResponse::Refused {
                    message: e.to_string(),
                }
            }
        }
    }

    /// Whether admitting `peer` as a member would put more than [`MAX_MEMBERS_PER_GROUP`]
    /// admitted members into its address group.
    fn group_is_full(&self, peer: &PeerId) -> bool {
        let Some(group) = self.remote_ip.get(peer).and_then(|ip| address_group(*ip)) else {
            return false;
        };
        let same = self
            .admitted
            .values()
            .filter(|c| c.role == Role::Member && c.peer != *peer)
            .filter(|c| {
                self.remote_ip
                    .get(&c.peer)
                    .and_then(|ip| address_group(*ip))
                    == Some(group)
            })
            .count();
        same >= MAX_MEMBERS_PER_GROUP
    }

    /// Takes a newer, validly signed revocation list: keeps it, drops the revoked peers, and
    /// passes it on to every peer that admitted us.
    fn adopt(&mut self, list: Revocations) {
        let ring = self.membership.identity.credential.ring;
        if list.seq <= self.membership.revocations.seq || list.verify(&ring).is_err() {
            return;
        }
        if let Some(dir) = &self.membership.revocations_dir {
            if let Err(e) = crate::admission::write_revocations(dir, &list) {
                warn!(error = %e, "cannot keep the new revocation list");
            }
        }
        info!(
            seq = list.seq,
            revoked = list.peers.len(),
            "new revocation list"
        );
        let me = self.node.me().addr.peer;
        if list.contains(&me) {
            warn!("this node's certificate has been revoked; other members will refuse it");
        }
        self.membership.revocations = list;
        for peer in self.membership.revocations.peer_ids() {
            self.admitted.remove(&peer);
            if self.swarm.is_connected(&peer) {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
        let ready: Vec<PeerId> = self.gate.ready_peers().copied().collect();
        for peer in ready {
            self.greet(peer, None);
        }
    }

    /// Closes connections of peers that proved no role within [`HELLO_TIMEOUT`].
    fn close_strangers(&mut self) {
        let now = Instant::now();
        let late: Vec<PeerId> = self
            .strangers
            .iter()
            .filter(|(p, since)| {
                now.duration_since(**since) > HELLO_TIMEOUT
                    && !self.admitted.contains_key(p)
                    && !self.gate.is_ready(p)
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in late {
            self.strangers.remove(&peer);
            if self.admitted.contains_key(&peer) || self.gate.is_ready(&peer) {
                continue;
            }
            info!(%peer, "closing the connection of a peer that did not prove membership");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.strangers
            .retain(|p, _| !self.admitted.contains_key(p) && !self.gate.is_ready(p));
    }

    fn on_member_event(
        &mut self,
        ev: request_response::Event<Incoming<MemberRequest>, MemberResponse>,
    ) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(RequestError::Failed {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            ev => self.on_inbound(ev, Audience::Member, |caller, request, channel| {
                Inbound::Member {
                    peer: caller.peer,
                    request,
                    channel,
                }
            }),
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.node.poll_action() {
            match action {
                chord::Action::Send { to, msg } => self.submit(Outbound::Chord(to, msg)),
                chord::Action::Event(ev) => self.on_core_event(ev),
            }
        }
    }

    fn on_core_event(&mut self, ev: chord::Event<NodeAddr>) {
        match ev {
            chord::Event::Joined => info!(id = %self.node.me().id, "joined the ring"),
            chord::Event::JoinFailed { reason } => {
                // The ring may still hold a stale entry for us (a restart right after a crash)
                // or the bootstrap may be busy: try again shortly, until we are in.
                warn!(%reason, "join failed; retrying in 1 s");
                self.rejoin_at = Some(Instant::now() + Duration::from_secs(1));
            }
            chord::Event::LookupDone { lookup, result, .. } => {
                if let Some(waiters) = self.pending_lookups.remove(&lookup) {
                    let result = result.map_err(|e| format!("lookup failed: {e:?}"));
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            }
            chord::Event::PeerFailed { peer } => {
                info!(peer = %peer.addr, "peer declared dead")
            }
            chord::Event::MergeFound { via, successor } => {
                info!(
                    via = %via.addr,
                    successor = %successor.addr,
                    "a lost member answered again: merging with its ring"
                )
            }
            chord::Event::RangesChanged { ranges } => {
                debug!(?ranges, "key ranges changed");
                self.ranges_tx.send_modify(|n| *n += 1);
            }
            chord::Event::Left => {
                info!("left the ring");
                self.left = true;
            }
        }
    }
}

/// Answers a lookup from this node's own Chord state when the key falls in the part of the ring
/// it knows: its own range (pred, self] or within its successor list, with r-1 further members
/// known after the owner. The core maintains that state with liveness checks (stabilize); reads
/// verify hashes and fall back to other replicas, and anti-entropy corrects a placement made
/// on a view a moment out of date. Everything else goes through a real Chord lookup.
fn resolve_locally(
    node: &chord::Node<NodeAddr>,
    key: chord::Id,
    replication: usize,
) -> Option<chord::LookupResult<NodeAddr>> {
    let me = node.me();
    let succs = node.successors();
    let pred = node.predecessor()?;
    if succs.is_empty() {
        return None;
    }
    // A list shorter than its configured length holds every other member of the ring.
    let whole_ring = succs.len() < node.config().successors;
    // The ring in clockwise order starting at us.
    let mut ring: Vec<&chord::Peer<NodeAddr>> = Vec::with_capacity(succs.len() + 1);
    ring.push(me);
    ring.extend(succs.iter().filter(|p| p.id != me.id));
    let owner_at = if key.in_half_open(pred.id, me.id) {
        0
    } else {
        let mut prev = me.id;
        let mut found = None;
        for (i, p) in ring.iter().enumerate().skip(1) {
            if key.in_half_open(prev, p.id) {
                found = Some(i);
                break;
            }
            prev = p.id;
        }
        found?
    };
    let mut successors = Vec::with_capacity(replication);
    for k in 1..ring.len() {
        let i = owner_at + k;
        if i >= ring.len() && !whole_ring {
            break;
        }
        successors.push(ring[i % ring.len()].clone());
    }
    if successors.len() + 1 < replication.min(ring.len()) {
        return None;
    }
    Some(chord::LookupResult {
        owner: ring[owner_at].clone(),
        successors,
        hops: 0,
    })
}

/// Most admitted members one node keeps from one address group (as go-libp2p-kad-dht limits
/// peers per /16): a single network cannot crowd a node's neighbourhood.
pub const MAX_MEMBERS_PER_GROUP: usize = 16;

/// The IP address a multiaddr names, if any.
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    use libp2p::multiaddr::Protocol;
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    })
}

/// The address group of a public address: its /16 for IPv4, its /32 for IPv6. Loopback,
/// private, link-local and other non-public addresses belong to no group (an operator's own
/// network is not limited).
pub fn address_group(ip: std::net::IpAddr) -> Option<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
            // CGNAT 100.64/10
            {
                return None;
            }
            let [a, b, _, _] = v4.octets();
            Some(IpAddr::V4(Ipv4Addr::new(a, b, 0, 0)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return address_group(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            // Global unicast only (2000::/3).
            if seg[0] & 0xe000 != 0x2000 {
                return None;
            }
            Some(IpAddr::V6(Ipv6Addr::new(seg[0], seg[1], 0, 0, 0, 0, 0, 0)))
        }
    }
}

/// Every ring member named in a message must have the ring id its PeerId implies, so nobody can
/// place a node (or itself) at a chosen position of the ring.
fn peers_are_genuine(msg: &chord::Message<NodeAddr>) -> bool {
    use chord::Message as M;
    let ok = |p: &chord::Peer<NodeAddr>| p.id == ring_id(&p.addr.peer);
    let all = |v: &[chord::Peer<NodeAddr>]| v.iter().all(ok);
    match msg {
        M::Notify { node, preds, .. } => ok(node) && all(preds),
        M::Leave {
            node,
            preds,
            successors,
            ..
        } => ok(node) && all(preds) && all(successors),
        M::Info {
            pred,
            successors,
            closer,
            ..
        } => pred.as_ref().is_none_or(ok) && all(successors) && all(closer),
        M::FindSuccessor { .. }
        | M::GetState { .. }
        | M::Ping { .. }
        | M::Ack { .. }
        | M::Pong { .. } => true,
    }
}

/// Whether an inbound stream failed on a resource bound (a sender too slow, the node's budget
/// for incoming bytes spent): expected under a flood, logged at debug, not as a bad request.
fn dropped_by_a_bound(error: &request_response::InboundFailure) -> bool {
    matches!(error, request_response::InboundFailure::Io(e) if peerstore_proto::limits::is_limit(e))
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => futures::future::pending().await,
    }
}

async fn wait_for_listen_addr(swarm: &mut Swarm<Behaviour>) -> anyhow::Result<Multiaddr> {
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    let mut found: Vec<Multiaddr> = Vec::new();
    // After the first address, give the other interfaces a moment to report theirs.
    let settle = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(settle);
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => {
                if let SwarmEvent::NewListenAddr { address, .. } = ev {
                    if found.is_empty() {
                        settle.as_mut().reset(Instant::now() + Duration::from_millis(100));
                    }
                    found.push(address);
                }
            }
            _ = &mut settle => break,
            _ = &mut deadline => anyhow::bail!("no listen address came up within 10 s"),
        }
    }
    Ok(choose_advertised(found))
}

/// The address other nodes will dial: TCP over QUIC (every peer has TCP), and a routable
/// address over loopback when the node listens on several interfaces.
pub fn choose_advertised(mut found: Vec<Multiaddr>) -> Multiaddr {
    use libp2p::multiaddr::Protocol;
    found.sort_by_key(|a| {
        let tcp = a.iter().any(|p| matches!(p, Protocol::Tcp(_)));
        let loopback = a.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_loopback(),
            Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        });
        (!tcp, loopback)
    });
    found.remove(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_groups_are_public_slash_16s() {
        let g = |s: &str| address_group(s.parse().unwrap()).map(|g| g.to_string());
        assert_eq!(g("8.8.4.4"), Some("8.8.0.0".into()));
        assert_eq!(g("8.8.200.1"), g("8.8.4.4"));
        assert_ne!(g("8.9.0.1"), g("8.8.4.4"));
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "169.254.1.1",
        ] {
            assert_eq!(g(private), None, "{private}");
        }
        assert_eq!(g("::ffff:8.8.4.4"), Some("8.8.0.0".into()));
        assert_eq!(g("2001:db8:1:2::1"), Some("2001:db8::".into()));
        assert_eq!(g("fe80::1"), None);
        assert_eq!(g("::1"), None);
    }

    #[test]
    fn advertised_address_prefers_routable_tcp() {
        let a: Vec<Multiaddr> = [
            "/ip4/127.0.0.1/udp/5/quic-v1",
            "/ip4/127.0.0.1/tcp/5",
            "/ip4/10.1.2.3/udp/5/quic-v1",
            "/ip4/10.1.2.3/tcp/5",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(choose_advertised(a).to_string(), "/ip4/10.1.2.3/tcp/5");
        let only_loop = vec!["/ip4/127.0.0.1/tcp/9".parse().unwrap()];
        assert_eq!(
            choose_advertised(only_loop).to_string(),
            "/ip4/127.0.0.1/tcp/9"
        );
    }

    fn ring_of(n: usize) -> Vec<chord::Peer<NodeAddr>> {
        let mut v: Vec<chord::Peer<NodeAddr>> = (0..n)
            .map(|i| {
                let peer = PeerId::random();
                chord::Peer {
                    id: ring_id(&peer),
                    addr: NodeAddr {
                        peer,
                        addr: format!("/ip4/127.0.0.1/tcp/{}", 1000 + i).parse().unwrap(),
                    },
                }
            })
            .collect();
        v.sort();
        v
    }

    /// The true owner and replica set on a sorted ring.
    fn truth(ring: &[chord::Peer<NodeAddr>], key: chord::Id, r: usize) -> Vec<NodeAddr> {
        let i = ring.iter().position(|p| p.id >= key).unwrap_or(0);
        (0..r.min(ring.len()))
            .map(|k| ring[(i + k) % ring.len()].addr.clone())
            .collect()
    }

    fn node_at(ring: &[chord::Peer<NodeAddr>], i: usize, list: usize) -> chord::Node<NodeAddr> {
        let n = ring.len();
        let config = chord::Config {
            successors: list,
            predecessors: list,
            replication: 3,
            ..chord::Config::default()
        };
        let mut node = chord::Node::new(config, ring[i].clone());
        let succs = (1..n.min(list + 1))
            .map(|k| ring[(i + k) % n].clone())
            .collect();
        let preds = (1..n.min(list + 1))
            .map(|k| ring[(i + n - k) % n].clone())
            .collect();
        node.install_member_state(chord::Time(0), succs, preds, vec![None; 256]);
        node
    }

    #[test]
    fn local_resolution_matches_the_ring_or_declines() {
        for (n, list) in [(5, 8), (4, 8), (20, 8), (3, 3)] {
            let ring = ring_of(n);
            let mut local = 0;
            for i in 0..n {
                let node = node_at(&ring, i, list);
                for k in 0..200u64 {
                    let key = chord::Id::hash(&k.to_le_bytes());
                    if let Some(res) = resolve_locally(&node, key, 3) {
                        local += 1;
                        let mut got = vec![res.owner.addr.clone()];
                        got.extend(res.successors.iter().take(2).map(|p| p.addr.clone()));
                        assert_eq!(got, truth(&ring, key, 3), "n={n} list={list} node {i}");
                    } else {
                        // Only keys beyond what the node knows go to a real lookup.
                        assert!(
                            n > list,
                            "n={n}: every key of a small ring is known locally"
                        );
                    }
                }
            }
            assert!(local > 0);
        }
    }
}
