//! Signed deletion statements: how a user asks the ring to delete documents they wrote.
//!
//! A node deletes a document only on a [`DeleteStatement`] that names it, is signed by the
//! user recorded as the document's writer, and is recent. Every node that holds a piece of the
//! document checks the statement itself before deleting anything, so neither another user nor
//! a lying member can cause the deletion of someone's data. A replayed statement can only ask
//! again for what its signer already asked for (deleting what is gone is a no-op); the
//! timestamp bounds how long a captured statement is accepted at all.

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::ids::UserId;

/// Most documents one statement names.
pub const MAX_DELETE_KEYS: usize = 1024;
/// How far a statement's time may be from a node's clock, either way, in microseconds (one
/// day: prunes are not that long, clocks are not that wrong).
pub const DELETE_STATEMENT_SKEW_US: u64 = 24 * 3600 * 1_000_000;

const DELETE_DOMAIN: &[u8] = b"peerstore-delete-v1\0";

/// Why a statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeleteError {
    /// The signature does not verify under the statement's user id.
    #[error("deletion statement signature is not valid for user {0} (forged or damaged)")]
    BadSignature(UserId),
    /// Too many keys, or none.
    #[error("a deletion statement names 1 to {MAX_DELETE_KEYS} documents, this one {0}")]
    BadSize(usize),
    /// The statement is older or newer than the clock allows.
    #[error("deletion statement issued at {issued_us} µs is too far from this node's clock ({now_us} µs): sign a new one (check the clocks)")]
    Stale {
        /// When the statement says it was issued.
        issued_us: u64,
        /// The checking node's clock.
        now_us: u64,
    },
    /// A document to delete was written by someone else (or before writers were recorded).
    #[error("document {0} was not written by user {1}: only its writer can delete it")]
    NotWriter(String, UserId),
}

/// "User `user` deletes documents `keys`", signed at `issued_us` (microseconds since the Unix
/// epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteStatement {
    pub user: UserId,
    pub issued_us: u64,
    /// Ring keys of the documents (their document records).
    pub keys: Vec<[u8; 32]>,
    #[serde(with = "crate::root::sig_bytes")]
    pub signature: [u8; 64],
}

impl DeleteStatement {
    /// Signs a statement deleting `keys` as `identity`.
    pub fn sign(
        identity: &Identity,
        issued_us: u64,
        keys: Vec<[u8; 32]>,
    ) -> Result<DeleteStatement, DeleteError> {
        check_size(keys.len())?;
        let user = identity.user_id();
        let msg = signed_message(&user, issued_us, &keys);
        Ok(DeleteStatement {
            user,
            issued_us,
            signature: identity.sign(&msg),
            keys,
        })
    }

    /// The exact bytes the signature covers: a domain prefix, user, time (u64 LE), the number
    /// of keys (u64 LE) and the keys.
    #[must_use]
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(&self.user, self.issued_us, &self.keys)
    }

    /// Checks the size, the signature and that the statement is within
    /// [`DELETE_STATEMENT_SKEW_US`] of `now_us`.
    pub fn verify(&self, now_us: u64) -> Result<(), DeleteError> {
        check_size(self.keys.len())?;
        if self.issued_us.abs_diff(now_us) > DELETE_STATEMENT_SKEW_US {
            return Err(DeleteError::Stale {
                issued_us: self.issued_us,
                now_us,
            });
        }
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, self.user.0);
        key.verify(&self.signed_message(), &self.signature)
            .map_err(|_| DeleteError::BadSignature(self.user))
    }

    /// Whether the statement names `key`.
    #[must_use]
    pub fn names(&self, key: &[u8; 32]) -> bool {
        self.keys.contains(key)
    }
}

fn check_size(n: usize) -> Result<(), DeleteError> {
    if n == 0 || n > MAX_DELETE_KEYS {
        Err(DeleteError::BadSize(n))
    } else {
        Ok(())
    }
}

fn signed_message(user: &UserId, issued_us: u64, keys: &[[u8; 32]]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DELETE_DOMAIN.len() + 48 + 32 * keys.len());
    m.extend_from_slice(DELETE_DOMAIN);
    m.extend_from_slice(&user.0);
    m.extend_from_slice(&issued_us.to_le_bytes());
    m.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for k in keys {
        m.extend_from_slice(k);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn ids() -> (Identity, Identity) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        (Identity::generate(&mut rng), Identity::generate(&mut rng))
    }

    #[test]
    fn signed_statements_verify_and_tampering_fails() {
        let (alice, bob) = ids();
        let now = 1_700_000_000_000_000;
        let s = DeleteStatement::sign(&alice, now, vec![[1; 32], [2; 32]]).unwrap();
        s.verify(now).unwrap();
        s.verify(now + DELETE_STATEMENT_SKEW_US).unwrap();
        assert!(s.names(&[2; 32]) && !s.names(&[3; 32]));
        // Another user's id on Alice's signature, another key, another time: all refused.
        let mut forged = s.clone();
        forged.user = bob.user_id();
        assert_eq!(
            forged.verify(now),
            Err(DeleteError::BadSignature(bob.user_id()))
        );
        let mut more = s.clone();
        more.keys.push([3; 32]);
        assert!(matches!(
            more.verify(now),
            Err(DeleteError::BadSignature(_))
        ));
        let mut later = s.clone();
        later.issued_us += 1;
        assert!(matches!(
            later.verify(now),
            Err(DeleteError::BadSignature(_))
        ));
        // Too old, too new.
        assert!(matches!(
            s.verify(now + DELETE_STATEMENT_SKEW_US + 1),
            Err(DeleteError::Stale { .. })
        ));
        assert!(matches!(
            s.verify(now - DELETE_STATEMENT_SKEW_US - 1),
            Err(DeleteError::Stale { .. })
        ));
        // Bob's own statement is his.
        let b = DeleteStatement::sign(&bob, now, vec![[1; 32]]).unwrap();
        b.verify(now).unwrap();
        assert_eq!(b.user, bob.user_id());
        // Sizes.
        assert_eq!(
            DeleteStatement::sign(&alice, now, vec![]),
            Err(DeleteError::BadSize(0))
        );
        assert!(DeleteStatement::sign(&alice, now, vec![[0; 32]; MAX_DELETE_KEYS]).is_ok());
        assert!(DeleteStatement::sign(&alice, now, vec![[0; 32]; MAX_DELETE_KEYS + 1]).is_err());
        let mut big = s;
        big.keys = vec![[0; 32]; MAX_DELETE_KEYS + 1];
        assert_eq!(
            big.verify(now),
            Err(DeleteError::BadSize(MAX_DELETE_KEYS + 1))
        );
    }

    #[test]
    fn statements_round_trip_through_postcard() {
        let (alice, _) = ids();
        let s = DeleteStatement::sign(&alice, 5, vec![[9; 32]]).unwrap();
        let bytes = postcard::to_allocvec(&s).unwrap();
        let back: DeleteStatement = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        back.verify(5).unwrap();
    }
}
