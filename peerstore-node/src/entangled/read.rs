//! Reading: symbols from the ring (every replica asked at once, the first copy that verifies
//! wins) and documents (all symbols of a codeword requested in parallel, decoded from the
//! first `s + t` that verify).

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::FuturesUnordered;
use futures::StreamExt;

use super::format::{decode_record, ek, nk, DocRecord};
use super::{call, locate, meta, EntRequest, EntResponse};
use crate::proto::{BlockKey, ErrorCode, NodeAddr, Request, Response};
use crate::service::Service;

/// A block held here, in the replicated store or as a single copy (verified by the store).
pub async fn fetch_local(svc: &Service, key: BlockKey) -> Option<Vec<u8>> {
    let (main, single) = (svc.store.clone(), svc.entangled.single.clone());
    tokio::task::spawn_blocking(move || {
        if let Ok(Some(b)) = main.get(&key) {
            return Some(b);
        }
        single.get(&key).ok().flatten()
    })
    .await
    .ok()
    .flatten()
}

/// A block from the ring: all members of its replica set are asked at once; the first answer
/// that hashes to the key wins.
pub async fn fetch_ring(svc: &Service, key: BlockKey) -> Option<Vec<u8>> {
    let set = locate(svc, &key).await.ok()?;
    fetch_from(svc, key, &set).await
}

/// As [`fetch_ring`], from the given nodes.
pub async fn fetch_from(svc: &Service, key: BlockKey, nodes: &[NodeAddr]) -> Option<Vec<u8>> {
    let mut asks: FuturesUnordered<_> = nodes
        .iter()
        .map(|m| call(svc, m, EntRequest::FetchSymbol { key }))
        .collect();
    while let Some(r) = asks.next().await {
        if let Ok(EntResponse::Block { data }) = r {
            if BlockKey::of(&data) == key {
                return Some(data);
            }
        }
    }
    None
}

/// Which of `keys` some member of their replica set holds (in either store).
pub async fn has_ring(svc: &Service, keys: &[BlockKey]) -> Result<BTreeSet<BlockKey>, String> {
    let located = futures::stream::iter(keys.iter().copied())
        .map(|k| async move { (k, locate(svc, &k).await) })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut by_node: BTreeMap<NodeAddr, Vec<BlockKey>> = BTreeMap::new();
    for (k, set) in located {
        for m in set? {
            by_node.entry(m).or_default().push(k);
        }
    }
    let answers = futures::stream::iter(by_node)
        .map(|(node, keys)| async move {
            let r = call(svc, &node, EntRequest::HasSymbols { keys: keys.clone() }).await;
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
pub async fn get_block(svc: &Service, key: BlockKey) -> Option<Vec<u8>> {
    match svc.handle_request(Request::Get { key }).await {
        Response::Block { data } if BlockKey::of(&data) == key => Some(data),
        _ => fetch_ring(svc, key).await,
    }
}

/// `GetDocument`: a document record (from its metadata holders) is decoded; a plain block is
/// returned as is.
pub async fn get_document(svc: &Service, key: BlockKey) -> Response {
    let record = if svc.entangled.params().is_some() {
        meta::fetch_ring(svc, key).await
    } else {
        None
    };
    let bytes = match record {
        Some(b) => b,
        None => match get_block(svc, key).await {
            Some(b) => b,
            None => return Response::NotFound,
        },
    };
    let Some(doc) = DocRecord::decode(&bytes) else {
        return Response::Block { data: bytes };
    };
    let parts = futures::stream::iter(doc.codewords.iter().copied())
        .map(|rk| async move { decode_codeword(svc, rk, &doc.params).await })
        .buffered(4)
        .collect::<Vec<_>>()
        .await;
    let mut out = Vec::with_capacity(usize::try_from(doc.len).unwrap_or(0));
    for p in parts {
        match p {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(e) => return Response::error(ErrorCode::Unavailable, e),
        }
    }
    if out.len() as u64 != doc.len || *blake3::hash(&out).as_bytes() != doc.content_hash {
        return Response::error(
            ErrorCode::Internal,
            format!("document {key}: decoded bytes do not match the document record"),
        );
    }
    Response::Block { data: out }
}

/// Decodes one codeword: its record, then every pointer and parity requested at once; decoding
/// is tried as soon as `s + t` verified symbols are in (and again with each later one, should
/// a symbol fail the codec's checks).
pub async fn decode_codeword(
    svc: &Service,
    record_key: BlockKey,
    params: &entangle::Params,
) -> Result<Vec<u8>, String> {
    let rec_bytes = meta::fetch_ring(svc, record_key)
        .await
        .ok_or_else(|| format!("codeword record {record_key} is unavailable"))?;
    let rec = decode_record(&rec_bytes)
        .ok_or_else(|| format!("block {record_key} is not a codeword record"))?;
    if rec.params != *params {
        return Err(format!(
            "codeword record {record_key} has other parameters than its document"
        ));
    }
    let keys = entangle::fetch_order(&rec);
    let anchors = rec.params.t() - rec.pointers.iter().filter(|k| keys.contains(k)).count();
    let need = rec.params.needed().saturating_sub(anchors);
    let mut fetches: FuturesUnordered<_> = keys
        .iter()
        .map(|k| {
            let k = nk(k);
            async move { (k, fetch_ring(svc, k).await) }
        })
        .collect();
    let mut have: BTreeMap<entangle::BlockKey, Vec<u8>> = BTreeMap::new();
    let mut last_err = format!("codeword {}: fewer than s + t symbols available", rec.id);
    while let Some((k, bytes)) = fetches.next().await {
        let Some(bytes) = bytes else { continue };
        have.insert(ek(&k), bytes);
        if have.len() >= need {
            let (r, h) = (rec.clone(), have.clone());
            match tokio::task::spawn_blocking(move || entangle::decode(&r, &h)).await {
                Ok(Ok(doc)) => return Ok(doc),
                Ok(Err(e)) => last_err = e.to_string(),
                Err(e) => last_err = e.to_string(),
            }
        }
    }
    Err(last_err)
}
