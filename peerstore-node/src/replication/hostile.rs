//! A hidden, test-only hostile mode, for tests that need a member that lies (never use it on
//! a ring that holds data you want).
//!
//! With `PEERSTORE_TEST_HOSTILE=liar` in its environment (read once, the first time any part
//! of the node asks; the node asks at start and logs a loud warning) a node answers every
//! `HasLocal`, `HasSymbols` and `HasSingle` with "yes, all of them", acknowledges every block
//! put by a peer (`StoreLocal`, and the blocks it pulls itself) and every `StoreSingle` without
//! storing anything, and answers every proof of possession (`Prove`, `ProveSingle`) with
//! random bytes. Everything else it does honestly. It is the Sybil of docs/SECURITY.md
//! ("Verified deletions"): a node that claims to hold what it does not, so that honest nodes
//! drop their copies.
//!
//! With `PEERSTORE_TEST_HOSTILE=stall` a node accepts the long-running member requests
//! (`RepairLocal`, `AuditLocal`, `ScrubLocal`) and never answers them, so that a ring-wide
//! request through another node hangs: the test of the long-request pool (its permits go back
//! when the requester gives up).
//!
//! With `PEERSTORE_TEST_HOSTILE=dirty-reads` a node's record chains answer reads from versions
//! that are not committed yet (`chain::Config::unsafe_read_dirty`): the broken chain that the
//! linearizability test must catch.
//!
//! With `PEERSTORE_TEST_HOSTILE=bad-plans` a node answers `DocumentSources` with each
//! codeword's source blocks in reverse order: a plan whose blocks are all real and verify, but
//! whose bytes put together are not the document. Readers must notice and read another way.

use std::sync::OnceLock;

use tracing::{error, warn};

/// The environment variable that turns the mode on.
pub const VAR: &str = "PEERSTORE_TEST_HOSTILE";

/// How a hostile test node misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// Claims to hold everything, stores nothing, answers proofs with random bytes.
    Liar,
    /// Never answers long-running member requests.
    Stall,
    /// Serves record reads from uncommitted versions.
    DirtyReads,
    /// Names a document's source blocks in the wrong order.
    BadPlans,
}

/// Parses the variable's value: unset or empty is honest, `liar` is [`Hostile::Liar`].
pub fn parse(value: Option<&str>) -> Result<Option<Hostile>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some("liar") => Ok(Some(Hostile::Liar)),
        Some("stall") => Ok(Some(Hostile::Stall)),
        Some("dirty-reads") => Ok(Some(Hostile::DirtyReads)),
        Some("bad-plans") => Ok(Some(Hostile::BadPlans)),
        Some(other) => Err(format!(
            "{VAR}={other:?} is not a hostile mode (they are \"liar\", \"stall\", \"dirty-reads\" and \"bad-plans\")"
        )),
    }
}

/// This process's hostile mode, read from the environment once.
pub fn mode() -> Option<Hostile> {
    static MODE: OnceLock<Option<Hostile>> = OnceLock::new();
    *MODE.get_or_init(|| {
        let value = std::env::var(VAR).ok();
        match parse(value.as_deref()) {
            Ok(Some(m)) => {
                let what = match m {
                    Hostile::Liar => {
                        "it claims to hold every block, stores nothing that peers send and \
                         answers proofs of possession with random bytes"
                    }
                    Hostile::Stall => "it never answers long-running member requests",
                    Hostile::DirtyReads => {
                        "its record chains answer reads from uncommitted versions"
                    }
                    Hostile::BadPlans => "it names documents' source blocks in the wrong order",
                };
                let msg = format!(
                    "{VAR}={m:?}: THIS NODE IS HOSTILE (a test mode): {what}. Never run it on \
                     a ring with real data."
                );
                warn!("{msg}");
                eprintln!("WARNING: {msg}");
                Some(m)
            }
            Ok(None) => None,
            Err(e) => {
                error!("{e}; running honestly");
                None
            }
        }
    })
}

/// Whether this node lies ([`Hostile::Liar`]).
pub fn liar() -> bool {
    mode() == Some(Hostile::Liar)
}

/// Whether this node stalls long-running member requests ([`Hostile::Stall`]).
pub fn stall() -> bool {
    mode() == Some(Hostile::Stall)
}

/// Whether this node's record chains read dirty versions ([`Hostile::DirtyReads`]).
pub fn dirty_reads() -> bool {
    mode() == Some(Hostile::DirtyReads)
}

/// Whether this node names source blocks in the wrong order ([`Hostile::BadPlans`]).
pub fn bad_plans() -> bool {
    mode() == Some(Hostile::BadPlans)
}

/// What a liar answers to `n` challenges: random bytes.
pub fn random_proofs(n: usize) -> Vec<Option<[u8; 32]>> {
    (0..n).map(|_| Some(rand::random())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_modes_are_modes() {
        assert_eq!(parse(None), Ok(None));
        assert_eq!(parse(Some("")), Ok(None));
        assert_eq!(parse(Some("liar")), Ok(Some(Hostile::Liar)));
        assert_eq!(parse(Some(" liar\n")), Ok(Some(Hostile::Liar)));
        assert_eq!(parse(Some("stall")), Ok(Some(Hostile::Stall)));
        assert_eq!(parse(Some("dirty-reads")), Ok(Some(Hostile::DirtyReads)));
        assert_eq!(parse(Some("bad-plans")), Ok(Some(Hostile::BadPlans)));
        assert!(parse(Some("yes")).is_err());
        assert!(parse(Some("LIAR")).is_err());
        let p = random_proofs(3);
        assert_eq!(p.len(), 3);
        assert_ne!(p[0], p[1]);
    }
}
