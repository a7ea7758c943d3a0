//! The node's side of admission (see `peerstore_proto::admission`): the files in its data
//! directory that make it a member of a ring, creating a ring, minting invites, and the
//! revocation list it keeps.
//!
//! Files in the data directory:
//! - `identity.key`: the node's libp2p key pair (from its invite, or drawn for a new ring).
//! - `membership`: the ring's public key and this node's certificate (hex of postcard).
//! - `ring.key`: the ring's secret key, only on the node that created the ring (mode 0600).
//!   Whoever holds it can admit nodes, users and administrators, and revoke them.
//! - `revocations`: the newest signed revocation list this node has seen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use libp2p::identity::{ed25519, Keypair};
use serde::{de::DeserializeOwned, Serialize};
use tracing::{info, warn};

use peerstore_proto::admission::{Credential, Identity, Invite, Revocations, RingKey, Role};
use peerstore_proto::{ClientRequest, ClientResponse, NodeAddr, RpcClient};

use crate::identity::{self, write_durable, IDENTITY_FILE};

pub const MEMBERSHIP_FILE: &str = "membership";
pub const RING_KEY_FILE: &str = "ring.key";
pub const REVOCATIONS_FILE: &str = "revocations";

/// What a node starts with: who it is in which ring, and how to find the ring.
pub struct Admission {
    pub identity: Identity,
    pub revocations: Revocations,
    /// Members to join through (from the invite); empty for the node that created the ring.
    pub bootstrap: Vec<NodeAddr>,
    /// Whether this start created the ring.
    pub created: bool,
}

fn write_hex<T: Serialize>(path: &Path, value: &T, private: bool) -> anyhow::Result<()> {
    let bytes = postcard::to_stdvec(value).context("cannot encode")?;
    write_durable(
        path,
        format!("{}\n", hex::encode(bytes)).as_bytes(),
        private,
    )
}

fn read_hex<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() > 1 << 20 {
        bail!("{} is too large to be what it should", path.display());
    }
    let bytes = hex::decode(text.trim())
        .with_context(|| format!("{} is damaged (not hex)", path.display()))?;
    postcard::from_bytes(&bytes).with_context(|| format!("{} is damaged", path.display()))
}

/// Whether the data directory holds a membership.
pub fn is_member(data_dir: &Path) -> bool {
    data_dir.join(MEMBERSHIP_FILE).exists()
}

/// Reads the ring key kept in `data_dir` (or in the file `path` names).
pub fn read_ring_key(path: &Path) -> anyhow::Result<RingKey> {
    let file = if path.is_dir() {
        path.join(RING_KEY_FILE)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "cannot read the ring key {}: run this on the machine of the node that created the ring, or pass --ring-key",
            file.display()
        )
    })?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} is not a ring key", file.display()))?;
    Ok(RingKey::from_secret(bytes)?)
}

/// The newest revocation list kept in the data directory (the empty one if none).
pub fn read_revocations(data_dir: &Path) -> Revocations {
    let path = data_dir.join(REVOCATIONS_FILE);
    if !path.exists() {
        return Revocations::default();
    }
    read_hex(&path).unwrap_or_else(|e| {
        warn!(error = %e, "ignoring the revocation list on disk");
        Revocations::default()
    })
}

/// Keeps a revocation list (durably, before it is acted on).
pub fn write_revocations(data_dir: &Path, list: &Revocations) -> anyhow::Result<()> {
    write_hex(&data_dir.join(REVOCATIONS_FILE), list, false)
}

/// Creates a ring in `data_dir`: a ring key (kept in `ring.key`, or at `key_file`), the
/// node's identity and its member certificate. Fails if the directory already holds a
/// membership.
pub fn init_ring(data_dir: &Path, key_file: Option<&Path>) -> anyhow::Result<RingKey> {
    if is_member(data_dir) {
        bail!(
            "{} already belongs to a ring (it has a {MEMBERSHIP_FILE} file)",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let key = RingKey::generate();
    let key_path = key_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join(RING_KEY_FILE));
    write_durable(
        &key_path,
        format!("{}\n", hex::encode(key.secret_bytes())).as_bytes(),
        true,
    )?;
    let keypair = identity::load_or_create(data_dir)?;
    let cert = key.certify(&keypair.public().to_peer_id(), Role::Member, "first");
    write_hex(
        &data_dir.join(MEMBERSHIP_FILE),
        &Credential {
            ring: key.public(),
            certificate: cert,
        },
        false,
    )?;
    info!(ring = %key.public().fingerprint(), key = %key_path.display(), "created a new ring");
    Ok(key)
}

/// Reads an invite given as a line, or as `@FILE` naming a file that holds one.
pub fn parse_invite(arg: &str) -> anyhow::Result<Invite> {
    let line = match arg.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the invite file {file}"))?,
        None => arg.to_string(),
    };
    Ok(Invite::from_line(&line)?)
}

