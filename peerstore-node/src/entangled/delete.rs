//! Deleting documents on their writer's signed statement (what `peerstore-client prune` asks
//! for), and listing a writer's documents.
//!
//! A document record names its writer (a user id, `DocRecord::writer`). A user deletes
//! documents with a `crypto::DeleteStatement` they signed. The node a client asks
//! ([`delete_ring`]) checks the statement, then, one document at a time (newest first, so a
//! newer document that points into an older one goes first and unpins it), asks every member
//! of the ring to run four phases in order, each on every member before the next:
//!
//! 1. [`DeletePhase::Blocks`]: the stored blocks of the document's codewords (replicated and
//!    single copies), each checked first: a block that a live codeword outside the document
//!    uses as a pointer (its reverse reference names a referrer whose record still exists) is
//!    **pinned**, and then the member deletes nothing of the document;
//! 2. [`DeletePhase::Refs`]: the reverse references of those blocks;
//! 3. [`DeletePhase::Codewords`]: its codeword records;
//! 4. [`DeletePhase::Document`]: its document record.
//!
//! Every member checks the statement itself ([`delete_local`]): signature, time, that it
//! names the document, and that the document's record names the statement's user as writer;
//! the records are still there to check against because they go last. Phases 2 and 3 act on a
//! codeword only once no member holds any of its blocks (asked of the ring), so they never
//! remove what a pinned codeword needs (its record re-forms a pointer that a live codeword
//! rebuilds). A pinned document stays listed; a later prune deletes it once the documents
//! pointing at it are gone. A member that cannot check (records or reverse references
//! unavailable) refuses; a phase that did not complete on every member stops the document
//! there, and running the prune again redoes it (every phase is idempotent). So neither
//! another user nor a lying member can cause the deletion of a document, and a crash at any
//! point leaves only work for the next run.
//!
//! Known limits (docs/ENTANGLEMENT-RING.md, "Deleting documents"): a member that was away
//! during a deletion and comes back with copies brings them back as unreferenced blocks and
//! records (space, not data: a later prune lists the document again while its record lives);
//! the replication anti-entropy may copy a block back between members during the blocks
//! phase (same). Tombstones that stop both are the next step.

use std::collections::BTreeSet;

use peerstore_proto::{
    BlockKey, DeleteOutcome, DeletePhase, DeleteReport, DocumentInfo, DocumentPage, EntRequest,
    EntResponse, ErrorCode,
};

use super::format::{nk, refs_position, DocRecord};
use super::layer::{now_us, Entangled};
use super::{meta, refs, repair};
use crate::ring::RingError;
use crate::store::in_interval;

/// Records scanned per page of a listing.
const SCAN_PAGE: usize = 1024;

fn statement(bytes: &[u8]) -> Result<crypto::DeleteStatement, String> {
    if bytes.len() > 64 + 64 + 32 * crypto::MAX_DELETE_KEYS + 64 {
        return Err("deletion statement too large".into());
    }
    let s: crypto::DeleteStatement =
        postcard::from_bytes(bytes).map_err(|e| format!("not a deletion statement: {e}"))?;
    s.verify(now_us()).map_err(|e| e.to_string())?;
    Ok(s)
}

/// The document record at `doc`, checked to be written by the statement's user. `Ok(None)`:
/// no such record in the ring (deleted, or never there).
async fn writer_checked(
    ent: &Entangled,
    st: &crypto::DeleteStatement,
    doc: BlockKey,
) -> Result<Option<DocRecord>, String> {
    if !st.names(&doc.0) {
        return Err(format!("the statement does not name document {doc}"));
    }
    let Some(bytes) = meta::fetch_ring(ent, doc).await else {
        return Ok(None);
    };
    let Some(d) = DocRecord::decode(&bytes) else {
        return Err(format!("{doc} is not a document record"));
    };
    // The writer is the record's verified signer (a version 2 record's unsigned claim is not
    // enough: it is kept).
    let writer = d.verified_writer().map_err(|e| format!("{doc}: {e}"))?;
    if writer != st.user.0 {
        return Err(crypto::DeleteError::NotWriter(doc.to_string(), st.user).to_string());
    }
    Ok(Some(d))
}

