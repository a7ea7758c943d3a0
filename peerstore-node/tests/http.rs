//! The web page of the ring and the metrics (issue 16, "A web page of the ring" and "Metrics"):
//! real node processes started with `--http 127.0.0.1:0`, read over plain HTTP/1.1. The page
//! itself is rendered by headless Chromium when one is installed (`scripts/setup.sh` tries to
//! install it); without one that part is skipped with a message. Tests in this file run one
//! at a time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use peerstore_proto::{BlockKey, ClientRequest, ClientResponse};
use peerstore_testkit::browser::{browser, render};
use peerstore_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HTTP_ARGS: &[&str] = &["--http", "127.0.0.1:0"];

/// `GET path` on `addr`: the status code, the headers (lower-cased names) and the body.
async fn http_get(
    addr: &str,
    path: &str,
) -> Result<(u16, BTreeMap<String, String>, String), String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(15), fetch)
        .await
        .map_err(|_| format!("GET {path}: no answer within 15 s"))??;
    let text = String::from_utf8(raw).map_err(|_| "the answer is not UTF-8".to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, headers, body))
}

fn dechunk(mut s: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").ok_or("bad chunk")?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|_| "bad chunk size")?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).ok_or("short chunk")?);
        s = rest.get(n + 2..).ok_or("short chunk")?;
    }
}

/// A sample of the exposition: metric name and its labels (sorted), e.g.
/// `peerstore_requests_total{kind="put",protocol="client",result="ok"}`.
type Samples = BTreeMap<String, f64>;

/// Parses Prometheus / OpenMetrics text strictly enough to catch a broken exposition: every
/// line is a `# HELP`, `# TYPE` or `# EOF` comment or a sample `name{labels} value` of a
/// declared family, label values are quoted, values are numbers, and `# EOF` ends it.
fn parse_prometheus(text: &str) -> Result<Samples, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    let mut eof = false;
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for (i, line) in text.lines().enumerate() {
        let at = |m: &str| format!("line {}: {m}: {line:?}", i + 1);
        if eof {
            return Err(at("text after # EOF"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (what, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !valid_name(name) {
                return Err(at("bad metric name"));
            }
            match what {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                        "gaugehistogram",
                    ]
                    .contains(&t)
                    {
                        return Err(at("unknown type"));
                    }
                    types.insert(name.to_string(), t.to_string());
                }
                _ => return Err(at("unknown comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| at("value is not a number"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels"))?;
                let mut labels = Vec::new();
                let mut rest = inner;
                while !rest.is_empty() {
                    let (k, after) = rest.split_once("=\"").ok_or_else(|| at("bad label"))?;
                    if !valid_name(k) {
                        return Err(at("bad label name"));
                    }
                    // The value ends at the first quote not escaped.
                    let mut end = None;
                    let mut escaped = false;
                    for (j, c) in after.char_indices() {
                        match c {
                            '\\' if !escaped => escaped = true,
                            '"' if !escaped => {
                                end = Some(j);
                                break;
                            }
                            _ => escaped = false,
                        }
                    }
                    let end = end.ok_or_else(|| at("unterminated label value"))?;
                    labels.push(format!("{k}=\"{}\"", &after[..end]));
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name, labels)
            }
        };
        if !valid_name(name) {
            return Err(at("bad sample name"));
        }
        let family = ["_total", "_bucket", "_sum", "_count", "_created", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(at("sample of an undeclared family"));
        }
        let mut labels = labels;
        labels.sort();
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{}}}", labels.join(","))
        };
        samples.insert(key, value);
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    Ok(samples)
}

async fn metrics(n: &NodeProc) -> Samples {
    let addr = n.http_addr().await;
    let (status, headers, body) = http_get(&addr, "/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{headers:?}"
    );
    parse_prometheus(&body).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{body}"))
}

/// The sum of the samples named `name` whose labels include all of `with`.
fn sum(s: &Samples, name: &str, with: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && with.iter().all(|w| k.contains(*w)))
        .map(|(_, v)| v)
        .sum()
}

