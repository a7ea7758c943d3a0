//! Issue 14, "A client that checks" (acceptance 5): the client binary against a real ring with
//! one hostile member in front of a real node.
//!
//! Honest nodes cannot be made to serve an old root or a swapped object: a node's `GetRecord`
//! takes the newest valid copy of the record's whole replica set, every replica refuses an
//! older record, and every document read is checked against its hash or document record (a
//! copy overwritten on disk is dropped, not served). So the hostile member here is a modified
//! node: a libp2p endpoint of its own ([`Liar`]) that holds a member's certificate of the ring
//! (a member that turned hostile), speaks the client protocol, passes every request to a real
//! node, and lies where a test tells it to: it serves a root it saw earlier (validly signed,
//! older), serves one snapshot object in place of another, or hides the rest of the ring (a
//! `Status` without neighbours, a `Lookup` that names only itself).
//!
//! - `an_old_root_from_one_member_is_outvoted_or_refused`: (a) a member that keeps serving an
//!   old root is outvoted by the other members the client asks (also on a fresh data
//!   directory), with a warning naming it; when it also hides the ring, a client that has seen
//!   the newer root refuses with a one-line error. The older snapshot is never shown as latest.
//! - `a_swapped_snapshot_object_is_refused`: (b) a member that serves snapshot 1's object in
//!   place of snapshot 3's (the latest) or snapshot 2's (a parent) makes `snapshots`, `restore`
//!   and `check` fail with an error that names the snapshot and says the ring served a different
//!   snapshot object than the one referenced; through an honest node everything is whole.
//!
//! The other half of acceptance 5 (`check` finds a lost pack, the next backup stores it again)
//! is `e2e_check.rs`.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use peerstore_proto::net::{build_swarm, BehaviourEvent};
use peerstore_proto::{
    ring_id, BlockKey, ClientRequest, ClientResponse, ErrorCode, HelloResponse, Identity, Incoming,
    MemberInfo, NodeAddr, Revocations, Role, RpcClient,
};
use peerstore_testkit::{Cluster, STEP_RING_ARGS};

/// The tests of this file share the 2 cores: one ring at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the hostile member does besides passing requests on.
#[derive(Default)]
struct Lies {
    /// Hide the rest of the ring: `Status` names no neighbours, `Lookup` names only itself.
    eclipse: bool,
    /// Records served from here instead of the ring.
    records: HashMap<BlockKey, Vec<u8>>,
    /// Documents served from here instead of the ring.
    documents: HashMap<BlockKey, Vec<u8>>,
    /// The last record the ring served through it, per key.
    seen_records: HashMap<BlockKey, Vec<u8>>,
    /// Documents the ring served through it, in the order they were asked for.
    fetched: Vec<(BlockKey, Vec<u8>)>,
}