/// Whether a live codeword outside `own` points at `block`: its reverse reference names a
/// referrer whose record still exists. `Err` when the reverse reference cannot be read (then
/// nothing may be deleted).
async fn pinned(
    ent: &Entangled,
    block: &BlockKey,
    own: &BTreeSet<BlockKey>,
) -> Result<bool, String> {
    // The union of what at least two holders say (a lying holder alone cannot hide a
    // referrer and get a pointer of a live codeword deleted).
    let (asked, answered, entry) = refs::fetch_quorum(ent, block).await;
    if answered < asked.min(2) {
        return Err(format!(
            "only {answered} of {asked} holders of the reverse reference of {block} answered"
        ));
    }
    let Some(entry) = entry else {
        // Deleted with the blocks by an earlier run (phase Refs): a block nobody holds any
        // more pins nothing.
        if super::read::has_ring(ent, &[*block]).await?.is_empty() {
            return Ok(false);
        }
        return Err(format!("the reverse reference of {block} is unavailable"));
    };
    for r in entry.referrers.iter().filter(|r| !own.contains(r)) {
        if repair::fetch_record(ent, *r).await.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A document's codeword records that still exist, by key: only those that are its own (their
/// ids derive from its signed document id), so a record that names another document's
/// codewords (made by a lying member) deletes nothing of them.
async fn codewords(ent: &Entangled, d: &DocRecord) -> Vec<repair::Rec> {
    let mut out = Vec::new();
    for (i, rk) in d.codewords.iter().enumerate() {
        if let Some(r) = repair::fetch_record(ent, *rk).await {
            if d.owns_codeword(i, &r) {
                out.push((*rk, r));
            } else {
                tracing::warn!(codeword = %rk, "a document record names a codeword that is not its own: left alone");
            }
        }
    }
    out
}

/// `EntRequest::DeleteDocument` on this node: the phase's part of what this node holds.
pub async fn delete_local(
    ent: &Entangled,
    statement_bytes: &[u8],
    doc: BlockKey,
    phase: DeletePhase,
) -> DeleteOutcome {
    match delete_local_inner(ent, statement_bytes, doc, phase).await {
        Ok(o) => o,
        Err(e) => DeleteOutcome::Refused(e),
    }
}

async fn delete_local_inner(
    ent: &Entangled,
    statement_bytes: &[u8],
    doc: BlockKey,
    phase: DeletePhase,
) -> Result<DeleteOutcome, String> {
    if ent.params().is_none() {
        return Ok(DeleteOutcome::Done { bytes: 0 });
    }
    let st = statement(statement_bytes)?;
    let Some(d) = writer_checked(ent, &st, doc).await? else {
        return Ok(DeleteOutcome::Done { bytes: 0 });
    };
    let own: BTreeSet<BlockKey> = d.codewords.iter().copied().collect();
    let recs = codewords(ent, &d).await;
    match phase {
        DeletePhase::Blocks => {
            // The blocks held here (either store), each checked for pinning first.
            let (main, single) = (ent.store.clone(), ent.single.clone());
            let keys: Vec<BlockKey> = recs
                .iter()
                .flat_map(|(_, r)| r.stored_keys.iter().map(nk))
                .collect();
            let held = {
                let keys = keys.clone();
                blocking(move || {
                    let mut held = Vec::new();
                    for k in keys {
                        if main.meta(&k)?.is_some() || single.meta(&k)?.is_some() {
                            held.push(k);
                        }
                    }
                    Ok(held)
                })
                .await?
            };
            for k in &held {
                if pinned(ent, k, &own).await? {
                    return Ok(DeleteOutcome::Pinned);
                }
            }
            let (main, single) = (ent.store.clone(), ent.single.clone());
            let bytes = blocking(move || {
                let mut bytes = 0;
                for k in &held {
                    for store in [&main, &single] {
                        if let Some(m) = store.meta(k)? {
                            if store.delete(k)? {
                                bytes += m.size;
                            }
                        }
                    }
                }
                Ok(bytes)
            })
            .await?;
            Ok(DeleteOutcome::Done { bytes })
        }
        DeletePhase::Refs => {
            // The reverse references held here of every codeword whose blocks are gone.
            let mut positions = Vec::new();
            for (_, r) in &recs {
                let keys: Vec<BlockKey> = r.stored_keys.iter().map(nk).collect();
                blocks_gone(ent, &keys).await?;
                positions.extend(keys.iter().map(refs_position));
            }
            let store = ent.store.clone();
            let bytes = blocking(move || {
                meta::bury(&store, &positions, now_us())?;
                let mut bytes = 0;
                for p in &positions {
                    if let Some(e) = store.record_get(refs::TABLE, &p.0)? {
                        store.record_delete(refs::TABLE, &p.0)?;
                        bytes += e.len() as u64;
                    }
                }
                Ok(bytes)
            })
            .await?;
            Ok(DeleteOutcome::Done { bytes })
        }
        DeletePhase::Codewords => {
            // A codeword record goes only once no member holds any of its blocks; it is buried
            // here whether or not this member holds it, so that a copy still on its way from
            // a member that has not deleted yet is not taken.
            let mut bytes = 0;
            for (rk, r) in &recs {
                let keys: Vec<BlockKey> = r.stored_keys.iter().map(nk).collect();
                blocks_gone(ent, &keys).await?;
                let store = ent.store.clone();
                let key = *rk;
                let held = blocking(move || {
                    meta::bury(&store, &[key], now_us())?;
                    meta::get_local(&store, &key)
                })
                .await?;
                // Gone for this member's cache too, held here or not (a cached record would
                // still pin the documents it points into).
                forget_cached(ent, rk);
                let Some(held) = held else { continue };
                let store = ent.store.clone();
                blocking(move || store.record_delete(meta::TABLE, &key.0)).await?;
                bytes += held.len() as u64;
            }
            Ok(DeleteOutcome::Done { bytes })
        }
        DeletePhase::Document => {
            // Asked of the ring again, not of the cache: a record another task fetched while
            // its holders were deleting it may still be cached here.
            let mut left = Vec::new();
            for (rk, _) in &recs {
                if meta::fetch_ring(ent, *rk).await.is_some() {
                    left.push(*rk);
                } else {
                    forget_cached(ent, rk);
                }
            }
            if !left.is_empty() {
                return Ok(DeleteOutcome::Refused(format!(
                    "{} codeword records of {doc} still exist: delete them first",
                    left.len()
                )));
            }
            let store = ent.store.clone();
            let held = blocking(move || {
                meta::bury(&store, &[doc], now_us())?;
                let held = meta::get_local(&store, &doc)?;
                if held.is_some() {
                    store.record_delete(meta::TABLE, &doc.0)?;
                }
                Ok(held)
            })
            .await?;
            forget_cached(ent, &doc);
            // What the document cost its writer here (if this node accepted the write) is
            // theirs again.
            if let Some(q) = &ent.quotas {
                q.release_content(BlockKey(d.content_hash))
                    .await
                    .map_err(|e| format!("quota: {}", e.message))?;
            }
            Ok(DeleteOutcome::Done {
                bytes: held.map_or(0, |h| h.len() as u64),
            })
        }
    }
}

/// `Ok` when no member of their replica sets holds any of `keys` (in either store).
async fn blocks_gone(ent: &Entangled, keys: &[BlockKey]) -> Result<(), String> {
    let held = super::read::has_ring(ent, keys).await?;
    match held.iter().next() {
        None => Ok(()),
        Some(k) => Err(format!(
            "block {k} of the document is still held ({} in all): delete the blocks first",
            held.len()
        )),
    }
}

/// Drops a deleted record from the decoded-record cache.
fn forget_cached(ent: &Entangled, key: &BlockKey) {
    let mut cache = peerstore_proto::lock(&ent.records);
    cache.0.remove(key);
    cache.1.remove(key);
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("store: {e}"))
}

/// `ClientRequest::DeleteDocuments`: checks the statement, then deletes its documents newest
/// first, each phase on every member of the ring before the next.
pub async fn delete_ring(
    ent: &Entangled,
    statement_bytes: Vec<u8>,
) -> Result<DeleteReport, RingError> {
    if ent.params().is_none() {
        return Err(RingError::new(
            ErrorCode::BadRequest,
            "this ring stores plain blocks (entanglement none): documents cannot be deleted yet",
        ));
    }
    let st = statement(&statement_bytes).map_err(|e| RingError::new(ErrorCode::Forbidden, e))?;
    let mut report = DeleteReport::default();
    // The documents that exist, checked, newest first.
    let mut docs = Vec::new();
    for k in st.keys.iter().map(|k| BlockKey(*k)) {
        match writer_checked(ent, &st, k).await {
            Ok(Some(d)) => docs.push((d.created_us.unwrap_or(0), k, d)),
            Ok(None) => report.deleted.push(k),
            Err(e) => {
                if e.contains("only its writer") {
                    return Err(RingError::new(ErrorCode::Forbidden, e));
                }
                report.failed.push((k, e));
            }
        }
    }
    docs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let members = ent.ring.members().await;
    'docs: for (_, key, d) in docs {
        // An honest entry node checks pinning once for all before anyone deletes anything;
        // every member checks again for what it holds.
        let own: BTreeSet<BlockKey> = d.codewords.iter().copied().collect();
        for (_, r) in codewords(ent, &d).await {
            for k in r.stored_keys.iter().map(nk) {
                match pinned(ent, &k, &own).await {
                    Ok(false) => {}
                    Ok(true) => {
                        report.pinned.push(key);
                        continue 'docs;
                    }
                    Err(e) => {
                        report.failed.push((key, e));
                        continue 'docs;
                    }
                }
            }
        }
        // A phase that finds a block back (copied by the replication anti-entropy while the
        // blocks went) runs the blocks phase again first, twice at most.
        let mut plan = vec![
            DeletePhase::Blocks,
            DeletePhase::Refs,
            DeletePhase::Codewords,
            DeletePhase::Document,
        ];
        plan.reverse();
        let mut retries = 2;
        while let Some(phase) = plan.pop() {
            let answers = futures::future::join_all(members.iter().map(|(_, a)| {
                ent.ring.call_ent(
                    a,
                    EntRequest::DeleteDocument {
                        statement: statement_bytes.clone(),
                        doc: key,
                        phase,
                    },
                )
            }))
            .await;
            let mut problem = None;
            for (a, r) in answers.into_iter().enumerate() {
                match r {
                    Ok(EntResponse::DeleteOutcome(DeleteOutcome::Done { bytes })) => {
                        report.bytes_freed += bytes;
                    }
                    Ok(EntResponse::DeleteOutcome(DeleteOutcome::Pinned)) => {
                        problem.get_or_insert((true, String::new()));
                    }
                    Ok(EntResponse::DeleteOutcome(DeleteOutcome::Refused(e))) => {
                        problem.get_or_insert((false, format!("{:?} refused: {e}", phase)));
                    }
                    Ok(other) => {
                        problem.get_or_insert((false, format!("unexpected answer {other:?}")));
                    }
                    Err(e) => {
                        let who = &members[a].1;
                        problem.get_or_insert((false, format!("member {who} ({phase:?}): {e}")));
                    }
                }
            }
            match problem {
                None => {}
                Some((true, _)) => {
                    report.pinned.push(key);
                    continue 'docs;
                }
                Some((false, e)) if retries > 0 && e.contains("still held") => {
                    retries -= 1;
                    plan.push(phase);
                    plan.push(DeletePhase::Blocks);
                }
                Some((false, e)) => {
                    report.failed.push((key, e));
                    continue 'docs;
                }
            }
        }
        report.deleted.push(key);
    }
    Ok(report)
}

