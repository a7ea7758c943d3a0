//! The entangled layer's settings and state: the ring's entanglement configuration, the
//! encoder's memory and the [`Entangled`] context that every part of the layer works on. The
//! parts ([`super::write`], [`super::read`], [`super::meta`], [`super::refs`], [`super::repair`],
//! [`super::scrub`]) use this module; the layer's entry points in `mod.rs` use them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use peerstore_proto::BlockKey;

use crate::replication::deletion::WindowBudget;
use crate::replication::Replication;
use crate::ring::Ring;
use crate::store::BlockStore;

/// `type` of the ring's entanglement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntanglementType {
    /// RECAST step-archive: documents are stored as parities only.
    Step,
    /// Plain replicated blocks.
    None,
}

/// The ring's entanglement settings (`entanglement = { type = "step", layout = "systematic",
/// s = 4, t = 8, p = 8, block_size = 262144 }` in the node's TOML). Every node of a ring must
/// use the same values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntanglementConfig {
    /// "step" or "none".
    #[serde(rename = "type")]
    pub kind: EntanglementType,
    /// What a codeword stores: "systematic" (its `s` sources, read directly, and `p` parities;
    /// the default) or "parity-only" (RECAST: only the `p` parities). docs/ENTANGLE-SIM.md,
    /// "Layout choice (issue 11)".
    pub layout: entangle::Layout,
    /// Source blocks per codeword.
    pub s: u16,
    /// Pointers per codeword.
    pub t: u16,
    /// Parities per codeword (stored besides the sources in the systematic layout).
    pub p: u16,
    /// The ring's fixed block size B in bytes.
    pub block_size: u32,
    /// Newest parities the encoder keeps in memory for tail pointers (the tail window).
    pub tail_window: usize,
    /// How often the repair worker checks the codewords this node owns, in milliseconds.
    pub repair_ms: u64,
    /// m: codeword records, document records and reverse references live on the owner of
    /// their ring position and its next m - 1 successors (every node in a ring of at most m),
    /// so that losing nodes loses metadata far less often than data
    /// (docs/ENTANGLEMENT-RING.md, "Metadata replication"). At least `replication`.
    pub metadata_replication: usize,
    /// Automatic replica management (module `policy`): on by default.
    #[serde(default)]
    pub replicas: super::policy::ReplicaPolicy,
}

impl Default for EntanglementConfig {
    /// Systematic (4, 8, 8) with 256 KiB blocks: 3x, the same code graph and the same losses
    /// as parity-only (4, 8, 12), but a healthy read fetches the 4 sources and decodes nothing
    /// (docs/ENTANGLE-SIM.md, "Layout choice (issue 11)"; docs/ENTANGLE-SYSTEMATIC.md).
    fn default() -> Self {
        EntanglementConfig {
            kind: EntanglementType::Step,
            layout: entangle::Layout::Systematic,
            s: 4,
            t: 8,
            p: 8,
            block_size: 256 * 1024,
            tail_window: 100,
            repair_ms: 60_000,
            metadata_replication: 10,
            replicas: super::policy::ReplicaPolicy::default(),
        }
    }
}

impl EntanglementConfig {
    /// The code parameters, `None` for type "none".
    #[must_use]
    pub fn params(&self) -> Option<entangle::Params> {
        match self.kind {
            EntanglementType::Step => Some(entangle::Params::new(
                self.s,
                self.t,
                self.p,
                self.block_size,
            )),
            EntanglementType::None => None,
        }
    }

    /// Checks the parameters and that a parity fits in one block of the protocol.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = self.params() {
            p.validate_for(self.layout)
                .map_err(|e| format!("entanglement ({}): {e}", self.layout.name()))?;
            let stored = entangle::block::header_len_for(&p, self.layout) + p.block();
            if stored > peerstore_proto::MAX_BLOCK_SIZE {
                return Err(format!(
                    "entanglement: a stored block of {stored} bytes exceeds the block bound {}",
                    peerstore_proto::MAX_BLOCK_SIZE
                ));
            }
            if self.repair_ms == 0 {
                return Err("entanglement: repair_ms must be positive".into());
            }
        }
        Ok(())
    }

    /// Checks `metadata_replication` against the ring's replication factor r: metadata must
    /// be at least as replicated as the data it describes.
    pub fn validate_metadata(&self, replication: usize) -> Result<(), String> {
        if self.params().is_some() && self.metadata_replication < replication.max(1) {
            return Err(format!(
                "entanglement: metadata_replication ({}) must be at least replication ({})",
                self.metadata_replication, replication
            ));
        }
        Ok(())
    }
}

