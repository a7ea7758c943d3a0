//! The node's web page and metrics (`--http ADDR:PORT`, off by default): a small HTTP server
//! on the node's tokio runtime.
//!
//! - `GET /metrics`: Prometheus (OpenMetrics) text, see [`Metrics`].
//! - `GET /ring.json`: the ring as this node sees it: members, their arcs, capacity and
//!   health, kept by a [`Tracker`] that asks every member it knows for its status once per
//!   stabilize period (at least 250 ms, at most 1 s apart).
//! - `GET /`: a static page (`http/ring.html`, embedded) that draws `/ring.json` every 2 s.
//! - `PUT /doc/<name>`, `GET /doc/<name>`, `GET /doc/<name>/__meta`: the gateway's whole
//!   documents (module [`crate::gateway`]).
//!
//! Loopback addresses only, unless `--http-public`: the page shows the ring's membership and
//! needs no credential. Every request is bounded in time ([`REQUEST_TIMEOUT`]) and carries no
//! body but a gateway `PUT` (at most [`crate::gateway::MAX_DOC_BODY`]); connections are
//! bounded in number and lifetime.
//!
//! ```text
//! peerstore-node --data-dir D --http 127.0.0.1:0    # the bound address goes to D/http.addr
//! curl http://$(cat D/http.addr)/metrics
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use peerstore_proto::{MemberRequest, MemberResponse, NodeAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info};

pub use crate::metrics::{client_bytes_in, member_bytes_in, rss_bytes, Metrics, Sample};

use crate::ring::Ring;
use crate::service::Service;

/// `<data-dir>/http.addr`: the address the server bound (`IP:PORT`), for tools and tests when
/// `--http` asked for port 0. Removed when the node stops.
pub const ADDR_FILE: &str = "http.addr";
/// Longest a request may take before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// Longest a connection stays open (a browser opens a new one).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Members the tracker follows at most.
const MAX_TRACKED: usize = 256;
/// Members the tracker asks at once.
const ASK_AT_ONCE: usize = 16;
/// How long the tracker waits for one member's status.
const STATUS_WAIT: Duration = Duration::from_secs(2);
/// A member that has not answered for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The page, embedded: no build step, nothing fetched at build time.
const PAGE: &str = include_str!("http/ring.html");

/// Whether `addr` may be served on: loopback addresses only unless `public`.
pub fn check_addr(addr: &SocketAddr, public: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || public {
        Ok(())
    } else {
        Err(format!(
            "--http {addr} is not a loopback address: the page and metrics need no credential; add --http-public to serve them on {addr} anyway"
        ))
    }
}

/// The running server; dropping it stops the server and removes the address file.
pub struct Server {
    /// The address the server listens on.
    pub addr: SocketAddr,
    addr_file: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.addr_file);
    }
}

/// Binds `addr`, writes `<data_dir>/http.addr`, and serves the page, `/ring.json` and
/// `/metrics` on the current runtime until the returned [`Server`] is dropped.
pub async fn start(
    addr: SocketAddr,
    public: bool,
    data_dir: &Path,
    service: Arc<Service>,
    metrics: Arc<Metrics>,
    stabilize: Duration,
) -> anyhow::Result<Server> {
    check_addr(&addr, public).map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--http {addr}: cannot listen: {e}"))?;
    let bound = listener.local_addr()?;
    let addr_file = data_dir.join(ADDR_FILE);
    crate::identity::write_durable(&addr_file, format!("{bound}\n").as_bytes(), false)?;
    let tracker = Arc::new(Tracker::new(stabilize));
    let tracking = tokio::spawn(tracker.clone().run(service.ring.clone()));
    let gateway = crate::gateway::routes(service.clone(), data_dir)?;
    let state = Arc::new(Http {
        service,
        metrics,
        tracker,
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/ring.json", get(ring_json))
        .route("/metrics", get(metrics_text))
        .with_state(state)
        .merge(gateway)
        .layer(middleware::from_fn(bounded));
    let listener = Bounded {
        inner: listener,
        permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    let serving = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "web page server stopped");
        }
    });
    info!(addr = %bound, file = %addr_file.display(), "web page and metrics on http://{bound}/");
    println!("peerstore-node web page on http://{bound}/ (metrics: /metrics)");
    Ok(Server {
        addr: bound,
        addr_file,
        tasks: vec![tracking, serving],
    })
}