/// Sets up the node's membership before it starts: from the data directory if it is already
/// a member, from `invite` if it is new, or by creating a new ring if neither and it was
/// not told to join anything.
pub fn prepare(
    data_dir: &Path,
    invite: Option<Invite>,
    wants_to_join: bool,
) -> anyhow::Result<Admission> {
    let revocations = read_revocations(data_dir);
    if is_member(data_dir) {
        let keypair = identity::load_or_create(data_dir)?;
        let credential: Credential = read_hex(&data_dir.join(MEMBERSHIP_FILE))?;
        let peer = keypair.public().to_peer_id();
        credential
            .certificate
            .verify(&credential.ring, &peer, &revocations)
            .with_context(|| {
                format!(
                    "the membership in {} does not hold for this node",
                    data_dir.display()
                )
            })?;
        if let Some(inv) = &invite {
            if inv.certificate.subject != credential.certificate.subject {
                bail!(
                    "{} already belongs to ring {} as node {peer}; an invite is for a new node: start it with a fresh --data-dir",
                    data_dir.display(),
                    credential.ring.fingerprint()
                );
            }
        }
        let bootstrap = invite.map(|i| addrs(&i.bootstrap)).unwrap_or_default();
        return Ok(Admission {
            identity: Identity {
                keypair,
                credential,
            },
            revocations,
            bootstrap,
            created: false,
        });
    }
    if let Some(inv) = invite {
        if inv.certificate.role != Role::Member {
            bail!(
                "this invite is for a {} (peerstore-client), not a node: ask for one with `peerstore-node invite` (role member)",
                inv.certificate.role
            );
        }
        if data_dir.join(IDENTITY_FILE).exists() {
            bail!(
                "{} already holds a node identity from before admission; start the invited node with a fresh --data-dir",
                data_dir.display()
            );
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let keypair = inv.keypair()?;
        let bytes = keypair
            .to_protobuf_encoding()
            .context("cannot encode the node identity")?;
        write_durable(&data_dir.join(IDENTITY_FILE), &bytes, true)?;
        let credential = inv.credential();
        write_hex(&data_dir.join(MEMBERSHIP_FILE), &credential, false)?;
        info!(ring = %credential.ring.fingerprint(), "joined by invite");
        return Ok(Admission {
            identity: Identity {
                keypair,
                credential,
            },
            revocations,
            bootstrap: addrs(&inv.bootstrap),
            created: false,
        });
    }
    if wants_to_join {
        bail!(
            "joining a ring needs an invite: on the node that created the ring run `peerstore-node invite`, then start this node with --invite <line> (on one machine: --join-local <data dir of that node>)"
        );
    }
    init_ring(data_dir, None)?;
    let mut a = prepare(data_dir, None, false)?;
    a.created = true;
    Ok(a)
}

fn addrs(list: &[String]) -> Vec<NodeAddr> {
    list.iter()
        .filter_map(|s| peerstore_proto::parse_node_addr(s).ok())
        .collect()
}

/// An identity of `role` for the ring of `key`, for this process only (a tool holding the
/// ring key talks to nodes as an administrator with it).
pub fn ephemeral(key: &RingKey, role: Role, label: &str) -> Identity {
    let keypair = Keypair::generate_ed25519();
    let cert = key.certify(&keypair.public().to_peer_id(), role, label);
    Identity {
        keypair,
        credential: Credential {
            ring: key.public(),
            certificate: cert,
        },
    }
}

/// Mints an invite for a new peer of `role`. For a member, `choices` key pairs are drawn and
/// the one whose ring id best evens out the arcs of the ring (as far as `members` knows it)
/// is kept, so honest joins keep the ring balanced while the newcomer cannot pick its place.
pub fn mint_invite(
    key: &RingKey,
    role: Role,
    label: &str,
    bootstrap: Vec<String>,
    members: &[chord::Id],
    choices: usize,
) -> Invite {
    let n = if role == Role::Member && !members.is_empty() {
        choices.clamp(1, 1 << 20)
    } else {
        1
    };
    let mut pairs: Vec<ed25519::Keypair> = (0..n).map(|_| ed25519::Keypair::generate()).collect();
    let ids: Vec<chord::Id> = pairs
        .iter()
        .map(|k| peerstore_proto::ring_id(&Keypair::from(k.clone()).public().to_peer_id()))
        .collect();
    let best = chord::balance::best_of(members, &ids).unwrap_or(0);
    key.invite_for(pairs.swap_remove(best), role, label, bootstrap)
}

/// The ring ids reachable from `entry`: its status (itself, predecessor, successors,
/// fingers), then the statuses of the members that names, and so on, asking at most
/// [`MAX_STATUS_ASKS`] nodes (8 at a time): every member of a ring of a few dozen nodes, the
/// neighbourhood of the entry node in a larger one. Empty, with a warning, if it does not
/// answer.
pub async fn ring_members(entry: &NodeAddr, as_who: Identity, timeout: Duration) -> Vec<chord::Id> {
    let timeout = timeout.min(Duration::from_secs(2));
    let Ok(client) = RpcClient::start_as(entry.clone(), timeout, Some(as_who)) else {
        return Vec::new();
    };
    let mut known: std::collections::BTreeMap<chord::Id, NodeAddr> = Default::default();
    let mut asked = std::collections::BTreeSet::new();
    let mut frontier = vec![entry.clone()];
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
        warn!(%entry, "the ring did not answer a status request; the invite gets a random ring id");
    }
    known.into_keys().collect()
}

