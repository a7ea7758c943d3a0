//! Signed, versioned root records: each user's pointer to their latest snapshot.
//!
//! A node stores the root of `user` under [`root_key`]`(user)` and replaces it only when
//! [`accept_root_update`] says so: the new record must be signed by `user`, belong to the same
//! user as the stored one, and carry a larger sequence number. So nobody can overwrite another
//! user's root, and an old root cannot be replayed. The payload is opaque to nodes (the client
//! encrypts it with [`crate::seal_root_payload`]).

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::ids::UserId;

/// Current root record format version.
pub const ROOT_RECORD_VERSION: u8 = 1;
/// Largest payload a root record may carry (64 KiB).
pub const MAX_ROOT_PAYLOAD: usize = 64 * 1024;
/// Largest encoded root record: the payload plus version, user, seq, lengths and signature.
pub const MAX_ROOT_RECORD_LEN: usize = MAX_ROOT_PAYLOAD + 128;

const SIGNING_DOMAIN: &[u8] = b"peerstore-root-v1\0";
const ROOT_KEY_DOMAIN: &[u8] = b"peerstore-root-v1";

/// Why a root record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    /// The signature does not verify under the record's user id.
    #[error("root record signature is not valid for user {0} (forged or damaged record)")]
    BadSignature(UserId),
    /// The record is for another user than the stored root.
    #[error("root record is for user {offered}, but this root belongs to user {current}")]
    UserMismatch {
        /// Owner of the stored root.
        current: UserId,
        /// User of the offered record.
        offered: UserId,
    },
    /// The sequence number does not grow: a stale or replayed update.
    #[error("root record sequence {offered} is not newer than the stored {current} (stale or replayed update; fetch the current root and retry)")]
    NotNewer {
        /// Sequence number of the stored root.
        current: u64,
        /// Sequence number of the offered record.
        offered: u64,
    },
    /// The payload exceeds [`MAX_ROOT_PAYLOAD`].
    #[error("root payload is {len} bytes, more than the {max}-byte limit")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The encoded record exceeds [`MAX_ROOT_RECORD_LEN`].
    #[error("encoded root record is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A record version this build does not know.
    #[error("root record format version {0} is not supported by this build")]
    UnsupportedVersion(u8),
    /// The bytes do not decode as a root record.
    #[error("malformed root record: {0}")]
    Malformed(String),
}

/// A user's signed pointer to their latest snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRecord {
    /// Format version ([`ROOT_RECORD_VERSION`]).
    pub version: u8,
    /// Owner and signer.
    pub user: UserId,
    /// Sequence number; every update must increase it.
    pub seq: u64,
    /// Encrypted pointer, opaque to nodes (at most [`MAX_ROOT_PAYLOAD`] bytes).
    pub payload: Vec<u8>,
    /// Ed25519 signature by `user` over [`RootRecord::signed_message`].
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

/// The storage key of `user`'s root: BLAKE3("peerstore-root-v1" || user id). Derived from the
/// user id alone, so a node knows where a record belongs without trusting the sender.
#[must_use]
pub fn root_key(user: &UserId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(ROOT_KEY_DOMAIN);
    h.update(&user.0);
    *h.finalize().as_bytes()
}

impl RootRecord {
    /// Signs a new root record for `identity` with sequence number `seq`.
    pub fn sign(identity: &Identity, seq: u64, payload: Vec<u8>) -> Result<RootRecord, RootError> {
        check_payload(&payload)?;
        let user = identity.user_id();
        let msg = signed_message(ROOT_RECORD_VERSION, &user, seq, &payload);
        Ok(RootRecord {
            version: ROOT_RECORD_VERSION,
            user,
            seq,
            signature: identity.sign(&msg),
            payload,
        })
    }

