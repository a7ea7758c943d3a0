//! The symbols of one codeword over hosts and zones (issue 16, placement).
//!
//! A replicated block has its copies on distinct hosts ([`crate::placement::choose`]); a block
//! that replica management brings down to one copy lives on its owner's host, wherever the hash
//! put it. Left alone, a ring of a few machines would settle with many symbols of one codeword on
//! one machine, and losing that machine could leave the codeword with fewer than `s + t` symbols:
//! documents lost although every block "had its copies". So, before a block goes down to one
//! copy, its owner checks every codeword it is a symbol of (its own and, for a parity, the ones
//! that point at it) with [`crate::placement::single_allowed`]: at most as many of a codeword's
//! symbols as it can lose (`Layout::erasures`: `p` for the systematic layout) may have their
//! single copies on one machine, or one zone; the others keep their replicas, which span hosts.
//! Losing one machine then loses at most that many symbols of any codeword, which decodes from
//! the rest.
//!
//! The places are the owners' (a lookup per symbol, cached for one management pass, and the
//! placements cache of [`crate::ring::Ring::places`]). A ring whose known members all sit on one
//! machine in one zone has nothing to spread: the check is skipped (and `status` warns). What
//! this does not do: a single copy whose ownership later moves to another host (a join) is handed
//! to the new owner as before, and the spread is restored only by repair after a loss.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tracing::debug;

use super::format::{decode_record, nk};
use super::layer::Entangled;
use super::meta;
use crate::placement::{single_allowed, Place, SymbolKind};
use peerstore_proto::{key_id, lock, BlockKey, RefsEntry};

/// Codewords a block is checked against at most (its own and the first referrers).
const MAX_CODEWORDS: usize = 16;

/// One management pass's view of where symbols are: codeword records and owners' places.
pub struct Spread<'a> {
    ent: &'a Entangled,
    records: Mutex<HashMap<BlockKey, Option<Arc<entangle::Record>>>>,
    places: Mutex<HashMap<BlockKey, Place>>,
}

impl<'a> Spread<'a> {
    /// `None` when every member this node knows of (its successors, asked now if need be, and
    /// every member whose place it learnt) is on its own machine: then no spread can be had
    /// and every eligible block may go down to one copy.
    pub async fn new(ent: &'a Entangled) -> Option<Spread<'a>> {
        let successors = ent
            .ring
            .successors(crate::placement::window(ent.ring.replication))
            .await;
        let near = ent.ring.places(&successors).await;
        let me = ent.ring.place.clone();
        let known = ent.ring.placements.all();
        let machines: BTreeSet<(&str, &str)> = std::iter::once(&me)
            .chain(near.iter().flatten())
            .chain(known.iter().map(|(_, p)| p))
            .map(|p| (p.zone.as_str(), p.host.as_str()))
            .collect();
        (machines.len() > 1).then(|| Spread {
            ent,
            records: Mutex::new(HashMap::new()),
            places: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `key` (refs `entry`) may go down to one copy on its owner (this node). A
    /// block whose own codeword record, or any symbol's owner or that owner's place, cannot be
    /// learnt now keeps its replicas (the next pass asks again); a referrer whose record cannot
    /// be had is left out.
    pub async fn allows(&self, key: BlockKey, entry: &RefsEntry) -> bool {
        let Some(own) = entry.own else {
            return false;
        };
        let codewords = std::iter::once(own)
            .chain(entry.referrers.iter().copied().filter(|r| *r != own))
            .take(MAX_CODEWORDS);
        for rk in codewords {
            let Some(rec) = self.record(rk).await else {
                if rk == own {
                    return false;
                }
                continue;
            };
            let mut symbols = Vec::new();
            for k in entangle::fetch_order(&*rec) {
                let kind = if rec.source_keys().contains(&k) {
                    SymbolKind::Source
                } else if rec.parity_keys().contains(&k) {
                    SymbolKind::Parity
                } else {
                    SymbolKind::Pointer
                };
                let k = nk(&k);
                let Some(place) = self.owner_place(k).await else {
                    return false;
                };
                symbols.push((kind, k, place));
            }
            let budget = rec.layout.erasures(&rec.params);
            let view: Vec<(SymbolKind, BlockKey, &Place)> =
                symbols.iter().map(|(kind, k, p)| (*kind, *k, p)).collect();
            if !single_allowed(&view, &key, budget) {
                debug!(%key, codeword = %rk, "kept replicated: its codeword has as many single copies on this host as it can lose");
                return false;
            }
        }
        true
    }

    async fn record(&self, rk: BlockKey) -> Option<Arc<entangle::Record>> {
        if let Some(r) = lock(&self.records).get(&rk) {
            return r.clone();
        }
        let rec = meta::fetch_ring(self.ent, rk)
            .await
            .and_then(|b| decode_record(&b))
            .map(Arc::new);
        lock(&self.records).insert(rk, rec.clone());
        rec
    }

    /// The place of `key`'s owner: the node that holds (or would hold) its single copy. `None`
    /// when the owner cannot be found or has not said where it runs (not "a host of its own":
    /// that would let its host take more single copies than the codeword can lose).
    async fn owner_place(&self, key: BlockKey) -> Option<Place> {
        if let Some(p) = lock(&self.places).get(&key) {
            return Some(p.clone());
        }
        let res = self.ent.ring.lookup(key_id(&key)).await.ok()?;
        let owner = res.owner.addr;
        let place = self
            .ent
            .ring
            .places(std::slice::from_ref(&owner))
            .await
            .pop()
            .flatten()?;
        lock(&self.places).insert(key, place.clone());
        Some(place)
    }
}
