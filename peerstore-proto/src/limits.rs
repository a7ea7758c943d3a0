//! Bounds on what peers can make an endpoint hold: how long and how much of a request a node
//! waits for, the node-wide budget of bytes in requests still arriving, connections in total
//! and per remote address, and a per-peer rate of Chord messages (docs/SECURITY.md,
//! "Resource bounds").
//!
//! - **Reading a request** (`FrameReader`, used by the codec on the serving side): a frame's
//!   buffer grows as its bytes arrive (8 KiB at a time, then in 256 KiB chunks), so a stream
//!   that announces 4 MiB and sends nothing holds 8 KiB, not 4 MiB.
//!   The first [`FRAME_FREE_BYTES`] of each frame are read freely; the rest is drawn from a
//!   node-wide budget ([`set_inbound_budget`], default [`DEFAULT_INBOUND_BUDGET`]). A read that
//!   finds the budget spent waits up to [`BUDGET_WAIT`] and then fails its stream. A request
//!   must start to arrive within [`REQUEST_READ_GRACE`] and then keep arriving at an average of
//!   at least [`REQUEST_MIN_RATE`] bytes per second since its stream opened, and be complete
//!   within [`REQUEST_READ_MAX`]: a stream that sends a byte a second is dropped after about
//!   20 s, a 4 MiB block over a link that gives its stream 16 KiB/s still gets through. This
//!   bounds reading the request only; how long a node may take to answer stays
//!   `LONG_REQUEST_TIMEOUT`.
//! - **Connections** ([`ConnectionGuard`]): established connections in total, inbound
//!   connections still in their handshake, and inbound connections (pending or established)
//!   per remote IP address (per /64 for IPv6). Connections this endpoint dials are never
//!   refused; they count towards the total.
//! - **Chord messages** ([`RateLimiter`]): a token bucket per peer; the driver drops what
//!   exceeds it (the sender's Chord core retries or times out as on a lost message).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{select, Either};
use futures::{AsyncRead, AsyncReadExt};
use futures_timer::Delay;
use libp2p::core::multiaddr::Protocol;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    dummy, ConnectionClosed, ConnectionDenied, ConnectionId, DialFailure, FromSwarm, ListenFailure,
    NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::PeerId;
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a request's first bytes may take, and the head start of the rate rule.
pub const REQUEST_READ_GRACE: Duration = Duration::from_secs(20);
/// The average rate, in bytes per second since its stream opened, at which a request must
/// arrive once [`REQUEST_READ_GRACE`] has passed.
pub const REQUEST_MIN_RATE: u64 = 16 << 10;
/// The longest a request may take to arrive, however steadily it comes.
pub const REQUEST_READ_MAX: Duration = Duration::from_secs(300);
/// Bytes of each incoming frame read without drawing on the budget: small requests (and the
/// Chord and greeting protocols, whose messages are smaller) never wait for it.
pub const FRAME_FREE_BYTES: usize = 64 << 10;
/// Default node-wide budget of bytes of requests still arriving, beyond each frame's first
/// [`FRAME_FREE_BYTES`].
pub const DEFAULT_INBOUND_BUDGET: usize = 256 << 20;
/// How long a read waits for the budget before its stream fails.
pub const BUDGET_WAIT: Duration = Duration::from_secs(5);
/// Step by which a frame buffer grows within the frame's free bytes, and the size of the
/// chunks it is read in beyond them.
const SMALL_STEP: usize = 8 << 10;
const CHUNK: usize = 256 << 10;

/// Default bound on established connections (inbound and outbound).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Default bound on inbound connections from one IP address (one /64 for IPv6), pending and
/// established.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 64;
/// Default bound on inbound connections still in their handshake.
pub const DEFAULT_MAX_PENDING_INCOMING: u32 = 256;

/// Chord messages a member may send per second, on average (a node's own maintenance sends a
/// few dozen a second to each neighbour; lookups under load add more).
pub const CHORD_RATE: u32 = 500;
/// Chord messages a member may send in one burst.
pub const CHORD_BURST: u32 = 1000;

static BUDGET: Semaphore = Semaphore::const_new(DEFAULT_INBOUND_BUDGET);
static BUDGET_SIZE: AtomicUsize = AtomicUsize::new(DEFAULT_INBOUND_BUDGET);

