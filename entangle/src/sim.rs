//! Durability simulator: step-archive versus plain replication on a ring of nodes.
//!
//! The simulator works on abstract symbols (no payload bytes) but applies the codec's decoding
//! rule ([`Params::decodable`]): a codeword recovers when at least `s + t` of its `t + p`
//! symbols are known, and then all of its symbols become known (its parities re-encoded, its
//! pointers rebuilt as input symbols); repair iterates through reverse references to a fixed
//! point, as [`crate::repair()`] does with real bytes.
//!
//! Model, per seed:
//! - `nodes` nodes with random 64-bit ring ids; a block with (random, hash-like) key `k` is
//!   stored on `successor(k)` and the `r - 1` following nodes.
//! - The data is `blocks` source blocks. The step-archive writes them as `ceil(blocks / s)`
//!   codewords, each entangled with `t` pointers chosen by a [`PointerSelector`] over the
//!   parities already written (anchors while fewer than `t` exist), storing `p` parities, each
//!   replicated `replication` times: overhead `p / s * replication`.
//! - Plain replication stores each source block on `round(p / s * replication)` nodes.
//! - A fraction of the nodes is killed (the same nodes for both schemes). A replicated block
//!   survives if any replica survives. The step-archive is repaired to a fixed point.
//! - `lost_fraction` is the fraction of the data lost: for the step-archive, the fraction of
//!   documents lost, a document being one codeword's `s` source blocks (they are lost or
//!   recovered together); for replication, the fraction of source blocks lost.

use std::collections::VecDeque;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::params::Params;
use crate::select::{PointerChoice, PointerSelector};
use crate::Error;

/// One simulation setup.
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
    /// Replicas of each stored parity in the step-archive.
    pub replication: usize,
    /// Pointer selection policy.
    pub selector: PointerSelector,
    /// Ring ids each joining node draws before keeping the one that splits the largest share
    /// of an arc (1: a random id, as plain Chord; more evens out the arcs, as the node's
    /// `--id-choices` does).
    #[serde(default = "one")]
    pub id_choices: usize,
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

    /// Replicas per block of the plain-replication scheme with the same overhead.
    #[must_use]
    pub fn equivalent_replication(&self) -> usize {
        ((self.params().overhead() * self.replication as f64).round() as usize).max(1)
    }

    /// Checks the setup.
    pub fn validate(&self) -> Result<(), Error> {
        self.params().validate()?;
        let bad = |m: &str| Err(Error::InvalidParams(m.into()));
        if self.nodes == 0 {
            return bad("at least one node");
        }
        if self.id_choices == 0 {
            return bad("id_choices must be at least 1");
        }
        if self.replication == 0 || self.replication > self.nodes {
            return bad("replication must be in 1..=nodes");
        }
        if self.equivalent_replication() > self.nodes {
            return bad("equivalent replication exceeds the number of nodes");
        }
        if self.kills.iter().any(|k| !(0.0..=1.0).contains(k)) {
            return bad("kill fractions must be in [0, 1]");
        }
        if self.selector.t != usize::from(self.t) {
            return bad("selector t differs from t");
        }
        Ok(())
    }
}

/// The outcome of one (scheme, seed, kill fraction) run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimResult {
    /// "step" or "replication".
    pub scheme: String,
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

/// Runs every (seed, kill fraction) of `config` for both schemes.
pub fn run(config: &SimConfig) -> Result<Vec<SimResult>, Error> {
    config.validate()?;
    let mut out = Vec::new();
    for &seed in &config.seeds {
        out.extend(run_seed(config, seed)?);
    }
    Ok(out)
}

/// The structure of a step-archive as the simulator sees it: codeword `c` owns blocks
/// `c * p .. (c + 1) * p`, and points at earlier blocks (or anchors).
#[derive(Debug, Clone)]
pub struct SimArchive {
    pointers: Vec<Vec<Option<u32>>>,
    referrers: Vec<Vec<u32>>,
    p: usize,
}

impl SimArchive {
    /// An archive from each codeword's pointers (block index, or `None` for an anchor), with
    /// `p` parities per codeword. Pointers must name blocks that exist.
    pub fn new(pointers: Vec<Vec<Option<u32>>>, p: usize) -> Result<Self, Error> {
        let blocks = pointers.len() * p;
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
        })
    }

    /// Number of codewords.
    #[must_use]
    pub fn codewords(&self) -> usize {
        self.pointers.len()
    }

    /// Number of stored blocks.
    #[must_use]
    pub fn blocks(&self) -> usize {
        self.pointers.len() * self.p
    }
}

