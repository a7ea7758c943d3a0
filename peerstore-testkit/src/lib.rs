//! PeerStore's test harness (a dev-dependency of the node's and the client's integration
//! tests, never linked into a binary): real `peerstore-node` processes on 127.0.0.1 with
//! ephemeral ports, each with its own temporary data directory. Every process is killed and
//! every directory removed on drop.

pub mod browser;
pub mod netns;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use peerstore_node::admission;
use peerstore_node::identity::{read_address_file, ADDRESS_FILE};
use peerstore_proto::admission::{Identity, RingKey, Role};
use peerstore_proto::{
    AdminRequest, AdminResponse, BlockKey, ClientRequest, ClientResponse, EntRequest, EntResponse,
    ErrorCode, MemberRequest, MemberResponse, NodeAddr, RpcClient, StatusReport,
};

pub const STABILIZE_MS: u64 = 200;
pub const MAINTENANCE_MS: u64 = 1000;

pub struct NodeProc {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub addr: NodeAddr,
    /// An endpoint with an administrator's credential (client and admin requests).
    pub client: RpcClient,
    /// An endpoint with a member's credential (member requests, as another node would send).
    pub member_client: RpcClient,
    pub extra: Vec<String>,
    /// The ring's key (the harness plays the operator).
    pub ring: Arc<RingKey>,
}

impl NodeProc {
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: graceful leave. Waits for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> bool {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let start = Instant::now();
            while start.elapsed() < within {
                if let Ok(Some(_)) = c.try_wait() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            return false;
        }
        true
    }

    /// The address the node serves HTTP on (`--http 127.0.0.1:0`), from
    /// `<data-dir>/http.addr`; waits up to 10 s for the file.
    pub async fn http_addr(&self) -> String {
        let file = self.data_dir.join(peerstore_node::http::ADDR_FILE);
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(&file) {
                if !s.trim().is_empty() {
                    return s.trim().to_string();
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} not written",
                file.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// The node's `/metrics` text (the node runs with `--http`).
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.http_addr().await;
        let fetch = async {
            let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await.ok()?;
            String::from_utf8(raw).ok()
        };
        tokio::time::timeout(Duration::from_secs(15), fetch)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("GET http://{addr}/metrics failed"))
    }

