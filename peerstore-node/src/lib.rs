//! The PeerStore node daemon: a member of a Chord ring over libp2p that stores content-addressed
//! blocks for the keys it owns, replicates them to its successors, and moves them when the ring
//! changes.
//!
//! The wire protocols live in the `peerstore-proto` crate, below this one and the client. The
//! node's modules, from the bottom up (each uses only those above it):
//! - [`config`], [`identity`]: settings and the node's key pair.
//! - [`store`]: the durable block store and its record tables.
//! - [`driver`]: the one task that owns the swarm, the clock and the pure Chord core.
//! - [`ring`]: locate a key's holders, call members, wait for quorums; typed errors.
//! - [`replication`]: blocks and signed records on replica sets (quorum put, verified get).
//! - [`maintenance`]: anti-entropy, clean-up and hand-off of replicated blocks and records.
//! - [`entangled`]: entangled storage (RECAST): documents, parities, metadata, repair, scrub.
//! - [`service`]: answers the client, member and admin protocols by dispatching to the above.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let config = peerstore_node::config::NodeConfig::default();
//! peerstore_node::run(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod config;
pub mod driver;
pub mod entangled;
pub mod identity;
pub mod maintenance;
pub mod replication;
pub mod ring;
pub mod service;
pub mod store;
pub mod sync;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use peerstore_proto::{ClientRequest, ClientResponse, NodeAddr};

use crate::config::NodeConfig;
use crate::driver::{build_swarm, Driver, Start};
use crate::replication::Replication;
use crate::ring::Ring;
use crate::service::Service;
use crate::store::{BlockStore, StoreConfig};

/// Runs a node until `shutdown` resolves, then leaves the ring gracefully: hands its keys on,
/// lets its neighbours splice the ring, and returns.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let keypair = match &config.initial_peer {
        Some(peer) if !identity::exists(&config.data_dir) && config.id_choices > 1 => {
            let members = ring_members(peer, config.request_timeout()).await;
            identity::create_balanced(&config.data_dir, &members, config.id_choices)?
        }
        _ => identity::load_or_create(&config.data_dir)?,
    };
    let peer = keypair.public().to_peer_id();
    info!(%peer, id = %peerstore_proto::ring_id(&peer), "node identity");

    // Re-check everything held against its hash before serving or joining.
    let store_dir = config.data_dir.join("store");
    let capacity = config.capacity;
    let (store, opened) = tokio::task::spawn_blocking(move || {
        BlockStore::open(StoreConfig::new(store_dir, capacity))
    })
    .await
    .context("store open task failed")??;
    info!(?opened, "block store verified");
    let store = Arc::new(store);
    // Single copies of scrubbed parities (entangled storage), outside the replicated store.
    let single_dir = config.data_dir.join("single");
    let (single, _) = tokio::task::spawn_blocking(move || {
        BlockStore::open(StoreConfig::new(single_dir, capacity))
    })
    .await
    .context("single-copy store open task failed")??;

    // A node joins through --initial-peer, then through the members it knew when it last ran
    // (so a restart still finds the ring when the initial peer is gone). Without
    // --initial-peer, a node that was in a ring rejoins it if any member answers, and starts a
    // new ring otherwise.
    let known = driver::read_peers_file(&config.data_dir);
    let start = match &config.initial_peer {
        Some(s) => {
            let first = peerstore_proto::parse_node_addr(s)
                .map_err(|e| anyhow::anyhow!("--initial-peer: {e}"))?;
            Start::Join {
                via: std::iter::once(first).chain(known).collect(),
                create_if_alone: false,
            }
        }
        None if !known.is_empty() => Start::Join {
            via: known,
            create_if_alone: true,
        },
        None => Start::Create,
    };
    let swarm = build_swarm(keypair, config.request_timeout(), true)
        .map_err(|e| anyhow::anyhow!("cannot set up networking: {e}"))?;
    let (driver, handle, inbound) = Driver::start(
        swarm,
        &config.listen,
        config.announce.clone(),
        config.chord_config(),
        Some(config.data_dir.join(driver::PEERS_FILE)),
    )
    .await?;
    let addr_file = identity::write_address_file(&config.data_dir, &handle.local)?;
    info!(addr = %handle.local, file = %addr_file.display(), "listening");
    println!("peerstore-node listening on {}", handle.local);

    let ring = Arc::new(Ring::new(handle.clone(), config.replication));
    let blocks = Arc::new(Replication {
        ring: ring.clone(),
        store,
    });
    let entangled = Arc::new(entangled::Entangled::new(
        config.entanglement.clone(),
        blocks.clone(),
        Arc::new(single),
    ));
    let service = Arc::new(Service {
        ring: ring.clone(),
        replication: blocks.clone(),
        entangled: entangled.clone(),
    });
    let local: Arc<dyn ring::LocalMember> = service.clone();
    ring.set_local(Arc::downgrade(&local));
    let mut driver_task = tokio::spawn(driver.run(start));
    let serve_task = tokio::spawn(service.clone().serve(inbound));
    let maint_task = tokio::spawn(maintenance::run(
        blocks.clone(),
        config.maintenance_interval(),
    ));
    let ent_task = tokio::spawn(entangled::run(
        entangled.clone(),
        config.maintenance_interval(),
    ));

    tokio::select! {
        _ = shutdown => {
            info!("shutting down: handing keys off and leaving the ring");
            maint_task.abort();
            ent_task.abort();
            let report = tokio::time::timeout(Duration::from_secs(60), maintenance::hand_off(&blocks)).await;
            match report {
                Ok(r) => info!(pushed = r.pushed, errors = r.errors, "hand-off done"),
                Err(_) => warn!("hand-off did not finish within 60 s"),
            }
            // Entangled storage: single copies and reverse references.
            match tokio::time::timeout(Duration::from_secs(60), entangled::scrub::hand_off(&entangled)).await {
                Ok((singles, refs)) => info!(singles, refs, "entangled hand-off done"),
                Err(_) => warn!("entangled hand-off did not finish within 60 s"),
            }
            if tokio::time::timeout(Duration::from_secs(10), handle.leave()).await.is_err() {
                warn!("leave did not complete within 10 s");
            }
        }
        r = &mut driver_task => {
            r.context("driver task failed")?;
        }
    }
    serve_task.abort();
    let _ = std::fs::remove_file(config.data_dir.join(identity::ADDRESS_FILE));
    Ok(())
}

