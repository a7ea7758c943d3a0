//! Administration of an entangled ring from the client (docs/ENTANGLEMENT-RING.md, "From the
//! client"): `repair`, `audit`, `scrub`, and the entanglement figures of `du`.
//!
//! These commands need no key: they only ask a node to coordinate work over the whole ring
//! (`AdminRequest::Repair`, `Audit`, `Scrub`, `EntangleStats`). Each command is a function over the
//! small [`AdminApi`] seam (so its paging and exit rules are unit tested without a network),
//! returning a serialisable outcome with a one-line text form and, where the command must exit
//! with status 1, a [`failure`](RepairOutcome::failure) line.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use peerstore_proto::{AdminRequest, AdminResponse, BlockKey};
use peerstore_proto::{
    AuditPage, CodewordAudit, EntangleStats, RepairSummary, ScrubMode, ScrubReport,
};
use serde::Serialize;

use crate::error::{ClientError, Result};
use crate::progress::human;
use crate::store::{RingStore, StoreError};

/// Least time one admin request may take: a repair or a scrub of a large ring runs for minutes
/// inside one request (the global `--timeout-secs` is used when it is longer).
pub const ADMIN_MIN_TIMEOUT: Duration = Duration::from_secs(1800);
/// Default codewords checked per audit request.
pub const AUDIT_PAGE: u32 = 256;
/// Bound on the pages of one audit (a ring that never reports its end is an error).
const MAX_AUDIT_PAGES: u64 = 1 << 24;

/// What the admin commands need from the ring: one request, one answer.
#[async_trait]
pub trait AdminApi: Send + Sync {
    async fn call(&self, req: AdminRequest) -> Result<AdminResponse, StoreError>;
}

#[async_trait]
impl AdminApi for RingStore {
    async fn call(&self, req: AdminRequest) -> Result<AdminResponse, StoreError> {
        RingStore::admin(self, req).await
    }
}

/// Connects to `node` with a timeout of at least [`ADMIN_MIN_TIMEOUT`].
pub async fn connect(
    node: peerstore_proto::NodeAddr,
    credential: Option<peerstore_proto::Identity>,
    timeout: Duration,
) -> Result<RingStore> {
    Ok(RingStore::connect(node, timeout.max(ADMIN_MIN_TIMEOUT), credential).await?)
}

fn unexpected(what: &str, resp: &AdminResponse) -> ClientError {
    let mut s = format!("{resp:?}");
    s.truncate(200);
    ClientError::Store(StoreError::Other(format!(
        "unexpected answer to {what}: {s}"
    )))
}

/// Parses block ids given on the command line (64 hex digits each).
pub fn parse_keys(ids: &[String]) -> Result<Vec<BlockKey>> {
    ids.iter()
        .map(|s| {
            BlockKey::from_hex(s.trim()).map_err(|e| ClientError::Config(format!("repair: {e}")))
        })
        .collect()
}

/// A spinner with a message and the elapsed time on stderr, only when stderr is a terminal
/// and `enabled` (text output); hidden otherwise.
#[must_use]
pub fn spinner(msg: &str, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    b.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    b.set_message(msg.to_string());
    b.enable_steady_tick(Duration::from_millis(120));
    b
}

// ---------------------------------------------------------------------------------------------
// repair

/// What `repair` did ([`RepairSummary`] with hex keys and the time taken).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RepairOutcome {
    /// The block ids asked for (empty: the whole ring to the fixed point).
    pub requested: Vec<String>,
    pub passes: u32,
    pub checked: u64,
    pub damaged: u64,
    pub rebuilt: u64,
    pub undecodable: u64,
    pub still_missing: Vec<String>,
    pub errors: u64,
    pub seconds: f64,
}

impl RepairOutcome {
    fn new(keys: &[BlockKey], s: &RepairSummary, seconds: f64) -> RepairOutcome {
        RepairOutcome {
            requested: keys.iter().map(BlockKey::to_hex).collect(),
            passes: s.passes,
            checked: s.checked,
            damaged: s.damaged,
            rebuilt: s.rebuilt,
            undecodable: s.undecodable,
            still_missing: s.still_missing.iter().map(BlockKey::to_hex).collect(),
            errors: s.errors,
            seconds,
        }
    }

    /// One line of text.
    #[must_use]
    pub fn text(&self) -> String {
        let scope = if self.requested.is_empty() {
            "whole ring".to_string()
        } else {
            format!("{} block(s)", self.requested.len())
        };
        format!(
            "repair ({scope}): {} passes, {} codewords checked, {} damaged, {} blocks rebuilt, {} undecodable, {} still missing, {} errors; {:.1} s",
            self.passes,
            self.checked,
            self.damaged,
            self.rebuilt,
            self.undecodable,
            self.still_missing.len(),
            self.errors,
            self.seconds
        )
    }

