//! The user's identity (master key + Ed25519 signing key) and its passphrase-sealed file format.
//!
//! # Key file format, version 1 (fixed layout, 234 bytes, integers little-endian)
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 4 | magic `PSID` |
//! | 4 | 1 | format version = 1 |
//! | 5 | 1 | KDF algorithm = 1 (Argon2id, version 0x13) |
//! | 6 | 4 | Argon2 memory cost, KiB |
//! | 10 | 4 | Argon2 time cost (passes) |
//! | 14 | 4 | Argon2 parallelism (lanes) |
//! | 18 | 16 | Argon2 salt (random) |
//! | 34 | 24 | XChaCha20-Poly1305 nonce (random) |
//! | 58 | 32 | user id (Ed25519 public key), readable without the passphrase |
//! | 90 | 32 | passphrase verifier |
//! | 122 | 80 | encrypted secrets: master key (32) + signing seed (32) + tag (16) |
//! | 202 | 32 | BLAKE3 checksum of bytes 0..202 |
//!
//! Argon2id(passphrase, salt) gives 32 bytes from which BLAKE3 `derive_key` makes the
//! key-encryption key and the verifier under distinct contexts. Bytes 0..122 are the AEAD's
//! associated data, so any change to the header is detected. The checksum is not a security
//! measure: it tells accidental damage ([`KeyError::Corrupt`]) apart from a wrong passphrase
//! ([`KeyError::WrongPassphrase`], verifier mismatch) before the expensive KDF runs.

use rand_core::{CryptoRng, RngCore};
use ring::signature::{Ed25519KeyPair, KeyPair};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};

use crate::ids::UserId;
use crate::keys::UserKeys;

/// Current key file format version.
pub const KEY_FILE_VERSION: u8 = 1;
/// Length in bytes of a version-1 key file.
pub const KEY_FILE_LEN: usize = 234;

const MAGIC: &[u8; 4] = b"PSID";
const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const OFF_KDF: usize = 5;
const OFF_M: usize = 6;
const OFF_T: usize = 10;
const OFF_P: usize = 14;
const OFF_SALT: usize = 18;
const OFF_NONCE: usize = OFF_SALT + SALT_LEN; // 34
const OFF_USER: usize = OFF_NONCE + NONCE_LEN; // 58
const OFF_VERIFIER: usize = OFF_USER + 32; // 90
const OFF_SECRETS: usize = OFF_VERIFIER + 32; // 122
const SECRETS_LEN: usize = 64;
const OFF_TAG: usize = OFF_SECRETS + SECRETS_LEN; // 186
const OFF_CHECKSUM: usize = OFF_TAG + 16; // 202
const CTX_KEK: &str = "peerstore-v1 key file key-encryption key";
const CTX_VERIFIER: &str = "peerstore-v1 key file passphrase verifier";

/// Errors of identity handling and key files. Each says what the user can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The passphrase does not unlock this key file.
    #[error("wrong passphrase for this key file")]
    WrongPassphrase,
    /// The bytes are damaged, truncated, or not a PeerStore key file at all.
    #[error(
        "key file is damaged or not a PeerStore key file ({0}); restore it from your exported copy"
    )]
    Corrupt(&'static str),
    /// A key file from a newer (or unknown) version of PeerStore.
    #[error("key file format version {0} is not supported by this build (it reads version 1); upgrade PeerStore")]
    UnsupportedVersion(u8),
    /// Argon2 parameters outside the accepted range.
    #[error("invalid key-derivation parameters: {0}")]
    InvalidKdfParams(&'static str),
}

/// Argon2id cost parameters, stored in the key file so that opening uses what sealing used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB (default 65536 = 64 MiB).
    pub m_cost_kib: u32,
    /// Number of passes over the memory (default 3).
    pub t_cost: u32,
    /// Lanes (default 1).
    pub p_cost: u32,
}