/// The ring ids a node joining through `peer` can find before it has an identity: the
/// peer's status (itself, predecessor, successors, fingers), then the statuses of the members
/// that names, and so on, asking at most [`MAX_STATUS_ASKS`] nodes (8 at a time, 2 s each):
/// every member of a ring of a few dozen nodes, the neighbourhood of the entry node in a larger
/// one. Empty, with a warning, if the peer does not answer: the node then takes a random id.
async fn ring_members(peer: &str, timeout: Duration) -> Vec<chord::Id> {
    let timeout = timeout.min(Duration::from_secs(2));
    let client = peerstore_proto::parse_node_addr(peer).ok().and_then(|a| {
        Some((
            peerstore_proto::RpcClient::start(a.clone(), timeout).ok()?,
            a,
        ))
    });
    let Some((client, first)) = client else {
        warn!(%peer, "cannot reach the initial peer before joining; taking a random ring id");
        return Vec::new();
    };
    let mut known: std::collections::BTreeMap<chord::Id, NodeAddr> = Default::default();
    let mut asked = std::collections::BTreeSet::new();
    let mut frontier = vec![first];
    while !frontier.is_empty() && asked.len() < MAX_STATUS_ASKS {
        let take = frontier.len().min(8).min(MAX_STATUS_ASKS - asked.len());
        let batch: Vec<NodeAddr> = frontier.drain(..take).collect();
        asked.extend(batch.iter().map(|a| a.peer));
        let answers = futures::future::join_all(
            batch
                .iter()
                .map(|a| client.call_to(a, ClientRequest::Status)),
        )
        .await;
        for answer in answers {
            let Ok(ClientResponse::Status(s)) = answer else {
                continue;
            };
            let seen = std::iter::once(peerstore_proto::MemberInfo {
                id: s.id,
                addr: s.addr.clone(),
            })
            .chain(s.predecessor.clone())
            .chain(s.successors.clone())
            .chain(s.fingers.clone());
            for m in seen {
                if known.insert(m.id, m.addr.clone()).is_none() && !asked.contains(&m.addr.peer) {
                    frontier.push(m.addr);
                }
            }
        }
    }
    if known.is_empty() {
        warn!(%peer, "the initial peer did not answer a status request; taking a random ring id");
    } else {
        info!(
            members = known.len(),
            asked = asked.len(),
            "choosing a ring id that evens out the arcs"
        );
    }
    known.into_keys().collect()
}

/// Most nodes a joining node asks for their status while choosing its ring id.
const MAX_STATUS_ASKS: usize = 32;
