//! Entangled storage in the ring (RECAST step-archive, docs/ENTANGLEMENT-RING.md).
//!
//! The node that accepts a client's [`Request::PutDocument`] is the encoder: it splits the
//! document into codewords of `s * B` bytes, picks `t` pointers per codeword (half from its
//! in-memory tail of recent parities, half from a uniform sample of the ring's parities that a
//! background task keeps prefetched), encodes with the `entangle` crate and stores only the `p`
//! self-describing parities, as ordinary content-addressed blocks. Codeword records and the
//! document record are content-addressed and immutable, kept in the store's record table
//! ([`meta::TABLE`]); reverse references are union-merged entries in the store's
//! `REVERSE_REFS` table at `refs_position(parity)`. Both live on `m` nodes (the
//! `metadata_replication`, larger than the data's r: see [`meta`]), with their own
//! anti-entropy ([`meta`], [`refs`]).
//!
//! - [`read`]: [`Request::GetDocument`], fetching symbols in parallel, first `s + t` that verify.
//! - [`repair`]: the repair worker, [`Request::Repair`] and [`Request::Audit`].
//! - [`scrub`]: replica management ([`Request::Scrub`]) and [`Request::EntangleStats`] for du.
//!
//! Scrubbed parities keep one copy in a second block store (`<data-dir>/single`), which the
//! replication anti-entropy does not see, so it does not put the removed replicas back.

pub mod format;
pub mod meta;
pub mod read;
pub mod refs;
pub mod repair;
pub mod scrub;
pub mod write;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use peerstore_proto::{AdminRequest, AdminResponse, BlockKey, MAX_LIST_PAGE};

use crate::replication::Replication;
use crate::ring::{blocking, Ring, RingError};
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

/// The ring's entanglement settings (`entanglement = { type = "step", s = 4, t = 8, p = 12,
/// block_size = 262144 }` in the node's TOML). Every node of a ring must use the same values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntanglementConfig {
    /// "step" or "none".
    #[serde(rename = "type")]
    pub kind: EntanglementType,
    /// Source blocks per codeword.
    pub s: u16,
    /// Pointers per codeword.
    pub t: u16,
    /// Parities per codeword.
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
}