/// A stored block with shared bytes.
pub type Held = (BlockKey, Arc<Vec<u8>>);

/// The encoder's memory: the newest parities it wrote (tail) and a uniform sample of the
/// ring's parities (pool), both with their bytes so writes never wait for pointer fetches.
pub struct EncoderState {
    pub tail: VecDeque<Held>,
    pub pool: Vec<Held>,
    /// How many writes without a session drew on the pool ([`super::write::prefetch_loop`]
    /// refreshes a full pool once after each change). Writes in a session take their pointers
    /// elsewhere, so a node whose clients all have sessions fetches nothing for the pool once
    /// it is full (it used to replace 8 pooled blocks every 10 s, idle or not).
    pub pool_uses: u64,
    pub rng: ChaCha8Rng,
    /// Clients' write sessions: where their documents' pointers may go (module `session`).
    pub sessions: super::session::Sessions,
}

/// Codeword records (of either layout) found in the record table, by key, and keys known not
/// to be codeword records (document records).
pub type RecordCache = (
    BTreeMap<BlockKey, Arc<entangle::Record>>,
    BTreeSet<BlockKey>,
);

/// The entangled layer of one node, with what it works on: the ring, the replicated blocks
/// (its parities are ordinary blocks on replica sets) and this node's store.
pub struct Entangled {
    pub config: EntanglementConfig,
    pub replication: usize,
    pub ring: Arc<Ring>,
    pub blocks: Arc<Replication>,
    pub store: Arc<BlockStore>,
    /// Single copies of scrubbed parities.
    pub single: Arc<BlockStore>,
    pub encoder: Mutex<EncoderState>,
    /// Codeword records found in the record table, by key (a cache: records are immutable),
    /// and keys known to be document records.
    pub records: Mutex<RecordCache>,
    /// The replica management this node runs (module `policy`).
    pub scrub_daemon: Mutex<Option<super::policy::Daemon>>,
    /// Where an administrator's choice of daemon is kept (none in tests without a disk).
    pub policy_file: Option<std::path::PathBuf>,
    /// Deletions other nodes asked for (`DropReplica`) in the current maintenance period,
    /// bounded like this node's own ([`crate::replication::deletion`]).
    pub requested_drops: Mutex<WindowBudget>,
    /// When to ask members again to drop replicated copies of this node's single copies that
    /// they kept (`scrub::redrop_singles`).
    pub drop_retries: Mutex<super::policy::DropRetries>,
    /// Where the background rounds' look for returned copies of this node's single copies
    /// goes on ([`super::scrub::sweep`]: a bounded page per round, not every single copy).
    pub redrop_after: Mutex<Option<BlockKey>>,
    /// Parities the last round of replica management kept replicated for their age, with
    /// their creation times (`scrub::scrub_local` decides them again without the ring).
    pub known_young: Mutex<super::policy::KnownYoung>,
    /// Signed writes accepted within the clock-skew window (replays are refused).
    pub replays: Mutex<crypto::ReplayGuard>,
    /// The quota book, to give users back what deleted documents cost them.
    pub quotas: Option<Arc<crate::quota::Quotas>>,
    /// When this node last served a client's data: replica management gives way to clients.
    pub traffic: super::policy::Traffic,
    /// Parities of acknowledged writes not stored yet (module `later`).
    pub pending: Mutex<super::later::Pending>,
}

impl Entangled {
    pub fn new(
        config: EntanglementConfig,
        blocks: Arc<Replication>,
        single: Arc<BlockStore>,
    ) -> Self {
        Entangled {
            scrub_daemon: Mutex::new(config.replicas.daemon()),
            policy_file: None,
            config,
            replication: blocks.ring.replication,
            ring: blocks.ring.clone(),
            store: blocks.store.clone(),
            blocks,
            single,
            encoder: Mutex::new(EncoderState {
                tail: VecDeque::new(),
                pool: Vec::new(),
                pool_uses: 0,
                rng: ChaCha8Rng::from_entropy(),
                sessions: super::session::Sessions::default(),
            }),
            records: Mutex::new((BTreeMap::new(), BTreeSet::new())),
            drop_retries: Mutex::new(super::policy::DropRetries::default()),
            redrop_after: Mutex::new(None),
            known_young: Mutex::new(super::policy::KnownYoung::default()),
            replays: Mutex::new(crypto::ReplayGuard::default()),
            quotas: None,
            traffic: super::policy::Traffic::default(),
            pending: Mutex::new(super::later::Pending::default()),
            // The default maintenance period until the background loop sets its own.
            requested_drops: Mutex::new(WindowBudget::new(
                std::time::Duration::from_secs(5),
                std::time::Instant::now(),
            )),
        }
    }