    /// The sum of the samples of `metric` whose labels contain every one of `labels` (e.g.
    /// `protocol="client"`), from [`NodeProc::metrics`].
    pub async fn metric_sum(&self, metric: &str, labels: &[&str]) -> u64 {
        self.metric_samples(metric)
            .await
            .into_iter()
            .filter(|(l, _)| labels.iter().all(|want| l.contains(want)))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every sample of `metric` from [`NodeProc::metrics`], by its labels (`{...}`, empty for
    /// a metric without labels).
    pub async fn metric_samples(&self, metric: &str) -> std::collections::BTreeMap<String, u64> {
        let body = self.metrics().await;
        let mut out = std::collections::BTreeMap::new();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix(metric) else {
                continue;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                continue;
            }
            let (labels, value) = rest.rsplit_once(' ').unwrap_or((rest, "0"));
            let v = value.parse::<f64>().unwrap_or(0.0) as u64;
            *out.entry(labels.trim().to_string()).or_insert(0) += v;
        }
        out
    }

    /// How many client requests of `kind` (`ClientRequest::kind`) this node answered, any
    /// result, from its `/metrics` (the node runs with `--http`).
    pub async fn client_requests(&self, kind: &str) -> u64 {
        let want = format!("kind=\"{kind}\"");
        self.metric_sum(
            "peerstore_requests_total",
            &["protocol=\"client\"", want.as_str()],
        )
        .await
    }

    /// A client request to this node.
    pub async fn call(&self, req: ClientRequest) -> ClientResponse {
        match self.client.call(req).await {
            Ok(r) => r,
            Err(e) => ClientResponse::error(ErrorCode::Unavailable, e.to_string()),
        }
    }

    /// A member request to this node (sent by the harness with a member's credential).
    pub async fn member(&self, req: MemberRequest) -> MemberResponse {
        match self.member_client.member_to(&self.addr, req).await {
            Ok(r) => r,
            Err(e) => MemberResponse::error(ErrorCode::Unavailable, e.to_string()),
        }
    }

    /// An entangled-layer member request to this node.
    pub async fn ent(&self, req: EntRequest) -> EntResponse {
        match self.member(MemberRequest::Entangled(req)).await {
            MemberResponse::Entangled(r) => r,
            other => panic!("entangled request to {}: {other:?}", self.addr),
        }
    }

    /// An admin request to this node.
    pub async fn admin(&self, req: AdminRequest) -> AdminResponse {
        match self.client.admin(req).await {
            Ok(r) => r,
            Err(e) => AdminResponse::error(ErrorCode::Unavailable, e.to_string()),
        }
    }

    pub async fn status(&self) -> Option<StatusReport> {
        match self.call(ClientRequest::Status).await {
            ClientResponse::Status(s) => Some(*s),
            _ => None,
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One node's view of the ring for failure messages: `label: id, member, predecessor,
/// successors` (or `label: no status`).
pub fn view_line(label: &str, s: Option<&StatusReport>) -> String {
    match s {
        Some(s) => format!(
            "{label}: id {}, member {}, predecessor {:?}, successors {:?}",
            s.id,
            s.member,
            s.predecessor.as_ref().map(|p| p.id.to_string()),
            s.successors
                .iter()
                .map(|m| m.id.to_string())
                .collect::<Vec<_>>()
        ),
        None => format!("{label}: no status"),
    }
}

pub struct Cluster {
    pub root: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    pub extra: Vec<String>,
    next: usize,
    /// The ring key, once the first node made it.
    pub ring: Option<Arc<RingKey>>,
}

/// The `peerstore-node` binary: `$PEERSTORE_NODE_BIN`, or the one built beside the running test
/// executable (target/<profile>/peerstore-node). Tests of other crates need it built first
/// (`cargo test --workspace` does; `cargo build -p peerstore-node` otherwise).
pub fn node_bin() -> PathBuf {
    built_bin("peerstore-node", "PEERSTORE_NODE_BIN")
}

/// The `peerstore-client` binary next to the running test (or `$PEERSTORE_CLIENT_BIN`).
pub fn client_bin() -> PathBuf {
    built_bin("peerstore-client", "PEERSTORE_CLIENT_BIN")
}

fn built_bin(name: &str, var: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Tests run from target/<profile>/deps, examples from target/<profile>/examples.
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --release --workspace --bins) or set {var}",
        bin.display()
    );
    bin
}

impl Cluster {
    pub fn new(extra: &[&str]) -> Cluster {
        Cluster {
            root: {
                let mut dir = tempfile::tempdir().expect("tempdir");
                // For debugging a failed run: keep the node logs and data.
                if std::env::var_os("PEERSTORE_KEEP_TEST_DIRS").is_some() {
                    dir.disable_cleanup(true);
                    eprintln!("keeping {}", dir.path().display());
                }
                dir
            },
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            next: 0,
            ring: None,
        }
    }

    /// A credential of `role` in this cluster's ring (after the first node started).
    pub fn identity(&self, role: Role) -> Identity {
        let key = self
            .ring
            .as_ref()
            .expect("the ring exists once a node started");
        admission::ephemeral(key, role, "test")
    }

    /// Starts `n` nodes one after another, each joining through the first.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Cluster::new(extra);
        for _ in 0..n {
            c.add_node(&[]).await;
        }
        c
    }

    pub fn live(&self) -> impl Iterator<Item = &NodeProc> {
        self.nodes.iter().filter(|n| n.alive())
    }

    /// Starts one more node joining through the first live node (or a new ring if none).
    pub async fn add_node(&mut self, more: &[&str]) -> usize {
        let dir = self.root.path().join(format!("node{}", self.next));
        self.next += 1;
        let via = self.live().next().map(|n| n.data_dir.clone());
        let mut extra = self.extra.clone();
        extra.extend(more.iter().map(|s| s.to_string()));
        let node = match (&self.ring, &via) {
            (Some(ring), Some(via)) => {
                let choices = flag_value(&extra, "--id-choices").unwrap_or(1024);
                let invite = invite_through(ring, via, choices).await;
                let mut args = extra.clone();
                args.push("--invite".into());
                args.push(invite);
                spawn_node_with(
                    &dir,
                    "/ip4/127.0.0.1/tcp/0",
                    None,
                    &args,
                    Some(ring.clone()),
                )
                .await
            }
            _ => spawn_node(&dir, None, &extra).await,
        };
        if self.ring.is_none() {
            self.ring = Some(node.ring.clone());
        }
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        if via.is_some() {
            self.wait_joined(i).await;
        }
        i
    }

    /// Waits (up to 15 s) until node `i` is a member that another live node names as its
    /// predecessor or successor, as an operator starting nodes one after another would: the
    /// next node to join then sees it when it picks its ring id.
    pub async fn wait_joined(&self, i: usize) {
        let res = wait_until(Duration::from_secs(15), || async {
            let Some(me) = self.nodes[i].status().await.filter(|s| s.member) else {
                return Err("not a member yet".to_string());
            };
            for (j, n) in self.nodes.iter().enumerate() {
                if j == i || !n.alive() {
                    continue;
                }
                if let Some(s) = n.status().await {
                    let named = s
                        .predecessor
                        .iter()
                        .chain(&s.successors)
                        .any(|m| m.id == me.id);
                    if named {
                        return Ok(());
                    }
                }
            }
            Err("no neighbour names it yet".to_string())
        })
        .await;
        if let Err(e) = res {
            eprintln!("node {i} not yet in the ring: {e}");
        }
    }

    /// Restarts a stopped node on its data directory, joining through a live node.
    pub async fn restart(&mut self, i: usize) {
        let via = self
            .nodes
            .iter()
            .enumerate()
            .find(|(j, n)| *j != i && n.alive())
            .map(|(_, n)| n.addr.to_string());
        self.restart_via(i, via.as_deref()).await;
    }

    /// Restarts a stopped node on its data directory with `--initial-peer via` (none: without
    /// the flag), whether or not `via` is alive.
    pub async fn restart_via(&mut self, i: usize, via: Option<&str>) {
        let dir = self.nodes[i].data_dir.clone();
        let extra = self.nodes[i].extra.clone();
        // Same port as before, as a restarted daemon with a configured address would have: the
        // ring knows the node by PeerId and address.
        let listen = self.nodes[i].addr.addr.to_string();
        let ring = self.nodes[i].ring.clone();
        self.nodes[i] = spawn_node_with(&dir, &listen, via, &extra, Some(ring)).await;
    }

    /// Waits until the live nodes form the ideal ring: sorted by id, every node's predecessor is
    /// the previous one and its successor list is the next ones, in order.
    pub async fn wait_ideal(&self, within: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < within {
            match self.check_ideal().await {
                Ok(()) => return Ok(start.elapsed()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "ring not ideal after {within:?}: {last}\nthe ring as the nodes see it:\n{}",
            self.ring_view().await
        ))
    }

    /// How each live node sees the ring (id, predecessor, successors), one line each: for
    /// failure messages.
    pub async fn ring_view(&self) -> String {
        let live: Vec<(usize, &NodeProc)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.alive())
            .collect();
        let all = futures::future::join_all(live.iter().map(|(_, n)| n.status())).await;
        let mut out = String::new();
        for ((i, n), s) in live.iter().zip(all) {
            out.push_str(&view_line(&format!("node {i} at {}", n.addr), s.as_ref()));
            out.push('\n');
        }
        out
    }

    pub async fn check_ideal(&self) -> Result<(), String> {
        let mut statuses = Vec::new();
        for n in self.live() {
            let s = n
                .status()
                .await
                .ok_or_else(|| format!("no status from {}", n.addr))?;
            statuses.push(s);
        }
        statuses.sort_by_key(|s| s.id);
        let n = statuses.len();
        for (i, s) in statuses.iter().enumerate() {
            if !s.member {
                return Err(format!("{} not a member", s.id));
            }
            let pred = &statuses[(i + n - 1) % n];
            if n > 1 && s.predecessor.as_ref().map(|p| p.id) != Some(pred.id) {
                return Err(format!(
                    "{}: predecessor {:?}, want {}",
                    s.id,
                    s.predecessor.as_ref().map(|p| p.id),
                    pred.id
                ));
            }
            let want: Vec<_> = (1..n).map(|k| statuses[(i + k) % n].id).collect();
            let have: Vec<_> = s.successors.iter().map(|m| m.id).collect();
            let k = have.len().min(want.len());
            if k == 0 && n > 1 || have[..k] != want[..k] {
                return Err(format!("{}: successors {:?}, want {:?}", s.id, have, want));
            }
        }
        Ok(())
    }

    /// Waits until each of `keys` is held by at least `r` live nodes.
    pub async fn wait_replicated(
        &self,
        keys: &[BlockKey],
        r: usize,
        within: Duration,
    ) -> Result<Duration, String> {
        wait_until(within, || async {
            let h = self.holders().await;
            let short = keys
                .iter()
                .filter(|k| h.get(k).map_or(0, |v| v.len()) < r)
                .count();
            if short == 0 {
                Ok(())
            } else {
                Err(format!("{short} blocks under {r} live replicas"))
            }
        })
        .await
    }

    /// For every key held anywhere: on which live nodes it is.
    pub async fn holders(&self) -> BTreeMap<BlockKey, Vec<usize>> {
        let mut out: BTreeMap<BlockKey, Vec<usize>> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive() {
                continue;
            }
            for k in list_all(n).await {
                out.entry(k).or_default().push(i);
            }
        }
        out
    }
}

