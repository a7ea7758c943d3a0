//! The repair worker and audit.
//!
//! Every node checks the codeword records it owns (each record's key has exactly one owner,
//! the first of its m metadata holders): for each, which pointers, sources and parities no node
//! holds. A codeword with at least `s + t` symbols left is decoded and its missing symbols
//! rebuilt (sources as input symbols, parities re-encoded; pointers rebuilt as input symbol `s + i` and re-formed with their own
//! record, found through the reverse reference), verified against their keys and stored at
//! their replica sets. A block lost together with more than `e` symbols of its own codeword is
//! thus rebuilt by the owners of the codewords that point at it. [`repair_ring`] runs rounds
//! on every node until one rebuilds nothing (the fixed point).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use tracing::{debug, warn};

use super::format::{decode_record, ek, nk};
use super::layer::Entangled;
use super::{meta, read, refs, write};
use crate::ring::RingError;
use crate::store::in_interval;
use peerstore_proto::{lock, AuditPage, CodewordAudit, EntRequest, EntResponse, RepairSummary};
use peerstore_proto::{BlockKey, NodeAddr};

/// Most passes of a ring-wide repair.
const MAX_PASSES: u32 = 10;
/// Most codewords a targeted repair works on.
const MAX_TARGETED: usize = 1024;

/// A codeword record with the key of its block.
pub type Rec = (BlockKey, Arc<entangle::Record>);

/// Records decoded and kept in the cache at most (records are immutable: a cache that
/// fills up is emptied and refilled as records are read again).
const RECORD_CACHE: usize = 65_536;

/// Codeword records per page of a local scan (a record is a few hundred bytes to a few KiB).
const RECORD_PAGE: usize = 1024;

/// Remembers a decoded record (or a key known not to be a codeword record), within
/// [`RECORD_CACHE`].
fn cache_insert(
    cache: &mut crate::entangled::layer::RecordCache,
    key: BlockKey,
    rec: Option<Arc<entangle::Record>>,
) {
    if cache.0.len() + cache.1.len() >= RECORD_CACHE {
        cache.0.clear();
        cache.1.clear();
    }
    match rec {
        Some(r) => {
            cache.0.insert(key, r);
        }
        None => {
            cache.1.insert(key);
        }
    }
}