impl Default for EntanglementConfig {
    /// (4, 8, 12) with 256 KiB blocks: 3x like (2, 10, 6) but without the 50% cliff, and half
    /// the reads and coding work per byte (docs/ENTANGLEMENT-RING.md, "Defaults").
    fn default() -> Self {
        EntanglementConfig {
            kind: EntanglementType::Step,
            s: 4,
            t: 8,
            p: 12,
            block_size: 256 * 1024,
            tail_window: 100,
            repair_ms: 60_000,
            metadata_replication: 10,
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
            p.validate().map_err(|e| format!("entanglement: {e}"))?;
            let stored = entangle::block::header_len(p.t(), p.p()) + p.block();
            if stored > peerstore_proto::MAX_BLOCK_SIZE {
                return Err(format!(
                    "entanglement: a parity of {stored} bytes exceeds the block bound {}",
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

pub use format::{DocRecord, RefsEntry};
pub use peerstore_proto::{
    AuditPage, CodewordAudit, EntRequest, EntResponse, EntangleStats, RepairSummary, ScrubMode,
    ScrubReport,
};

/// A stored block with shared bytes.
pub type Held = (BlockKey, Arc<Vec<u8>>);

/// The encoder's memory: the newest parities it wrote (tail) and a uniform sample of the
/// ring's parities (pool), both with their bytes so writes never wait for pointer fetches.
pub struct EncoderState {
    pub tail: VecDeque<Held>,
    pub pool: Vec<Held>,
    pub rng: ChaCha8Rng,
}

/// Codeword records found in the record table, by key, and keys known not to be codeword
/// records (document records).
pub type RecordCache = (
    BTreeMap<BlockKey, Arc<entangle::CodewordRecord>>,
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
    pub scrub_daemon: Mutex<Option<(ScrubMode, u64)>>,
}

impl Entangled {
    pub fn new(
        config: EntanglementConfig,
        blocks: Arc<Replication>,
        single: Arc<BlockStore>,
    ) -> Self {
        Entangled {
            config,
            replication: blocks.ring.replication,
            ring: blocks.ring.clone(),
            store: blocks.store.clone(),
            blocks,
            single,
            encoder: Mutex::new(EncoderState {
                tail: VecDeque::new(),
                pool: Vec::new(),
                rng: ChaCha8Rng::from_entropy(),
            }),
            records: Mutex::new((BTreeMap::new(), BTreeSet::new())),
            scrub_daemon: Mutex::new(None),
        }
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

    /// Size of a stored parity of this ring.
    #[must_use]
    pub fn parity_size(&self) -> Option<u64> {
        self.params()
            .map(|p| (entangle::block::header_len(p.t(), p.p()) + p.block()) as u64)
    }
}

pub use peerstore_proto::lock;

impl Entangled {
    /// `PutDocument` (see [`write::put_document`]).
    pub async fn put_document(&self, data: Vec<u8>) -> Result<BlockKey, RingError> {
        write::put_document(self, data).await
    }

    /// `GetDocument` (see [`read::get_document`]).
    pub async fn get_document(&self, key: BlockKey) -> Result<Option<Vec<u8>>, RingError> {
        read::get_document(self, key).await
    }

    /// Answers the admin protocol.
    pub async fn serve_admin(&self, request: AdminRequest) -> Result<AdminResponse, RingError> {
        Ok(match request {
            AdminRequest::Repair { keys } => {
                AdminResponse::Repaired(repair::repair_ring(self, keys).await)
            }
            AdminRequest::Audit { after, limit, fix } => AdminResponse::AuditPage(
                repair::audit_ring(self, after, limit, fix)
                    .await
                    .map_err(RingError::unavailable)?,
            ),
            AdminRequest::Scrub {
                mode,
                once,
                interval_ms,
            } => {
                AdminResponse::Scrubbed(scrub::scrub_request(self, mode, once, interval_ms).await?)
            }
            AdminRequest::EntangleStats => AdminResponse::EntangleStats(Box::new(
                scrub::ring_stats(self)
                    .await
                    .map_err(RingError::unavailable)?,
            )),
        })
    }

    /// Answers the entangled layer's member requests.
    pub async fn serve_member(&self, r: EntRequest) -> Result<EntResponse, RingError> {
        let too_many = |n: usize| {
            (n > MAX_LIST_PAGE as usize).then(|| {
                RingError::bad_request(format!("at most {MAX_LIST_PAGE} keys per request"))
            })
        };
        Ok(match r {
            EntRequest::FetchSymbol { key } => match read::fetch_local(self, key).await {
                Some(data) => EntResponse::Block { data },
                None => EntResponse::NotFound,
            },
            EntRequest::HasSymbols { keys } => {
                if let Some(e) = too_many(keys.len()) {
                    return Err(e);
                }
                let (main, single) = (self.store.clone(), self.single.clone());
                let present = blocking(move || {
                    keys.iter()
                        .map(|k| Ok(main.has(k)? || single.has(k)?))
                        .collect::<Result<Vec<bool>, crate::store::StoreError>>()
                })
                .await?;
                EntResponse::Has { present }
            }
            EntRequest::HasSingle { keys } => {
                if let Some(e) = too_many(keys.len()) {
                    return Err(e);
                }
                let single = self.single.clone();
                let present =
                    blocking(move || keys.iter().map(|k| single.has(k)).collect()).await?;
                EntResponse::Has { present }
            }
            r @ (EntRequest::StoreRecords { .. }
            | EntRequest::FetchRecords { .. }
            | EntRequest::ListRecords { .. }) => meta::serve(self, r).await?,
            EntRequest::StoreRefs { entries } => {
                refs::merge_local(self, entries).await?;
                EntResponse::Ok
            }
            EntRequest::FetchRefs { positions } => {
                if let Some(e) = too_many(positions.len()) {
                    return Err(e);
                }
                EntResponse::Refs {
                    entries: refs::get_local(self, positions).await?,
                }
            }
            EntRequest::ListRefs { from, to, after } => {
                let (entries, more) = refs::list_local(self, from, to, after).await?;
                EntResponse::RefDigests { entries, more }
            }
            EntRequest::SampleParities { count } => EntResponse::Keys {
                keys: refs::sample_local(self, count.min(256) as usize).await?,
            },
            EntRequest::DropReplica { key, holder } => {
                EntResponse::Stats(scrub::drop_replica(self, key, holder).await?)
            }
            EntRequest::StoreSingle { key, data } => {
                let single = self.single.clone();
                blocking(move || {
                    single
                        .put(key, &data, crate::store::Role::Owner)
                        .map(|_| ())
                })
                .await?;
                EntResponse::Ok
            }
            EntRequest::RepairLocal => EntResponse::Repaired(repair::repair_local(self).await),
            EntRequest::AuditLocal { after, limit, fix } => {
                EntResponse::Audit(repair::audit_local(self, after, limit, fix).await?)
            }
            EntRequest::ScrubLocal { mode, cutoff_us } => {
                EntResponse::Scrubbed(scrub::scrub_local(self, mode, cutoff_us).await)
            }
            EntRequest::NewestCreated { count } => EntResponse::Created {
                times: refs::newest_created(self, count).await?,
            },
            EntRequest::SetScrubDaemon { policy } => {
                *lock(&self.scrub_daemon) = policy;
                info!(?policy, "scrub daemon set");
                EntResponse::Ok
            }
            EntRequest::LocalStats => EntResponse::Stats(scrub::local_stats(self).await?),
        })
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

/// The background work of the entangled layer: record and reverse-reference anti-entropy and the
/// single-copy hand-off every `period`, the pointer-pool prefetch, the repair worker every
/// `repair_ms`, and the scrub daemon when one is set.
pub async fn run(ent: Arc<Entangled>, period: Duration) {
    if ent.params().is_none() {
        return;
    }
    let _prefetch = AbortOnDrop(tokio::spawn(write::prefetch_loop(ent.clone())));
    let repair_every = Duration::from_millis(ent.config.repair_ms);
    let mut last_repair = tokio::time::Instant::now();
    let mut last_scrub = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(period).await;
        if ent.ring.view().await.is_none() {
            return;
        }
        let r = meta::anti_entropy(&ent).await;
        if r.0 + r.1 > 0 {
            debug!(pushed = r.0, pulled = r.1, "record anti-entropy");
        }
        let r = refs::anti_entropy(&ent).await;
        if r.0 + r.1 > 0 {
            debug!(pushed = r.0, pulled = r.1, "reverse-reference anti-entropy");
        }
        scrub::hand_off_singles(&ent).await;
        scrub::drop_stale(&ent).await;
        let singles = scrub::owned_singles(&ent).await;
        let (n, _) = scrub::redrop_singles(&ent, &singles).await;
        if n > 0 {
            debug!(n, "replicated copies of single-copy parities dropped again");
        }
        if last_repair.elapsed() >= repair_every {
            last_repair = tokio::time::Instant::now();
            let s = repair::repair_local(&ent).await;
            if s.rebuilt > 0 || s.undecodable > 0 {
                info!(?s, "repair worker round");
            }
        }
        let daemon = *lock(&ent.scrub_daemon);
        if let Some((mode, every_ms)) = daemon {
            if last_scrub.elapsed() >= Duration::from_millis(every_ms.max(1)) {
                last_scrub = tokio::time::Instant::now();
                let cutoff = match mode {
                    ScrubMode::Window { blocks } => scrub::window_cutoff(&ent, blocks).await.ok(),
                    ScrubMode::Pointers { .. } => None,
                };
                if matches!(mode, ScrubMode::Pointers { .. }) || cutoff.is_some() {
                    let r = scrub::scrub_local(&ent, mode, cutoff.flatten()).await;
                    if r.scrubbed > 0 {
                        info!(?r, "scrub daemon round");
                    }
                }
            }
        }
    }
}

/// Aborts a task when dropped (the prefetcher dies with the worker).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

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
            Some(entangle::Params::new(4, 8, 12, 256 * 1024))
        );
        d.validate().unwrap();
        let none: NodeConfig = toml::from_str("entanglement = { type = \"none\" }").unwrap();
        assert_eq!(none.entanglement.params(), None);
        none.validate().unwrap();
        let bad: NodeConfig =
            toml::from_str("entanglement = { type = \"step\", s = 6, p = 4 }").unwrap();
        assert!(bad.validate().is_err());
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

    #[test]
    fn requests_round_trip_on_the_wire() {
        use peerstore_proto::{
            decode_frame, encode_frame, MemberRequest, MemberResponse, NodeAddr,
        };
        let admin = AdminRequest::Scrub {
            mode: ScrubMode::Window { blocks: 5 },
            once: false,
            interval_ms: 10,
        };
        let bytes = encode_frame(&admin, peerstore_proto::MAX_ADMIN_REQUEST).unwrap();
        assert_eq!(decode_frame::<AdminRequest>(&bytes).unwrap(), admin);
        let reqs = vec![
            MemberRequest::Entangled(EntRequest::DropReplica {
                key: BlockKey([3; 32]),
                holder: NodeAddr {
                    peer: libp2p::PeerId::random(),
                    addr: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                },
            }),
            MemberRequest::Entangled(EntRequest::StoreRecords {
                records: vec![vec![1, 2, 3]],
            }),
            MemberRequest::Entangled(EntRequest::StoreSingle {
                key: BlockKey([5; 32]),
                data: vec![7; 100],
            }),
            MemberRequest::Entangled(EntRequest::ListRecords {
                from: chord::Id([1; 32]),
                to: chord::Id([2; 32]),
                after: Some(BlockKey([4; 32])),
            }),
        ];
        let answer = MemberResponse::Entangled(EntResponse::Records {
            records: vec![None, Some(vec![5; 10])],
        });
        let bytes = encode_frame(&answer, peerstore_proto::MAX_MEMBER_FRAME).unwrap();
        assert_eq!(decode_frame::<MemberResponse>(&bytes).unwrap(), answer);
        for r in reqs {
            let bytes = encode_frame(&r, peerstore_proto::MAX_MEMBER_FRAME).unwrap();
            let back: MemberRequest = decode_frame(&bytes).unwrap();
            assert_eq!(back, r);
        }
    }
}