/// A hostile ring member: a libp2p endpoint on 127.0.0.1 with a member's certificate that
/// answers the client protocol by passing each request to a real node, except where [`Lies`]
/// says otherwise. Stops on drop.
struct Liar {
    addr: NodeAddr,
    lies: Arc<Mutex<Lies>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Liar {
    /// A liar in front of `real`, admitted to `cluster`'s ring (it greets clients as a member
    /// and passes requests on as an administrator would).
    async fn start(cluster: &Cluster, real: NodeAddr) -> Liar {
        let me: Identity = cluster.identity(Role::Member);
        let welcome = HelloResponse::Welcome {
            certificate: me.credential.certificate.clone(),
            revocations: Revocations::default(),
        };
        let mut swarm =
            build_swarm(me.keypair.clone(), Duration::from_secs(30), true).expect("swarm");
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
            .expect("listen");
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break NodeAddr {
                    peer: *swarm.local_peer_id(),
                    addr: address,
                };
            }
        };
        let upstream = RpcClient::start_as(
            real,
            Duration::from_secs(30),
            Some(cluster.identity(Role::Admin)),
        )
        .expect("rpc client");
        let lies = Arc::new(Mutex::new(Lies::default()));
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(ResponseChannel<ClientResponse>, ClientResponse)>(64);
        let (me, state) = (addr.clone(), lies.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some((channel, resp)) = rx.recv() => {
                        let _ = swarm.behaviour_mut().client.send_response(channel, resp);
                    }
                    ev = swarm.select_next_some() => {
                        // Clients greet first; it answers as the member it is.
                        if let SwarmEvent::Behaviour(BehaviourEvent::Hello(
                            request_response::Event::Message {
                                message: request_response::Message::Request { channel, .. },
                                ..
                            },
                        )) = ev
                        {
                            let _ = swarm.behaviour_mut().hello.send_response(channel, welcome.clone());
                            continue;
                        }
                        let SwarmEvent::Behaviour(BehaviourEvent::Client(
                            request_response::Event::Message {
                                message: request_response::Message::Request { request, channel, .. },
                                ..
                            },
                        )) = ev else {
                            continue;
                        };
                        let Incoming::Message(req) = request else { continue };
                        let (up, st, me, tx) = (upstream.clone(), state.clone(), me.clone(), tx.clone());
                        tokio::spawn(async move {
                            let resp = serve(&up, &st, &me, req).await;
                            let _ = tx.send((channel, resp)).await;
                        });
                    }
                }
            }
        });
        Liar { addr, lies, task }
    }

    fn lies(&self) -> std::sync::MutexGuard<'_, Lies> {
        self.lies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, serve the records the ring served through it last (a node that missed
    /// every later update, or pretends to).
    fn freeze_records(&self) {
        let mut l = self.lies();
        l.records = l.seen_records.clone();
        assert!(!l.records.is_empty(), "no record was read through the liar");
    }
}

/// One answer of the hostile member.
async fn serve(
    up: &RpcClient,
    lies: &Mutex<Lies>,
    me: &NodeAddr,
    req: ClientRequest,
) -> ClientResponse {
    let me_info = MemberInfo {
        id: ring_id(&me.peer),
        addr: me.clone(),
    };
    {
        let l = lies.lock().unwrap_or_else(|p| p.into_inner());
        match &req {
            ClientRequest::GetRecord { key } => {
                if let Some(r) = l.records.get(key) {
                    return ClientResponse::Record { record: r.clone() };
                }
            }
            ClientRequest::GetDocument { key } => {
                if let Some(d) = l.documents.get(key) {
                    return ClientResponse::Block { data: d.clone() };
                }
            }
            // No plans from it: the client then reads every document whole through
            // `GetDocument`, where this member chooses what to serve (a member may always
            // answer so; the client's checks of what it reads are what is tested here).
            ClientRequest::DocumentSources { .. } | ClientRequest::SourcesHeld { .. } => {
                return ClientResponse::NotFound
            }
            ClientRequest::Lookup { .. } if l.eclipse => {
                return ClientResponse::Owner {
                    owner: me_info.clone(),
                    replicas: vec![me_info],
                    hops: 0,
                }
            }
            _ => {}
        }
    }
    let mut resp = up
        .call(req.clone())
        .await
        .unwrap_or_else(|e| ClientResponse::error(ErrorCode::Unavailable, e.to_string()));
    let mut l = lies.lock().unwrap_or_else(|p| p.into_inner());
    match (&req, &mut resp) {
        (ClientRequest::GetRecord { key }, ClientResponse::Record { record }) => {
            l.seen_records.insert(*key, record.clone());
        }
        (ClientRequest::GetDocument { key }, ClientResponse::Block { data }) => {
            l.fetched.push((*key, data.clone()));
        }
        // It presents itself as the member it is; with `eclipse`, as the only one.
        (ClientRequest::Status, ClientResponse::Status(s)) => {
            s.id = me_info.id;
            s.addr = me.clone();
            if l.eclipse {
                s.predecessor = None;
                s.successors.clear();
                s.fingers.clear();
                s.distinct_fingers = 0;
            }
        }
        _ => {}
    }
    resp
}

