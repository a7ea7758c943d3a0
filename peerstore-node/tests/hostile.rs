//! Acceptance 7: malformed, truncated and oversized messages from a raw libp2p peer are each
//! rejected on every one of the node's four protocols (chord, client, member, admin); a
//! well-formed message of one protocol sent on another is refused with a clear error; the node
//! keeps serving and nothing stored changes.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, StreamProtocol};
use peerstore_proto::{
    decode_frame, encode_frame, AdminRequest, AdminResponse, Audience, BlockKey, ChordAck,
    ChordEnvelope, ClientRequest, ClientResponse, EntRequest, ErrorCode, MemberRequest,
    MemberResponse, Message, NodeAddr, ScrubMode, MAX_ADMIN_REQUEST, MAX_CHORD_FRAME,
    MAX_CLIENT_FRAME, MAX_MEMBER_FRAME,
};
use peerstore_testkit::*;

/// The tests of this file share the 2 cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// A frame of audience `tag` around postcard bytes `msg`: the frame length, the audience tag,
/// the body's postcard length, the bytes (no bulk payload after them).
fn frame(tag: u8, msg: &[u8]) -> Vec<u8> {
    let mut v = ((msg.len() + 5) as u32).to_be_bytes().to_vec();
    v.push(tag);
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

/// A message framed exactly as its protocol's codec writes it (bulk payload after the body).
fn wire<T: Message + Clone>(m: &T, max: usize) -> Vec<u8> {
    let body = encode_frame(m, max).expect("encode");
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

/// A protocol under attack: what a valid request of it looks like, to break in every way.
struct Target {
    audience: Audience,
    /// The protocol's bound on one request frame.
    max: usize,
    /// Postcard bytes of a request of the protocol (no bulk payload).
    good: Vec<u8>,
    /// Offset in `good` of an enum variant index.
    variant_at: usize,
    /// Whether a frame body decodes as a request of the protocol.
    decodes: fn(&[u8]) -> bool,
    /// A well-formed request that the node must answer, with what the answer must contain.
    control: (&'static str, Vec<u8>, &'static str),
}

fn targets(cluster: &Cluster) -> Vec<Target> {
    // A block whose bytes do not hash to its key: well-formed, and refused.
    let wrong_key = BlockKey([1; 32]);
    let put = postcard::to_stdvec(&ClientRequest::Put {
        key: wrong_key,
        data: vec![7; 5000],
    })
    .unwrap();
    let store_local = postcard::to_stdvec(&MemberRequest::StoreLocal {
        key: wrong_key,
        data: vec![7; 5000],
    })
    .unwrap();
    // A read-only admin request; its malformed forms are never run anyway.
    let audit = postcard::to_stdvec(&AdminRequest::Audit {
        after: Some(wrong_key),
        limit: 1,
        fix: false,
    })
    .unwrap();
    // A Chord ping claiming to come from node 0: well-formed (so acknowledged) but dropped,
    // as its sender is not the connection's peer.
    let forged = cluster.nodes[0].addr.clone();
    let ping = ChordEnvelope {
        from: forged.clone(),
        msg: chord::Message::Ping { req: 1 },
    };
    let from_len = postcard::to_stdvec::<NodeAddr>(&forged).unwrap().len();
    let ping_bytes = postcard::to_stdvec(&ping).unwrap();
    vec![
        Target {
            audience: Audience::Chord,
            max: MAX_CHORD_FRAME,
            good: ping_bytes.clone(),
            // The message's variant comes after the sender's address.
            variant_at: from_len,
            decodes: |b| decode_frame::<ChordEnvelope>(b).is_ok(),
            control: (
                "ping with a forged sender",
                frame(Audience::Chord.tag(), &ping_bytes),
                "ChordAck",
            ),
        },
        Target {
            audience: Audience::Client,
            max: MAX_CLIENT_FRAME,
            good: put.clone(),
            variant_at: 0,
            decodes: |b| decode_frame::<ClientRequest>(b).is_ok(),
            control: (
                "put with wrong key",
                frame(Audience::Client.tag(), &put),
                "Error",
            ),
        },
        Target {
            audience: Audience::Member,
            max: MAX_MEMBER_FRAME,
            good: store_local.clone(),
            variant_at: 0,
            decodes: |b| decode_frame::<MemberRequest>(b).is_ok(),
            control: (
                "store-local with wrong key",
                frame(Audience::Member.tag(), &store_local),
                "Error",
            ),
        },
        Target {
            audience: Audience::Admin,
            max: MAX_ADMIN_REQUEST,
            good: audit,
            variant_at: 0,
            decodes: |b| decode_frame::<AdminRequest>(b).is_ok(),
            control: (
                "entangle-stats",
                wire(&AdminRequest::EntangleStats, MAX_ADMIN_REQUEST),
                "EntangleStats",
            ),
        },
    ]
}

/// Malformed frames of every kind for `t`'s protocol.
fn malformed(t: &Target) -> Vec<(&'static str, Vec<u8>)> {
    let tag = t.audience.tag();
    let good = &t.good;
    // Pseudo-random bytes after the protocol's own tag (seeds whose bytes happen to decode
    // are skipped, so the case is malformed for certain).
    let random_body = (0u64..)
        .map(|i| block(9_500_000 + i, 64))
        .find(|b| !(t.decodes)(&frame(tag, b)[4..]))
        .unwrap();
    let mut flipped = good.clone();
    flipped[t.variant_at] = 0x7e; // no enum of the protocols has 126 variants
    let cases = vec![
        ("random bytes", {
            let mut v = 64u32.to_be_bytes().to_vec();
            v.extend_from_slice(&[0xff; 64]);
            v
        }),
        ("random body", frame(tag, &random_body)),
        ("unknown audience tag", frame(0xc7, good)),
        ("unknown variant", frame(tag, &flipped)),
        ("truncated body", {
            let f = frame(tag, good);
            f[..f.len() / 2].to_vec()
        }),
        ("truncated head", frame(tag, good)[..4 + 3].to_vec()),
        ("truncated length", vec![0, 0]),
        ("frame shorter than its head", {
            let mut v = 3u32.to_be_bytes().to_vec();
            v.extend_from_slice(&[tag, 0, 0]);
            v
        }),
        ("oversized length", u32::MAX.to_be_bytes().to_vec()),
        ("oversized frame (bound + 1)", {
            let mut f = frame(tag, good);
            f[..4].copy_from_slice(&(t.max as u32 + 1).to_be_bytes());
            f
        }),
        ("trailing garbage", {
            let mut b = good.clone();
            b.extend_from_slice(&[1, 2, 3]);
            frame(tag, &b)
        }),
        ("body longer than its frame", {
            let mut f = frame(tag, good);
            f[5..9].copy_from_slice(&(good.len() as u32 + 1).to_be_bytes());
            f
        }),
        ("bulk bytes after a message that has its payload or none", {
            let mut f = frame(tag, good);
            f.extend_from_slice(&[5; 100]);
            let total = (f.len() - 4) as u32;
            f[..4].copy_from_slice(&total.to_be_bytes());
            f
        }),
        ("empty", vec![]),
    ];
    for (name, bytes) in &cases {
        // The frames whose declared length matches what is sent must indeed not decode.
        if bytes.len() >= 4
            && u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize + 4 == bytes.len()
        {
            assert!(!(t.decodes)(&bytes[4..]), "{} {name} decodes", t.audience);
        }
    }
    cases
}

/// What the node said, decoded as an answer of the protocol of `audience`.
fn describe(audience: Audience, response: &[u8]) -> String {
    let body = response.get(4..).unwrap_or_default();
    let decoded = match audience {
        Audience::Chord => decode_frame::<ChordAck>(body).map(|r| format!("{r:?}")),
        Audience::Client => decode_frame::<ClientResponse>(body).map(|r| format!("{r:?}")),
        Audience::Member => decode_frame::<MemberResponse>(body).map(|r| format!("{r:?}")),
        Audience::Admin => decode_frame::<AdminResponse>(body).map(|r| format!("{r:?}")),
        Audience::Hello => {
            decode_frame::<peerstore_proto::HelloResponse>(body).map(|r| format!("{r:?}"))
        }
    };
    match decoded {
        Ok(r) => format!("answered: {r}"),
        Err(_) => format!("answered {} undecodable bytes", response.len()),
    }
}

/// A raw peer: the greeting of an admitted peer (the ring admits nobody else), then raw
/// bytes on one protocol.
#[derive(libp2p::swarm::NetworkBehaviour)]
struct RawPeer {
    hello: request_response::Behaviour<peerstore_proto::HelloCodec>,
    raw: request_response::Behaviour<RawCodec>,
}

/// A raw peer's swarm and the greeting it opens connections with.
struct RawSwarm {
    swarm: libp2p::Swarm<RawPeer>,
    hello: peerstore_proto::Hello,
}

/// Sends `bytes` on `swarm`'s protocol to `to` and waits for the outcome (greeting the node
/// first on a new connection).
async fn send_raw(raw: &mut RawSwarm, to: &NodeAddr, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if !raw.swarm.is_connected(&to.peer) {
        let hello = raw.hello.clone();
        greet(&mut raw.swarm, hello, to).await?;
    }
    let swarm = &mut raw.swarm;
    swarm
        .behaviour_mut()
        .raw
        .send_request_with_addresses(&to.peer, bytes, vec![to.addr.clone()]);
    wait_outcome(swarm).await
}

/// The credential each protocol's raw peer shows: a member's for chord and member, an
/// administrator's for admin, a user's for client.
fn role_for(audience: Audience) -> peerstore_proto::Role {
    match audience {
        Audience::Chord | Audience::Member => peerstore_proto::Role::Member,
        Audience::Admin => peerstore_proto::Role::Admin,
        _ => peerstore_proto::Role::User,
    }
}

async fn greet(
    swarm: &mut libp2p::Swarm<RawPeer>,
    hello: peerstore_proto::Hello,
    to: &NodeAddr,
) -> Result<(), String> {
    swarm.behaviour_mut().hello.send_request_with_addresses(
        &to.peer,
        peerstore_proto::Incoming::Message(hello),
        vec![to.addr.clone()],
    );
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::Behaviour(RawPeerEvent::Hello(request_response::Event::Message { message: request_response::Message::Response { response, .. }, .. })) => {
                    return match response {
                        peerstore_proto::HelloResponse::Welcome { .. } => Ok(()),
                        peerstore_proto::HelloResponse::Refused { message } => Err(message),
                    };
                }
                SwarmEvent::Behaviour(RawPeerEvent::Hello(request_response::Event::OutboundFailure { error, .. })) => {
                    return Err(format!("greeting failed: {error}"));
                }
                _ => {}
            },
            _ = &mut deadline => return Err("no answer to the greeting within 10 s".into()),
        }
    }
}