fn build_archive(config: &SimConfig, rng: &mut ChaCha8Rng) -> SimArchive {
    let p = usize::from(config.p);
    let docs = config.blocks.div_ceil(usize::from(config.s));
    let mut pointers = Vec::with_capacity(docs);
    let mut referrers: Vec<Vec<u32>> = vec![Vec::new(); docs * p];
    for c in 0..docs {
        let n = (c * p) as u64;
        let ptrs: Vec<Option<u32>> = config
            .selector
            .select(n, rng)
            .into_iter()
            .map(|ch| match ch {
                PointerChoice::Block(b) => Some(b as u32),
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
    }
}

/// Fixed-point repair on abstract symbols. `known[b]` says whether block `b` survived; on
/// return it says whether it is known after repair. Returns, per codeword, whether it is
/// decodable at the fixed point.
pub fn fixed_point(
    params: &Params,
    archive: &SimArchive,
    known: &mut [bool],
) -> Result<Vec<bool>, Error> {
    if known.len() != archive.blocks() || archive.p != params.p() {
        return Err(Error::InvalidParams(format!(
            "{} known flags and p = {} for an archive of {} blocks with p = {}",
            known.len(),
            params.p,
            archive.blocks(),
            archive.p
        )));
    }
    if archive.pointers.iter().any(|ptrs| ptrs.len() != params.t()) {
        return Err(Error::InvalidParams(
            "a codeword does not have t pointers".into(),
        ));
    }
    let docs = archive.pointers.len();
    let p = archive.p;
    let count = |c: usize, known: &[bool]| -> usize {
        let ptr = archive.pointers[c]
            .iter()
            .filter(|b| b.is_none_or(|b| known[b as usize]))
            .count();
        ptr + (c * p..(c + 1) * p).filter(|&b| known[b]).count()
    };
    let total = params.t() + params.p();
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
            .chain(c * p..(c + 1) * p)
            .filter(|&b| !known[b])
            .collect();
        for b in rebuilt {
            known[b] = true;
            let owner = b / p;
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

fn run_seed(config: &SimConfig, seed: u64) -> Result<Vec<SimResult>, Error> {
    let params = config.params();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ring = Ring::joined(config.nodes, config.id_choices, &mut rng);
    let nodes = ring.ids.len();
    let archive = build_archive(config, &mut rng);
    let docs = archive.pointers.len();
    let stored = docs * archive.p;
    let step_keys: Vec<u64> = (0..stored).map(|_| rng.gen()).collect();
    let r_eq = config.equivalent_replication();
    let rep_keys: Vec<u64> = (0..config.blocks).map(|_| rng.gen()).collect();

    let mut out = Vec::new();
    for &fraction in &config.kills {
        let (dead, killed) = kill_set(nodes, fraction, seed);
        let alive = |key: u64, r: usize| ring.holders(key, r).any(|n| !dead[n]);

        let mut known: Vec<bool> = step_keys
            .iter()
            .map(|&k| alive(k, config.replication))
            .collect();
        let lost = fixed_point(&params, &archive, &mut known)?
            .iter()
            .filter(|&&ok| !ok)
            .count();
        out.push(SimResult {
            scheme: "step".into(),
            seed,
            s: config.s,
            t: config.t,
            p: config.p,
            replication: config.replication,
            overhead: params.overhead() * config.replication as f64,
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
        out.push(Summary {
            killed_fraction: killed,
            step_mean: mean(&s),
            step_median: median(&s),
            step_max: max(&s),
            replication_mean: mean(&r),
            replication_max: max(&r),
        });
    }
    out
}

/// The side-by-side table, as Markdown.
#[must_use]
pub fn table(config: &SimConfig, summary: &[Summary]) -> String {
    let r_eq = config.equivalent_replication();
    let mut s = format!(
        "| nodes killed | replication {r_eq}x: % lost (mean / worst) | step (s={},t={},p={}) x{} = {:.2}x: % lost (mean / median / worst) |\n|---|---|---|\n",
        config.s,
        config.t,
        config.p,
        config.replication,
        config.params().overhead() * config.replication as f64
    );
    for row in summary {
        s.push_str(&format!(
            "| {:.0}% | {:.3} / {:.3} | {:.4} / {:.4} / {:.4} |\n",
            row.killed_fraction * 100.0,
            row.replication_mean * 100.0,
            row.replication_max * 100.0,
            row.step_mean * 100.0,
            row.step_median * 100.0,
            row.step_max * 100.0
        ));
    }
    s
}
