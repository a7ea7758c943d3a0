//! `peerstore-node`: runs a PeerStore node, or asks one for its status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use libp2p::Multiaddr;
use peerstore_node::config::{parse_size, NodeConfig};
use peerstore_proto::{ClientRequest, ClientResponse};

#[derive(Parser)]
#[command(
    name = "peerstore-node",
    version,
    about = "A PeerStore node: a member of a Chord ring that stores encrypted blocks"
)]
#[command(args_conflicts_with_subcommands = true, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Another member to join through (full multiaddr ending in /p2p/<peer id>), besides the
    /// ones the invite names. Joining needs an invite; without one and without this flag the
    /// node starts a new ring. `-initial-peer` works too.
    #[arg(long, value_name = "MULTIADDR")]
    initial_peer: Option<String>,
    /// The invite this node joins with (the line `peerstore-node invite` prints, or @FILE).
    /// Only needed on the first start.
    #[arg(long, value_name = "LINE")]
    invite: Option<String>,
    /// On one machine: join the ring of the local node whose data directory this is (reads its
    /// ring key and address; the same as --invite with an invite minted there).
    #[arg(long, value_name = "DIR")]
    join_local: Option<PathBuf>,
    /// Address to listen on (repeatable). Default /ip4/127.0.0.1/tcp/0.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// The address other nodes should dial, if not the one it listens on (e.g. behind NAT).
    #[arg(long, value_name = "MULTIADDR")]
    announce: Option<Multiaddr>,
    /// Data directory (default: the platform's data directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Bytes of block data this node may hold, e.g. 512M or 10G.
    #[arg(long, value_parser = parse_size)]
    capacity: Option<u64>,
    /// Milliseconds a copy must have been held before it may be dropped because others hold
    /// it (default 600000).
    #[arg(long)]
    delete_min_age_ms: Option<u64>,
    /// Most copies one maintenance round may drop, per kind of deletion (default 256).
    #[arg(long)]
    delete_max_per_round: Option<usize>,
    /// Bytes each user may store through this node, e.g. 1G (default: no limit).
    #[arg(long, value_parser = parse_size)]
    user_quota: Option<u64>,
    /// Seconds a record's chain may stay without a majority of its members before its last
    /// member re-founds it (default 600; 0: never).
    #[arg(long)]
    chain_refound_after: Option<u64>,
    /// Replication factor r.
    #[arg(long)]
    replication: Option<usize>,
    /// Successor-list length (default 8, at least r).
    #[arg(long)]
    successors: Option<usize>,
    /// Chord stabilization period in milliseconds.
    #[arg(long)]
    stabilize_ms: Option<u64>,
    /// Anti-entropy period in milliseconds.
    #[arg(long)]
    maintenance_ms: Option<u64>,
    /// Entangled storage: "step" (RECAST step-archive) or "none" (plain replication).
    #[arg(long, value_name = "TYPE")]
    entanglement: Option<String>,
    /// Entanglement: source blocks per codeword.
    #[arg(long)]
    entangle_s: Option<u16>,
    /// Entanglement: pointers per codeword.
    #[arg(long)]
    entangle_t: Option<u16>,
    /// Entanglement: parities per codeword (default 8).
    #[arg(long)]
    entangle_p: Option<u16>,
    /// Entanglement: what a codeword stores, "systematic" (its sources, read directly, and p
    /// parities; the default) or "parity-only" (RECAST: the p parities alone; needs p >= s).
    #[arg(long, value_name = "LAYOUT")]
    entangle_layout: Option<String>,
    /// Entanglement: the ring's block size B, e.g. 256K.
    #[arg(long, value_parser = parse_size)]
    block_size: Option<u64>,
    /// Entanglement: repair worker period in milliseconds.
    #[arg(long)]
    repair_ms: Option<u64>,
    /// Entanglement: nodes that hold each codeword record, document record and reverse
    /// reference (m >= replication; default 10).
    #[arg(long)]
    metadata_replication: Option<usize>,
    /// Replica management: parities among this many newest of the ring keep their r copies
    /// (default 1024); older ones go down to one copy on their own.
    #[arg(long, value_name = "PARITIES")]
    replica_window: Option<u64>,
    /// Replica management: parities older than this many milliseconds go down to one copy
    /// even inside the window (default 3600000, an hour; 0: age alone never does).
    #[arg(long, value_name = "MS")]
    replica_max_age_ms: Option<u64>,
    /// Replica management: how often a node manages the parities it owns, in milliseconds
    /// (default 60000; 0: off, only `peerstore-client scrub` by hand).
    #[arg(long, value_name = "MS")]
    replica_every_ms: Option<u64>,
    /// Replica management gives way to clients: a round waits until this node has served no
    /// client's data (backup blocks, restore reads) for this many milliseconds, and a round
    /// under way stops for one (default 10000; 0: never waits).
    #[arg(long, value_name = "MS")]
    replica_yield_ms: Option<u64>,
    /// Replica management: the longest its work waits for clients to pause, in milliseconds
    /// (default 600000); then a whole round runs however busy the node is.
    #[arg(long, value_name = "MS")]
    replica_max_wait_ms: Option<u64>,
    /// Systematic layout: where a new codeword's parities go, "later" (the default: the write
    /// is acknowledged with its sources at r copies, and the parities are stored as one copy
    /// on their owners once this node's clients pause), "single" (one copy on their owner
    /// before the acknowledgement) or "replicated" (r copies, like the sources, until replica
    /// management takes them down).
    #[arg(long, value_name = "WHERE")]
    fresh_parities: Option<String>,
    /// Memory for parities stored after the acknowledgement, MiB (default 256; beyond it a
    /// write stores its parities first).
    #[arg(long, value_name = "MIB")]
    later_mib: Option<u64>,
    /// How long the repair worker leaves a new codeword's missing parities to its encoder,
    /// milliseconds (default: --replica-max-wait-ms plus --repair-ms).
    #[arg(long, value_name = "MS")]
    later_grace_ms: Option<u64>,
    /// First start only: key pairs to draw, keeping the one whose ring id best evens out the
    /// arcs of the ring being joined (default 1024; 1 = a random id).
    #[arg(long)]
    id_choices: Option<usize>,
    /// Established connections the node keeps at most (default 1024; inbound ones beyond it
    /// are refused).
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// Inbound connections from one IP address (one IPv6 /64), handshaking or established
    /// (default 64).
    #[arg(long, value_name = "N")]
    max_connections_per_ip: Option<u32>,
    /// Bytes of requests still arriving the node holds at once, e.g. 256M (the default).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    inbound_budget: Option<u64>,
    /// Serve a web page of the ring (`/`), its data (`/ring.json`) and Prometheus metrics
    /// (`/metrics`) on IP:PORT, e.g. 127.0.0.1:9100 (port 0: any; the address goes to
    /// <data-dir>/http.addr). Default: off. Loopback addresses only without --http-public.
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<std::net::SocketAddr>,
    /// Allow --http on an address other than loopback (the page needs no credential).
    #[arg(long)]
    http_public: bool,
    /// The machine this node runs on, for replica placement: give every node on one machine
    /// the same name, and nodes on different machines different ones (default: the machine
    /// id, /etc/machine-id).
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// The zone of that machine (a room, a building, a site); replica sets spread over hosts
    /// first, then zones (default: the machine id).
    #[arg(long, value_name = "NAME")]
    zone: Option<String>,
    /// A TOML configuration file (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// How a tool proves itself to a node: a credential file, or the ring key (which mints a
