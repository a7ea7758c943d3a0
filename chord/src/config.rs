//! Protocol parameters.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Parameters of one [`crate::Node`]. Build with `Config { successors: 16, ..Config::default() }`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Config {
    /// r, the successor-list length. The ring stays correct as long as no member loses all r
    /// successors at once; the rule of thumb is r = 2 log2 N.
    pub successors: usize,
    /// Length of the predecessor list kept for replica ranges (the replicated range of size k
    /// needs k-1 predecessors).
    pub predecessors: usize,
    /// The replication factor k used for [`crate::Event::RangesChanged`]: the number of nodes
    /// (owner + k-1 successors) that hold each key. Must be at most `successors + 1` and
    /// `predecessors + 1`.
    pub replication: usize,
    /// Period of stabilize (ask succ0 for its predecessor and list, then notify it).
    pub stabilize_interval: Duration,
    /// Period of fix_fingers; one finger lookup per tick, round robin.
    pub fix_fingers_interval: Duration,
    /// A request unanswered after this long counts as one failed attempt.
    pub rpc_timeout: Duration,
    /// Extra attempts before a peer is declared dead (1: dead after 2 unanswered attempts).
    pub rpc_retries: u32,
    /// Overall bound on one lookup.
    pub lookup_timeout: Duration,
    /// Bound on the number of nodes a lookup may query.
    pub lookup_max_hops: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            successors: 8,
            predecessors: 8,
            replication: 3,
            stabilize_interval: Duration::from_secs(1),
            fix_fingers_interval: Duration::from_millis(500),
            rpc_timeout: Duration::from_secs(2),
            rpc_retries: 1,
            lookup_timeout: Duration::from_secs(10),
            lookup_max_hops: 64,
        }
    }
}

/// A [`Config`] that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A field is out of range.
    #[error("invalid config: {0}")]
    Invalid(&'static str),
}

impl Config {
    /// Checks the parameters for consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.successors == 0 || self.successors > 1024 {
            return Err(ConfigError::Invalid("successors must be in 1..=1024"));
        }
        if self.predecessors == 0 || self.predecessors > 1024 {
            return Err(ConfigError::Invalid("predecessors must be in 1..=1024"));
        }
        if self.replication == 0
            || self.replication > self.successors + 1
            || self.replication > self.predecessors + 1
        {
            return Err(ConfigError::Invalid(
                "replication must be in 1..=min(successors, predecessors)+1",
            ));
        }
        if self.stabilize_interval.as_millis() == 0 || self.fix_fingers_interval.as_millis() == 0 {
            return Err(ConfigError::Invalid("intervals must be at least 1 ms"));
        }
        if self.rpc_timeout.as_millis() == 0 {
            return Err(ConfigError::Invalid("rpc_timeout must be at least 1 ms"));
        }
        if self.lookup_timeout < self.rpc_timeout {
            return Err(ConfigError::Invalid(
                "lookup_timeout must be >= rpc_timeout",
            ));
        }
        if self.lookup_max_hops == 0 {
            return Err(ConfigError::Invalid("lookup_max_hops must be >= 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_are_rejected() {
        assert_eq!(Config::default().validate(), Ok(()));
        let bad = Config {
            successors: 0,
            ..Config::default()
        };
        assert!(bad.validate().is_err());
        let bad = Config {
            replication: 10,
            ..Config::default()
        };
        assert!(bad.validate().is_err());
        let bad = Config {
            lookup_timeout: Duration::from_millis(1),
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }
}