    /// The line to exit with status 1 on: something stays undecodable or missing.
    #[must_use]
    pub fn failure(&self) -> Option<String> {
        if self.undecodable == 0 && self.still_missing.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        if self.undecodable > 0 {
            parts.push(format!("{} codeword(s) stay undecodable", self.undecodable));
        }
        if !self.still_missing.is_empty() {
            let first: Vec<&str> = self
                .still_missing
                .iter()
                .take(3)
                .map(|k| &k[..16])
                .collect();
            parts.push(format!(
                "{} requested block(s) still missing ({}{})",
                self.still_missing.len(),
                first.join(", "),
                if self.still_missing.len() > 3 {
                    ", ..."
                } else {
                    ""
                }
            ));
        }
        Some(format!(
            "repair incomplete: {}; `peerstore-client audit` lists the damaged codewords",
            parts.join(", ")
        ))
    }
}

/// `AdminRequest::Repair { keys }`: the whole ring to the fixed point (no keys) or those blocks.
pub async fn repair(api: &dyn AdminApi, keys: Vec<BlockKey>) -> Result<RepairOutcome> {
    let start = Instant::now();
    let resp = api
        .call(AdminRequest::Repair { keys: keys.clone() })
        .await?;
    match resp {
        AdminResponse::Repaired(s) => {
            Ok(RepairOutcome::new(&keys, &s, start.elapsed().as_secs_f64()))
        }
        other => Err(unexpected("repair", &other)),
    }
}

// ---------------------------------------------------------------------------------------------
// audit

/// One damaged codeword, keys in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedCodeword {
    pub record: String,
    pub codeword: String,
    pub missing: Vec<String>,
    pub decodable: bool,
    pub rebuilt: u32,
}

impl From<&CodewordAudit> for DamagedCodeword {
    fn from(c: &CodewordAudit) -> Self {
        DamagedCodeword {
            record: c.record.to_hex(),
            codeword: hex::encode(c.codeword),
            missing: c.missing.iter().map(BlockKey::to_hex).collect(),
            decodable: c.decodable,
            rebuilt: c.rebuilt,
        }
    }
}

/// What `audit` found (over every page, to the end of the ring).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AuditOutcome {
    /// Whether damage was repaired as found.
    pub fix: bool,
    /// Requests made (pages).
    pub pages: u64,
    /// Codewords checked.
    pub checked: u64,
    /// Codewords found missing symbols.
    pub damaged: u64,
    /// Of those, how many the symbols left still decode.
    pub decodable: u64,
    /// Blocks rebuilt (with `fix`).
    pub rebuilt: u64,
    /// Damaged codewords left at the end: without `fix` all the damaged ones; with `fix` what
    /// a second, checking pass still finds.
    pub remaining: u64,
    /// The damaged codewords as found.
    pub codewords: Vec<DamagedCodeword>,
    pub seconds: f64,
}

impl AuditOutcome {
    /// The summary line (the damaged codewords are listed by [`AuditOutcome::lines`]).
    #[must_use]
    pub fn text(&self) -> String {
        let mut s = format!(
            "audit{}: {} codewords checked, {} damaged ({} decodable), {} blocks rebuilt",
            if self.fix { " --fix" } else { "" },
            self.checked,
            self.damaged,
            self.decodable,
            self.rebuilt
        );
        if self.fix {
            s.push_str(&format!(", {} damaged after the fix", self.remaining));
        }
        s.push_str(&format!(" ({} pages, {:.1} s)", self.pages, self.seconds));
        s
    }

    /// One line per damaged codeword.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        self.codewords
            .iter()
            .map(|c| {
                let missing: Vec<&str> = c.missing.iter().map(|k| &k[..16]).collect();
                format!(
                    "damaged codeword {} (record {}): {} missing [{}], {}{}",
                    &c.codeword[..16],
                    &c.record[..16],
                    c.missing.len(),
                    missing.join(" "),
                    if c.decodable {
                        "decodable"
                    } else {
                        "NOT decodable from its own symbols"
                    },
                    if c.rebuilt > 0 {
                        format!(", {} rebuilt", c.rebuilt)
                    } else {
                        String::new()
                    }
                )
            })
            .collect()
    }

    /// The line to exit with status 1 on: damage remains.
    #[must_use]
    pub fn failure(&self) -> Option<String> {
        (self.remaining > 0).then(|| {
            if self.fix {
                format!(
                    "{} damaged codeword(s) remain after the fix; run `peerstore-client repair` (it repairs to a fixed point)",
                    self.remaining
                )
            } else {
                format!(
                    "{} damaged codeword(s); run `peerstore-client audit --fix` or `peerstore-client repair`",
                    self.remaining
                )
            }
        })
    }
}

