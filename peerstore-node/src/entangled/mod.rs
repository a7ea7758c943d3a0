//! Entangled storage in the ring (RECAST step-archive, docs/ENTANGLEMENT-RING.md).
//!
//! The node that accepts a client's `ClientRequest::PutDocument` is the encoder: it splits the
//! document into codewords of `s * B` bytes, picks `t` pointers per codeword (half from its
//! in-memory tail of recent parities, half from a uniform sample of the ring's parities that a
//! background task keeps prefetched), encodes with the `entangle` crate and stores only the `p`
//! self-describing parities, as ordinary content-addressed blocks. Codeword records and the
//! document record are content-addressed and immutable, kept in the store's record table
//! ([`meta::TABLE`]); reverse references are union-merged entries in the store's
//! `REVERSE_REFS` table at `refs_position(parity)`. Both live on `m` nodes (the
//! `metadata_replication`, larger than the data's r: see [`meta`]), kept whole by the generic
//! anti-entropy ([`crate::sync`]) instantiated in [`meta`] and [`refs`].
//!
//! - [`layer`]: the settings and state every part works on ([`Entangled`]).
//! - [`write`]: the encoder (`PutDocument`); [`read`]: `GetDocument`, fetching symbols in
//!   parallel, first `s + t` that verify.
//! - [`repair`]: the repair worker, admin `Repair` and `Audit`.
//! - [`scrub`]: replica management (admin `Scrub`) and `EntangleStats` for du.
//!
//! This module holds the layer's entry points: the client requests, the member requests of
//! the entangled layer ([`Entangled::serve_member`]), the admin requests
//! ([`Entangled::serve_admin`]) and the background work ([`run`]).
//!
//! Scrubbed parities keep one copy in a second block store (`<data-dir>/single`). The
//! replication anti-entropy of the owner's range treats the keys held there as settled: it
//! neither pulls a stale replica back nor pushes one (`sync::plan_settled`), and the clean-up
//! leaves stale replicas of them to [`scrub::drop_stale`]; so a removed replica is never
//! spread again, and stale ones are dropped once old enough.

pub mod batch;
pub mod delete;
pub mod format;
pub mod later;
pub mod layer;
pub mod meta;
pub mod pending_log;
pub mod policy;
pub mod read;
pub mod refs;
pub mod repair;
pub mod scrub;
pub mod session;
pub mod spread;
pub mod write;

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use peerstore_proto::member::MAX_PROVE_KEYS;
use peerstore_proto::{AdminRequest, AdminResponse, BlockKey, ErrorCode, MAX_LIST_PAGE};

use crate::replication::{deletion, hostile, HeldRange};
use crate::ring::{blocking, RingError};

pub use layer::{
    now_us, EncoderState, Entangled, EntanglementConfig, EntanglementType, Held, ParitySizes,
    RecordCache,
};

pub use format::{DocRecord, RefsEntry};
pub use peerstore_proto::{
    AuditPage, CodewordAudit, EntRequest, EntResponse, EntangleStats, RepairSummary, ScrubMode,
    ScrubReport,
};

pub use peerstore_proto::lock;

impl Entangled {
    /// Refuses single copies while this node leaves the ring gracefully (it would leave with
    /// them): for `StoreSingle`, `StoreSingleBatch` and an encoder's own parities.
    fn taking_singles(&self) -> Result<(), RingError> {
        if self.blocks.is_leaving() {
            return Err(RingError::new(
                ErrorCode::Unavailable,
                "leaving the ring: single copies are neither taken nor proved",
            ));
        }
        Ok(())
    }

    /// `PutDocument` (see [`write::put_document`]): `content` is BLAKE3 of `data`; the signer
    /// of `auth` is recorded as the document's writer.
    pub async fn put_document(
        &self,
        data: Vec<u8>,
        content: BlockKey,
        auth: Option<Vec<u8>>,
        session: Option<peerstore_proto::EntangleSession>,
    ) -> Result<BlockKey, RingError> {
        write::put_document(self, data, content, auth, session).await
    }

    /// `ListDocuments` (see [`delete::list_ring`]).
    pub async fn list_documents(
        &self,
        writer: [u8; 32],
        after: Option<BlockKey>,
        limit: u32,
    ) -> Result<peerstore_proto::DocumentPage, RingError> {
        delete::list_ring(self, writer, after, limit)
            .await
            .map_err(RingError::unavailable)
    }

    /// `DeleteDocuments` (see [`delete::delete_ring`]).
    pub async fn delete_documents(
        &self,
        statement: Vec<u8>,
    ) -> Result<peerstore_proto::DeleteReport, RingError> {
        delete::delete_ring(self, statement).await
    }

