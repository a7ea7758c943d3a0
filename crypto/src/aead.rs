//! Symmetric encryption of chunks, manifests and root payloads (XChaCha20-Poly1305).
//!
//! All three share one framing: `version (1) || nonce (24) || ciphertext || tag (16)`.
//!
//! * Chunks use a *synthetic* nonce: nonce = BLAKE3-keyed(nonce key, chunk id)[..24], and the
//!   chunk id is itself a keyed MAC of the plaintext. So equal plaintexts give equal ciphertexts
//!   (deduplication works on stored bytes) and a nonce repeats only when the plaintext repeats,
//!   which is the SIV construction's guarantee: the only thing leaked is equality of chunks, to
//!   whoever can already see equal ids.
//! * Manifests and root payloads use a random nonce from the caller's RNG (192-bit nonces make
//!   random collisions negligible) and a caller-supplied context as associated data.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use rand_core::{CryptoRng, RngCore};

use crate::ids::{ChunkId, UserId};
use crate::keys::UserKeys;

/// Format version of encrypted chunks written by this build: 2, each chunk under its own key
/// ([`chunk_key`]), so that a share can carry the keys of exactly the chunks it opens. Format
/// 1 (every chunk under the user's chunk key) is still read.
pub const CHUNK_FORMAT_VERSION: u8 = 2;
/// The first chunk format: every chunk under the user's chunk key (read, never written).
pub const CHUNK_FORMAT_V1: u8 = 1;
/// Domain of [`chunk_key`].
const CHUNK_KEY_DOMAIN: &[u8] = b"peerstore-v2 chunk key";
/// Format version of sealed manifests and root payloads.
pub const SEALED_FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;
/// Bytes an encrypted chunk has beyond its plaintext: version (1) + nonce (24) + tag (16).
pub const CHUNK_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Bytes a sealed manifest or root payload has beyond its plaintext (same framing as chunks).
pub const SEALED_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

const MANIFEST_AAD_DOMAIN: &[u8] = b"peerstore-v1 manifest";
const ROOT_PAYLOAD_AAD_DOMAIN: &[u8] = b"peerstore-v1 root payload";

/// Why decryption failed. None of these reveal which byte was wrong: they tell the caller
/// whether to suspect the data or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Shorter than the fixed framing: truncated or not PeerStore ciphertext.
    #[error("ciphertext is truncated: {len} bytes, at least {min} required")]
    Truncated {
        /// The length given.
        len: usize,
        /// The minimum length of a valid ciphertext.
        min: usize,
    },
    /// The leading version byte is not one this build can read.
    #[error("ciphertext format version {0} is not supported by this build")]
    UnsupportedVersion(u8),
    /// Authentication failed: the data was modified, or it belongs to another key, id or
    /// context.
    #[error("decryption failed: the data was modified, or it was encrypted under another key, id or context")]
    Decrypt,
    /// The chunk decrypted, but its plaintext does not hash to the id it was fetched under.
    #[error("decrypted chunk does not match its id {0}")]
    IdMismatch(ChunkId),
}

/// The id of a plaintext chunk: BLAKE3 keyed with the user's chunk-id key. Needs no encryption,
/// so a client can check whether a chunk is already stored before encrypting it.
#[must_use]
pub fn chunk_id(keys: &UserKeys, plaintext: &[u8]) -> ChunkId {
    ChunkId(*blake3::keyed_hash(&keys.chunk_id, plaintext).as_bytes())
}

fn chunk_nonce(keys: &UserKeys, id: &ChunkId) -> [u8; NONCE_LEN] {
    let h = blake3::keyed_hash(&keys.nonce, &id.0);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&h.as_bytes()[..NONCE_LEN]);
    nonce
}

fn chunk_aad(version: u8, id: &ChunkId) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = version;
    aad[1..].copy_from_slice(&id.0);
    aad
}

/// The key of one chunk (format 2): BLAKE3 keyed with the user's chunk-encryption key over a
/// domain and the chunk's id. Whoever holds it can open that chunk and no other; it tells
/// nothing about the user's keys (a keyed hash).
#[must_use]
pub fn chunk_key(keys: &UserKeys, id: &ChunkId) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(&keys.chunk_enc);
    h.update(CHUNK_KEY_DOMAIN);
    h.update(&id.0);
    *h.finalize().as_bytes()
}

