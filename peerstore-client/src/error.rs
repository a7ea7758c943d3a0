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
    /// `check` found data missing or damaged, or `audit` / `repair` left damage behind.
    #[error("{0}")]
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

    /// What kind of failure this is: it decides the exit status (docs/CLIENT.md, "Exit codes").
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Store(e) => match e {
                StoreError::Unreachable { .. } | StoreError::Unavailable(_) => {
                    ErrorKind::Unavailable
                }
                StoreError::Corrupt(_) => ErrorKind::Integrity,
                StoreError::Forbidden(_) => ErrorKind::Denied,
                StoreError::Full(_)
                | StoreError::Quota(_)
                | StoreError::Rejected(_)
                | StoreError::Other(_) => ErrorKind::Failed,
            },
            ClientError::WrongPassphrase(_) => ErrorKind::Denied,
            // `repo::pick` reports a selector that names no snapshot as a Config error
            // (`no snapshot 7 ...`, `no snapshot "ab12" ...`): that is "not found".
            ClientError::Config(m) if m.starts_with("no snapshot ") => ErrorKind::NotFound,
            ClientError::Config(_) => ErrorKind::Usage,
            ClientError::NoBackup | ClientError::NotInSnapshot(_) => ErrorKind::NotFound,
            ClientError::Corrupt(_)
            | ClientError::Missing(_)
            | ClientError::Untrusted(_)
            | ClientError::Integrity(_)
            | ClientError::UnsafePath(_) => ErrorKind::Integrity,
            ClientError::KeyFile { .. }
            | ClientError::Io { .. }
            | ClientError::OtherVersion(_)
            | ClientError::Refused(_) => ErrorKind::Failed,
        }
    }

    /// The process exit status of this error.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        self.kind().code()
    }

    /// The error object `--json` prints on stdout: `{"error", "code", "kind"}`.
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        self.kind().json(&self.to_string())
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

/// The kinds of failure a command reports, each with its own exit status. The table in
/// docs/CLIENT.md ("Exit codes") lists the same codes; success is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 1: the command ran and failed, or did only part of its work (a backup that left files
    /// out, a prune that left documents, a node full, a quota, an I/O error, ...).
    Failed,
    /// 2: bad arguments or setup (clap's usage errors; no key, no passphrase, no address, a bad
    /// config file or credential, an ambiguous snapshot prefix).
    Usage,
    /// 3: the snapshot, or the path inside a snapshot, does not exist (or there is no backup
    /// at all).
    NotFound,
    /// 4: no node answered, or the ring could not complete the request (after retries): retry
    /// later.
    Unavailable,
    /// 5: backup data is missing from the ring or damaged (a hash or authentication check
    /// failed, a rolled-back root, `check` / `audit` / `repair` found damage).
    Integrity,
    /// 6: access denied: a wrong passphrase, or the ring refused this client's credential.
    Denied,
}

impl ErrorKind {
    /// Every kind, in the order of their codes.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Failed,
        ErrorKind::Usage,
        ErrorKind::NotFound,
        ErrorKind::Unavailable,
        ErrorKind::Integrity,
        ErrorKind::Denied,
    ];

    /// The exit status.
    #[must_use]
    pub fn code(self) -> i32 {
        match self {
            ErrorKind::Failed => 1,
            ErrorKind::Usage => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Unavailable => 4,
            ErrorKind::Integrity => 5,
            ErrorKind::Denied => 6,
        }
    }

    /// The `kind` field of the JSON error object.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Failed => "failed",
            ErrorKind::Usage => "usage",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Denied => "denied",
        }
    }

    /// The JSON error object of a failure of this kind with message `error`.
    #[must_use]
    pub fn json(self, error: &str) -> serde_json::Value {
        serde_json::json!({"error": error, "code": self.code(), "kind": self.as_str()})
    }
}

/// Result alias of the client library.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The table "Exit codes and JSON" in docs/CLIENT.md lists exactly these codes and kinds.
    #[test]
    fn exit_code_table_matches_the_docs() {
        let doc = include_str!("../../docs/CLIENT.md");
        let start = doc
            .find("### Exit codes and JSON")
            .expect("docs/CLIENT.md has the section");
        let rows: Vec<(i32, String)> = doc[start..]
            .lines()
            .skip_while(|l| !l.starts_with("| code |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (
                    cells[1].parse().expect("a code"),
                    cells[2].trim_matches('`').to_string(),
                )
            })
            .collect();
        let mut want = vec![(0, String::new())];
        want.extend(
            ErrorKind::ALL
                .iter()
                .map(|k| (k.code(), k.as_str().to_string())),
        );
        assert_eq!(rows, want);
    }

    #[test]
    fn errors_map_to_their_kinds() {
        let kind = |e: ClientError| e.kind();
        assert_eq!(
            kind(ClientError::Config(
                "no snapshot 7 (it may have been forgotten)".into()
            )),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(ClientError::Config(
                "snapshot prefix \"ab\" is ambiguous".into()
            )),
            ErrorKind::Usage
        );
        assert_eq!(kind(ClientError::NoBackup), ErrorKind::NotFound);
        assert_eq!(
            kind(ClientError::NotInSnapshot("a/b".into())),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(ClientError::Store(StoreError::Unreachable {
                addr: "x".into(),
                reason: "y".into()
            })),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind(ClientError::Store(StoreError::Unavailable("x".into()))),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind(ClientError::Store(StoreError::Corrupt("k".into()))),
            ErrorKind::Integrity
        );
        assert_eq!(
            kind(ClientError::Integrity("check failed".into())),
            ErrorKind::Integrity
        );
        assert_eq!(
            kind(ClientError::Store(StoreError::Forbidden("f".into()))),
            ErrorKind::Denied
        );
        assert_eq!(
            kind(ClientError::WrongPassphrase("k".into())),
            ErrorKind::Denied
        );
        assert_eq!(
            kind(ClientError::Store(StoreError::Quota("q".into()))),
            ErrorKind::Failed
        );
        let j = ClientError::NoBackup.json();
        assert_eq!(j["code"], 3);
        assert_eq!(j["kind"], "not_found");
        assert!(j["error"].as_str().unwrap().starts_with("no backup yet"));
        let codes: std::collections::BTreeSet<i32> =
            ErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert!(!codes.contains(&0));
    }
}