async fn start_cluster() -> Cluster {
    let cluster = Cluster::start(3, &["--replication", "3"]).await;
    cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    cluster
}

/// Puts 20 blocks through node 0; returns them.
async fn put_blocks(cluster: &Cluster) -> Vec<(BlockKey, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..20u64 {
        let data = block(9_000_000 + i, 1000);
        let key = BlockKey::of(&data);
        assert!(matches!(
            cluster.nodes[0]
                .call(ClientRequest::Put {
                    key,
                    data: data.clone()
                })
                .await,
            ClientResponse::Stored { .. }
        ));
        out.push((key, data));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_messages_are_rejected() {
    let _g = SERIAL.lock().await;
    let cluster = start_cluster().await;
    put_blocks(&cluster).await;
    let before = cluster.holders().await;
    let target = &cluster.nodes[1];

    // (protocol, case, outcome, well-formed control answer it must contain)
    let mut answers: Vec<(Audience, String, String, Option<&str>)> = Vec::new();
    for t in targets(&cluster) {
        let mut swarm = raw_swarm(&cluster, t.audience);
        for (name, bytes) in malformed(&t) {
            let outcome = match send_raw(&mut swarm, &target.addr, bytes).await {
                Ok(r) => describe(t.audience, &r),
                Err(e) => e,
            };
            answers.push((t.audience, name.to_string(), outcome, None));
        }
        // Sent last on the same connection: the protocol still serves after the attack.
        let (name, bytes, want) = t.control.clone();
        let outcome = match send_raw(&mut swarm, &target.addr, bytes).await {
            Ok(r) => describe(t.audience, &r),
            Err(e) => e,
        };
        answers.push((t.audience, name.to_string(), outcome, Some(want)));
    }
    for (audience, name, outcome, _) in &answers {
        println!("{} {name}: {outcome}", audience.protocol());
    }
    for (audience, name, outcome, control) in &answers {
        let name = format!("{} {name}", audience.protocol());
        match control {
            // The well-formed requests get a proper answer (an error for the blocks with a
            // wrong key: they are not stored).
            Some(want) => assert!(
                outcome.starts_with("answered: ") && outcome.contains(want),
                "well-formed {name} did not get an answer with {want}: {outcome}"
            ),
            // Malformed input gets no decoded answer: the node drops the stream.
            None => assert!(
                !outcome.starts_with("answered: "),
                "{name} was answered as if valid: {outcome}"
            ),
        }
    }
    // All four protocols were attacked.
    for a in [
        Audience::Chord,
        Audience::Client,
        Audience::Member,
        Audience::Admin,
    ] {
        assert!(answers.iter().filter(|x| x.0 == a).count() >= 10);
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
        target.call(ClientRequest::Put { key, data }).await,
        ClientResponse::Stored { .. }
    ));
}

/// A well-formed request of one protocol sent on another (a member or admin request on the
/// client protocol, say) is refused with `Forbidden` and a message naming both protocols, and
/// is not acted on; the node keeps serving clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_on_the_wrong_protocol_are_forbidden() {
    let _g = SERIAL.lock().await;
    let cluster = start_cluster().await;
    let blocks = put_blocks(&cluster).await;
    let before = cluster.holders().await;
    let target = &cluster.nodes[1];

    // A block nobody holds: were any of these requests run, it would be stored.
    let data = block(9_200_000, 3000);
    let key = BlockKey::of(&data);
    assert!(!before.contains_key(&key));
    let client_put = (
        Audience::Client,
        "put",
        wire(
            &ClientRequest::Put {
                key,
                data: data.clone(),
            },
            MAX_CLIENT_FRAME,
        ),
    );
    let store_local = (
        Audience::Member,
        "store-local",
        wire(
            &MemberRequest::StoreLocal {
                key,
                data: data.clone(),
            },
            MAX_MEMBER_FRAME,
        ),
    );
    let scrub_daemon = (
        Audience::Member,
        "set-scrub-daemon",
        wire(
            &MemberRequest::Entangled(EntRequest::SetScrubDaemon {
                policy: Some((ScrubMode::Window { blocks: 0 }, 1000)),
            }),
            MAX_MEMBER_FRAME,
        ),
    );
    let admin_scrub = (
        Audience::Admin,
        "scrub",
        wire(
            &AdminRequest::Scrub {
                mode: ScrubMode::Window { blocks: 0 },
                once: false,
                interval_ms: 1000,
            },
            MAX_ADMIN_REQUEST,
        ),
    );
    let admin_repair = (
        Audience::Admin,
        "repair",
        wire(&AdminRequest::Repair { keys: vec![key] }, MAX_ADMIN_REQUEST),
    );
    let chord_ping = (
        Audience::Chord,
        "ping",
        wire(
            &ChordEnvelope {
                from: cluster.nodes[0].addr.clone(),
                msg: chord::Message::Ping { req: 7 },
            },
            MAX_CHORD_FRAME,
        ),
    );
    let sends = [
        (
            Audience::Client,
            vec![
                store_local.clone(),
                scrub_daemon.clone(),
                admin_scrub.clone(),
                admin_repair.clone(),
                chord_ping.clone(),
            ],
        ),
        (
            Audience::Member,
            vec![client_put.clone(), admin_scrub.clone(), chord_ping.clone()],
        ),
        (
            Audience::Admin,
            vec![client_put.clone(), store_local.clone(), chord_ping.clone()],
        ),
        (
            Audience::Chord,
            vec![client_put.clone(), store_local.clone(), admin_scrub.clone()],
        ),
    ];
    let mut refused = 0;
    for (on, requests) in sends {
        let mut swarm = raw_swarm(&cluster, on);
        for (found, what, bytes) in requests {
            let outcome = send_raw(&mut swarm, &target.addr, bytes).await;
            let shown = match &outcome {
                Ok(r) => describe(on, r),
                Err(e) => e.clone(),
            };
            println!("{found} {what} on {}: {shown}", on.protocol());
            let Ok(response) = outcome else {
                panic!("{found} {what} on the {on} protocol got no answer: {shown}");
            };
            let body = response.get(4..).unwrap_or_default();
            let error = match on {
                // A Chord message is acknowledged before it is looked at; one of another
                // protocol is then dropped.
                Audience::Chord => {
                    assert!(
                        decode_frame::<ChordAck>(body).is_ok(),
                        "{found} {what} on the chord protocol: {shown}"
                    );
                    continue;
                }
                Audience::Client => match decode_frame::<ClientResponse>(body) {
                    Ok(ClientResponse::Error { code, message }) => (code, message),
                    _ => panic!("{found} {what} on the client protocol: {shown}"),
                },
                Audience::Member => match decode_frame::<MemberResponse>(body) {
                    Ok(MemberResponse::Error { code, message }) => (code, message),
                    _ => panic!("{found} {what} on the member protocol: {shown}"),
                },
                Audience::Admin => match decode_frame::<AdminResponse>(body) {
                    Ok(AdminResponse::Error { code, message }) => (code, message),
                    _ => panic!("{found} {what} on the admin protocol: {shown}"),
                },
                Audience::Hello => unreachable!("no request is sent on the hello protocol"),
            };
            let (code, message) = error;
            assert_eq!(
                code,
                ErrorCode::Forbidden,
                "{found} {what} on {on}: {message}"
            );
            for want in [
                // (no article: "a member", "an admin")
                format!("{found} request sent on the {on} protocol"),
                on.protocol().to_string(),
                found.protocol().to_string(),
            ] {
                assert!(
                    message.contains(&want),
                    "{found} {what} on {on}: message {message:?} does not name {want:?}"
                );
            }
            refused += 1;
        }
    }
    assert_eq!(refused, 11);

    // Nothing was acted on: the new block is nowhere, nothing stored changed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = cluster.holders().await;
    assert_eq!(
        before, after,
        "stored blocks changed after misrouted requests"
    );
    assert!(matches!(
        target.call(ClientRequest::Get { key }).await,
        ClientResponse::NotFound
    ));
    // The node keeps serving clients.
    for (k, d) in &blocks {
        match target.call(ClientRequest::Get { key: *k }).await {
            ClientResponse::Block { data } => assert!(data == *d, "block {k} wrong bytes"),
            other => panic!("get of {k} after misrouted requests: {other:?}"),
        }
    }
    assert!(matches!(
        target.call(ClientRequest::Put { key, data }).await,
        ClientResponse::Stored { .. }
    ));
}

