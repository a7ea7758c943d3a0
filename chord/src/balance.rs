//! Choosing a joining node's ring id so the arcs stay even.
//!
//! With ids drawn uniformly at random, the arcs of an N-node ring are far from equal: the
//! largest is about `ln N` times the mean, so a few nodes can own a large share of the keys
//! (in a 16-node ring, 4 random nodes own up to ~40% instead of 25%). A node that draws several
//! candidate ids and keeps the one that halves the largest arc it can see (the "power of
//! choices") evens the ring out: with enough candidates, nodes joining one after another split
//! the largest arc each time. Ids stay derived from the node's identity (the driver draws key
//! pairs), so they remain verifiable. The durability effect is measured by `entangle-sim
//! --id-choices` (docs/ENTANGLEMENT-RING.md).

use crate::Id;

/// The share of the ring a new node with id `x` would own and leave to its successor: the
/// smaller of `x - pred` and `succ - x`, where `pred` and `succ` are the members around `x`
/// (`members` sorted and without duplicates). Zero if `x` is a member.
fn balance_score(members: &[Id], x: Id) -> Id {
    if members.is_empty() {
        return Id::from_bytes([0xff; 32]);
    }
    let at = members.partition_point(|m| *m < x);
    if members.get(at) == Some(&x) {
        return Id::from_bytes([0; 32]);
    }
    let pred = if at == 0 {
        members[members.len() - 1]
    } else {
        members[at - 1]
    };
    let succ = members.get(at).copied().unwrap_or(members[0]);
    let taken = pred.distance_to(x);
    let left = x.distance_to(succ);
    // With one member, pred == succ and the two halves are the whole ring split at x.
    taken.min(left)
}

/// Of `candidates`, the index of one that splits a large arc near its middle: the first
/// candidate whose score `min(x - pred, succ - x)` is at least 3/4 of the best score. `members`
/// are the ring ids the joining node knows (any order; duplicates allowed).
///
/// With candidates in random order, this is a random pick among the near-best: it lands in the
/// middle quarter of the largest arc (or of any arc nearly as large), splitting it 3:5 at worst,
/// so nodes that join at the same time from the same stale view of the ring spread out instead
/// of all taking the exact midpoint of the same arc. `None` only when `candidates` is empty.
#[must_use]
pub fn best_of(members: &[Id], candidates: &[Id]) -> Option<usize> {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let scores: Vec<Id> = candidates
        .iter()
        .map(|&c| balance_score(&sorted, c))
        .collect();
    let best = scores.iter().copied().max()?;
    // 3/4 of the best score: best - best/4, with best/4 a right shift by two bits.
    let quarter = shr2(best);
    let bar = best.wrapping_sub(quarter);
    scores.iter().position(|&s| s >= bar)
}

/// `x / 4`.
fn shr2(x: Id) -> Id {
    let b = x.as_bytes();
    let mut out = [0u8; 32];
    let mut carry = 0u8;
    for (o, &v) in out.iter_mut().zip(b.iter()) {
        *o = (v >> 2) | (carry << 6);
        carry = v & 0b11;
    }
    Id::from_bytes(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn id(v: u64) -> Id {
        // v in the top limb, so ids spread over the whole ring.
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&v.to_be_bytes());
        Id::from_bytes(b)
    }

    #[test]
    fn picks_the_middle_of_the_largest_arc() {
        let members = [id(0), id(1 << 60), id(1 << 62)];
        // The largest arc is (2^62, 2^64): its midpoint is 2^63 + 2^61.
        let candidates = [id(1 << 59), id(3 << 61), id((1 << 62) + 5), id(u64::MAX)];
        assert_eq!(best_of(&members, &candidates), Some(1));
        // Near the middle (a 7:9 split) is as good as the midpoint, and comes first.
        let near = id((1 << 62) + (7 << 58));
        assert_eq!(
            best_of(&members, &[id(1 << 59), near, id(3 << 61)]),
            Some(1)
        );
        // A 1:3 split is not.
        let off = id((1 << 62) + (1 << 60));
        assert_eq!(best_of(&members, &[off, id(3 << 61)]), Some(1));
    }

    #[test]
    fn quarter() {
        assert_eq!(shr2(id(16)), id(4));
        assert_eq!(
            shr2(id(1)),
            Id::from_bytes({
                let mut b = [0u8; 32];
                b[8] = 0b0100_0000;
                b
            })
        );
    }

    #[test]
    fn a_member_id_is_never_better_than_a_fresh_one() {
        let members = [id(10), id(20)];
        assert_eq!(best_of(&members, &[id(10), id(15)]), Some(1));
        assert_eq!(best_of(&members, &[id(20)]), Some(0));
    }

    #[test]
    fn empty_inputs() {
        assert_eq!(best_of(&[id(1)], &[]), None);
        assert_eq!(best_of(&[], &[id(7), id(9)]), Some(0));
    }

    #[test]
    fn one_member_is_split_in_halves() {
        let members = [id(0)];
        let candidates = [id(1 << 62), id(1 << 63), id(3 << 62)];
        assert_eq!(best_of(&members, &candidates), Some(1));
    }

    /// Sixteen nodes joining one after another with 1,024 candidates each: the largest arc is
    /// at most 2x the mean (random ids: typically 3-4x), and any 4 nodes own at most 3/8 (random
    /// ids: up to about 1/2).
    #[test]
    fn many_choices_even_out_a_ring() {
        for seed in 0..20u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut members: Vec<Id> = Vec::new();
            for _ in 0..16 {
                let candidates: Vec<Id> = (0..1024).map(|_| id(rng.gen())).collect();
                let i = best_of(&members, &candidates).expect("candidates");
                members.push(candidates[i]);
            }
            members.sort_unstable();
            let arcs: Vec<f64> = (0..16)
                .map(|i| {
                    let pred = members[(i + 15) % 16];
                    pred.distance_to(members[i]).high_u64() as f64 / 2f64.powi(64)
                })
                .collect();
            let max = arcs.iter().copied().fold(0.0, f64::max);
            assert!(max <= 2.0 / 16.0, "seed {seed}: largest arc {max}");
            let mut sorted = arcs.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let top4: f64 = sorted[..4].iter().sum();
            assert!(top4 <= 0.375, "seed {seed}: 4 largest arcs own {top4}");
        }
    }

    proptest! {
        #[test]
        fn the_choice_is_the_first_near_best_candidate(
            members in proptest::collection::vec(any::<u64>(), 0..20),
            candidates in proptest::collection::vec(any::<u64>(), 1..20),
        ) {
            let members: Vec<Id> = members.into_iter().map(id).collect();
            let candidates: Vec<Id> = candidates.into_iter().map(id).collect();
            let i = best_of(&members, &candidates).expect("non-empty");
            let mut sorted = members.clone();
            sorted.sort_unstable();
            sorted.dedup();
            // The pick scores at least 3/4 of the best, and no earlier candidate does.
            let scores: Vec<Id> = candidates.iter().map(|&c| balance_score(&sorted, c)).collect();
            let best = scores.iter().copied().max().expect("non-empty");
            let bar = best.wrapping_sub(shr2(best));
            prop_assert!(scores[i] >= bar);
            prop_assert!(scores[..i].iter().all(|&s| s < bar));
            // Order of the members does not matter.
            let mut rev = members.clone();
            rev.reverse();
            prop_assert_eq!(best_of(&rev, &candidates), Some(i));
        }
    }
}
