//! The node's Prometheus metrics: counters that move with the requests the service answers,
//! and figures (store, maintenance, process) sampled when `/metrics` is scraped.
//!
//! The metric names and their meaning are listed in docs/OPERATIONS.md ("Web page and
//! metrics"); keep the two in step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use peerstore_proto::{
    ClientRequest, ClientResponse, EntRequest, EntResponse, ErrorResponse, MemberRequest,
    MemberResponse,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// client, member or admin.
    protocol: &'static str,
    /// The request's `kind()` (put, get, store-local, ...).
    kind: &'static str,
    /// "ok", or the error code of the answer (Full, Unavailable, ...).
    result: String,
}

/// Labels of the request time histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    /// client, member or admin.
    protocol: &'static str,
    /// The request's `kind()`.
    kind: &'static str,
}

/// A histogram of request times: 0.5 ms to 16 s, doubling.
fn request_seconds() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// Labels of a byte counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    protocol: String,
    /// in (carried by requests) or out (carried by answers).
    direction: String,
}

/// Figures sampled at scrape time (see [`Metrics::encode`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Bytes of block data held (replicated store and single copies).
    pub store_bytes: u64,
    /// Blocks held (replicated store and single copies).
    pub store_blocks: u64,
    /// Bytes of block data this node may hold (`--capacity`).
    pub store_capacity: u64,
    /// Bytes still free of the capacity.
    pub store_free: u64,
    /// Bytes of signed records held.
    pub record_bytes: u64,
    /// The maintenance counters (`StatusReport::activity`).
    pub activity: peerstore_proto::MaintenanceActivity,
    /// Resident set size of the process, in bytes (0 where /proc is missing).
    pub rss_bytes: u64,
    /// Ring members the web page's tracker sees answering, and those it does not.
    pub members_healthy: u64,
    pub members_unhealthy: u64,
    /// The node's own Chord lookups: answered, failed, and the remote hops of those answered.
    pub ring_lookups: (u64, u64, u64),
}

/// The node's metrics; one per process, shared by the service and the HTTP server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    seconds: Family<KindLabels, Histogram, fn() -> Histogram>,
    bytes: Family<BytesLabels, Counter>,
    lookups: Counter,
    lookup_hops: Histogram,
    ring_lookups: Counter,
    ring_lookup_failures: Counter,
    ring_lookup_hops: Counter,
    // Sampled when scraped.
    store_bytes: Gauge,
    store_blocks: Gauge,
    store_capacity: Gauge,
    store_free: Gauge,
    record_bytes: Gauge,
    pulled: Counter,
    pushed: Counter,
    cleaned: Counter,
    parity_copies_dropped: Counter,
    rss_bytes: Gauge,
    members_healthy: Gauge,
    members_unhealthy: Gauge,
    scrapes: AtomicU64,
    /// Serializes scrapes: sampled counters are brought up to date by adding the difference.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register(name, help, g.clone());
    g
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    registry.register(name, help, c.clone());
    c
}

/// Clamps a figure into a gauge's range.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Brings a counter that mirrors a monotonic figure up to `now`.
fn catch_up(c: &Counter, now: u64) {
    let have = c.get();
    if now > have {
        c.inc_by(now - have);
    }
}