struct Http {
    service: Arc<Service>,
    metrics: Arc<Metrics>,
    tracker: Arc<Tracker>,
}

/// Every request answered within [`REQUEST_TIMEOUT`]; only `PUT /doc/<name>` (the gateway,
/// bounded by its own body limit) carries a body, everything else is `GET` or `HEAD`.
async fn bounded(request: Request, next: Next) -> Response {
    let has_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    let doc_put = request.method() == Method::PUT && request.uri().path().starts_with("/doc/");
    if has_body && !doc_put {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "requests carry no body\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD && !doc_put {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET, and PUT of /doc/<name>\n",
        );
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(r) => r,
        Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, "timed out\n"),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = (status, text).into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn with_type(content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn page() -> Response {
    with_type("text/html; charset=utf-8", PAGE)
}

async fn metrics_text(State(h): State<Arc<Http>>) -> Response {
    let (healthy, unhealthy) = h.tracker.counts();
    let mut sample = store_sample(&h.service).await;
    sample.activity = h.service.replication.activity.snapshot();
    sample.rss_bytes = rss_bytes();
    sample.members_healthy = healthy;
    sample.members_unhealthy = unhealthy;
    sample.ring_lookups = h.service.ring.lookups.snapshot();
    let text = h.metrics.encode(&sample);
    with_type(
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        text,
    )
}

/// The store's figures (both stores: replicated copies and single copies).
async fn store_sample(service: &Service) -> Sample {
    let repl = &service.replication;
    let stores: Vec<_> = std::iter::once(repl.store.clone())
        .chain(repl.single.clone())
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut s = Sample::default();
        for (i, store) in stores.iter().enumerate() {
            let st = store.stats();
            s.store_bytes += st.used_bytes;
            s.store_blocks += st.roles.blocks();
            s.record_bytes += st.record_bytes;
            if i == 0 {
                // The stores share one capacity.
                s.store_capacity = st.capacity;
                s.store_free = st.free_bytes;
            }
        }
        s
    })
    .await
    .unwrap_or_default()
}

async fn ring_json(State(h): State<Arc<Http>>) -> Response {
    let Some(view) = h.service.ring.view().await else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is shutting down\n",
        );
    };
    let held = store_sample(&h.service).await;
    let mut v = h.tracker.report(&view.me.addr);
    v["member"] = serde_json::json!(view.member);
    v["keys_held"] = serde_json::json!(held.store_blocks);
    v["bytes_held"] = serde_json::json!(held.store_bytes);
    v["replication"] = serde_json::json!(h.service.ring.replication);
    with_type("application/json", v.to_string())
}

/// What the tracker last heard from a member's status.
#[derive(Clone, Debug)]
struct Figures {
    member: bool,
    bytes_used: u64,
    capacity: u64,
    keys_owned: u64,
    keys_replica: u64,
    host: String,
    zone: String,
    placement_warning: Option<String>,
}

#[derive(Debug)]
struct Tracked {
    addr: NodeAddr,
    first_seen: Instant,
    last_ok: Option<Instant>,
    last_error: Option<String>,
    figures: Option<Figures>,
}

/// Health of a member as the page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Answered within the last `stale`.
    Healthy,
    /// Has not answered for `stale` or longer.
    Unhealthy,
    /// Just learned of, not asked yet.
    Unknown,
}

impl Health {
    fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        }
    }
}

/// Follows the members this node knows of: asks each for its status every `poll`, and calls
/// one unhealthy when it has not answered for `stale`.
#[derive(Debug)]
pub struct Tracker {
    members: Mutex<BTreeMap<chord::Id, Tracked>>,
    /// How often every member is asked.
    pub poll: Duration,
    /// How long without an answer makes a member unhealthy: three stabilize periods, at least
    /// two polls and at least 2 s (a busy member is not dead).
    pub stale: Duration,
}

