//! Names on the ring: a block's content address ([`BlockKey`]), a member's identity and
//! address ([`NodeAddr`]), and how both map to ring positions.

use std::fmt;
use std::str::FromStr;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// A block's key: the BLAKE3 hash of its stored bytes, read as a 256-bit big-endian number on
/// the ring. It is the same 32 bytes as a `chord::Id`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockKey(pub [u8; 32]);

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid block key {input:?}: expected 64 hex digits")]
pub struct ParseKeyError {
    /// The rejected input (truncated to 80 characters).
    pub input: String,
}

impl BlockKey {
    /// The smallest key, 0.
    pub const ZERO: BlockKey = BlockKey([0; 32]);
    /// The largest key, 2^256 - 1.
    pub const MAX: BlockKey = BlockKey([0xff; 32]);

    /// The key of `bytes`: their BLAKE3 hash.
    #[must_use]
    pub fn of(bytes: &[u8]) -> BlockKey {
        BlockKey(*blake3::hash(bytes).as_bytes())
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<BlockKey, ParseKeyError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseKeyError {
            input: s.chars().take(80).collect(),
        })?;
        Ok(BlockKey(out))
    }

    /// The 64 lowercase hex digits of the key.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, for logs and messages.
    #[must_use]
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// The raw bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for BlockKey {
    fn from(b: [u8; 32]) -> Self {
        BlockKey(b)
    }
}

impl From<BlockKey> for [u8; 32] {
    fn from(k: BlockKey) -> Self {
        k.0
    }
}

impl FromStr for BlockKey {
    type Err = ParseKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlockKey::from_hex(s)
    }
}

/// All 64 hex digits.
impl fmt::Display for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The short form: `BlockKey(1a2b3c4d…)`.
impl fmt::Debug for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockKey({}…)", self.short())
    }
}

/// How the daemon names a ring member: its libp2p identity and one address to dial it on.
/// The member's ring id is SHA-256 of the PeerId bytes (see [`ring_id`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeAddr {
    pub peer: PeerId,
    pub addr: Multiaddr,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/p2p/{}", self.addr, self.peer)
    }
}

/// A ring member's id: SHA-256 of its PeerId bytes.
#[must_use]
pub fn ring_id(peer: &PeerId) -> chord::Id {
    chord::Id::hash(&peer.to_bytes())
}

/// Converts a block key into the ring position it is stored at (the same 32 bytes).
#[must_use]
pub fn key_id(key: &BlockKey) -> chord::Id {
    chord::Id::from_bytes(key.0)
}

/// Parses a multiaddr that ends in `/p2p/<peer id>` into a [`NodeAddr`].
pub fn parse_node_addr(s: &str) -> Result<NodeAddr, String> {
    let mut addr: Multiaddr = s
        .trim()
        .parse()
        .map_err(|e| format!("'{s}' is not a multiaddr: {e}"))?;
    match addr.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Ok(NodeAddr { peer, addr }),
        _ => Err(format!(
            "'{s}' has no /p2p/<peer id> at the end; use the full address a node prints or writes to its address file"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addr_parses_full_multiaddr_only() {
        let peer = PeerId::random();
        let a = parse_node_addr(&format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")).unwrap();
        assert_eq!(a.peer, peer);
        assert_eq!(a.addr.to_string(), "/ip4/127.0.0.1/tcp/4001");
        assert!(parse_node_addr("/ip4/127.0.0.1/tcp/4001").is_err());
        assert!(parse_node_addr("not an address").is_err());
    }

    #[test]
    fn hex_round_trip_and_forms() {
        let k = BlockKey::of(b"hello");
        assert_eq!(k.0, *blake3::hash(b"hello").as_bytes());
        let s = k.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(BlockKey::from_hex(&s), Ok(k));
        assert_eq!(BlockKey::from_hex(&s.to_uppercase()), Ok(k));
        assert_eq!(s.parse::<BlockKey>(), Ok(k));
        assert_eq!(format!("{k:?}"), format!("BlockKey({}…)", &s[..8]));
        assert!(BlockKey::from_hex("abc").is_err());
        assert!(BlockKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(BlockKey::from_hex(&"00".repeat(33)).is_err());
    }

    #[test]
    fn order_is_big_endian_numeric() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a[31] = 0xff;
        b[0] = 0x01;
        assert!(BlockKey(a) < BlockKey(b));
        assert!(BlockKey::ZERO < BlockKey(a));
        assert!(BlockKey(b) < BlockKey::MAX);
    }

    #[test]
    fn serde_is_32_bytes() {
        let k = BlockKey::of(b"x");
        let enc = postcard::to_stdvec(&k).expect("encode");
        assert_eq!(enc.len(), 32);
        let dec: BlockKey = postcard::from_bytes(&enc).expect("decode");
        assert_eq!(dec, k);
    }
}
