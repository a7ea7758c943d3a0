//! Durability simulator: step-archive versus plain replication on a ring of nodes.
//!
//! The simulator works on abstract symbols (no payload bytes) but applies the codec's decoding
//! rule ([`Params::decodable`]): a codeword recovers when at least `s + t` of its symbols are
//! known, and then all of its symbols become known (its parities re-encoded, its pointers
//! rebuilt as input symbols, its sources decoded); repair iterates through reverse references
//! to a fixed point, as [`crate::repair()`] does with real bytes.
//!
//! Two [`Layout`]s of a codeword are simulated:
//! - [`Layout::ParityOnly`] (RECAST's, the codec's default): the `s` sources are never
//!   stored; the codeword's symbols are its `t` pointers and `p` parities, of which only the
//!   parities are stored: `p` blocks per codeword, overhead `p / s * replication`.
//! - [`Layout::Systematic`] (the codec's block format version 2): each source block is also
//!   stored once, as a block of its own (readable without decoding); the codeword's symbols
//!   are its `s` sources, `t` pointers and `p` parities: `s + p` blocks per codeword, overhead
//!   `(s + p) / s * replication`. Pointers may name any stored block of earlier codewords,
//!   sources included.
//!
//! Model, per seed:
//! - `nodes` nodes with random 64-bit ring ids; a block with (random, hash-like) key `k` is
//!   stored on `successor(k)` and the `r - 1` following nodes.
//! - The data is `blocks` source blocks. The step-archive writes them as `ceil(blocks / s)`
//!   codewords, each entangled with `t` pointers chosen by a [`PointerSelector`] over the
//!   blocks already stored (anchors while fewer than `t` exist), each stored block replicated
//!   `replication` times. (A partial last codeword counts as a full one.)
//! - Plain replication stores each source block on `round(overhead)` nodes.
//! - A fraction of the nodes is killed (the same nodes for both schemes and both layouts). A
//!   replicated block survives if any replica survives. The step-archive is repaired to a
//!   fixed point.
//! - `lost_fraction` is the fraction of the data lost: for the step-archive, the fraction of
//!   documents lost, a document being one codeword's `s` source blocks. Parity-only: a
//!   document is lost when its codeword cannot be decoded. Systematic: when one of its source
//!   blocks is not known at the fixed point (it survived on no replica, and neither its own
//!   codeword nor one that points at it could be decoded). For replication, the fraction of
//!   source blocks lost.
//!
//! A seed fixes the ring (drawn first, so it does not depend on the layout or the code) and
//! the kill set of each fraction, so rows with the same seeds and nodes compare on the same
//! failures.

use std::collections::VecDeque;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use crate::params::Layout;
use crate::params::{Params, MAX_SYMBOLS};
use crate::select::{PointerChoice, PointerSelector};
use crate::Error;

/// One simulation setup. The layout is an argument of [`run_layout`] (and [`run`] is the
/// parity-only layout), so every setup can be run in both layouts on the same seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Number of nodes in the ring.
    pub nodes: usize,
    /// Number of source (data) blocks written.
    pub blocks: usize,
    /// Fractions of nodes killed, each simulated separately.
    pub kills: Vec<f64>,
    /// Seeds; each gives a new ring, archive and kill set.
    pub seeds: Vec<u64>,
    /// Source blocks per codeword.
    pub s: u16,
    /// Pointers per codeword.
    pub t: u16,
    /// Parities per codeword.
    pub p: u16,
    /// Replicas of each stored block in the step-archive.
    pub replication: usize,
    /// Pointer selection policy.
    pub selector: PointerSelector,
    /// Ring ids each joining node draws before keeping the one that splits the largest share
    /// of an arc (1: a random id, as plain Chord; more evens out the arcs, as the node's
    /// `--id-choices` does).
    #[serde(default = "one")]
    pub id_choices: usize,
    /// Codewords per write session (`None`: one session, the whole archive). A codeword's
    /// pointers are drawn only among the blocks of its own session (anchors fill in at a
    /// session's start), as the node does for a client's backup run: deleting a run's data
    /// then never leaves a pointer of a live codeword behind.
    #[serde(default)]
    pub session: Option<usize>,
    /// Systematic layout: the parities of the newest `later` codewords are not stored yet when
    /// a codeword is written (the node stores parities after the write is acknowledged, and
    /// its encoder then points only at blocks already stored: sources), so a pointer drawn at
    /// one of those parities goes to a source of the same codeword instead. `None`: every
    /// stored block of earlier codewords can be a pointer.
    #[serde(default)]
    pub later: Option<usize>,
}

fn one() -> usize {
    1
}

impl SimConfig {
    /// The code parameters (with a nominal block size: the simulator has no bytes).
    #[must_use]
    pub fn params(&self) -> Params {
        Params::new(self.s, self.t, self.p, 2)
    }

    /// Storage overhead of the step-archive in `layout` (stored bytes / data bytes).
    #[must_use]
    pub fn overhead(&self, layout: Layout) -> f64 {
        layout.overhead(self.s, self.p) * self.replication as f64
    }

    /// Replicas per block of the plain-replication scheme with the same overhead as the
    /// parity-only step-archive.
    #[must_use]
    pub fn equivalent_replication(&self) -> usize {
        self.equivalent_replication_for(Layout::ParityOnly)
    }