async fn ring_json(n: &NodeProc) -> serde_json::Value {
    let addr = n.http_addr().await;
    let (status, headers, body) = http_get(&addr, "/ring.json").await.expect("GET /ring.json");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/ring.json is not JSON: {e}\n{body}"))
}

fn members(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["members"].as_array().cloned().unwrap_or_default()
}

fn health_of(v: &serde_json::Value, peer: &str) -> Option<String> {
    members(v)
        .iter()
        .find(|m| m["peer"] == peer)
        .and_then(|m| m["health"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_counters_move_with_traffic() {
    let _one = SERIAL.lock().await;
    let c = Cluster::start(3, HTTP_ARGS).await;
    c.wait_ideal(Duration::from_secs(20))
        .await
        .expect("ideal ring");
    let before = metrics(&c.nodes[0]).await;
    let before_members: f64 = {
        let mut t = 0.0;
        for n in &c.nodes[1..] {
            t += sum(
                &metrics(n).await,
                "peerstore_requests_total",
                &[
                    "protocol=\"member\"",
                    "kind=\"store-local\"",
                    "result=\"ok\"",
                ],
            );
        }
        t
    };
    const N: u64 = 20;
    const LEN: usize = 3000;
    let mut keys = Vec::new();
    for i in 0..N {
        let data = block(1000 + i, LEN);
        let key = BlockKey::of(&data);
        match c.nodes[0].call(ClientRequest::Put { key, data }).await {
            ClientResponse::Stored { .. } => keys.push(key),
            other => panic!("put {i}: {other:?}"),
        }
    }
    for key in &keys {
        match c.nodes[0].call(ClientRequest::Get { key: *key }).await {
            ClientResponse::Block { data } => assert_eq!(data.len(), LEN),
            other => panic!("get: {other:?}"),
        }
        match c.nodes[0].call(ClientRequest::Lookup { key: *key }).await {
            ClientResponse::Owner { .. } => {}
            other => panic!("lookup: {other:?}"),
        }
    }
    // A block that is not there is an answer too; a request that fails is counted with its
    // error code.
    let missing = BlockKey::of(b"never stored");
    let _ = c.nodes[0].call(ClientRequest::Get { key: missing }).await;
    let bad = ClientRequest::Put {
        key: missing,
        data: b"not what the key says".to_vec(),
    };
    assert!(matches!(
        c.nodes[0].call(bad).await,
        ClientResponse::Error { .. }
    ));

    let after = metrics(&c.nodes[0]).await;
    let delta = |name: &str, with: &[&str]| sum(&after, name, with) - sum(&before, name, with);
    let client = "protocol=\"client\"";
    let puts = delta(
        "peerstore_requests_total",
        &[client, "kind=\"put\"", "result=\"ok\""],
    );
    let gets = delta(
        "peerstore_requests_total",
        &[client, "kind=\"get\"", "result=\"ok\""],
    );
    let lookups = delta("peerstore_client_lookups_total", &[]);
    let bytes_in = delta(
        "peerstore_payload_bytes_total",
        &[client, "direction=\"in\""],
    );
    let bytes_out = delta(
        "peerstore_payload_bytes_total",
        &[client, "direction=\"out\""],
    );
    println!(
        "node 0 after {N} puts, {N} gets, {N} lookups: puts +{puts}, gets +{gets}, lookups +{lookups}, \
         client bytes in +{bytes_in}, out +{bytes_out}, blocks {}, rss {} MiB",
        sum(&after, "peerstore_store_blocks", &[]),
        sum(&after, "peerstore_process_resident_memory_bytes", &[]) / 1048576.0
    );
    assert_eq!(puts, N as f64);
    assert_eq!(gets, N as f64 + 1.0);
    let failed_puts = delta("peerstore_requests_total", &[client, "kind=\"put\""]) - puts;
    assert_eq!(
        failed_puts, 1.0,
        "the bad put is counted with its error code"
    );
    assert_eq!(lookups, N as f64);
    // The node routed the puts itself: its own lookups moved too.
    let own = delta("peerstore_ring_lookups_total", &[]);
    let own_hops = delta("peerstore_ring_lookup_hops_total", &[]);
    println!("node 0's own lookups +{own}, hops +{own_hops}");
    assert!(own >= 1.0, "own lookups {own}");
    assert_eq!(
        delta("peerstore_client_lookup_hops_count", &[]),
        N as f64,
        "one hop observation per lookup"
    );
    assert!(bytes_in >= (N as usize * LEN) as f64, "bytes in {bytes_in}");
    assert!(
        bytes_out >= (N as usize * LEN) as f64,
        "bytes out {bytes_out}"
    );
    assert!(
        sum(&after, "peerstore_store_blocks", &[]) >= N as f64,
        "r = 3 on 3 nodes: every node holds every block"
    );
    assert!(sum(&after, "peerstore_store_bytes", &[]) >= (N as usize * LEN) as f64);
    assert!(sum(&after, "peerstore_store_capacity_bytes", &[]) > 0.0);
    assert!(sum(&after, "peerstore_process_resident_memory_bytes", &[]) > 0.0);
    for name in [
        "peerstore_maintenance_pulled_total",
        "peerstore_maintenance_pushed_total",
        "peerstore_maintenance_cleaned_total",
        "peerstore_maintenance_parity_copies_dropped_total",
        "peerstore_ring_members_healthy",
        "peerstore_record_bytes",
        "peerstore_store_free_bytes",
    ] {
        assert!(after.contains_key(name), "{name} missing");
    }
    // The replicas the puts sent to the other nodes are member requests there.
    let mut after_members = 0.0;
    for n in &c.nodes[1..] {
        after_members += sum(
            &metrics(n).await,
            "peerstore_requests_total",
            &[
                "protocol=\"member\"",
                "kind=\"store-local\"",
                "result=\"ok\"",
            ],
        );
    }
    assert!(
        after_members - before_members >= N as f64,
        "store-local on nodes 1 and 2: {before_members} -> {after_members}"
    );

    // Bad requests are refused, never crash the node.
    let addr = c.nodes[0].http_addr().await;
    let (status, _, _) = http_get(&addr, "/nope").await.expect("GET /nope");
    assert_eq!(status, 404);
    let (status, _, page) = http_get(&addr, "/").await.expect("GET /");
    assert_eq!(status, 200);
    assert!(page.contains("ring.json") && page.contains("<svg"));
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
    let head = String::from_utf8_lossy(&raw);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
    assert!(
        metrics(&c.nodes[0])
            .await
            .contains_key("peerstore_store_blocks"),
        "the node still answers after bad input"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ring_json_lists_members_and_marks_a_dead_one_unhealthy() {
    const N: usize = 4;
    let _one = SERIAL.lock().await;
    let mut c = Cluster::start(N, HTTP_ARGS).await;
    c.wait_ideal(Duration::from_secs(30))
        .await
        .expect("ideal ring");
    let peers: Vec<String> = c.nodes.iter().map(|n| n.addr.peer.to_string()).collect();
    let last = std::sync::Mutex::new(serde_json::Value::Null);
    let waited = wait_until(Duration::from_secs(20), || {
        let c = &c;
        let peers = &peers;
        let last = &last;
        async move {
            let v = ring_json(&c.nodes[0]).await;
            let healthy = members(&v)
                .iter()
                .filter(|m| m["health"] == "healthy")
                .count();
            let listed = peers
                .iter()
                .all(|p| members(&v).iter().any(|m| m["peer"] == p.as_str()));
            *last.lock().unwrap() = v;
            if listed && healthy == N {
                Ok(())
            } else {
                Err(format!("{healthy} healthy, all listed: {listed}"))
            }
        }
    })
    .await;
    waited.unwrap_or_else(|e| panic!("{e}: {:#}", last.lock().unwrap()));
    let v = ring_json(&c.nodes[0]).await;
    let list = members(&v);
    assert_eq!(list.len(), N, "{v:#}");
    let share: f64 = list.iter().filter_map(|m| m["arc_share"].as_f64()).sum();
    assert!((share - 1.0).abs() < 1e-9, "arcs cover the ring: {share}");
    for m in &list {
        assert!(m["capacity"].as_u64().is_some_and(|c| c > 0), "{m}");
        assert!(m["bytes_used"].as_u64().is_some(), "{m}");
        assert!(m["last_seen_ms_ago"].as_u64().is_some(), "{m}");
    }
    assert_eq!(list.iter().filter(|m| m["self"] == true).count(), 1);
    assert!(v["keys_held"].as_u64().is_some(), "{v:#}");
    // Every node comes to see the same members (the last to join learns of the others from
    // its neighbours' answers within a poll or two).
    for (i, n) in c.nodes.iter().enumerate().skip(1) {
        wait_until(Duration::from_secs(10), || async {
            let seen = members(&ring_json(n).await).len();
            if seen == N {
                Ok(())
            } else {
                Err(format!("node {i} lists {seen} members"))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    let page = format!("http://{}/", c.nodes[0].http_addr().await);
    let browser = browser();
    match &browser {
        Some(b) => {
            let dom = render(b, &page, "ring.png").await;
            let healthy = dom.matches("class=\"member healthy\"").count();
            assert_eq!(healthy, N, "the page draws {N} healthy members:\n{dom}");
            for p in &peers {
                let id = peerstore_proto::ring_id(&p.parse().unwrap()).to_hex();
                assert!(dom.contains(&id), "member {id} drawn");
            }
        }
        None => println!(
            "SKIPPED the browser part: no chromium, chromium-headless-shell or google-chrome on PATH \
             (scripts/setup.sh installs chromium when it can)"
        ),
    }

    // Kill one member: node 0 marks it unhealthy within a few stabilize periods.
    let victim = N - 1;
    let victim_peer = peers[victim].clone();
    c.nodes[victim].kill9();
    let killed = Instant::now();
    let r = wait_until(Duration::from_secs(20), || {
        let c = &c;
        let p = &victim_peer;
        async move {
            let v = ring_json(&c.nodes[0]).await;
            match health_of(&v, p).as_deref() {
                Some("unhealthy") => Ok(()),
                other => Err(format!("victim is {other:?}")),
            }
        }
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}"));
    let took = killed.elapsed();
    let v = ring_json(&c.nodes[0]).await;
    println!(
        "killed member marked unhealthy after {took:?} (stabilize {STABILIZE_MS} ms; unhealthy after {} ms without an answer)",
        v["unhealthy_after_ms"]
    );
    assert!(took < Duration::from_secs(15));
    for (i, p) in peers.iter().enumerate() {
        if i != victim {
            assert_eq!(health_of(&v, p).as_deref(), Some("healthy"), "{v:#}");
        }
    }
    let m = metrics(&c.nodes[0]).await;
    assert!(sum(&m, "peerstore_ring_members_unhealthy", &[]) >= 1.0);
    if let Some(b) = &browser {
        let dom = render(b, &page, "ring-one-dead.png").await;
        assert!(
            dom.contains("class=\"member unhealthy\""),
            "the page draws the dead member unhealthy:\n{dom}"
        );
        assert_eq!(dom.matches("class=\"member healthy\"").count(), N - 1);
    }
}

#[test]
fn the_parser_rejects_broken_text() {
    assert!(parse_prometheus("# TYPE a counter\na_total 1\n# EOF\n").is_ok());
    assert!(
        parse_prometheus("a_total 1\n# EOF\n").is_err(),
        "undeclared"
    );
    assert!(parse_prometheus("# TYPE a counter\na_total one\n# EOF\n").is_err());
    assert!(parse_prometheus("# TYPE a counter\na_total{x=\"1} 1\n# EOF\n").is_err());
    assert!(
        parse_prometheus("# TYPE a counter\na_total 1\n").is_err(),
        "no EOF"
    );
    let s = parse_prometheus("# TYPE a counter\na_total{y=\"2\",x=\"1\"} 3\n# EOF\n").unwrap();
    assert_eq!(s["a_total{x=\"1\",y=\"2\"}"], 3.0);
}
