//! The inbound service: answers the client, member and admin protocols by dispatching each
//! request to the subsystem that does the work ([`Replication`], [`Entangled`]). Each request
//! runs in its own task; a request that came on the wrong protocol is refused with a clear
//! error.

use std::sync::Arc;

use futures::future::BoxFuture;
use peerstore_proto::{
    misrouted, AdminRequest, AdminResponse, Audience, ClientRequest, ClientResponse, ErrorCode,
    ErrorResponse, Incoming, MemberInfo, MemberRequest, MemberResponse, StatusReport,
};
use tokio::sync::{mpsc, Semaphore};
use tracing::debug;

use crate::driver::{Caller, Inbound, Reply, RingView};
use crate::entangled::Entangled;
use crate::replication::{Replication, ROOTS};
use crate::ring::{blocking, LocalMember, Ring, RingError};
use crate::store::StoreError;

/// Most requests served at once; beyond that they wait (and the driver answers "busy" once
/// its queue is full too).
const MAX_CONCURRENT: usize = 512;
/// Most long-running requests (ring-wide repair, audit and scrub, and their per-node parts)
/// served at once, from their own pool: they cannot take the permits of ordinary requests.
const MAX_LONG: usize = 4;
/// How often a long-running request checks that its requester still waits for the answer.
const REQUESTER_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a request runs for long (minutes): it gets a permit of the long pool and is
/// cancelled when its requester goes away.
fn is_long(inbound: &Inbound) -> bool {
    match inbound {
        Inbound::Admin {
            request: Incoming::Message(r),
            ..
        } => !matches!(r, AdminRequest::EntangleStats),
        Inbound::Member {
            request: Incoming::Message(r),
            ..
        } => r.is_long_running(),
        _ => false,
    }
}

/// Resolves once `open` says the requester stopped waiting (its stream closed).
async fn requester_gone(open: impl Fn() -> bool) {
    loop {
        tokio::time::sleep(REQUESTER_CHECK).await;
        if !open() {
            return;
        }
    }
}

/// How long `GetRecord` waits for the record's chain before it reads the members' copies.
const GET_RECORD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// The answer to a long request whose requester went away (never sent; for the log).
const CANCELLED: &str = "cancelled: the requester went away";

pub struct Service {
    pub ring: Arc<Ring>,
    /// Linearizable mutable records (chain replication per record).
    pub chains: Arc<crate::chains::Chains>,
    pub replication: Arc<Replication>,
    /// The entangled storage layer (documents, repair, scrub).
    pub entangled: Arc<Entangled>,
    /// Per-user quotas of writes through this node.
    pub quotas: Arc<crate::quota::Quotas>,
    /// Counters of the requests answered (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What the data directory occupies on disk (`status`, `du`).
    pub disk: Arc<crate::disk::DiskUsage>,
}

impl LocalMember for Service {
    fn serve_member(&self, request: MemberRequest) -> BoxFuture<'_, MemberResponse> {
        Box::pin(self.member(request))
    }
}

