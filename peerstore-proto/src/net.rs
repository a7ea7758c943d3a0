//! The libp2p endpoint every PeerStore process builds: TCP (TLS 1.3 or Noise, negotiated;
//! our yamux with large frames) and QUIC, the four request-response protocols and identify.
//! A node serves all four; a client endpoint only sends.

use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, identity::Keypair, noise, tcp, tls, Swarm};

use crate::{
    admin_codec, chord_codec, client_codec, member_codec, AdminCodec, ChordCodec, ClientCodec,
    MemberCodec, ADMIN_PROTOCOL, CHORD_PROTOCOL, CLIENT_PROTOCOL, MEMBER_PROTOCOL,
};

/// How long a node serves one inbound request of the client, member or admin protocol, and
/// how long a sender waits for the answer to a long-running one (ring-wide repair, audit and
/// scrub, and their per-node parts), before giving up. Ordinary requests are bounded by their
/// sender's own timeout.
pub const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// Streams per connection and protocol.
const MAX_STREAMS: usize = 256;

/// The network behaviour of a PeerStore endpoint.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
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
pub fn build_swarm(
    keypair: Keypair,
    request_timeout: Duration,
    serve: bool,
) -> Result<Swarm<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    let support = if serve {
        ProtocolSupport::Full
    } else {
        ProtocolSupport::Outbound
    };
    let long = request_response::Config::default()
        .with_request_timeout(request_timeout.max(LONG_REQUEST_TIMEOUT))
        .with_max_concurrent_streams(MAX_STREAMS);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            (tls::Config::new, noise::Config::new),
            crate::mux::Yamux::default,
        )?
        .with_quic()
        .with_behaviour(|key| Behaviour {
            chord: request_response::Behaviour::with_codec(
                chord_codec(),
                [(CHORD_PROTOCOL, support.clone())],
                request_response::Config::default()
                    .with_request_timeout(request_timeout)
                    .with_max_concurrent_streams(MAX_STREAMS),
            ),
            client: request_response::Behaviour::with_codec(
                client_codec(),
                [(CLIENT_PROTOCOL, support.clone())],
                long.clone(),
            ),
            member: request_response::Behaviour::with_codec(
                member_codec(),
                [(MEMBER_PROTOCOL, support.clone())],
                long.clone(),
            ),
            admin: request_response::Behaviour::with_codec(
                admin_codec(),
                [(ADMIN_PROTOCOL, support)],
                long,
            ),
            identify: identify::Behaviour::new(identify::Config::new(
                "/peerstore/id/1".into(),
                key.public(),
            )),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}
