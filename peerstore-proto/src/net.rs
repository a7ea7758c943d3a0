//! The libp2p endpoint every PeerStore process builds: TCP (TLS 1.3 or Noise, negotiated;
//! our yamux with large frames) and QUIC, the four request-response protocols and identify.
//! A node serves all four; a client endpoint only sends. Every endpoint bounds its connections
//! ([`crate::limits::ConnectionGuard`]) and the streams of each connection; a node also reads
//! requests under the deadlines and byte budget of [`crate::limits`].

use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, identity::Keypair, noise, tcp, tls, Swarm};

use crate::limits::{ConnectionGuard, NetLimits};
use crate::{
    admin_codec, chord_codec, client_codec, hello_codec, member_codec, AdminCodec, ChordCodec,
    ClientCodec, HelloCodec, MemberCodec, ADMIN_PROTOCOL, CHORD_PROTOCOL, CLIENT_PROTOCOL,
    HELLO_PROTOCOL, MEMBER_PROTOCOL,
};

/// How long a hello may take (both the sender's wait and the receiver's stream).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a node serves one inbound request of the client, member or admin protocol, and
/// how long a sender waits for the answer to a long-running one (ring-wide repair, audit and
/// scrub, and their per-node parts), before giving up. Ordinary requests are bounded by their
/// sender's own timeout.
pub const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a connection's transport handshake (TCP, then TLS or Noise, then yamux) may take;
/// a socket that never finishes it is closed then.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent streams per connection, inbound and outbound together, of each protocol. A
/// stream beyond them is dropped (inbound) or fails at once (outbound).
pub const MAX_HELLO_STREAMS: usize = 8;
/// Chord messages are acknowledged at once, so their streams are short.
pub const MAX_CHORD_STREAMS: usize = 128;
/// A client keeps at most a few dozen requests in flight (8 packs, 32 small files).
pub const MAX_CLIENT_STREAMS: usize = 128;
/// Replication between two members under load (quorum puts, anti-entropy, entangled writes).
pub const MAX_MEMBER_STREAMS: usize = 256;
/// An administrator runs one operation at a time.
pub const MAX_ADMIN_STREAMS: usize = 32;

/// The network behaviour of a PeerStore endpoint.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so that a refused connection is seen by nothing else.
    pub limits: ConnectionGuard,
    pub hello: request_response::Behaviour<HelloCodec>,
    pub chord: request_response::Behaviour<ChordCodec>,
    pub client: request_response::Behaviour<ClientCodec>,
    pub member: request_response::Behaviour<MemberCodec>,
    pub admin: request_response::Behaviour<AdminCodec>,
    pub identify: identify::Behaviour,
}

/// Builds the libp2p swarm. `serve` says whether this endpoint answers requests (nodes do,
/// clients do not). The client, member and admin protocols allow [`LONG_REQUEST_TIMEOUT`] per
/// stream, so a repair or scrub that runs for minutes still gets its answer back; each outbound
/// request is bounded by its sender instead. The Chord protocol uses `request_timeout`.
/// Connections are bounded by the defaults of [`NetLimits`].
pub fn build_swarm(
    keypair: Keypair,
    request_timeout: Duration,
    serve: bool,
) -> Result<Swarm<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    build_swarm_with(keypair, request_timeout, serve, NetLimits::default())
}

/// [`build_swarm`] with the given connection limits; a serving endpoint (a node) also sets
/// this process's budget of bytes in incoming requests to `limits.inbound_budget`.
pub fn build_swarm_with(
    keypair: Keypair,
    request_timeout: Duration,
    serve: bool,
    limits: NetLimits,
) -> Result<Swarm<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    if serve {
        crate::limits::set_inbound_budget(limits.inbound_budget);
    }
    let support = if serve {
        ProtocolSupport::Full
    } else {
        ProtocolSupport::Outbound
    };
    let long = |streams: usize| {
        request_response::Config::default()
            .with_request_timeout(request_timeout.max(LONG_REQUEST_TIMEOUT))
            .with_max_concurrent_streams(streams)
    };
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            (tls::Config::new, noise::Config::new),
            crate::mux::Yamux::default,
        )?
        .with_quic()
        .with_behaviour(|key| Behaviour {
            limits: ConnectionGuard::new(limits.connections),
            hello: request_response::Behaviour::with_codec(
                hello_codec(),
                [(HELLO_PROTOCOL, support.clone())],
                request_response::Config::default()
                    .with_request_timeout(HELLO_TIMEOUT)
                    .with_max_concurrent_streams(MAX_HELLO_STREAMS),
            ),
            chord: request_response::Behaviour::with_codec(
                chord_codec(),
                [(CHORD_PROTOCOL, support.clone())],
                request_response::Config::default()
                    .with_request_timeout(request_timeout)
                    .with_max_concurrent_streams(MAX_CHORD_STREAMS),
            ),
            client: request_response::Behaviour::with_codec(
                client_codec(),
                [(CLIENT_PROTOCOL, support.clone())],
                long(MAX_CLIENT_STREAMS),
            ),
            member: request_response::Behaviour::with_codec(
                member_codec(),
                [(MEMBER_PROTOCOL, support.clone())],
                long(MAX_MEMBER_STREAMS),
            ),
            admin: request_response::Behaviour::with_codec(
                admin_codec(),
                [(ADMIN_PROTOCOL, support)],
                long(MAX_ADMIN_STREAMS),
            ),
            identify: identify::Behaviour::new(identify::Config::new(
                "/peerstore/id/1".into(),
                key.public(),
            )),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .with_connection_timeout(HANDSHAKE_TIMEOUT)
        .build();
    Ok(swarm)
}
