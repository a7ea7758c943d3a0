//! Block keys, codeword ids and anchor keys.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Domain separator for anchor keys: they are not the hash of any stored bytes.
const ANCHOR_DOMAIN: &[u8] = b"peerstore/entangle/anchor/v1";
/// Domain separator for codeword ids derived from a document id.
const CODEWORD_DOMAIN: &[u8] = b"peerstore/entangle/codeword/v1";

/// The ring key of a stored block: BLAKE3 of the block's exact stored bytes (header and payload).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockKey(pub [u8; 32]);

impl BlockKey {
    /// The key of `stored` bytes.
    #[must_use]
    pub fn of(stored: &[u8]) -> Self {
        BlockKey(*blake3::hash(stored).as_bytes())
    }

    /// The well-known key of anchor `index` for block size `block_size`.
    ///
    /// Anchors are zero-filled payloads that stand in for pointers while an archive holds fewer
    /// than `t` blocks. They are never stored and always available. Their keys are derived under
    /// a domain separator, so they cannot be confused with the hash of real stored bytes.
    #[must_use]
    pub fn anchor(block_size: u32, index: u32) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(ANCHOR_DOMAIN);
        h.update(&block_size.to_le_bytes());
        h.update(&index.to_le_bytes());
        BlockKey(*h.finalize().as_bytes())
    }

    /// Whether `stored` hashes to this key.
    #[must_use]
    pub fn verifies(&self, stored: &[u8]) -> bool {
        BlockKey::of(stored) == *self
    }
}

impl fmt::Display for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockKey({})", &hex::encode(self.0)[..16])
    }
}

/// Parses 64 hex digits.
fn parse_hex32(s: &str) -> Result<[u8; 32], crate::Error> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|e| crate::Error::Malformed(format!("bad hex key: {e}")))?;
    Ok(out)
}

impl FromStr for BlockKey {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s).map(BlockKey)
    }
}

impl FromStr for CodewordId {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s).map(CodewordId)
    }
}

/// The identity of one codeword. Chosen by the caller (for example a random value or a hash
/// of the document id); [`CodewordId::derive`] gives the ids of a multi-codeword document.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CodewordId(pub [u8; 32]);

impl CodewordId {
    /// The id of codeword number `index` of the document `document`.
    #[must_use]
    pub fn derive(document: &[u8; 32], index: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(CODEWORD_DOMAIN);
        h.update(document);
        h.update(&index.to_le_bytes());
        CodewordId(*h.finalize().as_bytes())
    }
}

impl fmt::Display for CodewordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CodewordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CodewordId({})", &hex::encode(self.0)[..16])
    }
}

/// The anchor keys of one parameter set, to recognise anchors among pointers.
#[derive(Debug, Clone)]
pub struct Anchors {
    keys: Vec<BlockKey>,
}

impl Anchors {
    /// Anchors `0..count` for block size `block_size`.
    #[must_use]
    pub fn new(block_size: u32, count: usize) -> Self {
        let keys = (0..count)
            .map(|i| BlockKey::anchor(block_size, u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        Anchors { keys }
    }

    /// Whether `key` is one of these anchors.
    #[must_use]
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.keys.contains(key)
    }

    /// The anchor keys, in index order.
    #[must_use]
    pub fn keys(&self) -> &[BlockKey] {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_keys_are_distinct_and_deterministic() {
        let a = Anchors::new(4096, 10);
        let b = Anchors::new(4096, 10);
        assert_eq!(a.keys(), b.keys());
        let mut sorted = a.keys().to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
        assert_ne!(BlockKey::anchor(4096, 0), BlockKey::anchor(8192, 0));
        assert!(a.contains(&BlockKey::anchor(4096, 9)));
        assert!(!a.contains(&BlockKey::anchor(4096, 10)));
    }

    #[test]
    fn display_is_hex() {
        let k = BlockKey::of(b"abc");
        assert_eq!(k.to_string(), blake3::hash(b"abc").to_hex().to_string());
        assert!(k.verifies(b"abc"));
        assert_eq!(k.to_string().parse::<BlockKey>().unwrap(), k);
        assert!("zz".parse::<BlockKey>().is_err());
        assert!("abcd".parse::<CodewordId>().is_err());
        assert!(!k.verifies(b"abd"));
    }
}
