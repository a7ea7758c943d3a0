//! The HTTP gateway's whole-document endpoints (issue 15), in the manner of RECAST's proxy:
//! `PUT /doc/<name>` stores a body as one document of the ring (entangled like any other
//! write), `GET /doc/<name>` returns it (with `Range`), `GET /doc/<name>/__meta` describes it.
//! Served by the node's web server (`--http`, loopback unless `--http-public`).
//!
//! - **Who writes.** The gateway is a user of its own: an identity kept in
//!   `<data-dir>/gateway.key` (made on first use, mode 0600). Its writes are signed
//!   ([`crypto::WriteAuth`]) and charged to this node's quota like a client's.
//! - **What nodes see.** Ciphertext only: the body is sealed under the gateway identity's
//!   keys before it is stored, and so is the name's record. Only this node (it holds the
//!   key) can read its documents back; another node's gateway answers 404 for them.
//! - **Names.** A name is a mutable record of the ring (a root record of the sub-identity
//!   `gateway-doc:<name>`, chain-replicated, docs/CHAIN.md) that points at the document:
//!   its creation is a compare-and-set from "absent", so of two PUTs of one name exactly one
//!   wins and the other gets 409, on any node of the ring. Names are write-once.
//! - **Answers.** 201 stored, 200/206 read, 400 bad name, 404 no such name, 409 name taken,
//!   413 body over [`MAX_DOC_BODY`], 416 unsatisfiable range, 502 the ring failed the
//!   document's integrity check, 503 the ring is unavailable.
//!
//! And what read capabilities open (`peerstore-client share`, docs/SHARING.md):
//! `GET /cap/<cap>/` lists the shared folder (HTML, or JSON with `Accept: application/json`),
//! `GET /cap/<cap>/<path>` lists a folder below it or streams a file (with `Range`). The node
//! resolves the capability as a client does (the share's signed record, its sealed manifest,
//! each chunk under its own key), in memory only: no capability, key or plaintext is written
//! or logged. 400 a bad capability or path, 404 nothing there, 410 a revoked or expired
//! share.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use crypto::{Identity, RootRecord};
use peerstore_proto::{BlockKey, CasOutcome, ClientRequest, ClientResponse, ReadFrom, Role};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tracing::warn;

use peerstore_proto::share::{Capability, ShareManifest, ShareState, MAX_SHARE_PIECES};
use peerstore_proto::tree::{ChunkRef, Entry, EntryKind};

use crate::driver::Caller;
use crate::service::Service;

/// The gateway identity's file in the data directory: 64 random bytes (master key, signing
/// seed).
pub const GATEWAY_KEY_FILE: &str = "gateway.key";
/// Largest body `PUT /doc/<name>` takes: one document of the ring, less the sealing overhead.
pub const MAX_DOC_BODY: usize = peerstore_proto::MAX_BLOCK_SIZE - 1024;
/// Longest name, in bytes.
pub const MAX_NAME: usize = 200;
/// Capabilities resolved at once: each may hold a share manifest of up to
/// `MAX_SHARE_PIECES` documents (256 MiB) in memory while it is opened.
const RESOLVING_AT_ONCE: usize = 4;
/// Longest `Content-Type` kept with a document.
const MAX_CONTENT_TYPE: usize = 128;

/// What a name's record holds (sealed): where the document is and what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DocMeta {
    /// The document's key in the ring.
    key: [u8; 32],
    /// The body's length in bytes.
    size: u64,
    /// BLAKE3 of the body (checked on every read).
    blake3: [u8; 32],
    content_type: String,
    /// When it was stored (microseconds since the Unix epoch).
    stored_us: u64,
}

/// The gateway's state.
pub struct Gateway {
    service: Arc<Service>,
    identity: Identity,
    caller: Caller,
    /// Bounds the share manifests held at once ([`RESOLVING_AT_ONCE`]).
    resolving: tokio::sync::Semaphore,
}

/// The gateway's routes (state applied), with their body limit.
pub fn routes(service: Arc<Service>, data_dir: &Path) -> anyhow::Result<Router> {
    let identity = load_or_create_identity(data_dir)?;
    let caller = Caller {
        peer: service.ring.me().peer,
        role: Role::User,
        label: "gateway".into(),
    };
    let gw = Arc::new(Gateway {
        service,
        identity,
        caller,
        resolving: tokio::sync::Semaphore::new(RESOLVING_AT_ONCE),
    });
    Ok(Router::new()
        .route("/doc/{name}", get(get_doc).put(put_doc))
        .route("/doc/{name}/__meta", get(get_meta))
        .route("/cap/{cap}", get(cap_root))
        .route("/cap/{cap}/", get(cap_root))
        .route("/cap/{cap}/{*path}", get(cap_path))
        .layer(DefaultBodyLimit::max(MAX_DOC_BODY))
        .with_state(gw))
}