    /// The exact bytes the signature covers: a domain prefix, version, user, seq (u64 LE),
    /// payload length (u64 LE) and payload.
    #[must_use]
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(self.version, &self.user, self.seq, &self.payload)
    }

    /// Checks version, payload size and the signature under `self.user`.
    pub fn verify(&self) -> Result<(), RootError> {
        if self.version != ROOT_RECORD_VERSION {
            return Err(RootError::UnsupportedVersion(self.version));
        }
        check_payload(&self.payload)?;
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, self.user.0);
        key.verify(&self.signed_message(), &self.signature)
            .map_err(|_| RootError::BadSignature(self.user))
    }

    /// Where this record is stored: [`root_key`] of its user.
    #[must_use]
    pub fn storage_key(&self) -> [u8; 32] {
        root_key(&self.user)
    }

    /// Postcard encoding, refusing records over the size bounds.
    pub fn encode(&self) -> Result<Vec<u8>, RootError> {
        check_payload(&self.payload)?;
        let bytes = postcard::to_allocvec(self).map_err(|e| RootError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_ROOT_RECORD_LEN {
            return Err(RootError::TooLarge {
                len: bytes.len(),
                max: MAX_ROOT_RECORD_LEN,
            });
        }
        Ok(bytes)
    }

    /// Decodes a postcard-encoded record. Checks sizes, version and that no bytes trail, but
    /// not the signature: call [`RootRecord::verify`] (or [`accept_root_update`]).
    pub fn decode(bytes: &[u8]) -> Result<RootRecord, RootError> {
        if bytes.len() > MAX_ROOT_RECORD_LEN {
            return Err(RootError::TooLarge {
                len: bytes.len(),
                max: MAX_ROOT_RECORD_LEN,
            });
        }
        let (record, rest): (RootRecord, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| RootError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(RootError::Malformed(format!(
                "{} trailing bytes after the record",
                rest.len()
            )));
        }
        if record.version != ROOT_RECORD_VERSION {
            return Err(RootError::UnsupportedVersion(record.version));
        }
        check_payload(&record.payload)?;
        Ok(record)
    }
}

fn check_payload(payload: &[u8]) -> Result<(), RootError> {
    if payload.len() > MAX_ROOT_PAYLOAD {
        return Err(RootError::PayloadTooLarge {
            len: payload.len(),
            max: MAX_ROOT_PAYLOAD,
        });
    }
    Ok(())
}

fn signed_message(version: u8, user: &UserId, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_DOMAIN.len() + 1 + 32 + 16 + payload.len());
    msg.extend_from_slice(SIGNING_DOMAIN);
    msg.push(version);
    msg.extend_from_slice(&user.0);
    msg.extend_from_slice(&seq.to_le_bytes());
    msg.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    msg.extend_from_slice(payload);
    msg
}

/// The node-side rule for replacing the root stored at `root_key(new.user)`: `new` must verify
/// under `new.user`, belong to the same user as `current`, and have `seq > current.seq`.
///
/// Resending the exact stored record is refused as [`RootError::NotNewer`]; a node that wants
/// idempotent retries can compare `current == Some(new)` first.
pub fn accept_root_update(current: Option<&RootRecord>, new: &RootRecord) -> Result<(), RootError> {
    new.verify()?;
    if let Some(cur) = current {
        if cur.user != new.user {
            return Err(RootError::UserMismatch {
                current: cur.user,
                offered: new.user,
            });
        }
        if new.seq <= cur.seq {
            return Err(RootError::NotNewer {
                current: cur.seq,
                offered: new.seq,
            });
        }
    }
    Ok(())
}

