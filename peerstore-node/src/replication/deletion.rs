//! Verified deletions: the one rule every part of the node follows before it drops a copy of a
//! block because other nodes hold it (docs/SECURITY.md, "Verified deletions").
//!
//! A copy is dropped only when
//! 1. this node has held it for at least the minimum age ([`DeletionPolicy::min_age`]; a copy
//!    received a moment ago, while the ring is changing, stays),
//! 2. enough OTHER nodes proved just now that they hold its bytes ([`verify`]): each was sent a
//!    fresh random nonce and had to answer `possession_proof(nonce, bytes)` over the bytes on
//!    its disk, which this node checks against its own verified copy. An index lookup
//!    (`HasLocal`, `HasSymbols`, `HasSingle`) cannot pass; its "yes" is used only to plan
//!    (whom to send a copy, whom to ask), never to delete. At least one other verified holder
//!    is always needed, so the last verified copy is never dropped, and
//! 3. the round still has deletions left ([`Budget`]: at most
//!    [`DeletionPolicy::max_per_round`] per maintenance round, so a mistake or an attack costs
//!    a bounded number of copies per round).
//!
//! How many verified holders each kind of deletion needs ([`decide`] takes the number):
//! - clean-up of a replicated copy outside this node's replica range
//!   ([`crate::maintenance`]): every one of the r members of the key's current replica set;
//! - a replicated copy of a scrubbed parity (`DropReplica`, the stale copies of
//!   `entangled::scrub::drop_stale`): the key's owner, proving the single copy;
//! - a single copy handed to the key's new owner (`hand_off_singles`): that owner, proving the
//!   single copy it was just sent.
//!
//! The minimum age and the per-round limit are settings: defaults here, overridden by the
//! environment ([`MIN_AGE_VAR`], [`MAX_PER_ROUND_VAR`]) until the node's configuration file
//! carries them.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use peerstore_proto::member::{possession_proof, Challenge, MAX_PROVE_KEYS};
use peerstore_proto::{BlockKey, EntRequest, EntResponse, MemberRequest, MemberResponse, NodeAddr};
use tracing::{debug, info, warn};

use crate::ring::Ring;

/// Default minimum age of a copy before it may be dropped because others hold it.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(10 * 60);
/// Largest minimum age (the store tracks arrivals for a day: `store::arrivals::KEEP`).
pub const MAX_MIN_AGE: Duration = crate::store::arrivals::KEEP;
/// Default bound on the copies dropped per maintenance round (per kind of deletion).
pub const DEFAULT_MAX_PER_ROUND: usize = 256;
/// Environment variable with the minimum age in milliseconds.
pub const MIN_AGE_VAR: &str = "PEERSTORE_DELETE_MIN_AGE_MS";
/// Environment variable with the most copies dropped per round.
pub const MAX_PER_ROUND_VAR: &str = "PEERSTORE_DELETE_MAX_PER_ROUND";

/// How cautious deletions are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeletionPolicy {
    /// A copy held for less than this is never dropped because others hold it.
    pub min_age: Duration,
    /// Most copies one maintenance round drops (per kind of deletion; 0 stops them all).
    pub max_per_round: usize,
}

impl Default for DeletionPolicy {
    fn default() -> Self {
        DeletionPolicy {
            min_age: DEFAULT_MIN_AGE,
            max_per_round: DEFAULT_MAX_PER_ROUND,
        }
    }
}

impl DeletionPolicy {
    /// The policy from the values of [`MIN_AGE_VAR`] and [`MAX_PER_ROUND_VAR`] (unset: the
    /// default).
    pub fn parse(min_age_ms: Option<&str>, max_per_round: Option<&str>) -> Result<Self, String> {
        let mut p = DeletionPolicy::default();
        if let Some(v) = min_age_ms {
            let ms: u64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{MIN_AGE_VAR}={v:?} is not a number of milliseconds"))?;
            p.min_age = Duration::from_millis(ms);
            if p.min_age > MAX_MIN_AGE {
                return Err(format!(
                    "{MIN_AGE_VAR}={ms} exceeds {} ms",
                    MAX_MIN_AGE.as_millis()
                ));
            }
        }
        if let Some(v) = max_per_round {
            p.max_per_round = v
                .trim()
                .parse()
                .map_err(|_| format!("{MAX_PER_ROUND_VAR}={v:?} is not a count"))?;
        }
        Ok(p)
    }