/// Sets this process's budget of bytes in incoming requests (a node calls it once, before it
/// serves; at least 4 MiB + 64 KiB so one largest frame always fits).
pub fn set_inbound_budget(bytes: usize) {
    let bytes = bytes.clamp(crate::MAX_CLIENT_FRAME, Semaphore::MAX_PERMITS);
    let old = BUDGET_SIZE.swap(bytes, Ordering::SeqCst);
    if bytes > old {
        BUDGET.add_permits(bytes - old);
    } else {
        BUDGET.forget_permits(old - bytes);
    }
}

/// This process's budget of bytes in incoming requests.
#[must_use]
pub fn inbound_budget() -> usize {
    BUDGET_SIZE.load(Ordering::SeqCst)
}

/// Bytes of the budget not in use right now.
#[must_use]
pub fn inbound_budget_free() -> usize {
    BUDGET.available_permits()
}

/// Why a request stream was dropped by a bound of this module (not a malformed frame).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Limited(String);

/// Whether an I/O error of a request stream comes from a bound of this module (a sender too
/// slow, the budget spent): expected under load or a flood, not a sign of a broken peer.
#[must_use]
pub fn is_limit(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Limited>())
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        Limited(format!(
            "{what} did not arrive in time (a request must start within {}s and then arrive at {} KiB/s or faster); the stream is dropped",
            REQUEST_READ_GRACE.as_secs(),
            REQUEST_MIN_RATE >> 10
        )),
    )
}

/// Reads one frame: the buffers grow as bytes arrive; on the serving side (`limited`) under
/// the read deadlines and the node-wide budget.
pub(crate) struct FrameReader {
    limited: bool,
    start: Instant,
    /// Bytes of this frame read so far.
    received: u64,
    /// Bytes of this frame's buffers allocated so far.
    allocated: usize,
    /// The budget held for `allocated` beyond [`FRAME_FREE_BYTES`].
    permits: Option<SemaphorePermit<'static>>,
    held: usize,
    timer: Option<Delay>,
}

impl FrameReader {
    pub(crate) fn new(limited: bool) -> FrameReader {
        FrameReader {
            limited,
            start: Instant::now(),
            received: 0,
            allocated: 0,
            permits: None,
            held: 0,
            timer: None,
        }
    }

    /// When the next bytes must have arrived by, on the serving side.
    fn deadline(&self) -> Option<Instant> {
        if !self.limited {
            return None;
        }
        let rate = Duration::from_secs_f64(self.received as f64 / REQUEST_MIN_RATE as f64);
        Some(self.start + (REQUEST_READ_GRACE + rate).min(REQUEST_READ_MAX))
    }

