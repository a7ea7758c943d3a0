//! Acceptance 4 of the trust issue ("Bounded resources"): a node under 2,000 slow streams and
//! 500 connections from one address keeps serving a normal client, and its memory stays
//! bounded.
//!
//! A ring of 3 real `peerstore-node` processes on 127.0.0.1 (plain replication, r = 3). A user
//! puts and gets 16 KiB blocks through node 0; the median and p99 of each are measured, then
//! the same again while, all from 127.0.0.1:
//! - 16 libp2p connections of admitted users (each with its own user certificate, so the node
//!   keeps them) open 125 client-protocol streams each (2,000 in all). Every stream sends the
//!   head of a frame announcing a 4 MiB request and then a byte a second; before that, 117 of
//!   each connection's streams send 16 KiB of the body ("light") and 8 send all of it but the
//!   last 64 KiB ("heavy": 128 streams that would pin 512 MiB if the node kept what they
//!   sent). A stream the node drops is opened again at once;
//! - 484 plain TCP connections that never start the handshake (500 connections in all),
//!   opened again a second after the node closes one.
//!
//! The node's resident memory (VmRSS in /proc/<pid>/status) is read before and, every 200 ms,
//! during the flood. The test prints both latencies, the memory and what the attacker got
//! (connections and streams open, streams the node dropped), and asserts that:
//! - every operation of the user succeeded, none slower than a generous bound (2 s, or 20
//!   times the baseline p99 if that is more: timing is measured in benchmarks, this only
//!   checks that service goes on);
//! - the node dropped the light streams (they fall behind the rate a request must keep)
//!   instead of keeping them for the hour an answer may take;
//! - it never kept more plain sockets from the one address open than its per-address limit;
//! - its RSS stayed under 512 MiB.
//!
//! Needs the binaries built beside the tests: `cargo build --release --workspace --bins`.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{noise, tcp, StreamProtocol};
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;

use peerstore_proto::admission::{Identity, Revocations, Role};
use peerstore_proto::{
    hello_codec, BlockKey, ClientRequest, ClientResponse, HelloCodec, HelloResponse, Incoming,
    NodeAddr, RpcClient, CLIENT_PROTOCOL, HELLO_PROTOCOL,
};
use peerstore_testkit::{block, Cluster};

/// Admitted attacker connections, and slow streams on each.
const ATTACKERS: usize = 16;
const STREAMS_PER_ATTACKER: usize = 125;
/// Plain TCP connections that never handshake (with the attackers: 500 connections).
const RAW_SOCKETS: usize = 500 - ATTACKERS;
/// Of each attacker's streams, how many are heavy: they send all of the announced frame but
/// its last 64 KiB at once (what pinned 4 MiB per stream before the node bounded its frame
/// buffers), then a byte a second. The others send `LIGHT_PREFIX` bytes, then a byte a second.
const HEAVY_PER_ATTACKER: usize = 8;
const LIGHT_PREFIX: usize = 16 << 10;
/// The frame every slow stream announces: a client request of nearly the largest size.
const ANNOUNCED: usize = peerstore_proto::MAX_CLIENT_FRAME - 16;
/// Operations of the user per measurement, and the size of each block.
const OPS: usize = 50;
const BLOCK: usize = 16 << 10;
/// The bounds asserted.
const RSS_BOUND_KIB: u64 = 512 << 10;
const LATENCY_FLOOR: Duration = Duration::from_secs(2);
const LATENCY_FACTOR: u32 = 20;

/// What the attacker has open right now, and the most it had.
#[derive(Default)]
struct Stats {
    connections: AtomicUsize,
    streams: AtomicUsize,
    streams_max: AtomicUsize,
    streams_opened: AtomicU64,
    /// Light streams that the node dropped (their write failed).
    light_dropped: AtomicU64,
    heavy_dropped: AtomicU64,
    raw_open: AtomicUsize,
    raw_max: AtomicUsize,
    raw_opened: AtomicU64,
    /// Plain sockets the node has kept open for 2 s or more, now and at most.
    raw_held: AtomicUsize,
    raw_held_max: AtomicUsize,
}

fn bump_max(max: &AtomicUsize, now: usize) {
    max.fetch_max(now, Ordering::Relaxed);
}

/// Counts one open slow stream while it lives.
struct Open(Arc<Stats>);