/// The plain ring of these tests: 3 nodes, r = 3.
const PLAIN: &[&str] = &["--replication", "3", "--entanglement", "none"];

async fn ring() -> Cluster {
    ring_of(3, PLAIN).await
}

async fn ring_of(n: usize, args: &[&str]) -> Cluster {
    let cluster = Cluster::start(n, args).await;
    cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    cluster
}

/// A client with the ring's credential that talks to `peer` (the liar, or a real node).
fn client(cluster: &Cluster, root: &Path, name: &str, peer: &str) -> Client {
    let mut c = Client::new(root, name, &cluster.nodes[0].addr.to_string());
    c.peer = peer.to_string();
    c
}

/// A client of the same user (same key file) with its own, empty data directory: no
/// watermark, nothing cached.
fn fresh_device(cluster: &Cluster, of: &Client, root: &Path, name: &str, peer: &str) -> Client {
    let mut c = client(cluster, root, name, peer);
    c.config = of.config.clone();
    c
}

/// The snapshot numbers `snapshots --json` lists, newest first, with their short ids.
fn listed(c: &Client) -> Vec<(u64, String)> {
    c.json(&["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["number"].as_u64().unwrap(),
                s["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Runs a command that must fail; returns its stderr, whose last line must be one `error:` line.
fn fails(c: &Client, args: &[&str]) -> String {
    let out = c.run(args);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "peerstore-client {args:?} should have failed:\nstdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_root_from_one_member_is_outvoted_or_refused() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let cluster = ring().await;
    let liar = Liar::start(&cluster, cluster.nodes[0].addr.clone()).await;
    let via_liar = liar.addr.to_string();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("note.txt"), "version 1\n").unwrap();

    // Snapshot 1, all through the hostile member (honest so far); it keeps the root it served.
    let alice = client(&cluster, tmp.path(), "alice", &via_liar);
    alice.ok(&["init"]);
    alice.ok(&["backup", src.to_str().unwrap()]);
    assert_eq!(listed(&alice), vec![(1, listed(&alice)[0].1.clone())]);
    liar.freeze_records();

    // Snapshot 2. From now on the member serves root 1: validly signed, and older.
    fs::write(src.join("note.txt"), "version 2\n").unwrap();
    alice.ok(&["backup", src.to_str().unwrap()]);
    let direct = cluster.nodes[1].addr.to_string();
    let truth = listed(&fresh_device(
        &cluster,
        &alice,
        tmp.path(),
        "honest",
        &direct,
    ));
    assert_eq!(
        truth.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![2, 1]
    );

    // (a) Outvoted: the client asks the other members too, takes the newest root and names the
    // member that served the older one. Also a new device, which has no watermark.
    let device = fresh_device(&cluster, &alice, tmp.path(), "device", &via_liar);
    for (i, c) in [&alice, &device].into_iter().enumerate() {
        let out = c.run(&["--json", "snapshots"]);
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        let snaps: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                .unwrap();
        assert_eq!(snaps[0]["number"], 2, "{snaps}");
        println!("snapshots -> {}", err.trim_end());
        assert!(
            err.contains("served an older root than another") && err.contains(&via_liar),
            "no warning naming the stale member: {err}"
        );
        let dest = tmp.path().join(format!("restored-{i}"));
        c.ok(&["restore", dest.to_str().unwrap()]);
        assert_eq!(
            fs::read_to_string(dest.join("note.txt")).unwrap(),
            "version 2\n"
        );
    }

    // (a) Refused: the member also hides the rest of the ring, so it is the only one asked.
    // A client that has seen root 2 refuses root 1 with one clear line and shows nothing older.
    liar.lies().eclipse = true;
    let nowhere = tmp.path().join("not-restored");
    for args in [
        &["snapshots"][..],
        &["ls"],
        &["restore", nowhere.to_str().unwrap()],
    ] {
        let err = fails(&alice, args);
        println!("{args:?} -> {}", err.trim_end());
        assert!(
            err.contains("the ring served root 1, older than root 2 this client has seen"),
            "{args:?}: {err}"
        );
        assert!(!nowhere.exists());
    }
    // The limit: a data directory that never saw root 2, talking only to a member that hides
    // the ring, cannot know better (docs/SECURITY.md).
    let blind = fresh_device(&cluster, &alice, tmp.path(), "blind", &via_liar);
    assert_eq!(listed(&blind)[0].0, 1);
    println!("test took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_snapshot_object_is_refused() {
    let _serial = SERIAL.lock().await;
    swapped_snapshots_on(ring().await).await;
}

/// The same on an entangled ring, where document keys are not hashes of the bytes: the
/// sealing context (latest) and the parent hash (parent) alone catch the swaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_snapshot_object_is_refused_on_an_entangled_ring() {
    let _serial = SERIAL.lock().await;
    swapped_snapshots_on(ring_of(4, STEP_RING_ARGS).await).await;
}

async fn swapped_snapshots_on(cluster: Cluster) {
    let t0 = Instant::now();
    let liar = Liar::start(&cluster, cluster.nodes[0].addr.clone()).await;
    // The member hides the ring, so every document the client reads passes through it.
    liar.lies().eclipse = true;
    let via_liar = liar.addr.to_string();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let alice = client(&cluster, tmp.path(), "alice", &via_liar);
    alice.ok(&["init"]);
    for v in 1..=3 {
        fs::write(src.join("note.txt"), format!("version {v}\n")).unwrap();
        alice.ok(&["backup", src.to_str().unwrap()]);
    }

    // `snapshots` reads exactly the three snapshot objects, newest first.
    liar.lies().fetched.clear();
    let snaps = listed(&alice);
    let objects = liar.lies().fetched.clone();
    assert_eq!(objects.len(), 3, "{snaps:?}");
    for ((n, id), (key, _)) in snaps.iter().zip(&objects) {
        assert!(key.to_hex().starts_with(id.as_str()), "snapshot {n}");
    }
    let [(k3, _), (k2, _), (_, b1)] = <[_; 3]>::try_from(objects).unwrap();

    // The latest object swapped for snapshot 1's.
    liar.lies().documents.insert(k3, b1.clone());
    let id3 = &k3.to_hex()[..8];
    let nowhere = tmp.path().join("not-restored");
    let nowhere = nowhere.to_str().unwrap();
    for args in [&["snapshots"][..], &["restore", nowhere], &["check"]] {
        let err = fails(&alice, args);
        println!("{args:?} -> {}", err.trim_end());
        assert!(
            err.contains(&format!("snapshot 3 ({id3})"))
                && err.contains(
                    "the ring served a different snapshot object than the one the root references"
                ),
            "{args:?}: {err}"
        );
    }

    // A parent swapped for an older snapshot (the numbers would still fall).
    {
        let mut l = liar.lies();
        l.documents.clear();
        l.documents.insert(k2, b1);
    }
    let id2 = &k2.to_hex()[..8];
    for args in [
        &["snapshots"][..],
        &["restore", "--snapshot", "2", nowhere],
        &["check"],
    ] {
        let err = fails(&alice, args);
        println!("{args:?} -> {}", err.trim_end());
        assert!(
            err.contains(&format!("snapshot 2 ({id2})"))
                && err.contains(
                    "the ring served a different snapshot object than the one snapshot 3 references"
                ),
            "{args:?}: {err}"
        );
        assert!(!Path::new(nowhere).exists());
    }
    // The latest snapshot does not need its parent.
    let dest = tmp.path().join("latest");
    alice.ok(&["restore", dest.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(dest.join("note.txt")).unwrap(),
        "version 3\n"
    );

    // Through an honest node the chain is whole.
    let honest = fresh_device(
        &cluster,
        &alice,
        tmp.path(),
        "honest",
        &cluster.nodes[1].addr.to_string(),
    );
    assert_eq!(
        listed(&honest).iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    honest.ok(&["check", "--read-data"]);
    println!("test took {:?}", t0.elapsed());
}