/// Pages through `AdminRequest::Audit` from the start of the ring to its end; `on_page` sees the
/// running count of checked codewords after each page.
async fn audit_pass(
    api: &dyn AdminApi,
    fix: bool,
    limit: u32,
    on_page: &mut (dyn FnMut(u64) + Send),
) -> Result<(u64, u64, Vec<CodewordAudit>)> {
    let limit = limit.clamp(1, 4096);
    let mut after: Option<BlockKey> = None;
    let (mut pages, mut checked) = (0u64, 0u64);
    let mut damaged = Vec::new();
    loop {
        let page: AuditPage = match api.call(AdminRequest::Audit { after, limit, fix }).await? {
            AdminResponse::AuditPage(p) => p,
            other => return Err(unexpected("audit", &other)),
        };
        pages += 1;
        checked += page.checked;
        damaged.extend(page.damaged);
        on_page(checked);
        match page.next {
            None => return Ok((pages, checked, damaged)),
            Some(n) if after.is_some_and(|a| n <= a) => {
                return Err(ClientError::Store(StoreError::Unavailable(
                    "the audit made no progress (the ring may be changing)".into(),
                )))
            }
            Some(n) => after = Some(n),
        }
        if pages >= MAX_AUDIT_PAGES {
            return Err(ClientError::Store(StoreError::Other(format!(
                "the audit did not reach the end of the ring after {pages} pages"
            ))));
        }
    }
}

/// `audit [--fix]`: every codeword of the ring, `limit` per request. With `fix`, damage is
/// repaired as found and, if there was any, a second pass without `fix` counts what remains.
pub async fn audit(
    api: &dyn AdminApi,
    fix: bool,
    limit: u32,
    on_page: &mut (dyn FnMut(u64) + Send),
) -> Result<AuditOutcome> {
    let start = Instant::now();
    let (pages, checked, damaged) = audit_pass(api, fix, limit, on_page).await?;
    let mut out = AuditOutcome {
        fix,
        pages,
        checked,
        damaged: damaged.len() as u64,
        decodable: damaged.iter().filter(|c| c.decodable).count() as u64,
        rebuilt: damaged.iter().map(|c| u64::from(c.rebuilt)).sum(),
        remaining: damaged.len() as u64,
        codewords: damaged.iter().map(DamagedCodeword::from).collect(),
        seconds: 0.0,
    };
    if fix && !damaged.is_empty() {
        let (p2, _, left) = audit_pass(api, false, limit, on_page).await?;
        out.pages += p2;
        out.remaining = left.len() as u64;
    }
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// scrub

/// Once now, or also as a daemon on every node, or stop the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScrubSchedule {
    Once,
    /// Scrub now and then every this often (at least 1 ms).
    Every(Duration),
    /// Clear the daemon on every node; scrubs nothing.
    Stop,
}

impl ScrubSchedule {
    /// The request's `(once, interval_ms)`: the node reads `once == false, interval_ms == 0` as
    /// "stop the daemon".
    #[must_use]
    pub fn wire(self) -> (bool, u64) {
        match self {
            ScrubSchedule::Once => (true, 0),
            ScrubSchedule::Every(d) => (
                false,
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1),
            ),
            ScrubSchedule::Stop => (false, 0),
        }
    }
}

/// What `scrub` did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScrubOutcome {
    /// "pointers >= N", "window W", or "none" (stop).
    pub mode: String,
    /// "once", "every N s", or "stopped".
    pub daemon: String,
    pub nodes: u32,
    pub examined: u64,
    pub scrubbed: u64,
    pub replicas_removed: u64,
    pub bytes_freed: u64,
    pub single: u64,
    pub errors: u64,
    /// Eligible blocks kept replicated so that no host holds the single copies of more
    /// symbols of a codeword than it can lose.
    pub kept_for_spread: u64,
    pub seconds: f64,
}

