//! The encoder role: `PutDocument` on the node that accepted the client's write, and the
//! background prefetch of a uniform sample of the ring's parities for pointers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::{debug, warn};

use super::batch::Copies;
use super::format::{ek, encode_record, nk, DocRecord, RefsEntry, SignedWrite};
use super::layer::Entangled;
use super::layer::{now_us, Held};
use super::{meta, read, refs};
use crate::ring::RingError;
use peerstore_proto::{lock, EntRequest, EntResponse};
use peerstore_proto::{BlockKey, ErrorCode, MAX_BLOCK_SIZE};

/// Stores one block in the ring (routed to its replica set, majority acknowledged).
pub async fn put_block(ent: &Entangled, key: BlockKey, data: Vec<u8>) -> Result<(), RingError> {
    ent.blocks.put_block(key, data).await.map(|_| ())
}

/// Stores a parity as the single copy of its owner (first of its replica set), what replica
/// management leaves once a block is old; acknowledged once the owner has it on disk. Falls back
/// to the replica set when the owner cannot take it.
pub async fn put_single(ent: &Entangled, key: BlockKey, data: &[u8]) -> Result<(), RingError> {
    if let Ok(set) = ent.ring.replica_set(&key).await {
        if let Some(owner) = set.first() {
            if *owner == ent.ring.handle.local {
                let single = ent.single.clone();
                let bytes = data.to_vec();
                let stored = tokio::task::spawn_blocking(move || {
                    single.put(key, &bytes, crate::store::Role::Owner)
                })
                .await;
                if let Ok(Ok(_)) = stored {
                    return Ok(());
                }
            } else if let Ok(EntResponse::Ok) = ent
                .ring
                .call_ent(
                    owner,
                    EntRequest::StoreSingle {
                        key,
                        data: data.to_vec(),
                    },
                )
                .await
            {
                return Ok(());
            }
        }
    }
    put_block(ent, key, data.to_vec()).await
}

/// A pointer's bytes as the encoder hands them to the codec: a block of the pool or the tail,
/// shared (not copied), or one of the document's own earlier codewords (copied: the codec
/// still holds those) or an anchor (empty).
pub enum PointerBytes {
    Shared(Arc<Vec<u8>>),
    Own(Vec<u8>),
}

impl AsRef<[u8]> for PointerBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            PointerBytes::Shared(b) => b.as_slice(),
            PointerBytes::Own(b) => b.as_slice(),
        }
    }
}