/// Encrypts `plaintext` into `version || nonce || ciphertext || tag`.
fn seal_framed(
    key: &[u8; 32],
    version: u8,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    let mut out = Vec::with_capacity(plaintext.len() + HEADER_LEN + TAG_LEN);
    out.push(version);
    out.extend_from_slice(nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut out[HEADER_LEN..])
        // Only fails for messages longer than XChaCha20's 256 GiB keystream limit, which no
        // in-memory buffer reaches.
        .expect("XChaCha20-Poly1305 encrypts any in-memory buffer");
    out.extend_from_slice(&tag);
    out
}

/// Parses the framing, checks the version byte and decrypts with `aad`.
fn open_framed(
    key: &[u8; 32],
    supported_version: u8,
    aad: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let min = HEADER_LEN + TAG_LEN;
    if data.len() < min {
        return Err(CryptoError::Truncated {
            len: data.len(),
            min,
        });
    }
    if data[0] != supported_version {
        return Err(CryptoError::UnsupportedVersion(data[0]));
    }
    let nonce = XNonce::from_slice(&data[1..HEADER_LEN]);
    let (body, tag) = data[HEADER_LEN..].split_at(data.len() - HEADER_LEN - TAG_LEN);
    let mut plain = body.to_vec();
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt_in_place_detached(nonce, aad, &mut plain, Tag::from_slice(tag))
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(plain)
}

/// Encrypts one chunk deterministically. Returns its id and `version || nonce || ct || tag`
/// ([`CHUNK_OVERHEAD`] bytes longer than the plaintext). Equal plaintexts of one user give equal
/// ids and equal ciphertexts.
#[must_use]
pub fn seal_chunk(keys: &UserKeys, plaintext: &[u8]) -> (ChunkId, Vec<u8>) {
    let id = chunk_id(keys, plaintext);
    let nonce = chunk_nonce(keys, &id);
    let ct = seal_framed(
        &chunk_key(keys, &id),
        CHUNK_FORMAT_VERSION,
        &nonce,
        &chunk_aad(CHUNK_FORMAT_VERSION, &id),
        plaintext,
    );
    (id, ct)
}

/// Decrypts a chunk fetched under `id` and checks that the plaintext's MAC equals `id`.
pub fn open_chunk(
    keys: &UserKeys,
    id: &ChunkId,
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let plain = match ciphertext.first() {
        Some(&CHUNK_FORMAT_V1) => open_framed(
            &keys.chunk_enc,
            CHUNK_FORMAT_V1,
            &chunk_aad(CHUNK_FORMAT_V1, id),
            ciphertext,
        )?,
        _ => open_framed(
            &chunk_key(keys, id),
            CHUNK_FORMAT_VERSION,
            &chunk_aad(CHUNK_FORMAT_VERSION, id),
            ciphertext,
        )?,
    };
    // Constant-time comparison (blake3::Hash's PartialEq).
    let actual = blake3::keyed_hash(&keys.chunk_id, &plain);
    if actual != blake3::Hash::from(id.0) {
        return Err(CryptoError::IdMismatch(*id));
    }
    Ok(plain)
}

/// Decrypts a chunk (format 2) with its own key ([`chunk_key`]), as the holder of a share
/// does: the AEAD tag authenticates the bytes and binds them to `id`. (The id's MAC needs the
/// owner's id key, which a share does not carry; the share's manifest carries each file's
/// BLAKE3 for the reader to check.) Format-1 chunks cannot be opened this way.
pub fn open_chunk_shared(
    key: &[u8; 32],
    id: &ChunkId,
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    open_framed(
        key,
        CHUNK_FORMAT_VERSION,
        &chunk_aad(CHUNK_FORMAT_VERSION, id),
        ciphertext,
    )
}

/// AAD domain of [`seal_share`].
const SHARE_AAD_DOMAIN: &[u8] = b"peerstore-v1 share";