    /// Replicas per block of the plain-replication scheme with the same overhead as the
    /// step-archive in `layout` (rounded, at least 1).
    #[must_use]
    pub fn equivalent_replication_for(&self, layout: Layout) -> usize {
        (self.overhead(layout).round() as usize).max(1)
    }

    /// Checks the setup for the parity-only layout.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_for(Layout::ParityOnly)
    }

    /// Checks the setup for `layout`. Parity-only needs the codec's parameters
    /// ([`Params::validate`], so `p >= s`); systematic accepts any `p` (with `p = 0`, each
    /// source is a single unprotected copy), as long as Reed-Solomon supports `s + t`
    /// originals with `p` recoveries.
    pub fn validate_for(&self, layout: Layout) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::InvalidParams(m.into()));
        match layout {
            Layout::ParityOnly => self.params().validate()?,
            Layout::Systematic => {
                let params = self.params();
                if self.s == 0 {
                    return bad("s must be at least 1");
                }
                if params.s() + params.t() + params.p() > MAX_SYMBOLS {
                    return bad("s + t + p exceeds the symbol limit");
                }
                if self.p > 0
                    && !reed_solomon_simd::ReedSolomonEncoder::supports(params.needed(), params.p())
                {
                    return bad("reed-solomon does not support these s + t and p");
                }
            }
        }
        if self.nodes == 0 {
            return bad("at least one node");
        }
        if self.id_choices == 0 {
            return bad("id_choices must be at least 1");
        }
        if self.replication == 0 || self.replication > self.nodes {
            return bad("replication must be in 1..=nodes");
        }
        if self.equivalent_replication_for(layout) > self.nodes {
            return bad("equivalent replication exceeds the number of nodes");
        }
        if self.kills.iter().any(|k| !(0.0..=1.0).contains(k)) {
            return bad("kill fractions must be in [0, 1]");
        }
        if self.selector.t != usize::from(self.t) {
            return bad("selector t differs from t");
        }
        if self.session == Some(0) {
            return bad("a session holds at least one codeword");
        }
        Ok(())
    }
}

/// The outcome of one (scheme, seed, kill fraction) run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimResult {
    /// "step" or "replication".
    pub scheme: String,
    /// Layout of the step-archive (for "replication", the layout of the step-archive it is
    /// compared with).
    #[serde(default)]
    pub layout: Layout,
    /// Seed of the run.
    pub seed: u64,
    /// Source blocks per codeword (1 for replication).
    pub s: u16,
    /// Pointers per codeword (0 for replication).
    pub t: u16,
    /// Parities per codeword (0 for replication).
    pub p: u16,
    /// Copies of every stored block.
    pub replication: usize,
    /// Storage overhead (stored bytes / data bytes).
    pub overhead: f64,
    /// Number of nodes.
    pub nodes: usize,
    /// Fraction of nodes killed (actual, after rounding to whole nodes).
    pub killed_fraction: f64,
    /// Fraction of nodes asked to be killed.
    pub kill_target: f64,
    /// Documents (codewords, or blocks for replication).
    pub documents: usize,
    /// Documents lost after repair.
    pub lost_documents: usize,
    /// `lost_documents / documents`.
    pub lost_fraction: f64,
}

/// A ring of nodes with random ids; placement as the ring does it.
struct Ring {
    ids: Vec<u64>,
}

impl Ring {
    /// `n` nodes joining one after another, each keeping the best of `choices` random ids
    /// (see [`best_id`]).
    fn joined(n: usize, choices: usize, rng: &mut ChaCha8Rng) -> Ring {
        let mut ids: Vec<u64> = Vec::with_capacity(n);
        for _ in 0..n {
            let candidates: Vec<u64> = (0..choices.max(1)).map(|_| rng.gen()).collect();
            let id = best_id(&ids, &candidates);
            let at = ids.partition_point(|&x| x < id);
            if ids.get(at) != Some(&id) {
                ids.insert(at, id);
            }
        }
        Ring { ids }
    }

    /// Indexes of the `r` nodes holding `key`: its successor and the next `r - 1`.
    fn holders(&self, key: u64, r: usize) -> impl Iterator<Item = usize> + '_ {
        let n = self.ids.len();
        let first = self.ids.partition_point(|&id| id < key) % n;
        (0..r.min(n)).map(move |i| (first + i) % n)
    }
}

/// Of `candidates`, the ring id a joining node keeps, as `chord::balance::best_of` picks it (on
/// 64-bit ids): the first candidate whose score `min(x - pred, succ - x)` is at least 3/4 of the
/// best candidate's, so it lands in the middle quarter of a largest arc. With one candidate,
/// that candidate.
#[must_use]
pub fn best_id(ids: &[u64], candidates: &[u64]) -> u64 {
    let score = |x: u64| -> u64 {
        if ids.is_empty() {
            return u64::MAX;
        }
        let at = ids.partition_point(|&m| m < x);
        if ids.get(at) == Some(&x) {
            return 0;
        }
        let pred = if at == 0 {
            ids[ids.len() - 1]
        } else {
            ids[at - 1]
        };
        let succ = ids.get(at).copied().unwrap_or(ids[0]);
        x.wrapping_sub(pred).min(succ.wrapping_sub(x))
    };
    let scores: Vec<u64> = candidates.iter().map(|&c| score(c)).collect();
    let best = scores.iter().copied().max().unwrap_or(0);
    let bar = best - best / 4;
    candidates
        .iter()
        .zip(&scores)
        .find(|(_, &s)| s >= bar)
        .map_or(0, |(&c, _)| c)
}