/// Most nodes asked for their status while choosing a new member's ring id.
const MAX_STATUS_ASKS: usize = 32;

/// Mints an invite with the ring key found at `key_path` (a data directory or a key file),
/// asking the node whose data directory is `local` (if running) for the ring's shape and
/// naming it as the place to join.
pub async fn invite_from(
    key_path: &Path,
    local: Option<&Path>,
    role: Role,
    label: &str,
    choices: usize,
    extra_bootstrap: Vec<String>,
) -> anyhow::Result<Invite> {
    let key = read_ring_key(key_path)?;
    let mut bootstrap = extra_bootstrap;
    let mut members = Vec::new();
    if let Some(dir) = local {
        if let Ok(entry) = identity::read_address_file(dir) {
            bootstrap.insert(0, entry.to_string());
            if role == Role::Member && choices > 1 {
                let me = ephemeral(&key, Role::Admin, "invite");
                members = ring_members(&entry, me, Duration::from_secs(2)).await;
            }
        }
    }
    if bootstrap.is_empty() && role == Role::Member {
        bail!(
            "no running node to name in the invite: start the ring's first node, or pass --bootstrap <multiaddr>"
        );
    }
    Ok(mint_invite(&key, role, label, bootstrap, &members, choices))
}

/// Where the ring key of a data directory is.
pub fn ring_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(RING_KEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_ring_then_an_invited_member_then_a_restart() {
        let a = tempfile::tempdir().unwrap();
        let first = prepare(a.path(), None, false).unwrap();
        assert!(first.created);
        assert!(a.path().join(RING_KEY_FILE).exists());
        let again = prepare(a.path(), None, false).unwrap();
        assert!(!again.created);
        assert_eq!(
            again.identity.credential.ring,
            first.identity.credential.ring
        );
        let key = read_ring_key(a.path()).unwrap();
        let inv = mint_invite(
            &key,
            Role::Member,
            "n2",
            vec![
                "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
                    .into(),
            ],
            &[chord::Id::hash(b"x")],
            16,
        );
        let b = tempfile::tempdir().unwrap();
        let joined = prepare(b.path(), Some(inv.clone()), true).unwrap();
        assert_eq!(joined.bootstrap.len(), 1);
        assert_eq!(joined.identity.credential.ring, key.public());
        // The same directory restarts without the invite; a second invite is refused.
        prepare(b.path(), None, true).unwrap();
        let other = mint_invite(&key, Role::Member, "n3", vec![], &[], 1);
        let err = prepare(b.path(), Some(other), true)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("fresh --data-dir"), "{err}");
        // Joining without an invite is refused with what to do.
        let c = tempfile::tempdir().unwrap();
        let err = prepare(c.path(), None, true).err().unwrap().to_string();
        assert!(err.contains("needs an invite"), "{err}");
        // A user's invite does not make a node.
        let user = mint_invite(&key, Role::User, "alice", vec![], &[], 1);
        let err = prepare(c.path(), Some(user), true)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a node"), "{err}");
    }
}