    /// Releases quota charges of deleted documents in `quotas`.
    #[must_use]
    pub fn with_quotas(mut self, quotas: Arc<crate::quota::Quotas>) -> Self {
        self.quotas = Some(quotas);
        self
    }

    /// Keeps an administrator's choice of replica management in `path` and starts with the
    /// choice saved there, if any (otherwise with the configured policy).
    pub fn with_policy_file(mut self, path: std::path::PathBuf) -> Result<Self, String> {
        if let Some(saved) = super::policy::load(&path)? {
            *self
                .scrub_daemon
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = saved;
        }
        self.policy_file = Some(path);
        Ok(self)
    }

    /// Keeps the log of pending parities in `path` (module `pending_log`) and queues the
    /// documents it lists as still waiting (a restart resumes storing their parities).
    pub fn with_pending_log(self, path: &std::path::Path) -> Result<Self, String> {
        let (log, waiting) = super::pending_log::PendingLog::open(path)?;
        if !waiting.is_empty() {
            tracing::info!(
                documents = waiting.len(),
                "parities left pending before a restart are stored again"
            );
        }
        peerstore_proto::lock(&self.pending).with_log(log, waiting);
        Ok(self)
    }

    /// The code parameters, `None` for type "none".
    #[must_use]
    pub fn params(&self) -> Option<entangle::Params> {
        self.config.params()
    }

    /// m, the number of nodes that hold each piece of metadata.
    #[must_use]
    pub fn metadata_replication(&self) -> usize {
        self.config
            .metadata_replication
            .max(self.replication)
            .max(1)
    }

    /// The ring's codeword layout.
    #[must_use]
    pub fn layout(&self) -> entangle::Layout {
        self.config.layout
    }

    /// What the stored sizes of this ring's entangled blocks look like, `None` on a plain ring.
    #[must_use]
    pub fn parity_sizes(&self) -> Option<ParitySizes> {
        self.params().map(ParitySizes::of)
    }
}

/// The sizes a stored entangled block (a parity or, in the systematic layout, a source) of a
/// ring can have: a header, then a payload of the codeword's shard (`B` for a full codeword, a
/// multiple of [`entangle::params::SHARD_ALIGN`] below `B` for a short one:
/// `entangle::Params::shard`). The header is that of either layout (version 1: `p` payload
/// hashes; version 2: `s + p`), so blocks of both layouts with the ring's parameters are
/// recognised. The block store keeps sizes, not kinds, so this is how listings tell entangled
/// blocks from other blocks without reading them; what is done to one is then decided from its
/// reverse-reference entry (`own`), never from its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParitySizes {
    headers: [u64; 2],
    block: u64,
}

impl ParitySizes {
    /// The sizes of stored blocks of `params`, in either layout.
    #[must_use]
    pub fn of(params: entangle::Params) -> Self {
        let h = |l| entangle::block::header_len_for(&params, l) as u64;
        ParitySizes {
            headers: [
                h(entangle::Layout::ParityOnly),
                h(entangle::Layout::Systematic),
            ],
            block: params.block() as u64,
        }
    }

    /// Whether a stored block of `size` bytes may be an entangled block of this ring.
    #[must_use]
    pub fn matches(&self, size: u64) -> bool {
        let align = entangle::params::SHARD_ALIGN as u64;
        self.headers.iter().any(|h| {
            size.checked_sub(*h)
                .is_some_and(|n| n == self.block || (n > 0 && n < self.block && n % align == 0))
        })
    }

    /// The largest (a full codeword's, in the layout with the longer header).
    #[must_use]
    pub fn full(&self) -> u64 {
        self.headers[0].max(self.headers[1]) + self.block
    }
}

