//! The PeerStore node daemon: a member of a Chord ring over libp2p that stores content-addressed
//! blocks for the keys it owns, replicates them to its successors, and moves them when the ring
//! changes.
//!
//! The wire protocols live in the `peerstore-proto` crate, below this one and the client. The
//! node's modules, from the bottom up (each uses only those above it):
//! - [`config`], [`identity`], [`admission`]: settings, the node's key pair and its membership
//!   of a ring (certificates, invites, revocations).
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

pub mod admission;
pub mod chains;
pub mod config;
pub mod disk;
pub mod driver;
pub mod entangled;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod maintenance;
pub mod metrics;
pub mod placement;
pub mod quota;
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

use peerstore_proto::NodeAddr;

use crate::config::NodeConfig;
use crate::driver::{build_swarm_with, Driver, Start};
use crate::replication::Replication;
use crate::ring::Ring;
use crate::service::Service;
use crate::store::{BlockStore, StoreConfig};

/// Runs a node until `shutdown` resolves, then leaves the ring gracefully: hands its keys on,
/// lets its neighbours splice the ring, and returns.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    // How cautious deletions are: flags and config, else the environment, else the defaults.
    {
        use replication::deletion::{self, DeletionPolicy};
        let env = |v: &str| std::env::var(v).ok();
        let mut policy = DeletionPolicy::parse(
            env(deletion::MIN_AGE_VAR).as_deref(),
            env(deletion::MAX_PER_ROUND_VAR).as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        if let Some(ms) = config.delete_min_age_ms {
            policy.min_age = Duration::from_millis(ms);
        }
        if let Some(n) = config.delete_max_per_round {
            policy.max_per_round = n;
        }
        deletion::set_policy(policy);
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let invite = match (&config.invite, &config.join_local) {
        (Some(line), _) => Some(admission::parse_invite(line)?),
        (None, Some(dir)) if !admission::is_member(&config.data_dir) => Some(
            admission::invite_from(
                dir,
                Some(dir),
                peerstore_proto::Role::Member,
                "local",
                config.id_choices,
                Vec::new(),
            )
            .await?,
        ),
        _ => None,
    };
    let wants_to_join = config.initial_peer.is_some() || config.join_local.is_some();
    let admitted = admission::prepare(&config.data_dir, invite, wants_to_join)?;
    if admitted.created {
        println!(
            "peerstore-node: created ring {}; its key is {} (keep it safe: it admits nodes and users). Invite more with `peerstore-node invite --data-dir {}`",
            admitted.identity.credential.ring.fingerprint(),
            admission::ring_key_path(&config.data_dir).display(),
            config.data_dir.display()
        );
    }
    let keypair = admitted.identity.keypair.clone();
    let peer = keypair.public().to_peer_id();
    info!(%peer, id = %peerstore_proto::ring_id(&peer), ring = %admitted.identity.credential.ring.fingerprint(), "node identity");

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
    // It draws on the same --capacity as the replicated store (docs/OPERATIONS.md, Capacity).
    let shared = store.shared_capacity();
    let (single, _) = tokio::task::spawn_blocking(move || {
        BlockStore::open(StoreConfig::sharing(single_dir, shared))
    })
    .await
    .context("single-copy store open task failed")??;

    // A node joins through --initial-peer, then through the members it knew when it last ran
    // (so a restart still finds the ring when the initial peer is gone). A node that was in a
    // ring (it has a peers file) rejoins it if any member answers, and otherwise starts a new
    // ring and merges into the old one as soon as its members answer again, with or without
    // --initial-peer: when a whole ring restarts at once (a power cut) every node answers as a
    // non-member, and waiting for a member would wait forever. Only a node that never was a
    // member waits for the ring it was told to join.
    let known = driver::read_peers_file(&config.data_dir);
    let was_member = !known.is_empty();
    let mut via: Vec<NodeAddr> = Vec::new();
    if let Some(s) = &config.initial_peer {
        via.push(
            peerstore_proto::parse_node_addr(s)
                .map_err(|e| anyhow::anyhow!("--initial-peer: {e}"))?,
        );
    }
    let told = !via.is_empty() || !admitted.bootstrap.is_empty();
    via.extend(admitted.bootstrap.iter().cloned());
    via.extend(known);
    let start = if via.is_empty() {
        Start::Create
    } else {
        Start::Join {
            via,
            create_if_alone: !told || was_member,
        }
    };
    let membership = driver::Membership {
        identity: admitted.identity,
        revocations: admitted.revocations,
        revocations_dir: Some(config.data_dir.clone()),
    };
    let swarm = build_swarm_with(keypair, config.request_timeout(), true, config.net_limits())
        .map_err(|e| anyhow::anyhow!("cannot set up networking: {e}"))?;
    let (driver, handle, inbound) = Driver::start(
        swarm,
        &config.listen,
        config.announce.clone(),
        config.chord_config(),
        Some(config.data_dir.join(driver::PEERS_FILE)),
        membership,
    )
    .await?;
    let addr_file = identity::write_address_file(&config.data_dir, &handle.local)?;
    info!(addr = %handle.local, file = %addr_file.display(), "listening");
    println!("peerstore-node listening on {}", handle.local);

    let place = config
        .place()
        .map_err(|e| anyhow::anyhow!("placement: {e}"))?;
    let ring = Arc::new(Ring::new(handle.clone(), config.replication).with_place(place));
    let single = Arc::new(single);
    let blocks = Arc::new(Replication {
        ring: ring.clone(),
        store,
        single: Some(single.clone()),
        activity: maintenance::Activity::default(),
        leaving: std::sync::atomic::AtomicBool::new(false),
    });
    let quotas = Arc::new(quota::Quotas::new(blocks.store.clone(), config.user_quota));
    let entangled = Arc::new(
        entangled::Entangled::new(config.entanglement.clone(), blocks.clone(), single)
            .with_quotas(quotas.clone())
            .with_policy_file(entangled::policy::file(&config.data_dir))
            .map_err(|e| anyhow::anyhow!("replica management: {e}"))?
            .with_pending_log(&entangled::pending_log::file(&config.data_dir))
            .map_err(|e| anyhow::anyhow!("pending parities: {e}"))?,
    );
    let chains = chains::Chains::start(
        ring.clone(),
        blocks.store.clone(),
        replication::hostile::dirty_reads(),
        (config.chain_refound_after_s > 0)
            .then(|| std::time::Duration::from_secs(config.chain_refound_after_s)),
    )
    .map_err(|e| anyhow::anyhow!("record chains: {}", e.message))?;
    let service = Arc::new(Service {
        ring: ring.clone(),
        chains,
        replication: blocks.clone(),
        entangled: entangled.clone(),
        quotas,
        metrics: Arc::new(http::Metrics::new()),
        disk: Arc::new(disk::DiskUsage::new(config.data_dir.clone())),
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

    // The web page and metrics (--http); stopped when dropped.
    let _http = match config.http {
        Some(addr) => Some(
            http::start(
                addr,
                config.http_public,
                &config.data_dir,
                service.clone(),
                service.metrics.clone(),
                config.stabilize_interval(),
            )
            .await?,
        ),
        None => None,
    };

    tokio::select! {
        _ = shutdown => {
            info!("shutting down: handing keys off and leaving the ring");
            // Parities of acknowledged writes still in memory go to their owners first.
            entangled::later::flush(&entangled, Duration::from_secs(30)).await;
            maint_task.abort();
            ent_task.abort();
            // No single copy comes here or is dropped elsewhere for ours any more.
            blocks.leaving.store(true, std::sync::atomic::Ordering::SeqCst);
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