/// Runs every (seed, kill fraction) of `config` for both schemes, in the parity-only layout.
pub fn run(config: &SimConfig) -> Result<Vec<SimResult>, Error> {
    run_layout(config, Layout::ParityOnly)
}

/// Runs every (seed, kill fraction) of `config` for both schemes, the step-archive in
/// `layout`. The ring and kill sets of a seed are the same whatever the layout.
pub fn run_layout(config: &SimConfig, layout: Layout) -> Result<Vec<SimResult>, Error> {
    config.validate_for(layout)?;
    let mut out = Vec::new();
    for &seed in &config.seeds {
        out.extend(run_seed(config, layout, seed)?);
    }
    Ok(out)
}

/// The structure of a step-archive as the simulator sees it. Codeword `c` owns the stored
/// blocks `c * n .. (c + 1) * n`, `n` = [`SimArchive::stored_per_codeword`]: first its stored
/// sources (none in the parity-only layout, `s` in the systematic one), then its `p`
/// parities; it points at earlier blocks (or anchors).
#[derive(Debug, Clone)]
pub struct SimArchive {
    pointers: Vec<Vec<Option<u32>>>,
    referrers: Vec<Vec<u32>>,
    p: usize,
    sources: usize,
}

impl SimArchive {
    /// A parity-only archive from each codeword's pointers (block index, or `None` for an
    /// anchor), with `p` parities per codeword. Pointers must name blocks that exist.
    pub fn new(pointers: Vec<Vec<Option<u32>>>, p: usize) -> Result<Self, Error> {
        Self::with_layout(pointers, 0, p)
    }

    /// A systematic archive: each codeword stores its `s` sources, then its `p` parities.
    pub fn systematic(pointers: Vec<Vec<Option<u32>>>, s: usize, p: usize) -> Result<Self, Error> {
        if s == 0 {
            return Err(Error::InvalidParams("s must be at least 1".into()));
        }
        Self::with_layout(pointers, s, p)
    }

    fn with_layout(
        pointers: Vec<Vec<Option<u32>>>,
        sources: usize,
        p: usize,
    ) -> Result<Self, Error> {
        let blocks = pointers.len() * (sources + p);
        let mut referrers: Vec<Vec<u32>> = vec![Vec::new(); blocks];
        for (c, ptrs) in pointers.iter().enumerate() {
            for &b in ptrs.iter().flatten() {
                let r = referrers.get_mut(b as usize).ok_or_else(|| {
                    Error::InvalidParams(format!("codeword {c} points at missing block {b}"))
                })?;
                r.push(c as u32);
            }
        }
        Ok(SimArchive {
            pointers,
            referrers,
            p,
            sources,
        })
    }

    /// Number of codewords.
    #[must_use]
    pub fn codewords(&self) -> usize {
        self.pointers.len()
    }

    /// Stored blocks per codeword: `p` (parity-only) or `s + p` (systematic).
    #[must_use]
    pub fn stored_per_codeword(&self) -> usize {
        self.sources + self.p
    }

    /// Number of stored blocks.
    #[must_use]
    pub fn blocks(&self) -> usize {
        self.pointers.len() * self.stored_per_codeword()
    }

    /// The layout of the archive.
    #[must_use]
    pub fn layout(&self) -> Layout {
        if self.sources == 0 {
            Layout::ParityOnly
        } else {
            Layout::Systematic
        }
    }

    /// The stored blocks of codeword `c`.
    fn owned(&self, c: usize) -> std::ops::Range<usize> {
        let n = self.stored_per_codeword();
        c * n..(c + 1) * n
    }

    /// Per codeword, whether its document is lost once repair has reached `known` (the
    /// outcome of [`fixed_point`], with `decodable` what it returned). Parity-only: the
    /// codeword cannot be decoded. Systematic: one of its stored sources is not known.
    #[must_use]
    pub fn lost_documents(&self, known: &[bool], decodable: &[bool]) -> Vec<bool> {
        (0..self.codewords())
            .map(|c| {
                if self.sources == 0 {
                    !decodable[c]
                } else {
                    let first = c * self.stored_per_codeword();
                    (first..first + self.sources).any(|b| !known[b])
                }
            })
            .collect()
    }
}

/// A pointer of codeword `c` drawn at stored block `b`: when `b` is a parity of one of the
/// newest `later` codewords before `c` (not stored yet when `c` is written), the source of the
/// same codeword at the same position modulo `sources` instead.
fn pending_to_source(
    b: usize,
    c: usize,
    per: usize,
    sources: usize,
    later: Option<usize>,
) -> usize {
    let Some(later) = later else { return b };
    let (owner, at) = (b / per, b % per);
    if sources == 0 || at < sources || owner + later < c {
        return b;
    }
    owner * per + at % sources
}