impl Metrics {
    #[must_use]
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("peerstore");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "Requests answered, by protocol (client, member, admin), kind and result (ok or the error code)",
            requests.clone(),
        );
        let seconds: Family<KindLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(request_seconds);
        r.register(
            "request_seconds",
            "Time from a request's arrival to its answer, by protocol and kind",
            seconds.clone(),
        );
        let bytes = Family::<BytesLabels, Counter>::default();
        r.register(
            "payload_bytes",
            "Block and record bytes carried by requests (in) and their answers (out), by protocol",
            bytes.clone(),
        );
        let lookups = counter(
            &mut r,
            "client_lookups",
            "Chord lookups this node ran for clients (routed clients ask for a key's owner)",
        );
        let lookup_hops = Histogram::new([0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]);
        r.register(
            "client_lookup_hops",
            "Remote hops of the Chord lookups run for clients",
            lookup_hops.clone(),
        );
        let store_bytes = gauge(
            &mut r,
            "store_bytes",
            "Bytes of block data held (replicated store and single copies)",
        );
        let store_blocks = gauge(
            &mut r,
            "store_blocks",
            "Blocks held (replicated store and single copies)",
        );
        let store_capacity = gauge(
            &mut r,
            "store_capacity_bytes",
            "Bytes of block data this node may hold (--capacity)",
        );
        let store_free = gauge(
            &mut r,
            "store_free_bytes",
            "Bytes of the capacity still free",
        );
        let record_bytes = gauge(&mut r, "record_bytes", "Bytes of signed records held");
        let pulled = counter(
            &mut r,
            "maintenance_pulled",
            "Blocks and records pulled by replication anti-entropy",
        );
        let pushed = counter(
            &mut r,
            "maintenance_pushed",
            "Blocks and records pushed by replication anti-entropy",
        );
        let cleaned = counter(
            &mut r,
            "maintenance_cleaned",
            "Copies outside this node's replica range dropped by the clean-up",
        );
        let parity_copies_dropped = counter(
            &mut r,
            "maintenance_parity_copies_dropped",
            "Replicated copies of parities dropped by replica management (entangled rings)",
        );
        let rss_bytes = gauge(
            &mut r,
            "process_resident_memory_bytes",
            "Resident set size of the node process",
        );
        let members_healthy = gauge(
            &mut r,
            "ring_members_healthy",
            "Ring members that answered recently (tracked only with --http)",
        );
        let ring_lookups = counter(
            &mut r,
            "ring_lookups",
            "Chord lookups this node ran to route its own requests (writes, reads, replication, repair)",
        );
        let ring_lookup_failures = counter(
            &mut r,
            "ring_lookup_failures",
            "Chord lookups of this node that found no owner (after retries)",
        );
        let ring_lookup_hops = counter(
            &mut r,
            "ring_lookup_hops",
            "Remote hops of this node's answered Chord lookups, summed (divide by ring_lookups for the mean)",
        );
        let members_unhealthy = gauge(
            &mut r,
            "ring_members_unhealthy",
            "Ring members that stopped answering (tracked only with --http)",
        );
        Metrics {
            registry: r,
            requests,
            seconds,
            bytes,
            lookups,
            lookup_hops,
            ring_lookups,
            ring_lookup_failures,
            ring_lookup_hops,
            store_bytes,
            store_blocks,
            store_capacity,
            store_free,
            record_bytes,
            pulled,
            pushed,
            cleaned,
            parity_copies_dropped,
            rss_bytes,
            members_healthy,
            members_unhealthy,
            scrapes: AtomicU64::new(0),
            scrape: Mutex::new(()),
        }
    }

    fn count<R: ErrorResponse>(
        &self,
        protocol: &'static str,
        kind: &'static str,
        took: Duration,
        response: &R,
    ) {
        self.seconds
            .get_or_create(&KindLabels { protocol, kind })
            .observe(took.as_secs_f64());
        let result = match response.as_error() {
            None => "ok".to_string(),
            Some((code, _)) => format!("{code:?}"),
        };
        self.requests
            .get_or_create(&RequestLabels {
                protocol,
                kind,
                result,
            })
            .inc();
    }

    fn add_bytes(&self, protocol: &str, direction: &str, n: u64) {
        if n > 0 {
            self.bytes
                .get_or_create(&BytesLabels {
                    protocol: protocol.to_string(),
                    direction: direction.to_string(),
                })
                .inc_by(n);
        }
    }

    /// Counts an answered client request of `kind` that carried `bytes_in`
    /// ([`client_bytes_in`]) and took `took` to answer.
    /// `bytes_out`: [`client_bytes_out`] of `response`.
    pub fn client(
        &self,
        kind: &'static str,
        took: Duration,
        (bytes_in, bytes_out): (u64, u64),
        response: &ClientResponse,
    ) {
        self.count("client", kind, took, response);
        self.add_bytes("client", "in", bytes_in);
        self.add_bytes("client", "out", bytes_out);
        if let ClientResponse::Owner { hops, .. } = response {
            self.lookups.inc();
            self.lookup_hops.observe(f64::from(*hops));
        }
    }

    /// Counts an answered member request (from another node) of `kind` that carried
    /// `bytes_in` ([`member_bytes_in`]) and took `took` to answer.
    pub fn member(
        &self,
        kind: &'static str,
        took: Duration,
        bytes_in: u64,
        response: &MemberResponse,
    ) {
        self.count("member", kind, took, response);
        self.add_bytes("member", "in", bytes_in);
        let out = match response {
            MemberResponse::Block { data }
            | MemberResponse::Entangled(EntResponse::Block { data }) => data.len(),
            MemberResponse::Record { record } => record.len(),
            MemberResponse::Entangled(EntResponse::Records { records }) => {
                records.iter().flatten().map(Vec::len).sum()
            }
            _ => 0,
        };
        self.add_bytes("member", "out", out as u64);
    }

    /// Counts an answered admin request that took `took` to answer.
    pub fn admin<R: ErrorResponse>(&self, kind: &'static str, took: Duration, response: &R) {
        self.count("admin", kind, took, response);
    }

    /// The Prometheus text exposition of every metric, with the sampled figures set to
    /// `sample`.
    pub fn encode(&self, sample: &Sample) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        self.store_bytes.set(signed(sample.store_bytes));
        self.store_blocks.set(signed(sample.store_blocks));
        self.store_capacity.set(signed(sample.store_capacity));
        self.store_free.set(signed(sample.store_free));
        self.record_bytes.set(signed(sample.record_bytes));
        self.rss_bytes.set(signed(sample.rss_bytes));
        self.members_healthy.set(signed(sample.members_healthy));
        self.members_unhealthy.set(signed(sample.members_unhealthy));
        let a = &sample.activity;
        catch_up(&self.pulled, a.pulled);
        catch_up(&self.pushed, a.pushed);
        catch_up(&self.cleaned, a.cleaned);
        catch_up(&self.parity_copies_dropped, a.parity_copies_dropped);
        let (answered, failed, hops) = sample.ring_lookups;
        catch_up(&self.ring_lookups, answered);
        catch_up(&self.ring_lookup_failures, failed);
        catch_up(&self.ring_lookup_hops, hops);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out = "# error: the metrics could not be encoded\n".into();
        }
        out
    }

    /// How many times the metrics were scraped (for tests).
    #[must_use]
    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::Relaxed)
    }
}