pub async fn list_all(n: &NodeProc) -> Vec<BlockKey> {
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        match n
            .member(MemberRequest::ListRange {
                from: chord::Id::ZERO,
                to: chord::Id::ZERO,
                after,
                limit: 4096,
            })
            .await
        {
            MemberResponse::Keys { keys: page, more } => {
                after = page.last().copied();
                keys.extend(page);
                if !more || after.is_none() {
                    return keys;
                }
            }
            other => panic!("list failed on {}: {other:?}", n.addr),
        }
    }
}

/// The ring key of every node this process started, by the node's address (as text).
static RINGS: std::sync::Mutex<BTreeMap<String, Arc<RingKey>>> =
    std::sync::Mutex::new(BTreeMap::new());

/// An invite line of `role` for the ring of the node at `peer` (a node this process started).
pub fn invite_for_node(peer: &str, role: Role, label: &str) -> Option<String> {
    let key = peerstore_proto::lock(&RINGS).get(peer).cloned()?;
    Some(admission::mint_invite(&key, role, label, vec![peer.to_string()], &[], 1).to_line())
}

/// The value of `--flag N` in `args`.
fn flag_value(args: &[String], flag: &str) -> Option<usize> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1)?.parse().ok()
}

/// An invite (as the harness plays the operator) for a new member joining through the node
/// whose data directory is `via`, with the ring id that best evens out the arcs of `choices`.
pub async fn invite_through(ring: &RingKey, via: &Path, choices: usize) -> String {
    let entry = read_address_file(via).expect("the entry node's address file");
    let members = if choices > 1 {
        let me = admission::ephemeral(ring, Role::Admin, "harness");
        admission::ring_members(&entry, me, Duration::from_secs(2)).await
    } else {
        Vec::new()
    };
    admission::mint_invite(
        ring,
        Role::Member,
        "test",
        vec![entry.to_string()],
        &members,
        choices,
    )
    .to_line()
}

