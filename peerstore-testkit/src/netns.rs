//! Multi-host tests: every `peerstore-node` in its own Linux network namespace ("host"), all
//! hosts on one bridge, so nodes dial each other's real addresses rather than 127.0.0.1.
//!
//! Topology (all names carry a per-process prefix `pstk<pid>n<k>`, so parallel runs do not
//! clash; what a crashed run left behind is removed by the next one):
//!
//! ```text
//!   <prefix>-sw      namespace holding the bridge br0 and the switch ends of the veths
//!   <prefix>-h<i>    host i: eth0 = <net>.(10 + i)/24, lo; its node listens on 0.0.0.0:PORT
//!                    and announces /ip4/<net>.(10 + i)/tcp/PORT
//!   <prefix>-cl      the clients' host: eth0 = <net>.200/24
//!   <prefix>r        a veth in the root namespace, <net>.254/24, so the test process itself
//!                    (status requests, invites) reaches the nodes
//! ```
//!
//! `<net>` is `10.77.<x>`, the first /24 the root namespace does not use yet. No namespace has
//! a default route: nothing leaves the private subnet. Everything is torn down on drop (also
//! on panic): the node processes are killed first, then the namespaces are deleted, which
//! removes every veth and the bridge with them.
//!
//! Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip`/`tc` (iproute2). [`Net::new`]
//! returns `Err(reason)` when namespaces cannot be made; tests then print
//! `skipped: <reason>` and pass.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use peerstore_node::admission;
use peerstore_node::identity::ADDRESS_FILE;
use peerstore_proto::admission::{RingKey, Role};
use peerstore_proto::StatusReport;

use crate::{invite_through, node_command, node_log, Cluster, NodeProc};

/// The port every node listens on inside its own namespace.
pub const NODE_PORT: u16 = 4100;

/// Namespaces and root-namespace links of this harness start with this.
const TAG: &str = "pstk";

static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// One emulated host: a network namespace with one address on the bridge.
#[derive(Clone, Debug)]
pub struct Host {
    /// The namespace's name (`ip netns exec <ns> ...`).
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The switch end of the host's veth (in the switch namespace).
    port: String,
}

impl Host {
    /// `cmd` run inside this host's namespace (`ip netns exec`, which execs the program: the
    /// child's pid is the program's): same program, arguments, environment and directory.
    pub fn exec(&self, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c
    }
}

/// The emulated network: hosts on one bridge, torn down on drop.
pub struct Net {
    pub prefix: String,
    /// The first three octets of the hosts' /24.
    pub subnet: [u8; 3],
    /// The namespace holding the bridge.
    pub switch: String,
    pub hosts: Vec<Host>,
    /// The clients' host.
    pub client: Host,
    /// The root namespace's veth onto the bridge, and its address.
    pub root_link: String,
    pub root_ip: Ipv4Addr,
}