impl ScrubOutcome {
    fn new(mode: ScrubMode, sched: ScrubSchedule, r: &ScrubReport, seconds: f64) -> Self {
        ScrubOutcome {
            mode: match (sched, mode) {
                (ScrubSchedule::Stop, _) => "none".into(),
                (_, ScrubMode::Pointers { threshold }) => format!("pointers >= {threshold}"),
                (_, ScrubMode::Window { blocks }) => format!("window {blocks}"),
            },
            daemon: match sched {
                ScrubSchedule::Once => "once".into(),
                ScrubSchedule::Every(d) => format!("every {} s", d.as_secs_f64()),
                ScrubSchedule::Stop => "stopped".into(),
            },
            nodes: r.nodes,
            examined: r.examined,
            scrubbed: r.scrubbed,
            replicas_removed: r.replicas_removed,
            bytes_freed: r.bytes_freed,
            single: r.single,
            errors: r.errors,
            kept_for_spread: r.kept_for_spread,
            seconds,
        }
    }

    /// One line of text.
    #[must_use]
    pub fn text(&self) -> String {
        if self.daemon == "stopped" {
            return "scrub daemon stopped on every node".into();
        }
        format!(
            "scrub ({}, {}): {} nodes, {} parities examined, {} brought to one copy, {} replica files removed ({} freed), {} already single, {} kept replicated to spread codewords over hosts, {} errors; {:.1} s",
            self.mode,
            self.daemon,
            self.nodes,
            self.examined,
            self.scrubbed,
            self.replicas_removed,
            human(self.bytes_freed),
            self.single,
            self.kept_for_spread,
            self.errors,
            self.seconds
        )
    }

    /// The line to exit with status 1 on: some parities could not be scrubbed.
    #[must_use]
    pub fn failure(&self) -> Option<String> {
        (self.errors > 0).then(|| {
            format!(
                "scrub: {} error(s) (those parities keep their replicas); run it again",
                self.errors
            )
        })
    }
}

/// `AdminRequest::Scrub`.
pub async fn scrub(
    api: &dyn AdminApi,
    mode: ScrubMode,
    sched: ScrubSchedule,
) -> Result<ScrubOutcome> {
    let start = Instant::now();
    let (once, interval_ms) = sched.wire();
    match api
        .call(AdminRequest::Scrub {
            mode,
            once,
            interval_ms,
        })
        .await?
    {
        AdminResponse::Scrubbed(r) => Ok(ScrubOutcome::new(
            mode,
            sched,
            &r,
            start.elapsed().as_secs_f64(),
        )),
        other => Err(unexpected("scrub", &other)),
    }
}

// ---------------------------------------------------------------------------------------------
// du

/// The ring's entanglement figures for `du` (the `entanglement` object of `du --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntanglementDu {
    /// "step" or "none".
    pub kind: String,
    pub s: Option<u16>,
    pub t: Option<u16>,
    pub p: Option<u16>,
    /// B, bytes.
    pub block_size: Option<u32>,
    /// "systematic" or "parity-only".
    pub layout: Option<&'static str>,
    /// Blocks each codeword stores: `s + p` (systematic) or `p` (parity-only).
    pub stored_per_codeword: Option<u16>,
    /// r.
    pub replication: u32,
    pub nodes: u32,
    pub codewords: u64,
    /// Document bytes the codewords carry.
    pub logical_bytes: u64,
    /// Copies of stored entangled blocks (parities, and sources when systematic; the names
    /// predate the systematic layout), replicated and single.
    pub parity_copies_replicated: u64,
    pub parity_copies_single: u64,
    /// Bytes of all copies of stored entangled blocks (headers included).
    pub parity_bytes: u64,
    /// Bytes of all other blocks (records, plain blocks), all copies.
    pub other_bytes: u64,
    pub refs_entries: u64,
    /// stored entangled bytes / logical bytes.
    pub overhead: f64,
    /// stored/s x r: what `overhead` should be before any scrub.
    pub expected_before_scrub: Option<f64>,
    /// stored/s: what `overhead` should be after a full scrub.
    pub expected_after_scrub: Option<f64>,
    /// Copies per stored block (r before scrub, 1 after a full scrub).
    pub copies_per_parity: Option<f64>,
    /// stored/s x copies per block: the expectation for the ring as it is now. `overhead`
    /// exceeds it only by the block headers and the rounding of short codewords' shards.
    pub expected_now: Option<f64>,
}