    /// `GetDocument` (see [`read::get_document`]).
    pub async fn get_document(&self, key: BlockKey) -> Result<Option<Vec<u8>>, RingError> {
        read::get_document(self, key).await
    }

    /// `DocumentSources` (see [`read::document_sources`]).
    pub async fn document_sources(
        &self,
        key: BlockKey,
    ) -> Result<Option<peerstore_proto::SourcePlan>, RingError> {
        if self.params().is_none() {
            return Err(RingError::new(
                ErrorCode::BadRequest,
                "this ring does not entangle documents; read them with get-document",
            ));
        }
        let mut plan = read::document_sources(self, key).await;
        if hostile::bad_plans() {
            for codeword in plan.iter_mut().flat_map(|p| p.codewords.iter_mut()) {
                codeword.reverse();
            }
        }
        Ok(plan)
    }

    /// `GetSymbol` (see [`read::get_symbol`]).
    pub async fn get_symbol(&self, key: BlockKey) -> Option<Vec<u8>> {
        read::get_symbol(self, key).await
    }

    /// The blocks of `SourcesHeld` (see [`read::sources_held_local`]).
    pub async fn sources_held_local(&self, keys: Vec<BlockKey>) -> (Vec<Option<u32>>, Vec<u8>) {
        read::sources_held_local(self, keys).await
    }

    /// `GetSymbols` (see [`read::get_symbols_local`]).
    pub async fn get_symbols_local(&self, keys: Vec<BlockKey>) -> Vec<Option<Vec<u8>>> {
        read::get_symbols_local(self, keys).await
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
                if hostile::liar() {
                    return Ok(EntResponse::Has {
                        present: vec![true; keys.len()],
                    });
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
                if hostile::liar() {
                    return Ok(EntResponse::Has {
                        present: vec![true; keys.len()],
                    });
                }
                if self.blocks.is_leaving() {
                    // Leaving: it holds nothing it could be handed or asked to prove.
                    return Ok(EntResponse::Has {
                        present: vec![false; keys.len()],
                    });
                }
                let single = self.single.clone();
                let present =
                    blocking(move || keys.iter().map(|k| single.has(k)).collect()).await?;
                EntResponse::Has { present }
            }
            EntRequest::ProveSingle { keys } => {
                if keys.len() > MAX_PROVE_KEYS {
                    return Err(RingError::bad_request(format!(
                        "at most {MAX_PROVE_KEYS} challenges per request"
                    )));
                }
                if hostile::liar() {
                    return Ok(EntResponse::Proofs {
                        proofs: hostile::random_proofs(keys.len()),
                    });
                }
                // A leaving node proves nothing: the prover would drop its copy, and this
                // node's hand-off of its single copies may have listed them already. Checked
                // after the proofs too: a proof is only given for copies held before the
                // leave started, which the hand-off sends on.
                let leaving = || {
                    RingError::new(
                        ErrorCode::Unavailable,
                        "leaving the ring: single copies are neither taken nor proved",
                    )
                };
                if self.blocks.is_leaving() {
                    return Err(leaving());
                }
                // Only for keys this node owns in its own view: every caller asks the key's
                // owner (in the caller's view), so two nodes whose views disagree about who
                // owns a key cannot each prove it to the other and both drop their copies.
                let owned = self.ring.handle.view().await.and_then(|v| {
                    (v.member && v.predecessor.is_some()).then(|| {
                        let (from, to) = v.ranges.owned;
                        (BlockKey(from.0), BlockKey(to.0))
                    })
                });
                // Over the single copies' bytes on disk, verified against their keys.
                let single = self.single.clone();
                let proofs = blocking(move || {
                    Ok(deletion::prove_with(&keys, |k| {
                        let (from, to) = owned?;
                        if !crate::store::in_interval(&from, &to, k) {
                            return None;
                        }
                        single.get(k).ok().flatten()
                    }))
                })
                .await?;
                if self.blocks.is_leaving() {
                    return Err(leaving());
                }
                EntResponse::Proofs { proofs }
            }
            r @ (EntRequest::StoreRecords { .. }
            | EntRequest::FetchRecords { .. }
            | EntRequest::ListRecords { .. }) => meta::serve(self, r).await?,
            EntRequest::StoreRefs { entries } => {
                // Only entries at positions in this node's metadata range are kept.
                let range = HeldRange::of(&self.ring, self.metadata_replication()).await;
                let of = entries.len();
                let (keep, refused): (Vec<_>, Vec<_>) = entries
                    .into_iter()
                    .partition(|e| range.contains(&format::refs_position(&e.block)));
                refs::merge_local(self, keep).await?;
                if !refused.is_empty() {
                    return Err(range.refusal("reverse references", refused.len(), of));
                }
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
                if hostile::liar() {
                    return Ok(EntResponse::Ok); // acknowledged, not stored
                }
                self.taking_singles()?;
                let single = self.single.clone();
                blocking(move || {
                    single
                        .put(key, &data, crate::store::Role::Owner)
                        .map(|_| ())
                })
                .await?;
                EntResponse::Ok
            }
            EntRequest::StoreSingleBatch { sizes, data } => {
                if hostile::liar() {
                    return Ok(EntResponse::Ok); // acknowledged, not stored
                }
                self.taking_singles()?;
                crate::replication::store_batch(
                    self.single.clone(),
                    sizes,
                    data,
                    crate::store::Role::Owner,
                )
                .await?;
                EntResponse::Ok
            }
            EntRequest::RepairLocal => {
                EntResponse::Repaired(repair::repair_local(self, None).await)
            }
            EntRequest::AuditLocal { after, limit, fix } => {
                EntResponse::Audit(repair::audit_local(self, after, limit, fix).await?)
            }
            EntRequest::ScrubLocal { mode, cutoff_us } => {
                // A scrub by hand stores this node's pending parities first (module `later`:
                // blocks go to one copy only once their codeword's parities are stored), then
                // applies its own rule only (no age limit).
                let sealed = later::seal(self, None).await;
                if sealed.sealed + sealed.dropped > 0 {
                    info!(?sealed, "pending parities stored for a scrub by hand");
                }
                // Copies that came back go first, as in every background round.
                let (n, bytes) = scrub::sweep(self, &mut deletion::policy().budget(), true).await;
                let mut report = scrub::scrub_local(self, mode, cutoff_us, 0, None).await.0;
                report.replicas_removed += n;
                report.bytes_freed += bytes;
                EntResponse::Scrubbed(report)
            }
            EntRequest::NewestCreated { count } => EntResponse::Created {
                times: refs::newest_created(self, count).await?,
            },
            EntRequest::SetScrubDaemon { policy } => {
                let daemon = policy.map(|(mode, every_ms)| policy::Daemon {
                    mode,
                    every_ms,
                    max_age_ms: self.config.replicas.max_age_ms,
                });
                // Kept in the data directory first: the choice survives restarts.
                if let Some(path) = self.policy_file.clone() {
                    blocking(move || {
                        policy::save(&path, daemon)
                            .map_err(crate::store::StoreError::io("save scrub daemon", &path))
                    })
                    .await?;
                }
                *lock(&self.scrub_daemon) = daemon;
                info!(?daemon, "scrub daemon set");
                EntResponse::Ok
            }
            EntRequest::LocalStats => EntResponse::Stats(scrub::local_stats(self).await?),
            EntRequest::ListDocumentsLocal {
                writer,
                after,
                limit,
            } => EntResponse::Documents(delete::list_local(self, writer, after, limit).await?),
            EntRequest::DeleteDocument {
                statement,
                doc,
                phase,
            } => {
                EntResponse::DeleteOutcome(delete::delete_local(self, &statement, doc, phase).await)
            }
        })
    }
}