    /// Runs `f` (one read) until the deadline.
    async fn within<F, T>(&mut self, what: &str, f: F) -> io::Result<T>
    where
        F: Future<Output = io::Result<T>>,
    {
        let Some(deadline) = self.deadline() else {
            return f.await;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(what));
        }
        let timer = match &mut self.timer {
            Some(t) => {
                t.reset(left);
                t
            }
            None => self.timer.insert(Delay::new(left)),
        };
        match select(pin!(f), timer).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => Err(timed_out(what)),
        }
    }

    /// Some bytes into `buf`; an error at the end of the stream.
    async fn read_some<R>(&mut self, io: &mut R, buf: &mut [u8], what: &str) -> io::Result<usize>
    where
        R: AsyncRead + Unpin + Send,
    {
        let n = self.within(what, io.read(buf)).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the stream ended inside the {what}"),
            ));
        }
        self.received += n as u64;
        Ok(n)
    }

    /// Fills `buf` (a few bytes of a frame's head).
    pub(crate) async fn read_exact<R>(
        &mut self,
        io: &mut R,
        buf: &mut [u8],
        what: &str,
    ) -> io::Result<()>
    where
        R: AsyncRead + Unpin + Send,
    {
        let mut at = 0;
        while at < buf.len() {
            at += self.read_some(io, &mut buf[at..], what).await?;
        }
        Ok(())
    }

    /// Reads and drops `len` bytes in small pieces.
    pub(crate) async fn skip<R>(&mut self, io: &mut R, mut len: usize, what: &str) -> io::Result<()>
    where
        R: AsyncRead + Unpin + Send,
    {
        let mut sink = [0u8; 4096];
        while len > 0 {
            let k = len.min(sink.len());
            len -= self.read_some(io, &mut sink[..k], what).await?;
        }
        Ok(())
    }

    /// Reads `len` bytes into a new buffer that grows as they arrive: while the frame is within
    /// its free bytes, in steps of [`SMALL_STEP`]; beyond them, in steps of [`CHUNK`], each
    /// drawn from the budget before it is written. Leaving the free bytes, the buffer takes its
    /// whole capacity at once, so that nothing is copied as it grows and the frame needs no
    /// joining at the end; capacity that no byte has reached yet costs address space, not
    /// memory (the pages are only touched, and charged to the budget, as the bytes arrive), so
    /// a frame that announces 4 MiB and stalls still holds only what it sent.
    pub(crate) async fn read_vec<R>(
        &mut self,
        io: &mut R,
        len: usize,
        what: &str,
    ) -> io::Result<Vec<u8>>
    where
        R: AsyncRead + Unpin + Send,
    {
        let mut out: Vec<u8> = Vec::new();
        while out.len() < len {
            let left = len - out.len();
            let free = FRAME_FREE_BYTES.saturating_sub(self.allocated);
            let step = if free > 0 {
                left.min(SMALL_STEP).min(free)
            } else {
                left.min(CHUNK)
            };
            self.reserve(step).await?;
            if free == 0 && out.capacity() < len {
                out.reserve_exact(len - out.len());
            } else {
                out.reserve_exact(step);
            }
            let at = out.len();
            out.resize(at + step, 0);
            let mut filled = at;
            while filled < out.len() {
                filled += self.read_some(io, &mut out[filled..], what).await?;
            }
        }
        Ok(out)
    }

    /// Accounts for `more` bytes of buffer, drawing what lies beyond the frame's free bytes
    /// from the budget (serving side only).
    async fn reserve(&mut self, more: usize) -> io::Result<()> {
        self.allocated += more;
        if !self.limited {
            return Ok(());
        }
        let need = self.allocated.saturating_sub(FRAME_FREE_BYTES) - self.held;
        if need == 0 {
            return Ok(());
        }
        let n = u32::try_from(need).map_err(|_| io::Error::other("frame step too large"))?;
        let permit = match BUDGET.try_acquire_many(n) {
            Ok(p) => p,
            Err(_) => {
                let wait = BUDGET_WAIT.min(
                    self.deadline()
                        .map_or(BUDGET_WAIT, |d| d.saturating_duration_since(Instant::now())),
                );
                match select(pin!(BUDGET.acquire_many(n)), Delay::new(wait)).await {
                    Either::Left((Ok(p), _)) => p,
                    _ => {
                        return Err(io::Error::other(Limited(format!(
                            "node busy: its budget for incoming requests ({} MiB) is in use; the stream is dropped, retry shortly",
                            inbound_budget() >> 20
                        ))))
                    }
                }
            }
        };
        self.held += need;
        match &mut self.permits {
            Some(p) => p.merge(permit),
            None => self.permits = Some(permit),
        }
        Ok(())
    }
}

/// Bounds on connections; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Established connections, inbound and outbound; inbound ones beyond it are refused.
    pub max_established: u32,
    /// Inbound connections still in their transport handshake.
    pub max_pending_incoming: u32,
    /// Inbound connections, pending and established, from one IP address (IPv6: one /64).
    pub max_per_ip: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_established: DEFAULT_MAX_CONNECTIONS,
            max_pending_incoming: DEFAULT_MAX_PENDING_INCOMING,
            max_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
        }
    }
}

/// What an endpoint's network may hold: its connection limits and, for a node, the budget of
/// bytes of incoming requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetLimits {
    pub connections: ConnectionLimits,
    /// Bytes of requests still arriving, node-wide ([`set_inbound_budget`]).
    pub inbound_budget: usize,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            connections: ConnectionLimits::default(),
            inbound_budget: DEFAULT_INBOUND_BUDGET,
        }
    }
}

/// The address a connection limit counts under: the IP, IPv4-mapped IPv6 as IPv4, IPv6 by
/// its /64 (one host usually owns a whole /64).
#[must_use]
pub fn ip_key(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(match ip.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = ip.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        }),
        _ => None,
    })
}

#[derive(Debug)]
struct Tracked {
    /// Inbound: the address it counts under.
    ip: Option<IpAddr>,
    inbound: bool,
    established: bool,
}

/// A network behaviour that refuses connections beyond [`ConnectionLimits`].
#[derive(Debug, Default)]
pub struct ConnectionGuard {
    limits: ConnectionLimits,
    conns: HashMap<ConnectionId, Tracked>,
    per_ip: HashMap<IpAddr, u32>,
    pending_in: u32,
    established: u32,
    refused: u64,
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LimitExceeded(String);

impl ConnectionGuard {
    #[must_use]
    pub fn new(limits: ConnectionLimits) -> Self {
        ConnectionGuard {
            limits,
            ..ConnectionGuard::default()
        }
    }