/// Starts a node in `dir`: a new ring if `dir` holds no membership and `extra` has no
/// `--invite`, otherwise the member the directory (or invite) says.
pub async fn spawn_node(dir: &Path, via: Option<&str>, extra: &[String]) -> NodeProc {
    spawn_node_with(dir, "/ip4/127.0.0.1/tcp/0", via, extra, None).await
}

/// Starts a node listening on `listen` (`via`: an `--initial-peer`). `ring`: the ring's key
/// if known; otherwise the node is expected to create the ring and the key is read from its
/// data directory.
pub async fn spawn_node_with(
    dir: &Path,
    listen: &str,
    via: Option<&str>,
    extra: &[String],
    ring: Option<Arc<RingKey>>,
) -> NodeProc {
    std::fs::create_dir_all(dir).unwrap();
    let _ = std::fs::remove_file(dir.join(ADDRESS_FILE));
    let mut cmd = node_command(dir, listen, extra, via);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(node_log(dir));
    let child = cmd.spawn().expect("spawn peerstore-node");
    NodeProc::attach(child, dir, extra, ring, "").await
}

/// The harness's `peerstore-node` command for `dir`: listening on `listen`, the harness's
/// periods, `extra`, joining through `via`, with the log filter of `TEST_NODE_LOG` and no
/// minimum age or budget on verified deletions unless a test sets them (tests write and scrub
/// within seconds; real nodes keep copies 10 minutes, 256 per round). Standard streams are the
/// caller's to set ([`node_log`]).
pub fn node_command(dir: &Path, listen: &str, extra: &[String], via: Option<&str>) -> Command {
    let mut cmd = Command::new(node_bin());
    cmd.arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(dir)
        .arg("--stabilize-ms")
        .arg(STABILIZE_MS.to_string())
        .arg("--maintenance-ms")
        .arg(MAINTENANCE_MS.to_string())
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "info,libp2p=warn".into()),
        );
    if let Some(v) = via {
        cmd.arg("--initial-peer").arg(v);
    }
    for (var, default) in [
        ("PEERSTORE_DELETE_MIN_AGE_MS", "0"),
        ("PEERSTORE_DELETE_MAX_PER_ROUND", "100000"),
    ] {
        cmd.env(var, std::env::var(var).unwrap_or_else(|_| default.into()));
    }
    cmd
}

