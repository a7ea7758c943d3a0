//! The client's error type. Every variant prints as one line that says what to do.

use std::path::PathBuf;

use crate::model::{ManifestError, UnsafePath};
use crate::store::StoreError;

/// Everything that can go wrong in a client command.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("wrong passphrase for {0} (set PEERSTORE_PASSPHRASE to the passphrase given at init)")]
    WrongPassphrase(PathBuf),
    #[error("key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup data is damaged or not readable with this key: {0}")]
    Corrupt(String),
    #[error("{0}")]
    OtherVersion(String),
    #[error("missing from the ring: {0}")]
    Missing(String),
    /// A node answered with something older or other than what this client knows to exist
    /// (a rolled-back root, a swapped snapshot object).
    #[error("{0}")]
    Untrusted(String),
    /// `check` found data missing or damaged.
    #[error("check failed: {0}")]
    Integrity(String),
    #[error("no backup yet for this key (run `peerstore-client backup <dir>` first)")]
    NoBackup,
    #[error("not found in the snapshot: {0}")]
    NotInSnapshot(String),
    #[error("{0}")]
    UnsafePath(#[from] UnsafePath),
    #[error("{0}")]
    Refused(String),
}

impl ClientError {
    /// An I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether retrying later may succeed (node outage).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Store(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl From<ManifestError> for ClientError {
    fn from(e: ManifestError) -> ClientError {
        match e {
            ManifestError::OtherVersion(_) => ClientError::OtherVersion(e.to_string()),
            ManifestError::Malformed(m) => ClientError::Corrupt(format!("manifest: {m}")),
        }
    }
}

/// Result alias of the client library.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
