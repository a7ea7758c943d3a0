//! The PeerStore node daemon: a member of a Chord ring over libp2p that stores content-addressed
//! blocks for the keys it owns, replicates them to its successors, and moves them when the ring
//! changes.
//!
//! - [`proto`]: the wire protocol (shared with the client).
//! - [`driver`]: the one task that owns the swarm, the clock and the pure Chord core.
//! - [`service`]: answers data requests, routing client requests through the ring.
//! - [`maintenance`]: anti-entropy, clean-up and hand-off.
//! - [`store`]: the durable block store and metadata.
//! - [`rpc`]: a client endpoint for the data protocol.
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
pub mod proto;
pub mod rpc;
pub mod service;
pub mod store;
#[doc(hidden)]
pub mod testing;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::driver::{build_swarm, Driver, Start};
use crate::service::Service;
use crate::store::{BlockStore, StoreConfig};

/// Runs a node until `shutdown` resolves, then leaves the ring gracefully: hands its keys on,
/// lets its neighbours splice the ring, and returns.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let keypair = identity::load_or_create(&config.data_dir)?;
    let peer = keypair.public().to_peer_id();
    info!(%peer, id = %proto::ring_id(&peer), "node identity");

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
    let entangled = Arc::new(entangled::Entangled::new(
        config.entanglement.clone(),
        config.replication,
        Arc::new(single),
    ));

    // A node joins through --initial-peer, then through the members it knew when it last ran
    // (so a restart still finds the ring when the initial peer is gone). Without
    // --initial-peer, a node that was in a ring rejoins it if any member answers, and starts a
    // new ring otherwise.
    let known = driver::read_peers_file(&config.data_dir);
    let start = match &config.initial_peer {
        Some(s) => {
            let first =
                proto::parse_node_addr(s).map_err(|e| anyhow::anyhow!("--initial-peer: {e}"))?;
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

    let service = Arc::new(Service {
        handle: handle.clone(),
        store,
        replication: config.replication,
        entangled,
    });
    let mut driver_task = tokio::spawn(driver.run(start));
    let serve_task = tokio::spawn(service.clone().serve(inbound));
    let maint_task = tokio::spawn(maintenance::run(
        service.clone(),
        config.maintenance_interval(),
    ));
    let ent_task = tokio::spawn(entangled::run(
        service.clone(),
        config.maintenance_interval(),
    ));

    tokio::select! {
        _ = shutdown => {
            info!("shutting down: handing keys off and leaving the ring");
            maint_task.abort();
            ent_task.abort();
            let report = tokio::time::timeout(Duration::from_secs(60), maintenance::hand_off(&service)).await;
            match report {
                Ok(r) => info!(pushed = r.pushed, errors = r.errors, "hand-off done"),
                Err(_) => warn!("hand-off did not finish within 60 s"),
            }
            // Entangled storage: single copies and reverse references.
            match tokio::time::timeout(Duration::from_secs(60), entangled::scrub::hand_off(&service)).await {
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
