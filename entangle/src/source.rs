//! Where the codec and repair get stored blocks from.

use std::collections::BTreeMap;

use crate::key::BlockKey;

/// Gives the stored bytes of a block by key, if this source has them. The bytes need not be
/// trusted: every user of a source verifies them against the key.
///
/// Implemented for `BTreeMap<BlockKey, Vec<u8>>` and for any `Fn(&BlockKey) -> Option<Vec<u8>>`;
/// the node implements it over its block store and the ring.
pub trait SymbolSource {
    /// The stored bytes of `key`, if available.
    fn get(&self, key: &BlockKey) -> Option<Vec<u8>>;

    /// Whether `key` is probably available, without reading it. The default reads it.
    fn contains(&self, key: &BlockKey) -> bool {
        self.get(key).is_some()
    }
}

impl SymbolSource for BTreeMap<BlockKey, Vec<u8>> {
    fn get(&self, key: &BlockKey) -> Option<Vec<u8>> {
        BTreeMap::get(self, key).cloned()
    }
    fn contains(&self, key: &BlockKey) -> bool {
        self.contains_key(key)
    }
}

impl<F: Fn(&BlockKey) -> Option<Vec<u8>>> SymbolSource for F {
    fn get(&self, key: &BlockKey) -> Option<Vec<u8>> {
        self(key)
    }
}
