//! Write sessions: where the pointers of a client's documents may go.
//!
//! RECAST draws half of a codeword's pointers uniformly over the whole archive. For an archive
//! nothing is ever deleted from, that is what makes old data durable; for a backup whose user
//! forgets snapshots it is what keeps deleted data on the disks: a block of a forgotten
//! snapshot that a live codeword uses as a pointer is one of that codeword's symbols and has to
//! stay (docs/ENTANGLEMENT-RING.md, "Deleting documents").
//!
//! A client that names its write session (`PutDocument { session }`, one per backup run or sync
//! pass) gets pointers only among
//! - the session's own earlier blocks (the tail half and, while the pool is empty, all of them),
//! - a sample of the blocks of the documents the client says the snapshot it is writing still
//!   references (`keep`: packs it deduplicated against, unchanged files' packs), the uniform
//!   half, checked to be the same writer's,
//!
//! and anchors where neither has enough. A document then only points into documents that the
//! same snapshot keeps, so forgetting the snapshots before it never leaves a pointer of a live
//! codeword behind; with nothing kept (a first backup, or one that replaced all data) it is
//! entangled within its own run only. docs/ENTANGLE-SIM.md ("Write sessions") has the
//! durability of both.
//!
//! The state here is pure (the caller passes the time); [`resolve`] does the ring reads.
//!
//! Memory is bounded by what clients can open: [`MAX_SESSIONS`] sessions (and as many writers'
//! recent blocks), each with a pool of `4 t` blocks and [`SESSION_TAIL`] tail blocks (shared
//! with the writer's recent blocks), at B = 256 KiB about 20 MiB per session, 320 MiB at most;
//! kept-document keys at most `4 x` [`MAX_PENDING`] per session (512 KiB). A write samples at
//! most [`RESOLVE_PER_WRITE`] kept documents of [`MAX_PER_DOC`] blocks, within
//! [`RESOLVE_BUDGET`], and only documents of the same writer enter the pool.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::{Rng, SeedableRng};

use super::format::{ek, nk, DocRecord};
use super::layer::{now_us, Entangled, Held};
use super::{meta, read};
use peerstore_proto::{lock, BlockKey, EntangleSession, MAX_SESSION_KEEP};

/// Sessions a node keeps at once; the least recently used goes first.
pub const MAX_SESSIONS: usize = 16;
/// A session unused for this long is forgotten.
pub const SESSION_IDLE_US: u64 = 30 * 60 * 1_000_000;
/// Kept documents a session remembers that were not sampled yet.
pub const MAX_PENDING: usize = 4096;
/// Blocks of a session's own documents kept in memory as tail pointers.
pub const SESSION_TAIL: usize = 48;
/// Kept documents sampled per write at most (their blocks fetched in parallel).
pub const RESOLVE_PER_WRITE: usize = 8;
/// Blocks sampled from one kept document at most.
pub const MAX_PER_DOC: usize = 8;
/// How long a write waits for its samples of kept documents.
pub const RESOLVE_BUDGET: Duration = Duration::from_secs(3);

/// A session's identity: the writer it was opened for, and the client's id.
pub type SessionKey = (Option<[u8; 32]>, u64);

/// One session's pointer candidates.
#[derive(Default)]
pub struct Session {
    /// The session's own newest blocks, oldest first.
    pub tail: VecDeque<Held>,
    /// Kept documents not sampled yet.
    pub pending: Vec<BlockKey>,
    /// Every kept document the session was told of (so none is queued twice).
    pub named: BTreeSet<BlockKey>,
    /// Blocks sampled from kept documents.
    pub pool: Vec<Held>,
    /// Last use, microseconds since the Unix epoch.
    pub used_us: u64,
}

/// The sessions of one node.
#[derive(Default)]
pub struct Sessions {
    map: BTreeMap<SessionKey, Session>,
    /// Per writer, the newest blocks its sessions wrote, with their document: a new run's tail
    /// starts with those of documents it keeps, so the end of one run gets referrers from the
    /// next (as RECAST's tail across runs) whenever the data stays.
    recent: BTreeMap<Option<[u8; 32]>, VecDeque<(BlockKey, Held)>>,
}

