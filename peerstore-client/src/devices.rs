//! A user's devices (issue 12): each client data directory is a device with its own id; the
//! user's devices are listed in a directory record; each device publishes its synced tree
//! ([`crate::merge::SyncTree`]) through a head record of its own.
//!
//! The records are ordinary signed root records, signed by sub-identities of the user's key
//! ([`crypto::Identity::derived`]: the same data keys, their own signing keys), so nodes store
//! them like any root (signature checked, sequence numbers grow) without learning that they
//! belong to one user, and their payloads are sealed with the user's root-payload key.
//! - **Head of device d** (`device:<d>`): written by d only, so two devices never race on one
//!   record: every tree a device publishes stays reachable from its head, whatever the others
//!   do at the same moment.
//! - **Directory** (`devices`): every device adds itself when it first syncs. Two devices
//!   registering at once may race; each reads the directory back after writing and adds itself
//!   again (with the other's entry) until it is listed, and every sync checks it still is.
//!
//! A tree is stored as sealed documents (pieces of at most `MAX_BLOCK_SIZE` bytes) whose keys,
//! total length and BLAKE3 hash the head names; loading checks the hash before opening.

use std::path::Path;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crypto::{Identity, RootRecord};
use peerstore_proto::{BlockKey, MAX_BLOCK_SIZE};

use crate::error::{ClientError, Result};
use crate::merge::{self, DeviceId, SyncTree};
use crate::repo::{now_ns, Repo, RootBackoff};
use crate::store::StoreError;

/// Most devices a directory lists.
pub const MAX_DEVICES: usize = merge::MAX_DEVICES;
/// Longest device name, in bytes.
pub const MAX_NAME: usize = 64;
/// Most pieces a tree may be stored in (a head payload names them all).
pub const MAX_TREE_PIECES: usize = 1024;

/// This device: its id and a name people recognise (the host name by default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    #[serde(with = "hex_id")]
    pub id: DeviceId,
    pub name: String,
}

/// The device of the client data directory `user_data` (`device.json`), made on first use.
pub fn this_device(user_data: &Path) -> Result<Device> {
    let path = user_data.join("device.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Config(format!(
                "{} is damaged ({e}); remove it to make this a new device",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut id = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut id);
            let name = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().chars().take(MAX_NAME).collect::<String>())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "device".into());
            let d = Device { id, name };
            std::fs::create_dir_all(user_data).map_err(|e| ClientError::io(user_data, e))?;
            let tmp = user_data.join("device.json.tmp");
            let json =
                serde_json::to_vec_pretty(&d).map_err(|e| ClientError::Config(e.to_string()))?;
            std::fs::write(&tmp, json).map_err(|e| ClientError::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| ClientError::io(&path, e))?;
            Ok(d)
        }
        Err(e) => Err(ClientError::io(&path, e)),
    }
}

/// A device as the directory lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    #[serde(with = "hex_id")]
    pub id: DeviceId,
    pub name: String,
    /// When it registered.
    pub added_ns: i64,
}

/// What a device's head names: its latest synced tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The head record's sequence number.
    pub seq: u64,
    /// The tree's sealed pieces.
    pub pieces: Vec<[u8; 32]>,
    /// Length and BLAKE3 of the sealed tree (the pieces concatenated).
    pub len: u64,
    pub hash: [u8; 32],
    /// When the device published it.
    pub at_ns: i64,
    /// The device's name then.
    pub name: String,
}

fn directory_identity(user: &Identity) -> Identity {
    user.derived(b"peerstore-devices-v1")
}

fn device_identity(user: &Identity, device: &DeviceId) -> Identity {
    let mut label = b"peerstore-device-v1:".to_vec();
    label.extend_from_slice(device);
    user.derived(&label)
}