/// `<dir>/node.log`, appended to, for a node's standard error (nowhere if it cannot be opened).
pub fn node_log(dir: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

impl NodeProc {
    /// The node process `child` started on `dir`: waits for its address file, then opens the
    /// harness's admin and member clients with `ring` (read from `dir` when `None`: the first
    /// node of a ring keeps the ring key). `what` names the node in a failure.
    pub async fn attach(
        child: std::process::Child,
        dir: &Path,
        extra: &[String],
        ring: Option<Arc<RingKey>>,
        what: &str,
    ) -> NodeProc {
        let start = Instant::now();
        let addr = loop {
            if let Ok(a) = read_address_file(dir) {
                break a;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "node in {} {what} did not write its address file; log:\n{}",
                dir.display(),
                std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let ring = ring.unwrap_or_else(|| {
            Arc::new(admission::read_ring_key(dir).expect("the first node keeps the ring key"))
        });
        peerstore_proto::lock(&RINGS).insert(addr.to_string(), ring.clone());
        let admin = admission::ephemeral(&ring, Role::Admin, "harness");
        let member = admission::ephemeral(&ring, Role::Member, "harness");
        let client = RpcClient::start_as(addr.clone(), Duration::from_secs(10), Some(admin))
            .expect("rpc client");
        let member_client =
            RpcClient::start_as(addr.clone(), Duration::from_secs(10), Some(member))
                .expect("rpc client");
        NodeProc {
            child: Some(child),
            data_dir: dir.to_path_buf(),
            addr,
            client,
            member_client,
            extra: extra.to_vec(),
            ring,
        }
    }
}

/// The block records actually on disk under a store's root (`<data-dir>/store`,
/// `<data-dir>/single`), read from its segment files, with their payloads: what a node holds
/// on disk, not what its index says. Empty if there is no such store. Read-only, so it works
/// on a running node.
pub fn records_in(store_root: &Path) -> Vec<(BlockKey, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let Ok(records) = peerstore_node::store::records_on_disk(store_root) else {
        return Vec::new();
    };
    records
        .into_iter()
        .filter_map(|r| {
            let f = std::fs::File::open(&r.path).ok()?;
            let mut buf = vec![0u8; usize::try_from(r.len).ok()?];
            f.read_exact_at(&mut buf, r.offset).ok()?;
            Some((r.key, buf))
        })
        .collect()
}

/// Overwrites a few bytes of the payload of `key`'s record under a store's root, as silent
/// disk corruption would. Returns false if no record of `key` is on disk.
pub fn corrupt_on_disk(store_root: &Path, key: &BlockKey) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(records) = peerstore_node::store::records_on_disk(store_root) else {
        return false;
    };
    let Some(r) = records.into_iter().find(|r| r.key == *key && r.len > 0) else {
        return false;
    };
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&r.path)
    else {
        return false;
    };
    let at = r.offset + r.len / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).is_ok()
        && f.write_all_at(&[b[0] ^ 0x5a], at).is_ok()
        && f.sync_data().is_ok()
}

/// Deterministic pseudo-random block content.
pub fn block(i: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut h = blake3::Hasher::new();
    h.update(&i.to_le_bytes());
    let mut reader = h.finalize_xof();
    out.resize(len, 0);
    reader.fill(&mut out);
    out
}

