//! Node configuration: a serde struct read from `--config <toml>`, overridden by command-line flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// Everything a node needs to run. Every field has a default; a TOML file may set any of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where blocks, metadata, the node identity and the address file live.
    pub data_dir: PathBuf,
    /// Addresses to listen on. Default: TCP on 127.0.0.1 with an ephemeral port.
    pub listen: Vec<Multiaddr>,
    /// The address other nodes should dial (e.g. a public address behind port forwarding).
    /// Default: the first routable TCP address the node listens on.
    pub announce: Option<Multiaddr>,
    /// A member of the ring to join through (a full multiaddr ending in /p2p/<peer id>).
    /// Joining also needs an invite; the invite names members to join through already.
    pub initial_peer: Option<String>,
    /// The invite this node was given (`peerstore-node invite` prints it), or `@FILE`. Only
    /// read on the first start; afterwards the data directory holds the membership.
    pub invite: Option<String>,
    /// One machine: join the ring of the local node whose data directory this is, minting an
    /// invite with the ring key kept there.
    pub join_local: Option<PathBuf>,
    /// Bytes of block data this node may hold.
    pub capacity: u64,
    /// Bytes each user may store through this node (charged by the node that accepts the
    /// write; none: no limit).
    pub user_quota: Option<u64>,
    /// A copy held for less than this (milliseconds) is never dropped because others hold it
    /// (default 600000: 10 minutes; `$PEERSTORE_DELETE_MIN_AGE_MS` when unset).
    pub delete_min_age_ms: Option<u64>,
    /// Most copies one maintenance round drops, per kind of deletion (default 256;
    /// `$PEERSTORE_DELETE_MAX_PER_ROUND` when unset).
    pub delete_max_per_round: Option<usize>,
    /// Replication factor r: a block lives on its owner and the next r-1 successors.
    pub replication: usize,
    /// Successor-list length of the Chord core (at least `replication`).
    pub successors: usize,
    /// How often Chord stabilizes, in milliseconds.
    pub stabilize_ms: u64,
    /// How often the node runs anti-entropy against its neighbours, in milliseconds.
    pub maintenance_ms: u64,
    /// Timeout of one request to another node, in milliseconds.
    pub request_timeout_ms: u64,
    /// On first start with an initial peer: key pairs drawn to pick the ring id that best
    /// evens out the arcs of the ring being joined (1: a random id, as plain Chord).
    pub id_choices: usize,
    /// Established connections this node keeps at most (inbound beyond it are refused;
    /// connections it dials itself are never refused).
    pub max_connections: u32,
    /// Inbound connections (in their handshake or established) from one IP address, or one
    /// IPv6 /64. Raise it for a test ring of many nodes on one machine or many clients behind
    /// one address.
    pub max_connections_per_ip: u32,
    /// Bytes of requests still arriving that the node holds at once, beyond the first 64 KiB
    /// of each (the rest waits, then fails).
    pub inbound_budget: u64,
    /// Entangled storage (module `entangled`): `entanglement = { type = "step", layout =
    /// "systematic", s = 4, t = 8, p = 8, block_size = 262144 }`; the same on every node of a
    /// ring.
    pub entanglement: crate::entangled::EntanglementConfig,
    /// Serve the web page of the ring and Prometheus metrics on this address (`IP:PORT`;
    /// port 0 picks one and writes it to `<data_dir>/http.addr`). Default: off.
    pub http: Option<std::net::SocketAddr>,
    /// Allow `http` on an address that is not loopback (the page and metrics need no
    /// credential).
    pub http_public: bool,
    /// The machine this node runs on, as replica placement sees it (default: the machine id):
    /// replica sets spread over distinct hosts first (module `placement`).
    pub host: Option<String>,
    /// The zone (a room, a building, a site) of that machine (default: the machine id).
    pub zone: Option<String>,
    /// Seconds a record's chain may stay without a majority of its members (the others gone
    /// from the ring) before its last synced member re-founds it alone and brings the key's
    /// current replica set in (default 600; 0: never, an operator restarts the lost members).
    /// See docs/CHAIN.md, "Re-founding a chain that lost its majority".
    pub chain_refound_after_s: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: default_data_dir(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr")],
            announce: None,
            initial_peer: None,
            invite: None,
            join_local: None,
            capacity: 10 << 30,
            user_quota: None,
            delete_min_age_ms: None,
            delete_max_per_round: None,
            replication: 3,
            successors: 8,
            stabilize_ms: 1000,
            maintenance_ms: 5000,
            request_timeout_ms: 10_000,
            id_choices: 1024,
            max_connections: peerstore_proto::limits::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: peerstore_proto::limits::DEFAULT_MAX_CONNECTIONS_PER_IP,
            inbound_budget: peerstore_proto::limits::DEFAULT_INBOUND_BUDGET as u64,
            entanglement: crate::entangled::EntanglementConfig::default(),
            http: None,
            http_public: false,
            host: None,
            zone: None,
            chain_refound_after_s: 600,
        }
    }
}

