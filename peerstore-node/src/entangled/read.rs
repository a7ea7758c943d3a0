//! Reading: symbols from the ring (one holder at a time, hedged: the next one is asked too when
//! the first fails or is slow; the first copy that verifies wins) and documents (`s + t`
//! symbols of a codeword requested in parallel, more when one is missing or slow, decoded from
//! the first `s + t` that verify).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;

use super::format::{decode_record, ek, nk, DocRecord};
use super::layer::Entangled;
use super::meta;
use crate::ring::RingError;
use crate::store::BlockStore;
use peerstore_proto::{BlockKey, ErrorCode, NodeAddr};
use peerstore_proto::{EntRequest, EntResponse};

/// A block held here, in the replicated store or as a single copy (verified by the store).
pub async fn fetch_local(ent: &Entangled, key: BlockKey) -> Option<Vec<u8>> {
    let (main, single) = (ent.store.clone(), ent.single.clone());
    tokio::task::spawn_blocking(move || stored(&main, &single, &key))
        .await
        .ok()
        .flatten()
}

/// `key`'s block from the replicated store, else from the single copies (blocking; each store
/// verifies what it reads against the key).
fn stored(main: &BlockStore, single: &BlockStore, key: &BlockKey) -> Option<Vec<u8>> {
    match main.get(key) {
        Ok(Some(b)) => Some(b),
        _ => single.get(key).ok().flatten(),
    }
}

/// A block from the ring: one member of its replica set at a time (this node first if it is
/// one, then the owner, which keeps the single copy of a scrubbed parity, then the others),
/// the next one asked as well when a member fails or has not answered within [`HEDGE`]; the
/// first answer that hashes to the key wins.
pub async fn fetch_ring(ent: &Entangled, key: BlockKey) -> Option<Vec<u8>> {
    let set = ent.ring.replica_set(&key).await.ok()?;
    fetch_from(ent, key, &set).await
}

/// How long a symbol request may go unanswered before the next holder (or, for a codeword,
/// the next symbol) is asked as well. Each symbol is one block of up to a few hundred KiB, so
/// a healthy member answers well within this even on a loaded machine; a dead one costs this
/// much, not a request timeout.
pub const HEDGE: Duration = Duration::from_millis(300);

/// As [`fetch_ring`], from the given nodes (in this order, after this node if it is one).
pub async fn fetch_from(ent: &Entangled, key: BlockKey, nodes: &[NodeAddr]) -> Option<Vec<u8>> {
    let local = &ent.ring.handle.local;
    let mut order: Vec<NodeAddr> = nodes.iter().filter(|m| *m == local).cloned().collect();
    order.extend(nodes.iter().filter(|m| *m != local).cloned());
    let mut next = order.into_iter();
    let ask =
        |m: NodeAddr| async move { ent.ring.call_ent(&m, EntRequest::FetchSymbol { key }).await };
    let mut asks = FuturesUnordered::new();
    asks.push(ask(next.next()?));
    loop {
        tokio::select! {
            answer = asks.next() => match answer {
                Some(Ok(EntResponse::Block { data })) if BlockKey::of(&data) == key => {
                    return Some(data);
                }
                Some(_) => {
                    if let Some(m) = next.next() {
                        asks.push(ask(m));
                    } else if asks.is_empty() {
                        return None;
                    }
                }
                None => return None,
            },
            () = tokio::time::sleep(HEDGE) => {
                if let Some(m) = next.next() {
                    asks.push(ask(m));
                }
            }
        }
    }
}