/// Block and record bytes a client request carries.
#[must_use]
pub fn client_bytes_in(r: &ClientRequest) -> u64 {
    match r {
        ClientRequest::Put { data, .. } | ClientRequest::PutDocument { data, .. } => {
            data.len() as u64
        }
        ClientRequest::PutRecord { record, .. } | ClientRequest::RecordCas { record, .. } => {
            record.len() as u64
        }
        _ => 0,
    }
}

/// Block and record bytes a client response carries.
#[must_use]
pub fn client_bytes_out(r: &ClientResponse) -> u64 {
    let n = match r {
        ClientResponse::Block { data } => data.len(),
        ClientResponse::Record { record } => record.len(),
        ClientResponse::Symbols(blocks) => blocks.iter().flatten().map(|b| b.len()).sum(),
        ClientResponse::SourcesHeld { data, .. } => data.len(),
        _ => 0,
    };
    n as u64
}

/// Block and record bytes a member request carries.
#[must_use]
pub fn member_bytes_in(r: &MemberRequest) -> u64 {
    match r {
        MemberRequest::StoreLocal { data, .. } | MemberRequest::StoreLocalBatch { data, .. } => {
            data.len() as u64
        }
        MemberRequest::StoreRecordLocal { record, .. } => record.len() as u64,
        // The entangled layer's blocks and records: single copies of parities and sources,
        // codeword and document records.
        MemberRequest::Entangled(
            EntRequest::StoreSingle { data, .. } | EntRequest::StoreSingleBatch { data, .. },
        ) => data.len() as u64,
        MemberRequest::Entangled(EntRequest::StoreRecords { records }) => {
            records.iter().map(|r| r.len() as u64).sum()
        }
        _ => 0,
    }
}

/// The resident set size of this process, in bytes: `VmRSS` of /proc/self/status (exact
/// whatever the page size; /proc/self/statm counts pages of a size std does not tell); 0 where
/// it cannot be read.
#[must_use]
pub fn rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_and_the_text_is_prometheus() {
        let m = Metrics::new();
        let client = |kind, bytes_in, r: &ClientResponse| {
            let took = Duration::from_millis(3);
            m.client(kind, took, (bytes_in, client_bytes_out(r)), r);
        };
        client("put", 10, &ClientResponse::Stored { replicas: 3 });
        client("get", 0, &ClientResponse::Block { data: vec![0; 7] });
        client(
            "get",
            0,
            &ClientResponse::Error {
                code: peerstore_proto::ErrorCode::Unavailable,
                message: "x".into(),
            },
        );
        let sample = Sample {
            store_bytes: 5,
            activity: peerstore_proto::MaintenanceActivity {
                pulled: 4,
                ..Default::default()
            },
            ..Sample::default()
        };
        let text = m.encode(&sample);
        assert!(text.contains(
            "peerstore_requests_total{protocol=\"client\",kind=\"put\",result=\"ok\"} 1"
        ));
        assert!(text.contains("result=\"Unavailable\"} 1"));
        // Each answer's time: two gets of 3 ms, counted in the 4 ms bucket.
        assert!(
            text.contains(
                "peerstore_request_seconds_bucket{le=\"0.004\",protocol=\"client\",kind=\"get\"} 2"
            ) || text.contains(
                "peerstore_request_seconds_bucket{protocol=\"client\",kind=\"get\",le=\"0.004\"} 2"
            )
        );
        assert!(
            text.contains("peerstore_payload_bytes_total{protocol=\"client\",direction=\"in\"} 10")
        );
        assert!(
            text.contains("peerstore_payload_bytes_total{protocol=\"client\",direction=\"out\"} 7")
        );
        assert!(text.contains("peerstore_store_bytes 5"));
        assert!(text.contains("peerstore_maintenance_pulled_total 4"));
        // A later sample moves the mirrored counter to the new figure, never back.
        let later = Sample {
            activity: peerstore_proto::MaintenanceActivity {
                pulled: 9,
                ..Default::default()
            },
            ..Sample::default()
        };
        assert!(m
            .encode(&later)
            .contains("peerstore_maintenance_pulled_total 9"));
        assert!(m
            .encode(&Sample::default())
            .contains("peerstore_maintenance_pulled_total 9"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn rss_is_read() {
        if std::path::Path::new("/proc/self/statm").exists() {
            assert!(rss_bytes() > 0);
        }
    }
}