fn build_archive(config: &SimConfig, layout: Layout, rng: &mut ChaCha8Rng) -> SimArchive {
    let p = usize::from(config.p);
    let sources = match layout {
        Layout::ParityOnly => 0,
        Layout::Systematic => usize::from(config.s),
    };
    let per = sources + p;
    let docs = config.blocks.div_ceil(usize::from(config.s));
    let mut pointers = Vec::with_capacity(docs);
    let mut referrers: Vec<Vec<u32>> = vec![Vec::new(); docs * per];
    for c in 0..docs {
        let n = (c * per) as u64;
        // The session's first block: pointers are drawn among the session's blocks only.
        let start = config.session.map_or(0, |k| ((c / k) * k * per) as u64);
        let ptrs: Vec<Option<u32>> = config
            .selector
            .select(n - start, rng)
            .into_iter()
            .map(|ch| match ch {
                PointerChoice::Block(b) => {
                    Some(
                        pending_to_source((start + b) as usize, c, per, sources, config.later)
                            as u32,
                    )
                }
                PointerChoice::Anchor(_) => None,
            })
            .collect();
        for b in ptrs.iter().flatten() {
            referrers[*b as usize].push(c as u32);
        }
        pointers.push(ptrs);
    }
    SimArchive {
        pointers,
        referrers,
        p,
        sources,
    }
}

/// Fixed-point repair on abstract symbols. `known[b]` says whether stored block `b` survived;
/// on return it says whether it is known after repair. Returns, per codeword, whether it is
/// decodable at the fixed point: at least `s + t` of its symbols (its pointers and anchors,
/// its stored sources in the systematic layout, its parities) known.
pub fn fixed_point(
    params: &Params,
    archive: &SimArchive,
    known: &mut [bool],
) -> Result<Vec<bool>, Error> {
    if known.len() != archive.blocks()
        || archive.p != params.p()
        || (archive.sources != 0 && archive.sources != params.s())
    {
        return Err(Error::InvalidParams(format!(
            "{} known flags and (s, p) = ({}, {}) for an archive of {} blocks with {} stored \
             sources and p = {} per codeword",
            known.len(),
            params.s,
            params.p,
            archive.blocks(),
            archive.sources,
            archive.p
        )));
    }
    if archive.pointers.iter().any(|ptrs| ptrs.len() != params.t()) {
        return Err(Error::InvalidParams(
            "a codeword does not have t pointers".into(),
        ));
    }
    let docs = archive.pointers.len();
    let per = archive.stored_per_codeword();
    let count = |c: usize, known: &[bool]| -> usize {
        let ptr = archive.pointers[c]
            .iter()
            .filter(|b| b.is_none_or(|b| known[b as usize]))
            .count();
        ptr + archive.owned(c).filter(|&b| known[b]).count()
    };
    let total = params.t() + per;
    let mut queued = vec![true; docs];
    let mut queue: VecDeque<usize> = (0..docs).collect();
    while let Some(c) = queue.pop_front() {
        queued[c] = false;
        let k = count(c, known);
        if k == total || !params.decodable(k) {
            continue;
        }
        // Decodable with missing symbols: rebuild them all, and revisit every codeword that
        // shares a rebuilt block.
        let rebuilt: Vec<usize> = archive.pointers[c]
            .iter()
            .flatten()
            .map(|&b| b as usize)
            .chain(archive.owned(c))
            .filter(|&b| !known[b])
            .collect();
        for b in rebuilt {
            known[b] = true;
            let owner = b / per;
            for &other in std::iter::once(&(owner as u32)).chain(&archive.referrers[b]) {
                let o = other as usize;
                if o != c && !queued[o] {
                    queued[o] = true;
                    queue.push_back(o);
                }
            }
        }
    }
    Ok((0..docs)
        .map(|c| params.decodable(count(c, known)))
        .collect())
}

fn kill_set(nodes: usize, fraction: f64, seed: u64) -> (Vec<bool>, f64) {
    // An RNG of its own per (seed, fraction), so each kill fraction replays on its own.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fraction.to_bits().rotate_left(17));
    let k = ((nodes as f64) * fraction).round() as usize;
    let mut order: Vec<usize> = (0..nodes).collect();
    order.shuffle(&mut rng);
    let mut dead = vec![false; nodes];
    for &i in &order[..k.min(nodes)] {
        dead[i] = true;
    }
    (dead, k as f64 / nodes as f64)
}

fn run_seed(config: &SimConfig, layout: Layout, seed: u64) -> Result<Vec<SimResult>, Error> {
    let params = config.params();
    // Draw order (ring, archive, stored keys, replicated keys) is fixed: the ring depends on
    // the seed and `nodes` only, and parity-only runs replay those of earlier versions.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ring = Ring::joined(config.nodes, config.id_choices, &mut rng);
    let nodes = ring.ids.len();
    let archive = build_archive(config, layout, &mut rng);
    let docs = archive.codewords();
    let stored = archive.blocks();
    let step_keys: Vec<u64> = (0..stored).map(|_| rng.gen()).collect();
    let r_eq = config.equivalent_replication_for(layout);
    let rep_keys: Vec<u64> = (0..config.blocks).map(|_| rng.gen()).collect();

    let mut out = Vec::new();
    for &fraction in &config.kills {
        let (dead, killed) = kill_set(nodes, fraction, seed);
        let alive = |key: u64, r: usize| ring.holders(key, r).any(|n| !dead[n]);

        let mut known: Vec<bool> = step_keys
            .iter()
            .map(|&k| alive(k, config.replication))
            .collect();
        let decodable = fixed_point(&params, &archive, &mut known)?;
        let lost = archive
            .lost_documents(&known, &decodable)
            .iter()
            .filter(|&&l| l)
            .count();
        out.push(SimResult {
            scheme: "step".into(),
            layout,
            seed,
            s: config.s,
            t: config.t,
            p: config.p,
            replication: config.replication,
            overhead: config.overhead(layout),
            nodes,
            killed_fraction: killed,
            kill_target: fraction,
            documents: docs,
            lost_documents: lost,
            lost_fraction: lost as f64 / docs.max(1) as f64,
        });

        let rep_lost = rep_keys.iter().filter(|&&k| !alive(k, r_eq)).count();
        out.push(SimResult {
            scheme: "replication".into(),
            layout,
            seed,
            s: 1,
            t: 0,
            p: 0,
            replication: r_eq,
            overhead: r_eq as f64,
            nodes,
            killed_fraction: killed,
            kill_target: fraction,
            documents: config.blocks,
            lost_documents: rep_lost,
            lost_fraction: rep_lost as f64 / config.blocks.max(1) as f64,
        });
    }
    Ok(out)
}