impl KdfParams {
    /// Largest memory cost accepted (1 GiB), so a hostile file cannot exhaust memory.
    pub const MAX_M_COST_KIB: u32 = 1 << 20;
    /// Largest time cost accepted.
    pub const MAX_T_COST: u32 = 64;
    /// Largest parallelism accepted.
    pub const MAX_P_COST: u32 = 16;

    /// Cheap parameters for tests only (256 KiB, 1 pass): offers no protection against
    /// passphrase guessing.
    #[must_use]
    pub const fn insecure_for_tests() -> Self {
        KdfParams {
            m_cost_kib: 256,
            t_cost: 1,
            p_cost: 1,
        }
    }

    /// Checks the ranges accepted by this crate and by Argon2.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.p_cost == 0 || self.p_cost > Self::MAX_P_COST {
            return Err(KeyError::InvalidKdfParams("parallelism must be 1..=16"));
        }
        if self.t_cost == 0 || self.t_cost > Self::MAX_T_COST {
            return Err(KeyError::InvalidKdfParams("time cost must be 1..=64"));
        }
        if self.m_cost_kib < 8 * self.p_cost || self.m_cost_kib > Self::MAX_M_COST_KIB {
            return Err(KeyError::InvalidKdfParams(
                "memory cost must be at least 8 KiB per lane and at most 1 GiB",
            ));
        }
        Ok(())
    }

    /// Runs Argon2id and derives (key-encryption key, verifier).
    fn derive(
        &self,
        passphrase: &[u8],
        salt: &[u8; SALT_LEN],
    ) -> Result<(Zeroizing<[u8; 32]>, [u8; 32]), KeyError> {
        self.validate()?;
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|_| KeyError::InvalidKdfParams("rejected by Argon2"))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, salt, out.as_mut())
            .map_err(|_| KeyError::InvalidKdfParams("rejected by Argon2"))?;
        let kek = Zeroizing::new(blake3::derive_key(CTX_KEK, out.as_ref()));
        let verifier = blake3::derive_key(CTX_VERIFIER, out.as_ref());
        Ok((kek, verifier))
    }
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about a fifth of a second on one core here.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

/// What can be read from a key file without its passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFileInfo {
    /// Key file format version.
    pub version: u8,
    /// The user whose keys the file holds (not authenticated until the file is opened).
    pub user: UserId,
    /// Argon2id parameters the file was sealed with.
    pub kdf: KdfParams,
}

/// A user's secret identity: a random 32-byte master key (from which all symmetric keys are
/// derived, see [`UserKeys`]) and an Ed25519 signing key. Secrets are zeroized on drop and never
/// printed by `Debug`.
#[derive(Clone)]
pub struct Identity {
    master: [u8; 32],
    signing_seed: [u8; 32],
    user: UserId,
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.master.zeroize();
        self.signing_seed.zeroize();
    }
}

impl ZeroizeOnDrop for Identity {}

fn public_key(signing_seed: &[u8; 32]) -> UserId {
    let pair = signing_pair(signing_seed);
    let mut id = [0u8; 32];
    id.copy_from_slice(pair.public_key().as_ref());
    UserId(id)
}

fn signing_pair(signing_seed: &[u8; 32]) -> Ed25519KeyPair {
    // ring only rejects seeds of the wrong length, and ours is a [u8; 32].
    Ed25519KeyPair::from_seed_unchecked(signing_seed).expect("any 32-byte Ed25519 seed is valid")
}

impl Identity {
    /// Creates a new identity from the caller's cryptographically secure RNG.
    #[must_use]
    pub fn generate<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Identity {
        let mut master = Zeroizing::new([0u8; 32]);
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(master.as_mut());
        rng.fill_bytes(seed.as_mut());
        Identity::from_secrets(*master, *seed)
    }

    /// Rebuilds an identity from its two secrets (for tests and known-answer checks; normal
    /// code uses [`Identity::generate`] and [`Identity::open`]).
    #[must_use]
    pub fn from_secrets(master: [u8; 32], signing_seed: [u8; 32]) -> Identity {
        let user = public_key(&signing_seed);
        Identity {
            master,
            signing_seed,
            user,
        }
    }

