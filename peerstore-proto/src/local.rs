//! How a program finds the node on its own machine: the address file a node writes into its
//! data directory, and where that directory is by default.

use std::path::{Path, PathBuf};

use crate::{parse_node_addr, NodeAddr};

/// File in a node's data directory with the address it listens on (one multiaddr ending in
/// `/p2p/<peer id>`).
pub const ADDRESS_FILE: &str = "node.addr";

/// A node's data directory when `--data-dir` is not given.
#[must_use]
pub fn default_node_data_dir() -> PathBuf {
    directories::ProjectDirs::from("org", "peerstore", "peerstore-node")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from("peerstore-node-data"))
}

/// Reads the address file of the node whose data directory is `data_dir`.
pub fn read_address_file(data_dir: &Path) -> Result<NodeAddr, String> {
    let path = data_dir.join(ADDRESS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        format!(
            "no node address file at {}; is a node running with that --data-dir? (or pass --peer <multiaddr>)",
            path.display()
        )
    })?;
    parse_node_addr(&text).map_err(|e| format!("{}: {e}", path.display()))
}
