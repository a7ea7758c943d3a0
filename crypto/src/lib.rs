//! Pure cryptography for PeerStore: the user's identity and key file, per-purpose key
//! derivation, content ids and chunk encryption, manifest encryption, and signed root records.
//!
//! The crate does no I/O, reads no clock, draws no randomness of its own (every function that
//! needs randomness takes a caller's `RngCore + CryptoRng`; the client passes the OS RNG, tests a
//! seeded `ChaCha20Rng`) and logs nothing. Secret keys are zeroized on drop and redacted from
//! `Debug` output.
//!
//! | piece | construction |
//! |---|---|
//! | [`Identity`] | random 32-byte master key + Ed25519 key (ring); [`UserId`] = public key |
//! | key file | Argon2id(passphrase) → XChaCha20-Poly1305, header as AAD ([`identity`] module docs) |
//! | [`UserKeys`] | HKDF-SHA256(master key) with one info string per purpose |
//! | [`ChunkId`] | keyed BLAKE3 of the plaintext (dedup within a user, opaque to others) |
//! | chunks | XChaCha20-Poly1305, synthetic nonce from the id, AAD = id ([`seal_chunk`]) |
//! | manifests, root payloads | XChaCha20-Poly1305, random nonce, AAD = caller's context |
//! | [`RootRecord`] | Ed25519-signed `(user, seq, payload)`; [`accept_root_update`] for nodes |
//!
//! # Example
//!
//! ```
//! use crypto::{accept_root_update, open_chunk, seal_chunk, Identity, KdfParams, RootRecord};
//! use rand_chacha::rand_core::SeedableRng;
//!
//! // Real clients use the OS RNG; a seeded RNG keeps this example deterministic.
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//!
//! // Create an identity and seal it into a key file (use KdfParams::default() for real files).
//! let me = Identity::generate(&mut rng);
//! let file = me.seal(b"passphrase", &KdfParams::insecure_for_tests(), &mut rng)?;
//! let me = Identity::open(&file, b"passphrase")?;
//! assert_eq!(
//!     Identity::open(&file, b"guess").unwrap_err(),
//!     crypto::KeyError::WrongPassphrase
//! );
//!
//! // Encrypt a chunk: equal plaintexts give equal ids and ciphertexts (deduplication).
//! let keys = me.keys();
//! let (id, ciphertext) = seal_chunk(&keys, b"hello chunk");
//! assert_eq!(seal_chunk(&keys, b"hello chunk"), (id, ciphertext.clone()));
//! assert_eq!(ciphertext.len(), b"hello chunk".len() + crypto::CHUNK_OVERHEAD);
//! assert_eq!(open_chunk(&keys, &id, &ciphertext)?, b"hello chunk");
//!
//! // Publish a root: the payload is encrypted for the user; nodes only check the signature,
//! // the owner and that the sequence number grows.
//! let payload = crypto::seal_root_payload(&keys, &me.user_id(), 1, b"snapshot 1", &mut rng);
//! let root1 = RootRecord::sign(&me, 1, payload)?;
//! let wire = root1.encode()?;
//! let received = RootRecord::decode(&wire)?;
//! accept_root_update(None, &received)?;
//! let root2 = RootRecord::sign(&me, 2, Vec::new())?;
//! accept_root_update(Some(&received), &root2)?;
//! assert!(accept_root_update(Some(&root2), &received).is_err()); // no replay
//! let pointer = crypto::open_root_payload(&keys, &received.user, received.seq, &received.payload)?;
//! assert_eq!(pointer, b"snapshot 1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod aead;
pub mod delete;
pub mod identity;
mod ids;
mod keys;
mod root;
pub mod write;

pub use aead::{
    chunk_format, chunk_id, chunk_key, open_chunk, open_chunk_shared, open_manifest,
    open_root_payload, open_share, seal_chunk, seal_manifest, seal_root_payload, seal_share,
    CryptoError, CHUNK_FORMAT_V1, CHUNK_FORMAT_VERSION, CHUNK_OVERHEAD, SEALED_FORMAT_VERSION,
    SEALED_OVERHEAD,
};
pub use delete::{DeleteError, DeleteStatement, DELETE_STATEMENT_SKEW_US, MAX_DELETE_KEYS};
pub use identity::{Identity, KdfParams, KeyError, KeyFileInfo, KEY_FILE_LEN, KEY_FILE_VERSION};
pub use ids::{ChunkId, ParseIdError, UserId};
pub use keys::UserKeys;
pub use root::{
    accept_root_update, root_key, RootError, RootRecord, MAX_ROOT_PAYLOAD, MAX_ROOT_RECORD_LEN,
    ROOT_RECORD_VERSION,
};
pub use write::{ReplayGuard, WriteAuth, WriteAuthError, WRITE_AUTH_SKEW_US};