impl Sessions {
    /// Opens or touches the session and queues the newly named kept documents. Returns `false`
    /// (and changes nothing) if the update names too many documents.
    pub fn update<R: Rng + ?Sized>(
        &mut self,
        key: SessionKey,
        s: &EntangleSession,
        now: u64,
        rng: &mut R,
    ) -> bool {
        if s.keep.len() > MAX_SESSION_KEEP {
            return false;
        }
        self.map
            .retain(|_, v| now.saturating_sub(v.used_us) < SESSION_IDLE_US);
        if !self.map.contains_key(&key) && self.map.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, v)| v.used_us)
                .map(|(k, _)| *k)
            {
                self.map.remove(&oldest);
            }
        }
        let sess = self.map.entry(key).or_default();
        sess.used_us = now;
        for d in &s.keep {
            if sess.named.len() >= 4 * MAX_PENDING {
                break;
            }
            if sess.named.insert(*d) {
                if sess.pending.len() < MAX_PENDING {
                    sess.pending.push(*d);
                } else {
                    let i = rng.gen_range(0..sess.pending.len());
                    sess.pending[i] = *d;
                }
            }
        }
        true
    }

    /// Kept documents to sample now: enough to fill a pool of `target`, at least one while any
    /// are pending (so a full pool keeps being refreshed), at most [`RESOLVE_PER_WRITE`].
    pub fn take_pending<R: Rng + ?Sized>(
        &mut self,
        key: &SessionKey,
        target: usize,
        rng: &mut R,
    ) -> Vec<BlockKey> {
        let Some(sess) = self.map.get_mut(key) else {
            return Vec::new();
        };
        let want = target
            .saturating_sub(sess.pool.len())
            .clamp(1, RESOLVE_PER_WRITE)
            .min(sess.pending.len());
        (0..want)
            .map(|_| {
                let i = rng.gen_range(0..sess.pending.len());
                sess.pending.swap_remove(i)
            })
            .collect()
    }

    /// Adds sampled blocks of kept documents to the pool (at most `target`; a full pool
    /// replaces entries at random).
    pub fn add_pool<R: Rng + ?Sized>(
        &mut self,
        key: &SessionKey,
        blocks: Vec<Held>,
        target: usize,
        rng: &mut R,
    ) {
        let Some(sess) = self.map.get_mut(key) else {
            return;
        };
        for b in blocks {
            if sess.pool.iter().any(|(k, _)| *k == b.0) {
                continue;
            }
            if sess.pool.len() < target {
                sess.pool.push(b);
            } else if target > 0 {
                let i = rng.gen_range(0..sess.pool.len());
                sess.pool[i] = b;
            }
        }
    }

    /// The session's pointer candidates: (pool, tail). The tail is, oldest first, the
    /// writer's newest blocks of documents the session keeps (written by earlier runs), then
    /// the session's own.
    pub fn candidates(&self, key: &SessionKey) -> (Vec<Held>, Vec<Held>) {
        let Some(s) = self.map.get(key) else {
            return (Vec::new(), Vec::new());
        };
        let own: BTreeSet<BlockKey> = s.tail.iter().map(|(k, _)| *k).collect();
        let mut tail: Vec<Held> = self
            .recent
            .get(&key.0)
            .into_iter()
            .flatten()
            .filter(|(doc, (k, _))| s.named.contains(doc) && !own.contains(k))
            .map(|(_, h)| h.clone())
            .collect();
        tail.extend(s.tail.iter().cloned());
        (s.pool.clone(), tail)
    }

    /// Records the blocks of document `doc` the session wrote (only the newest stay).
    pub fn push_tail(&mut self, key: &SessionKey, doc: BlockKey, blocks: &[Held]) {
        let Some(sess) = self.map.get_mut(key) else {
            return;
        };
        let skip = blocks.len().saturating_sub(SESSION_TAIL);
        sess.tail.extend(blocks.iter().skip(skip).cloned());
        while sess.tail.len() > SESSION_TAIL {
            sess.tail.pop_front();
        }
        if !self.recent.contains_key(&key.0) && self.recent.len() >= MAX_SESSIONS {
            // Writers without an open session go first.
            let idle = self
                .recent
                .keys()
                .find(|w| !self.map.keys().any(|(mw, _)| mw == *w))
                .or_else(|| self.recent.keys().next())
                .copied();
            if let Some(w) = idle {
                self.recent.remove(&w);
            }
        }
        let recent = self.recent.entry(key.0).or_default();
        recent.extend(blocks.iter().skip(skip).map(|h| (doc, h.clone())));
        while recent.len() > SESSION_TAIL {
            recent.pop_front();
        }
    }

    /// Blocks to sample per kept document: a session keeping few documents takes several of
    /// each (so its pool still holds about `target`), one keeping many takes one of each.
    #[must_use]
    pub fn per_doc(&self, key: &SessionKey, target: usize) -> usize {
        let named = self.map.get(key).map_or(1, |s| s.named.len().max(1));
        (target / named).clamp(1, MAX_PER_DOC)
    }

    /// Sessions open.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is open.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Opens or updates the session of a write and samples some of its pending kept documents into