pub async fn wait_until<F, Fut>(within: Duration, mut f: F) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        match f().await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("not reached within {within:?}: {last}"))
}

/// `k` nodes to kill at once: no three of them ring neighbours (records and reverse
/// references live on r = 3 consecutive nodes), and together owning the share of the key space
/// closest to `k / n`, a typical rather than a lucky or an unlucky draw (a 12-node ring's arcs
/// are uneven: three nodes can own almost half of it). Returns the indexes and their share.
pub async fn pick_victims(c: &Cluster, k: usize) -> (Vec<usize>, f64) {
    let mut order: Vec<(chord::Id, usize)> = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        order.push((n.status().await.expect("status").id, i));
    }
    order.sort();
    let n = order.len();
    // Arc owned by sorted node j: (id[j-1], id[j]], from the top 64 bits.
    let arcs: Vec<f64> = (0..n)
        .map(|j| {
            let a = order[(j + n - 1) % n].0.high_u64();
            let b = order[j].0.high_u64();
            b.wrapping_sub(a) as f64 / 2f64.powi(64)
        })
        .collect();
    let target = k as f64 / n as f64;
    let mut best: Option<(f64, Vec<usize>)> = None;
    let mut pick = vec![0usize; k];
    fn rec(
        start: usize,
        depth: usize,
        n: usize,
        pick: &mut Vec<usize>,
        f: &mut dyn FnMut(&[usize]),
    ) {
        if depth == pick.len() {
            f(pick);
            return;
        }
        for j in start..n {
            pick[depth] = j;
            rec(j + 1, depth + 1, n, pick, f);
        }
    }
    rec(0, 0, n, &mut pick, &mut |p: &[usize]| {
        let triple = (0..n).any(|j| (0..3).all(|d| p.contains(&((j + d) % n))));
        if triple {
            return;
        }
        let share: f64 = p.iter().map(|&j| arcs[j]).sum();
        if best
            .as_ref()
            .is_none_or(|(s, _)| (share - target).abs() < (s - target).abs())
        {
            best = Some((share, p.to_vec()));
        }
    });
    let (share, p) = best.expect("a victim set: fewer nodes than victims?");
    (p.into_iter().map(|j| order[j].1).collect(), share)
}

/// The live nodes in ring order: (ring id, index in `c.nodes`), sorted by id.
pub async fn ring_order(c: &Cluster) -> Vec<(chord::Id, usize)> {
    let mut order: Vec<(chord::Id, usize)> = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        if n.alive() {
            order.push((n.status().await.expect("status").id, i));
        }
    }
    order.sort();
    order
}

/// The share of the key space the nodes at `picks` (positions in `order`) own.
pub fn arc_share(order: &[(chord::Id, usize)], picks: &[usize]) -> f64 {
    let n = order.len();
    picks
        .iter()
        .map(|&j| {
            let a = order[(j + n - 1) % n].0.high_u64();
            let b = order[j].0.high_u64();
            b.wrapping_sub(a) as f64 / 2f64.powi(64)
        })
        .sum()
}

/// The seed of a randomized test: `$PEERSTORE_TEST_SEED` if set (to replay a run), else
/// fresh. Printed, so a failing run can be replayed.
pub fn test_seed(what: &str) -> u64 {
    let seed = std::env::var("PEERSTORE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{what}: seed {seed} (replay with PEERSTORE_TEST_SEED={seed})");
    seed
}

/// `k` live nodes to kill at once, drawn at random from `rng`: with `neighbours`, `k`
/// consecutive ring members (by id) from a random start, else any `k`. Draws that own more
/// than `max_share` of the key space are redrawn (they would test the code's limit rather
/// than what the test is about). Returns the indexes in `c.nodes` and their share.
pub async fn random_victims(
    c: &Cluster,
    k: usize,
    neighbours: bool,
    max_share: f64,
    rng: &mut impl rand::Rng,
) -> (Vec<usize>, f64) {
    let order = ring_order(c).await;
    let n = order.len();
    assert!(k < n, "{k} victims of {n} live nodes");
    let mut best: Option<(f64, Vec<usize>)> = None;
    for _ in 0..1000 {
        let picks: Vec<usize> = if neighbours {
            let start = rng.gen_range(0..n);
            (0..k).map(|d| (start + d) % n).collect()
        } else {
            rand::seq::index::sample(rng, n, k).into_vec()
        };
        let share = arc_share(&order, &picks);
        if best.as_ref().is_none_or(|(s, _)| share < *s) {
            best = Some((share, picks.clone()));
        }
        if share <= max_share {
            best = Some((share, picks));
            break;
        }
    }
    let (share, picks) = best.expect("at least one draw");
    (picks.into_iter().map(|j| order[j].1).collect(), share)
}

