//! The floor under the node benchmark: the node's own libp2p stack (TCP, Noise/TLS, yamux,
//! request-response with the member codec) moving 256 KiB blocks between two swarms on 127.0.0.1
//! with 16 in flight and no node logic at all (no store, no routing). `bench-node` prints it
//! beside the node's figures, so that what the node adds on top of the transport is visible.
//!
//! `cargo run --release -p peerstore-node --example libp2p-baseline -- [--mib N]`
//! prints `{"get_mib_s": .., "put_mib_s": ..}`; each endpoint runs on a one-thread runtime of
//! its own, as two processes would.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::request_response::{Event, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity::Keypair, Multiaddr};
use peerstore_proto::net::{build_swarm, BehaviourEvent};
use peerstore_proto::{BlockKey, Incoming, MemberRequest, MemberResponse};

const BLOCK: usize = 256 << 10;
const IN_FLIGHT: usize = 16;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let blocks = mib * 4;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<(Multiaddr, libp2p::PeerId)>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(serve(addr_tx));
    });
    let (addr, peer) = addr_rx.recv().expect("server address");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (get, put) = rt.block_on(client(addr, peer, blocks));
    println!("{{\"get_mib_s\": {get:.1}, \"put_mib_s\": {put:.1}}}");
}

async fn serve(addr_tx: std::sync::mpsc::Sender<(Multiaddr, libp2p::PeerId)>) {
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let mut swarm = build_swarm(key, Duration::from_secs(30), true).expect("swarm");
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    let block = peerstore_testkit::block(1, BLOCK);
    let mut sent = false;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } if !sent => {
                sent = true;
                let _ = addr_tx.send((address, peer));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Member(Event::Message {
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            })) => {
                let resp = match request {
                    Incoming::Message(MemberRequest::FetchLocal { .. }) => MemberResponse::Block {
                        data: block.clone(),
                    },
                    _ => MemberResponse::Ok,
                };
                let _ = swarm.behaviour_mut().member.send_response(channel, resp);
            }
            _ => {}
        }
    }
}

async fn client(addr: Multiaddr, peer: libp2p::PeerId, blocks: usize) -> (f64, f64) {
    let mut swarm =
        build_swarm(Keypair::generate_ed25519(), Duration::from_secs(30), false).expect("swarm");
    swarm.dial(addr.clone()).expect("dial");
    swarm.add_peer_address(peer, addr);
    let block = peerstore_testkit::block(2, BLOCK);
    let key = BlockKey::of(&block);
    let mut results = Vec::new();
    for put in [false, true] {
        let start = Instant::now();
        let (mut issued, mut done, mut bytes) = (0usize, 0usize, 0usize);
        while done < blocks {
            while issued < blocks && issued - done < IN_FLIGHT {
                let req = if put {
                    MemberRequest::StoreLocal {
                        key,
                        data: block.clone(),
                    }
                } else {
                    MemberRequest::FetchLocal { key }
                };
                swarm
                    .behaviour_mut()
                    .member
                    .send_request(&peer, Incoming::Message(req));
                issued += 1;
            }
            if let SwarmEvent::Behaviour(BehaviourEvent::Member(ev)) =
                swarm.select_next_some().await
            {
                match ev {
                    Event::Message {
                        message: Message::Response { response, .. },
                        ..
                    } => {
                        done += 1;
                        if let MemberResponse::Block { data } = response {
                            bytes += data.len();
                        } else {
                            bytes += BLOCK;
                        }
                    }
                    Event::OutboundFailure { error, .. } => panic!("request failed: {error}"),
                    _ => {}
                }
            }
        }
        results.push(bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64());
    }
    (results[0], results[1])
}