impl Service {
    /// Serves inbound requests until the driver goes away.
    pub async fn serve(self: Arc<Self>, mut inbound: mpsc::Receiver<Inbound>) {
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT));
        let long = Arc::new(Semaphore::new(MAX_LONG));
        while let Some(inbound) = inbound.recv().await {
            let pool = if is_long(&inbound) { &long } else { &limit };
            let Ok(permit) = pool.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let reply = this.answer(inbound).await;
                this.ring.handle.respond(reply).await;
                drop(permit);
            });
        }
    }

    async fn answer(&self, inbound: Inbound) -> Reply {
        match inbound {
            Inbound::Client {
                caller,
                request,
                channel,
            } => {
                let peer = caller.peer;
                let response = match request {
                    Incoming::Message(r) => {
                        let kind = r.kind();
                        let data = moves_data(&r);
                        let bytes_in = crate::metrics::client_bytes_in(&r);
                        let started = std::time::Instant::now();
                        let response = self.client(r, &caller).await;
                        let took = started.elapsed();
                        let bytes_out = crate::metrics::client_bytes_out(&response);
                        if data && bytes_in + bytes_out >= BULK_BYTES {
                            self.entangled.traffic.note();
                        }
                        self.metrics
                            .client(kind, took, (bytes_in, bytes_out), &response);
                        log_failure(&peer, kind, &response);
                        response
                    }
                    Incoming::Misrouted(found) => refuse(&peer, Audience::Client, found),
                };
                Reply::Client(channel, response)
            }
            Inbound::Member {
                peer,
                request,
                channel,
            } => {
                let response = match request {
                    Incoming::Message(r) => {
                        let kind = r.kind();
                        // An encoder storing a client's backup here is a client's data too
                        // (its sources; single copies are also what encoders store later,
                        // in the background: module `entangled::later`).
                        if matches!(r, MemberRequest::StoreLocalBatch { .. }) {
                            self.entangled.traffic.note();
                        }
                        let bytes_in = crate::metrics::member_bytes_in(&r);
                        let started = std::time::Instant::now();
                        let response = if let MemberRequest::Chain { items } = r {
                            self.chains.items(peer, items).await
                        } else if r.is_long_running() {
                            if crate::replication::hostile::stall() {
                                // Test mode: hold the request until the requester gives up.
                                requester_gone(|| channel.is_open()).await;
                                tracing::info!(%peer, kind, "stalled (test mode): {CANCELLED}");
                                return Reply::Member(
                                    channel,
                                    MemberResponse::error(ErrorCode::Unavailable, CANCELLED),
                                );
                            }
                            tokio::select! {
                                r = self.member(r) => r,
                                _ = requester_gone(|| channel.is_open()) => {
                                    tracing::info!(%peer, kind, "{CANCELLED}");
                                    MemberResponse::error(ErrorCode::Unavailable, CANCELLED)
                                }
                            }
                        } else {
                            self.member(r).await
                        };
                        self.metrics
                            .member(kind, started.elapsed(), bytes_in, &response);
                        log_failure(&peer, kind, &response);
                        response
                    }
                    Incoming::Misrouted(found) => refuse(&peer, Audience::Member, found),
                };
                Reply::Member(channel, response)
            }
            Inbound::Admin {
                peer,
                request,
                channel,
            } => {
                let response = match request {
                    Incoming::Message(r) => {
                        let kind = r.kind();
                        let started = std::time::Instant::now();
                        let response = tokio::select! {
                            r = self.admin(r) => r,
                            _ = requester_gone(|| channel.is_open()) => {
                                tracing::info!(%peer, kind, "{CANCELLED}");
                                AdminResponse::error(ErrorCode::Unavailable, CANCELLED)
                            }
                        };
                        self.metrics.admin(kind, started.elapsed(), &response);
                        log_failure(&peer, kind, &response);
                        response
                    }
                    Incoming::Misrouted(found) => refuse(&peer, Audience::Admin, found),
                };
                Reply::Admin(channel, response)
            }
        }
    }

    /// Answers a client request from `caller`. Writes are charged to the caller's quota.
    pub async fn client(&self, request: ClientRequest, caller: &Caller) -> ClientResponse {
        let repl = &self.replication;
        let r: Result<ClientResponse, RingError> = match request {
            ClientRequest::Put { key, data } => {
                let size = data.len() as u64;
                match self.quotas.reserve(caller, key, size).await {
                    Err(e) => Err(e),
                    Ok(reservation) => match repl.put_block(key, data).await {
                        Ok(replicas) => Ok(ClientResponse::Stored { replicas }),
                        Err(e) => {
                            self.quotas.release(reservation).await;
                            Err(e)
                        }
                    },
                }
            }
            ClientRequest::Get { key } => repl.get_block(key).await.map(|b| match b {
                Some(data) => ClientResponse::Block { data },
                None => ClientResponse::NotFound,
            }),
            ClientRequest::Lookup { key } => self.lookup(key).await,
            ClientRequest::Status => match self.status().await {
                Some(mut s) => {
                    // Other users' ids, labels and usage are for administrators only.
                    if caller.role != peerstore_proto::Role::Admin {
                        let me = caller.peer.to_string();
                        s.users.retain(|u| u.user == me);
                    }
                    Ok(ClientResponse::Status(Box::new(s)))
                }
                None => Err(RingError::internal("node is shutting down")),
            },
            ClientRequest::PutRecord { key, record } => self.put_record(key, record).await,
            ClientRequest::GetRecord { key } => self.get_record(key).await,
            ClientRequest::RecordRead { key, from } => {
                self.chains
                    .read(key, from)
                    .await
                    .map(|(version, record, chain)| ClientResponse::RecordValue {
                        version,
                        record,
                        chain,
                    })
            }
            ClientRequest::RecordCas {
                key,
                expected,
                record,
                id,
            } => {
                if record.len() > chain::MAX_VALUE_SIZE {
                    Err(RingError::bad_request("record too large"))
                } else {
                    self.chains
                        .cas(key, expected, record, id)
                        .await
                        .map(ClientResponse::RecordCas)
                }
            }
            ClientRequest::PutDocument {
                data,
                auth,
                session,
            } => {
                let size = data.len() as u64;
                let content = peerstore_proto::BlockKey::of(&data);
                match self.quotas.reserve(caller, content, size).await {
                    Err(e) => Err(e),
                    Ok(reservation) => {
                        match self
                            .entangled
                            .put_document(data, content, auth, session)
                            .await
                        {
                            Ok(key) => Ok(ClientResponse::DocumentStored { key }),
                            Err(e) => {
                                self.quotas.release(reservation).await;
                                Err(e)
                            }
                        }
                    }
                }
            }
            ClientRequest::ListDocuments {
                writer,
                after,
                limit,
            } => self
                .entangled
                .list_documents(writer, after, limit)
                .await
                .map(ClientResponse::Documents),
            ClientRequest::DeleteDocuments { statement } => self
                .entangled
                .delete_documents(statement)
                .await
                .map(ClientResponse::Deleted),
            ClientRequest::GetDocument { key } => {
                self.entangled.get_document(key).await.map(|d| match d {
                    Some(data) => ClientResponse::Block { data },
                    None => ClientResponse::NotFound,
                })
            }
            ClientRequest::DocumentSources { key } => {
                self.entangled.document_sources(key).await.map(|p| match p {
                    Some(plan) => ClientResponse::DocumentSources(plan),
                    None => ClientResponse::NotFound,
                })
            }
            ClientRequest::SourcesHeld { key } => {
                match self.entangled.document_sources(key).await {
                    Ok(Some(plan)) => {
                        let keys = plan.codewords.iter().flatten().copied().collect();
                        let (held, data) = self.entangled.sources_held_local(keys).await;
                        Ok(ClientResponse::SourcesHeld { plan, held, data })
                    }
                    Ok(None) => Ok(ClientResponse::NotFound),
                    Err(e) => Err(e),
                }
            }
            ClientRequest::GetSymbol { key } => Ok(match self.entangled.get_symbol(key).await {
                Some(data) => ClientResponse::Block { data },
                None => ClientResponse::NotFound,
            }),
            ClientRequest::GetSymbols { keys } => {
                if keys.len() > peerstore_proto::MAX_SYMBOLS_PER_REQUEST {
                    Err(RingError::bad_request(format!(
                        "at most {} keys per symbol request, got {}",
                        peerstore_proto::MAX_SYMBOLS_PER_REQUEST,
                        keys.len()
                    )))
                } else {
                    Ok(ClientResponse::Symbols(
                        self.entangled
                            .get_symbols_local(keys)
                            .await
                            .into_iter()
                            .map(|b| b.map(serde_bytes::ByteBuf::from))
                            .collect(),
                    ))
                }
            }
        };
        r.unwrap_or_else(|e| e.to_response())
    }

    /// Answers a member request (acts on this node's local state only).
    pub async fn member(&self, request: MemberRequest) -> MemberResponse {
        let r = match request {
            MemberRequest::Status => match self.status().await {
                Some(s) => Ok(MemberResponse::Status(Box::new(s))),
                None => Err(RingError::internal("node is shutting down")),
            },
            MemberRequest::Entangled(r) => self
                .entangled
                .serve_member(r)
                .await
                .map(MemberResponse::Entangled),
            MemberRequest::Placement => Ok(MemberResponse::Placement {
                host: self.ring.place.host.clone(),
                zone: self.ring.place.zone.clone(),
            }),
            MemberRequest::ChainRequest {
                key,
                id,
                request,
                found,
            } => Ok(self.chains.serve(key, id, request, found).await),
            MemberRequest::ChainLocal { key } => Ok(self.chains.local(key).await),
            MemberRequest::Chain { .. } => Err(RingError::bad_request(
                "chain traffic comes from another member",
            )),
            other => self.replication.serve_member(other).await,
        };
        r.unwrap_or_else(|e| e.to_response())
    }

    /// Answers an admin request.
    pub async fn admin(&self, request: AdminRequest) -> AdminResponse {
        self.entangled
            .serve_admin(request)
            .await
            .unwrap_or_else(|e| e.to_response())
    }

    /// `PutRecord`: a signed record newer than the ring's, written through the record's
    /// chain. A record kept from before chains (the replicated record table) still bounds
    /// the sequence number from below.
    async fn put_record(
        &self,
        key: peerstore_proto::BlockKey,
        record: Vec<u8>,
    ) -> Result<ClientResponse, RingError> {
        if record.len() > chain::MAX_VALUE_SIZE {
            return Err(RingError::bad_request("record too large"));
        }
        if let Ok(Some(old)) = self.replication.get_record(key).await {
            crate::chains::check_record(&key, &record, Some(&old))
                .map_err(|e| RingError::new(ErrorCode::Rejected, e))?;
        }
        let replicas = self.chains.put_newer(key, record).await?;
        Ok(ClientResponse::Stored { replicas })
    }

    /// `GetRecord`: the record's committed version from its chain (or, for a record from
    /// before chains, the newest the replicated record table holds).
    async fn get_record(
        &self,
        key: peerstore_proto::BlockKey,
    ) -> Result<ClientResponse, RingError> {
        let read = self
            .chains
            .read_within(key, peerstore_proto::ReadFrom::Any, GET_RECORD_PATIENCE)
            .await;
        let (version, record) = match read {
            Ok((version, record, _)) => (version, record),
            Err(e) => {
                // The chain cannot answer (it lost the majority of its members): the newest
                // copy any member holds, which the client verifies like any record.
                tracing::warn!(%key, error = %e.message, "record chain unavailable; reading the members' copies");
                match self.chains.newest_copy(key).await? {
                    Some((version, record)) => (version, Some(record)),
                    None => return Err(e),
                }
            }
        };
        match record {
            Some(record) if version > 0 => Ok(ClientResponse::Record { record }),
            _ => Ok(match self.replication.get_record(key).await? {
                Some(record) => ClientResponse::Record { record },
                None => ClientResponse::NotFound,
            }),
        }
    }

    async fn lookup(&self, key: peerstore_proto::BlockKey) -> Result<ClientResponse, RingError> {
        let res = self.ring.lookup(peerstore_proto::key_id(&key)).await?;
        let replicas = self.ring.replica_set_from(&res).await;
        Ok(ClientResponse::Owner {
            owner: member(&res.owner),
            replicas: replicas
                .into_iter()
                .map(|a| MemberInfo {
                    id: peerstore_proto::ring_id(&a.peer),
                    addr: a,
                })
                .collect(),
            hops: res.hops,
        })
    }

    /// This node's status: ring view plus storage figures.
    pub async fn status(&self) -> Option<StatusReport> {
        let view = self.ring.view().await?;
        let store = self.replication.store.clone();
        let (from, to) = view.ranges.owned;
        let figures = blocking(move || -> Result<_, StoreError> {
            let stats = store.stats();
            // Owned = keys in (pred, self]; everything else held is held as a replica.
            let owned = if from != to {
                store
                    .range_digest(
                        &peerstore_proto::BlockKey(from.0),
                        &peerstore_proto::BlockKey(to.0),
                    )?
                    .count
            } else {
                stats.roles.blocks()
            };
            let records = store.record_count(ROOTS)?;
            Ok(Figures {
                owned,
                replica: stats.roles.blocks().saturating_sub(owned),
                used: stats.used_bytes,
                capacity: stats.capacity,
                records,
            })
        })
        .await
        .ok()?;
        let quotas = self.quotas.clone();
        let users = tokio::task::spawn_blocking(move || quotas.usage())
            .await
            .unwrap_or_default();
        let mut report = status_report(&view, self.ring.replication, &figures);
        report.user_quota = self.quotas.limit();
        report.activity = self.replication.activity.snapshot();
        report.placement = self.placement().await;
        report.disk_bytes = self.disk.bytes().await;
        report.record_chains = self
            .chains
            .report()
            .await
            .into_iter()
            .take(peerstore_proto::MAX_STATUS_CHAINS)
            .map(|c| peerstore_proto::ChainStatus {
                key: c.key,
                epoch: c.epoch,
                members: c.members.iter().map(ToString::to_string).collect(),
                role: crate::chains::role_name(c.role).into(),
                version: c.version,
            })
            .collect();
        report.users = users
            .into_iter()
            .map(|u| peerstore_proto::UserUsage {
                user: u.user,
                label: u.label,
                bytes: u.bytes,
            })
            .collect();
        Some(report)
    }
}