/// The gateway identity of the node whose data directory is `data_dir`, made on first use.
pub fn load_or_create_identity(data_dir: &Path) -> anyhow::Result<Identity> {
    let path = data_dir.join(GATEWAY_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes: [u8; 64] = bytes.as_slice().try_into().map_err(|_| {
                anyhow::anyhow!(
                    "{}: not a gateway key (64 bytes expected); move it away to make a new one",
                    path.display()
                )
            })?;
            let (master, seed) = bytes.split_at(32);
            Ok(Identity::from_secrets(
                master.try_into().expect("32 bytes"),
                seed.try_into().expect("32 bytes"),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = zeroize::Zeroizing::new([0u8; 64]);
            OsRng.fill_bytes(bytes.as_mut());
            crate::identity::write_durable(&path, bytes.as_ref(), true)?;
            load_or_create_identity(data_dir)
        }
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Whether `name` may name a document: 1 to [`MAX_NAME`] bytes of `[A-Za-z0-9._-]`, not `.`
/// or `..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn answer(status: StatusCode, text: impl Into<String>) -> Response {
    let mut text = text.into();
    text.push('\n');
    let mut r = (status, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn ring_error(what: &str, r: ClientResponse) -> Response {
    match r {
        ClientResponse::Error { code, message } => {
            let status = match code {
                peerstore_proto::ErrorCode::BadRequest | peerstore_proto::ErrorCode::Rejected => {
                    StatusCode::BAD_REQUEST
                }
                peerstore_proto::ErrorCode::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            answer(status, format!("{what}: {message}"))
        }
        other => answer(
            StatusCode::BAD_GATEWAY,
            format!("{what}: unexpected answer {}", describe(&other)),
        ),
    }
}

fn describe(r: &ClientResponse) -> String {
    let s = format!("{r:?}");
    s.chars().take(80).collect()
}

impl Gateway {
    /// The sub-identity whose root record is `name`'s record.
    fn name_identity(&self, name: &str) -> Identity {
        self.identity
            .derived(format!("gateway-doc:{name}").as_bytes())
    }

    /// The sealing context of `name`'s body.
    fn body_context(&self, name: &str) -> Vec<u8> {
        let mut c = b"peerstore gateway document\0".to_vec();
        c.extend_from_slice(&self.identity.user_id().0);
        c.extend_from_slice(name.as_bytes());
        c
    }

    /// `name`'s record: `Ok(None)` if there is none.
    async fn meta(&self, name: &str) -> Result<Option<DocMeta>, Response> {
        let sub = self.name_identity(name);
        let key = BlockKey(crypto::root_key(&sub.user_id()));
        let r = self
            .service
            .client(
                ClientRequest::RecordRead {
                    key,
                    from: ReadFrom::Any,
                },
                &self.caller,
            )
            .await;
        let record = match r {
            ClientResponse::RecordValue { record: None, .. } => return Ok(None),
            ClientResponse::RecordValue {
                record: Some(r), ..
            } => r,
            other => return Err(ring_error("reading the name", other)),
        };
        let bad = |why: String| {
            warn!(%name, %why, "a gateway name's record does not check");
            answer(
                StatusCode::BAD_GATEWAY,
                format!("the record of {name:?} does not check: {why}"),
            )
        };
        let rec = RootRecord::decode(&record).map_err(|e| bad(e.to_string()))?;
        if rec.user != sub.user_id() {
            return Err(bad("signed by another key".into()));
        }
        let plain = crypto::open_root_payload(&sub.keys(), &rec.user, rec.seq, &rec.payload)
            .map_err(|e| bad(e.to_string()))?;
        let meta: DocMeta = postcard::from_bytes(&plain).map_err(|e| bad(e.to_string()))?;
        Ok(Some(meta))
    }

    /// The body of the document `meta` describes, opened and checked.
    async fn body(&self, name: &str, meta: &DocMeta) -> Result<Vec<u8>, Response> {
        let r = self
            .service
            .client(
                ClientRequest::GetDocument {
                    key: BlockKey(meta.key),
                },
                &self.caller,
            )
            .await;
        let sealed = match r {
            ClientResponse::Block { data } => data,
            ClientResponse::NotFound => {
                return Err(answer(
                    StatusCode::NOT_FOUND,
                    format!("the document of {name:?} is not in the ring"),
                ))
            }
            other => return Err(ring_error("reading the document", other)),
        };
        let plain = crypto::open_manifest(&self.identity.keys(), &self.body_context(name), &sealed)
            .map_err(|e| {
                answer(
                    StatusCode::BAD_GATEWAY,
                    format!("the document of {name:?} does not decrypt: {e}"),
                )
            })?;
        if plain.len() as u64 != meta.size || *blake3::hash(&plain).as_bytes() != meta.blake3 {
            return Err(answer(
                StatusCode::BAD_GATEWAY,
                format!("the document of {name:?} does not match its hash"),
            ));
        }
        Ok(plain)
    }
}

async fn put_doc(
    State(gw): State<Arc<Gateway>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !valid_name(&name) {
        return answer(
            StatusCode::BAD_REQUEST,
            format!("bad document name (1 to {MAX_NAME} bytes of A-Z a-z 0-9 . _ -)"),
        );
    }
    match gw.meta(&name).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return answer(
                StatusCode::CONFLICT,
                format!("{name:?} exists (names are write-once)"),
            )
        }
        Err(r) => return r,
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= MAX_CONTENT_TYPE && v.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .unwrap_or("application/octet-stream")
        .to_string();
    let sealed = crypto::seal_manifest(
        &gw.identity.keys(),
        &gw.body_context(&name),
        &body,
        &mut OsRng,
    );
    let content = BlockKey::of(&sealed);
    let auth = crypto::WriteAuth::sign(&gw.identity, &content.0, None, now_us(), OsRng.next_u64());
    let r = gw
        .service
        .client(
            ClientRequest::PutDocument {
                data: sealed,
                auth: Some(postcard::to_stdvec(&auth).unwrap_or_default()),
                session: None,
            },
            &gw.caller,
        )
        .await;
    let key = match r {
        ClientResponse::DocumentStored { key } => key,
        other => return ring_error("storing the document", other),
    };
    let meta = DocMeta {
        key: key.0,
        size: body.len() as u64,
        blake3: *blake3::hash(&body).as_bytes(),
        content_type,
        stored_us: now_us(),
    };
    let sub = gw.name_identity(&name);
    let payload = match postcard::to_stdvec(&meta) {
        Ok(p) => crypto::seal_root_payload(&sub.keys(), &sub.user_id(), 1, &p, &mut OsRng),
        Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let record = match RootRecord::sign(&sub, 1, payload).and_then(|r| r.encode()) {
        Ok(r) => r,
        Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let r = gw
        .service
        .client(
            ClientRequest::RecordCas {
                key: BlockKey(crypto::root_key(&sub.user_id())),
                expected: 0,
                record,
                id: chain::ReqId {
                    client: OsRng.next_u64(),
                    seq: 1,
                },
            },
            &gw.caller,
        )
        .await;
    match r {
        ClientResponse::RecordCas(CasOutcome::Stored { .. }) => {
            let mut r = (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({
                    "name": name,
                    "key": key.to_string(),
                    "size": meta.size,
                    "blake3": hex::encode(meta.blake3),
                })
                .to_string(),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("/doc/{name}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        ClientResponse::RecordCas(CasOutcome::Changed { .. }) => answer(
            StatusCode::CONFLICT,
            format!("{name:?} was stored by another request meanwhile (names are write-once)"),
        ),
        other => ring_error("naming the document", other),
    }
}

async fn get_meta(State(gw): State<Arc<Gateway>>, UrlPath(name): UrlPath<String>) -> Response {
    if !valid_name(&name) {
        return answer(StatusCode::BAD_REQUEST, "bad document name");
    }
    match gw.meta(&name).await {
        Ok(None) => answer(StatusCode::NOT_FOUND, format!("no document {name:?}")),
        Ok(Some(m)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({
                "name": name,
                "key": BlockKey(m.key).to_string(),
                "size": m.size,
                "blake3": hex::encode(m.blake3),
                "content_type": m.content_type,
                "stored_us": m.stored_us,
            })
            .to_string(),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn get_doc(
    State(gw): State<Arc<Gateway>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if !valid_name(&name) {
        return answer(StatusCode::BAD_REQUEST, "bad document name");
    }
    let meta = match gw.meta(&name).await {
        Ok(Some(m)) => m,
        Ok(None) => return answer(StatusCode::NOT_FOUND, format!("no document {name:?}")),
        Err(r) => return r,
    };
    match gw.body(&name, &meta).await {
        Ok(body) => ranged(body, &meta.content_type, &headers),
        Err(r) => r,
    }
}

/// A whole body, or the single range the request's `Range` header asks for (206), or 416.
/// Several ranges in one request are answered with the whole body (allowed by RFC 9110).
pub fn ranged(body: Vec<u8>, content_type: &str, headers: &HeaderMap) -> Response {
    let len = body.len() as u64;
    let content_type = HeaderValue::from_str(content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let mut r = match range {
        None | Some(RangeAsk::Ignore) => {
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = StatusCode::OK;
            r
        }
        Some(RangeAsk::Unsatisfiable) => {
            let mut r = answer(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
        Some(RangeAsk::Slice(a, b)) => {
            let slice = body[a as usize..=b as usize].to_vec();
            let mut r = Response::new(Body::from(slice));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    r
}

/// What a `Range` header asks of a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// Not a single byte range this server serves: answer the whole body.
    Ignore,
    /// Bytes `a..=b`.
    Slice(u64, u64),
    /// A byte range that starts past the end (416).
    Unsatisfiable,
}

/// Parses `bytes=A-B`, `bytes=A-` and `bytes=-N` (one range) against a body of `len` bytes.
pub fn parse_range(v: &str, len: u64) -> RangeAsk {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeAsk::Ignore;
    };
    if spec.contains(',') {
        return RangeAsk::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| {
        (!s.is_empty() && s.len() <= 20 && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(n) if len > 0 => RangeAsk::Slice(len.saturating_sub(n), len - 1),
            Some(_) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Ignore,
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return RangeAsk::Ignore;
            };
            let end = if b.is_empty() { Some(u64::MAX) } else { num(b) };
            match end {
                None => RangeAsk::Ignore,
                Some(end) if end < start => RangeAsk::Ignore,
                Some(_) if start >= len => RangeAsk::Unsatisfiable,
                Some(end) => RangeAsk::Slice(start, end.min(len - 1)),
            }
        }
        (true, true) => RangeAsk::Ignore,
    }
}

// ---- read capabilities --------------------------------------------------------------

async fn cap_root(
    State(gw): State<Arc<Gateway>>,
    UrlPath(cap): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    serve_cap(&gw, &cap, "", &headers).await
}

async fn cap_path(
    State(gw): State<Arc<Gateway>>,
    UrlPath((cap, path)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    serve_cap(&gw, &cap, &path, &headers).await
}

impl Gateway {
    /// What `cap` opens now, or the answer that says why not.
    async fn resolve(&self, cap: &Capability) -> Result<ShareManifest, Response> {
        let none = || {
            answer(
                StatusCode::NOT_FOUND,
                format!("no share {} in this ring", cap.id()),
            )
        };
        let r = self
            .service
            .client(
                ClientRequest::RecordRead {
                    key: cap.record_key(),
                    from: ReadFrom::Any,
                },
                &self.caller,
            )
            .await;
        let bytes = match r {
            ClientResponse::RecordValue { record: None, .. } => return Err(none()),
            ClientResponse::RecordValue {
                record: Some(r), ..
            } => r,
            other => return Err(ring_error("reading the share", other)),
        };
        let Some((_, state)) = peerstore_proto::share::open_record(cap, &bytes) else {
            return Err(none());
        };
        let (pieces, hash) = match state {
            ShareState::Revoked { .. } => {
                return Err(answer(
                    StatusCode::GONE,
                    format!("the share {} was revoked", cap.id()),
                ))
            }
            ShareState::Live { pieces, hash, .. } => (pieces, hash),
        };
        if pieces.is_empty() || pieces.len() > MAX_SHARE_PIECES {
            return Err(answer(
                StatusCode::BAD_GATEWAY,
                "the share's manifest is out of bounds",
            ));
        }
        let mut sealed = Vec::new();
        for key in pieces {
            let r = self
                .service
                .client(
                    ClientRequest::GetDocument { key: BlockKey(key) },
                    &self.caller,
                )
                .await;
            match r {
                ClientResponse::Block { data } => sealed.extend_from_slice(&data),
                ClientResponse::NotFound => {
                    return Err(answer(
                        StatusCode::BAD_GATEWAY,
                        "a piece of the share's manifest is missing from the ring",
                    ))
                }
                other => return Err(ring_error("reading the share's manifest", other)),
            }
        }
        let sm = peerstore_proto::share::open_manifest(cap, &hash, &sealed)
            .map_err(|e| answer(StatusCode::BAD_GATEWAY, e.to_string()))?;
        if sm.expires_us.is_some_and(|e| e <= now_us()) {
            return Err(answer(
                StatusCode::GONE,
                format!("the share {} expired", cap.id()),
            ));
        }
        Ok(sm)
    }
}

async fn serve_cap(gw: &Gateway, cap_text: &str, path: &str, headers: &HeaderMap) -> Response {
    let cap = match Capability::parse(cap_text) {
        Ok(c) => c,
        Err(e) => return answer(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let comps: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    if comps.iter().any(|c| c == "." || c == "..") {
        return answer(StatusCode::BAD_REQUEST, "no . or .. in a path");
    }
    let sm = {
        let Ok(_permit) = gw.resolving.acquire().await else {
            return answer(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping");
        };
        match gw.resolve(&cap).await {
            Ok(sm) => sm,
            Err(r) => return r,
        }
    };
    let base = format!("/cap/{cap_text}");
    if comps.is_empty() {
        return listing(&base, &sm.name, &[], &sm.entries, headers);
    }
    let Some(entry) = sm.entries.iter().find(|e| e.path == comps) else {
        return answer(StatusCode::NOT_FOUND, format!("no {path:?} in this share"));
    };
    match &entry.kind {
        EntryKind::Dir => listing(&base, &sm.name, &comps, &sm.entries, headers),
        EntryKind::Symlink { target } => answer(
            StatusCode::NOT_FOUND,
            format!("{path:?} is a symbolic link to {target:?}"),
        ),
        EntryKind::File { size, chunks } => {
            let keys: std::collections::HashMap<crypto::ChunkId, [u8; 32]> =
                sm.chunk_keys.iter().copied().collect();
            stream_file(gw, entry, *size, chunks.clone(), keys, headers)
        }
    }
}

/// `href` of `comps` below `base`, each component percent-encoded.
fn href(base: &str, comps: &[String], dir: bool) -> String {
    let mut out = base.to_string();
    for c in comps {
        out.push('/');
        for b in c.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if dir {
        out.push('/');
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The children of the folder `comps` of a share: HTML, or JSON when asked for.
fn listing(
    base: &str,
    name: &str,
    comps: &[String],
    entries: &[Entry],
    headers: &HeaderMap,
) -> Response {
    let children: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.path.len() == comps.len() + 1 && e.path.starts_with(comps))
        .collect();
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        let list: Vec<serde_json::Value> = children
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.path[e.path.len() - 1],
                    "kind": match e.kind {
                        EntryKind::Dir => "dir",
                        EntryKind::File { .. } => "file",
                        EntryKind::Symlink { .. } => "symlink",
                    },
                    "size": match &e.kind { EntryKind::File { size, .. } => *size, _ => 0 },
                    "mtime_ns": e.mtime_ns,
                })
            })
            .collect();
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::Value::Array(list).to_string(),
        )
            .into_response();
    }
    let title = if comps.is_empty() {
        name.to_string()
    } else {
        format!("{name}/{}", comps.join("/"))
    };
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head><body>\n<h1>{t}</h1>\n<ul>\n",
        t = html_escape(&title)
    );
    if !comps.is_empty() {
        html.push_str(&format!(
            "<li><a href=\"{}\">..</a></li>\n",
            html_escape(&href(base, &comps[..comps.len() - 1], true))
        ));
    }
    for e in children {
        let leaf = &e.path[e.path.len() - 1];
        let (suffix, size) = match &e.kind {
            EntryKind::Dir => ("/", String::new()),
            EntryKind::File { size, .. } => ("", format!(" ({size} bytes)")),
            EntryKind::Symlink { target } => ("", format!(" -&gt; {}", html_escape(target))),
        };
        if let EntryKind::Symlink { .. } = e.kind {
            html.push_str(&format!("<li>{}{size}</li>\n", html_escape(leaf)));
            continue;
        }
        let link = href(base, &e.path, matches!(e.kind, EntryKind::Dir));
        html.push_str(&format!(
            "<li><a class=\"entry\" href=\"{}\">{}{suffix}</a>{size}</li>\n",
            html_escape(&link),
            html_escape(leaf)
        ));
    }
    html.push_str("</ul>\n</body></html>\n");
    let mut r = (StatusCode::OK, html).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// A content type from a file name's extension.
fn content_type_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "md" | "rs" | "toml" | "sh" | "c" | "h" | "py") => "text/plain; charset=utf-8",
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// Streams the bytes of a shared file (all of them, or the asked range): each chunk's pack
/// fetched from the ring (the last one kept for the next chunk), the chunk opened with its
/// own key, its length checked.
fn stream_file(
    gw: &Gateway,
    entry: &Entry,
    size: u64,
    chunks: Vec<ChunkRef>,
    keys: std::collections::HashMap<crypto::ChunkId, [u8; 32]>,
    headers: &HeaderMap,
) -> Response {
    let name = entry.path.last().cloned().unwrap_or_default();
    let (start, end, partial) = match headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, size))
    {
        Some(RangeAsk::Slice(a, b)) => (a, b + 1, true),
        Some(RangeAsk::Unsatisfiable) => {
            let mut r = answer(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
        _ => (0, size, false),
    };
    // The chunks that hold [start, end), with their offsets in the file.
    let mut at = 0u64;
    let mut wanted = Vec::new();
    for c in chunks {
        let (from, to) = (at, at + u64::from(c.len));
        at = to;
        if to > start && from < end {
            wanted.push((c, from));
        }
    }
    let service = gw.service.clone();
    let caller = gw.caller.clone();
    let keys = Arc::new(keys);
    let stream = futures::stream::unfold(
        (wanted.into_iter(), None::<([u8; 32], Arc<Vec<u8>>)>),
        move |(mut it, mut last)| {
            let (service, caller, keys) = (service.clone(), caller.clone(), keys.clone());
            async move {
                let (c, from) = it.next()?;
                let fail = |m: String| std::io::Error::other(m);
                let pack = match &last {
                    Some((k, p)) if *k == c.pack => p.clone(),
                    _ => {
                        let r = service
                            .client(
                                ClientRequest::GetDocument {
                                    key: BlockKey(c.pack),
                                },
                                &caller,
                            )
                            .await;
                        match r {
                            ClientResponse::Block { data } => {
                                let p = Arc::new(data);
                                last = Some((c.pack, p.clone()));
                                p
                            }
                            _ => {
                                return Some((
                                    Err(fail("a pack of the file is unavailable".into())),
                                    (it, last),
                                ))
                            }
                        }
                    }
                };
                let plain = c
                    .range_in(pack.len())
                    .ok_or_else(|| fail("a chunk lies outside its pack".into()))
                    .and_then(|r| {
                        let key = keys
                            .get(&c.id)
                            .ok_or_else(|| fail("the share has no key for a chunk".into()))?;
                        crypto::open_chunk_shared(key, &c.id, &pack[r])
                            .map_err(|e| fail(e.to_string()))
                    })
                    .and_then(|p| {
                        if p.len() == c.len as usize {
                            Ok(p)
                        } else {
                            Err(fail("a chunk has the wrong length".into()))
                        }
                    });
                let piece = plain.map(|mut p| {
                    let lo = start.saturating_sub(from) as usize;
                    let hi = ((end - from) as usize).min(p.len());
                    p.truncate(hi);
                    p.drain(..lo);
                    Bytes::from(p)
                });
                Some((piece, (it, last)))
            }
        },
    );
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type_of(&name)),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&(end - start).to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if partial {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("report-2026.pdf"));
        assert!(valid_name("a"));
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(MAX_NAME + 1)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        use RangeAsk::*;
        assert_eq!(parse_range("bytes=0-9", 100), Slice(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Slice(90, 99));
        assert_eq!(parse_range("bytes=90-1000", 100), Slice(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Slice(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Slice(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=a-b", 100), Ignore);
        assert_eq!(parse_range("bytes=99999999999999999999999-", 100), Ignore);
    }

    #[test]
    fn the_gateway_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_identity(dir.path()).unwrap();
        let b = load_or_create_identity(dir.path()).unwrap();
        assert_eq!(a.user_id(), b.user_id());
        std::fs::write(dir.path().join(GATEWAY_KEY_FILE), b"short").unwrap();
        let e = load_or_create_identity(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a gateway key"), "{e}");
    }
}
