//! The node's libp2p identity, kept in its data directory so its PeerId (and so its ring id)
//! survives restarts, and the address file that tells local clients and scripts where it listens.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use libp2p::identity::Keypair;

use peerstore_proto::NodeAddr;

/// File name of the identity key inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// File name of the address file inside the data directory.
pub use peerstore_proto::local::ADDRESS_FILE;

/// Loads the node's keypair, creating (and durably saving) a new Ed25519 one on first start.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Keypair> {
    let path = data_dir.join(IDENTITY_FILE);
    match fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).with_context(|| {
            format!(
                "{} is not a valid node identity; restore it from a backup or move it away to start as a new node",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            save_new(&path, Keypair::generate_ed25519())
        }
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    }
}

/// Whether the data directory already holds a node identity.
pub fn exists(data_dir: &Path) -> bool {
    data_dir.join(IDENTITY_FILE).exists()
}

/// Creates the identity of a node about to join a ring whose members it knows by ring id:
/// draws `choices` Ed25519 key pairs and keeps the one whose ring id (SHA-256 of the PeerId)
/// splits the largest arc among `members` most evenly ([`chord::balance::best_of`]), so the
/// ring's arcs, and so its nodes' shares of the keys, stay even. Fails if an identity exists.
pub fn create_balanced(
    data_dir: &Path,
    members: &[chord::Id],
    choices: usize,
) -> anyhow::Result<Keypair> {
    let path = data_dir.join(IDENTITY_FILE);
    if path.exists() {
        bail!("{} already exists", path.display());
    }
    let n = if members.is_empty() {
        1
    } else {
        choices.max(1)
    };
    let mut pairs: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
    let ids: Vec<chord::Id> = pairs
        .iter()
        .map(|k| peerstore_proto::ring_id(&k.public().to_peer_id()))
        .collect();
    let best = chord::balance::best_of(members, &ids).unwrap_or(0);
    save_new(&path, pairs.swap_remove(best))
}

fn save_new(path: &Path, kp: Keypair) -> anyhow::Result<Keypair> {
    let bytes = kp
        .to_protobuf_encoding()
        .context("cannot encode the new node identity")?;
    write_durable(path, &bytes, true)?;
    Ok(kp)
}

/// Writes the address file (full multiaddr with /p2p/<peer id>, one line).
pub fn write_address_file(data_dir: &Path, addr: &NodeAddr) -> anyhow::Result<PathBuf> {
    let path = data_dir.join(ADDRESS_FILE);
    write_durable(&path, format!("{addr}\n").as_bytes(), false)?;
    Ok(path)
}

/// Reads a node's address file.
pub fn read_address_file(data_dir: &Path) -> anyhow::Result<NodeAddr> {
    peerstore_proto::local::read_address_file(data_dir).map_err(anyhow::Error::msg)
}

/// temp file -> fsync -> rename -> fsync directory.
pub fn write_durable(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot rename into {}", path.display()))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a valid node identity"), "{err}");
    }
}