    /// Changes the limits (connections already in stay).
    pub fn set_limits(&mut self, limits: ConnectionLimits) {
        self.limits = limits;
    }

    #[must_use]
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Established connections now.
    #[must_use]
    pub fn established(&self) -> u32 {
        self.established
    }

    /// Inbound connections (pending or established) from `ip`'s address now.
    #[must_use]
    pub fn from_ip(&self, ip: &IpAddr) -> u32 {
        self.per_ip.get(ip).copied().unwrap_or(0)
    }

    /// Connections refused so far.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn refuse(&mut self, why: String) -> ConnectionDenied {
        self.refused += 1;
        if self.refused.is_power_of_two() {
            tracing::warn!(refused = self.refused, "connection refused: {why}");
        } else {
            tracing::debug!("connection refused: {why}");
        }
        ConnectionDenied::new(LimitExceeded(why))
    }

    fn forget(&mut self, id: ConnectionId) {
        let Some(t) = self.conns.remove(&id) else {
            return;
        };
        if t.established {
            self.established = self.established.saturating_sub(1);
        } else if t.inbound {
            self.pending_in = self.pending_in.saturating_sub(1);
        }
        if let Some(ip) = t.ip {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }
}

impl NetworkBehaviour for ConnectionGuard {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        if self.pending_in >= self.limits.max_pending_incoming {
            let why = format!(
                "{} inbound connections are already in their handshake",
                self.pending_in
            );
            return Err(self.refuse(why));
        }
        // Without an IP address (none in the multiaddr) the per-address limit does not apply.
        let ip = ip_key(remote);
        if let Some(ip) = ip {
            let n = self.from_ip(&ip);
            if n >= self.limits.max_per_ip {
                let why =
                    format!("{n} inbound connections from {ip} already (the most per address)");
                return Err(self.refuse(why));
            }
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        self.pending_in += 1;
        self.conns.insert(
            id,
            Tracked {
                ip,
                inbound: true,
                established: false,
            },
        );
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.established >= self.limits.max_established {
            let why = format!(
                "{} connections are established already (the most)",
                self.established
            );
            // The swarm reports the refusal as a listen failure, which forgets the pending one.
            return Err(self.refuse(why));
        }
        match self.conns.get_mut(&id) {
            Some(t) => {
                if !t.established {
                    t.established = true;
                    self.pending_in = self.pending_in.saturating_sub(1);
                    self.established += 1;
                }
            }
            None => {
                // Not seen pending (should not happen): count it from here on.
                let ip = ip_key(remote);
                if let Some(ip) = ip {
                    *self.per_ip.entry(ip).or_insert(0) += 1;
                }
                self.conns.insert(
                    id,
                    Tracked {
                        ip,
                        inbound: true,
                        established: true,
                    },
                );
                self.established += 1;
            }
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: Option<PeerId>,
        _addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Connections this endpoint chose to make are never refused; they count.
        if self
            .conns
            .insert(
                id,
                Tracked {
                    ip: None,
                    inbound: false,
                    established: true,
                },
            )
            .is_none()
        {
            self.established += 1;
        }
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. })
            | FromSwarm::DialFailure(DialFailure { connection_id, .. }) => {
                self.forget(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// A token bucket per key: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, (f64, Instant)>,
    dropped: u64,
}

/// Buckets kept before full ones are forgotten.
const MAX_BUCKETS: usize = 4096;

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    #[must_use]
    pub fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            dropped: 0,
        }
    }

    /// Takes one token of `key`'s bucket if there is one.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = self.buckets.entry(key.clone()).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Forgets `key` (a peer that disconnected).
    pub fn forget(&mut self, key: &K) {
        self.buckets.remove(key);
    }

    /// Messages refused so far.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    #[test]
    fn ip_keys() {
        let a: Multiaddr = "/ip4/10.1.2.3/tcp/5".parse().unwrap();
        assert_eq!(ip_key(&a), Some("10.1.2.3".parse().unwrap()));
        let b: Multiaddr = "/ip6/2001:db8:1:2:3:4:5:6/udp/5/quic-v1".parse().unwrap();
        assert_eq!(ip_key(&b), Some("2001:db8:1:2::".parse().unwrap()));
        let c: Multiaddr = "/ip6/::ffff:10.0.0.1/tcp/1".parse().unwrap();
        assert_eq!(ip_key(&c), Some("10.0.0.1".parse().unwrap()));
        let d: Multiaddr = "/dns4/example.com/tcp/1".parse().unwrap();
        assert_eq!(ip_key(&d), None);
    }

