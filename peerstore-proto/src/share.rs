//! Read capabilities and what they open (docs/SHARING.md): the capability string, the
//! share's record and its manifest, and the pure functions that open them. Written by
//! `peerstore-client share`; read by the client (`--cap`, `sync --from`) and by a node's
//! gateway (`GET /cap/...`).

use serde::{Deserialize, Serialize};

use crypto::ChunkId;

use crate::tree::Entry;
use crate::BlockKey;

/// Why a capability, a share record or a share manifest is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("{0}")]
    Malformed(String),
    #[error("capability format {0} (this build reads format 1)")]
    OtherVersion(u8),
    #[error("{0}")]
    Integrity(String),
}

/// What a read capability starts with.
pub const CAP_PREFIX: &str = "ps1r:";
/// Longest capability string accepted.
pub const MAX_CAP_LEN: usize = 16 << 10;
/// Format of capabilities and share manifests written by this client.
pub const SHARE_FORMAT: u8 = 1;
/// Documents a share manifest may span (at most 256 MiB sealed).
pub const MAX_SHARE_PIECES: usize = 64;

/// What a capability opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareKind {
    File,
    Folder,
    Snapshot,
}

impl ShareKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ShareKind::File => "file",
            ShareKind::Folder => "folder",
            ShareKind::Snapshot => "snapshot",
        }
    }
}

/// A read capability, as the string `ps1r:<hex of postcard>` carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub format: u8,
    pub kind: ShareKind,
    /// The public key that signs the share's record (the record lives at its root key).
    pub signer: [u8; 32],
    /// The share key: opens the record's payload and the share manifest.
    pub key: [u8; 32],
}

/// What a share's record says (sealed under the share key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareState {
    Live {
        /// Document keys of the sealed share manifest's pieces, in order.
        pieces: Vec<[u8; 32]>,
        /// BLAKE3 of the sealed share manifest (whatever the ring's keys are).
        hash: [u8; 32],
        expires_us: Option<u64>,
    },
    Revoked {
        at_us: u64,
    },
}

impl Capability {
    /// The capability string.
    #[must_use]
    pub fn encode(&self) -> String {
        format!(
            "{CAP_PREFIX}{}",
            hex::encode(postcard::to_allocvec(self).unwrap_or_default())
        )
    }

    /// Parses a capability string, with a one-line error for anything else.
    pub fn parse(s: &str) -> Result<Capability, ShareError> {
        let bad =
            |why: &str| ShareError::Malformed(format!("not a PeerStore read capability: {why}"));
        let s = s.trim();
        if s.len() > MAX_CAP_LEN {
            return Err(bad("too long"));
        }
        let body = s
            .strip_prefix(CAP_PREFIX)
            .ok_or_else(|| bad("it does not start with ps1r:"))?;
        let bytes = hex::decode(body).map_err(|_| bad("it is not hex after ps1r:"))?;
        let cap: Capability =
            postcard::from_bytes(&bytes).map_err(|_| bad("it does not decode"))?;
        if cap.format != SHARE_FORMAT {
            return Err(ShareError::OtherVersion(cap.format));
        }
        Ok(cap)
    }

    /// A short id of the share (for lists and messages): the first bytes of its signer.
    #[must_use]
    pub fn id(&self) -> String {
        hex::encode(&self.signer[..8])
    }

    /// The key of the share's record.
    #[must_use]
    pub fn record_key(&self) -> BlockKey {
        BlockKey(crypto::root_key(&crypto::UserId(self.signer)))
    }
}

/// The share manifest: what the holder of the capability may read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareManifest {
    pub format: u8,
    pub kind: ShareKind,
    /// The shared path's last component (the snapshot number for a whole snapshot).
    pub name: String,
    /// The snapshot it was taken from, and that snapshot's time.
    pub snapshot: u64,
    pub time_ns: i64,
    /// Expiry (microseconds since the Unix epoch), if any.
    pub expires_us: Option<u64>,
    /// The entries, paths relative to the shared folder (a shared file: its name alone).
    pub entries: Vec<Entry>,
    /// The key of every chunk of those entries.
    pub chunk_keys: Vec<(ChunkId, [u8; 32])>,
}

/// The sealing context of a share manifest.
pub fn manifest_context(kind: ShareKind) -> Vec<u8> {
    let mut c = b"peerstore share manifest v1\0".to_vec();
    c.push(kind as u8);
    c
}

/// The sealing context of a share's record payload.
pub fn record_context(cap: &Capability) -> Vec<u8> {
    let mut c = b"peerstore share record v1\0".to_vec();
    c.extend_from_slice(&cap.signer);
    c
}