impl Open {
    fn new(stats: &Arc<Stats>) -> Open {
        let now = stats.streams.fetch_add(1, Ordering::Relaxed) + 1;
        bump_max(&stats.streams_max, now);
        stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        Open(stats.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A "request" that never finishes: the head of a 4 MiB client frame, a first part of its
/// body (light: 16 KiB, heavy: all but 64 KiB), then a byte a second for as long as the node
/// keeps the stream.
#[derive(Clone)]
struct SlowCodec {
    stats: Arc<Stats>,
}

/// Which kind of slow stream a request opens.
#[derive(Clone, Copy, Debug)]
enum Slow {
    Light,
    Heavy,
}

#[async_trait::async_trait]
impl request_response::Codec for SlowCodec {
    type Protocol = StreamProtocol;
    type Request = Slow;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Slow>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("the attacker serves nothing"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut sink = Vec::new();
        io.read_to_end(&mut sink).await?;
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        kind: Slow,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let _open = Open::new(&self.stats);
        let r = dribble(io, kind).await;
        let dropped = match kind {
            Slow::Light => &self.stats.light_dropped,
            Slow::Heavy => &self.stats.heavy_dropped,
        };
        dropped.fetch_add(1, Ordering::Relaxed);
        r
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, _: &mut T, _: ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

/// Writes a slow stream until the node drops it.
async fn dribble<T: AsyncWrite + Unpin + Send>(io: &mut T, kind: Slow) -> io::Result<()> {
    let total = ANNOUNCED as u32;
    let body = match kind {
        Slow::Light => LIGHT_PREFIX,
        Slow::Heavy => ANNOUNCED - (64 << 10),
    };
    let mut head = Vec::with_capacity(9 + body);
    head.extend_from_slice(&total.to_be_bytes());
    head.push(0xC1); // the client protocol's audience tag
    head.extend_from_slice(&(total - 5).to_be_bytes());
    head.resize(4 + body, 0x5A);
    io.write_all(&head).await?;
    io.flush().await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        io.write_all(&[0x5A]).await?;
        io.flush().await?;
    }
}

#[derive(NetworkBehaviour)]
struct Attacker {
    hello: request_response::Behaviour<HelloCodec>,
    slow: request_response::Behaviour<SlowCodec>,
}

/// One admitted attacker: greets the node with its user certificate, then keeps `streams`
/// slow streams open on one connection until `stop`.
async fn attacker(
    id: Identity,
    node: NodeAddr,
    streams: usize,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let long = request_response::Config::default()
        .with_request_timeout(Duration::from_secs(3600))
        .with_max_concurrent_streams(streams + 8);
    let codec = SlowCodec {
        stats: stats.clone(),
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(id.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            peerstore_proto::mux::Yamux::default,
        )
        .expect("tcp transport")
        .with_behaviour(|_| Attacker {
            hello: request_response::Behaviour::with_codec(
                hello_codec(),
                [(HELLO_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            ),
            slow: request_response::Behaviour::with_codec(
                codec,
                [(CLIENT_PROTOCOL, ProtocolSupport::Outbound)],
                long,
            ),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    let peer = node.peer;
    let addrs = vec![node.addr.clone()];
    let mut opened = false;
    let mut kinds: HashMap<request_response::OutboundRequestId, Slow> = HashMap::new();
    swarm.behaviour_mut().hello.send_request_with_addresses(
        &peer,
        Incoming::Message(id.hello(Revocations::default())),
        addrs.clone(),
    );
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { .. } => {
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                }
                SwarmEvent::ConnectionClosed { .. } => {
                    stats.connections.fetch_sub(1, Ordering::Relaxed);
                    // Greet again on the next connection (a slow request dials it).
                    swarm.behaviour_mut().hello.send_request_with_addresses(
                        &peer,
                        Incoming::Message(id.hello(Revocations::default())),
                        addrs.clone(),
                    );
                }
                SwarmEvent::Behaviour(AttackerEvent::Hello(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                })) => {
                    assert!(
                        matches!(response, HelloResponse::Welcome { .. }),
                        "the node refused a user's greeting: {response:?}"
                    );
                    if !opened {
                        opened = true;
                        for i in 0..streams {
                            let kind = if i < HEAVY_PER_ATTACKER { Slow::Heavy } else { Slow::Light };
                            let id = swarm
                                .behaviour_mut()
                                .slow
                                .send_request_with_addresses(&peer, kind, addrs.clone());
                            kinds.insert(id, kind);
                        }
                    }
                }
                SwarmEvent::Behaviour(AttackerEvent::Slow(ev)) => {
                    let id = match ev {
                        request_response::Event::OutboundFailure { request_id, .. } => request_id,
                        request_response::Event::Message {
                            message: request_response::Message::Response { request_id, .. },
                            ..
                        } => request_id,
                        _ => continue,
                    };
                    // The node dropped a stream: open another of the same kind.
                    let kind = kinds.remove(&id).unwrap_or(Slow::Light);
                    let id = swarm
                        .behaviour_mut()
                        .slow
                        .send_request_with_addresses(&peer, kind, addrs.clone());
                    kinds.insert(id, kind);
                }
                _ => {}
            },
            _ = stop.changed() => break,
        }
    }
}

/// A TCP connection that never starts the handshake, opened again a second after the node
/// closes it (or refuses it).
async fn raw_socket(port: u16, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            {
                let now = stats.raw_open.fetch_add(1, Ordering::Relaxed) + 1;
                bump_max(&stats.raw_max, now);
                stats.raw_opened.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 256];
                let held = tokio::time::sleep(Duration::from_secs(2));
                tokio::pin!(held);
                let mut counted = false;
                loop {
                    tokio::select! {
                        r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                        _ = &mut held, if !counted => {
                            counted = true;
                            let now = stats.raw_held.fetch_add(1, Ordering::Relaxed) + 1;
                            bump_max(&stats.raw_held_max, now);
                        }
                        _ = stop.changed() => break,
                    }
                }
                if counted {
                    stats.raw_held.fetch_sub(1, Ordering::Relaxed);
                }
                stats.raw_open.fetch_sub(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
    }
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Latencies of one round of the user's puts and gets, and what failed.
struct Round {
    puts: Vec<Duration>,
    gets: Vec<Duration>,
    failures: Vec<String>,
}

impl Round {
    fn all(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.puts.iter().chain(&self.gets).copied().collect();
        v.sort();
        v
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn summary(name: &str, v: &[Duration]) -> String {
    let mut s = v.to_vec();
    s.sort();
    format!(
        "{name}: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&s, 50).as_secs_f64() * 1e3,
        percentile(&s, 99).as_secs_f64() * 1e3,
        s.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    )
}

async fn round(user: &RpcClient, seed: u64) -> Round {
    let mut r = Round {
        puts: Vec::new(),
        gets: Vec::new(),
        failures: Vec::new(),
    };
    for i in 0..OPS as u64 {
        let data = block(seed + i, BLOCK);
        let key = BlockKey::of(&data);
        let t = Instant::now();
        let put = user
            .call(ClientRequest::Put {
                key,
                data: data.clone(),
            })
            .await;
        r.puts.push(t.elapsed());
        if !matches!(put, Ok(ClientResponse::Stored { .. })) {
            r.failures.push(format!("put {i}: {put:?}"));
            continue;
        }
        let t = Instant::now();
        let got = user.call(ClientRequest::Get { key }).await;
        r.gets.push(t.elapsed());
        match got {
            Ok(ClientResponse::Block { data: back }) if back == data => {}
            other => r.failures.push(format!(
                "get {i}: {:?}",
                other.map(|r| match r {
                    ClientResponse::Block { data } => format!("{} wrong bytes", data.len()),
                    r => format!("{r:?}"),
                })
            )),
        }
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_node_keeps_serving_within_bounded_memory() {
    let started = Instant::now();
    let cluster = Cluster::start(3, &["--entanglement", "none", "--replication", "3"]).await;
    cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let target = &cluster.nodes[0];
    let pid = target.child.as_ref().expect("node 0 runs").id();
    let port = target
        .addr
        .addr
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("node 0 listens on TCP");

    let user = RpcClient::start_as(
        target.addr.clone(),
        Duration::from_secs(10),
        Some(cluster.identity(Role::User)),
    )
    .expect("user endpoint");
    // Warm up (connection, greeting, first allocations, and a few blocks of the largest size,
    // as a client's packs are), then the baseline.
    let warm = round(&user, 1_000_000).await;
    assert!(warm.failures.is_empty(), "warm-up: {:?}", warm.failures);
    for i in 0..4 {
        let data = block(5_000_000 + i, peerstore_proto::MAX_BLOCK_SIZE);
        let key = BlockKey::of(&data);
        let put = user.call(ClientRequest::Put { key, data }).await;
        assert!(matches!(put, Ok(ClientResponse::Stored { .. })), "{put:?}");
        let got = user.call(ClientRequest::Get { key }).await;
        assert!(
            matches!(got, Ok(ClientResponse::Block { .. })),
            "get of a 4 MiB block failed"
        );
    }
    let rss_before = vm_rss_kib(pid);
    let base = round(&user, 2_000_000).await;
    assert!(base.failures.is_empty(), "baseline: {:?}", base.failures);

    // The flood.
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..ATTACKERS {
        tasks.push(tokio::spawn(attacker(
            cluster.identity(Role::User),
            target.addr.clone(),
            STREAMS_PER_ATTACKER,
            stats.clone(),
            stop.clone(),
        )));
    }
    // Let the attackers' connections in first, then the plain sockets.
    let _ = peerstore_testkit::wait_until(Duration::from_secs(15), || async {
        let open = stats.streams.load(Ordering::Relaxed);
        if open >= ATTACKERS * STREAMS_PER_ATTACKER * 9 / 10 {
            Ok(())
        } else {
            Err(format!("{open} slow streams open"))
        }
    })
    .await;
    for _ in 0..RAW_SOCKETS {
        tasks.push(tokio::spawn(raw_socket(port, stats.clone(), stop.clone())));
    }
    let rss_max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let rss_max = rss_max.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                rss_max.fetch_max(vm_rss_kib(pid), Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => break,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let streams_at_start = stats.streams.load(Ordering::Relaxed);
    let raw_at_start = stats.raw_open.load(Ordering::Relaxed);
    let loaded = round(&user, 3_000_000).await;
    // Hold the flood past the node's read deadline for requests, so that slow streams have
    // been dropped and opened again at least once.
    let hold_until = Instant::now() + Duration::from_secs(25);
    let mut later = Vec::new();
    while Instant::now() < hold_until {
        let r = round(&user, 4_000_000 + 1_000 * later.len() as u64).await;
        later.push(r);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let rss_during = vm_rss_kib(pid);
    let _ = stop_tx.send(true);
    let _ = sampler.await;
    for t in tasks {
        t.abort();
    }
    let rss_peak = rss_max.load(Ordering::Relaxed).max(rss_during);

    let base_all = base.all();
    let loaded_all = loaded.all();
    let later_all: Vec<Duration> = later.iter().flat_map(|r| r.all()).collect();
    println!("flood: {ATTACKERS} admitted attacker connections x {STREAMS_PER_ATTACKER} slow streams, {RAW_SOCKETS} plain TCP sockets, all from 127.0.0.1");
    let light_dropped = stats.light_dropped.load(Ordering::Relaxed);
    let heavy_dropped = stats.heavy_dropped.load(Ordering::Relaxed);
    let raw_held_max = stats.raw_held_max.load(Ordering::Relaxed);
    println!(
        "attacker got: {} connections open at the end; slow streams open {} when the measurement began (most at once {}, {} opened in all; the node dropped {light_dropped} light and {heavy_dropped} heavy ones); plain sockets open {} then (most at once {}, {} accepted by the kernel in all, most kept open by the node for 2 s or more at once: {raw_held_max})",
        stats.connections.load(Ordering::Relaxed),
        streams_at_start,
        stats.streams_max.load(Ordering::Relaxed),
        stats.streams_opened.load(Ordering::Relaxed),
        raw_at_start,
        stats.raw_max.load(Ordering::Relaxed),
        stats.raw_opened.load(Ordering::Relaxed),
    );
    println!("baseline   {}", summary("put+get", &base_all));
    println!("           {}", summary("put", &base.puts));
    println!("           {}", summary("get", &base.gets));
    println!("under load {}", summary("put+get", &loaded_all));
    println!("           {}", summary("put", &loaded.puts));
    println!("           {}", summary("get", &loaded.gets));
    println!(
        "held        {} ({} rounds over 25 s)",
        summary("put+get", &later_all),
        later.len()
    );
    println!(
        "node RSS: {} MiB before, {} MiB at the end of the flood, {} MiB at most (bound {} MiB)",
        rss_before >> 10,
        rss_during >> 10,
        rss_peak >> 10,
        RSS_BOUND_KIB >> 10
    );
    println!("test time: {:.1} s", started.elapsed().as_secs_f64());

    let failures: Vec<&String> = loaded
        .failures
        .iter()
        .chain(later.iter().flat_map(|r| &r.failures))
        .collect();
    assert!(
        failures.is_empty(),
        "the user's operations failed under the flood: {failures:?}"
    );
    let bound = LATENCY_FLOOR.max(percentile(&base_all, 99) * LATENCY_FACTOR);
    let worst = loaded_all
        .iter()
        .chain(&later_all)
        .copied()
        .max()
        .unwrap_or_default();
    assert!(
        worst <= bound,
        "an operation took {worst:?} under the flood (bound {bound:?})"
    );
    // The node dropped the streams that did not deliver their requests (a light one sends
    // 16 KiB and then a byte a second: under the rate a request must keep), rather than keep
    // them for the hour an answer may take.
    let light = (ATTACKERS * (STREAMS_PER_ATTACKER - HEAVY_PER_ATTACKER)) as u64;
    assert!(
        light_dropped >= light * 9 / 10,
        "the node dropped only {light_dropped} of {light} light slow streams within the flood"
    );
    // Connections from one address are bounded (the attackers' 16, the user's and the other
    // nodes' count too).
    assert!(
        raw_held_max <= peerstore_proto::limits::DEFAULT_MAX_CONNECTIONS_PER_IP as usize,
        "the node kept {raw_held_max} plain sockets from 127.0.0.1 open at once"
    );
    assert!(
        rss_peak <= RSS_BOUND_KIB,
        "the node's RSS reached {} MiB (bound {} MiB)",
        rss_peak >> 10,
        RSS_BOUND_KIB >> 10
    );
    assert!(
        target.alive() && target.status().await.is_some(),
        "the node stopped answering"
    );
}
