//! Public 32-byte identifiers: [`UserId`] (an Ed25519 public key) and [`ChunkId`] (a keyed MAC of
//! a chunk's plaintext). Both print as lower-case hex and parse from it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A hex string that is not a 32-byte id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id: expected 64 hex characters (32 bytes)")]
pub struct ParseIdError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            #[must_use]
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Parses 64 hex characters.
            pub fn from_hex(s: &str) -> Result<Self, ParseIdError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s.trim(), &mut out).map_err(|_| ParseIdError)?;
                Ok(Self(out))
            }

            /// Lower-case hex, 64 characters.
            #[must_use]
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, ParseIdError> {
                Self::from_hex(s)
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        // Hex in human-readable formats (JSON, TOML), 32 raw bytes in binary ones (postcard).
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(serializer)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let s = String::deserialize(deserializer)?;
                    Self::from_hex(&s).map_err(serde::de::Error::custom)
                } else {
                    <[u8; 32]>::deserialize(deserializer).map(Self)
                }
            }
        }
    };
}

id_type!(
    /// A user's public identity: their Ed25519 public key. Anyone can verify the user's
    /// signed root records with it; it reveals nothing secret.
    UserId
);

id_type!(
    /// The id of a plaintext chunk: keyed BLAKE3 of the plaintext under the user's chunk-id key.
    /// Equal plaintexts of one user have equal ids (deduplication); to anyone without the key
    /// the id is indistinguishable from random.
    ChunkId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = UserId([0xab; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s, "ab".repeat(32));
        assert_eq!(s.parse::<UserId>(), Ok(id));
        assert_eq!("abc".parse::<UserId>(), Err(ParseIdError));
        assert_eq!("zz".repeat(32).parse::<ChunkId>(), Err(ParseIdError));
        assert_eq!(
            format!("{:?}", ChunkId([1; 32])),
            format!("ChunkId({})", "01".repeat(32))
        );
    }

    #[test]
    fn binary_encoding_is_32_raw_bytes() {
        let id = ChunkId([7; 32]);
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes, vec![7u8; 32]);
        let back: ChunkId = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, id);
        assert!(postcard::from_bytes::<ChunkId>(&bytes[..31]).is_err());
    }
}
