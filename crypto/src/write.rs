//! Signed writes: how a user's document writes are attributed to the user.
//!
//! A node records a document's writer (the only user whose [`crate::DeleteStatement`] can
//! delete it, and the user charged for it) only from a [`WriteAuth`]: the user's signature over
//! the document's hash, the write session it belongs to, the time and a random nonce. A node
//! refuses an authorization that is stale (more than [`WRITE_AUTH_SKEW_US`] from its clock) or
//! whose (user, nonce) it has seen within that window (a replayed request): a captured request
//! cannot be used to write the same document again and again against the user's quota.

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::ids::UserId;

/// How far an authorization's time may be from a node's clock, either way (ten minutes).
pub const WRITE_AUTH_SKEW_US: u64 = 10 * 60 * 1_000_000;

const WRITE_DOMAIN: &[u8] = b"peerstore-write-v1\0";

/// Why an authorization was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteAuthError {
    /// The signature does not verify under the user id, for these bytes.
    #[error("write signature is not valid for user {0} and this document (forged, damaged or for other bytes)")]
    BadSignature(UserId),
    /// Older or newer than the clock allows.
    #[error("write signed at {issued_us} µs is too far from this node's clock ({now_us} µs): check the clocks")]
    Stale {
        /// When the authorization says it was signed.
        issued_us: u64,
        /// The checking node's clock.
        now_us: u64,
    },
}

/// "User `user` writes the document whose BLAKE3 is `content` in session `session`", signed at
/// `issued_us` (microseconds since the Unix epoch) with a random `nonce`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAuth {
    pub user: UserId,
    pub issued_us: u64,
    pub nonce: u64,
    #[serde(with = "crate::root::sig_bytes")]
    pub signature: [u8; 64],
}

impl WriteAuth {
    /// Signs the write of a document with hash `content` (BLAKE3 of its bytes) in write
    /// session `session` (`None`: none) as `identity`.
    #[must_use]
    pub fn sign(
        identity: &Identity,
        content: &[u8; 32],
        session: Option<u64>,
        issued_us: u64,
        nonce: u64,
    ) -> WriteAuth {
        let user = identity.user_id();
        let msg = signed_message(&user, content, session, issued_us, nonce);
        WriteAuth {
            user,
            issued_us,
            nonce,
            signature: identity.sign(&msg),
        }
    }

    /// Checks the signature over `content` and `session`, and that the authorization is
    /// within [`WRITE_AUTH_SKEW_US`] of `now_us`. (Replays are the node's to catch: it keeps
    /// the (user, nonce) pairs it accepted within the window.)
    pub fn verify(
        &self,
        content: &[u8; 32],
        session: Option<u64>,
        now_us: u64,
    ) -> Result<(), WriteAuthError> {
        if self.issued_us.abs_diff(now_us) > WRITE_AUTH_SKEW_US {
            return Err(WriteAuthError::Stale {
                issued_us: self.issued_us,
                now_us,
            });
        }
        self.verify_signature(content, session)
    }

    /// Checks only the signature over `content` and `session`, whatever its age: how a node
    /// checks the authorization kept in a stored document record, long after the write.
    pub fn verify_signature(
        &self,
        content: &[u8; 32],
        session: Option<u64>,
    ) -> Result<(), WriteAuthError> {
        let msg = signed_message(&self.user, content, session, self.issued_us, self.nonce);
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, self.user.0);
        key.verify(&msg, &self.signature)
            .map_err(|_| WriteAuthError::BadSignature(self.user))
    }
}

/// The exact bytes signed: a domain prefix, user, content hash, session (a byte 0, or 1 and
/// the id as u64 LE), time and nonce (u64 LE each).
fn signed_message(
    user: &UserId,
    content: &[u8; 32],
    session: Option<u64>,
    issued_us: u64,
    nonce: u64,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(WRITE_DOMAIN.len() + 32 + 32 + 9 + 16);
    m.extend_from_slice(WRITE_DOMAIN);
    m.extend_from_slice(&user.0);
    m.extend_from_slice(content);
    match session {
        None => m.push(0),
        Some(id) => {
            m.push(1);
            m.extend_from_slice(&id.to_le_bytes());
        }
    }
    m.extend_from_slice(&issued_us.to_le_bytes());
    m.extend_from_slice(&nonce.to_le_bytes());
    m
}