/// temporary administrator's credential).
#[derive(Args)]
struct CredentialArgs {
    /// A credential: a file holding an invite line (`peerstore-node invite --role admin`).
    #[arg(long, value_name = "FILE", env = "PEERSTORE_CREDENTIAL")]
    credential: Option<PathBuf>,
    /// The ring key (`ring.key`, or the data directory holding it). Default: the one in
    /// --data-dir, if any.
    #[arg(long, value_name = "PATH")]
    ring_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the ring as a node sees it and what it stores.
    Status {
        /// The node to ask (full multiaddr). Default: the address file in --data-dir.
        #[arg(long)]
        peer: Option<String>,
        /// Data directory of a local node whose address file to read.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        auth: CredentialArgs,
    },
    /// Create a new ring: a ring key, and this data directory as its first member.
    Ring {
        #[command(subcommand)]
        command: RingCmd,
    },
    /// Print an invite (one line) for a new node, user or administrator of the ring.
    Invite {
        /// Data directory of the node that holds the ring key (and whose address the invite
        /// names). Default: the platform's data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The ring key, if not in --data-dir.
        #[arg(long, value_name = "PATH")]
        ring_key: Option<PathBuf>,
        /// member (a node), user (peerstore-client) or admin.
        #[arg(long, default_value = "member")]
        role: peerstore_proto::Role,
        /// A name for the certificate (shown in logs).
        #[arg(long, default_value = "")]
        label: String,
        /// More members the invite names to join through (repeatable).
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
        /// Key pairs drawn to give a new member the ring id that best evens out the arcs.
        #[arg(long, default_value_t = 1024)]
        id_choices: usize,
    },
    /// Revoke a node's, user's or administrator's certificate ring-wide.
    Revoke {
        /// The PeerId(s) to revoke.
        #[arg(required = true)]
        peers: Vec<String>,
        /// Data directory of the node that holds the ring key; the new list is handed to it.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The ring key, if not in --data-dir.
        #[arg(long, value_name = "PATH")]
        ring_key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RingCmd {
    /// Make the ring key and this node's membership (a node started without an invite does
    /// this by itself).
    Init {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where to keep the ring key instead of <data-dir>/ring.key.
        #[arg(long, value_name = "FILE")]
        ring_key: Option<PathBuf>,
    },
}

/// Accepts the Go-style single-dash `-initial-peer` (and `-initial-peer=...`) people type.
fn normalize_args() -> Vec<String> {
    std::env::args()
        .map(|a| {
            if a == "-initial-peer" || a.starts_with("-initial-peer=") {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse_from(normalize_args());
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Some(Cmd::Status {
                peer,
                data_dir,
                json,
                auth,
            }) => status(peer, data_dir, json, auth).await,
            Some(Cmd::Ring {
                command: RingCmd::Init { data_dir, ring_key },
            }) => {
                let dir = data_dir.unwrap_or_else(peerstore_node::config::default_data_dir);
                let key = peerstore_node::admission::init_ring(&dir, ring_key.as_deref())?;
                println!(
                    "created ring {} in {}; start the node there, then `peerstore-node invite` for the next ones",
                    key.public().fingerprint(),
                    dir.display()
                );
                Ok(())
            }
            Some(Cmd::Invite {
                data_dir,
                ring_key,
                role,
                label,
                bootstrap,
                id_choices,
            }) => {
                let dir = data_dir.unwrap_or_else(peerstore_node::config::default_data_dir);
                let key = ring_key.unwrap_or_else(|| dir.clone());
                let invite = peerstore_node::admission::invite_from(
                    &key,
                    Some(&dir),
                    role,
                    &label,
                    id_choices,
                    bootstrap,
                )
                .await?;
                println!("{}", invite.to_line());
                Ok(())
            }
            Some(Cmd::Revoke {
                peers,
                data_dir,
                ring_key,
            }) => revoke(peers, data_dir, ring_key).await,
            None => run(cli.run).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let mut c = match &a.config {
        Some(p) => NodeConfig::from_file(p)?,
        None => NodeConfig::default(),
    };
    if let Some(v) = a.initial_peer {
        c.initial_peer = Some(v);
    }
    if let Some(v) = a.invite {
        c.invite = Some(v);
    }
    if let Some(v) = a.join_local {
        c.join_local = Some(v);
    }
    if !a.listen.is_empty() {
        c.listen = a.listen;
    }
    if let Some(v) = a.announce {
        c.announce = Some(v);
    }
    if let Some(v) = a.data_dir {
        c.data_dir = v;
    }
    if let Some(v) = a.capacity {
        c.capacity = v;
    }
    if let Some(v) = a.user_quota {
        c.user_quota = Some(v);
    }
    if let Some(v) = a.chain_refound_after {
        c.chain_refound_after_s = v;
    }
    if let Some(v) = a.delete_min_age_ms {
        c.delete_min_age_ms = Some(v);
    }
    if let Some(v) = a.delete_max_per_round {
        c.delete_max_per_round = Some(v);
    }
    if let Some(v) = a.replication {
        c.replication = v;
        c.successors = c.successors.max(v);
    }
    if let Some(v) = a.successors {
        c.successors = v;
    }
    if let Some(v) = a.stabilize_ms {
        c.stabilize_ms = v;
    }
    if let Some(v) = a.maintenance_ms {
        c.maintenance_ms = v;
    }
    if let Some(v) = a.entanglement {
        c.entanglement.kind = match v.as_str() {
            "step" => peerstore_node::entangled::EntanglementType::Step,
            "none" => peerstore_node::entangled::EntanglementType::None,
            other => anyhow::bail!("--entanglement {other}: use step or none"),
        };
    }
    if let Some(v) = a.entangle_s {
        c.entanglement.s = v;
    }
    if let Some(v) = a.entangle_t {
        c.entanglement.t = v;
    }
    if let Some(v) = a.entangle_p {
        c.entanglement.p = v;
    }
    if let Some(v) = a.entangle_layout {
        c.entanglement.layout = match v.as_str() {
            "systematic" => entangle::Layout::Systematic,
            "parity-only" => entangle::Layout::ParityOnly,
            other => anyhow::bail!("--entangle-layout {other}: use systematic or parity-only"),
        };
    }
    if let Some(v) = a.block_size {
        c.entanglement.block_size =
            u32::try_from(v).map_err(|_| anyhow::anyhow!("--block-size {v} is too large"))?;
    }
    if let Some(v) = a.repair_ms {
        c.entanglement.repair_ms = v;
    }
    if let Some(v) = a.replica_window {
        c.entanglement.replicas.window = v;
    }
    if let Some(v) = a.replica_max_age_ms {
        c.entanglement.replicas.max_age_ms = v;
    }
    if let Some(v) = a.replica_every_ms {
        c.entanglement.replicas.every_ms = v;
    }
    if let Some(v) = a.replica_yield_ms {
        c.entanglement.replicas.yield_ms = v;
    }
    if let Some(v) = a.replica_max_wait_ms {
        c.entanglement.replicas.max_wait_ms = v;
    }
    if let Some(v) = a.fresh_parities {
        let r = &mut c.entanglement.replicas;
        (r.single_parities_at_write, r.parities_later) = match v.as_str() {
            "later" => (true, true),
            "single" => (true, false),
            "replicated" => (false, false),
            other => anyhow::bail!("--fresh-parities {other}: use later, single or replicated"),
        };
    }
    if let Some(v) = a.later_mib {
        c.entanglement.replicas.later_mib = v;
    }
    if let Some(v) = a.later_grace_ms {
        c.entanglement.replicas.later_grace_ms = v;
    }
    if let Some(v) = a.metadata_replication {
        c.entanglement.metadata_replication = v;
    }
    if let Some(v) = a.id_choices {
        c.id_choices = v;
    }
    if let Some(v) = a.max_connections {
        c.max_connections = v;
    }
    if let Some(v) = a.max_connections_per_ip {
        c.max_connections_per_ip = v;
    }
    if let Some(v) = a.inbound_budget {
        c.inbound_budget = v;
    }
    if let Some(v) = a.http {
        c.http = Some(v);
    }
    if a.http_public {
        c.http_public = true;
    }
    if let Some(v) = a.host {
        c.host = Some(v);
    }
    if let Some(v) = a.zone {
        c.zone = Some(v);
    }
    peerstore_node::run(c, shutdown_signal()).await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The identity a tool talks to nodes as: a credential file, or a temporary administrator's
/// credential minted with the ring key.
fn tool_identity(
    auth: &CredentialArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<peerstore_proto::Identity> {
    use peerstore_node::admission;
    if let Some(file) = &auth.credential {
        let invite = admission::parse_invite(&format!("@{}", file.display()))?;
        return Ok(peerstore_proto::Identity::from_invite(&invite)?);
    }
    let key_path = auth
        .ring_key
        .clone()
        .unwrap_or_else(|| data_dir.to_path_buf());
    if auth.ring_key.is_none() && !admission::ring_key_path(data_dir).exists() {
        anyhow::bail!(
            "no credential: pass --credential <file with an invite line> (`peerstore-node invite --role admin`), or --ring-key"
        );
    }
    let key = admission::read_ring_key(&key_path)?;
    Ok(admission::ephemeral(
        &key,
        peerstore_proto::Role::Admin,
        "tool",
    ))
}

async fn revoke(
    peers: Vec<String>,
    data_dir: Option<PathBuf>,
    ring_key: Option<PathBuf>,
) -> anyhow::Result<()> {
    use peerstore_node::admission;
    let dir = data_dir.unwrap_or_else(peerstore_node::config::default_data_dir);
    let key = admission::read_ring_key(ring_key.as_deref().unwrap_or(&dir))?;
    let mut list = admission::read_revocations(&dir);
    let mut ids = list.peer_ids();
    for p in &peers {
        ids.push(
            p.parse()
                .map_err(|_| anyhow::anyhow!("'{p}' is not a PeerId (12D3KooW...)"))?,
        );
    }
    list = key.revoke(list.seq + 1, ids);
    admission::write_revocations(&dir, &list)?;
    // Hand the list to the running node in a greeting; it passes it on to every peer.
    if let Ok(node) = peerstore_node::identity::read_address_file(&dir) {
        let me = admission::ephemeral(&key, peerstore_proto::Role::Admin, "revoke");
        let client = peerstore_proto::RpcClient::start_as(node, Duration::from_secs(10), Some(me))?;
        client.greet_with(list.clone()).await?;
    }
    println!(
        "revoked {} peer(s); revocation list #{} ({} entries) handed to the ring",
        peers.len(),
        list.seq,
        list.peers.len()
    );
    Ok(())
}

async fn status(
    peer: Option<String>,
    data_dir: Option<PathBuf>,
    json: bool,
    auth: CredentialArgs,
) -> anyhow::Result<()> {
    let dir = data_dir.unwrap_or_else(peerstore_node::config::default_data_dir);
    let node = match peer {
        Some(p) => peerstore_proto::parse_node_addr(&p).map_err(anyhow::Error::msg)?,
        None => peerstore_node::identity::read_address_file(&dir)?,
    };
    let me = tool_identity(&auth, &dir)?;
    let client = peerstore_proto::RpcClient::start_as(node, Duration::from_secs(10), Some(me))?;
    let s = match client.call(ClientRequest::Status).await? {
        ClientResponse::Status(s) => s,
        other => anyhow::bail!("{}", peerstore_proto::rpc::describe(&other)),
    };
    if json {
        let member = |m: &peerstore_proto::MemberInfo| serde_json::json!({ "id": m.id.to_hex(), "addr": m.addr.to_string() });
        let v = serde_json::json!({
            "id": s.id.to_hex(),
            "addr": s.addr.to_string(),
            "member": s.member,
            "predecessor": s.predecessor.as_ref().map(member),
            "successors": s.successors.iter().map(member).collect::<Vec<_>>(),
            "fingers": s.fingers.iter().map(member).collect::<Vec<_>>(),
            "distinct_fingers": s.distinct_fingers,
            "replication": s.replication,
            "owned_range": [s.owned_range.0.to_hex(), s.owned_range.1.to_hex()],
            "keys_owned": s.keys_owned,
            "keys_replica": s.keys_replica,
            "bytes_used": s.bytes_used,
            "disk_bytes": s.disk_bytes,
            "capacity": s.capacity,
            "records": s.records,
            "user_quota": s.user_quota,
            "users": s.users.iter().map(|u| serde_json::json!({ "user": u.user, "label": u.label, "bytes": u.bytes })).collect::<Vec<_>>(),
            "placement": {
                "host": s.placement.host,
                "zone": s.placement.zone,
                "replica_hosts": s.placement.replica_hosts,
                "warning": s.placement.warning,
            },
            "maintenance": {
                "pulled": s.activity.pulled,
                "pushed": s.activity.pushed,
                "cleaned": s.activity.cleaned,
                "parity_copies_dropped": s.activity.parity_copies_dropped,
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("node        {}", s.addr);
    println!("id          {}", s.id.to_hex());
    println!("member      {}", s.member);
    match &s.predecessor {
        Some(p) => println!("predecessor {} {}", p.id, p.addr.peer),
        None => println!("predecessor (none)"),
    }
    println!("successors  {}", s.successors.len());
    for (i, m) in s.successors.iter().enumerate() {
        println!("  [{i}] {} {}", m.id, m.addr.peer);
    }
    println!("fingers     {} distinct", s.distinct_fingers);
    println!(
        "keys        {} owned, {} as replica (r = {})",
        s.keys_owned, s.keys_replica, s.replication
    );
    println!(
        "storage     {} of {} bytes used; the data directory occupies {} bytes on disk",
        s.bytes_used, s.capacity, s.disk_bytes
    );
    println!(
        "placement   host {}, zone {}; the keys it owns are on {} host(s)",
        s.placement.host, s.placement.zone, s.placement.replica_hosts
    );
    if let Some(w) = &s.placement.warning {
        eprintln!("WARNING: {w}");
    }
    match s.user_quota {
        Some(q) => println!("user quota  {q} bytes per user through this node"),
        None => println!("user quota  none"),
    }
    for u in &s.users {
        println!("  user {} ({}): {} bytes", u.user, u.label, u.bytes);
    }
    let a = &s.activity;
    println!(
        "maintenance {} pulled, {} pushed, {} cleaned up, {} parity copies dropped (since start)",
        a.pulled, a.pushed, a.cleaned, a.parity_copies_dropped
    );
    Ok(())
}
