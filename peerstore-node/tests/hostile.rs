//! Acceptance 7: malformed, truncated and oversized messages from a raw libp2p peer are each
//! rejected; the node keeps serving and nothing stored changes.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, StreamProtocol};
use peerstore_node::proto::{BlockKey, Request, Response, CHORD_PROTOCOL, DATA_PROTOCOL};
use peerstore_node::testing::*;

/// Writes exactly the bytes it is given (no framing) and reads whatever comes back.
#[derive(Clone, Default)]
struct RawCodec;

#[async_trait]
impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<Vec<u8>> {
        Err(io::Error::other("raw peer serves nothing"))
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io.take(1 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()> {
        Ok(())
    }
}

/// A data-protocol frame around postcard bytes `msg`: the frame length, the body's postcard
/// length, the bytes (no bulk payload after them).
fn frame(msg: &[u8]) -> Vec<u8> {
    let mut v = ((msg.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_messages_are_rejected() {
    let cluster = Cluster::start(3, &["--replication", "3"]).await;
    cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..20u64 {
        let data = block(9_000_000 + i, 1000);
        let key = BlockKey::of(&data);
        assert!(matches!(
            cluster.nodes[0].call(Request::Put { key, data }).await,
            Response::Stored { .. }
        ));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = cluster.holders().await;
    let target = &cluster.nodes[1];

    // A valid Put encoded, to truncate and corrupt.
    let good = postcard::to_stdvec(&Request::Put {
        key: BlockKey([1; 32]),
        data: vec![7; 5000],
    })
    .unwrap();
    let mut flipped = good.clone();
    flipped[0] = 0xee; // unknown enum variant
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", frame(&[0xff; 64])),
        ("unknown variant", frame(&flipped)),
        ("truncated body", {
            let f = frame(&good);
            f[..f.len() / 2].to_vec()
        }),
        ("truncated length", vec![0, 0]),
        ("oversized length", (u32::MAX).to_be_bytes().to_vec()),
        ("trailing garbage", {
            let mut b = good.clone();
            b.extend_from_slice(&[1, 2, 3]);
            frame(&b)
        }),
        ("body longer than its frame", {
            let mut f = frame(&good);
            f[4..8].copy_from_slice(&(good.len() as u32 + 1).to_be_bytes());
            f
        }),
        ("payload twice (in the body and after it)", {
            let mut f = frame(&good);
            f.extend_from_slice(&[5; 100]);
            let total = (f.len() - 4) as u32;
            f[..4].copy_from_slice(&total.to_be_bytes());
            f
        }),
        ("put with wrong key", frame(&good)),
        ("empty", vec![]),
    ];
    let mut answers = Vec::new();
    for protocol in [DATA_PROTOCOL, CHORD_PROTOCOL] {
        let mut swarm = raw_swarm(protocol.clone());
        for (name, bytes) in &cases {
            swarm.behaviour_mut().send_request_with_addresses(
                &target.addr.peer,
                bytes.clone(),
                vec![target.addr.addr.clone()],
            );
            let outcome = wait_outcome(&mut swarm).await;
            answers.push((format!("{protocol} {name}"), outcome));
        }
    }
    for (name, outcome) in &answers {
        println!("{name}: {outcome}");
    }
    // The one well-formed request must get a proper error answer, not be stored.
    let wrong_key = answers
        .iter()
        .find(|(n, _)| n == "/peerstore/data/2 put with wrong key")
        .unwrap();
    assert!(
        wrong_key.1.starts_with("answered"),
        "well-formed put with a wrong key got no answer: {}",
        wrong_key.1
    );
    for (name, outcome) in &answers {
        if name != "/peerstore/data/2 put with wrong key" {
            // Malformed input gets no decoded answer: the node drops the stream.
            assert!(
                !outcome.starts_with("answered: "),
                "{name} was answered as if valid: {outcome}"
            );
        }
    }

    // The node keeps serving, and nothing stored changed.
    assert!(
        target.status().await.is_some(),
        "node stopped answering after hostile input"
    );
    let after = cluster.holders().await;
    assert_eq!(before, after, "stored blocks changed after hostile input");
    let data = block(9_100_000, 100);
    let key = BlockKey::of(&data);
    assert!(matches!(
        target.call(Request::Put { key, data }).await,
        Response::Stored { .. }
    ));
}

fn raw_swarm(protocol: StreamProtocol) -> libp2p::Swarm<request_response::Behaviour<RawCodec>> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp transport")
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(protocol, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            )
        })
        .expect("behaviour")
        .build()
}

async fn wait_outcome(swarm: &mut libp2p::Swarm<request_response::Behaviour<RawCodec>>) -> String {
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::Behaviour(request_response::Event::Message { message: request_response::Message::Response { response, .. }, .. }) => {
                    return match peerstore_node::proto::decode_frame::<Response>(response.get(4..).unwrap_or_default()) {
                        Ok(r) => format!("answered: {r:?}"),
                        Err(_) => format!("answered {} undecodable bytes", response.len()),
                    };
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                    return format!("rejected: {error}");
                }
                _ => {}
            },
            _ = &mut deadline => return "no answer within 10 s".into(),
        }
    }
}