fn share_aad(context: &[u8]) -> Vec<u8> {
    sealed_aad(SHARE_AAD_DOMAIN, context)
}

/// Encrypts what a share carries (its manifest, its record's payload) under the share's own
/// key (random, carried by the capability) with a random nonce; `context` is authenticated.
#[must_use]
pub fn seal_share<R: RngCore + CryptoRng + ?Sized>(
    key: &[u8; 32],
    context: &[u8],
    plaintext: &[u8],
    rng: &mut R,
) -> Vec<u8> {
    seal_random(key, &share_aad(context), plaintext, rng)
}

/// Decrypts what [`seal_share`] produced with the same key and context.
pub fn open_share(key: &[u8; 32], context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    open_framed(key, SEALED_FORMAT_VERSION, &share_aad(context), sealed)
}

/// The format version of a sealed chunk (its first byte), if it has one.
#[must_use]
pub fn chunk_format(ciphertext: &[u8]) -> Option<u8> {
    ciphertext.first().copied()
}

/// Seals metadata (sealed format) under `key` with a random nonce and `aad`.
fn seal_random<R: RngCore + CryptoRng + ?Sized>(
    key: &[u8; 32],
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut R,
) -> Vec<u8> {
    let nonce = random_nonce(rng);
    seal_framed(key, SEALED_FORMAT_VERSION, &nonce, aad, plaintext)
}

fn random_nonce<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    nonce
}

/// The associated data of sealed metadata: the format version, a domain, the context.
fn sealed_aad(domain: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + domain.len() + context.len());
    aad.push(SEALED_FORMAT_VERSION);
    aad.extend_from_slice(domain);
    aad.extend_from_slice(context);
    aad
}

fn manifest_aad(context: &[u8]) -> Vec<u8> {
    sealed_aad(MANIFEST_AAD_DOMAIN, context)
}

/// Encrypts a manifest (or other metadata) under the manifest key with a random nonce.
/// `context` is authenticated but not stored (e.g. `b"manifest" || snapshot id`): opening needs
/// the same context, so a manifest cannot be swapped for another one.
#[must_use]
pub fn seal_manifest<R: RngCore + CryptoRng + ?Sized>(
    keys: &UserKeys,
    context: &[u8],
    plaintext: &[u8],
    rng: &mut R,
) -> Vec<u8> {
    seal_random(&keys.manifest, &manifest_aad(context), plaintext, rng)
}

/// Decrypts what [`seal_manifest`] produced with the same `context`.
pub fn open_manifest(
    keys: &UserKeys,
    context: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    open_framed(
        &keys.manifest,
        SEALED_FORMAT_VERSION,
        &manifest_aad(context),
        sealed,
    )
}

fn root_payload_aad(user: &UserId, seq: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + ROOT_PAYLOAD_AAD_DOMAIN.len() + 40);
    aad.push(SEALED_FORMAT_VERSION);
    aad.extend_from_slice(ROOT_PAYLOAD_AAD_DOMAIN);
    aad.extend_from_slice(&user.0);
    aad.extend_from_slice(&seq.to_le_bytes());
    aad
}

/// Encrypts the payload of a root record (the pointer to the latest snapshot) under the
/// root-payload key, bound to `user` and `seq`: put the result into
/// [`crate::RootRecord::sign`] with the same `seq`.
#[must_use]
pub fn seal_root_payload<R: RngCore + CryptoRng + ?Sized>(
    keys: &UserKeys,
    user: &UserId,
    seq: u64,
    plaintext: &[u8],
    rng: &mut R,
) -> Vec<u8> {
    let nonce = random_nonce(rng);
    seal_framed(
        &keys.root_payload,
        SEALED_FORMAT_VERSION,
        &nonce,
        &root_payload_aad(user, seq),
        plaintext,
    )
}