impl Service {
    /// This node's place and the spread of its replica set (module `placement`).
    async fn placement(&self) -> peerstore_proto::PlacementReport {
        let ring = &self.ring;
        let mut set = vec![ring.me().clone()];
        set.extend(ring.replica_successors().await);
        let places = ring.places(&set).await;
        // Only members that told their place count: one that did not answer is no proof of
        // a copy on another machine.
        let refs: Vec<&crate::placement::Place> = places.iter().flatten().collect();
        peerstore_proto::PlacementReport {
            host: ring.place.host.clone(),
            zone: ring.place.zone.clone(),
            replica_hosts: crate::placement::distinct_hosts(&refs) as u32,
            warning: crate::placement::warning(&refs, ring.replication),
        }
    }
}

fn refuse<R: ErrorResponse>(peer: &libp2p::PeerId, on: Audience, found: Audience) -> R {
    debug!(%peer, %on, %found, "request on the wrong protocol refused");
    misrouted(on, found)
}

fn log_failure<R: ErrorResponse>(peer: &libp2p::PeerId, kind: &str, response: &R) {
    if let Some((code, message)) = response.as_error() {
        if code != ErrorCode::Rejected {
            debug!(%peer, kind, ?code, %message, "request failed");
        }
    }
}

fn member(p: &chord::Peer<peerstore_proto::NodeAddr>) -> MemberInfo {
    MemberInfo {
        id: p.id,
        addr: p.addr.clone(),
    }
}

