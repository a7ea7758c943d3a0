//! Property-based fuzzing of the frame decoders of all four protocols: whatever a peer sends,
//! decoding it is an error value or a message, never a panic, and a message that decodes
//! encodes again to a frame that decodes to the same message.
//!
//! Inputs: arbitrary byte strings, bodies with a plausible head and random postcard bytes, and
//! valid frames of sample messages after random flips, truncations, insertions, removals and
//! rewrites of the length fields. Every body goes through [`decode_frame`], [`decode_incoming`]
//! and the async codec (`read_request` / `read_response`), which must agree with each other.
//!
//! Cases per property: `PEERSTORE_FUZZ_CASES` (default 256; `make fuzz` runs 200000).

use std::fmt::Debug;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::executor::block_on;
use futures::io::Cursor;
use futures::AsyncRead;
use libp2p::request_response::Codec;
use libp2p::{Multiaddr, StreamProtocol};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use chord::{Id, Peer};
use entangle::Params;
use peerstore_proto::frame::FramedCodec;
use peerstore_proto::*;

// ---------------------------------------------------------------------------------------------
// Configuration

fn cases() -> u32 {
    std::env::var("PEERSTORE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // The failing input is printed; nothing is written next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations

#[derive(Clone, Debug)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Keep only a prefix.
    Truncate(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove up to n bytes.
    Remove(Index, u8),
    /// Write a postcard varint (a length or a variant index) over the bytes at a position.
    Varint(Index, u64),
    /// Rewrite the body's big-endian u32 postcard length (bytes 1..5).
    BodyLen(u32),
    /// Rewrite the body's audience tag (byte 0).
    Tag(u8),
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..300,
        (0u32..64).prop_map(|s| 1u64 << s),
        (0u32..64).prop_map(|s| (1u64 << s) - 1),
        Just(u64::from(u32::MAX)),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..300,
        (0u32..32).prop_map(|s| 1u32 << s),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), vec(any::<u8>(), 1..9)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1u8..17).prop_map(|(i, n)| Mutation::Remove(i, n)),
        3 => (any::<Index>(), interesting_u64()).prop_map(|(i, v)| Mutation::Varint(i, v)),
        2 => interesting_u32().prop_map(Mutation::BodyLen),
        1 => any::<u8>().prop_map(Mutation::Tag),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..5)
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match m {
        Mutation::Flip(i, mask) if len > 0 => bytes[i.index(len)] ^= mask,
        Mutation::Set(i, v) if len > 0 => bytes[i.index(len)] = *v,
        Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
        Mutation::Insert(i, ins) => {
            let k = i.index(len + 1);
            bytes.splice(k..k, ins.iter().copied());
        }
        Mutation::Remove(i, n) if len > 0 => {
            let k = i.index(len);
            bytes.drain(k..(k + usize::from(*n)).min(len));
        }
        Mutation::Varint(i, v) => {
            let k = i.index(len + 1);
            for (j, b) in varint(*v).into_iter().enumerate() {
                match bytes.get_mut(k + j) {
                    Some(slot) => *slot = b,
                    None => bytes.push(b),
                }
            }
        }
        Mutation::BodyLen(n) if len >= 5 => bytes[1..5].copy_from_slice(&n.to_be_bytes()),
        Mutation::Tag(t) if len > 0 => bytes[0] = *t,
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Sample messages (every variant of every protocol)

fn node(i: u8) -> NodeAddr {
    let kp = libp2p::identity::Keypair::ed25519_from_bytes([i; 32]).expect("32-byte secret");
    let addr: Multiaddr = if i % 2 == 0 {
        format!("/ip4/10.0.0.{i}/tcp/{}", 4000 + u16::from(i))
    } else {
        format!("/ip6/::1/udp/{}/quic-v1", 5000 + u16::from(i))
    }
    .parse()
    .expect("multiaddr");
    NodeAddr {
        peer: kp.public().to_peer_id(),
        addr,
    }
}

fn peer(i: u8) -> Peer<NodeAddr> {
    Peer::new(Id::hash(&[i]), node(i))
}

fn key(i: u8) -> BlockKey {
    BlockKey::of(&[i])
}

fn id(i: u8) -> Id {
    Id::hash(&[i, i])
}

fn member(i: u8) -> MemberInfo {
    MemberInfo {
        id: id(i),
        addr: node(i),
    }
}

fn status_report() -> StatusReport {
    StatusReport {
        id: id(1),
        addr: node(1),
        member: true,
        predecessor: Some(member(2)),
        successors: vec![member(3), member(4)],
        distinct_fingers: 2,
        fingers: vec![member(5)],
        replication: 3,
        owned_range: (id(2), id(1)),
        keys_owned: 10,
        keys_replica: 20,
        bytes_used: 1 << 30,
        capacity: u64::MAX,
        records: 7,
        user_quota: Some(1 << 30),
        users: vec![peerstore_proto::UserUsage {
            user: "12D3KooW".into(),
            label: "alice".into(),
            bytes: 42,
        }],
        activity: peerstore_proto::MaintenanceActivity {
            pulled: 1,
            pushed: 2,
            cleaned: 3,
            parity_copies_dropped: 4,
        },
        placement: peerstore_proto::PlacementReport {
            host: "host-a".into(),
            zone: "rack-1".into(),
            replica_hosts: 1,
            warning: Some("all 3 copies on one host".into()),
        },
        disk_bytes: 3 << 30,
        record_chains: vec![peerstore_proto::ChainStatus {
            key: key(9),
            epoch: 3,
            members: vec!["12D3KooW".into()],
            role: "tail".into(),
            version: 12,
        }],
    }
}

fn refs_entry(i: u8) -> RefsEntry {
    RefsEntry {
        block: key(i),
        own: Some(key(i + 1)),
        created_us: Some(1_700_000_000_000_000 + u64::from(i)),
        referrers: [key(i + 2), key(i + 3)].into_iter().collect(),
    }
}

fn repair_summary() -> RepairSummary {
    RepairSummary {
        passes: 2,
        checked: 100,
        damaged: 3,
        rebuilt: 2,
        undecodable: 1,
        still_missing: vec![key(9)],
        errors: 0,
    }
}

fn audit_page() -> AuditPage {
    AuditPage {
        checked: 50,
        damaged: vec![CodewordAudit {
            record: key(1),
            codeword: [7; 32],
            missing: vec![key(2), key(3)],
            decodable: true,
            rebuilt: 1,
        }],
        next: Some(key(4)),
    }
}

fn scrub_report() -> ScrubReport {
    ScrubReport {
        nodes: 3,
        examined: 10,
        scrubbed: 4,
        replicas_removed: 8,
        bytes_freed: 1 << 20,
        single: 2,
        errors: 0,
        kept_for_spread: 1,
    }
}

fn entangle_stats() -> EntangleStats {
    EntangleStats {
        kind: "step".into(),
        layout: Some(entangle::Layout::Systematic),
        params: Some(Params::DEFAULT),
        replication: 3,
        nodes: 4,
        codewords: 12,
        logical_bytes: 1 << 22,
        parity_copies_replicated: 30,
        parity_copies_single: 6,
        parity_bytes: 1 << 23,
        other_bytes: 4096,
        refs_entries: 36,
    }
}

fn chord_requests() -> Vec<ChordEnvelope> {
    let msgs = vec![
        ChordMessage::FindSuccessor { req: 1, key: id(9) },
        ChordMessage::GetState {
            req: 2,
            asker: id(3),
        },
        ChordMessage::Notify {
            req: 3,
            node: peer(1),
            preds: vec![peer(2), peer(3)],
        },
        ChordMessage::Ping { req: u64::MAX },
        ChordMessage::Leave {
            req: 5,
            node: peer(1),
            preds: vec![peer(2)],
            successors: vec![peer(3), peer(4)],
        },
        ChordMessage::Info {
            req: 6,
            member: true,
            id: id(1),
            pred: Some(peer(2)),
            successors: vec![peer(3), peer(4)],
            closer: vec![peer(5)],
        },
        ChordMessage::Info {
            req: 7,
            member: false,
            id: id(1),
            pred: None,
            successors: vec![],
            closer: vec![],
        },
        ChordMessage::Ack { req: 8 },
        ChordMessage::Pong {
            req: 9,
            member: true,
        },
    ];
    msgs.into_iter()
        .map(|msg| ChordEnvelope { from: node(1), msg })
        .collect()
}

fn chord_responses() -> Vec<ChordAck> {
    vec![ChordAck]
}

fn client_requests() -> Vec<ClientRequest> {
    vec![
        ClientRequest::Put {
            key: BlockKey::of(b"block bytes"),
            data: b"block bytes".to_vec(),
        },
        ClientRequest::Get { key: key(1) },
        ClientRequest::Lookup { key: key(2) },
        ClientRequest::Status,
        ClientRequest::PutRecord {
            key: key(3),
            record: vec![1, 2, 3, 4, 5],
        },
        ClientRequest::GetRecord { key: key(4) },
        ClientRequest::PutDocument {
            data: (0..=255).collect(),
            auth: Some(vec![7; 120]),
            session: Some(peerstore_proto::EntangleSession {
                id: 9,
                keep: vec![key(7), key(8)],
            }),
        },
        ClientRequest::PutDocument {
            data: vec![],
            auth: None,
            session: None,
        },
        ClientRequest::GetDocument { key: key(5) },
        ClientRequest::ListDocuments {
            writer: [3; 32],
            after: Some(key(6)),
            limit: 100,
        },
        ClientRequest::DeleteDocuments {
            statement: vec![9; 200],
        },
    ]
}

fn client_responses() -> Vec<ClientResponse> {
    vec![
        ClientResponse::Stored { replicas: 3 },
        ClientResponse::Block {
            data: b"some block".to_vec(),
        },
        ClientResponse::NotFound,
        ClientResponse::Owner {
            owner: member(1),
            replicas: vec![member(2), member(3)],
            hops: 4,
        },
        ClientResponse::Status(Box::new(status_report())),
        ClientResponse::Record {
            record: vec![9; 40],
        },
        ClientResponse::DocumentStored { key: key(6) },
        ClientResponse::Documents(peerstore_proto::DocumentPage {
            documents: vec![peerstore_proto::DocumentInfo {
                key: key(7),
                len: 1000,
                created_us: 5,
            }],
            next: Some(key(8)),
        }),
        ClientResponse::Deleted(peerstore_proto::DeleteReport {
            deleted: vec![key(1)],
            pinned: vec![key(2)],
            failed: vec![(key(3), "a member did not answer".into())],
            bytes_freed: 4096,
        }),
        ClientResponse::Error {
            code: ErrorCode::Full,
            message: "node full: ü".into(),
        },
    ]
}

fn ent_requests() -> Vec<EntRequest> {
    vec![
        EntRequest::FetchSymbol { key: key(1) },
        EntRequest::HasSymbols {
            keys: vec![key(1), key(2)],
        },
        EntRequest::StoreRefs {
            entries: vec![refs_entry(1), RefsEntry::default()],
        },
        EntRequest::FetchRefs {
            positions: vec![key(3)],
        },
        EntRequest::ListRefs {
            from: id(1),
            to: id(2),
            after: Some(key(4)),
        },
        EntRequest::SampleParities { count: 16 },
        EntRequest::DropReplica {
            key: key(5),
            holder: node(2),
        },
        EntRequest::HasSingle { keys: vec![key(6)] },
        EntRequest::ProveSingle {
            keys: vec![(key(6), [6; 32]), (key(7), [0; 32])],
        },
        EntRequest::StoreSingle {
            key: key(7),
            data: vec![0xAB; 24],
        },
        EntRequest::RepairLocal,
        EntRequest::AuditLocal {
            after: key(8),
            limit: 100,
            fix: true,
        },
        EntRequest::ScrubLocal {
            mode: ScrubMode::Window { blocks: 1000 },
            cutoff_us: Some(12345),
        },
        EntRequest::NewestCreated { count: 10 },
        EntRequest::SetScrubDaemon {
            policy: Some((ScrubMode::Pointers { threshold: 3 }, 60_000)),
        },
        EntRequest::SetScrubDaemon { policy: None },
        EntRequest::LocalStats,
        EntRequest::StoreRecords {
            records: vec![b"ENTR\x01abc".to_vec(), vec![]],
        },
        EntRequest::FetchRecords {
            keys: vec![key(9), key(10)],
        },
        EntRequest::ListRecords {
            from: id(3),
            to: id(4),
            after: None,
        },
    ]
}

fn member_requests() -> Vec<MemberRequest> {
    let mut v = vec![
        MemberRequest::StoreLocal {
            key: key(1),
            data: vec![1; 32],
        },
        MemberRequest::FetchLocal { key: key(2) },
        MemberRequest::RangeDigest {
            from: id(1),
            to: id(2),
            buckets: 64,
        },
        MemberRequest::ListRange {
            from: id(1),
            to: id(2),
            after: Some(key(3)),
            limit: 4096,
        },
        MemberRequest::HasLocal {
            keys: vec![key(4), key(5), key(6)],
        },
        MemberRequest::Prove {
            keys: vec![(key(4), [4; 32])],
        },
        MemberRequest::StoreRecordLocal {
            key: key(7),
            record: vec![7; 20],
        },
        MemberRequest::FetchRecordLocal { key: key(8) },
        MemberRequest::ListRecords {
            from: id(5),
            to: id(6),
            after: None,
        },
        MemberRequest::Status,
        MemberRequest::Placement,
    ];
    v.extend(ent_requests().into_iter().map(MemberRequest::Entangled));
    v
}

fn ent_responses() -> Vec<EntResponse> {
    vec![
        EntResponse::Block { data: vec![3; 48] },
        EntResponse::NotFound,
        EntResponse::Has {
            present: vec![true, false, true],
        },
        EntResponse::Refs {
            entries: vec![Some(refs_entry(4)), None],
        },
        EntResponse::RefDigests {
            entries: vec![(key(1), [1; 32])],
            more: true,
        },
        EntResponse::Keys { keys: vec![key(2)] },
        EntResponse::Repaired(repair_summary()),
        EntResponse::Audit(audit_page()),
        EntResponse::Scrubbed(scrub_report()),
        EntResponse::Created {
            times: vec![1, u64::MAX],
        },
        EntResponse::Stats(entangle_stats()),
        EntResponse::Ok,
        EntResponse::Records {
            records: vec![Some(vec![1, 2]), None],
        },
        EntResponse::RecordKeys {
            keys: vec![key(3), key(4)],
            more: false,
        },
        EntResponse::Proofs {
            proofs: vec![Some([5; 32]), None],
        },
    ]
}

fn member_responses() -> Vec<MemberResponse> {
    let mut v = vec![
        MemberResponse::Ok,
        MemberResponse::Block { data: vec![5; 40] },
        MemberResponse::NotFound,
        MemberResponse::Digests {
            buckets: vec![(3, [1; 32]), (0, [0; 32])],
        },
        MemberResponse::Keys {
            keys: vec![key(1), key(2)],
            more: true,
        },
        MemberResponse::Has {
            present: vec![false, true],
        },
        MemberResponse::Record {
            record: vec![8; 16],
        },
        MemberResponse::RecordDigests {
            records: vec![(key(3), [2; 32])],
            more: false,
        },
        MemberResponse::Status(Box::new(status_report())),
        MemberResponse::Placement {
            host: "host-a".into(),
            zone: "rack-1".into(),
        },
        MemberResponse::Proofs {
            proofs: vec![None, Some([6; 32])],
        },
        MemberResponse::Error {
            code: ErrorCode::Forbidden,
            message: "no".into(),
        },
    ];
    v.extend(ent_responses().into_iter().map(MemberResponse::Entangled));
    v
}

fn admin_requests() -> Vec<AdminRequest> {
    vec![
        AdminRequest::Repair { keys: vec![] },
        AdminRequest::Repair {
            keys: vec![key(1), key(2)],
        },
        AdminRequest::Audit {
            after: Some(key(3)),
            limit: 500,
            fix: false,
        },
        AdminRequest::Audit {
            after: None,
            limit: 0,
            fix: true,
        },
        AdminRequest::Scrub {
            mode: ScrubMode::Pointers { threshold: 2 },
            once: true,
            interval_ms: 0,
        },
        AdminRequest::Scrub {
            mode: ScrubMode::Window { blocks: u64::MAX },
            once: false,
            interval_ms: 60_000,
        },
        AdminRequest::EntangleStats,
    ]
}

fn admin_responses() -> Vec<AdminResponse> {
    vec![
        AdminResponse::Repaired(repair_summary()),
        AdminResponse::AuditPage(audit_page()),
        AdminResponse::AuditPage(AuditPage::default()),
        AdminResponse::Scrubbed(scrub_report()),
        AdminResponse::EntangleStats(Box::new(entangle_stats())),
        AdminResponse::EntangleStats(Box::default()),
        AdminResponse::Error {
            code: ErrorCode::Internal,
            message: "boom".into(),
        },
    ]
}

fn hellos() -> Vec<Hello> {
    let ring = RingKey::generate();
    let id = libp2p::identity::Keypair::generate_ed25519();
    let peer = id.public().to_peer_id();
    vec![
        Hello {
            ring: ring.public(),
            certificate: ring.certify(&peer, Role::Member, "node-1"),
            revocations: Revocations::default(),
        },
        Hello {
            ring: ring.public(),
            certificate: ring.certify(&peer, Role::User, ""),
            revocations: ring.revoke(3, vec![peer, libp2p::PeerId::random()]),
        },
    ]
}

fn hello_responses() -> Vec<HelloResponse> {
    let ring = RingKey::generate();
    vec![
        HelloResponse::Welcome {
            certificate: ring.certify(&libp2p::PeerId::random(), Role::Admin, "a"),
            revocations: ring.revoke(1, vec![libp2p::PeerId::random()]),
        },
        HelloResponse::Refused {
            message: "no".into(),
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Checks

/// A frame on the wire: the u32 big-endian length, then `body`.
fn wire(len: u32, body: &[u8]) -> Vec<u8> {
    let mut w = len.to_be_bytes().to_vec();
    w.extend_from_slice(body);
    w
}

fn is_clear(e: &io::Error) -> bool {
    !e.to_string().is_empty()
        && matches!(
            e.kind(),
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
        )
}

/// `decode_frame` and `decode_incoming` on one body: they agree, errors are `InvalidData` with
/// a message, and a message that decodes re-encodes to one that decodes to the same value.
fn check_slice<T>(body: &[u8]) -> Result<Option<Incoming<T>>, TestCaseError>
where
    T: Message + Clone + PartialEq + Debug,
{
    let framed = decode_frame::<T>(body);
    let incoming = decode_incoming::<T>(body);
    for e in [framed.as_ref().err(), incoming.as_ref().err()]
        .into_iter()
        .flatten()
    {
        prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{}", e);
        prop_assert!(!e.to_string().is_empty());
    }
    match (&framed, &incoming) {
        (Ok(a), Ok(Incoming::Message(b))) => prop_assert_eq!(a, b),
        (Err(_), Ok(Incoming::Misrouted(other))) => {
            prop_assert_ne!(*other, T::AUDIENCE);
            prop_assert_eq!(Some(other.tag()), body.first().copied());
        }
        (Err(_), Err(_)) => {}
        (f, i) => prop_assert!(false, "decode_frame {:?} but decode_incoming {:?}", f, i),
    }
    if let Ok(v) = framed {
        let again = encode_frame(&v, usize::MAX);
        prop_assert!(
            again.is_ok(),
            "a decoded {:?} does not encode: {:?}",
            v,
            again
        );
        let again = again.unwrap();
        let back = decode_frame::<T>(&again);
        prop_assert!(
            back.is_ok(),
            "re-encoded {:?} does not decode: {:?}",
            v,
            back
        );
        prop_assert_eq!(back.unwrap(), v);
    }
    Ok(incoming.ok())
}

/// The async codec's request side on `len ++ body`: refuses lengths over `max`, fails on a
/// short stream, and otherwise reads exactly what `decode_incoming` makes of the first `len`
/// bytes of `body`.
fn check_read_request<Req, Resp>(
    mut codec: FramedCodec<Req, Resp>,
    protocol: &StreamProtocol,
    max: usize,
    len: u32,
    body: &[u8],
) -> Result<(), TestCaseError>
where
    Req: Message + Clone + PartialEq + Debug,
    Resp: Message,
{
    let mut io = Cursor::new(wire(len, body));
    let got = block_on(codec.read_request(protocol, &mut io));
    let n = len as usize;
    if n > max {
        let e = got.as_ref().err();
        prop_assert!(
            e.is_some(),
            "frame of {} bytes over the bound {} read",
            n,
            max
        );
        prop_assert!(
            e.unwrap().to_string().contains("exceeds the bound"),
            "{:?}",
            e
        );
        prop_assert_eq!(io.position(), 4, "read past the length of a refused frame");
    } else if n > body.len() {
        prop_assert!(
            got.is_err(),
            "frame of {} bytes read from {} bytes",
            n,
            body.len()
        );
    } else {
        let expected = check_slice::<Req>(&body[..n])?;
        if let Err(e) = &got {
            prop_assert!(is_clear(e), "{:?}", e);
        }
        prop_assert_eq!(got.ok(), expected);
    }
    Ok(())
}

/// The response side: like [`check_read_request`], but a misrouted answer is an error.
fn check_read_response<Req, Resp>(
    mut codec: FramedCodec<Req, Resp>,
    protocol: &StreamProtocol,
    max: usize,
    len: u32,
    body: &[u8],
) -> Result<(), TestCaseError>
where
    Req: Message,
    Resp: Message + Clone + PartialEq + Debug,
{
    let mut io = Cursor::new(wire(len, body));
    let got = block_on(codec.read_response(protocol, &mut io));
    let n = len as usize;
    if n > max {
        let e = got.as_ref().err();
        prop_assert!(
            e.is_some(),
            "frame of {} bytes over the bound {} read",
            n,
            max
        );
        prop_assert!(
            e.unwrap().to_string().contains("exceeds the bound"),
            "{:?}",
            e
        );
        prop_assert_eq!(io.position(), 4, "read past the length of a refused frame");
    } else if n > body.len() {
        prop_assert!(
            got.is_err(),
            "frame of {} bytes read from {} bytes",
            n,
            body.len()
        );
    } else {
        let expected = match check_slice::<Resp>(&body[..n])? {
            Some(Incoming::Message(m)) => Some(m),
            _ => None,
        };
        if let Err(e) = &got {
            prop_assert!(is_clear(e), "{:?}", e);
        }
        prop_assert_eq!(got.ok(), expected);
    }
    Ok(())
}

/// One body through every decoder of every protocol, with the exact length prefix and with
/// `len` (the prefix a hostile peer claims).
fn check_everything(body: &[u8], len: Option<u32>) -> Result<(), TestCaseError> {
    let exact = u32::try_from(body.len()).unwrap_or(u32::MAX);
    for len in [Some(exact), len].into_iter().flatten() {
        check_read_request(chord_codec(), &CHORD_PROTOCOL, MAX_CHORD_FRAME, len, body)?;
        check_read_response(chord_codec(), &CHORD_PROTOCOL, 1024, len, body)?;
        check_read_request(
            client_codec(),
            &CLIENT_PROTOCOL,
            MAX_CLIENT_FRAME,
            len,
            body,
        )?;
        check_read_response(
            client_codec(),
            &CLIENT_PROTOCOL,
            MAX_CLIENT_FRAME,
            len,
            body,
        )?;
        check_read_request(
            member_codec(),
            &MEMBER_PROTOCOL,
            MAX_MEMBER_FRAME,
            len,
            body,
        )?;
        check_read_response(
            member_codec(),
            &MEMBER_PROTOCOL,
            MAX_MEMBER_FRAME,
            len,
            body,
        )?;
        check_read_request(admin_codec(), &ADMIN_PROTOCOL, MAX_ADMIN_REQUEST, len, body)?;
        let hello_max = peerstore_proto::admission::MAX_HELLO_FRAME;
        check_read_request(hello_codec(), &HELLO_PROTOCOL, hello_max, len, body)?;
        check_read_response(hello_codec(), &HELLO_PROTOCOL, hello_max, len, body)?;
        check_read_response(
            admin_codec(),
            &ADMIN_PROTOCOL,
            MAX_ADMIN_RESPONSE,
            len,
            body,
        )?;
    }
    Ok(())
}

/// A sample's frame body after the mutations.
fn mutated<T: Message + Clone>(samples: &[T], pick: &Index, muts: &[Mutation]) -> Vec<u8> {
    let sample = pick.get(samples);
    let mut body = encode_frame(sample, usize::MAX).expect("samples encode");
    for m in muts {
        apply(&mut body, m);
    }
    body
}

/// Bodies with a plausible head (a known audience tag, a postcard length that usually fits)
/// and random postcard bytes that usually start with a small variant index.
fn structured_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            6 => prop::sample::select(vec![0xC0u8, 0xC1, 0xC2, 0xC3]),
            1 => any::<u8>(),
        ],
        0u8..24,
        prop_oneof![
            2 => vec(any::<u8>(), 0..4),
            2 => vec(prop_oneof![0u8..4, any::<u8>()], 0..40),
            1 => vec(any::<u8>(), 0..160),
        ],
        prop_oneof![2 => Just(vec![]), 1 => vec(any::<u8>(), 0..24)],
        prop::option::weighted(0.2, interesting_u32()),
    )
        .prop_map(|(tag, variant, post, bulk, len)| {
            let post_len = post.len() as u32 + 1;
            let mut b = vec![tag];
            b.extend_from_slice(&len.unwrap_or(post_len).to_be_bytes());
            b.push(variant);
            b.extend_from_slice(&post);
            b.extend_from_slice(&bulk);
            b
        })
}

/// A claimed frame length: often the body's own, sometimes near it, sometimes anything.
fn claimed_len() -> impl Strategy<Value = Option<u32>> {
    prop::option::weighted(
        0.5,
        prop_oneof![
            0u32..16,
            interesting_u32(),
            (MAX_CHORD_FRAME as u32 - 2)..(MAX_CHORD_FRAME as u32 + 2),
            (MAX_CLIENT_FRAME as u32 - 2)..(MAX_CLIENT_FRAME as u32 + 2),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// Deterministic checks

#[test]
fn every_sample_round_trips_through_slices_and_the_async_codec() {
    fn slice<T: Message + Clone + PartialEq + Debug>(samples: Vec<T>, max: usize) {
        for s in samples {
            let body = encode_frame(&s, max).expect("sample fits its bound");
            assert_eq!(decode_frame::<T>(&body).unwrap(), s);
            assert_eq!(
                decode_incoming::<T>(&body).unwrap(),
                Incoming::Message(s.clone())
            );
        }
    }
    slice(chord_requests(), MAX_CHORD_FRAME);
    slice(chord_responses(), 1024);
    slice(client_requests(), MAX_CLIENT_FRAME);
    slice(client_responses(), MAX_CLIENT_FRAME);
    slice(member_requests(), MAX_MEMBER_FRAME);
    slice(member_responses(), MAX_MEMBER_FRAME);
    slice(admin_requests(), MAX_ADMIN_REQUEST);
    slice(admin_responses(), MAX_ADMIN_RESPONSE);
    slice(hellos(), peerstore_proto::admission::MAX_HELLO_FRAME);
    slice(
        hello_responses(),
        peerstore_proto::admission::MAX_HELLO_FRAME,
    );

    // Through the libp2p codec: write_request / write_response, then read them back.
    fn codec<Req, Resp>(
        codec: FramedCodec<Req, Resp>,
        protocol: &StreamProtocol,
        reqs: Vec<Req>,
        resps: Vec<Resp>,
    ) where
        Req: Message + Clone + PartialEq + Debug,
        Resp: Message + Clone + PartialEq + Debug,
    {
        for r in reqs {
            let mut c = codec.clone();
            let mut out = Cursor::new(Vec::new());
            block_on(c.write_request(protocol, &mut out, Incoming::Message(r.clone()))).unwrap();
            let mut input = Cursor::new(out.into_inner());
            let back = block_on(c.read_request(protocol, &mut input)).unwrap();
            assert_eq!(back, Incoming::Message(r));
        }
        for r in resps {
            let mut c = codec.clone();
            let mut out = Cursor::new(Vec::new());
            block_on(c.write_response(protocol, &mut out, r.clone())).unwrap();
            let mut input = Cursor::new(out.into_inner());
            assert_eq!(block_on(c.read_response(protocol, &mut input)).unwrap(), r);
        }
    }
    codec(
        chord_codec(),
        &CHORD_PROTOCOL,
        chord_requests(),
        chord_responses(),
    );
    codec(
        client_codec(),
        &CLIENT_PROTOCOL,
        client_requests(),
        client_responses(),
    );
    codec(
        member_codec(),
        &MEMBER_PROTOCOL,
        member_requests(),
        member_responses(),
    );
    codec(
        admin_codec(),
        &ADMIN_PROTOCOL,
        admin_requests(),
        admin_responses(),
    );
}

#[test]
fn short_and_empty_bodies_are_errors() {
    for body in [&[][..], &[0xC1], &[0xC1, 0], &[0xC1, 0, 0, 0]] {
        assert!(decode_frame::<ClientRequest>(body).is_err());
        assert!(decode_incoming::<ClientRequest>(body).is_err());
        let mut io = Cursor::new(wire(body.len() as u32, body));
        assert!(block_on(client_codec().read_request(&CLIENT_PROTOCOL, &mut io)).is_err());
    }
}

/// A reader that yields the 4 bytes of a length prefix and fails any read past them: a codec
/// that refuses an oversized frame must not touch the rest of the stream.
struct PrefixOnly {
    prefix: [u8; 4],
    pos: usize,
    read_past: bool,
}

impl AsyncRead for PrefixOnly {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.pos >= 4 {
            self.read_past = true;
            return Poll::Ready(Err(io::Error::other("read past the length prefix")));
        }
        let n = (4 - self.pos).min(buf.len());
        let pos = self.pos;
        buf[..n].copy_from_slice(&self.prefix[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

fn refuses_before_reading<Req, Resp>(
    codec: FramedCodec<Req, Resp>,
    protocol: &StreamProtocol,
    max_req: usize,
    max_resp: usize,
    claimed: u32,
) -> Result<(), TestCaseError>
where
    Req: Message + Debug,
    Resp: Message + Debug,
{
    if claimed as usize > max_req {
        let mut io = PrefixOnly {
            prefix: claimed.to_be_bytes(),
            pos: 0,
            read_past: false,
        };
        let got = block_on(codec.clone().read_request(protocol, &mut io));
        prop_assert!(
            !io.read_past,
            "request of {} bytes: read past the prefix",
            claimed
        );
        let e = got.err();
        prop_assert!(e.is_some());
        let e = e.unwrap();
        prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        prop_assert!(e.to_string().contains("exceeds the bound"), "{}", e);
    }
    if claimed as usize > max_resp {
        let mut io = PrefixOnly {
            prefix: claimed.to_be_bytes(),
            pos: 0,
            read_past: false,
        };
        let got = block_on(codec.clone().read_response(protocol, &mut io));
        prop_assert!(
            !io.read_past,
            "response of {} bytes: read past the prefix",
            claimed
        );
        let e = got.err();
        prop_assert!(e.is_some());
        prop_assert!(e.unwrap().to_string().contains("exceeds the bound"));
    }
    Ok(())
}

#[test]
fn largest_claims_are_refused_before_reading() {
    let run = || -> Result<(), TestCaseError> {
        for claimed in [u32::MAX, (MAX_CLIENT_FRAME + 1) as u32] {
            refuses_before_reading(
                chord_codec(),
                &CHORD_PROTOCOL,
                MAX_CHORD_FRAME,
                1024,
                claimed,
            )?;
            refuses_before_reading(
                client_codec(),
                &CLIENT_PROTOCOL,
                MAX_CLIENT_FRAME,
                MAX_CLIENT_FRAME,
                claimed,
            )?;
            refuses_before_reading(
                member_codec(),
                &MEMBER_PROTOCOL,
                MAX_MEMBER_FRAME,
                MAX_MEMBER_FRAME,
                claimed,
            )?;
            refuses_before_reading(
                admin_codec(),
                &ADMIN_PROTOCOL,
                MAX_ADMIN_REQUEST,
                MAX_ADMIN_RESPONSE,
                claimed,
            )?;
        }
        Ok(())
    };
    run().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes as a frame body, through every decoder of every protocol.
    #[test]
    fn arbitrary_bodies(body in vec(any::<u8>(), 0..600), len in claimed_len()) {
        check_everything(&body, len)?;
    }

    /// Bodies with a plausible head and random postcard bytes.
    #[test]
    fn structured_bodies(body in structured_body(), len in claimed_len()) {
        check_everything(&body, len)?;
    }

    #[test]
    fn mutated_chord_requests(pick in any::<Index>(), muts in mutations(), len in claimed_len()) {
        let body = mutated(&chord_requests(), &pick, &muts);
        check_everything(&body, len)?;
    }

    #[test]
    fn mutated_chord_responses(pick in any::<Index>(), muts in mutations(), len in claimed_len()) {
        let body = mutated(&chord_responses(), &pick, &muts);
        check_everything(&body, len)?;
    }

    #[test]
    fn mutated_client_requests(pick in any::<Index>(), muts in mutations(), len in claimed_len()) {
        let body = mutated(&client_requests(), &pick, &muts);
        check_everything(&body, len)?;
    }

    #[test]
    fn mutated_client_responses(pick in any::<Index>(), muts in mutations(), len in claimed_len()) {
        let body = mutated(&client_responses(), &pick, &muts);
        check_everything(&body, len)?;
    }

    #[test]
    fn mutated_member_requests(pick in any::<Index>(), muts in mutations(), len in claimed_len()) {
        let body = mutated(&member_requests(), &pick, &muts);
        check_everything(&body, len)?;
    }

    #[test]
    fn mutated_member_responses(pick in any::<Index>(), muts in mutations(), len in claimed_len()) {
        let body = mutated(&member_responses(), &pick, &muts);
        check_everything(&body, len)?;
    }

    #[test]
    fn mutated_admin_requests(pick in any::<Index>(), muts in mutations(), len in claimed_len()) {
        let body = mutated(&admin_requests(), &pick, &muts);
        check_everything(&body, len)?;
    }

    #[test]
    fn mutated_admin_responses(pick in any::<Index>(), muts in mutations(), len in claimed_len()) {
        let body = mutated(&admin_responses(), &pick, &muts);
        check_everything(&body, len)?;
    }

    #[test]
    fn mutated_hellos(pick in any::<Index>(), muts in mutations(), len in claimed_len()) {
        let body = mutated(&hellos(), &pick, &muts);
        check_everything(&body, len)?;
    }

    #[test]
    fn mutated_hello_responses(pick in any::<Index>(), muts in mutations(), len in claimed_len()) {
        let body = mutated(&hello_responses(), &pick, &muts);
        check_everything(&body, len)?;
    }

    /// Invite lines: arbitrary text and mutated valid invites are refused or accepted without
    /// a panic, and an accepted one carries a key pair matching its certificate.
    #[test]
    fn invite_lines(pick in 0usize..3, muts in mutations(), raw in vec(any::<u8>(), 0..200)) {
        let ring = RingKey::generate();
        let line = match pick {
            0 => String::from_utf8_lossy(&raw).into_owned(),
            _ => {
                let mut bytes = ring
                    .invite(Role::User, "x", vec!["/ip4/127.0.0.1/tcp/1".into()])
                    .to_line()
                    .into_bytes();
                for m in &muts {
                    apply(&mut bytes, m);
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
        };
        if let Ok(inv) = Invite::from_line(&line) {
            let peer = inv.keypair().unwrap().public().to_peer_id();
            prop_assert_eq!(inv.certificate.peer().unwrap(), peer);
        }
    }

    /// A body whose postcard length exceeds what follows it is an error, whatever the message;
    /// so is any valid frame cut short.
    #[test]
    fn declared_lengths_beyond_the_slice_are_errors(
        which in 0usize..8,
        pick in any::<Index>(),
        extra in prop_oneof![1u32..64, any::<u32>()],
        cut in any::<Index>(),
    ) {
        fn body_of<T: Message + Clone>(samples: &[T], pick: &Index) -> Vec<u8> {
            encode_frame(pick.get(samples), usize::MAX).unwrap()
        }
        let body = match which {
            0 => body_of(&chord_requests(), &pick),
            1 => body_of(&chord_responses(), &pick),
            2 => body_of(&client_requests(), &pick),
            3 => body_of(&client_responses(), &pick),
            4 => body_of(&member_requests(), &pick),
            5 => body_of(&member_responses(), &pick),
            6 => body_of(&admin_requests(), &pick),
            _ => body_of(&admin_responses(), &pick),
        };
        let after_head = (body.len() - 5) as u32;
        let mut lying = body.clone();
        lying[1..5].copy_from_slice(&after_head.saturating_add(extra).max(after_head + 1).to_be_bytes());
        fn all_err(b: &[u8]) -> bool {
            decode_frame::<ChordEnvelope>(b).is_err()
                && decode_frame::<ChordAck>(b).is_err()
                && decode_frame::<ClientRequest>(b).is_err()
                && decode_frame::<ClientResponse>(b).is_err()
                && decode_frame::<MemberRequest>(b).is_err()
                && decode_frame::<MemberResponse>(b).is_err()
                && decode_frame::<AdminRequest>(b).is_err()
                && decode_frame::<AdminResponse>(b).is_err()
                && decode_incoming::<ChordEnvelope>(b).is_err()
                && decode_incoming::<ClientRequest>(b).is_err()
                && decode_incoming::<MemberRequest>(b).is_err()
                && decode_incoming::<AdminRequest>(b).is_err()
        }
        prop_assert!(all_err(&lying), "declared length over the slice accepted");
        check_everything(&lying, None)?;
        // A valid frame cut inside its head or its postcard part.
        let n = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let k = cut.index(5 + n);
        prop_assert!(all_err(&body[..k]), "frame cut to {} of {} bytes accepted", k, body.len());
        check_everything(&body[..k], None)?;
    }

    /// Claimed frame lengths above a protocol's bound are refused after the 4-byte prefix,
    /// before the codec reads (or allocates for) the body.
    #[test]
    fn oversized_claims_are_refused_before_reading(claimed in (1024u32 + 1)..=u32::MAX) {
        refuses_before_reading(chord_codec(), &CHORD_PROTOCOL, MAX_CHORD_FRAME, 1024, claimed)?;
        refuses_before_reading(client_codec(), &CLIENT_PROTOCOL, MAX_CLIENT_FRAME, MAX_CLIENT_FRAME, claimed)?;
        refuses_before_reading(member_codec(), &MEMBER_PROTOCOL, MAX_MEMBER_FRAME, MAX_MEMBER_FRAME, claimed)?;
        refuses_before_reading(admin_codec(), &ADMIN_PROTOCOL, MAX_ADMIN_REQUEST, MAX_ADMIN_RESPONSE, claimed)?;
    }
}
