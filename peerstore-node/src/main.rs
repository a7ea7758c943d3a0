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
    /// Join the ring this peer is in (full multiaddr ending in /p2p/<peer id>). Without it the
    /// node starts a new ring. `-initial-peer` works too.
    #[arg(long, value_name = "MULTIADDR")]
    initial_peer: Option<String>,
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
    /// Entanglement: parities per codeword.
    #[arg(long)]
    entangle_p: Option<u16>,
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
    /// First start only: key pairs to draw, keeping the one whose ring id best evens out the
    /// arcs of the ring being joined (default 1024; 1 = a random id).
    #[arg(long)]
    id_choices: Option<usize>,
    /// A TOML configuration file (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
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
            }) => status(peer, data_dir, json).await,
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
    if let Some(v) = a.block_size {
        c.entanglement.block_size =
            u32::try_from(v).map_err(|_| anyhow::anyhow!("--block-size {v} is too large"))?;
    }
    if let Some(v) = a.repair_ms {
        c.entanglement.repair_ms = v;
    }
    if let Some(v) = a.metadata_replication {
        c.entanglement.metadata_replication = v;
    }
    if let Some(v) = a.id_choices {
        c.id_choices = v;
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

async fn status(peer: Option<String>, data_dir: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let node = match peer {
        Some(p) => peerstore_proto::parse_node_addr(&p).map_err(anyhow::Error::msg)?,
        None => peerstore_node::identity::read_address_file(
            &data_dir.unwrap_or_else(peerstore_node::config::default_data_dir),
        )?,
    };
    let client = peerstore_proto::RpcClient::start(node, Duration::from_secs(10))?;
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
            "capacity": s.capacity,
            "records": s.records,
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
    println!("storage     {} of {} bytes used", s.bytes_used, s.capacity);
    Ok(())
}