/// The platform's data directory for the node (e.g. ~/.local/share/peerstore-node).
pub fn default_data_dir() -> PathBuf {
    peerstore_proto::local::default_node_data_dir()
}

impl NodeConfig {
    /// Reads a TOML file; unknown keys are errors so typos do not silently fall back to defaults.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.replication == 0 {
            return bad("replication must be at least 1".into());
        }
        if self.successors < self.replication {
            return bad(format!(
                "successors ({}) must be at least replication ({})",
                self.successors, self.replication
            ));
        }
        if self.listen.is_empty() {
            return bad("at least one --listen address is needed".into());
        }
        if self.id_choices == 0 || self.id_choices > 1 << 20 {
            return bad(format!(
                "id_choices ({}) must be between 1 and 1048576",
                self.id_choices
            ));
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return bad("max_connections and max_connections_per_ip must be at least 1".into());
        }
        if self.inbound_budget < peerstore_proto::MAX_CLIENT_FRAME as u64 {
            return bad(format!(
                "inbound_budget ({}) must be at least {} (one largest frame)",
                self.inbound_budget,
                peerstore_proto::MAX_CLIENT_FRAME
            ));
        }
        if self.delete_min_age_ms.is_some_and(|ms| ms > 86_400_000) {
            return bad("delete_min_age_ms must be at most 86400000 (one day)".into());
        }
        if self.stabilize_ms == 0 || self.maintenance_ms == 0 || self.request_timeout_ms == 0 {
            return bad("intervals and timeouts must be positive".into());
        }
        if let Some(addr) = &self.http {
            crate::http::check_addr(addr, self.http_public).map_err(ConfigError::Invalid)?;
        }
        self.place().map_err(ConfigError::Invalid)?;
        self.entanglement.validate().map_err(ConfigError::Invalid)?;
        self.entanglement
            .validate_metadata(self.replication)
            .map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// Where this node runs: `host` and `zone`, each defaulting to this machine's id.
    pub fn place(&self) -> Result<crate::placement::Place, String> {
        let machine = crate::placement::Place::this_machine();
        crate::placement::Place::new(
            self.host.as_deref().unwrap_or(&machine.host),
            self.zone.as_deref().unwrap_or(&machine.zone),
        )
    }

    pub fn stabilize_interval(&self) -> Duration {
        Duration::from_millis(self.stabilize_ms)
    }

    pub fn maintenance_interval(&self) -> Duration {
        Duration::from_millis(self.maintenance_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// What the node's network may hold: connection limits and the budget of incoming bytes.
    pub fn net_limits(&self) -> peerstore_proto::limits::NetLimits {
        use peerstore_proto::limits::{ConnectionLimits, NetLimits};
        NetLimits {
            connections: ConnectionLimits {
                max_established: self.max_connections,
                max_per_ip: self.max_connections_per_ip,
                ..ConnectionLimits::default()
            },
            inbound_budget: usize::try_from(self.inbound_budget).unwrap_or(usize::MAX),
        }
    }

    /// The Chord core's configuration derived from this one.
    pub fn chord_config(&self) -> chord::Config {
        let stabilize = self.stabilize_interval();
        chord::Config {
            successors: self.successors,
            predecessors: self.successors,
            replication: self.replication,
            stabilize_interval: stabilize,
            fix_fingers_interval: stabilize / 4,
            rpc_timeout: (stabilize * 2).max(Duration::from_millis(500)),
            rpc_retries: 1,
            lookup_timeout: self.request_timeout(),
            lookup_max_hops: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Parses a byte size with an optional K/M/G/T suffix (powers of 1024), e.g. "512M", "10G".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let suffix = t[i..].trim().to_ascii_uppercase();
            let mult = match suffix.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("'{s}': unknown size suffix (use K, M, G or T)")),
            };
            (&t[..i], mult)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 1048576, 512M, 10G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("3M").unwrap(), 3 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }

    #[test]
    fn defaults_validate_and_toml_round_trips() {
        let c = NodeConfig::default();
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        let back: NodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(back.capacity, c.capacity);
        assert!(toml::from_str::<NodeConfig>("capacity_typo = 3").is_err());
        let bad = NodeConfig {
            successors: 1,
            ..NodeConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
