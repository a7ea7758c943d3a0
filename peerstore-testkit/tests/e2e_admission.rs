//! Acceptance 1 of the trust issue: only the ring's members get in.
//!
//! A ring of 3 real `peerstore-node` processes (plain replication, r = 3), then, each played
//! against it through real connections on 127.0.0.1:
//! - a peer without any credential cannot put, get, ask status, send member requests or run
//!   admin operations: every request is answered `Forbidden` with a message that says how to
//!   get in;
//! - a peer with a certificate of another ring is refused at the greeting;
//! - a node started with `--initial-peer` and no invite exits with a clear error; a node of
//!   another ring pointed at ours never appears in our routing state;
//! - a member (node credential) cannot run admin operations, a user cannot send member
//!   requests;
//! - a revoked user and a revoked node are refused by every node once the revocation list
//!   has spread;
//! - and after all of it the ring keeps serving its users.
//!
//! Needs the binaries built beside the tests: `cargo build --release --workspace --bins`.

use std::process::Command;
use std::time::Duration;

use peerstore_node::admission;
use peerstore_proto::admission::{RingKey, Role};
use peerstore_proto::{
    AdminRequest, AdminResponse, BlockKey, ClientRequest, ClientResponse, ErrorCode, ErrorResponse,
    MemberRequest, RpcClient, RpcError,
};
use peerstore_testkit::{block, node_bin, spawn_node, wait_until, Cluster};