/// The newest record of `who` that verifies, opened: (seq, plaintext).
pub(crate) async fn read_record(repo: &Repo, who: &Identity) -> Result<Option<(u64, Vec<u8>)>> {
    let user = who.user_id();
    let key = BlockKey(crypto::root_key(&user));
    let answers = repo.store.get_record_replicas(key).await?;
    let mut best: Option<(u64, Vec<u8>)> = None;
    for a in answers {
        let Some(bytes) = a.record else { continue };
        let Ok(rec) = RootRecord::decode(&bytes) else {
            continue;
        };
        if rec.user != user || rec.verify().is_err() {
            continue;
        }
        if best.as_ref().is_some_and(|(s, _)| *s >= rec.seq) {
            continue;
        }
        if let Ok(plain) = crypto::open_root_payload(repo.keys(), &user, rec.seq, &rec.payload) {
            best = Some((rec.seq, plain));
        }
    }
    Ok(best)
}

/// Writes record `seq` of `who`; `Ok(false)` if the ring refused it (a newer one is there).
pub(crate) async fn write_record(
    repo: &Repo,
    who: &Identity,
    seq: u64,
    plain: &[u8],
) -> Result<bool> {
    let user = who.user_id();
    let payload = crypto::seal_root_payload(repo.keys(), &user, seq, plain, &mut rand::rngs::OsRng);
    let rec = RootRecord::sign(who, seq, payload)
        .map_err(|e| ClientError::Corrupt(format!("cannot sign a device record: {e}")))?;
    let bytes = rec
        .encode()
        .map_err(|e| ClientError::Corrupt(format!("cannot encode a device record: {e}")))?;
    match repo
        .store
        .put_record(BlockKey(crypto::root_key(&user)), bytes)
        .await
    {
        Ok(()) => Ok(true),
        Err(StoreError::Rejected(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn decode_directory(plain: &[u8]) -> Result<Vec<Listed>> {
    let list: Vec<Listed> = postcard::from_bytes(plain)
        .map_err(|e| ClientError::Corrupt(format!("device directory: {e}")))?;
    if list.len() > MAX_DEVICES {
        return Err(ClientError::Corrupt(format!(
            "device directory lists more than {MAX_DEVICES} devices"
        )));
    }
    Ok(list)
}

/// The user's devices.
pub async fn list(repo: &Repo) -> Result<Vec<Listed>> {
    match read_record(repo, &directory_identity(repo.identity())).await? {
        None => Ok(Vec::new()),
        Some((_, plain)) => decode_directory(&plain),
    }
}

/// Adds `me` to the directory unless it is listed; returns the directory with it.
pub async fn register(repo: &Repo, me: &Device) -> Result<Vec<Listed>> {
    let who = directory_identity(repo.identity());
    let mut backoff = RootBackoff::new();
    loop {
        let (seq, mut list) = match read_record(repo, &who).await? {
            None => (0, Vec::new()),
            Some((seq, plain)) => (seq, decode_directory(&plain)?),
        };
        if list.iter().any(|l| l.id == me.id) {
            return Ok(list);
        }
        if list.len() >= MAX_DEVICES {
            return Err(ClientError::Config(format!(
                "this user already has {MAX_DEVICES} devices; remove one (`devices`) first"
            )));
        }
        list.push(Listed {
            id: me.id,
            name: me.name.chars().take(MAX_NAME).collect(),
            added_ns: now_ns(),
        });
        let plain = postcard::to_allocvec(&list)
            .map_err(|e| ClientError::Corrupt(format!("device directory: {e}")))?;
        // Written or not, read it back: another device may have registered at the same time.
        if !write_record(repo, &who, seq + 1, &plain).await? {
            backoff.wait("register this device").await?;
        }
    }
}

/// The head of `device`, if it published one.
pub async fn head(repo: &Repo, device: &DeviceId) -> Result<Option<Head>> {
    let Some((seq, plain)) = read_record(repo, &device_identity(repo.identity(), device)).await?
    else {
        return Ok(None);
    };
    let mut h: Head = postcard::from_bytes(&plain)
        .map_err(|e| ClientError::Corrupt(format!("device head: {e}")))?;
    if h.pieces.len() > MAX_TREE_PIECES
        || h.len > (MAX_TREE_PIECES * MAX_BLOCK_SIZE) as u64
        || h.pieces.is_empty()
    {
        return Err(ClientError::Corrupt("device head out of bounds".into()));
    }
    h.seq = seq;
    Ok(Some(h))
}

fn tree_context(device: &DeviceId, seq: u64) -> Vec<u8> {
    let mut c = b"peerstore-sync-tree-v1\0".to_vec();
    c.extend_from_slice(device);
    c.extend_from_slice(&seq.to_le_bytes());
    c
}

/// Stores `tree` and points this device's head at it (head sequence `prev + 1`).
pub async fn publish(repo: &Repo, me: &Device, prev: u64, tree: &SyncTree) -> Result<Head> {
    let seq = prev + 1;
    let plain = merge::encode(tree).map_err(ClientError::Corrupt)?;
    let sealed = crypto::seal_manifest(
        repo.keys(),
        &tree_context(&me.id, seq),
        &plain,
        &mut rand::rngs::OsRng,
    );
    if sealed.len() > MAX_TREE_PIECES * MAX_BLOCK_SIZE {
        return Err(ClientError::Config(
            "the synced folder's tree is too large to publish".into(),
        ));
    }
    let mut pieces = Vec::new();
    for piece in sealed.chunks(MAX_BLOCK_SIZE) {
        pieces.push(repo.put_document(piece.to_vec()).await?);
    }
    let head = Head {
        seq,
        pieces,
        len: sealed.len() as u64,
        hash: *blake3::hash(&sealed).as_bytes(),
        at_ns: now_ns(),
        name: me.name.clone(),
    };
    let bytes =
        postcard::to_allocvec(&head).map_err(|e| ClientError::Corrupt(format!("head: {e}")))?;
    if !write_record(repo, &device_identity(repo.identity(), &me.id), seq, &bytes).await? {
        return Err(ClientError::Corrupt(format!(
            "the ring refused head {seq} of this device: its head is newer than this device's \
             state (another client using the same data directory?)"
        )));
    }
    Ok(head)
}

/// The tree a head names, checked against the head's hash.
pub async fn load(repo: &Repo, device: &DeviceId, head: &Head) -> Result<SyncTree> {
    let mut sealed = Vec::new();
    for k in &head.pieces {
        sealed.extend(repo.get_required(*k, "a device's synced tree").await?);
        if sealed.len() as u64 > head.len {
            break;
        }
    }
    if sealed.len() as u64 != head.len || *blake3::hash(&sealed).as_bytes() != head.hash {
        return Err(ClientError::Untrusted(
            "a device's synced tree does not match its head: a node may be lying; try another --peer"
                .into(),
        ));
    }
    let plain = crypto::open_manifest(repo.keys(), &tree_context(device, head.seq), &sealed)
        .map_err(|e| ClientError::Corrupt(format!("synced tree: {e}")))?;
    merge::decode(&plain).map_err(ClientError::Corrupt)
}

/// Every device's tree merged: what the synced folder is, with every kept version.
pub async fn merged(repo: &Repo) -> Result<(SyncTree, Vec<Listed>)> {
    let list = list(repo).await?;
    let mut tree = SyncTree::default();
    for d in &list {
        if let Some(h) = head(repo, &d.id).await? {
            tree.merge(&load(repo, &d.id, &h).await?);
        }
    }
    Ok((tree, list))
}

mod hex_id {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(id: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(id))
        } else {
            id.serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        use serde::de::Error;
        if !d.is_human_readable() {
            return <[u8; 16]>::deserialize(d);
        }
        hex::decode(String::deserialize(d)?)
            .map_err(D::Error::custom)?
            .try_into()
            .map_err(|_| D::Error::custom("a device id is 16 bytes"))
    }
}