/// Replica-management rounds between two measurements of the window's cut-off.
const WINDOW_EVERY: u32 = 10;

/// The background work of the entangled layer: record and reverse-reference anti-entropy and the
/// single-copy hand-off every `period`, the pointer-pool prefetch, the repair worker every
/// `repair_ms`, and the scrub daemon when one is set.
pub async fn run(ent: Arc<Entangled>, period: Duration) {
    if ent.params().is_none() {
        return;
    }
    let _prefetch = AbortOnDrop(tokio::spawn(write::prefetch_loop(ent.clone())));
    lock(&ent.requested_drops).set_window(period);
    let repair_every = Duration::from_millis(ent.config.repair_ms);
    let mut last_repair = tokio::time::Instant::now();
    let mut last_scrub = tokio::time::Instant::now();
    // The last window cut-off measured: (window, when, cut-off).
    let mut window: Option<(u64, tokio::time::Instant, Option<u64>)> = None;
    // Replica management gives way to clients, within a bound.
    let mut gate = policy::Gate::default();
    let mut seal_gate = policy::Gate::default();
    let quiet = Duration::from_millis(ent.config.replicas.yield_ms);
    let max_wait = Duration::from_millis(ent.config.replicas.max_wait_ms);
    loop {
        tokio::time::sleep(period).await;
        if ent.ring.view().await.is_none() {
            return;
        }
        // What each step of the round took, logged when the round is long.
        let mut took: Vec<(&str, Duration)> = Vec::new();
        let mut t = std::time::Instant::now();
        let mut lap = |step: &'static str, took: &mut Vec<(&str, Duration)>| {
            took.push((step, t.elapsed()));
            t = std::time::Instant::now();
        };
        let r = meta::anti_entropy(&ent).await;
        if r.0 + r.1 > 0 {
            debug!(pushed = r.0, pulled = r.1, "record anti-entropy");
        }
        lap("records", &mut took);
        let r = refs::anti_entropy(&ent).await;
        if r.0 + r.1 > 0 {
            debug!(pushed = r.0, pulled = r.1, "reverse-reference anti-entropy");
        }
        lap("references", &mut took);
        // One round's bound on deletions (docs/SECURITY.md, "Verified deletions").
        let mut budget = deletion::policy().budget();
        scrub::hand_off_singles(&ent, &mut budget).await;
        let (n, _) = scrub::sweep(&ent, &mut budget, false).await;
        lap("single copies", &mut took);
        let dropped = &ent.blocks.activity.parity_copies_dropped;
        crate::replication::Activity::add(dropped, n);
        if n > 0 {
            debug!(n, "replicated copies of single-copy parities dropped again");
        }
        // Parities of acknowledged writes, once clients pause (module `later`).
        if !lock(&ent.pending).is_empty() {
            let turn = seal_gate.turn(
                std::time::Instant::now(),
                ent.traffic.since(),
                quiet,
                max_wait,
            );
            if let policy::Turn::Run { gives_way } = turn {
                let r = later::seal(&ent, gives_way.then(std::time::Instant::now)).await;
                if r.sealed + r.dropped > 0 {
                    info!(
                        ?r,
                        left = lock(&ent.pending).len(),
                        "pending parities stored"
                    );
                }
                seal_gate.ran(std::time::Instant::now(), r.gave_way || r.failed);
                lap("parities", &mut took);
            }
        }
        if last_repair.elapsed() >= repair_every {
            last_repair = tokio::time::Instant::now();
            let young_after = layer::now_us().saturating_sub(later::grace_us(&ent));
            let s = repair::repair_local(&ent, Some(young_after)).await;
            if s.rebuilt > 0 || s.undecodable > 0 {
                info!(?s, "repair worker round");
            }
            lap("repair", &mut took);
        }
        let daemon = *lock(&ent.scrub_daemon);
        if let Some(d) = daemon {
            let due = last_scrub.elapsed() >= Duration::from_millis(d.every_ms.max(1));
            let turn = due.then(|| {
                let was_waiting = gate.is_waiting();
                let turn = gate.turn(
                    std::time::Instant::now(),
                    ent.traffic.since(),
                    quiet,
                    max_wait,
                );
                if turn == policy::Turn::Wait && !was_waiting {
                    debug!("replica management waits for clients to pause");
                }
                turn
            });
            if let Some(policy::Turn::Run { gives_way }) = turn {
                last_scrub = tokio::time::Instant::now();
                // The window's cut-off costs every member a scan of its reverse references,
                // so it is measured again only every WINDOW_EVERY rounds; in between the last
                // one is used. It only moves forward as parities are written, so an older one
                // makes fewer parities eligible, never more.
                let cutoff = match d.mode {
                    ScrubMode::Window { blocks } => {
                        let fresh = window.filter(|(b, at, _)| {
                            *b == blocks
                                && at.elapsed()
                                    < Duration::from_millis(d.every_ms.max(1)) * WINDOW_EVERY
                        });
                        match fresh {
                            Some((_, _, c)) => Some(c),
                            None => {
                                let c = scrub::window_cutoff(&ent, blocks).await.ok();
                                if let Some(c) = c {
                                    window = Some((blocks, tokio::time::Instant::now(), c));
                                }
                                c
                            }
                        }
                    }
                    ScrubMode::Pointers { .. } => Some(None),
                };
                // A window that could not be measured (a member did not answer) scrubs
                // nothing by window this round; age still applies.
                let start = gives_way.then(std::time::Instant::now);
                let (r, yielded, unsealed) =
                    scrub::scrub_local(&ent, d.mode, cutoff.flatten(), d.max_age_ms, start).await;
                let dropped = &ent.blocks.activity.parity_copies_dropped;
                crate::replication::Activity::add(dropped, r.replicas_removed);
                if r.scrubbed > 0 {
                    info!(?r, "replica management round");
                }
                if yielded > 0 {
                    // The rest as soon as the node is quiet, not a whole period later.
                    debug!(
                        yielded,
                        "replica management gave way to a client; the rest waits"
                    );
                    last_scrub = tokio::time::Instant::now()
                        .checked_sub(Duration::from_millis(d.every_ms.max(1)))
                        .unwrap_or(last_scrub);
                }
                // Blocks kept for parities still on their way are work put off too: the
                // bound keeps counting for them.
                gate.ran(std::time::Instant::now(), yielded + unsealed > 0);
                lap("replica management", &mut took);
            }
        }
        if took.iter().map(|s| s.1).sum::<Duration>() >= Duration::from_millis(500) {
            debug!(?took, "long maintenance round of the entangled layer");
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