/// Microseconds since the Unix epoch.
#[must_use]
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::ParitySizes;
    use crate::config::NodeConfig;

    #[test]
    fn parity_sizes_are_shards_plus_the_header() {
        let params = entangle::Params::new(4, 8, 8, 256 * 1024);
        let sizes = ParitySizes::of(params);
        // Version 1 (parity-only): 8 payload hashes; version 2 (systematic): 12.
        let h1 = entangle::block::header_len(8, 8) as u64;
        let h2 = entangle::block::header_len(8, 12) as u64;
        assert_eq!(sizes.full(), h2 + 256 * 1024);
        for h in [h1, h2] {
            for len in [0u64, 1, 2048, 100_000, params.capacity()] {
                assert!(sizes.matches(h + params.shard(len) as u64), "len {len}");
            }
            assert!(!sizes.matches(h + 100));
            assert!(!sizes.matches(h + 512 * 1024));
        }
        // A header alone is no block (h2 = h1 + 128 is a version-1 block with a 128-byte shard:
        // sizes tell entangled blocks from others, not one layout from the other).
        assert!(!sizes.matches(h1));
        assert!(!sizes.matches(10));
        // The sizes of real blocks, both layouts.
        let anchors: Vec<(entangle::BlockKey, &[u8])> = (0..8)
            .map(|i| (entangle::BlockKey::anchor(params.block_size, i), &[][..]))
            .collect();
        for layout in [entangle::Layout::ParityOnly, entangle::Layout::Systematic] {
            let (_, blocks) = entangle::encode_layout(
                layout,
                entangle::Parallelism::SINGLE,
                params,
                entangle::CodewordId([1; 32]),
                &[7u8; 5000],
                &anchors,
            )
            .unwrap();
            assert_eq!(blocks.len(), layout.stored(&params));
            for (_, b) in blocks {
                assert!(sizes.matches(b.len() as u64), "{layout:?} {}", b.len());
            }
        }
    }

    #[test]
    fn config_parses_and_validates() {
        let c: NodeConfig = toml::from_str(
            "replication = 3\nentanglement = { type = \"step\", s = 2, t = 10, p = 6 }",
        )
        .unwrap();
        assert_eq!(
            c.entanglement.params(),
            Some(entangle::Params::new(2, 10, 6, 256 * 1024))
        );
        c.validate().unwrap();
        let d = NodeConfig::default();
        assert_eq!(
            d.entanglement.params(),
            Some(entangle::Params::new(4, 8, 8, 256 * 1024))
        );
        assert_eq!(d.entanglement.layout, entangle::Layout::Systematic);
        d.validate().unwrap();
        let po: NodeConfig =
            toml::from_str("entanglement = { layout = \"parity-only\", p = 12 }").unwrap();
        assert_eq!(po.entanglement.layout, entangle::Layout::ParityOnly);
        po.validate().unwrap();
        let po_short: NodeConfig =
            toml::from_str("entanglement = { layout = \"parity-only\", p = 2 }").unwrap();
        assert!(po_short.validate().is_err(), "parity-only needs p >= s");
        let sys_short: NodeConfig = toml::from_str("entanglement = { p = 2 }").unwrap();
        sys_short.validate().unwrap();
        let none: NodeConfig = toml::from_str("entanglement = { type = \"none\" }").unwrap();
        assert_eq!(none.entanglement.params(), None);
        none.validate().unwrap();
        let bad: NodeConfig = toml::from_str(
            "entanglement = { type = \"step\", layout = \"parity-only\", s = 6, p = 4 }",
        )
        .unwrap();
        assert!(bad.validate().is_err());
        let no_parity: NodeConfig = toml::from_str("entanglement = { p = 0 }").unwrap();
        assert!(no_parity.validate().is_err());
        let huge: NodeConfig = toml::from_str("entanglement = { block_size = 8388608 }").unwrap();
        assert!(
            huge.validate().is_err(),
            "a parity must fit one protocol block"
        );
        assert_eq!(d.entanglement.metadata_replication, 10);
        let m: NodeConfig =
            toml::from_str("replication = 3\n[entanglement]\nmetadata_replication = 5").unwrap();
        m.validate().unwrap();
        assert_eq!(m.entanglement.metadata_replication, 5);
        let low: NodeConfig = toml::from_str(
            "replication = 4\nsuccessors = 8\n[entanglement]\nmetadata_replication = 3",
        )
        .unwrap();
        assert!(low.validate().is_err(), "m must be at least r");
        let plain: NodeConfig = toml::from_str(
            "replication = 4\nsuccessors = 8\n[entanglement]\ntype = \"none\"\nmetadata_replication = 3",
        )
        .unwrap();
        plain.validate().unwrap();
        assert!(toml::from_str::<NodeConfig>("entanglement = { type = \"rs\" }").is_err());
        assert!(toml::from_str::<NodeConfig>("entanglement = { q = 1 }").is_err());
    }
}