/// serde for `[u8; 64]` (serde derives arrays only up to 32): a byte string of length 64.
pub(crate) mod sig_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }

    struct SigVisitor;

    impl<'de> Visitor<'de> for SigVisitor {
        type Value = [u8; 64];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("64 signature bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; 64], E> {
            <[u8; 64]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 64], A::Error> {
            let mut out = [0u8; 64];
            for (i, b) in out.iter_mut().enumerate() {
                *b = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(A::Error::invalid_length(65, &self));
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        d.deserialize_bytes(SigVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn identity(seed: u64) -> Identity {
        Identity::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn sign_verify_encode_decode() {
        let alice = identity(1);
        let r = RootRecord::sign(&alice, 1, b"encrypted pointer".to_vec()).unwrap();
        assert_eq!(r.user, alice.user_id());
        r.verify().unwrap();
        let bytes = r.encode().unwrap();
        let back = RootRecord::decode(&bytes).unwrap();
        assert_eq!(back, r);
        back.verify().unwrap();
        assert_eq!(r.storage_key(), root_key(&alice.user_id()));
    }

    #[test]
    fn valid_update_is_accepted() {
        let alice = identity(1);
        let r1 = RootRecord::sign(&alice, 1, vec![1]).unwrap();
        let r2 = RootRecord::sign(&alice, 2, vec![2]).unwrap();
        let r9 = RootRecord::sign(&alice, 9, vec![9]).unwrap();
        assert_eq!(accept_root_update(None, &r1), Ok(()));
        assert_eq!(accept_root_update(Some(&r1), &r2), Ok(()));
        assert_eq!(accept_root_update(Some(&r2), &r9), Ok(()), "gaps are fine");
    }

    #[test]
    fn seq_must_grow_and_replays_are_refused() {
        let alice = identity(1);
        let r1 = RootRecord::sign(&alice, 1, vec![1]).unwrap();
        let r2 = RootRecord::sign(&alice, 2, vec![2]).unwrap();
        let r2b = RootRecord::sign(&alice, 2, vec![22]).unwrap();
        assert_eq!(
            accept_root_update(Some(&r2), &r1),
            Err(RootError::NotNewer {
                current: 2,
                offered: 1
            }),
            "replay of an older root"
        );
        assert_eq!(
            accept_root_update(Some(&r2), &r2),
            Err(RootError::NotNewer {
                current: 2,
                offered: 2
            }),
            "replay of the current root"
        );
        assert_eq!(
            accept_root_update(Some(&r2), &r2b),
            Err(RootError::NotNewer {
                current: 2,
                offered: 2
            }),
            "same seq, other payload"
        );
    }

    #[test]
    fn another_user_cannot_overwrite() {
        let alice = identity(1);
        let mallory = identity(2);
        let ra = RootRecord::sign(&alice, 5, vec![1]).unwrap();
        // Mallory's own, validly signed record cannot replace Alice's root.
        let rm = RootRecord::sign(&mallory, 6, vec![2]).unwrap();
        assert_eq!(
            accept_root_update(Some(&ra), &rm),
            Err(RootError::UserMismatch {
                current: alice.user_id(),
                offered: mallory.user_id()
            })
        );
        assert_ne!(root_key(&alice.user_id()), root_key(&mallory.user_id()));
        // Claiming to be Alice while signing with Mallory's key fails verification.
        let mut forged = RootRecord::sign(&mallory, 6, vec![2]).unwrap();
        forged.user = alice.user_id();
        assert_eq!(
            accept_root_update(Some(&ra), &forged),
            Err(RootError::BadSignature(alice.user_id()))
        );
    }

    #[test]
    fn forged_or_modified_records_fail_verification() {
        let alice = identity(1);
        let r = RootRecord::sign(&alice, 3, vec![7; 100]).unwrap();
        let bad = RootError::BadSignature(alice.user_id());

        let mut m = r.clone();
        m.seq = 4; // bump seq without re-signing
        assert_eq!(accept_root_update(Some(&r), &m), Err(bad.clone()));

        let mut m = r.clone();
        m.payload[0] ^= 1;
        assert_eq!(m.verify(), Err(bad.clone()));

        let mut m = r.clone();
        m.signature[10] ^= 1;
        assert_eq!(m.verify(), Err(bad.clone()));

        let mut m = r.clone();
        m.signature = [0; 64];
        assert_eq!(accept_root_update(None, &m), Err(bad));

        let mut m = r.clone();
        m.version = 2;
        assert_eq!(m.verify(), Err(RootError::UnsupportedVersion(2)));
    }

    #[test]
    fn size_bounds() {
        let alice = identity(1);
        assert!(RootRecord::sign(&alice, 1, vec![0; MAX_ROOT_PAYLOAD]).is_ok());
        assert_eq!(
            RootRecord::sign(&alice, 1, vec![0; MAX_ROOT_PAYLOAD + 1]).unwrap_err(),
            RootError::PayloadTooLarge {
                len: MAX_ROOT_PAYLOAD + 1,
                max: MAX_ROOT_PAYLOAD
            }
        );
        // The largest valid record fits the encoded bound.
        let big = RootRecord::sign(&alice, u64::MAX, vec![0xff; MAX_ROOT_PAYLOAD]).unwrap();
        let bytes = big.encode().unwrap();
        assert!(bytes.len() <= MAX_ROOT_RECORD_LEN);
        assert_eq!(RootRecord::decode(&bytes).unwrap(), big);
        // An oversized payload smuggled into an encoding is refused on decode.
        let mut huge = big.clone();
        huge.payload.push(0);
        let bytes = postcard::to_allocvec(&huge).unwrap();
        assert_eq!(
            RootRecord::decode(&bytes).unwrap_err(),
            RootError::PayloadTooLarge {
                len: MAX_ROOT_PAYLOAD + 1,
                max: MAX_ROOT_PAYLOAD
            }
        );
        assert!(matches!(
            RootRecord::decode(&vec![0; MAX_ROOT_RECORD_LEN + 1]),
            Err(RootError::TooLarge { .. })
        ));
    }

    #[test]
    fn decode_rejects_garbage_and_trailing_bytes() {
        let alice = identity(1);
        let mut bytes = RootRecord::sign(&alice, 1, vec![1, 2, 3])
            .unwrap()
            .encode()
            .unwrap();
        assert!(matches!(
            RootRecord::decode(&[]),
            Err(RootError::Malformed(_))
        ));
        assert!(matches!(
            RootRecord::decode(&bytes[..bytes.len() - 1]),
            Err(RootError::Malformed(_))
        ));
        bytes.push(0);
        assert!(matches!(
            RootRecord::decode(&bytes),
            Err(RootError::Malformed(_))
        ));
        // A length prefix claiming a huge payload does not allocate or panic.
        let mut lying = vec![1u8];
        lying.extend_from_slice(&[0; 32]);
        lying.push(1); // seq
        lying.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // payload len ~4 GiB
        assert!(matches!(
            RootRecord::decode(&lying),
            Err(RootError::Malformed(_))
        ));
    }

    #[test]
    fn signature_bytes_serialize_in_human_readable_formats_too() {
        // The custom [u8; 64] serde also takes the sequence form that text formats produce.
        use serde::de::value::{Error as DeError, SeqDeserializer};
        let seq = SeqDeserializer::<_, DeError>::new(0u8..64);
        let sig = sig_bytes::deserialize(seq).unwrap();
        assert_eq!(sig.to_vec(), (0u8..64).collect::<Vec<_>>());
        let short = SeqDeserializer::<_, DeError>::new(0u8..63);
        assert!(sig_bytes::deserialize(short).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn decode_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(r) = RootRecord::decode(&data) {
                // Whatever decodes must not verify unless it was really signed.
                prop_assert!(r.verify().is_err());
            }
        }

        #[test]
        fn any_flip_of_an_encoded_record_is_caught(pos in any::<prop::sample::Index>(), mask in 1u8..=255) {
            let alice = identity(1);
            let r = RootRecord::sign(&alice, 300, vec![5; 40]).unwrap();
            let mut bytes = r.encode().unwrap();
            let i = pos.index(bytes.len());
            bytes[i] ^= mask;
            let accepted = RootRecord::decode(&bytes).and_then(|d| {
                d.verify()?;
                Ok(d)
            });
            prop_assert!(accepted.is_err(), "flip at {} accepted", i);
        }
    }
}