impl Tracker {
    #[must_use]
    pub fn new(stabilize: Duration) -> Tracker {
        let poll = stabilize.clamp(Duration::from_millis(250), Duration::from_secs(1));
        let stale = (stabilize * 3).max(poll * 2).max(Duration::from_secs(2));
        Tracker {
            members: Mutex::new(BTreeMap::new()),
            poll,
            stale,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<chord::Id, Tracked>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(self: Arc<Self>, ring: Arc<Ring>) {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.round(&ring).await;
        }
    }

    /// Asks every member known (this node's view, what members answered before) for its
    /// status once.
    async fn round(&self, ring: &Ring) {
        let Some(view) = ring.view().await else {
            return;
        };
        let now = Instant::now();
        let mut ask: BTreeMap<chord::Id, NodeAddr> = self
            .lock()
            .iter()
            .map(|(id, t)| (*id, t.addr.clone()))
            .collect();
        for p in std::iter::once(&view.me)
            .chain(&view.successors)
            .chain(&view.predecessors)
            .chain(&view.fingers)
        {
            if ask.len() < MAX_TRACKED || ask.contains_key(&p.id) {
                ask.insert(p.id, p.addr.clone());
            }
        }
        let answers = futures::stream::iter(ask)
            .map(|(id, addr)| async move {
                let r = tokio::time::timeout(STATUS_WAIT, ring.call(&addr, MemberRequest::Status))
                    .await;
                (id, addr, r)
            })
            .buffer_unordered(ASK_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        let done = Instant::now();
        let mut members = self.lock();
        for (id, addr, answer) in answers {
            let t = members.entry(id).or_insert_with(|| Tracked {
                addr: addr.clone(),
                first_seen: now,
                last_ok: None,
                last_error: None,
                figures: None,
            });
            t.addr = addr;
            match answer {
                Ok(Ok(MemberResponse::Status(s))) => {
                    t.last_ok = Some(done);
                    t.last_error = None;
                    t.figures = Some(Figures {
                        member: s.member,
                        bytes_used: s.bytes_used,
                        capacity: s.capacity,
                        keys_owned: s.keys_owned,
                        keys_replica: s.keys_replica,
                        host: s.placement.host.clone(),
                        zone: s.placement.zone.clone(),
                        placement_warning: s.placement.warning.clone(),
                    });
                    // Members it knows of are asked next round.
                    for m in s.successors.iter().chain(&s.predecessor) {
                        if members.len() < MAX_TRACKED && !members.contains_key(&m.id) {
                            members.insert(
                                m.id,
                                Tracked {
                                    addr: m.addr.clone(),
                                    first_seen: done,
                                    last_ok: None,
                                    last_error: None,
                                    figures: None,
                                },
                            );
                        }
                    }
                }
                Ok(Ok(other)) => {
                    t.last_error = Some(format!("unexpected answer {}", variant(&other)));
                }
                Ok(Err(e)) => t.last_error = Some(e.message),
                Err(_) => {
                    t.last_error = Some(format!("no answer within {} s", STATUS_WAIT.as_secs()));
                }
            }
        }
        members.retain(|id, t| {
            *id == view.me.id
                || done.duration_since(t.last_ok.unwrap_or(t.first_seen)) < FORGET_AFTER
        });
        debug!(members = members.len(), "ring tracker round");
    }

    fn health(&self, t: &Tracked, now: Instant) -> Health {
        match t.last_ok {
            Some(at) if now.duration_since(at) < self.stale => Health::Healthy,
            Some(_) => Health::Unhealthy,
            None if now.duration_since(t.first_seen) < self.stale => Health::Unknown,
            None => Health::Unhealthy,
        }
    }

    /// Members healthy and unhealthy now.
    #[must_use]
    pub fn counts(&self) -> (u64, u64) {
        let now = Instant::now();
        let members = self.lock();
        let mut out = (0, 0);
        for t in members.values() {
            match self.health(t, now) {
                Health::Healthy => out.0 += 1,
                Health::Unhealthy => out.1 += 1,
                Health::Unknown => {}
            }
        }
        out
    }

    /// The ring as JSON (the body of `/ring.json` but for the node's own figures).
    fn report(&self, me: &NodeAddr) -> serde_json::Value {
        let now = Instant::now();
        let members = self.lock();
        let health: BTreeMap<chord::Id, Health> = members
            .iter()
            .map(|(id, t)| (*id, self.health(t, now)))
            .collect();
        // Arcs: each healthy member owns (previous healthy member, itself].
        let live: Vec<chord::Id> = health
            .iter()
            .filter(|(_, h)| **h == Health::Healthy)
            .map(|(id, _)| *id)
            .collect();
        let arc = |id: &chord::Id| -> (f64, f64) {
            let Some(i) = live.iter().position(|l| l == id) else {
                return (position(id), 0.0);
            };
            if live.len() == 1 {
                return (position(id), 1.0);
            }
            let prev = live[(i + live.len() - 1) % live.len()];
            let share = id.high_u64().wrapping_sub(prev.high_u64()) as f64 / 2f64.powi(64);
            (position(&prev), share)
        };
        let list: Vec<serde_json::Value> = members
            .iter()
            .map(|(id, t)| {
                let (arc_start, arc_share) = arc(id);
                let f = t.figures.as_ref();
                serde_json::json!({
                    "id": id.to_hex(),
                    "name": &id.to_hex()[..8],
                    "peer": t.addr.peer.to_string(),
                    "addr": t.addr.to_string(),
                    "self": t.addr == *me,
                    "position": position(id),
                    "arc_start": arc_start,
                    "arc_share": arc_share,
                    "health": health[id].as_str(),
                    "healthy": health[id] == Health::Healthy,
                    "last_seen_ms_ago": t.last_ok.map(|at| millis(now.duration_since(at))),
                    "error": t.last_error,
                    "member": f.map(|f| f.member),
                    "bytes_used": f.map(|f| f.bytes_used),
                    "capacity": f.map(|f| f.capacity),
                    "free": f.map(|f| f.capacity.saturating_sub(f.bytes_used)),
                    "keys_owned": f.map(|f| f.keys_owned),
                    "keys_replica": f.map(|f| f.keys_replica),
                    "host": f.map(|f| f.host.clone()),
                    "zone": f.map(|f| f.zone.clone()),
                    "placement_warning": f.and_then(|f| f.placement_warning.clone()),
                })
            })
            .collect();
        serde_json::json!({
            "node": { "id": chord_id(me).to_hex(), "addr": me.to_string() },
            "poll_ms": millis(self.poll),
            "unhealthy_after_ms": millis(self.stale),
            "members": list,
        })
    }
}

fn chord_id(a: &NodeAddr) -> chord::Id {
    peerstore_proto::ring_id(&a.peer)
}

/// Where `id` is on the ring, as a fraction of a turn from 0.
fn position(id: &chord::Id) -> f64 {
    id.high_u64() as f64 / 2f64.powi(64)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The name of an answer's variant (not its contents, which may be large).
fn variant(r: &MemberResponse) -> String {
    let s = format!("{r:?}");
    s.split([' ', '(', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The listener: at most [`MAX_CONNECTIONS`] connections at once, each open at most
/// [`CONNECTION_LIFETIME`] (a client that sends its request slowly or never loses its
/// connection).
struct Bounded {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for Bounded {
    type Io = BoundedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedIo, SocketAddr) {
        loop {
            let permit = match self.permits.clone().acquire_owned().await {
                Ok(p) => p,
                // Never closed; wait rather than spin if it were.
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let io = BoundedIo {
                        inner: stream,
                        deadline: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
                        _permit: permit,
                    };
                    return (io, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, as axum does.
                    debug!(error = %e, "web page: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that ends at its deadline and frees its permit when dropped.
struct BoundedIo {
    inner: TcpStream,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl BoundedIo {
    fn expired(&mut self, cx: &mut TaskContext<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection open too long")
}

impl AsyncRead for BoundedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_public() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let lo6: SocketAddr = "[::1]:9000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        assert!(check_addr(&lo, false).is_ok());
        assert!(check_addr(&lo6, false).is_ok());
        assert!(check_addr(&any, false).is_err());
        assert!(check_addr(&any, true).is_ok());
    }

    #[test]
    fn health_follows_the_last_answer() {
        let t = Tracker::new(Duration::from_millis(200));
        assert_eq!(t.poll, Duration::from_millis(250));
        assert_eq!(t.stale, Duration::from_secs(2));
        let key = libp2p::identity::Keypair::generate_ed25519();
        let now = Instant::now();
        let mut m = Tracked {
            addr: NodeAddr {
                peer: key.public().to_peer_id(),
                addr: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
            },
            first_seen: now,
            last_ok: None,
            last_error: None,
            figures: None,
        };
        assert_eq!(t.health(&m, now), Health::Unknown);
        assert_eq!(t.health(&m, now + t.stale), Health::Unhealthy);
        m.last_ok = Some(now);
        assert_eq!(t.health(&m, now + t.poll), Health::Healthy);
        assert_eq!(t.health(&m, now + t.stale), Health::Unhealthy);
    }
}