/// The message of a `Forbidden` answer (any protocol); panics on anything else.
fn forbidden<R: ErrorResponse + std::fmt::Debug>(r: &Result<R, RpcError>) -> String {
    match r.as_ref().map(|r| r.as_error()) {
        Ok(Some((ErrorCode::Forbidden, message))) => message.to_string(),
        _ => panic!("expected Forbidden, got {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_members_get_in_and_the_ring_keeps_serving() {
    let mut cluster = Cluster::start(3, &["--entanglement", "none", "--replication", "3"]).await;
    cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let entry = cluster.nodes[0].addr.clone();
    let t = Duration::from_secs(10);

    // The ring serves a user.
    let user = RpcClient::start_as(entry.clone(), t, Some(cluster.identity(Role::User))).unwrap();
    let data = block(1, 10_000);
    let key = BlockKey::of(&data);
    let put = user
        .call(ClientRequest::Put {
            key,
            data: data.clone(),
        })
        .await;
    assert!(matches!(put, Ok(ClientResponse::Stored { .. })), "{put:?}");

    // 1. No credential at all: every protocol refuses, with what to do.
    let stranger = RpcClient::start(entry.clone(), t).unwrap();
    let m = forbidden(
        &stranger
            .call(ClientRequest::Put {
                key: BlockKey::of(b"x"),
                data: b"x".to_vec(),
            })
            .await,
    );
    assert!(m.contains("not admitted") && m.contains("invite"), "{m}");
    forbidden(&stranger.call(ClientRequest::Get { key }).await);
    forbidden(&stranger.call(ClientRequest::Status).await);
    forbidden(
        &stranger
            .member_to(&entry, MemberRequest::HasLocal { keys: vec![key] })
            .await,
    );
    forbidden(&stranger.admin(AdminRequest::EntangleStats).await);
    forbidden(&user.admin(AdminRequest::Repair { keys: vec![key] }).await);
    eprintln!("no credential: refused: {m}");

    // 2. A certificate of another ring: refused at the greeting.
    let other_ring = RingKey::generate();
    let foreign = admission::ephemeral(&other_ring, Role::Admin, "intruder");
    let intruder = RpcClient::start_as(entry.clone(), t, Some(foreign)).unwrap();
    match intruder.call(ClientRequest::Get { key }).await {
        Err(RpcError::Refused { reason, .. }) => {
            assert!(reason.contains("ring"), "{reason}");
            eprintln!("other ring: refused: {reason}");
        }
        other => panic!("a foreign ring's certificate was not refused: {other:?}"),
    }

    // 3. A node without an invite cannot join; it says how.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(node_bin())
        .arg("--data-dir")
        .arg(tmp.path().join("lone"))
        .arg("--initial-peer")
        .arg(entry.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs an invite"), "{err}");

    // 4. A node of another ring pointed at ours never enters our routing state.
    drop(spawn_node(&tmp.path().join("alien"), None, &[]).await);
    let mut alien = peerstore_testkit::spawn_node_with(
        &tmp.path().join("alien"),
        "/ip4/127.0.0.1/tcp/0",
        Some(&entry.to_string()),
        &[],
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for n in cluster.live() {
        let s = n.status().await.expect("status");
        let named = s
            .predecessor
            .iter()
            .chain(&s.successors)
            .chain(&s.fingers)
            .any(|m| m.addr.peer == alien.addr.peer);
        assert!(!named, "node {} took the alien node into its ring", n.addr);
    }
    alien.kill9();

    // 5. A member cannot run admin operations; a user cannot speak the member protocol.
    let member =
        RpcClient::start_as(entry.clone(), t, Some(cluster.identity(Role::Member))).unwrap();
    let m = forbidden(&member.admin(AdminRequest::Repair { keys: vec![key] }).await);
    assert!(
        m.contains("member certificate") && m.contains("admin"),
        "{m}"
    );
    let m = forbidden(
        &user
            .member_to(&entry, MemberRequest::HasLocal { keys: vec![key] })
            .await,
    );
    assert!(m.contains("user certificate"), "{m}");
    let admin = RpcClient::start_as(entry.clone(), t, Some(cluster.identity(Role::Admin))).unwrap();
    assert!(
        matches!(
            admin.admin(AdminRequest::EntangleStats).await,
            Ok(AdminResponse::EntangleStats(_))
        ),
        "the admin credential works"
    );

    // 6. Revocation: a user and a node, through `peerstore-node revoke` on the key holder;
    // every node refuses them once the list has spread.
    let victim = cluster.identity(Role::User);
    let victim_peer = victim.keypair.public().to_peer_id();
    let revoked_node = cluster.nodes[2].addr.peer;
    let out = Command::new(node_bin())
        .arg("revoke")
        .arg("--data-dir")
        .arg(&cluster.nodes[0].data_dir)
        .arg(victim_peer.to_string())
        .arg(revoked_node.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_node1 = cluster.nodes[1].addr.clone();
    let res = wait_until(Duration::from_secs(20), || {
        let victim = victim.clone();
        let on = on_node1.clone();
        async move {
            let c = RpcClient::start_as(on, Duration::from_secs(5), Some(victim)).unwrap();
            match c.call(ClientRequest::Get { key }).await {
                Ok(ClientResponse::Error {
                    code: ErrorCode::Forbidden,
                    ..
                })
                | Err(RpcError::Refused { .. }) => Ok(()),
                other => Err(format!("still served: {other:?}")),
            }
        }
    })
    .await;
    res.unwrap_or_else(|e| panic!("the revoked user is still served by node 1: {e}"));
    // The revoked node drops out of the others' routing state.
    let res = wait_until(Duration::from_secs(30), || async {
        for n in cluster.nodes.iter().take(2) {
            let s = n.status().await.ok_or("no status")?;
            if s.successors.iter().any(|m| m.addr.peer == revoked_node) {
                return Err(format!("{} still lists the revoked node", n.addr));
            }
        }
        Ok(())
    })
    .await;
    res.unwrap_or_else(|e| panic!("{e}"));

    // 7. The ring keeps serving its users.
    let got = user.call(ClientRequest::Get { key }).await;
    assert!(
        matches!(&got, Ok(ClientResponse::Block { data: d }) if *d == data),
        "{got:?}"
    );
    let fresh = block(2, 5_000);
    let put = user
        .call(ClientRequest::Put {
            key: BlockKey::of(&fresh),
            data: fresh,
        })
        .await;
    assert!(matches!(put, Ok(ClientResponse::Stored { .. })), "{put:?}");
    cluster.nodes[2].kill9();
    drop(cluster);
}

/// Acceptance 6: a user over quota gets "quota exceeded", others keep writing; `status`
/// shows per-user usage; the real client fails with the same one-line error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_over_quota_is_refused_and_others_keep_writing() {
    let cluster = Cluster::start(
        3,
        &[
            "--entanglement",
            "none",
            "--replication",
            "3",
            "--user-quota",
            "256K",
        ],
    )
    .await;
    cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let entry = cluster.nodes[0].addr.clone();
    let t = Duration::from_secs(10);
    let alice = RpcClient::start_as(entry.clone(), t, Some(cluster.identity(Role::User))).unwrap();
    let bob = RpcClient::start_as(entry.clone(), t, Some(cluster.identity(Role::User))).unwrap();
    let put = |c: &RpcClient, i: u64| {
        let c = c.clone();
        async move {
            let data = block(i, 60 << 10);
            c.call(ClientRequest::Put {
                key: BlockKey::of(&data),
                data,
            })
            .await
        }
    };
    // 4 blocks of 60 KiB fit into 256 KiB; the fifth does not.
    for i in 0..4 {
        let r = put(&alice, 100 + i).await;
        assert!(matches!(r, Ok(ClientResponse::Stored { .. })), "{r:?}");
    }
    // Storing the same block again costs nothing.
    let again = put(&alice, 100).await;
    assert!(
        matches!(again, Ok(ClientResponse::Stored { .. })),
        "{again:?}"
    );
    let over = put(&alice, 104).await;
    let message = match over {
        Ok(ClientResponse::Error {
            code: ErrorCode::QuotaExceeded,
            message,
        }) => message,
        other => panic!("expected quota exceeded, got {other:?}"),
    };
    assert!(message.starts_with("quota exceeded"), "{message}");
    eprintln!("over quota: {message}");
    // Bob keeps writing.
    for i in 0..4 {
        let r = put(&bob, 200 + i).await;
        assert!(matches!(r, Ok(ClientResponse::Stored { .. })), "bob: {r:?}");
    }
    let s = cluster.nodes[0].status().await.expect("status");
    assert_eq!(s.user_quota, Some(256 << 10));
    assert_eq!(s.users.len(), 2, "{:?}", s.users);
    assert!(
        s.users.iter().all(|u| u.bytes == 4 * (60 << 10)),
        "{:?}",
        s.users
    );

    // The real client: a backup larger than the ring lets one user store fails with the
    // same error and exit status 1.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4u64 {
        std::fs::write(src.join(format!("f{i}")), block(300 + i, 1 << 20)).unwrap();
    }
    let cred = tmp.path().join("carol.credential");
    std::fs::write(
        &cred,
        peerstore_testkit::invite_for_node(&entry.to_string(), Role::User, "carol").unwrap(),
    )
    .unwrap();
    let client = |args: &[&str]| {
        Command::new(peerstore_testkit::client_bin())
            .arg("--config-dir")
            .arg(tmp.path().join("cfg"))
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .arg("--peer")
            .arg(entry.to_string())
            .arg("--credential")
            .arg(&cred)
            .args(args)
            .env("PEERSTORE_PASSPHRASE", "pw")
            .output()
            .unwrap()
    };
    assert!(client(&["init"]).status.success());
    let out = client(&["backup", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("quota exceeded"), "{err}");
    eprintln!("client: {}", err.lines().last().unwrap_or(""));
}