/// Mean lost fraction per (scheme, kill fraction), in the order of `config.kills`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Fraction of nodes killed.
    pub killed_fraction: f64,
    /// Mean lost fraction of the step-archive over the seeds.
    pub step_mean: f64,
    /// Median over the seeds of the step-archive's lost fraction.
    pub step_median: f64,
    /// Worst seed of the step-archive.
    pub step_max: f64,
    /// Mean lost fraction of replication over the seeds.
    pub replication_mean: f64,
    /// Worst seed of replication.
    pub replication_max: f64,
    /// Documents of the step-archive lost, summed over the seeds.
    #[serde(default)]
    pub step_lost_documents: usize,
    /// Documents of the step-archive, summed over the seeds.
    #[serde(default)]
    pub step_documents: usize,
}

/// Averages results over seeds.
#[must_use]
pub fn summarize(config: &SimConfig, results: &[SimResult]) -> Vec<Summary> {
    let mut out = Vec::new();
    for &f in &config.kills {
        let killed = results
            .iter()
            .find(|r| r.kill_target.to_bits() == f.to_bits())
            .map_or(f, |r| r.killed_fraction);
        let pick = |scheme: &str| -> Vec<f64> {
            results
                .iter()
                .filter(|r| r.scheme == scheme)
                .filter(|r| r.kill_target.to_bits() == f.to_bits())
                .map(|r| r.lost_fraction)
                .collect()
        };
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => 0.0,
                n if n % 2 == 1 => v[n / 2],
                n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
            }
        };
        let (s, r) = (pick("step"), pick("replication"));
        let (step_lost_documents, step_documents) = results
            .iter()
            .filter(|r| r.scheme == "step" && r.kill_target.to_bits() == f.to_bits())
            .fold((0, 0), |(l, d), r| (l + r.lost_documents, d + r.documents));
        out.push(Summary {
            killed_fraction: killed,
            step_mean: mean(&s),
            step_median: median(&s),
            step_max: max(&s),
            replication_mean: mean(&r),
            replication_max: max(&r),
            step_lost_documents,
            step_documents,
        });
    }
    out
}

/// The side-by-side table, as Markdown, for the parity-only layout.
#[must_use]
pub fn table(config: &SimConfig, summary: &[Summary]) -> String {
    table_layout(config, Layout::ParityOnly, summary)
}