/// Chooses the `t` pointers of the next codeword: RECAST's mixed policy over a local view of
/// the archive, oldest first: the uniform sample of the ring (pool), then this node's tail,
/// then the stored blocks of the document's earlier codewords (only their `sources_only`
/// first, the sources, when parities are stored later). Half the pointers come from the
/// recent part (tail and earlier codewords), the rest uniformly from everything; anchors fill
/// in while fewer than `t` parities are known.
fn choose(
    params: &entangle::Params,
    pool: &[Held],
    tail: &[Held],
    done: &[entangle::EncodedRecord],
    sources_only: Option<usize>,
    rng: &mut ChaCha8Rng,
) -> Vec<(entangle::BlockKey, PointerBytes)> {
    enum Src<'a> {
        Shared(&'a Arc<Vec<u8>>),
        Own(&'a [u8]),
    }
    let mut seen = BTreeSet::new();
    let mut archive: Vec<(entangle::BlockKey, Src<'_>)> = Vec::new();
    for (k, b) in pool {
        if seen.insert(*k) {
            archive.push((ek(k), Src::Shared(b)));
        }
    }
    let old = archive.len();
    for (k, b) in tail {
        if seen.insert(*k) {
            archive.push((ek(k), Src::Shared(b)));
        }
    }
    for (_, blocks) in done {
        // With parities stored later, only the sources of earlier codewords are stored when
        // this one is acknowledged (module `later`).
        let stored = sources_only.unwrap_or(blocks.len()).min(blocks.len());
        for (k, b) in &blocks[..stored] {
            if seen.insert(nk(k)) {
                archive.push((*k, Src::Own(b.as_slice())));
            }
        }
    }
    let recent = (archive.len() - old) as u64;
    let selector = entangle::PointerSelector {
        t: params.t(),
        tail: params.t() / 2,
        window: recent,
    };
    selector
        .select(archive.len() as u64, rng)
        .into_iter()
        .map(|c| match c {
            entangle::PointerChoice::Block(i) => {
                let (k, b) = &archive[i as usize];
                let bytes = match b {
                    Src::Shared(b) => PointerBytes::Shared(Arc::clone(b)),
                    Src::Own(b) => PointerBytes::Own(b.to_vec()),
                };
                (*k, bytes)
            }
            entangle::PointerChoice::Anchor(i) => (
                entangle::BlockKey::anchor(params.block_size, i),
                PointerBytes::Own(Vec::new()),
            ),
        })
        .collect()
}

/// Checks a `PutDocument`'s signed authorization: bounded, well-formed, signed by its user
/// over `content` and `session`, within the clock skew, and not seen before (a replay).
/// `Forbidden` with the reason otherwise.
pub fn check_write(
    ent: &Entangled,
    bytes: &[u8],
    content: &[u8; 32],
    session: Option<u64>,
) -> Result<SignedWrite, RingError> {
    if bytes.len() > peerstore_proto::MAX_WRITE_AUTH {
        return Err(RingError::new(
            ErrorCode::BadRequest,
            format!(
                "a write authorization of {} bytes exceeds {}",
                bytes.len(),
                peerstore_proto::MAX_WRITE_AUTH
            ),
        ));
    }
    let auth: crypto::WriteAuth = postcard::from_bytes(bytes).map_err(|e| {
        RingError::new(
            ErrorCode::BadRequest,
            format!("not a write authorization: {e}"),
        )
    })?;
    let now = now_us();
    auth.verify(content, session, now)
        .map_err(|e| RingError::new(ErrorCode::Forbidden, format!("write refused: {e}")))?;
    if !lock(&ent.replays).accept(&auth, now) {
        return Err(RingError::new(
            ErrorCode::Forbidden,
            "write refused: this signed write was used before (a replayed request); sign each write afresh",
        ));
    }
    Ok(SignedWrite { auth, session })
}

/// `PutDocument`: with type "none" a plain replicated block (key = BLAKE3(data)); with "step"
/// the document is entangled and stored as parities; the answer's key names its document
/// record, written last.
///
/// `content` is BLAKE3 of `data` (the caller has it); `auth` the writer's signed authorization
/// ([`check_write`]), whose signer is recorded as the document's writer.
pub async fn put_document(
    ent: &Entangled,
    data: Vec<u8>,
    content: BlockKey,
    auth: Option<Vec<u8>>,
    session: Option<peerstore_proto::EntangleSession>,
) -> Result<BlockKey, RingError> {
    if data.len() > MAX_BLOCK_SIZE {
        return Err(RingError::new(
            ErrorCode::BadRequest,
            format!("document of {} bytes exceeds {MAX_BLOCK_SIZE}", data.len()),
        ));
    }
    let signed = match auth {
        Some(bytes) => Some(check_write(
            ent,
            &bytes,
            &content.0,
            session.as_ref().map(|s| s.id),
        )?),
        None => None,
    };
    let writer = signed.as_ref().map(|s| s.auth.user.0);
    let Some(params) = ent.params() else {
        return ent.blocks.put_block(content, data).await.map(|_| content);
    };
    // A session's documents point only into the session and what its client keeps
    // (module `session`); others anywhere in this node's view of the ring.
    let session_key = session.as_ref().map(|s| (writer, s.id));
    let sampled = match (&session, session_key) {
        (Some(s), Some(k)) => match super::session::prepare(ent, k, s, params).await {
            Some(c) => Some(c),
            None => {
                return Err(RingError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "a session update names {} documents, more than {}",
                        s.keep.len(),
                        peerstore_proto::MAX_SESSION_KEEP
                    ),
                ))
            }
        },
        _ => None,
    };
    let (pool, tail, seed, doc_id) = {
        let mut st = lock(&ent.encoder);
        let seed: u64 = st.rng.gen();
        // A signed write's codeword ids derive from its signature (`DocRecord::owns_codeword`);
        // an anonymous one's are drawn at random.
        let doc_id: [u8; 32] = signed
            .as_ref()
            .map_or_else(|| st.rng.gen(), SignedWrite::document_id);
        let (pool, tail) = sampled.unwrap_or_else(|| {
            st.pool_uses = st.pool_uses.wrapping_add(1);
            (st.pool.clone(), st.tail.iter().cloned().collect::<Vec<_>>())
        });
        (pool, tail, seed, doc_id)
    };
    let layout = ent.layout();
    let later = super::later::enabled(ent);
    let sources_only = later.then(|| layout.sources(&params));
    let content_hash = content.0;
    let len = data.len() as u64;
    let encoded = match tokio::task::spawn_blocking(move || {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Every candidate pointer was checked against its key when it entered the encoder's
        // memory (fetched and hashed: the pool, a session's samples) or was made by this
        // encoder (the tails, the document's earlier codewords): not hashed again.
        entangle::encode_document_checked(
            entangle::PointerCheck::Trusted,
            (layout, entangle::Parallelism::AUTO, params),
            &doc_id,
            &data,
            |_, done| Ok(choose(&params, &pool, &tail, done, sources_only, &mut rng)),
        )
    })
    .await
    {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return Err(RingError::internal(format!("encode: {e}"))),
        Err(e) => return Err(RingError::internal(e.to_string())),
    };
    // 1. Stored blocks: sources with r replicas; the parities of a systematic codeword as
    // one copy on their owner (ReplicaPolicy::single_parities_at_write), the others with r.
    let sources = layout.sources(&params);
    let single_parities =
        layout == entangle::Layout::Systematic && ent.config.replicas.single_parities_at_write;
    // The encoder's blocks are shared, not copied (they go to the encoder's tail at the end);
    // each holder's batch request gets one copy of its blocks' bytes (module `batch`).
    let per = layout.stored(&params);
    let (encoded, blocks): (Vec<entangle::Record>, Vec<Vec<entangle::StoredBlock>>) =
        encoded.into_iter().unzip();
    let blocks: Vec<Held> = blocks
        .into_iter()
        .flatten()
        .map(|(k, b)| (nk(&k), Arc::new(b)))
        .collect();
    let copies: Vec<Copies> = (0..blocks.len())
        .map(|i| {
            if single_parities && i % per >= sources {
                Copies::Single
            } else {
                Copies::Replicated
            }
        })
        .collect();
    // Parities later (module `later`): the single copies wait in memory, within its budget,
    // and are stored once this node's clients pause; the rest now.
    let single_bytes: usize = blocks
        .iter()
        .zip(&copies)
        .filter(|(_, c)| **c == Copies::Single)
        .map(|((_, b), _)| b.len())
        .sum();
    let mut reservation = super::later::Reservation::new(
        ent,
        later,
        single_bytes,
        usize::try_from(ent.config.replicas.later_mib.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX),
    );
    let (mut now_blocks, mut now_copies, mut deferred) = (Vec::new(), Vec::new(), Vec::new());
    for (held, how) in blocks.iter().zip(&copies) {
        if reservation.later() && *how == Copies::Single {
            deferred.push(held.clone());
        } else {
            now_blocks.push(held.clone());
            now_copies.push(*how);
        }
    }
    if let Err(e) = super::batch::store_blocks(ent, &now_blocks, &now_copies).await {
        // The code stays: a full replica set reaches the client as "node full".
        return Err(RingError::new(e.code, format!("storing a block: {e}")));
    }
    // 2. Codeword records, on their m metadata holders.
    let anchors = entangle::Anchors::new(params.block_size, params.t());
    let mut record_keys = Vec::with_capacity(encoded.len());
    let mut records = Vec::with_capacity(encoded.len());
    let mut entries: BTreeMap<BlockKey, RefsEntry> = BTreeMap::new();
    let created = now_us();
    let mut position = 0u64;
    for rec in &encoded {
        let bytes = encode_record(rec);
        let rk = BlockKey::of(&bytes);
        records.push(bytes);
        record_keys.push(rk);
        for k in &rec.stored_keys {
            let e = entries.entry(nk(k)).or_insert_with(|| RefsEntry {
                block: nk(k),
                ..RefsEntry::default()
            });
            e.own = Some(rk);
            e.created_us = Some(created + position);
            position += 1;
        }
        for k in rec.pointers.iter().filter(|k| !anchors.contains(k)) {
            entries
                .entry(nk(k))
                .or_insert_with(|| RefsEntry {
                    block: nk(k),
                    ..RefsEntry::default()
                })
                .referrers
                .insert(rk);
        }
    }
    if let Err(e) = meta::store_ring(ent, records).await {
        return Err(RingError::unavailable(format!(
            "storing codeword records: {e}"
        )));
    }
    // 3. Reverse references.
    if let Err(e) = refs::store_ring(ent, entries.into_values().collect()).await {
        return Err(RingError::unavailable(e));
    }
    // 4. The document record, last.
    let doc_records = if reservation.later() {
        record_keys.clone()
    } else {
        Vec::new()
    };
    let doc = DocRecord {
        params,
        len,
        content_hash,
        codewords: record_keys,
        writer,
        created_us: Some(now_us()),
        signed,
    };
    let bytes = doc.encode();
    let key = BlockKey::of(&bytes);
    if let Err(e) = meta::store_ring(ent, vec![bytes]).await {
        return Err(RingError::unavailable(format!(
            "storing the document record: {e}"
        )));
    }
    reservation.queue(key, deferred, doc_records);
    // Pending parities are no pointers: only stored blocks join the tails.
    let blocks: Vec<Held> = match sources_only {
        Some(s) => blocks
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % per < s)
            .map(|(_, h)| h)
            .collect(),
        None => blocks,
    };
    if let Some(k) = session_key {
        // A session's blocks are pointers for the session's later documents only.
        lock(&ent.encoder).sessions.push_tail(&k, key, &blocks);
    } else {
        // Only the newest `tail_window` can stay: move just those.
        let skip = blocks.len().saturating_sub(ent.config.tail_window);
        let mut st = lock(&ent.encoder);
        for held in blocks.into_iter().skip(skip) {
            st.tail.push_back(held);
        }
        while st.tail.len() > ent.config.tail_window {
            st.tail.pop_front();
        }
    }
    Ok(key)
}

