//! Pointer selection.

use rand::seq::index::sample;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::Error;

/// One chosen pointer: a block of the archive by its position in insertion order, or an anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PointerChoice {
    /// The block at this position of the archive (0 = oldest).
    Block(u64),
    /// Anchor number `i` (see [`crate::BlockKey::anchor`]).
    Anchor(u32),
}

/// Chooses the `t` pointers of a new codeword with RECAST's mixed policy: `tail` of them
/// uniformly from a window over the newest `window` blocks of the archive, the rest uniformly
/// over the whole archive; all distinct. While the archive holds fewer than `t` blocks, every
/// block is used and anchors fill the remaining places.
///
/// Randomness comes in as an argument, so a seeded RNG makes the choice reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointerSelector {
    /// Pointers per codeword.
    pub t: usize,
    /// How many of them come from the tail window.
    pub tail: usize,
    /// Size of the tail window, in blocks.
    pub window: u64,
}

impl PointerSelector {
    /// A selector with `tail` of `t` pointers from a window of `window` newest blocks.
    pub fn new(t: usize, tail: usize, window: u64) -> Result<Self, Error> {
        if tail > t {
            return Err(Error::InvalidParams(format!(
                "tail pointers ({tail}) exceed t ({t})"
            )));
        }
        if tail > 0 && window == 0 {
            return Err(Error::InvalidParams(
                "a tail share needs a non-empty window".into(),
            ));
        }
        Ok(PointerSelector { t, tail, window })
    }

    /// The default mixed policy: half of the pointers from the newest 1,000 blocks, half over
    /// the whole archive.
    #[must_use]
    pub fn mixed(t: usize) -> Self {
        PointerSelector {
            t,
            tail: t / 2,
            window: 1000,
        }
    }

    /// All pointers uniform over the whole archive.
    #[must_use]
    pub fn uniform(t: usize) -> Self {
        PointerSelector {
            t,
            tail: 0,
            window: 0,
        }
    }

    /// Chooses `t` distinct pointers for a codeword written when the archive holds
    /// `archive_len` blocks.
    pub fn select<R: Rng + ?Sized>(&self, archive_len: u64, rng: &mut R) -> Vec<PointerChoice> {
        let t = self.t as u64;
        if archive_len < t {
            let mut out: Vec<PointerChoice> = (0..archive_len).map(PointerChoice::Block).collect();
            let anchors = (t - archive_len) as u32;
            out.extend((0..anchors).map(PointerChoice::Anchor));
            return out;
        }
        let n = archive_len;
        let w = self.window.min(n);
        let k_tail = (self.tail as u64).min(w);
        let mut chosen: Vec<u64> = Vec::with_capacity(self.t);
        if k_tail > 0 {
            // `w` and `k_tail` fit in usize: w <= n and sample() works on usize lengths.
            for i in sample(rng, w as usize, k_tail as usize).iter() {
                chosen.push(n - w + i as u64);
            }
        }
        // The rest uniformly over the whole archive, distinct from what is already chosen.
        // n >= t, so each draw succeeds with probability >= 1/t: rejection terminates fast.
        while (chosen.len() as u64) < t {
            let c = rng.gen_range(0..n);
            if !chosen.contains(&c) {
                chosen.push(c);
            }
        }
        chosen.into_iter().map(PointerChoice::Block).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn anchors_fill_a_small_archive() {
        let sel = PointerSelector::mixed(10);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let c = sel.select(3, &mut rng);
        assert_eq!(c.len(), 10);
        assert_eq!(
            &c[..3],
            &[
                PointerChoice::Block(0),
                PointerChoice::Block(1),
                PointerChoice::Block(2)
            ]
        );
        assert!(c[3..].iter().all(|x| matches!(x, PointerChoice::Anchor(_))));
        let mut d = c.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 10);
    }

    #[test]
    fn distinct_with_tail_share() {
        let sel = PointerSelector::new(10, 5, 50).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for n in [10u64, 11, 20, 60, 1000, 100_000] {
            for _ in 0..200 {
                let c = sel.select(n, &mut rng);
                assert_eq!(c.len(), 10);
                let mut v: Vec<u64> = c
                    .iter()
                    .map(|x| match x {
                        PointerChoice::Block(b) => *b,
                        PointerChoice::Anchor(_) => panic!("anchor in a full archive"),
                    })
                    .collect();
                let tail_hits = v.iter().filter(|&&b| b >= n.saturating_sub(50)).count();
                assert!(tail_hits >= 5.min(n as usize), "n={n}: {tail_hits} in tail");
                assert!(v.iter().all(|&b| b < n));
                v.sort_unstable();
                v.dedup();
                assert_eq!(v.len(), 10);
            }
        }
        assert!(PointerSelector::new(3, 4, 10).is_err());
        assert!(PointerSelector::new(3, 1, 0).is_err());
    }

    #[test]
    fn seeded_selection_is_reproducible() {
        let sel = PointerSelector::mixed(10);
        let a = sel.select(5000, &mut ChaCha8Rng::seed_from_u64(42));
        let b = sel.select(5000, &mut ChaCha8Rng::seed_from_u64(42));
        assert_eq!(a, b);
    }
}