    /// A fresh budget for one round.
    #[must_use]
    pub fn budget(&self) -> Budget {
        Budget::new(self.max_per_round)
    }
}

static POLICY: OnceLock<DeletionPolicy> = OnceLock::new();

/// Sets this process's deletion policy (from the node's configuration), before anything reads
/// it; false if it was set or read already (the first value stays).
pub fn set_policy(policy: DeletionPolicy) -> bool {
    POLICY.set(policy).is_ok()
}

/// This process's deletion policy: as [`set_policy`] set it, else the defaults or the
/// environment's values (read once; a value that does not parse is ignored with a warning,
/// keeping the cautious defaults).
pub fn policy() -> DeletionPolicy {
    *POLICY.get_or_init(|| {
        let (a, b) = (
            std::env::var(MIN_AGE_VAR).ok(),
            std::env::var(MAX_PER_ROUND_VAR).ok(),
        );
        match DeletionPolicy::parse(a.as_deref(), b.as_deref()) {
            Ok(p) => {
                if p != DeletionPolicy::default() {
                    info!(
                        min_age_ms = p.min_age.as_millis() as u64,
                        max_per_round = p.max_per_round,
                        "deletion policy set by the environment"
                    );
                }
                p
            }
            Err(e) => {
                warn!("{e}; using the default deletion policy");
                DeletionPolicy::default()
            }
        }
    })
}

/// Why a copy is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Held for less than the minimum age.
    TooYoung { age: Duration, min_age: Duration },
    /// Fewer other nodes proved they hold the bytes than the deletion needs.
    Unverified { verified: usize, needed: usize },
    /// The round's deletions are used up.
    OverBudget,
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keep::TooYoung { age, min_age } => write!(
                f,
                "held for {} ms, less than the minimum age of {} ms",
                age.as_millis(),
                min_age.as_millis()
            ),
            Keep::Unverified { verified, needed } => write!(
                f,
                "{verified} other holders proved they hold the bytes, {needed} needed"
            ),
            Keep::OverBudget => write!(f, "this round's deletions are used up"),
        }
    }
}

/// What a deletion rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// How long this node has held the copy (at most the truth: `BlockStore::held_for`).
    pub age: Duration,
    /// Other nodes that proved just now that they hold the bytes (this node never counts).
    pub verified: usize,
    /// Verified holders the deletion needs (at least 1 is always required).
    pub needed: usize,
}

/// The rule: may this copy be dropped now? Takes one deletion from `budget` if so.
pub fn decide(
    policy: &DeletionPolicy,
    evidence: Evidence,
    budget: &mut Budget,
) -> Result<(), Keep> {
    if evidence.age < policy.min_age {
        return Err(Keep::TooYoung {
            age: evidence.age,
            min_age: policy.min_age,
        });
    }
    let needed = evidence.needed.max(1);
    if evidence.verified < needed {
        return Err(Keep::Unverified {
            verified: evidence.verified,
            needed,
        });
    }
    if budget.take() {
        Ok(())
    } else {
        Err(Keep::OverBudget)
    }
}

/// Whether a copy held for `age` is old enough to be worth verifying (the cheap check first).
#[must_use]
pub fn old_enough(policy: &DeletionPolicy, age: Duration) -> bool {
    age >= policy.min_age
}

/// The deletions one round may still make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    left: usize,
}

impl Budget {
    #[must_use]
    pub fn new(n: usize) -> Budget {
        Budget { left: n }
    }

    /// Deletions left.
    #[must_use]
    pub fn left(&self) -> usize {
        self.left
    }

    /// Whether none are left.
    #[must_use]
    pub fn spent(&self) -> bool {
        self.left == 0
    }

    /// Takes one deletion; false if none is left.
    pub fn take(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}

/// A budget for deletions that others ask for (`DropReplica`): at most `max` per `window`
/// (a maintenance period), however many requests arrive.
#[derive(Debug)]
pub struct WindowBudget {
    window: Duration,
    started: Instant,
    used: usize,
}

impl WindowBudget {
    #[must_use]
    pub fn new(window: Duration, now: Instant) -> WindowBudget {
        WindowBudget {
            window,
            started: now,
            used: 0,
        }
    }

    /// Sets the window (a maintenance period).
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// The window (a maintenance period).
    #[must_use]
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether one more deletion fits the current window (without taking it).
    #[must_use]
    pub fn available(&mut self, max: usize, now: Instant) -> bool {
        self.roll(now);
        self.used < max
    }