fn raw_swarm(cluster: &Cluster, on: Audience) -> RawSwarm {
    let protocol = on.protocol();
    let me = cluster.identity(role_for(on));
    let hello = me.hello(peerstore_proto::Revocations::default());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(me.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp transport")
        .with_behaviour(|_| RawPeer {
            hello: request_response::Behaviour::with_codec(
                peerstore_proto::hello_codec(),
                [(peerstore_proto::HELLO_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            ),
            raw: request_response::Behaviour::with_codec(
                RawCodec,
                [(protocol, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            ),
        })
        .expect("behaviour")
        .build();
    RawSwarm { swarm, hello }
}

/// The raw answer to the request in flight, or why there is none.
async fn wait_outcome(swarm: &mut libp2p::Swarm<RawPeer>) -> Result<Vec<u8>, String> {
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::Behaviour(RawPeerEvent::Raw(request_response::Event::Message { message: request_response::Message::Response { response, .. }, .. })) => {
                    return Ok(response);
                }
                SwarmEvent::Behaviour(RawPeerEvent::Raw(request_response::Event::OutboundFailure { error, .. })) => {
                    return Err(format!("rejected: {error}"));
                }
                _ => {}
            },
            _ = &mut deadline => return Err("no answer within 10 s".into()),
        }
    }
}

/// The crafted document record of the security review (C2): a block whose bytes parse as a
/// document record claiming 2^48 bytes. Stored as a plain block it is read back as a plain
/// block, never as a record; offered as a record it is refused at the door; every node keeps
/// serving. On an entangled ring (the default) and on a plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crafted_document_record_crashes_nothing() {
    let _serial = SERIAL.lock().await;
    for flags in [
        &["--replication", "3"][..],
        &["--replication", "3", "--entanglement", "none"][..],
    ] {
        let cluster = Cluster::start(3, flags).await;
        cluster
            .wait_ideal(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let record = peerstore_node::entangled::format::DocRecord {
            params: entangle::Params::new(4, 8, 12, 256 * 1024),
            len: 1 << 48,
            content_hash: [7; 32],
            codewords: vec![BlockKey([9; 32])],
            writer: None,
            created_us: None,
            signed: None,
        };
        let bytes = record.encode();
        assert!(
            peerstore_node::entangled::format::DocRecord::decode(&bytes).is_none(),
            "a record claiming more than its codewords hold is not a record"
        );
        let key = BlockKey::of(&bytes);
        let n = &cluster.nodes[0];
        let stored = n
            .call(ClientRequest::Put {
                key,
                data: bytes.clone(),
            })
            .await;
        assert!(
            matches!(stored, ClientResponse::Stored { .. }),
            "{stored:?}"
        );
        for node in &cluster.nodes {
            match node.call(ClientRequest::GetDocument { key }).await {
                ClientResponse::Block { data } => assert_eq!(data, bytes, "read as a plain block"),
                other => panic!("get-document of a crafted block: {other:?} ({flags:?})"),
            }
        }
        match n
            .member(MemberRequest::Entangled(EntRequest::StoreRecords {
                records: vec![bytes.clone()],
            }))
            .await
        {
            MemberResponse::Error { code, message } => {
                assert_eq!(code, ErrorCode::BadRequest, "{message}");
                assert!(
                    message.contains("not a codeword or document record"),
                    "{message}"
                );
            }
            other => panic!("a crafted record was accepted: {other:?}"),
        }
        for (i, node) in cluster.nodes.iter().enumerate() {
            assert!(
                node.status().await.is_some(),
                "node {i} stopped serving ({flags:?})"
            );
        }
    }
}

/// A member's block batches (what an entangled write's encoder sends each holder) are checked
/// before anything is stored: sizes that do not add up to the bytes, or more blocks than the
/// bound, are refused outright; a block whose bytes do not hash to its key is refused and not
/// stored; a good batch is stored whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_block_batches_are_checked() {
    let _g = SERIAL.lock().await;
    let cluster = start_cluster().await;
    let target = &cluster.nodes[1];
    let blocks: Vec<Vec<u8>> = (0..3).map(|i| block(9_300_000 + i, 2000)).collect();
    let sizes: Vec<(BlockKey, u32)> = blocks
        .iter()
        .map(|b| (BlockKey::of(b), b.len() as u32))
        .collect();
    let data = blocks.concat();
    let mut swarm = raw_swarm(&cluster, Audience::Member);
    let to = target.addr.clone();
    let short = ask(
        &mut swarm,
        &to,
        MemberRequest::StoreLocalBatch {
            sizes: sizes.clone(),
            data: data[1..].to_vec(),
        },
    )
    .await;
    assert!(short.contains("BadRequest"), "{short}");
    let many = ask(
        &mut swarm,
        &to,
        MemberRequest::StoreLocalBatch {
            sizes: vec![(BlockKey([0; 32]), 0); peerstore_proto::MAX_STORE_BATCH + 1],
            data: Vec::new(),
        },
    )
    .await;
    assert!(many.contains("BadRequest"), "{many}");
    let single_short = ask(
        &mut swarm,
        &to,
        MemberRequest::Entangled(EntRequest::StoreSingleBatch {
            sizes: sizes.clone(),
            data: data[..data.len() - 1].to_vec(),
        }),
    )
    .await;
    assert!(single_short.contains("BadRequest"), "{single_short}");
    // One block's bytes do not match its key: the batch is refused and that block is not
    // stored under the key.
    let mut bad = data.clone();
    bad[2000] ^= 1; // the second block
    let wrong = ask(
        &mut swarm,
        &to,
        MemberRequest::StoreLocalBatch {
            sizes: sizes.clone(),
            data: bad,
        },
    )
    .await;
    assert!(wrong.contains("Error"), "{wrong}");
    let held = cluster.holders().await;
    assert!(
        !held.get(&sizes[1].0).is_some_and(|h| h.contains(&1)),
        "a block that fails its hash was stored"
    );
    // A good batch is stored whole.
    let good = ask(
        &mut swarm,
        &to,
        MemberRequest::StoreLocalBatch {
            sizes: sizes.clone(),
            data,
        },
    )
    .await;
    assert!(good.contains("Ok"), "{good}");
    let held = cluster.holders().await;
    for (k, _) in &sizes {
        assert!(
            held.get(k).is_some_and(|h| h.contains(&1)),
            "block {k} of a good batch is not held"
        );
    }
}

/// Sends one member request on a raw member connection; the answer described, or the error.
async fn ask(swarm: &mut RawSwarm, to: &NodeAddr, req: MemberRequest) -> String {
    match send_raw(swarm, to, wire(&req, MAX_MEMBER_FRAME)).await {
        Ok(r) => describe(Audience::Member, &r),
        Err(e) => e,
    }
}
