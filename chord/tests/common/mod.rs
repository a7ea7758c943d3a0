//! Helpers shared by the node-level tests: small numbers as ring ids and peers.
#![allow(dead_code)]

use chord::{Id, Peer};

/// The ring id of small number `v`, spread over the top bits so fingers behave like on a
/// real ring.
pub fn id(v: u64) -> Id {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&v.to_be_bytes());
    Id(b)
}

/// The peer at id [`id`]`(v)`, address `v`.
pub fn peer(v: u64) -> Peer<u32> {
    Peer::new(id(v), v as u32)
}