/// Storage figures for status.
struct Figures {
    owned: u64,
    replica: u64,
    used: u64,
    capacity: u64,
    records: u64,
}

fn status_report(view: &RingView, replication: usize, stats: &Figures) -> StatusReport {
    StatusReport {
        id: view.me.id,
        addr: view.me.addr.clone(),
        member: view.member,
        predecessor: view.predecessor.as_ref().map(member),
        successors: view.successors.iter().map(member).collect(),
        distinct_fingers: view.fingers.len() as u32,
        fingers: view.fingers.iter().map(member).collect(),
        replication: replication as u32,
        owned_range: view.ranges.owned,
        keys_owned: stats.owned,
        keys_replica: stats.replica,
        bytes_used: stats.used,
        capacity: stats.capacity,
        records: stats.records,
        user_quota: None,
        users: Vec::new(),
        activity: peerstore_proto::MaintenanceActivity::default(),
        placement: peerstore_proto::PlacementReport::default(),
        disk_bytes: 0,
        record_chains: Vec::new(),
    }
}

/// A client request of [`moves_data`] that carries at least this many bytes of blocks either
/// way is a client's data, which replica management gives way to
/// (`entangled::policy::Traffic`): a backup's or a restore's blocks, not the small reads of a
/// status, `du` or sync poll (one block's worth, B = 256 KiB by default).
const BULK_BYTES: u64 = 256 * 1024;

/// Whether a client request can move a client's data (see [`BULK_BYTES`]).
fn moves_data(r: &ClientRequest) -> bool {
    matches!(
        r,
        ClientRequest::Put { .. }
            | ClientRequest::Get { .. }
            | ClientRequest::PutDocument { .. }
            | ClientRequest::GetDocument { .. }
            | ClientRequest::DocumentSources { .. }
            | ClientRequest::SourcesHeld { .. }
            | ClientRequest::GetSymbol { .. }
            | ClientRequest::GetSymbols { .. }
    )
}