impl EntanglementDu {
    #[must_use]
    pub fn from_stats(st: &EntangleStats) -> EntanglementDu {
        let params = st.params.filter(|p| p.s > 0);
        let layout = st.layout.unwrap_or_default();
        let stored = params.map(|p| layout.stored(&p) as u16);
        let ps = params
            .zip(stored)
            .map(|(p, n)| f64::from(n) / f64::from(p.s));
        let parities = stored.map(|n| st.codewords * u64::from(n));
        let copies = st.parity_copies_replicated + st.parity_copies_single;
        let per = parities
            .filter(|n| *n > 0)
            .map(|n| copies as f64 / n as f64);
        EntanglementDu {
            kind: st.kind.clone(),
            s: params.map(|p| p.s),
            t: params.map(|p| p.t),
            p: params.map(|p| p.p),
            block_size: params.map(|p| p.block_size),
            layout: params.map(|_| layout.name()),
            stored_per_codeword: stored,
            replication: st.replication,
            nodes: st.nodes,
            codewords: st.codewords,
            logical_bytes: st.logical_bytes,
            parity_copies_replicated: st.parity_copies_replicated,
            parity_copies_single: st.parity_copies_single,
            parity_bytes: st.parity_bytes,
            other_bytes: st.other_bytes,
            refs_entries: st.refs_entries,
            overhead: st.overhead(),
            expected_before_scrub: ps.map(|x| x * f64::from(st.replication)),
            expected_after_scrub: ps,
            copies_per_parity: per,
            expected_now: ps.zip(per).map(|(x, c)| x * c),
        }
    }

    /// The lines `du` adds.
    #[must_use]
    pub fn text(&self) -> String {
        let (Some(s), Some(t), Some(p), Some(b), Some(n)) = (
            self.s,
            self.t,
            self.p,
            self.block_size,
            self.stored_per_codeword,
        ) else {
            return format!(
                "entanglement: {} (plain replicated blocks, r={})",
                self.kind, self.replication
            );
        };
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("x{v:.2}"));
        format!(
            "entanglement: {} {} (s,t,p,B) = ({s},{t},{p},{}), {n} blocks per codeword, r={}, {} nodes\n  {} codewords carrying {}; stored block copies: {} replicated + {} single, {} ({} per block)\n  overhead x{:.2} (stored bytes / document bytes); expected {} now, {} before scrub ({n}/s x r), {} after a full scrub ({n}/s)\n  other blocks {}, {} reverse-reference entries",
            self.kind,
            self.layout.unwrap_or("-"),
            human(u64::from(b)),
            self.replication,
            self.nodes,
            self.codewords,
            human(self.logical_bytes),
            self.parity_copies_replicated,
            self.parity_copies_single,
            human(self.parity_bytes),
            self.copies_per_parity
                .map_or("-".to_string(), |c| format!("{c:.2}")),
            self.overhead,
            fmt(self.expected_now),
            fmt(self.expected_before_scrub),
            fmt(self.expected_after_scrub),
            human(self.other_bytes),
            self.refs_entries
        )
    }
}

/// `AdminRequest::EntangleStats`.
pub async fn entangle_stats(api: &dyn AdminApi) -> Result<EntangleStats> {
    match api.call(AdminRequest::EntangleStats).await? {
        AdminResponse::EntangleStats(s) => Ok(*s),
        other => Err(unexpected("entangle-stats", &other)),
    }
}

// ---------------------------------------------------------------------------------------------
// the commands (called from cli.rs)

/// Prints `value` as one line of JSON with `--json`, else `text()`.
pub(crate) fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    } else {
        println!("{}", text());
    }
}

/// Fails with `err` (the exit status of its kind) if the outcome names a failure.
fn fail_if(line: Option<String>, err: fn(String) -> ClientError) -> Result<()> {
    match line {
        Some(l) => Err(err(l)),
        None => Ok(()),
    }
}

/// `peerstore-client repair [block-id ...]`.
pub async fn cmd_repair(
    node: peerstore_proto::NodeAddr,
    credential: Option<peerstore_proto::Identity>,
    timeout: Duration,
    json: bool,
    ids: &[String],
) -> Result<()> {
    let keys = parse_keys(ids)?;
    let ring = connect(node, credential, timeout).await?;
    let bar = spinner("repairing", !json);
    let r = repair(&ring, keys).await;
    bar.finish_and_clear();
    let out = r?;
    print(json, &out, || out.text());
    fail_if(out.failure(), ClientError::Integrity)
}