/// Runs a command; `Err` with its stderr if it cannot start or fails.
fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{}` cannot run: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The pid in a name this harness made (`pstk<pid>n<k>-...` or `pstk<pid>n<k>r`), and the
/// name's prefix `pstk<pid>n<k>`.
fn parse_tagged(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix(TAG)?;
    let pid_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let pid: u32 = rest[..pid_len].parse().ok()?;
    let after = rest[pid_len..].strip_prefix('n')?;
    let k_len = after.bytes().take_while(u8::is_ascii_digit).count();
    if k_len == 0 {
        return None;
    }
    let end = TAG.len() + pid_len + 1 + k_len;
    let tail = &name[end..];
    (tail == "r" || tail.starts_with('-')).then_some((pid, &name[..end]))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The network namespaces that exist.
fn netns_list() -> Vec<String> {
    run(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The links of the root namespace.
fn root_links() -> Vec<String> {
    run(&["ip", "-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_string())
        })
        .collect()
}

/// Deletes the namespaces and root links this harness made whose prefix is `prefix`, or (with
/// `None`) whose process is gone. Deleting a namespace deletes the veths and the bridge in it
/// (a veth dies with its peer), once no process runs inside it any more.
fn remove_tagged(prefix: Option<&str>) {
    let doomed = |name: &str| match parse_tagged(name) {
        Some((pid, p)) => match prefix {
            Some(want) => p == want,
            None => !pid_alive(pid),
        },
        None => false,
    };
    for ns in netns_list() {
        if doomed(&ns) {
            if prefix.is_none() {
                eprintln!("netns: removing {ns}, left by a run that is gone");
            }
            // Processes still inside (nodes of a run that was killed) would keep the
            // namespace, its veths and the bridge alive after its name is gone.
            for pid in run(&["ip", "netns", "pids", &ns])
                .unwrap_or_default()
                .split_whitespace()
            {
                let _ = run(&["kill", "-9", pid]);
            }
            if let Err(e) = run(&["ip", "netns", "del", &ns]) {
                eprintln!("netns: cannot remove {ns}: {e}");
            }
        }
    }
    for link in root_links() {
        if doomed(&link) {
            let _ = run(&["ip", "link", "del", &link]);
        }
    }
}

/// No IPv6 in a namespace (no router solicitations, no link-local chatter): best effort.
fn no_ipv6(ns: &str) {
    let _ = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ]);
}

/// The first 10.77.x.0/24 the root namespace has no address or route in.
fn free_subnet(start: usize) -> Result<[u8; 3], String> {
    let used = format!(
        "{}\n{}",
        run(&["ip", "-4", "-o", "addr", "show"])?,
        run(&["ip", "-4", "route", "show", "table", "all"])?
    );
    (0..250)
        .map(|d| ((start + d) % 250 + 1) as u8)
        .find(|x| !used.contains(&format!("10.77.{x}.")))
        .map(|x| [10, 77, x])
        .ok_or_else(|| "no free 10.77.x.0/24 in the root namespace".to_string())
}

impl Net {
    /// Makes `n` hosts and the clients' host on one bridge. `Err(reason)` if the namespaces
    /// cannot be made (not root, no iproute2, no veth/bridge support...): the caller skips.
    pub fn new(n: usize) -> Result<Net, String> {
        assert!(n <= 100, "at most 100 hosts");
        let pid = std::process::id();
        let k = INSTANCE.fetch_add(1, Ordering::SeqCst) % 100;
        let prefix = format!("{TAG}{pid}n{k}");
        let root_link = format!("{prefix}r");
        assert!(root_link.len() <= 15, "link name {root_link} too long");
        // Left over by a crashed run: ours (same pid, an earlier process) and those of dead
        // processes.
        remove_tagged(Some(&prefix));
        remove_tagged(None);

        let switch = format!("{prefix}-sw");
        run(&["ip", "netns", "add", &switch])
            .map_err(|e| format!("cannot make a namespace: {e}"))?;
        let subnet = free_subnet(pid as usize + k).inspect_err(|_| remove_tagged(Some(&prefix)))?;
        let ip = |last: u8| Ipv4Addr::new(subnet[0], subnet[1], subnet[2], last);
        let mut net = Net {
            prefix: prefix.clone(),
            subnet,
            switch: switch.clone(),
            hosts: Vec::new(),
            client: Host {
                ns: format!("{prefix}-cl"),
                ip: ip(200),
                port: "pcl".into(),
            },
            root_link: root_link.clone(),
            root_ip: ip(254),
        };
        // From here on, dropping `net` removes whatever was made.
        no_ipv6(&switch);
        run(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &switch, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let host = Host {
                ns: format!("{prefix}-h{i}"),
                ip: ip(10 + i as u8),
                port: format!("p{i}"),
            };
            net.plug(&host)?;
            net.hosts.push(host);
        }
        let client = net.client.clone();
        net.plug(&client)?;
        // The test process's own leg onto the bridge.
        run(&[
            "ip", "link", "add", &root_link, "type", "veth", "peer", "name", "up0", "netns",
            &switch,
        ])?;
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{root_link}/disable_ipv6"),
            "1",
        );
        run(&["ip", "-n", &switch, "link", "set", "up0", "master", "br0"])?;
        run(&["ip", "-n", &switch, "link", "set", "up0", "up"])?;
        let cidr = format!("{}/24", net.root_ip);
        run(&["ip", "addr", "add", &cidr, "dev", &root_link])?;
        run(&["ip", "link", "set", &root_link, "up"])?;
        Ok(net)
    }

    /// Makes `host`'s namespace and plugs its eth0 into the bridge.
    fn plug(&self, host: &Host) -> Result<(), String> {
        let sw = self.switch.as_str();
        run(&["ip", "netns", "add", &host.ns])?;
        no_ipv6(&host.ns);
        run(&[
            "ip", "-n", sw, "link", "add", &host.port, "type", "veth", "peer", "name", "eth0",
            "netns", &host.ns,
        ])?;
        run(&["ip", "-n", sw, "link", "set", &host.port, "master", "br0"])?;
        run(&["ip", "-n", sw, "link", "set", &host.port, "up"])?;
        let cidr = format!("{}/24", host.ip);
        run(&["ip", "-n", &host.ns, "addr", "add", &cidr, "dev", "eth0"])?;
        run(&["ip", "-n", &host.ns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", &host.ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Cuts host `i` off: its cable is pulled at the switch (link down; the host sees no
    /// carrier).
    pub fn link_down(&self, i: usize) {
        let h = &self.hosts[i];
        run(&["ip", "-n", &self.switch, "link", "set", &h.port, "down"])
            .unwrap_or_else(|e| panic!("link down of {}: {e}", h.ns));
    }

    /// Plugs host `i` back in.
    pub fn link_up(&self, i: usize) {
        let h = &self.hosts[i];
        run(&["ip", "-n", &self.switch, "link", "set", &h.port, "up"])
            .unwrap_or_else(|e| panic!("link up of {}: {e}", h.ns));
    }

    /// Limits host `i`'s link to `rate` in both directions with a token bucket filter
    /// (`tc qdisc replace dev X root tbf rate RATE burst BURST latency LATENCY`, on the host's
    /// eth0 for what it sends and on the switch end for what it receives), e.g.
    /// `("16mbit", "64kb", "100ms")`. Replaces an earlier limit.
    pub fn limit_rate(&self, i: usize, rate: &str, burst: &str, latency: &str) {
        let h = &self.hosts[i];
        let tbf = [
            "root", "tbf", "rate", rate, "burst", burst, "latency", latency,
        ];
        for (ns, dev) in [
            (h.ns.as_str(), "eth0"),
            (self.switch.as_str(), h.port.as_str()),
        ] {
            let mut args = vec![
                "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev,
            ];
            args.extend_from_slice(&tbf);
            run(&args).unwrap_or_else(|e| panic!("rate limit of {}: {e}", h.ns));
        }
    }

    /// Removes host `i`'s rate limit.
    pub fn unlimit_rate(&self, i: usize) {
        let h = &self.hosts[i];
        for (ns, dev) in [
            (h.ns.as_str(), "eth0"),
            (self.switch.as_str(), h.port.as_str()),
        ] {
            let _ = run(&[
                "ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root",
            ]);
        }
    }

    /// `tc -s qdisc show` of host `i`'s two link ends, each on one line: (its eth0: what it
    /// sent, the switch end: what it received), with how often a limit held packets back.
    pub fn qdisc_stats(&self, i: usize) -> (String, String) {
        let h = &self.hosts[i];
        let show = |ns: &str, dev: &str| {
            run(&[
                "ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev,
            ])
            .unwrap_or_else(|e| e)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
        };
        (show(&h.ns, "eth0"), show(&self.switch, &h.port))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_tagged(Some(&self.prefix));
        let left: Vec<String> = netns_list()
            .into_iter()
            .chain(root_links())
            .filter(|n| parse_tagged(n).is_some_and(|(_, p)| p == self.prefix))
            .collect();
        if !left.is_empty() {
            eprintln!("netns: could not remove {left:?}");
        }
    }
}

/// A ring of nodes, node `i` on host `i` of its own [`Net`]. The nodes are killed before the
/// network is torn down.
pub struct NetCluster {
    /// The nodes (`cluster.nodes[i]` runs on `net.hosts[i]`); its helpers (`wait_ideal`,
    /// `holders`, ...) work from the test process through the root namespace's leg.
    pub cluster: Cluster,
    pub net: Net,
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for n in &mut self.cluster.nodes {
            n.kill9();
        }
    }
}

/// The value of `--flag N` in `args`.
fn flag_value(args: &[String], flag: &str) -> Option<usize> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1)?.parse().ok()
}

impl NetCluster {
    /// A network of `n` hosts, and a ring of `n` nodes on it started one after another (the
    /// first makes the ring, every other joins with an invite through it, as
    /// [`Cluster::start`] does). `Err(reason)` if the network cannot be made.
    pub async fn start(n: usize, extra: &[&str]) -> Result<NetCluster, String> {
        let net = Net::new(n)?;
        let mut nc = NetCluster {
            cluster: Cluster::new(extra),
            net,
        };
        for i in 0..n {
            nc.add_node(i).await;
        }
        Ok(nc)
    }

    /// Starts a node on host `i` (a new one: its data directory `node<i>`), joining through
    /// the first live node, or making the ring if there is none.
    async fn add_node(&mut self, i: usize) {
        assert_eq!(self.cluster.nodes.len(), i, "nodes are added in host order");
        let dir = self.cluster.root.path().join(format!("node{i}"));
        let via = self.cluster.live().next().map(|n| n.data_dir.clone());
        let mut args = self.cluster.extra.clone();
        if let (Some(ring), Some(via)) = (&self.cluster.ring, &via) {
            let choices = flag_value(&args, "--id-choices").unwrap_or(1024);
            args.push("--invite".into());
            args.push(invite_through(ring, via, choices).await);
        }
        let ring = self.cluster.ring.clone();
        let node = self.spawn(i, &dir, None, &args, ring).await;
        if self.cluster.ring.is_none() {
            self.cluster.ring = Some(node.ring.clone());
        }
        self.cluster.nodes.push(node);
        if via.is_some() {
            self.cluster.wait_joined(i).await;
        }
    }

    /// Restarts the stopped node `i` on its data directory and host (same address), joining
    /// through another live node.
    pub async fn restart(&mut self, i: usize) {
        let via = self
            .cluster
            .nodes
            .iter()
            .enumerate()
            .find(|(j, n)| *j != i && n.alive())
            .map(|(_, n)| n.addr.to_string());
        let dir = self.cluster.nodes[i].data_dir.clone();
        let extra = self.cluster.nodes[i].extra.clone();
        let ring = self.cluster.nodes[i].ring.clone();
        self.cluster.nodes[i] = self
            .spawn(i, &dir, via.as_deref(), &extra, Some(ring))
            .await;
    }

    /// Starts `peerstore-node` in host `i`'s namespace: listening on 0.0.0.0:[`NODE_PORT`],
    /// announcing the host's address, with the harness's periods and environment (as
    /// [`crate::spawn_node_with`]), its log in `<dir>/node.log`.
    async fn spawn(
        &self,
        i: usize,
        dir: &Path,
        via: Option<&str>,
        extra: &[String],
        ring: Option<Arc<RingKey>>,
    ) -> NodeProc {
        let host = &self.net.hosts[i];
        std::fs::create_dir_all(dir).unwrap();
        let _ = std::fs::remove_file(dir.join(ADDRESS_FILE));
        let announce = format!("/ip4/{}/tcp/{NODE_PORT}", host.ip);
        let mut cmd = node_command(dir, &format!("/ip4/0.0.0.0/tcp/{NODE_PORT}"), extra, via);
        cmd.arg("--announce").arg(&announce);
        let log = node_log(dir);
        let child = host
            .exec(&cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ip netns exec peerstore-node");
        let node = NodeProc::attach(child, dir, extra, ring, &format!("({})", host.ns)).await;
        assert_eq!(
            node.addr.addr.to_string(),
            announce,
            "node on {} does not announce its host's address",
            host.ns
        );
        node
    }

    /// A file under the cluster's directory holding an invite line of `role` for a client
    /// that talks to node `i` (for `peerstore-client --credential`).
    pub fn credential(&self, i: usize, role: Role, label: &str) -> PathBuf {
        let node = &self.cluster.nodes[i];
        let line =
            admission::mint_invite(&node.ring, role, label, vec![node.addr.to_string()], &[], 1)
                .to_line();
        let path = self.cluster.root.path().join(format!("{label}.credential"));
        std::fs::write(&path, line).expect("write credential");
        path
    }

    /// Statuses of the nodes `which` (in parallel); `Err` names the first that did not answer.
    pub async fn statuses(&self, which: &[usize]) -> Result<Vec<StatusReport>, String> {
        let all =
            futures::future::join_all(which.iter().map(|&i| self.cluster.nodes[i].status())).await;
        which
            .iter()
            .zip(all)
            .map(|(&i, s)| {
                s.ok_or_else(|| format!("no status from node {i} ({})", self.net.hosts[i].ns))
            })
            .collect()
    }

    /// Whether the nodes `which` form the ideal ring among themselves (as
    /// [`Cluster::check_ideal`] for all live nodes): sorted by id, each one's predecessor is
    /// the previous one and its successor list starts with the next ones, in order, so each
    /// sees every other.
    pub async fn check_ideal_among(&self, which: &[usize]) -> Result<(), String> {
        let mut statuses = self.statuses(which).await?;
        statuses.sort_by_key(|s| s.id);
        let n = statuses.len();
        for (i, s) in statuses.iter().enumerate() {
            if !s.member {
                return Err(format!("{} not a member", s.id));
            }
            let pred = statuses[(i + n - 1) % n].id;
            if n > 1 && s.predecessor.as_ref().map(|p| p.id) != Some(pred) {
                return Err(format!(
                    "{}: predecessor {:?}, want {pred}",
                    s.id,
                    s.predecessor.as_ref().map(|p| p.id)
                ));
            }
            let want: Vec<_> = (1..n).map(|k| statuses[(i + k) % n].id).collect();
            let have: Vec<_> = s.successors.iter().take(n - 1).map(|m| m.id).collect();
            if have != want {
                return Err(format!("{}: successors {have:?}, want {want:?}", s.id));
            }
        }
        Ok(())
    }

    /// Waits until [`NetCluster::check_ideal_among`] holds for `which`.
    pub async fn wait_ideal_among(
        &self,
        which: &[usize],
        within: Duration,
    ) -> Result<Duration, String> {
        match crate::wait_until(within, || self.check_ideal_among(which)).await {
            Ok(took) => Ok(took),
            Err(e) => Err(format!(
                "{e}\nthe ring as the nodes see it:\n{}",
                self.ring_view(which).await
            )),
        }
    }

    /// How each of the nodes `which` sees the ring (id, predecessor, successors), one line
    /// each: for failure messages.
    pub async fn ring_view(&self, which: &[usize]) -> String {
        let all =
            futures::future::join_all(which.iter().map(|&i| self.cluster.nodes[i].status())).await;
        let mut out = String::new();
        for (&i, s) in which.iter().zip(all) {
            let label = format!("node {i} on {}", self.net.hosts[i].ns);
            out.push_str(&crate::view_line(&label, s.as_ref()));
            out.push('\n');
        }
        out
    }
}