/// Keeps the pointer pool filled with a uniform sample of the ring's parities: asks the owner
/// of a random ring position for random parity keys it knows, fetches and verifies them. Fills
/// it (every second while rounds find new parities, else every 10 s: a young ring may hold
/// fewer parities than the pool wants) and refreshes a full pool once after writes without a
/// session have drawn on it ([`super::layer::EncoderState::pool_uses`]); idle and full, it
/// fetches nothing.
pub async fn prefetch_loop(ent: Arc<Entangled>) {
    let Some(params) = ent.params() else {
        return;
    };
    let target = (4 * params.t()).max(16);
    // The writes a refresh has answered, and whether the last round found new parities.
    let mut seen_uses = 0u64;
    let mut found = true;
    loop {
        let len = lock(&ent.encoder).pool.len();
        let wait = if len < target && found { 1 } else { 10 };
        tokio::time::sleep(Duration::from_secs(wait)).await;
        if ent.ring.handle.view().await.is_none() {
            return;
        }
        {
            let st = lock(&ent.encoder);
            if st.pool.len() >= target && st.pool_uses == seen_uses {
                continue;
            }
            // Taken at the start: a write during this round asks for the next one.
            seen_uses = st.pool_uses;
        }
        found = false;
        let pos = BlockKey(rand::thread_rng().gen());
        let Ok(set) = ent.ring.replica_set(&pos).await else {
            continue;
        };
        let Some(owner) = set.first() else { continue };
        let keys = match ent
            .ring
            .call_ent(owner, EntRequest::SampleParities { count: 8 })
            .await
        {
            Ok(EntResponse::Keys { keys }) => keys,
            _ => continue,
        };
        for k in keys {
            if lock(&ent.encoder).pool.iter().any(|(p, _)| *p == k) {
                continue;
            }
            let Some(bytes) = read::fetch_ring(&ent, k).await else {
                continue;
            };
            if entangle::codec::pointer_payload(&params, &ek(&k), &bytes).is_err() {
                match entangle::ParityBlock::decode(&bytes) {
                    Ok(b) if b.header.params != params => warn!(
                        %k,
                        theirs = ?b.header.params,
                        ours = ?params,
                        "a ring member stores parities with other entanglement parameters: \
                         every node of a ring must use the same [entanglement] settings"
                    ),
                    _ => debug!(%k, "sampled block is not a parity of this ring"),
                }
                continue;
            }
            found = true;
            let mut st = lock(&ent.encoder);
            if st.pool.len() < target {
                st.pool.push((k, Arc::new(bytes)));
            } else {
                let n = st.pool.len();
                let i = st.rng.gen_range(0..n);
                st.pool[i] = (k, Arc::new(bytes));
            }
        }
    }
}