/// `peerstore-client audit [--fix]`.
pub async fn cmd_audit(
    node: peerstore_proto::NodeAddr,
    credential: Option<peerstore_proto::Identity>,
    timeout: Duration,
    json: bool,
    fix: bool,
    page: u32,
) -> Result<()> {
    let ring = connect(node, credential, timeout).await?;
    let bar = spinner("auditing", !json);
    let b2 = bar.clone();
    let r = audit(&ring, fix, page, &mut move |n| {
        b2.set_message(format!("auditing: {n} codewords checked"));
    })
    .await;
    bar.finish_and_clear();
    let out = r?;
    print(json, &out, || {
        let mut lines = out.lines();
        lines.push(out.text());
        lines.join("\n")
    });
    fail_if(out.failure(), ClientError::Integrity)
}

/// `peerstore-client scrub (--pointers N | --window W) [--interval SECS | --stop]`.
pub async fn cmd_scrub(
    node: peerstore_proto::NodeAddr,
    credential: Option<peerstore_proto::Identity>,
    timeout: Duration,
    json: bool,
    mode: ScrubMode,
    sched: ScrubSchedule,
) -> Result<()> {
    let ring = connect(node, credential, timeout).await?;
    let bar = spinner("scrubbing", !json && sched != ScrubSchedule::Stop);
    let r = scrub(&ring, mode, sched).await;
    bar.finish_and_clear();
    let out = r?;
    print(json, &out, || out.text());
    fail_if(out.failure(), ClientError::Refused)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;

    /// Answers requests from a script, and records them.
    struct Scripted {
        answers: Mutex<VecDeque<AdminResponse>>,
        seen: Mutex<Vec<AdminRequest>>,
    }

    impl Scripted {
        fn new(answers: Vec<AdminResponse>) -> Scripted {
            Scripted {
                answers: Mutex::new(answers.into()),
                seen: Mutex::new(Vec::new()),
            }
        }
        fn seen(&self) -> Vec<AdminRequest> {
            self.seen.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl AdminApi for Scripted {
        async fn call(&self, req: AdminRequest) -> Result<AdminResponse, StoreError> {
            self.seen.lock().unwrap().push(req);
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .ok_or_else(|| StoreError::Other("script exhausted".into()))
        }
    }

    fn k(b: u8) -> BlockKey {
        BlockKey([b; 32])
    }

    fn damaged(b: u8, decodable: bool, rebuilt: u32) -> CodewordAudit {
        CodewordAudit {
            record: k(b),
            codeword: [b; 32],
            missing: vec![k(b + 1), k(b + 2)],
            decodable,
            rebuilt,
        }
    }

    fn page(checked: u64, damaged: Vec<CodewordAudit>, next: Option<u8>) -> AdminResponse {
        AdminResponse::AuditPage(AuditPage {
            checked,
            damaged,
            next: next.map(k),
        })
    }

    #[tokio::test]
    async fn audit_pages_to_the_end_and_counts() {
        let api = Scripted::new(vec![
            page(10, vec![damaged(1, true, 0)], Some(5)),
            page(10, vec![], Some(9)),
            page(3, vec![damaged(20, false, 0)], None),
        ]);
        let mut seen_counts = Vec::new();
        let out = audit(&api, false, 10, &mut |n| seen_counts.push(n))
            .await
            .unwrap();
        assert_eq!(seen_counts, vec![10, 20, 23]);
        assert_eq!((out.pages, out.checked, out.damaged), (3, 23, 2));
        assert_eq!((out.decodable, out.rebuilt, out.remaining), (1, 0, 2));
        assert_eq!(out.codewords[1].record, k(20).to_hex());
        assert_eq!(out.codewords[0].missing.len(), 2);
        // The cursor follows `next`, the limit and fix flag are passed through.
        let reqs = api.seen();
        assert_eq!(
            reqs,
            vec![
                AdminRequest::Audit {
                    after: None,
                    limit: 10,
                    fix: false
                },
                AdminRequest::Audit {
                    after: Some(k(5)),
                    limit: 10,
                    fix: false
                },
                AdminRequest::Audit {
                    after: Some(k(9)),
                    limit: 10,
                    fix: false
                },
            ]
        );
        let fail = out.failure().expect("damage is a failure");
        assert!(fail.contains("2 damaged"), "{fail}");
        assert_eq!(out.lines().len(), 2);
        assert!(
            out.lines()[1].contains("NOT decodable"),
            "{:?}",
            out.lines()
        );
    }

    #[tokio::test]
    async fn audit_fix_verifies_with_a_second_pass() {
        // Fixed everything: the checking pass finds nothing, exit status 0.
        let api = Scripted::new(vec![
            page(4, vec![damaged(1, true, 2)], None),
            page(4, vec![], None),
        ]);
        let out = audit(&api, true, 100, &mut |_| {}).await.unwrap();
        assert_eq!((out.damaged, out.rebuilt, out.remaining), (1, 2, 0));
        assert_eq!(out.failure(), None);
        let reqs = api.seen();
        assert!(matches!(reqs[0], AdminRequest::Audit { fix: true, .. }));
        assert!(matches!(reqs[1], AdminRequest::Audit { fix: false, .. }));
        // Could not fix: the second pass still sees it, exit status 1.
        let api = Scripted::new(vec![
            page(4, vec![damaged(1, false, 0)], None),
            page(4, vec![damaged(1, false, 0)], None),
        ]);
        let out = audit(&api, true, 100, &mut |_| {}).await.unwrap();
        assert_eq!(out.remaining, 1);
        assert!(out.failure().unwrap().contains("remain after the fix"));
        // A clean ring needs no second pass.
        let api = Scripted::new(vec![page(7, vec![], None)]);
        let out = audit(&api, true, 100, &mut |_| {}).await.unwrap();
        assert_eq!((out.pages, out.checked, out.remaining), (1, 7, 0));
    }

    #[tokio::test]
    async fn audit_refuses_a_cursor_that_goes_back_and_odd_answers() {
        let api = Scripted::new(vec![page(1, vec![], Some(9)), page(1, vec![], Some(3))]);
        let e = audit(&api, false, 10, &mut |_| {}).await.unwrap_err();
        assert!(e.to_string().contains("no progress"), "{e}");
        let api = Scripted::new(vec![AdminResponse::Scrubbed(ScrubReport::default())]);
        let e = audit(&api, false, 10, &mut |_| {}).await.unwrap_err();
        assert!(e.to_string().contains("unexpected answer to audit"), "{e}");
    }

    #[tokio::test]
    async fn repair_reports_and_fails_on_what_stays_lost() {
        let ok = RepairSummary {
            passes: 3,
            checked: 300,
            damaged: 40,
            rebuilt: 51,
            undecodable: 0,
            still_missing: vec![],
            errors: 0,
        };
        let api = Scripted::new(vec![AdminResponse::Repaired(ok.clone())]);
        let out = repair(&api, vec![]).await.unwrap();
        assert_eq!(api.seen(), vec![AdminRequest::Repair { keys: vec![] }]);
        assert_eq!((out.passes, out.rebuilt), (3, 51));
        assert_eq!(out.failure(), None);
        assert!(out.text().contains("whole ring"), "{}", out.text());
        assert!(out.text().contains("51 blocks rebuilt"), "{}", out.text());

        let bad = RepairSummary {
            undecodable: 2,
            still_missing: vec![k(7)],
            ..ok
        };
        let api = Scripted::new(vec![AdminResponse::Repaired(bad)]);
        let out = repair(&api, vec![k(7), k(8)]).await.unwrap();
        assert_eq!(
            api.seen(),
            vec![AdminRequest::Repair {
                keys: vec![k(7), k(8)]
            }]
        );
        let f = out.failure().expect("failure");
        assert!(f.contains("2 codeword(s) stay undecodable"), "{f}");
        assert!(f.contains("1 requested block(s) still missing"), "{f}");
        assert!(f.contains(&k(7).to_hex()[..16]), "{f}");
        assert!(!f.contains('\n'));
        assert_eq!(out.still_missing, vec![k(7).to_hex()]);
    }

    #[test]
    fn block_ids_parse_or_fail_cleanly() {
        let h = k(0xab).to_hex();
        assert_eq!(parse_keys(std::slice::from_ref(&h)).unwrap(), vec![k(0xab)]);
        assert_eq!(parse_keys(&[h.to_uppercase()]).unwrap(), vec![k(0xab)]);
        assert!(parse_keys(&["abc".into()]).is_err());
        assert!(parse_keys(&[format!("{h}00")]).is_err());
        assert!(parse_keys(&[]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn scrub_encodes_the_schedule_as_the_node_expects() {
        assert_eq!(ScrubSchedule::Once.wire(), (true, 0));
        assert_eq!(
            ScrubSchedule::Every(Duration::from_secs(30)).wire(),
            (false, 30_000)
        );
        assert_eq!(ScrubSchedule::Stop.wire(), (false, 0));
        let rep = ScrubReport {
            nodes: 16,
            examined: 100,
            scrubbed: 90,
            replicas_removed: 270,
            bytes_freed: 270 << 18,
            single: 10,
            errors: 0,
            kept_for_spread: 0,
        };
        let api = Scripted::new(vec![AdminResponse::Scrubbed(rep.clone())]);
        let mode = ScrubMode::Window { blocks: 0 };
        let out = scrub(&api, mode, ScrubSchedule::Every(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(
            api.seen(),
            vec![AdminRequest::Scrub {
                mode,
                once: false,
                interval_ms: 5000
            }]
        );
        assert_eq!((out.scrubbed, out.replicas_removed), (90, 270));
        assert_eq!(out.mode, "window 0");
        assert!(out.text().contains("67.5 MiB freed"), "{}", out.text());
        assert_eq!(out.failure(), None);
        let api = Scripted::new(vec![AdminResponse::Scrubbed(ScrubReport {
            errors: 3,
            ..rep
        })]);
        let out = scrub(
            &api,
            ScrubMode::Pointers { threshold: 2 },
            ScrubSchedule::Once,
        )
        .await
        .unwrap();
        assert_eq!(out.mode, "pointers >= 2");
        assert!(out.failure().unwrap().contains("3 error(s)"));
    }

    #[test]
    fn du_figures_and_recast_expectations() {
        // The node's former default code.
        let params = entangle::Params::new(4, 8, 12, 256 * 1024);
        let (s, p) = (u64::from(params.s), u64::from(params.p));
        let parity = 732 + u64::from(params.block_size);
        let codewords = 10;
        let logical = codewords * s * u64::from(params.block_size);
        let before = EntangleStats {
            kind: "step".into(),
            params: Some(params),
            layout: Some(entangle::Layout::ParityOnly),
            replication: 3,
            nodes: 16,
            codewords,
            logical_bytes: logical,
            parity_copies_replicated: codewords * p * 3,
            parity_copies_single: 0,
            parity_bytes: codewords * p * 3 * parity,
            other_bytes: 1000,
            refs_entries: 5,
        };
        let d = EntanglementDu::from_stats(&before);
        assert_eq!(d.expected_before_scrub, Some(9.0));
        assert_eq!(d.expected_after_scrub, Some(3.0));
        assert_eq!(d.copies_per_parity, Some(3.0));
        assert_eq!(d.expected_now, Some(9.0));
        assert!((d.overhead - 9.0 * parity as f64 / 262_144.0).abs() < 1e-9);
        assert!(d.text().contains("(4,8,12,256.0 KiB)"), "{}", d.text());
        let after = EntangleStats {
            parity_copies_replicated: 0,
            parity_copies_single: codewords * p,
            parity_bytes: codewords * p * parity,
            ..before.clone()
        };
        let d = EntanglementDu::from_stats(&after);
        assert_eq!(d.copies_per_parity, Some(1.0));
        assert!((d.overhead - 3.0 * parity as f64 / 262_144.0).abs() < 1e-9);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["parity_copies_single"], codewords * p);
        assert_eq!(json["s"], 4);
        // A plain ring, and an empty one, have no expectation and do not divide by zero.
        let plain = EntangleStats {
            kind: "none".into(),
            replication: 3,
            ..EntangleStats::default()
        };
        let d = EntanglementDu::from_stats(&plain);
        assert_eq!((d.expected_now, d.overhead), (None, 0.0));
        assert!(d.text().contains("plain replicated"), "{}", d.text());
        let empty = EntangleStats {
            codewords: 0,
            logical_bytes: 0,
            parity_copies_replicated: 0,
            parity_bytes: 0,
            ..before.clone()
        };
        let d = EntanglementDu::from_stats(&empty);
        assert_eq!((d.copies_per_parity, d.overhead), (None, 0.0));
        assert_eq!(d.expected_before_scrub, Some(9.0));
        // The default: systematic (4,8,8) stores 4 sources and 8 parities, the same 3x.
        let params = entangle::Params::new(4, 8, 8, 256 * 1024);
        let sys = EntangleStats {
            params: Some(params),
            layout: Some(entangle::Layout::Systematic),
            codewords,
            logical_bytes: logical,
            parity_copies_replicated: codewords * 12 * 3,
            parity_bytes: codewords * 12 * 3 * parity,
            ..before.clone()
        };
        let d = EntanglementDu::from_stats(&sys);
        assert_eq!(d.stored_per_codeword, Some(12));
        assert_eq!(d.layout, Some("systematic"));
        assert_eq!(d.expected_before_scrub, Some(9.0));
        assert_eq!(d.expected_after_scrub, Some(3.0));
        assert_eq!(d.copies_per_parity, Some(3.0));
        assert!(
            d.text().contains("systematic (s,t,p,B) = (4,8,8,"),
            "{}",
            d.text()
        );
    }
}