/// Which of `keys` some member of their replica set holds (in either store).
pub async fn has_ring(ent: &Entangled, keys: &[BlockKey]) -> Result<BTreeSet<BlockKey>, String> {
    let located = ent.ring.replica_sets(keys).await?;
    let mut by_node: BTreeMap<NodeAddr, Vec<BlockKey>> = BTreeMap::new();
    for (k, set) in located {
        for m in set {
            by_node.entry(m).or_default().push(k);
        }
    }
    // One request per holder, in pages a member takes.
    let page = peerstore_proto::MAX_LIST_PAGE as usize;
    let asks = by_node.into_iter().flat_map(|(node, keys)| {
        keys.chunks(page)
            .map(|c| (node.clone(), c.to_vec()))
            .collect::<Vec<_>>()
    });
    let answers = futures::stream::iter(asks)
        .map(|(node, keys)| async move {
            let r = ent
                .ring
                .call_ent(&node, EntRequest::HasSymbols { keys: keys.clone() })
                .await;
            (keys, r)
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut out = BTreeSet::new();
    for (keys, r) in answers {
        if let Ok(EntResponse::Has { present }) = r {
            for (k, p) in keys.into_iter().zip(present) {
                if p {
                    out.insert(k);
                }
            }
        }
    }
    Ok(out)
}

/// A replicated block (records, documents) through the ring's ordinary read path.
pub async fn get_block(ent: &Entangled, key: BlockKey) -> Option<Vec<u8>> {
    match ent.blocks.get_block(key).await {
        Ok(Some(data)) => Some(data),
        _ => fetch_ring(ent, key).await,
    }
}

/// `GetDocument`: a document record (from its metadata holders' record tables, where only
/// valid records are kept) is decoded; a plain block is returned as is, never read as a
/// record, whatever its bytes look like.
pub async fn get_document(ent: &Entangled, key: BlockKey) -> Result<Option<Vec<u8>>, RingError> {
    let record = if ent.params().is_some() {
        meta::fetch_ring(ent, key).await
    } else {
        None
    };
    let bytes = match record {
        Some(b) => b,
        None => return Ok(get_block(ent, key).await),
    };
    let Some(doc) = DocRecord::decode(&bytes) else {
        return Ok(Some(bytes));
    };
    let parts = futures::stream::iter(doc.codewords.iter().copied())
        .map(|rk| async move { decode_codeword(ent, rk, &doc.params).await })
        .buffered(4)
        .collect::<Vec<_>>()
        .await;
    // `DocRecord::decode` bounds `len` by the document bound; allocate no more than that.
    let mut out = Vec::with_capacity(
        usize::try_from(doc.len)
            .unwrap_or(0)
            .min(peerstore_proto::MAX_BLOCK_SIZE),
    );
    for p in parts {
        match p {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(e) => return Err(RingError::unavailable(e)),
        }
    }
    if out.len() as u64 != doc.len || *blake3::hash(&out).as_bytes() != doc.content_hash {
        return Err(RingError::new(
            ErrorCode::Internal,
            format!("document {key}: decoded bytes do not match the document record"),
        ));
    }
    Ok(Some(out))
}

/// `DocumentSources`: where a document's bytes lie, for a reader that fetches them from their
/// holders itself (a healthy read of a systematic codeword is its `s` sources, and each byte
/// then crosses the network once, holder to reader, not holder to this node to reader).
/// `None` when there is no such plan: no document record under `key` (a plain block), or a
/// codeword that is parity-only or whose record cannot be had (the reader then asks
/// `GetDocument`, which decodes here). The plan is a hint: the reader checks the bytes it
/// assembles against the document's hash and falls back to `GetDocument` when they differ.
pub async fn document_sources(
    ent: &Entangled,
    key: BlockKey,
) -> Option<peerstore_proto::SourcePlan> {
    ent.params()?;
    let bytes = meta::fetch_ring(ent, key).await?;
    let doc = DocRecord::decode(&bytes)?;
    let records = futures::stream::iter(doc.codewords.iter().copied())
        .map(|rk| async move { meta::fetch_ring(ent, rk).await })
        .buffered(8)
        .collect::<Vec<_>>()
        .await;
    let mut codewords = Vec::with_capacity(records.len());
    let mut total = 0usize;
    for rec in records {
        let rec = decode_record(&rec?)?;
        if rec.params != doc.params || rec.source_keys().is_empty() {
            return None;
        }
        total += rec.source_keys().len();
        if total > peerstore_proto::SourcePlan::MAX_SOURCES {
            return None;
        }
        codewords.push(rec.source_keys().iter().map(nk).collect());
    }
    Some(peerstore_proto::SourcePlan {
        len: doc.len,
        content_hash: doc.content_hash,
        codewords,
    })
}

/// `GetSymbol`: a stored block of a codeword, from this node's stores, else from the other
/// members of its replica set (verified by its hash either way).
pub async fn get_symbol(ent: &Entangled, key: BlockKey) -> Option<Vec<u8>> {
    match fetch_local(ent, key).await {
        Some(b) => Some(b),
        None => fetch_ring(ent, key).await,
    }
}

/// `GetSymbols`: the stored blocks of `keys` that this node's own stores hold, in order, each
/// verified by its hash as it is read; `None` for a block it does not hold and for every
/// block once the answer would pass [`peerstore_proto::MAX_BLOCK_SIZE`] bytes (the reader
/// asks for those one by one). No ring fetch: a batch costs one node's disk only.
pub async fn get_symbols_local(ent: &Entangled, keys: Vec<BlockKey>) -> Vec<Option<Vec<u8>>> {
    let n = keys.len();
    let (main, single) = (ent.store.clone(), ent.single.clone());
    tokio::task::spawn_blocking(move || held_blocks(&main, &single, &keys))
        .await
        .unwrap_or_else(|_| vec![None; n])
}

/// The blocks of `SourcesHeld`, as [`get_symbols_local`] reads them, in the answer's form:
/// per key the length of its block if given, and the blocks one after the other (joined on
/// the blocking pool, beside the reads).
pub async fn sources_held_local(
    ent: &Entangled,
    keys: Vec<BlockKey>,
) -> (Vec<Option<u32>>, Vec<u8>) {
    let n = keys.len();
    let (main, single) = (ent.store.clone(), ent.single.clone());
    tokio::task::spawn_blocking(move || {
        let blocks = held_blocks(&main, &single, &keys);
        let mut data = Vec::with_capacity(blocks.iter().flatten().map(Vec::len).sum());
        let held = blocks
            .iter()
            .map(|b| {
                let b = b.as_ref()?;
                data.extend_from_slice(b);
                // Within MAX_BLOCK_SIZE bytes in all (held_blocks).
                u32::try_from(b.len()).ok()
            })
            .collect();
        (held, data)
    })
    .await
    .unwrap_or_else(|_| (vec![None; n], Vec::new()))
}

/// The blocks of `keys` held here (blocking), at most [`peerstore_proto::MAX_BLOCK_SIZE`]
/// bytes of them: `None` for a key not held and for every key once that is reached.
fn held_blocks(main: &BlockStore, single: &BlockStore, keys: &[BlockKey]) -> Vec<Option<Vec<u8>>> {
    let mut room = peerstore_proto::MAX_BLOCK_SIZE;
    keys.iter()
        .map(|key| {
            if room == 0 {
                return None;
            }
            let b = stored(main, single, key)?;
            if b.len() > room {
                room = 0;
                return None;
            }
            room -= b.len();
            Some(b)
        })
        .collect()
}

/// Decodes one codeword: its record, then its symbols, each from one holder ([`fetch_ring`]).
///
/// A systematic codeword is first read from its `s` sources alone: they are the document's
/// bytes, checked against the record's hashes, with no decoding (a healthy read moves `s`
/// blocks, not `s + t`). When a source cannot be had, or the sources do not check out, the read
/// falls back to the erasure code: pointers, then parities, until `s + t` verified symbols are in
/// (sources that did verify count). A parity-only codeword starts there.
///
/// A symbol that cannot be had starts the next one; so does a codeword that has gained nothing
/// for [`HEDGE`] (the fastest that verify win). Decoding is tried as soon as enough verified
/// symbols are in, and again with each later one should a symbol fail the codec's checks.
pub async fn decode_codeword(
    ent: &Entangled,
    record_key: BlockKey,
    params: &entangle::Params,
) -> Result<Vec<u8>, String> {
    let rec_bytes = meta::fetch_ring(ent, record_key)
        .await
        .ok_or_else(|| format!("codeword record {record_key} is unavailable"))?;
    let rec = decode_record(&rec_bytes)
        .ok_or_else(|| format!("block {record_key} is not a codeword record"))?;
    if rec.params != *params {
        return Err(format!(
            "codeword record {record_key} has other parameters than its document"
        ));
    }
    let rec = std::sync::Arc::new(rec);
    let keys = entangle::fetch_order(&rec);
    let anchors = rec.params.t() - rec.pointers.iter().filter(|k| keys.contains(k)).count();
    let need = rec.params.needed().saturating_sub(anchors);
    let sources: Vec<entangle::BlockKey> = rec.source_keys().to_vec();
    // How many fetches should be under way or done (not failed): the sources alone first,
    // then what the code needs, one more for each hedge or failed decode.
    let mut target = if sources.is_empty() {
        need
    } else {
        sources.len()
    };
    let mut sources_tried = sources.is_empty();
    let mut todo = keys.iter().map(nk);
    let fetch = |k: BlockKey| async move { (k, fetch_ring(ent, k).await) };
    let mut fetches = FuturesUnordered::new();
    let (mut launched, mut failed) = (0usize, 0usize);
    let mut have: BTreeMap<entangle::BlockKey, Vec<u8>> = BTreeMap::new();
    let mut last_err = format!("codeword {}: fewer than s + t symbols available", rec.id);
    loop {
        while launched - failed < target {
            let Some(k) = todo.next() else { break };
            fetches.push(fetch(k));
            launched += 1;
        }
        let got = tokio::select! {
            got = fetches.next() => got,
            () = tokio::time::sleep(HEDGE) => {
                // Nothing for a while: ask for one more symbol as well.
                target += 1;
                continue;
            }
        };
        let Some((k, bytes)) = got else {
            return Err(last_err);
        };
        let Some(bytes) = bytes else {
            failed += 1;
            // A source is missing: the code is needed.
            target = target.max(need);
            continue;
        };
        have.insert(ek(&k), bytes);
        let sources_in = !sources_tried && sources.iter().all(|k| have.contains_key(k));
        if have.len() >= need || sources_in {
            sources_tried |= sources_in;
            let (r, h) = (rec.clone(), std::mem::take(&mut have));
            match tokio::task::spawn_blocking(move || (entangle::decode(&r, &h), h)).await {
                Ok((Ok(doc), _)) => return Ok(doc),
                Ok((Err(e), h)) => {
                    last_err = e.to_string();
                    have = h;
                }
                Err(e) => return Err(e.to_string()),
            }
            // A symbol failed the codec's checks: what the code needs, and one more.
            target = target.max(need) + usize::from(have.len() >= need);
        }
    }
}