/// How many live nodes hold each of `keys` in their entangled record table (codeword and
/// document records).
pub async fn record_holders(c: &Cluster, keys: &[BlockKey]) -> BTreeMap<BlockKey, usize> {
    let mut out: BTreeMap<BlockKey, usize> = keys.iter().map(|k| (*k, 0)).collect();
    for n in c.live() {
        for chunk in keys.chunks(256) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let got = match n
                    .ent(EntRequest::FetchRecords {
                        keys: rest.to_vec(),
                    })
                    .await
                {
                    EntResponse::Records { records } => records,
                    other => panic!("fetch records from {}: {other:?}", n.addr),
                };
                assert!(!got.is_empty(), "empty records answer");
                for (k, v) in rest.iter().zip(&got) {
                    if v.as_ref().is_some_and(|v| BlockKey::of(v) == *k) {
                        *out.entry(*k).or_default() += 1;
                    }
                }
                rest = &rest[got.len().min(rest.len())..];
            }
        }
    }
    out
}

/// A codeword or document record from the first live node that holds it (verified).
pub async fn fetch_record(c: &Cluster, key: BlockKey) -> Option<Vec<u8>> {
    for n in c.live() {
        if let MemberResponse::Entangled(EntResponse::Records { records }) = n
            .member(MemberRequest::Entangled(EntRequest::FetchRecords {
                keys: vec![key],
            }))
            .await
        {
            if let Some(Some(v)) = records.into_iter().next() {
                if BlockKey::of(&v) == key {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// Node flags of an entangled ring with the default code, systematic (s, t, p) = (4, 8, 8),
/// r = 3, the background repair worker out of the way (tests run repair themselves) and every
/// new block at r replicas (`--fresh-parities replicated`: the tests of scrub and repair start
/// from r copies of everything; the default, one copy of each new parity, is what
/// `e2e_replicas`, `e2e_prune` and the demo run).
pub const STEP_RING_ARGS: &[&str] = &[
    "--replication",
    "3",
    "--entanglement",
    "step",
    "--fresh-parities",
    "replicated",
    "--entangle-layout",
    "systematic",
    "--entangle-s",
    "4",
    "--entangle-t",
    "8",
    "--entangle-p",
    "8",
    "--repair-ms",
    "600000",
];

/// [`STEP_RING_ARGS`] with RECAST's parity-only layout, (s, t, p) = (4, 8, 12), the default
/// before the systematic layout: nodes store parities only, never a source block.
pub const PARITY_ONLY_RING_ARGS: &[&str] = &[
    "--replication",
    "3",
    "--entanglement",
    "step",
    "--entangle-layout",
    "parity-only",
    "--entangle-s",
    "4",
    "--entangle-t",
    "8",
    "--entangle-p",
    "12",
    "--repair-ms",
    "600000",
];

/// Stores a document through `n` (a few tries while the ring settles) and returns its key.
pub async fn put_document(n: &NodeProc, data: &[u8]) -> BlockKey {
    for _ in 0..4 {
        match n
            .call(ClientRequest::PutDocument {
                data: data.to_vec(),
                auth: None,
                session: None,
            })
            .await
        {
            ClientResponse::DocumentStored { key } => return key,
            other => {
                eprintln!("put-document retry after {other:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    panic!("put-document via {} failed", n.addr);
}

/// `n` test documents from `seed`, cycling through `sizes` and growing by 517 bytes every
/// `sizes.len()` documents, so sizes fall around codeword boundaries.
pub fn documents(n: u64, seed: u64, sizes: &[usize]) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            block(
                seed + i,
                sizes[i as usize % sizes.len()] + (i as usize / sizes.len()) * 517,
            )
        })
        .collect()
}