/// The newest state a share record's bytes hold, if they are a record signed by the
/// capability's signer that opens under its key: (sequence number, state).
#[must_use]
pub fn open_record(cap: &Capability, bytes: &[u8]) -> Option<(u64, ShareState)> {
    let rec = crypto::RootRecord::decode(bytes).ok()?;
    if rec.user != crypto::UserId(cap.signer) || rec.verify().is_err() {
        return None;
    }
    let plain = crypto::open_share(&cap.key, &record_context(cap), &rec.payload).ok()?;
    let state = postcard::from_bytes::<ShareState>(&plain).ok()?;
    Some((rec.seq, state))
}

/// Opens a share manifest (its pieces' bytes, concatenated) that the record says hashes to
/// `hash`: checks the hash, the AEAD tag, the format and the kind. Expiry and paths are the
/// reader's to check.
pub fn open_manifest(
    cap: &Capability,
    hash: &[u8; 32],
    sealed: &[u8],
) -> Result<ShareManifest, ShareError> {
    if blake3::hash(sealed).as_bytes() != hash {
        return Err(ShareError::Integrity(format!(
            "the share {}'s manifest does not match its record",
            cap.id()
        )));
    }
    let plain = crypto::open_share(&cap.key, &manifest_context(cap.kind), sealed)
        .map_err(|e| ShareError::Integrity(format!("the share {}'s manifest: {e}", cap.id())))?;
    let sm: ShareManifest = postcard::from_bytes(&plain)
        .map_err(|e| ShareError::Malformed(format!("share manifest: {e}")))?;
    if sm.format != SHARE_FORMAT || sm.kind != cap.kind {
        return Err(ShareError::Malformed(
            "the share manifest is not of its capability".into(),
        ));
    }
    Ok(sm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cap() -> Capability {
        Capability {
            format: SHARE_FORMAT,
            kind: ShareKind::Folder,
            signer: [7; 32],
            key: [9; 32],
        }
    }

    #[test]
    fn capabilities_round_trip_and_bad_ones_are_refused() {
        let c = cap();
        let s = c.encode();
        assert!(s.starts_with("ps1r:"));
        assert_eq!(Capability::parse(&s).unwrap(), c);
        assert_eq!(Capability::parse(&format!("  {s}\n")).unwrap(), c);
        for bad in [
            "",
            "ps1r:",
            "ps1r:zz",
            "ps2r:00",
            &s[..s.len() - 2],
            &format!("ps1r:{}", "0".repeat(MAX_CAP_LEN)),
        ] {
            let e = Capability::parse(bad).unwrap_err().to_string();
            assert!(e.contains("capability"), "{bad:?}: {e}");
        }
    }

    proptest! {
        /// Whatever a peer or a user hands in, parsing and opening answer an error, never a
        /// panic.
        #[test]
        fn bad_input_never_panics(text in ".{0,300}", bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Capability::parse(&text);
            let _ = Capability::parse(&format!("{CAP_PREFIX}{}", hex::encode(&bytes)));
            prop_assert!(open_record(&cap(), &bytes).is_none());
            prop_assert!(open_manifest(&cap(), &[0; 32], &bytes).is_err());
            prop_assert!(open_manifest(&cap(), blake3::hash(&bytes).as_bytes(), &bytes).is_err());
        }
    }

    #[test]
    fn a_sealed_manifest_opens_only_under_its_capability() {
        let sm = ShareManifest {
            format: SHARE_FORMAT,
            kind: ShareKind::Folder,
            name: "photos".into(),
            snapshot: 3,
            time_ns: 1,
            expires_us: None,
            entries: Vec::new(),
            chunk_keys: vec![(ChunkId([1; 32]), [2; 32])],
        };
        let c = cap();
        let sealed = crypto::seal_share(
            &c.key,
            &manifest_context(c.kind),
            &postcard::to_allocvec(&sm).unwrap(),
            &mut rand::rngs::OsRng,
        );
        let hash = *blake3::hash(&sealed).as_bytes();
        assert_eq!(open_manifest(&c, &hash, &sealed).unwrap(), sm);
        let mut other = cap();
        other.key = [8; 32];
        assert!(open_manifest(&other, &hash, &sealed).is_err());
        let mut file = cap();
        file.kind = ShareKind::File;
        assert!(open_manifest(&file, &hash, &sealed).is_err());
        assert!(open_manifest(&c, &[0; 32], &sealed).is_err());
    }
}