/// its pool (within [`RESOLVE_BUDGET`]); returns the session's pointer candidates (pool, tail).
/// `None` if the update names more than [`MAX_SESSION_KEEP`] documents.
pub async fn prepare(
    ent: &Entangled,
    key: SessionKey,
    s: &EntangleSession,
    params: entangle::Params,
) -> Option<(Vec<Held>, Vec<Held>)> {
    let target = 4 * params.t();
    let (todo, per_doc) = {
        let mut st = lock(&ent.encoder);
        let st = &mut *st;
        if !st.sessions.update(key, s, now_us(), &mut st.rng) {
            return None;
        }
        let todo = st.sessions.take_pending(&key, target, &mut st.rng);
        (todo, st.sessions.per_doc(&key, target))
    };
    if !todo.is_empty() {
        let resolving = resolve(ent, key.0, todo, per_doc, params);
        let sampled = tokio::time::timeout(RESOLVE_BUDGET, resolving)
            .await
            .unwrap_or_default();
        let mut st = lock(&ent.encoder);
        let st = &mut *st;
        st.sessions.add_pool(&key, sampled, target, &mut st.rng);
    }
    Some(lock(&ent.encoder).sessions.candidates(&key))
}

/// Samples up to `per_doc` blocks of each kept document: its document record must name
/// `writer` (a client cannot make its documents point into another user's) and use this ring's
/// parameters; then random stored blocks of random codewords of it, fetched and verified.
pub async fn resolve(
    ent: &Entangled,
    writer: Option<[u8; 32]>,
    docs: Vec<BlockKey>,
    per_doc: usize,
    params: entangle::Params,
) -> Vec<Held> {
    let Some(writer) = writer else {
        return Vec::new();
    };
    let seeds: Vec<(BlockKey, u64)> = {
        let mut st = lock(&ent.encoder);
        docs.into_iter().map(|d| (d, st.rng.gen())).collect()
    };
    futures::stream::iter(seeds)
        .map(|(doc, seed)| async move { sample_doc(ent, writer, doc, per_doc, params, seed).await })
        .buffer_unordered(RESOLVE_PER_WRITE)
        .flat_map(futures::stream::iter)
        .collect()
        .await
}