    /// Takes one deletion of the current window; false if `max` were taken already.
    pub fn take(&mut self, max: usize, now: Instant) -> bool {
        self.roll(now);
        if self.used >= max {
            return false;
        }
        self.used += 1;
        true
    }

    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.started) >= self.window {
            self.started = now;
            self.used = 0;
        }
    }
}

/// Which of a holder's stores a proof must come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// The replicated store (`MemberRequest::Prove`).
    Replicated,
    /// The single-copy store of scrubbed parities (`EntRequest::ProveSingle`).
    Single,
}

/// Challenges `holder` to prove it holds each of `blocks` (key and this node's own verified
/// bytes) in `store`, with fresh random nonces. Per block, whether the answer matched. A
/// holder that is this node, does not answer, answers something else or answers a different
/// number of proofs proves nothing.
pub async fn verify(
    ring: &Ring,
    holder: &NodeAddr,
    store: Store,
    blocks: &[(BlockKey, &[u8])],
) -> Vec<bool> {
    let mut out = Vec::with_capacity(blocks.len());
    for chunk in blocks.chunks(MAX_PROVE_KEYS) {
        if holder == ring.me() {
            out.extend(chunk.iter().map(|_| false));
            continue;
        }
        let keys: Vec<Challenge> = chunk.iter().map(|(k, _)| (*k, rand::random())).collect();
        let expected: Vec<[u8; 32]> = keys
            .iter()
            .zip(chunk)
            .map(|((_, nonce), (_, bytes))| possession_proof(nonce, bytes))
            .collect();
        let answer = match store {
            Store::Replicated => match ring.call(holder, MemberRequest::Prove { keys }).await {
                Ok(MemberResponse::Proofs { proofs }) => Some(proofs),
                _ => None,
            },
            Store::Single => match ring
                .call_ent(holder, EntRequest::ProveSingle { keys })
                .await
            {
                Ok(EntResponse::Proofs { proofs }) => Some(proofs),
                _ => None,
            },
        };
        let checked = check_proofs(&expected, answer.as_deref());
        if checked.iter().any(|ok| !ok) {
            debug!(peer = %holder.peer, ?store, "a holder failed a proof of possession");
        }
        out.extend(checked);
    }
    out
}

/// Matches a holder's answers against the expected proofs: per challenge, whether the answer
/// is there and equal. No answer, or one of the wrong length, passes nothing.
#[must_use]
pub fn check_proofs(expected: &[[u8; 32]], answer: Option<&[Option<[u8; 32]>]>) -> Vec<bool> {
    match answer {
        Some(proofs) if proofs.len() == expected.len() => expected
            .iter()
            .zip(proofs)
            .map(|(e, p)| p.as_ref() == Some(e))
            .collect(),
        _ => vec![false; expected.len()],
    }
}