/// `EntRequest::ListDocumentsLocal`: the documents written by `writer` among the records this
/// node owns in (after, end], where end is this node's id (or the top of the key space for the
/// node whose range wraps); at most `limit`.
pub async fn list_local(
    ent: &Entangled,
    writer: [u8; 32],
    after: BlockKey,
    limit: u32,
) -> Result<DocumentPage, RingError> {
    let Some(view) = ent.ring.handle.view().await else {
        return Ok(DocumentPage::default());
    };
    if !view.member {
        return Ok(DocumentPage::default());
    }
    let me = BlockKey(view.me.id.0);
    let end = if after < me { me } else { BlockKey::MAX };
    let (from, to) = view.ranges.owned;
    let (of, ot) = (BlockKey(from.0), BlockKey(to.0));
    let limit = limit.clamp(1, 4096) as usize;
    let store = ent.store.clone();
    let (documents, last, more) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut cursor = Some(after);
        let mut last = after;
        let mut more = false;
        while let Some(c) = cursor {
            let (page, next) =
                meta::table_range(&store, meta::TABLE, after, end, Some(c), SCAN_PAGE)?;
            for (k, bytes) in page {
                last = k;
                if !(of == ot || in_interval(&of, &ot, &k)) || BlockKey::of(&bytes) != k {
                    continue;
                }
                let Some(d) = DocRecord::decode(&bytes) else {
                    continue;
                };
                if d.writer == Some(writer) {
                    out.push(DocumentInfo {
                        key: k,
                        len: d.len,
                        created_us: d.created_us.unwrap_or(0),
                    });
                    if out.len() >= limit {
                        more = true;
                        break;
                    }
                }
            }
            if more {
                break;
            }
            cursor = if next { Some(last) } else { None };
        }
        Ok::<_, crate::store::StoreError>((out, last, more))
    })
    .await
    .map_err(|e| RingError::internal(e.to_string()))??;
    let next = if more {
        Some(last)
    } else if end == BlockKey::MAX {
        None
    } else {
        Some(end)
    };
    Ok(DocumentPage { documents, next })
}

/// `ClientRequest::ListDocuments`: the ring's documents written by `writer` in key order after
/// `after`, at most `limit` per page, asking each owner in turn.
pub async fn list_ring(
    ent: &Entangled,
    writer: [u8; 32],
    after: Option<BlockKey>,
    limit: u32,
) -> Result<DocumentPage, String> {
    if ent.params().is_none() {
        return Ok(DocumentPage::default());
    }
    let (documents, _, next) =
        repair::by_owner(ent, after, limit, |owner, cursor, remaining| async move {
            match ent
                .ring
                .call_ent(
                    &owner,
                    EntRequest::ListDocumentsLocal {
                        writer,
                        after: cursor,
                        limit: remaining,
                    },
                )
                .await?
            {
                EntResponse::Documents(p) => {
                    let n = p.documents.len() as u64;
                    Ok((p.documents, n, p.next))
                }
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
        .await?;
    Ok(DocumentPage { documents, next })
}