    #[test]
    fn per_ip_and_total_limits() {
        let mut g = ConnectionGuard::new(ConnectionLimits {
            max_established: 3,
            max_pending_incoming: 10,
            max_per_ip: 2,
        });
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let a: Multiaddr = "/ip4/10.0.0.1/tcp/7".parse().unwrap();
        let b: Multiaddr = "/ip4/10.0.0.2/tcp/7".parse().unwrap();
        let ids: Vec<ConnectionId> = (1..9).map(ConnectionId::new_unchecked).collect();
        assert!(g
            .handle_pending_inbound_connection(ids[0], &local, &a)
            .is_ok());
        assert!(g
            .handle_pending_inbound_connection(ids[1], &local, &a)
            .is_ok());
        assert!(g
            .handle_pending_inbound_connection(ids[2], &local, &a)
            .is_err());
        assert_eq!(g.from_ip(&"10.0.0.1".parse().unwrap()), 2);
        let peer = PeerId::random();
        assert!(g
            .handle_established_inbound_connection(ids[0], peer, &local, &a)
            .is_ok());
        assert!(g
            .handle_established_inbound_connection(ids[1], peer, &local, &a)
            .is_ok());
        // An outbound connection is never refused, and counts.
        assert!(g
            .handle_established_outbound_connection(
                ids[3],
                peer,
                &b,
                Endpoint::Dialer,
                PortUse::New
            )
            .is_ok());
        assert_eq!(g.established(), 3);
        assert!(g
            .handle_pending_inbound_connection(ids[4], &local, &b)
            .is_ok());
        assert!(g
            .handle_established_inbound_connection(ids[4], peer, &local, &b)
            .is_err());
        // The swarm reports the refusal; the pending connection is forgotten.
        g.forget(ids[4]);
        assert_eq!(g.from_ip(&"10.0.0.2".parse().unwrap()), 0);
        g.forget(ids[0]);
        assert_eq!(g.from_ip(&"10.0.0.1".parse().unwrap()), 1);
        assert_eq!(g.established(), 2);
        assert!(g
            .handle_pending_inbound_connection(ids[5], &local, &a)
            .is_ok());
        assert_eq!(g.refused(), 2);
    }

    #[test]
    fn pending_inbound_is_bounded() {
        let mut g = ConnectionGuard::new(ConnectionLimits {
            max_established: 100,
            max_pending_incoming: 2,
            max_per_ip: 100,
        });
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let a: Multiaddr = "/ip4/10.0.0.1/tcp/7".parse().unwrap();
        let id = ConnectionId::new_unchecked;
        assert!(g
            .handle_pending_inbound_connection(id(1), &local, &a)
            .is_ok());
        assert!(g
            .handle_pending_inbound_connection(id(2), &local, &a)
            .is_ok());
        assert!(g
            .handle_pending_inbound_connection(id(3), &local, &a)
            .is_err());
        g.forget(id(1));
        assert!(g
            .handle_pending_inbound_connection(id(4), &local, &a)
            .is_ok());
    }

    #[test]
    fn token_bucket() {
        let mut r = RateLimiter::new(10, 5);
        let t = Instant::now();
        let k = 1u8;
        assert_eq!((0..8).filter(|_| r.allow(&k, t)).count(), 5);
        assert!(!r.allow(&k, t));
        assert!(r.allow(&k, t + Duration::from_millis(100)));
        assert!(!r.allow(&k, t + Duration::from_millis(100)));
        assert!(r.allow(&2u8, t));
        assert_eq!(r.dropped(), 5);
        r.forget(&k);
        assert!(r.allow(&k, t + Duration::from_millis(100)));
    }

    #[test]
    fn frame_buffers_grow_with_the_bytes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let mut io = Cursor::new(data.clone());
        let mut r = FrameReader::new(true);
        let got = block_on(r.read_vec(&mut io, data.len(), "frame")).unwrap();
        assert_eq!(got, data);
        assert_eq!(r.allocated, data.len());
        drop(r);
        // A short stream is an end-of-file error, and the buffer never ran ahead of the bytes
        // by more than they were.
        let mut io = Cursor::new(vec![7u8; 10_000]);
        let mut r = FrameReader::new(true);
        let e = block_on(r.read_vec(&mut io, 4 << 20, "frame")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(!is_limit(&e));
        assert!(is_limit(&timed_out("frame")));
        assert!(r.allocated <= 10_000 + SMALL_STEP, "{}", r.allocated);
        drop(r);
        // Everything drawn from the budget is back (other tests may be reading frames now).
        assert!(inbound_budget_free() >= inbound_budget() - (16 << 20));
    }
}