/// Answers challenges over the blocks a store gives (`read` returns a key's verified bytes,
/// `None` if not held or damaged). The caller bounds the number of challenges.
pub fn prove_with(
    keys: &[Challenge],
    mut read: impl FnMut(&BlockKey) -> Option<Vec<u8>>,
) -> Vec<Option<[u8; 32]>> {
    keys.iter()
        .map(|(k, nonce)| read(k).map(|bytes| possession_proof(nonce, &bytes)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(age_s: u64, verified: usize, needed: usize) -> Evidence {
        Evidence {
            age: Duration::from_secs(age_s),
            verified,
            needed,
        }
    }

    #[test]
    fn a_copy_goes_only_when_old_verified_and_in_budget() {
        let p = DeletionPolicy {
            min_age: Duration::from_secs(60),
            max_per_round: 2,
        };
        let mut b = p.budget();
        assert_eq!(
            decide(&p, ev(59, 3, 3), &mut b),
            Err(Keep::TooYoung {
                age: Duration::from_secs(59),
                min_age: Duration::from_secs(60)
            })
        );
        assert_eq!(
            decide(&p, ev(600, 2, 3), &mut b),
            Err(Keep::Unverified {
                verified: 2,
                needed: 3
            })
        );
        assert_eq!(b.left(), 2, "kept copies take nothing from the budget");
        assert_eq!(decide(&p, ev(60, 3, 3), &mut b), Ok(()));
        assert_eq!(decide(&p, ev(61, 4, 3), &mut b), Ok(()));
        assert!(b.spent());
        assert_eq!(decide(&p, ev(600, 3, 3), &mut b), Err(Keep::OverBudget));
    }

    #[test]
    fn the_last_verified_copy_is_never_dropped() {
        let p = DeletionPolicy {
            min_age: Duration::ZERO,
            max_per_round: 100,
        };
        let mut b = p.budget();
        // Even a rule that asks for no holders needs one.
        assert_eq!(
            decide(&p, ev(0, 0, 0), &mut b),
            Err(Keep::Unverified {
                verified: 0,
                needed: 1
            })
        );
        assert_eq!(decide(&p, ev(0, 1, 0), &mut b), Ok(()));
        assert_eq!(decide(&p, ev(0, 1, 1), &mut b), Ok(()));
        // A zero budget stops every deletion.
        let none = DeletionPolicy {
            max_per_round: 0,
            ..p
        };
        assert_eq!(
            decide(&none, ev(999, 9, 1), &mut none.budget()),
            Err(Keep::OverBudget)
        );
        assert!(old_enough(&p, Duration::ZERO));
        assert!(!old_enough(
            &DeletionPolicy::default(),
            Duration::from_secs(599)
        ));
        assert!(old_enough(
            &DeletionPolicy::default(),
            Duration::from_secs(600)
        ));
    }

    #[test]
    fn policy_parses_its_variables() {
        assert_eq!(
            DeletionPolicy::parse(None, None),
            Ok(DeletionPolicy::default())
        );
        assert_eq!(
            DeletionPolicy::parse(Some("1500"), Some(" 7 ")),
            Ok(DeletionPolicy {
                min_age: Duration::from_millis(1500),
                max_per_round: 7
            })
        );
        assert!(DeletionPolicy::parse(Some("-1"), None).is_err());
        assert!(DeletionPolicy::parse(Some("10m"), None).is_err());
        assert!(DeletionPolicy::parse(None, Some("many")).is_err());
        assert!(DeletionPolicy::parse(Some("99999999999999"), None).is_err());
        let day = MAX_MIN_AGE.as_millis().to_string();
        assert!(DeletionPolicy::parse(Some(&day), None).is_ok());
    }

    #[test]
    fn only_matching_proofs_count() {
        let nonce = [7u8; 32];
        let bytes = b"the block".to_vec();
        let good = possession_proof(&nonce, &bytes);
        let expected = vec![good, possession_proof(&nonce, b"other")];
        // Right answers pass, wrong, missing and random ones do not.
        assert_eq!(
            check_proofs(&expected, Some(&[Some(good), Some(good)])),
            vec![true, false]
        );
        assert_eq!(
            check_proofs(&expected, Some(&[None, Some(expected[1])])),
            vec![false, true]
        );
        assert_eq!(
            check_proofs(
                &expected,
                Some(&[Some(rand::random()), Some(rand::random())])
            ),
            vec![false, false]
        );
        // Too few or too many answers, or none at all: nothing passes.
        assert_eq!(check_proofs(&expected, Some(&[Some(good)])), vec![false; 2]);
        assert_eq!(
            check_proofs(&expected, Some(&[Some(good), Some(expected[1]), None])),
            vec![false; 2]
        );
        assert_eq!(check_proofs(&expected, None), vec![false; 2]);
        // The prover's side: proofs over what the store reads, None where it has nothing.
        let k = BlockKey::of(&bytes);
        let proofs = prove_with(&[(k, nonce), (BlockKey([1; 32]), nonce)], |key| {
            (*key == k).then(|| bytes.clone())
        });
        assert_eq!(proofs, vec![Some(good), None]);
        // An index that only knows the key cannot answer a fresh nonce.
        assert_ne!(possession_proof(&[8; 32], &bytes), good);
    }

    #[test]
    fn requested_deletions_are_limited_per_window() {
        let t0 = Instant::now();
        let mut w = WindowBudget::new(Duration::from_secs(5), t0);
        assert!(w.available(2, t0));
        assert!(w.take(2, t0));
        assert!(w.take(2, t0 + Duration::from_secs(1)));
        assert!(!w.available(2, t0 + Duration::from_secs(2)));
        assert!(!w.take(2, t0 + Duration::from_secs(4)));
        // The next window starts afresh.
        assert!(w.take(2, t0 + Duration::from_secs(5)));
        w.set_window(Duration::from_secs(1));
        assert!(w.take(2, t0 + Duration::from_secs(5)));
        assert!(!w.take(2, t0 + Duration::from_millis(5500)));
        assert!(w.take(2, t0 + Duration::from_secs(6)));
    }
}