/// Decrypts a root record's payload; `user` and `seq` are the record's.
pub fn open_root_payload(
    keys: &UserKeys,
    user: &UserId,
    seq: u64,
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    open_framed(
        &keys.root_payload,
        SEALED_FORMAT_VERSION,
        &root_payload_aad(user, seq),
        sealed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn keys(b: u8) -> UserKeys {
        UserKeys::derive(&[b; 32])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn chunk_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), kb in any::<u8>()) {
            let k = keys(kb);
            let (id, ct) = seal_chunk(&k, &data);
            prop_assert_eq!(ct.len(), data.len() + CHUNK_OVERHEAD);
            prop_assert_eq!(id, chunk_id(&k, &data));
            prop_assert_eq!(open_chunk(&k, &id, &ct).unwrap(), data);
        }

        #[test]
        fn chunk_any_single_flip_is_rejected(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            pos in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let k = keys(1);
            let (id, mut ct) = seal_chunk(&k, &data);
            let i = pos.index(ct.len());
            ct[i] ^= mask;
            let err = open_chunk(&k, &id, &ct).unwrap_err();
            if i == 0 && CHUNK_FORMAT_VERSION ^ mask != CHUNK_FORMAT_V1 {
                prop_assert_eq!(err, CryptoError::UnsupportedVersion(CHUNK_FORMAT_VERSION ^ mask));
            } else {
                prop_assert_eq!(err, CryptoError::Decrypt);
            }
        }

        #[test]
        fn chunk_truncation_is_rejected(data in proptest::collection::vec(any::<u8>(), 0..512), cut in any::<prop::sample::Index>()) {
            let k = keys(2);
            let (id, ct) = seal_chunk(&k, &data);
            let n = cut.index(ct.len()); // strictly shorter
            prop_assert!(open_chunk(&k, &id, &ct[..n]).is_err());
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let k = keys(3);
            let id = ChunkId([0; 32]);
            prop_assert!(open_chunk(&k, &id, &data).is_err());
            prop_assert!(open_manifest(&k, b"ctx", &data).is_err());
            prop_assert!(open_root_payload(&k, &UserId([0; 32]), 0, &data).is_err());
        }

        #[test]
        fn manifest_round_trip(data in proptest::collection::vec(any::<u8>(), 0..2048), seed in any::<u64>()) {
            let k = keys(4);
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let sealed = seal_manifest(&k, b"manifest:snap-1", &data, &mut rng);
            prop_assert_eq!(sealed.len(), data.len() + SEALED_OVERHEAD);
            prop_assert_eq!(open_manifest(&k, b"manifest:snap-1", &sealed).unwrap(), data);
        }
    }

    #[test]
    fn equal_plaintext_gives_equal_id_and_ciphertext() {
        let k = keys(5);
        let data = b"the same chunk twice".to_vec();
        let (id1, ct1) = seal_chunk(&k, &data);
        let (id2, ct2) = seal_chunk(&k, &data);
        assert_eq!(id1, id2);
        assert_eq!(ct1, ct2);
        let (id3, ct3) = seal_chunk(&k, b"the same chunk twicE");
        assert_ne!(id1, id3);
        assert_ne!(
            ct1[1..25],
            ct3[1..25],
            "nonces differ for different plaintext"
        );
    }

    #[test]
    fn different_users_get_different_ids_and_cannot_decrypt() {
        let (a, b) = (keys(6), keys(7));
        let data = vec![42u8; 1000];
        let (ida, cta) = seal_chunk(&a, &data);
        let (idb, ctb) = seal_chunk(&b, &data);
        assert_ne!(ida, idb);
        assert_ne!(cta, ctb);
        assert_eq!(open_chunk(&b, &ida, &cta), Err(CryptoError::Decrypt));
        // Not even a plain hash of the data.
        assert_ne!(ida.0, *blake3::hash(&data).as_bytes());
    }

    #[test]
    fn wrong_id_is_rejected() {
        let k = keys(8);
        let (_, ct) = seal_chunk(&k, b"chunk one");
        let (other_id, _) = seal_chunk(&k, b"chunk two");
        assert_eq!(open_chunk(&k, &other_id, &ct), Err(CryptoError::Decrypt));
    }

    #[test]
    fn format_1_chunks_still_open() {
        let k = keys(3);
        let plain = b"written by an older client";
        let id = chunk_id(&k, plain);
        let ct = seal_framed(
            &k.chunk_enc,
            CHUNK_FORMAT_V1,
            &chunk_nonce(&k, &id),
            &chunk_aad(CHUNK_FORMAT_V1, &id),
            plain,
        );
        assert_eq!(open_chunk(&k, &id, &ct).unwrap(), plain);
        // Its key is the user's: a share cannot open it.
        assert_eq!(
            open_chunk_shared(&chunk_key(&k, &id), &id, &ct),
            Err(CryptoError::UnsupportedVersion(CHUNK_FORMAT_V1))
        );
    }

    #[test]
    fn a_chunk_key_opens_its_chunk_and_no_other() {
        let k = keys(4);
        let (a, ct_a) = seal_chunk(&k, b"chunk a");
        let (b, ct_b) = seal_chunk(&k, b"chunk b");
        assert_eq!(chunk_format(&ct_a), Some(CHUNK_FORMAT_VERSION));
        let key_a = chunk_key(&k, &a);
        assert_eq!(open_chunk_shared(&key_a, &a, &ct_a).unwrap(), b"chunk a");
        assert_eq!(
            open_chunk_shared(&key_a, &b, &ct_b),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            open_chunk_shared(&key_a, &a, &ct_b),
            Err(CryptoError::Decrypt)
        );
        assert_ne!(key_a, chunk_key(&k, &b));
        // Another user's key for the same id is another key.
        assert_ne!(key_a, chunk_key(&keys(5), &a));
    }

    #[test]
    fn id_mismatch_is_detected_after_decryption() {
        // A ciphertext that authenticates under id X but whose plaintext MACs to something else
        // can only be made with the encryption key; build one directly to exercise the check.
        let k = keys(9);
        let fake_id = ChunkId([1; 32]);
        let ct = seal_framed(
            &chunk_key(&k, &fake_id),
            CHUNK_FORMAT_VERSION,
            &chunk_nonce(&k, &fake_id),
            &chunk_aad(CHUNK_FORMAT_VERSION, &fake_id),
            b"not the preimage of fake_id",
        );
        assert_eq!(
            open_chunk(&k, &fake_id, &ct),
            Err(CryptoError::IdMismatch(fake_id))
        );
    }

    #[test]
    fn truncated_reports_lengths() {
        let k = keys(10);
        assert_eq!(
            open_chunk(&k, &ChunkId([0; 32]), &[1, 2, 3]),
            Err(CryptoError::Truncated {
                len: 3,
                min: CHUNK_OVERHEAD
            })
        );
        assert_eq!(CHUNK_OVERHEAD, 41);
    }

    #[test]
    fn manifest_context_and_key_are_bound() {
        let k = keys(11);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let sealed = seal_manifest(&k, b"snap-1", b"manifest body", &mut rng);
        assert_eq!(
            open_manifest(&k, b"snap-2", &sealed),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            open_manifest(&keys(12), b"snap-1", &sealed),
            Err(CryptoError::Decrypt)
        );
        // Manifest and root-payload keys are separate: a manifest is not a valid root payload.
        assert_eq!(
            open_root_payload(&k, &UserId([0; 32]), 0, &sealed),
            Err(CryptoError::Decrypt)
        );
        // Random nonces: sealing twice gives different bytes that both open.
        let again = seal_manifest(&k, b"snap-1", b"manifest body", &mut rng);
        assert_ne!(sealed, again);
        assert_eq!(
            open_manifest(&k, b"snap-1", &again).unwrap(),
            b"manifest body"
        );
    }

    #[test]
    fn root_payload_is_bound_to_user_and_seq() {
        let k = keys(13);
        let user = UserId([3; 32]);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let sealed = seal_root_payload(&k, &user, 7, b"pointer", &mut rng);
        assert_eq!(
            open_root_payload(&k, &user, 7, &sealed).unwrap(),
            b"pointer"
        );
        assert_eq!(
            open_root_payload(&k, &user, 8, &sealed),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            open_root_payload(&k, &UserId([4; 32]), 7, &sealed),
            Err(CryptoError::Decrypt)
        );
    }
}
