//! Automatic replica management: which replicated parities go down to one copy, and when.
//!
//! New parities are replicated `r` times, like every block. While a parity is among the newest
//! of the ring it is weakly entangled (few codewords point at it yet), so it keeps its replicas
//! (RECAST's sliding window over the tail). It goes down to one copy when it leaves the window
//! (it is not among the `window` most recently written parities of the ring) or when it is
//! older than `max_age_ms` (a quiet ring still settles at the code's overhead). Every node runs
//! this over the parities it owns every `every_ms`, from its start: nobody has to run `scrub`.
//!
//! An administrator's `scrub --interval` replaces the policy ring-wide; the node keeps that
//! choice in its data directory (`scrub-daemon.json`) so it survives restarts. The rule itself
//! ([`eligible`]) is pure.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use peerstore_proto::ScrubMode;

/// The node's default replica management (configuration `[entanglement.replicas]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaPolicy {
    /// Parities among the `window` newest of the ring keep their replicas.
    pub window: u64,
    /// Parities older than this (milliseconds) go to one copy even inside the window
    /// (0: age alone never does).
    pub max_age_ms: u64,
    /// How often a node manages the parities it owns (milliseconds; 0: only by hand, with
    /// `peerstore-client scrub`).
    pub every_ms: u64,
}

impl Default for ReplicaPolicy {
    /// A window of 1,024 parities (256 MiB at B = 256 KiB, about 85 MiB of documents at
    /// (4,8,12)), an hour at most, checked every minute.
    fn default() -> Self {
        ReplicaPolicy {
            window: 1024,
            max_age_ms: 3_600_000,
            every_ms: 60_000,
        }
    }
}

/// What the daemon of one node runs: the mode, its period, and the age limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daemon {
    pub mode: ScrubMode,
    pub every_ms: u64,
    pub max_age_ms: u64,
}

impl ReplicaPolicy {
    /// The daemon this policy starts with, `None` if management is off.
    #[must_use]
    pub fn daemon(&self) -> Option<Daemon> {
        (self.every_ms > 0).then_some(Daemon {
            mode: ScrubMode::Window {
                blocks: self.window,
            },
            every_ms: self.every_ms,
            max_age_ms: self.max_age_ms,
        })
    }
}

/// Whether a replicated parity goes to one copy now.
///
/// - `mode`: by window, the parity must be older than `window_cutoff_us` (the creation time
///   of the window's oldest parity; `None` while the ring holds no more than the window);
///   by pointers, it must have at least `threshold` referrers.
/// - `max_age_ms` > 0: a parity created at least that long before `now_us` goes regardless.
/// - An unknown creation time never counts as old (its replicas stay).
#[must_use]
pub fn eligible(
    mode: ScrubMode,
    created_us: Option<u64>,
    referrers: usize,
    window_cutoff_us: Option<u64>,
    max_age_ms: u64,
    now_us: u64,
) -> bool {
    let by_mode = match mode {
        ScrubMode::Pointers { threshold } => referrers as u64 >= u64::from(threshold),
        ScrubMode::Window { .. } => matches!(
            (window_cutoff_us, created_us),
            (Some(c), Some(t)) if t < c
        ),
    };
    let by_age = max_age_ms > 0
        && created_us.is_some_and(|t| t.saturating_add(max_age_ms.saturating_mul(1000)) <= now_us);
    by_mode || by_age
}

/// Where a node keeps the daemon an administrator set.
#[must_use]
pub fn file(data_dir: &Path) -> PathBuf {
    data_dir.join("scrub-daemon.json")
}

/// What is persisted: the administrator's choice (`None`: management stopped by hand).
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    daemon: Option<Daemon>,
}

/// Reads the persisted daemon: `Ok(None)` if no administrator ever set one (use the
/// configured policy), `Ok(Some(d))` for the saved choice.
pub fn load(path: &Path) -> Result<Option<Option<Daemon>>, String> {
    use std::io::Read;
    const MAX: u64 = 64 * 1024;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    // Read at most one byte past the bound: a huge file is refused without being loaded.
    let mut bytes = Vec::new();
    file.take(MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX {
        return Err(format!(
            "{}: larger than {MAX} bytes; remove it to fall back to the configured policy",
            path.display()
        ));
    }
    let saved: Saved =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(saved.daemon))
}

/// Persists the administrator's choice durably (temporary file, fsync, rename, fsync of the
/// directory), so that a crash leaves either the old or the new choice.
pub fn save(path: &Path, daemon: Option<Daemon>) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = serde_json::to_vec_pretty(&Saved { daemon })?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: ScrubMode = ScrubMode::Window { blocks: 10 };

    #[test]
    fn window_rule() {
        // Older than the window's oldest parity: out; at or after it: in.
        assert!(eligible(W, Some(99), 0, Some(100), 0, 1_000));
        assert!(!eligible(W, Some(100), 0, Some(100), 0, 1_000));
        // The ring holds no more than the window: nothing leaves it.
        assert!(!eligible(W, Some(1), 0, None, 0, 1_000));
        // Unknown creation time: replicas stay.
        assert!(!eligible(W, None, 0, Some(100), 0, 1_000));
    }

    #[test]
    fn age_rule() {
        let hour_ms = 3_600_000;
        let now = 10 * hour_ms * 1000;
        // Inside the window but an hour old: out.
        assert!(eligible(
            W,
            Some(now - hour_ms * 1000),
            0,
            None,
            hour_ms,
            now
        ));
        // A microsecond younger: stays.
        assert!(!eligible(
            W,
            Some(now - hour_ms * 1000 + 1),
            0,
            None,
            hour_ms,
            now
        ));
        // Age off.
        assert!(!eligible(W, Some(0), 0, None, 0, now));
        // No creation time never counts as old.
        assert!(!eligible(W, None, 0, None, hour_ms, now));
        // A creation time in the future (another node's clock): stays.
        assert!(!eligible(W, Some(now + 5), 0, None, hour_ms, now));
        // Saturating: no overflow at the ends.
        assert!(!eligible(
            W,
            Some(u64::MAX),
            0,
            None,
            u64::MAX,
            u64::MAX - 1
        ));
    }

    #[test]
    fn pointer_rule() {
        let m = ScrubMode::Pointers { threshold: 3 };
        assert!(eligible(m, None, 3, None, 0, 0));
        assert!(!eligible(m, None, 2, None, 0, 0));
        assert!(eligible(m, Some(0), 2, None, 1, 1_000));
    }

    #[test]
    fn default_policy_is_on() {
        let d = ReplicaPolicy::default().daemon().expect("on by default");
        assert_eq!(d.mode, ScrubMode::Window { blocks: 1024 });
        assert_eq!(d.every_ms, 60_000);
        let off = ReplicaPolicy {
            every_ms: 0,
            ..ReplicaPolicy::default()
        };
        assert_eq!(off.daemon(), None);
    }

    #[test]
    fn saved_choice_round_trips_and_survives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(dir.path());
        assert_eq!(load(&path).expect("absent"), None);
        let d = Daemon {
            mode: ScrubMode::Pointers { threshold: 2 },
            every_ms: 5,
            max_age_ms: 7,
        };
        save(&path, Some(d)).expect("save");
        assert_eq!(load(&path).expect("load"), Some(Some(d)));
        save(&path, None).expect("save stop");
        assert_eq!(load(&path).expect("load"), Some(None));
        std::fs::write(&path, b"{ not json").expect("write");
        assert!(load(&path).is_err());
    }
}