async fn sample_doc(
    ent: &Entangled,
    writer: [u8; 32],
    doc: BlockKey,
    per_doc: usize,
    params: entangle::Params,
    seed: u64,
) -> Vec<Held> {
    let Some(bytes) = meta::fetch_ring(ent, doc).await else {
        return Vec::new();
    };
    let Some(d) = DocRecord::decode(&bytes) else {
        return Vec::new();
    };
    if d.writer != Some(writer) || d.params != params || d.codewords.is_empty() {
        return Vec::new();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out: Vec<Held> = Vec::new();
    for _ in 0..per_doc {
        let rk = d.codewords[rng.gen_range(0..d.codewords.len())];
        let Some(rec) = super::repair::fetch_record(ent, rk).await else {
            continue;
        };
        if rec.stored_keys.is_empty() {
            continue;
        }
        let k = nk(&rec.stored_keys[rng.gen_range(0..rec.stored_keys.len())]);
        if out.iter().any(|(o, _)| *o == k) {
            continue;
        }
        let Some(block) = read::fetch_ring(ent, k).await else {
            continue;
        };
        if entangle::codec::pointer_payload(&params, &ek(&k), &block).is_ok() {
            out.push((k, Arc::new(block)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn key(i: u32) -> BlockKey {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        BlockKey(k)
    }

    fn held(i: u32) -> Held {
        (key(i), Arc::new(vec![i as u8; 8]))
    }

    fn sess(id: u64, keep: &[u32]) -> EntangleSession {
        EntangleSession {
            id,
            keep: keep.iter().map(|&i| key(i)).collect(),
        }
    }

    #[test]
    fn kept_documents_are_queued_once_and_sampled_in_bounded_batches() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut s = Sessions::default();
        let k = (Some([1; 32]), 7);
        assert!(s.update(k, &sess(7, &[1, 2, 3]), 10, &mut rng));
        assert!(s.update(k, &sess(7, &[2, 3, 4]), 11, &mut rng));
        let mut got = s.take_pending(&k, 32, &mut rng);
        got.sort();
        assert_eq!(got, vec![key(1), key(2), key(3), key(4)]);
        assert!(s.take_pending(&k, 32, &mut rng).is_empty());
        // Too many in one update: refused, nothing changes.
        let many: Vec<u32> = (0..=MAX_SESSION_KEEP as u32).collect();
        assert!(!s.update(k, &sess(7, &many), 12, &mut rng));
        assert!(s.take_pending(&k, 32, &mut rng).is_empty());
        // A batch is at most RESOLVE_PER_WRITE, and at least one once the pool is full.
        let some: Vec<u32> = (100..120).collect();
        assert!(s.update(k, &sess(7, &some), 13, &mut rng));
        assert_eq!(s.take_pending(&k, 32, &mut rng).len(), RESOLVE_PER_WRITE);
        s.add_pool(&k, (0..4).map(held).collect(), 4, &mut rng);
        assert_eq!(s.take_pending(&k, 4, &mut rng).len(), 1);
    }

    #[test]
    fn pool_and_tail_are_bounded_and_sessions_are_separate() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut s = Sessions::default();
        let a = (Some([1; 32]), 1);
        let b = (Some([2; 32]), 1);
        s.update(a, &sess(1, &[]), 0, &mut rng);
        s.update(b, &sess(1, &[]), 0, &mut rng);
        s.add_pool(&a, (0..10).map(held).collect(), 6, &mut rng);
        s.add_pool(&a, vec![held(0)], 6, &mut rng);
        let blocks: Vec<Held> = (100..200).map(held).collect();
        s.push_tail(&a, key(7), &blocks);
        let (pool, tail) = s.candidates(&a);
        assert_eq!(pool.len(), 6);
        assert_eq!(tail.len(), SESSION_TAIL);
        assert_eq!(tail.last().unwrap().0, key(199));
        // Session b, same id but another writer, sees none of it.
        let (pool, tail) = s.candidates(&b);
        assert!(pool.is_empty() && tail.is_empty());
        // An unknown session has no candidates.
        assert_eq!(s.candidates(&(None, 9)).0.len(), 0);
    }

    #[test]
    fn idle_and_least_recently_used_sessions_go() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut s = Sessions::default();
        for i in 0..MAX_SESSIONS as u64 {
            s.update((None, i), &sess(i, &[]), i, &mut rng);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        s.push_tail(&(None, 0), key(7), &[held(1)]);
        // One more: the least recently used (id 0) goes.
        s.update((None, 99), &sess(99, &[]), 100, &mut rng);
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.candidates(&(None, 0)).1.is_empty());
        // Everything idle for longer than SESSION_IDLE_US goes.
        s.update(
            (None, 100),
            &sess(100, &[]),
            101 + SESSION_IDLE_US,
            &mut rng,
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_new_run_starts_its_tail_with_the_kept_end_of_the_last() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut s = Sessions::default();
        let w = Some([5; 32]);
        let (one, two, three) = ((w, 1), (w, 2), (w, 3));
        s.update(one, &sess(1, &[]), 0, &mut rng);
        s.push_tail(&one, key(1000), &[held(1), held(2)]);
        s.push_tail(&one, key(1001), &[held(3)]);
        // Run 2 keeps document 1000 but not 1001: only blocks 1 and 2 lead its tail.
        s.update(two, &sess(2, &[1000]), 1, &mut rng);
        let (_, tail) = s.candidates(&two);
        assert_eq!(
            tail.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![key(1), key(2)]
        );
        s.push_tail(&two, key(1002), &[held(4)]);
        let (_, tail) = s.candidates(&two);
        assert_eq!(
            tail.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![key(1), key(2), key(4)]
        );
        // Run 3 keeps nothing: its tail is empty; another writer's run sees none of w's.
        s.update(three, &sess(3, &[]), 2, &mut rng);
        assert!(s.candidates(&three).1.is_empty());
        s.update((Some([6; 32]), 2), &sess(2, &[1000]), 3, &mut rng);
        assert!(s.candidates(&(Some([6; 32]), 2)).1.is_empty());
    }
}