/// The side-by-side table, as Markdown, for the step-archive in `layout`.
#[must_use]
pub fn table_layout(config: &SimConfig, layout: Layout, summary: &[Summary]) -> String {
    let r_eq = config.equivalent_replication_for(layout);
    let name = match layout {
        Layout::ParityOnly => "step",
        Layout::Systematic => "systematic",
    };
    let mut s = format!(
        "| nodes killed | replication {r_eq}x: % lost (mean / worst) | {name} (s={},t={},p={}) x{} = {:.2}x: % lost (mean / median / worst) | documents lost (all seeds) |\n|---|---|---|---|\n",
        config.s,
        config.t,
        config.p,
        config.replication,
        config.overhead(layout)
    );
    for row in summary {
        s.push_str(&format!(
            "| {:.0}% | {:.3} / {:.3} | {:.4} / {:.4} / {:.4} | {} / {} |\n",
            row.killed_fraction * 100.0,
            row.replication_mean * 100.0,
            row.replication_max * 100.0,
            row.step_mean * 100.0,
            row.step_median * 100.0,
            row.step_max * 100.0,
            row.step_lost_documents,
            row.step_documents
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(s: u16, t: u16, p: u16) -> SimConfig {
        SimConfig {
            nodes: 40,
            blocks: 4_000,
            kills: vec![0.3, 0.5],
            seeds: vec![3, 4],
            s,
            t,
            p,
            replication: 1,
            selector: PointerSelector::new(usize::from(t), usize::from(t) / 2, 100).unwrap(),
            id_choices: 16,
            session: None,
            later: None,
        }
    }

    fn step(results: &[SimResult]) -> Vec<&SimResult> {
        results.iter().filter(|r| r.scheme == "step").collect()
    }

    /// Random known flags, `percent`% of them false.
    fn damage(n: usize, percent: u32, rng: &mut ChaCha8Rng) -> Vec<bool> {
        (0..n).map(|_| rng.gen_range(0..100) >= percent).collect()
    }

    /// The fixed point by brute force: sweep every codeword until nothing changes.
    fn naive_fixed_point(params: &Params, a: &SimArchive, known: &mut [bool]) -> Vec<bool> {
        let symbols = |c: usize| -> Vec<Option<usize>> {
            a.pointers[c]
                .iter()
                .map(|b| b.map(|b| b as usize))
                .chain(a.owned(c).map(Some))
                .collect()
        };
        let count = |c: usize, known: &[bool]| {
            symbols(c)
                .iter()
                .filter(|b| b.is_none_or(|b| known[b]))
                .count()
        };
        loop {
            let mut changed = false;
            for c in 0..a.codewords() {
                if params.decodable(count(c, known)) {
                    for b in symbols(c).into_iter().flatten() {
                        if !known[b] {
                            known[b] = true;
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                return (0..a.codewords())
                    .map(|c| params.decodable(count(c, known)))
                    .collect();
            }
        }
    }

    #[test]
    fn sessions_keep_pointers_inside_their_run() {
        let mut c = config(4, 8, 8);
        c.session = Some(5);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let a = build_archive(&c, Layout::Systematic, &mut rng);
        let per = a.sources + a.p;
        for (cw, ptrs) in a.pointers.iter().enumerate() {
            let start = (cw / 5) * 5 * per;
            assert!(ptrs
                .iter()
                .flatten()
                .all(|&b| (b as usize) >= start && (b as usize) < cw * per));
            // A session's first codeword has only anchors; later ones real pointers.
            if cw % 5 == 0 {
                assert!(ptrs.iter().all(Option::is_none));
            } else {
                assert!(ptrs.iter().any(Option::is_some));
            }
        }
        c.session = Some(0);
        assert!(c.validate_for(Layout::Systematic).is_err());
    }

    #[test]
    fn layout_names_overheads_and_validation() {
        for l in [Layout::ParityOnly, Layout::Systematic] {
            assert_eq!(l.to_string().parse::<Layout>().unwrap(), l);
            assert_eq!(
                serde_json::to_value(l).unwrap(),
                serde_json::Value::String(l.name().into())
            );
        }
        assert!("both".parse::<Layout>().is_err());
        assert_eq!(Layout::default(), Layout::ParityOnly);

        let c = config(4, 8, 12);
        assert_eq!(c.overhead(Layout::ParityOnly), 3.0);
        assert_eq!(c.equivalent_replication(), 3);
        assert_eq!(config(4, 8, 8).overhead(Layout::Systematic), 3.0);
        assert_eq!(config(4, 8, 6).overhead(Layout::Systematic), 2.5);
        assert_eq!(
            config(4, 8, 6).equivalent_replication_for(Layout::Systematic),
            3
        );
        assert_eq!(config(4, 8, 4).overhead(Layout::Systematic), 2.0);
        assert_eq!(
            config(4, 8, 4).equivalent_replication_for(Layout::Systematic),
            2
        );
        let mut r3 = config(4, 8, 4);
        r3.replication = 3;
        assert_eq!(r3.overhead(Layout::ParityOnly), 3.0);

        // Systematic accepts p < s (even p = 0); parity-only does not.
        assert!(config(4, 8, 0).validate_for(Layout::Systematic).is_ok());
        assert!(config(4, 8, 2).validate_for(Layout::Systematic).is_ok());
        assert!(config(4, 8, 2).validate_for(Layout::ParityOnly).is_err());
        assert!(config(4, 8, 2).validate().is_err());
        assert!(run_layout(&config(4, 8, 2), Layout::ParityOnly).is_err());
        assert!(config(0, 8, 4).validate_for(Layout::Systematic).is_err());
        let mut bad = config(4, 8, 8);
        bad.selector = PointerSelector::mixed(7);
        assert!(bad.validate_for(Layout::Systematic).is_err());

        // A result without a layout (older JSON) reads as parity-only.
        let r = &run(&config(2, 4, 4)).unwrap()[0];
        let mut v = serde_json::to_value(r).unwrap();
        assert_eq!(v["layout"], "parity-only");
        v.as_object_mut().unwrap().remove("layout");
        let back: SimResult = serde_json::from_value(v).unwrap();
        assert_eq!(&back, r);
    }

    /// Hand-sized systematic archive, (s, t, p) = (1, 1, 1): codeword c stores its source at
    /// block 2c and its parity at 2c + 1; 2 of its 3 symbols decode it.
    #[test]
    fn hand_sized_systematic_loss_is_exact() {
        let params = Params::new(1, 1, 1, 2);
        // cw0 points at an anchor, cw1 at cw0's source (block 0), cw2 at cw1's parity (3).
        let pointers = vec![vec![None], vec![Some(0)], vec![Some(3)]];
        let a = SimArchive::systematic(pointers.clone(), 1, 1).unwrap();
        assert_eq!(a.blocks(), 6);
        assert_eq!(a.layout(), Layout::Systematic);
        assert_eq!(a.referrers[0], vec![1]);
        assert_eq!(a.referrers[3], vec![2]);

        // Sources 0 and 4 and parity 1 lost. cw1 (pointer 0 lost, source 2 and parity 3
        // known) decodes and rebuilds block 0; then cw0 (anchor + block 0) rebuilds 1; cw2
        // (pointer 3, parity 5) rebuilds 4. Nothing is lost.
        let mut known = vec![false, false, true, true, false, true];
        let ok = fixed_point(&params, &a, &mut known).unwrap();
        assert_eq!(known, vec![true; 6]);
        assert_eq!(ok, vec![true; 3]);
        assert_eq!(a.lost_documents(&known, &ok), vec![false; 3]);

        // Only parity 1 and source 4 survive. cw0 (anchor + parity 1) decodes: block 0 is
        // rebuilt. cw1 then knows only its pointer (block 0): stuck, its source 2 is lost.
        // cw2 knows only its source 4: stuck, but its document is read directly.
        let mut known = vec![false, true, false, false, true, false];
        let ok = fixed_point(&params, &a, &mut known).unwrap();
        assert_eq!(known, vec![true, true, false, false, true, false]);
        assert_eq!(ok, vec![true, false, false]);
        assert_eq!(a.lost_documents(&known, &ok), vec![false, true, false]);

        // The same graph read as parity-only (1, 1, 2) (the source slot is a second parity):
        // the same fixed point, but cw2's document is lost with its codeword.
        let po = SimArchive::new(pointers, 2).unwrap();
        let po_params = Params::new(1, 1, 2, 2);
        let mut known2 = vec![false, true, false, false, true, false];
        let ok2 = fixed_point(&po_params, &po, &mut known2).unwrap();
        assert_eq!(known2, known);
        assert_eq!(ok2, ok);
        assert_eq!(po.lost_documents(&known2, &ok2), vec![false, true, true]);

        // Mismatched parameters are refused.
        let mut k = vec![true; 6];
        assert!(fixed_point(&Params::new(2, 1, 1, 2), &a, &mut k).is_err());
        assert!(fixed_point(&params, &a, &mut [true; 5]).is_err());
        assert!(SimArchive::systematic(vec![vec![Some(2)]], 1, 1).is_err());
        assert!(SimArchive::systematic(vec![vec![None]], 0, 1).is_err());
    }

    /// The worklist fixed point equals a brute-force sweep, in both layouts.
    #[test]
    fn fixed_point_matches_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (layout, s, t, p) in [
            (Layout::Systematic, 4, 8, 8),
            (Layout::Systematic, 2, 4, 1),
            (Layout::ParityOnly, 2, 6, 4),
        ] {
            let mut c = config(s, t, p);
            c.blocks = 600;
            let a = build_archive(&c, layout, &mut rng);
            for percent in [20, 35, 45, 55] {
                let mut fast = damage(a.blocks(), percent, &mut rng);
                let mut slow = fast.clone();
                let ok = fixed_point(&c.params(), &a, &mut fast).unwrap();
                let ok_slow = naive_fixed_point(&c.params(), &a, &mut slow);
                assert_eq!(fast, slow, "{layout} ({s},{t},{p}) at {percent}%");
                assert_eq!(ok, ok_slow);
            }
        }
    }

    /// Systematic (s, t, p) has the structure of parity-only (s, t, s + p): same symbols per
    /// codeword, same number needed, same fixed point. A document is lost in the systematic
    /// layout only if it is lost in the parity-only one (a decoded codeword knows its sources),
    /// and it can survive a stuck codeword when its own sources do.
    #[test]
    fn systematic_loses_a_subset_of_parity_only() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let c = config(4, 8, 8);
        let a = build_archive(&c, Layout::Systematic, &mut rng);
        let po = SimArchive::new(a.pointers.clone(), 12).unwrap();
        let po_params = Params::new(4, 8, 12, 2);
        let mut saved = 0;
        for percent in [30, 45, 60, 75] {
            let mut k_sys = damage(a.blocks(), percent, &mut rng);
            let mut k_po = k_sys.clone();
            let ok_sys = fixed_point(&c.params(), &a, &mut k_sys).unwrap();
            let ok_po = fixed_point(&po_params, &po, &mut k_po).unwrap();
            assert_eq!(k_sys, k_po);
            assert_eq!(ok_sys, ok_po);
            let lost_sys = a.lost_documents(&k_sys, &ok_sys);
            let lost_po = po.lost_documents(&k_po, &ok_po);
            for (ls, lp) in lost_sys.iter().zip(&lost_po) {
                assert!(!ls || *lp);
                saved += usize::from(*lp && !ls);
            }
        }
        // At 75% lost the archive collapses, and some documents survive on their sources.
        assert!(saved > 0);
    }

    #[test]
    fn systematic_without_kills_loses_nothing() {
        let mut c = config(4, 8, 8);
        c.kills = vec![0.0, 1.0];
        let results = run_layout(&c, Layout::Systematic).unwrap();
        assert_eq!(results.len(), 2 * 2 * 2);
        for r in &results {
            assert_eq!(r.layout, Layout::Systematic);
            let expect = if r.kill_target == 0.0 { 0 } else { r.documents };
            assert_eq!(r.lost_documents, expect, "{r:?}");
        }
        for r in step(&results) {
            assert_eq!(r.documents, 1_000);
            assert_eq!(r.overhead, 3.0);
        }
    }

    /// With p = 0 nothing is ever decoded or rebuilt: each source block is one unprotected copy.
    #[test]
    fn systematic_without_parities_is_one_copy() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut c = config(2, 4, 0);
        c.blocks = 1_000;
        let a = build_archive(&c, Layout::Systematic, &mut rng);
        assert_eq!(a.blocks(), 1_000);
        for percent in [10, 50, 90] {
            let before = damage(a.blocks(), percent, &mut rng);
            let mut known = before.clone();
            let ok = fixed_point(&c.params(), &a, &mut known).unwrap();
            assert_eq!(known, before);
            let lost = a.lost_documents(&known, &ok);
            for (d, l) in lost.iter().enumerate() {
                assert_eq!(*l, !(before[2 * d] && before[2 * d + 1]));
            }
        }
        // Over a ring with even arcs, s = 1 loses about the killed fraction (as 1-copy
        // replication, the scheme it is compared with, r = round(1x) = 1).
        let mut c = config(1, 4, 0);
        c.nodes = 100;
        c.id_choices = 1024;
        c.kills = vec![0.3, 0.6];
        for r in run_layout(&c, Layout::Systematic).unwrap() {
            assert_eq!(r.replication, 1);
            assert_eq!(r.overhead, 1.0);
            assert!(
                (r.lost_fraction - r.killed_fraction).abs() < 0.06,
                "{r:?} loses far from the killed fraction"
            );
        }
    }

    /// Systematic pointers reach sources and parities of earlier codewords only.
    #[test]
    fn systematic_pointers_reach_sources() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let c = config(4, 8, 8);
        let a = build_archive(&c, Layout::Systematic, &mut rng);
        assert_eq!(a.stored_per_codeword(), 12);
        let (mut to_sources, mut to_parities) = (0, 0);
        for (cw, ptrs) in a.pointers.iter().enumerate() {
            assert_eq!(ptrs.len(), 8);
            for b in ptrs.iter().flatten() {
                let b = *b as usize;
                assert!(b < cw * 12, "codeword {cw} points at block {b}");
                if b % 12 < 4 {
                    to_sources += 1;
                } else {
                    to_parities += 1;
                }
            }
        }
        // Pointers are uniform over stored blocks: about 1/3 sources.
        let share = f64::from(to_sources) / f64::from(to_sources + to_parities);
        assert!((0.28..0.39).contains(&share), "{share}");
    }

    /// With parities stored after the acknowledgement, no codeword points at a parity of the
    /// `later` codewords before it (they are not stored yet); older parities stay reachable.
    #[test]
    fn later_parities_are_not_pointed_at_while_pending() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let c = SimConfig {
            later: Some(16),
            ..config(4, 8, 8)
        };
        let a = build_archive(&c, Layout::Systematic, &mut rng);
        let (mut old_parities, mut pointers) = (0, 0);
        for (cw, ptrs) in a.pointers.iter().enumerate() {
            for b in ptrs.iter().flatten() {
                let b = *b as usize;
                pointers += 1;
                assert!(b < cw * 12, "codeword {cw} points at block {b}");
                if b % 12 >= 4 {
                    assert!(
                        b / 12 + 16 < cw,
                        "codeword {cw} points at pending parity {b}"
                    );
                    old_parities += 1;
                }
            }
        }
        // The uniform half still reaches old parities.
        assert!(old_parities * 5 > pointers, "{old_parities} of {pointers}");
        assert_eq!(pending_to_source(25, 3, 12, 4, Some(1)), 25, "source kept");
        assert_eq!(
            pending_to_source(30, 3, 12, 4, Some(1)),
            26,
            "pending parity to source"
        );
        assert_eq!(
            pending_to_source(5, 3, 12, 4, Some(1)),
            5,
            "stored parity kept"
        );
        assert_eq!(
            pending_to_source(29, 3, 12, 0, Some(1)),
            29,
            "parity-only untouched"
        );
    }

    /// A seed replays exactly; both layouts share the ring and kill sets; a new seed differs;
    /// systematic (4,8,8) never loses more than parity-only (4,8,12) on the same seed.
    #[test]
    fn runs_replay_and_layouts_share_failures() {
        let mut c = config(4, 8, 8);
        c.kills = vec![0.3, 0.4, 0.5];
        c.seeds = vec![1, 2, 3];
        let sys = run_layout(&c, Layout::Systematic).unwrap();
        assert_eq!(sys, run_layout(&c, Layout::Systematic).unwrap());
        let mut other = c.clone();
        other.seeds = vec![4, 5, 6];
        assert_ne!(
            step(&sys)
                .iter()
                .map(|r| r.lost_documents)
                .collect::<Vec<_>>(),
            step(&run_layout(&other, Layout::Systematic).unwrap())
                .iter()
                .map(|r| r.lost_documents)
                .collect::<Vec<_>>()
        );
        let mut po_config = c.clone();
        po_config.p = 12;
        let po = run_layout(&po_config, Layout::ParityOnly).unwrap();
        assert_eq!(po.len(), sys.len());
        for (a, b) in sys.iter().zip(&po) {
            assert_eq!(
                (a.scheme.as_str(), a.seed, a.kill_target, a.killed_fraction),
                (b.scheme.as_str(), b.seed, b.kill_target, b.killed_fraction)
            );
            assert_eq!(a.overhead, b.overhead);
            assert_eq!(a.documents, b.documents);
            assert!(a.lost_documents <= b.lost_documents, "{a:?} vs {b:?}");
            if a.scheme == "replication" {
                // Same number of stored blocks drawn, so the same replicated keys.
                assert_eq!(a.lost_documents, b.lost_documents);
            }
        }
        assert!(step(&sys).iter().any(|r| r.lost_documents > 0));
        // The table names the layout and sums documents over seeds.
        let summary = summarize(&c, &sys);
        let lost: usize = step(&sys)
            .iter()
            .filter(|r| r.kill_target == 0.5)
            .map(|r| r.lost_documents)
            .sum();
        assert_eq!(summary[2].step_lost_documents, lost);
        assert_eq!(summary[2].step_documents, 3_000);
        let t = table_layout(&c, Layout::Systematic, &summary);
        assert!(t.contains("systematic (s=4,t=8,p=8) x1 = 3.00x"), "{t}");
        assert!(t.contains(&format!("| {lost} / 3000 |")), "{t}");
    }
}