/// One page of the codeword records held in the record table in (a, b] (`a == b`:
/// everything) after `after`, in key order, at most `limit` ([`RECORD_PAGE`] when larger);
/// whether more remain after the page's last key (`Some(key)` to continue from).
pub async fn records_page(
    ent: &Entangled,
    a: BlockKey,
    b: BlockKey,
    after: Option<BlockKey>,
    limit: usize,
) -> (Vec<Rec>, Option<BlockKey>) {
    if ent.params().is_none() {
        return (Vec::new(), None);
    }
    let store = ent.store.clone();
    let limit = limit.clamp(1, RECORD_PAGE);
    let (entries, more) = tokio::task::spawn_blocking(move || {
        meta::table_range(&store, meta::TABLE, a, b, after, limit)
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    let next = if more {
        entries.last().map(|(k, _)| *k)
    } else {
        None
    };
    let mut out = Vec::new();
    let mut cache = lock(&ent.records);
    for (k, bytes) in entries {
        if let Some(r) = cache.0.get(&k) {
            out.push((k, r.clone()));
            continue;
        }
        if cache.1.contains(&k) || BlockKey::of(&bytes) != k {
            continue;
        }
        match decode_record(&bytes) {
            Some(r) => {
                let r = Arc::new(r);
                cache_insert(&mut cache, k, Some(r.clone()));
                out.push((k, r));
            }
            None => cache_insert(&mut cache, k, None),
        }
    }
    (out, next)
}

/// The range of records this node owns, `None` when it owns nothing yet.
async fn owned_range(ent: &Entangled) -> Option<(BlockKey, BlockKey)> {
    let view = ent.ring.handle.view().await?;
    if !view.member {
        return None;
    }
    let (from, to) = view.ranges.owned;
    Some((BlockKey(from.0), BlockKey(to.0)))
}

/// The pages of the codeword records this node owns, in key order: memory holds one page
/// at a time (`while let Some(page) = pages.next().await`).
pub struct OwnedPages<'a> {
    ent: &'a Entangled,
    range: Option<(BlockKey, BlockKey)>,
    after: Option<BlockKey>,
    done: bool,
}

impl<'a> OwnedPages<'a> {
    pub async fn new(ent: &'a Entangled) -> OwnedPages<'a> {
        let range = owned_range(ent).await;
        OwnedPages {
            ent,
            done: range.is_none(),
            range,
            after: None,
        }
    }

    /// The next non-empty page, `None` at the end.
    pub async fn next(&mut self) -> Option<Vec<Rec>> {
        while !self.done {
            let (a, b) = self.range?;
            let (page, next) = records_page(self.ent, a, b, self.after, RECORD_PAGE).await;
            match next {
                Some(k) => self.after = Some(k),
                None => self.done = true,
            }
            if !page.is_empty() {
                return Some(page);
            }
        }
        None
    }
}

/// A codeword record from the ring (the cache first).
pub async fn fetch_record(ent: &Entangled, key: BlockKey) -> Option<Arc<entangle::Record>> {
    if let Some(r) = lock(&ent.records).0.get(&key) {
        return Some(r.clone());
    }
    let bytes = meta::fetch_ring(ent, key).await?;
    let r = Arc::new(decode_record(&bytes)?);
    cache_insert(&mut lock(&ent.records), key, Some(r.clone()));
    Some(r)
}

/// Checks one codeword and, with `fix`, rebuilds what it can. Returns its audit entry (None
/// when nothing is missing) and the number of blocks rebuilt.
async fn check_codeword(
    ent: &Entangled,
    (rk, rec): &Rec,
    held: &BTreeSet<BlockKey>,
    fix: bool,
    young_after: Option<u64>,
    summary: &mut RepairSummary,
) -> Option<CodewordAudit> {
    summary.checked += 1;
    let keys: Vec<BlockKey> = entangle::fetch_order(rec).iter().map(nk).collect();
    let (present, missing): (Vec<BlockKey>, Vec<BlockKey>) =
        keys.iter().partition(|k| held.contains(k));
    if missing.is_empty() {
        return None;
    }
    // A codeword written after `young_after` may still have parities on their way from its
    // encoder (module `later`): left alone until it is older.
    if let (Some(cut), Some(first)) = (young_after, rec.stored_keys.first()) {
        if refs::fetch_ring(ent, &nk(first))
            .await
            .and_then(|e| e.created_us)
            .is_some_and(|t| t > cut)
        {
            return None;
        }
    }
    summary.damaged += 1;
    let p = rec.params;
    let known = rec.layout.symbols(&p).saturating_sub(missing.len());
    let mut audit = CodewordAudit {
        record: *rk,
        codeword: rec.id.0,
        missing: missing.clone(),
        decodable: p.decodable(known),
        rebuilt: 0,
    };
    if !audit.decodable {
        summary.undecodable += 1;
        return Some(audit);
    }
    if !fix {
        return Some(audit);
    }
    // Fetch every symbol still held.
    let fetched = futures::stream::iter(present.iter().copied())
        .map(|k| async move { (k, read::fetch_ring(ent, k).await) })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let source: std::collections::BTreeMap<entangle::BlockKey, Vec<u8>> = fetched
        .into_iter()
        .filter_map(|(k, b)| b.map(|b| (ek(&k), b)))
        .collect();
    // The index needs this record and the own records of the missing pointers.
    let mut index = entangle::RecordIndex::new();
    if let Err(e) = index.insert((**rec).clone()) {
        warn!(error = %e, "bad codeword record");
        summary.errors += 1;
        return Some(audit);
    }
    let missing_set: BTreeSet<BlockKey> = missing.iter().copied().collect();
    for ptr in rec.pointers.iter().map(nk) {
        if !missing_set.contains(&ptr) {
            continue;
        }
        let Some(entry) = refs::fetch_ring(ent, &ptr).await else {
            continue;
        };
        let Some(own) = entry.own else { continue };
        if let Some(r) = fetch_record(ent, own).await {
            let _ = index.insert((*r).clone());
        }
    }
    let r = (**rec).clone();
    let outcome =
        tokio::task::spawn_blocking(move || entangle::rebuild_codeword(&index, &r, &source)).await;
    let report = match outcome {
        Ok(Ok(rep)) => rep,
        Ok(Err(e)) => {
            debug!(codeword = %rec.id, error = %e, "codeword not rebuilt");
            summary.undecodable += 1;
            return Some(audit);
        }
        Err(_) => {
            summary.errors += 1;
            return Some(audit);
        }
    };
    summary.errors += report.unverified.len() as u64;
    // A rebuilt parity of a systematic codeword goes where a new one would: one copy on its
    // owner when that is the ring's policy (`single_parities_at_write`), else r copies.
    let single =
        rec.layout == entangle::Layout::Systematic && ent.config.replicas.single_parities_at_write;
    let parity_keys: BTreeSet<entangle::BlockKey> = rec.parity_keys().iter().copied().collect();
    for b in report.rebuilt {
        let stored = if single && parity_keys.contains(&b.key) {
            write::put_single(ent, nk(&b.key), &b.bytes).await
        } else {
            write::put_block(ent, nk(&b.key), b.bytes).await
        };
        match stored {
            Ok(()) => {
                summary.rebuilt += 1;
                audit.rebuilt += 1;
            }
            Err(e) => {
                debug!(key = %b.key, error = %e, "cannot store a rebuilt block");
                summary.errors += 1;
            }
        }
    }
    Some(audit)
}

/// The parities of the codeword of record `rk`, re-encoded from its sources and pointers
/// fetched from the ring (each verified against its key, as are the parities made): how an
/// encoder stores the parities it did not keep in memory (module `later`).
pub async fn reform_parities(ent: &Entangled, rk: BlockKey) -> Result<Vec<super::Held>, String> {
    let rec = fetch_record(ent, rk)
        .await
        .ok_or_else(|| format!("codeword record {rk} is unavailable"))?;
    let parities: BTreeSet<entangle::BlockKey> = rec.parity_keys().iter().copied().collect();
    let inputs: Vec<BlockKey> = entangle::fetch_order(&*rec)
        .iter()
        .filter(|k| !parities.contains(k))
        .map(nk)
        .collect();
    let fetched = futures::stream::iter(inputs)
        .map(|k| async move { (k, read::fetch_ring(ent, k).await) })
        .buffer_unordered(12)
        .collect::<Vec<_>>()
        .await;
    let mut source = std::collections::BTreeMap::new();
    for (k, b) in fetched {
        let b = b.ok_or_else(|| format!("block {k} of codeword {} is unavailable", rec.id))?;
        source.insert(ek(&k), b);
    }
    let mut index = entangle::RecordIndex::new();
    index
        .insert((*rec).clone())
        .map_err(|e| format!("bad codeword record {rk}: {e}"))?;
    let r = (*rec).clone();
    let report =
        tokio::task::spawn_blocking(move || entangle::rebuild_codeword(&index, &r, &source))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("codeword {}: {e}", rec.id))?;
    let made: Vec<super::Held> = report
        .rebuilt
        .into_iter()
        .filter(|b| parities.contains(&b.key))
        .map(|b| (nk(&b.key), Arc::new(b.bytes)))
        .collect();
    if made.len() != parities.len() {
        return Err(format!(
            "codeword {}: {} of {} parities re-formed",
            rec.id,
            made.len(),
            parities.len()
        ));
    }
    Ok(made)
}

/// Checks (and with `fix` repairs) the given codewords. Which of their symbols the ring holds
/// is asked once for all of them, in one `HasSymbols` per holder (a page of 1,024 codewords
/// of a 4-node ring: about 4 requests, where one check per codeword made about 4 each).
pub async fn check_records(
    ent: &Entangled,
    recs: &[Rec],
    fix: bool,
    young_after: Option<u64>,
) -> (RepairSummary, Vec<CodewordAudit>) {
    // Symbols shared by several codewords are asked about once (`Ring::replica_sets`).
    let keys: Vec<BlockKey> = recs
        .iter()
        .flat_map(|(_, rec)| {
            entangle::fetch_order(rec)
                .iter()
                .map(nk)
                .collect::<Vec<_>>()
        })
        .collect();
    let held = match read::has_ring(ent, &keys).await {
        Ok(p) => p,
        Err(e) => {
            debug!(error = %e, "availability check failed");
            let summary = RepairSummary {
                checked: recs.len() as u64,
                errors: 1,
                ..RepairSummary::default()
            };
            return (summary, Vec::new());
        }
    };
    let held = &held;
    let results = futures::stream::iter(0..recs.len())
        .map(|i| async move {
            let mut s = RepairSummary::default();
            let a = check_codeword(ent, &recs[i], held, fix, young_after, &mut s).await;
            (s, a)
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    let mut summary = RepairSummary::default();
    let mut audits = Vec::new();
    for (s, a) in results {
        summary.add(&s);
        audits.extend(a);
    }
    audits.sort_by_key(|a| a.record);
    (summary, audits)
}

/// One repair round over the records this node owns; with `young_after` (microseconds since
/// the epoch), codewords written after it are left alone (the background worker: their
/// parities may still be on their way, module `later`).
pub async fn repair_local(ent: &Entangled, young_after: Option<u64>) -> RepairSummary {
    let mut total = RepairSummary::default();
    let mut pages = OwnedPages::new(ent).await;
    while let Some(recs) = pages.next().await {
        let (s, _) = check_records(ent, &recs, true, young_after).await;
        total.add(&s);
    }
    total.passes = 1;
    total
}

/// `Repair { keys }`: with no keys, rounds on every node until one rebuilds nothing and met no
/// error (or rounds with errors only keep coming); with keys, the codewords of each key (its
/// own and those pointing at it, through its reverse reference) are repaired, widening to the
/// codewords of the symbols that keep them undecodable, until the keys are back or nothing
/// more can be done.
pub async fn repair_ring(ent: &Entangled, keys: Vec<BlockKey>) -> RepairSummary {
    let mut total = RepairSummary::default();
    if ent.params().is_none() {
        return total;
    }
    if keys.is_empty() {
        // Passes in a row that rebuilt nothing but met errors (a member that did not answer, a
        // fetch that failed under load): tried again, a second later, up to this many.
        const ERROR_PASSES: u32 = 2;
        let mut error_passes = 0;
        for pass in 1..=MAX_PASSES {
            let nodes = ent.ring.members().await;
            let results = futures::future::join_all(
                nodes
                    .iter()
                    .map(|(_, a)| ent.ring.call_ent(a, EntRequest::RepairLocal)),
            )
            .await;
            let mut round = RepairSummary::default();
            for r in results {
                match r {
                    Ok(EntResponse::Repaired(s)) => round.add(&s),
                    _ => round.errors += 1,
                }
            }
            total.passes = pass;
            total.checked += round.checked;
            total.damaged += round.damaged;
            total.rebuilt += round.rebuilt;
            total.errors += round.errors;
            total.undecodable = round.undecodable;
            if round.rebuilt > 0 {
                error_passes = 0;
                continue;
            }
            if round.errors == 0 || error_passes >= ERROR_PASSES {
                break;
            }
            error_passes += 1;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        return total;
    }
    let mut wanted: BTreeSet<BlockKey> = keys.into_iter().collect();
    // The codewords to work on: those of the wanted keys (own and referrers), widened each
    // pass by the codewords of the symbols that keep a codeword undecodable, so that a key
    // reachable only through a chain of codewords comes back too.
    let mut frontier: BTreeSet<BlockKey> = BTreeSet::new();
    let mut expand: BTreeSet<BlockKey> = wanted.clone();
    let mut expanded: BTreeSet<BlockKey> = BTreeSet::new();
    for pass in 1..=MAX_PASSES {
        total.passes = pass;
        let present = read::has_ring(ent, &wanted.iter().copied().collect::<Vec<_>>())
            .await
            .unwrap_or_default();
        wanted.retain(|k| !present.contains(k));
        if wanted.is_empty() {
            break;
        }
        let before = frontier.len();
        for k in std::mem::take(&mut expand) {
            if !expanded.insert(k) || frontier.len() >= MAX_TARGETED {
                continue;
            }
            if let Some(e) = refs::fetch_ring(ent, &k).await {
                frontier.extend(e.own);
                frontier.extend(e.referrers);
            }
        }
        let mut recs = Vec::new();
        for rk in &frontier {
            if let Some(r) = fetch_record(ent, *rk).await {
                recs.push((*rk, r));
            }
        }
        let (s, audits) = check_records(ent, &recs, true, None).await;
        total.checked += s.checked;
        total.damaged += s.damaged;
        total.rebuilt += s.rebuilt;
        total.errors += s.errors;
        total.undecodable = s.undecodable;
        for a in audits.iter().filter(|a| !a.decodable) {
            expand.extend(a.missing.iter().copied());
        }
        if s.rebuilt == 0 && frontier.len() == before && expand.is_subset(&expanded) {
            break;
        }
    }
    let present = read::has_ring(ent, &wanted.iter().copied().collect::<Vec<_>>())
        .await
        .unwrap_or_default();
    total.still_missing = wanted
        .into_iter()
        .filter(|k| !present.contains(k))
        .collect();
    total
}

/// The key right after `k` (wrapping).
pub(crate) fn next_key(k: &BlockKey) -> BlockKey {
    let mut out = k.0;
    for b in out.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    BlockKey(out)
}

/// `AuditLocal`: the records this node owns in (after, end], where end is this node's id, or
/// the top of the key space for the node whose range wraps; at most `limit` of them.
pub async fn audit_local(
    ent: &Entangled,
    after: BlockKey,
    limit: u32,
    fix: bool,
) -> Result<AuditPage, RingError> {
    let Some(view) = ent.ring.handle.view().await else {
        return Ok(AuditPage::default());
    };
    let me = BlockKey(view.me.id.0);
    let end = if after < me { me } else { BlockKey::MAX };
    let (from, to) = view.ranges.owned;
    let (of, ot) = (BlockKey(from.0), BlockKey(to.0));
    let limit = limit.clamp(1, 4096) as usize;
    // Pages of (after, end], the records this node owns among them, until one more than the
    // limit is known (then there is a next page).
    let mut recs: Vec<Rec> = Vec::new();
    let mut cursor = Some(after);
    while recs.len() <= limit {
        let Some(from) = cursor else { break };
        let (page, next) = records_page(ent, after, end, Some(from), RECORD_PAGE).await;
        recs.extend(
            page.into_iter()
                .filter(|(k, _)| of == ot || in_interval(&of, &ot, k))
                .filter(|(k, _)| *k > after),
        );
        cursor = next;
    }
    let next = if recs.len() > limit {
        recs.truncate(limit);
        recs.last().map(|(k, _)| *k)
    } else if end == BlockKey::MAX {
        None
    } else {
        Some(end)
    };
    let (s, damaged) = check_records(ent, &recs, fix, None).await;
    Ok(AuditPage {
        checked: s.checked,
        damaged,
        next,
    })
}

/// `Audit { after, limit, fix }`: the ring's codeword records in key order after `after`, at
/// most `limit` checked per page, asking each owner in turn.
pub async fn audit_ring(
    ent: &Entangled,
    after: Option<BlockKey>,
    limit: u32,
    fix: bool,
) -> Result<AuditPage, String> {
    if ent.params().is_none() {
        return Ok(AuditPage::default());
    }
    let (damaged, checked, next) =
        by_owner(ent, after, limit, |owner, cursor, remaining| async move {
            match ent
                .ring
                .call_ent(
                    &owner,
                    EntRequest::AuditLocal {
                        after: cursor,
                        limit: remaining,
                        fix,
                    },
                )
                .await?
            {
                EntResponse::Audit(p) => Ok((p.damaged, p.checked, p.next)),
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
        .await?;
    Ok(AuditPage {
        checked,
        damaged,
        next,
    })
}

/// Walks the ring's key space in order after `after` (the start when `None`), asking each owner
/// in turn for its part: `ask(owner, cursor, remaining)` answers with the items of its part, how
/// many of them count against `limit` (clamped to 1..=4096), and where its part ended (`None`:
/// the end of the ring). Returns the items, their count and the cursor of the next page (`None`
/// at the end). An owner whose cursor does not move forward is an error (the ring is changing).
pub async fn by_owner<T, F, Fut>(
    ent: &Entangled,
    after: Option<BlockKey>,
    limit: u32,
    ask: F,
) -> Result<(Vec<T>, u64, Option<BlockKey>), String>
where
    F: Fn(NodeAddr, BlockKey, u32) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, u64, Option<BlockKey>), String>>,
{
    let limit = u64::from(limit.clamp(1, 4096));
    let (mut items, mut counted) = (Vec::new(), 0u64);
    let mut cursor = after.unwrap_or(BlockKey::ZERO);
    loop {
        if cursor == BlockKey::MAX {
            return Ok((items, counted, None));
        }
        let set = ent.ring.replica_set(&next_key(&cursor)).await?;
        let owner = set.first().ok_or("empty replica set")?.clone();
        let remaining = (limit - counted.min(limit)).max(1) as u32;
        let (part, n, next) = ask(owner, cursor, remaining).await?;
        items.extend(part);
        counted += n;
        match next {
            None => return Ok((items, counted, None)),
            Some(n) if n <= cursor => {
                return Err(
                    "the walk over the ring made no progress; the ring may be changing, retry"
                        .into(),
                );
            }
            Some(n) => {
                cursor = n;
                if counted >= limit {
                    return Ok((items, counted, Some(n)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_key_carries() {
        assert_eq!(next_key(&BlockKey::ZERO).0[31], 1);
        let mut k = [0u8; 32];
        k[31] = 0xff;
        let n = next_key(&BlockKey(k));
        assert_eq!((n.0[30], n.0[31]), (1, 0));
        assert_eq!(next_key(&BlockKey::MAX), BlockKey::ZERO);
    }
}