/// The (user, nonce) pairs a node accepted within the skew window, to refuse replays. Bounded:
/// when full, the oldest entries go first (a replay then needs a captured request older than
/// every remembered one and still inside the window).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: std::collections::BTreeMap<(UserId, u64), u64>,
    by_time: std::collections::BTreeSet<(u64, UserId, u64)>,
}

/// Most (user, nonce) pairs a [`ReplayGuard`] remembers.
pub const MAX_REMEMBERED_WRITES: usize = 1 << 16;

impl ReplayGuard {
    /// Records `auth` (already verified) as accepted at `now_us`; `false` if its (user, nonce)
    /// was accepted before within the window: a replay.
    pub fn accept(&mut self, auth: &WriteAuth, now_us: u64) -> bool {
        // Forget what is out of the window on either side of any acceptable time.
        let horizon = now_us.saturating_sub(2 * WRITE_AUTH_SKEW_US);
        while let Some(&(t, u, n)) = self.by_time.first() {
            if t >= horizon && self.seen.len() < MAX_REMEMBERED_WRITES {
                break;
            }
            self.by_time.remove(&(t, u, n));
            self.seen.remove(&(u, n));
        }
        let key = (auth.user, auth.nonce);
        if self.seen.contains_key(&key) {
            return false;
        }
        self.seen.insert(key, auth.issued_us);
        self.by_time.insert((auth.issued_us, auth.user, auth.nonce));
        true
    }

    /// Pairs remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn id(seed: u64) -> Identity {
        Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn signed_writes_verify_only_for_their_bytes_session_and_time() {
        let alice = id(1);
        let now = 1_800_000_000_000_000;
        let c = [7u8; 32];
        let a = WriteAuth::sign(&alice, &c, Some(5), now, 42);
        assert_eq!(a.user, alice.user_id());
        a.verify(&c, Some(5), now + 1_000).unwrap();
        // Other bytes, another session, no session: refused.
        for (content, session) in [([8u8; 32], Some(5)), (c, Some(6)), (c, None)] {
            assert_eq!(
                a.verify(&content, session, now),
                Err(WriteAuthError::BadSignature(alice.user_id()))
            );
        }
        // Another user's id on Alice's signature.
        let mut forged = a.clone();
        forged.user = id(2).user_id();
        assert!(matches!(
            forged.verify(&c, Some(5), now),
            Err(WriteAuthError::BadSignature(_))
        ));
        // Too old, too new.
        assert!(matches!(
            a.verify(&c, Some(5), now + WRITE_AUTH_SKEW_US + 1),
            Err(WriteAuthError::Stale { .. })
        ));
        assert!(matches!(
            a.verify(&c, Some(5), now - WRITE_AUTH_SKEW_US - 1),
            Err(WriteAuthError::Stale { .. })
        ));
        // At rest, age does not matter, the bytes do.
        a.verify_signature(&c, Some(5)).unwrap();
        assert!(a.verify_signature(&[8u8; 32], Some(5)).is_err());
        assert!(forged.verify_signature(&c, Some(5)).is_err());
        // Round trip through postcard.
        let bytes = postcard::to_allocvec(&a).unwrap();
        assert_eq!(postcard::from_bytes::<WriteAuth>(&bytes).unwrap(), a);
    }

    #[test]
    fn replays_are_refused_within_the_window_and_memory_is_bounded() {
        let alice = id(1);
        let now = 1_800_000_000_000_000;
        let a = WriteAuth::sign(&alice, &[1; 32], None, now, 9);
        let mut g = ReplayGuard::default();
        assert!(g.accept(&a, now));
        assert!(!g.accept(&a, now + 5), "a replay");
        let b = WriteAuth::sign(&alice, &[1; 32], None, now, 10);
        assert!(g.accept(&b, now), "another nonce");
        // Long after the window, the pair is forgotten (and the time check refuses it anyway).
        assert!(g.accept(&a, now + 3 * WRITE_AUTH_SKEW_US));
        assert_eq!(g.len(), 1);
        // Bounded.
        let mut g = ReplayGuard::default();
        for n in 0..(MAX_REMEMBERED_WRITES as u64 + 10) {
            let w = WriteAuth {
                user: alice.user_id(),
                issued_us: now + n,
                nonce: n,
                signature: [0; 64],
            };
            assert!(g.accept(&w, now + n));
        }
        assert!(g.len() <= MAX_REMEMBERED_WRITES + 1);
    }
}