    /// A sub-identity for `label`: the same master key (so the same data keys: whatever one
    /// encrypts the other reads, and chunk ids deduplicate across them) and a signing key
    /// derived from this one's by HKDF-SHA256 over the label. Its user id is another Ed25519
    /// key, so its signed records live at their own root key; nodes need nothing new to store
    /// them, and cannot tell them apart from other users' (nor link them to this user). Used
    /// for the records of a user's devices (`device:<id>`) and their directory.
    #[must_use]
    pub fn derived(&self, label: &[u8]) -> Identity {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"peerstore-subkey-v1"), &self.signing_seed);
        let mut seed = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit of 255 x 32.
        hk.expand(label, seed.as_mut())
            .expect("a 32-byte HKDF output is always valid");
        Identity::from_secrets(self.master, *seed)
    }

    /// The public user id (Ed25519 public key).
    #[must_use]
    pub fn user_id(&self) -> UserId {
        self.user
    }

    /// Derives the per-purpose symmetric keys (deterministic for a given master key).
    #[must_use]
    pub fn keys(&self) -> UserKeys {
        UserKeys::derive(&self.master)
    }

    /// Ed25519 signature of `msg`. Crate-internal: every signed message carries its own domain
    /// prefix (see [`crate::RootRecord`]), so signatures cannot be replayed across record kinds.
    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let sig = signing_pair(&self.signing_seed).sign(msg);
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        out
    }

    /// Seals the identity under `passphrase` into the key file format (module docs). The same
    /// bytes are what `key export` writes and `key import` reads.
    pub fn seal<R: RngCore + CryptoRng + ?Sized>(
        &self,
        passphrase: &[u8],
        params: &KdfParams,
        rng: &mut R,
    ) -> Result<Vec<u8>, KeyError> {
        params.validate()?;
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut salt);
        rng.fill_bytes(&mut nonce);
        let (kek, verifier) = params.derive(passphrase, &salt)?;

        let mut out = Vec::with_capacity(KEY_FILE_LEN);
        out.extend_from_slice(MAGIC);
        out.push(KEY_FILE_VERSION);
        out.push(KDF_ARGON2ID);
        out.extend_from_slice(&params.m_cost_kib.to_le_bytes());
        out.extend_from_slice(&params.t_cost.to_le_bytes());
        out.extend_from_slice(&params.p_cost.to_le_bytes());
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&self.user.0);
        out.extend_from_slice(&verifier);
        debug_assert_eq!(out.len(), OFF_SECRETS);

        let mut secrets = Zeroizing::new([0u8; SECRETS_LEN]);
        secrets[..32].copy_from_slice(&self.master);
        secrets[32..].copy_from_slice(&self.signing_seed);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(kek.as_ref()));
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &out, secrets.as_mut())
            .expect("XChaCha20-Poly1305 encrypts 64 bytes");
        out.extend_from_slice(secrets.as_ref());
        out.extend_from_slice(&tag);
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        debug_assert_eq!(out.len(), KEY_FILE_LEN);
        Ok(out)
    }

    /// Reads the unauthenticated header of a key file (no passphrase needed): version, user id
    /// and KDF parameters. Checks structure and checksum.
    pub fn inspect(bytes: &[u8]) -> Result<KeyFileInfo, KeyError> {
        if bytes.len() < 5 {
            return Err(KeyError::Corrupt("too short"));
        }
        if &bytes[..4] != MAGIC {
            return Err(KeyError::Corrupt("bad magic bytes"));
        }
        if bytes[4] != KEY_FILE_VERSION {
            return Err(KeyError::UnsupportedVersion(bytes[4]));
        }
        if bytes.len() != KEY_FILE_LEN {
            return Err(KeyError::Corrupt("wrong length"));
        }
        let (body, sum) = bytes.split_at(OFF_CHECKSUM);
        let mut expected = [0u8; 32];
        expected.copy_from_slice(sum);
        if blake3::hash(body) != blake3::Hash::from(expected) {
            return Err(KeyError::Corrupt("checksum mismatch"));
        }
        if bytes[OFF_KDF] != KDF_ARGON2ID {
            return Err(KeyError::Corrupt("unknown key-derivation algorithm"));
        }
        let u32_at = |off: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[off..off + 4]);
            u32::from_le_bytes(b)
        };
        let kdf = KdfParams {
            m_cost_kib: u32_at(OFF_M),
            t_cost: u32_at(OFF_T),
            p_cost: u32_at(OFF_P),
        };
        if kdf.validate().is_err() {
            return Err(KeyError::Corrupt("key-derivation parameters out of range"));
        }
        let mut user = [0u8; 32];
        user.copy_from_slice(&bytes[OFF_USER..OFF_VERIFIER]);
        Ok(KeyFileInfo {
            version: bytes[4],
            user: UserId(user),
            kdf,
        })
    }

    /// Opens a key file with its passphrase.
    ///
    /// Errors: [`KeyError::WrongPassphrase`] if the passphrase is wrong;
    /// [`KeyError::Corrupt`] if the bytes are damaged or not a key file;
    /// [`KeyError::UnsupportedVersion`] for another format version.
    pub fn open(bytes: &[u8], passphrase: &[u8]) -> Result<Identity, KeyError> {
        let info = Identity::inspect(bytes)?;
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&bytes[OFF_SALT..OFF_NONCE]);
        let (kek, verifier) = info.kdf.derive(passphrase, &salt)?;
        let mut stored = [0u8; 32];
        stored.copy_from_slice(&bytes[OFF_VERIFIER..OFF_SECRETS]);
        // Constant-time comparison (blake3::Hash's PartialEq).
        if blake3::Hash::from(verifier) != blake3::Hash::from(stored) {
            return Err(KeyError::WrongPassphrase);
        }
        let mut secrets = Zeroizing::new([0u8; SECRETS_LEN]);
        secrets.copy_from_slice(&bytes[OFF_SECRETS..OFF_TAG]);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(kek.as_ref()));
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(&bytes[OFF_NONCE..OFF_USER]),
                &bytes[..OFF_SECRETS],
                secrets.as_mut(),
                Tag::from_slice(&bytes[OFF_TAG..OFF_CHECKSUM]),
            )
            .map_err(|_| KeyError::Corrupt("authentication failed"))?;
        let mut master = [0u8; 32];
        let mut seed = [0u8; 32];
        master.copy_from_slice(&secrets[..32]);
        seed.copy_from_slice(&secrets[32..]);
        let identity = Identity::from_secrets(master, seed);
        master.zeroize();
        seed.zeroize();
        if identity.user != info.user {
            return Err(KeyError::Corrupt("user id does not match the signing key"));
        }
        Ok(identity)
    }

    /// Opens a key file with `old` and seals it again under `new` (fresh salt and nonce), e.g.
    /// for `key export` under a different passphrase.
    pub fn reseal<R: RngCore + CryptoRng + ?Sized>(
        bytes: &[u8],
        old: &[u8],
        new: &[u8],
        params: &KdfParams,
        rng: &mut R,
    ) -> Result<Vec<u8>, KeyError> {
        Identity::open(bytes, old)?.seal(new, params, rng)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("secrets", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const FAST: KdfParams = KdfParams::insecure_for_tests();

    fn sealed_fixture() -> (Identity, Vec<u8>) {
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        let id = Identity::generate(&mut rng);
        let bytes = id.seal(b"correct horse", &FAST, &mut rng).unwrap();
        (id, bytes)
    }

    fn same(a: &Identity, b: &Identity) -> bool {
        a.master == b.master && a.signing_seed == b.signing_seed && a.user == b.user
    }

    #[test]
    fn seal_open_round_trip() {
        let (id, bytes) = sealed_fixture();
        assert_eq!(bytes.len(), KEY_FILE_LEN);
        let back = Identity::open(&bytes, b"correct horse").unwrap();
        assert!(same(&id, &back));
        assert_eq!(back.keys().chunk_enc, id.keys().chunk_enc);
        let info = Identity::inspect(&bytes).unwrap();
        assert_eq!(
            info,
            KeyFileInfo {
                version: 1,
                user: id.user_id(),
                kdf: FAST
            }
        );
    }

    #[test]
    fn wrong_passphrase_is_reported_as_such() {
        let (_, bytes) = sealed_fixture();
        assert_eq!(
            Identity::open(&bytes, b"correct hors").unwrap_err(),
            KeyError::WrongPassphrase
        );
        assert_eq!(
            Identity::open(&bytes, b"").unwrap_err(),
            KeyError::WrongPassphrase
        );
        assert_eq!(
            KeyError::WrongPassphrase.to_string(),
            "wrong passphrase for this key file"
        );
    }

    #[test]
    fn seal_is_randomized_and_reseal_changes_passphrase() {
        let (id, bytes) = sealed_fixture();
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let again = id.seal(b"correct horse", &FAST, &mut rng).unwrap();
        assert_ne!(bytes, again, "fresh salt and nonce each time");
        let moved =
            Identity::reseal(&bytes, b"correct horse", b"battery", &FAST, &mut rng).unwrap();
        assert!(same(&Identity::open(&moved, b"battery").unwrap(), &id));
        assert_eq!(
            Identity::open(&moved, b"correct horse").unwrap_err(),
            KeyError::WrongPassphrase
        );
        assert_eq!(
            Identity::reseal(&bytes, b"nope", b"battery", &FAST, &mut rng).unwrap_err(),
            KeyError::WrongPassphrase
        );
    }

    #[test]
    fn foreign_and_future_files() {
        let (_, bytes) = sealed_fixture();
        assert_eq!(
            Identity::open(b"", b"x").unwrap_err(),
            KeyError::Corrupt("too short")
        );
        assert_eq!(
            Identity::open(b"-----BEGIN OPENSSH PRIVATE KEY-----", b"x").unwrap_err(),
            KeyError::Corrupt("bad magic bytes")
        );
        let mut future = bytes.clone();
        future[4] = 2;
        assert_eq!(
            Identity::open(&future, b"correct horse").unwrap_err(),
            KeyError::UnsupportedVersion(2)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Identity::open(&longer, b"correct horse").unwrap_err(),
            KeyError::Corrupt("wrong length")
        );
    }

    /// A file whose checksum was recomputed after tampering (a deliberate attack rather than
    /// damage) is still rejected, by the AEAD or by the verifier.
    #[test]
    fn tampering_with_recomputed_checksum_is_rejected() {
        let (_, bytes) = sealed_fixture();
        let reseal_sum = |mut b: Vec<u8>| {
            let sum = blake3::hash(&b[..OFF_CHECKSUM]);
            b[OFF_CHECKSUM..].copy_from_slice(sum.as_bytes());
            b
        };
        // Swap in another user id: the header is AAD, so authentication fails.
        let mut b = bytes.clone();
        b[OFF_USER] ^= 1;
        assert_eq!(
            Identity::open(&reseal_sum(b), b"correct horse").unwrap_err(),
            KeyError::Corrupt("authentication failed")
        );
        // Modified secrets.
        let mut b = bytes.clone();
        b[OFF_SECRETS + 3] ^= 0x80;
        assert_eq!(
            Identity::open(&reseal_sum(b), b"correct horse").unwrap_err(),
            KeyError::Corrupt("authentication failed")
        );
        // Modified salt: the passphrase no longer derives the stored verifier.
        let mut b = bytes.clone();
        b[OFF_SALT] ^= 1;
        assert_eq!(
            Identity::open(&reseal_sum(b), b"correct horse").unwrap_err(),
            KeyError::WrongPassphrase
        );
        // Absurd parameters are refused before Argon2 runs.
        let mut b = bytes.clone();
        b[OFF_M + 3] = 0xff;
        assert_eq!(
            Identity::open(&reseal_sum(b), b"correct horse").unwrap_err(),
            KeyError::Corrupt("key-derivation parameters out of range")
        );
    }

    #[test]
    fn invalid_params_are_refused_when_sealing() {
        let (id, _) = sealed_fixture();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for bad in [
            KdfParams {
                m_cost_kib: 4,
                ..FAST
            },
            KdfParams { t_cost: 0, ..FAST },
            KdfParams { p_cost: 0, ..FAST },
            KdfParams {
                m_cost_kib: KdfParams::MAX_M_COST_KIB + 1,
                ..FAST
            },
        ] {
            assert!(matches!(
                id.seal(b"p", &bad, &mut rng),
                Err(KeyError::InvalidKdfParams(_))
            ));
        }
    }

    /// One full-cost run with the default parameters (64 MiB, t=3).
    #[test]
    fn default_params_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let id = Identity::generate(&mut rng);
        let params = KdfParams::default();
        assert_eq!(
            params,
            KdfParams {
                m_cost_kib: 65536,
                t_cost: 3,
                p_cost: 1
            }
        );
        let bytes = id.seal(b"pass", &params, &mut rng).unwrap();
        assert_eq!(Identity::inspect(&bytes).unwrap().kdf, params);
        assert!(same(&Identity::open(&bytes, b"pass").unwrap(), &id));
    }

    /// RFC 8032 section 7.1, test 1: the signing key is plain Ed25519.
    #[test]
    fn ed25519_known_answer() {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            &mut seed,
        )
        .unwrap();
        let id = Identity::from_secrets([0; 32], seed);
        assert_eq!(
            id.user_id().to_hex(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex::encode(id.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let id = Identity::from_secrets([0xee; 32], [0x11; 32]);
        let s = format!("{id:?}");
        assert!(s.contains(&id.user_id().to_hex()));
        assert!(!s.contains("eeee") && !s.contains("238, 238"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any damage to a key file is an error value (never a panic, never a silent success),
        /// and accidental damage is reported as corruption, not as a wrong passphrase.
        #[test]
        fn any_single_flip_is_detected(pos in 0usize..KEY_FILE_LEN, mask in 1u8..=255) {
            let (_, mut bytes) = sealed_fixture();
            bytes[pos] ^= mask;
            let err = Identity::open(&bytes, b"correct horse").unwrap_err();
            if pos == 4 {
                prop_assert_eq!(err, KeyError::UnsupportedVersion(KEY_FILE_VERSION ^ mask));
            } else {
                prop_assert!(matches!(err, KeyError::Corrupt(_)), "pos {} gave {:?}", pos, err);
            }
        }

        #[test]
        fn any_truncation_is_detected(len in 0usize..KEY_FILE_LEN) {
            let (_, bytes) = sealed_fixture();
            let err = Identity::open(&bytes[..len], b"correct horse").unwrap_err();
            prop_assert!(matches!(err, KeyError::Corrupt(_)), "len {} gave {:?}", len, err);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert!(Identity::open(&data, b"x").is_err());
        }
    }

    #[test]
    fn derived_identities_share_data_keys_but_not_signing_keys() {
        let id = Identity::from_secrets([7; 32], [9; 32]);
        let a = id.derived(b"device:a");
        let a2 = id.derived(b"device:a");
        let b = id.derived(b"device:b");
        assert_eq!(a.user_id(), a2.user_id(), "deterministic");
        assert_ne!(a.user_id(), b.user_id());
        assert_ne!(a.user_id(), id.user_id());
        let (ka, kid) = (a.keys(), id.keys());
        assert_eq!(
            crate::chunk_id(&ka, b"same bytes"),
            crate::chunk_id(&kid, b"same bytes")
        );
        // A record signed by a sub-identity verifies under its own id only.
        let rec = crate::RootRecord::sign(&a, 1, vec![1, 2, 3]).unwrap();
        assert!(rec.verify().is_ok());
        assert_eq!(rec.user, a.user_id());
    }
}
