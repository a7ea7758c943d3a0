//! The HTTP gateway's whole documents (issue 15, "HTTP gateway": `PUT /doc/<name>`,
//! `GET /doc/<name>` with ranges, `GET /doc/<name>/__meta`, and the 400/404/409/413 answers),
//! driven with curl against real nodes started with `--http 127.0.0.1:0`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use peerstore_testkit::*;
use rand::{RngCore, SeedableRng};

/// Runs curl with `args` (plus `-sS`, the status code written last on stdout, and the body
/// to `out`); returns the status and the headers (`-D`).
fn curl(args: &[&str], out: &Path) -> (u16, String) {
    let headers = out.with_extension("headers");
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o"])
        .arg(out)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("run curl (Debian package curl)");
    assert!(
        o.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let code = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    (
        code,
        std::fs::read_to_string(&headers)
            .unwrap_or_default()
            .to_ascii_lowercase(),
    )
}

/// Whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &Path, needle: &[u8]) -> Option<String> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(hit) = any_file_contains(&path, needle) {
                return Some(hit);
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return Some(path.display().to_string());
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_stored_named_and_served_by_the_gateway() {
    let c = Cluster::start(4, &["--http", "127.0.0.1:0"]).await;
    c.wait_ideal(Duration::from_secs(30)).await.expect("ring");
    let addr = c.nodes[0].http_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let url = |p: &str| format!("http://{addr}{p}");

    // A 1 MiB body: random bytes with a marker that must never reach a disk in the clear.
    let marker = b"PEERSTORE-GATEWAY-PLAINTEXT-MARKER-0123456789abcdef";
    let mut body = vec![0u8; 1 << 20];
    rand::rngs::StdRng::seed_from_u64(15).fill_bytes(&mut body);
    body[4096..4096 + marker.len()].copy_from_slice(marker);
    let src = dir.path().join("report.pdf");
    std::fs::write(&src, &body).unwrap();
    let at = format!("@{}", src.display());
    let out = dir.path().join("out");

    let (code, _) = curl(
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/pdf",
            "--data-binary",
            &at,
            &url("/doc/report.pdf"),
        ],
        &out,
    );
    assert_eq!(code, 201, "{}", std::fs::read_to_string(&out).unwrap());
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(stored["size"], 1 << 20);

    // Read back whole, byte-identical, with its type and length.
    let (code, headers) = curl(&[&url("/doc/report.pdf")], &out);
    assert_eq!(code, 200);
    assert!(std::fs::read(&out).unwrap() == body, "the body differs");
    assert!(
        headers.contains("content-type: application/pdf"),
        "{headers}"
    );
    assert!(headers.contains("content-length: 1048576"), "{headers}");
    assert!(headers.contains("accept-ranges: bytes"), "{headers}");

    // A range, an open-ended range, a suffix, and one past the end.
    let (code, headers) = curl(&["-r", "100-199", &url("/doc/report.pdf")], &out);
    assert_eq!(code, 206);
    assert_eq!(std::fs::read(&out).unwrap(), &body[100..200]);
    assert!(
        headers.contains("content-range: bytes 100-199/1048576"),
        "{headers}"
    );
    let (code, _) = curl(&["-r", "1048000-", &url("/doc/report.pdf")], &out);
    assert_eq!(code, 206);
    assert_eq!(std::fs::read(&out).unwrap(), &body[1048000..]);
    let (code, _) = curl(&["-r", "-10", &url("/doc/report.pdf")], &out);
    assert_eq!(code, 206);
    assert_eq!(std::fs::read(&out).unwrap(), &body[body.len() - 10..]);
    let (code, _) = curl(&["-r", "2000000-", &url("/doc/report.pdf")], &out);
    assert_eq!(code, 416);

    // Metadata.
    let (code, _) = curl(&[&url("/doc/report.pdf/__meta")], &out);
    assert_eq!(code, 200);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(meta["size"], 1 << 20);
    assert_eq!(meta["content_type"], "application/pdf");
    assert_eq!(meta["blake3"], blake3::hash(&body).to_hex().as_str());
    assert_eq!(meta["key"], stored["key"]);

    // Names are write-once: a second PUT is a conflict, and the first body stays.
    std::fs::write(dir.path().join("other"), b"other bytes").unwrap();
    let other = format!("@{}", dir.path().join("other").display());
    let (code, _) = curl(
        &[
            "-X",
            "PUT",
            "--data-binary",
            &other,
            &url("/doc/report.pdf"),
        ],
        &out,
    );
    assert_eq!(code, 409, "{}", std::fs::read_to_string(&out).unwrap());
    let (code, _) = curl(&[&url("/doc/report.pdf")], &out);
    assert_eq!(code, 200);
    assert!(std::fs::read(&out).unwrap() == body);

    // Bad names, missing names, bodies over the limit.
    let (code, _) = curl(&[&url("/doc/a%20b")], &out);
    assert_eq!(code, 400);
    let (code, _) = curl(
        &["-X", "PUT", "--data-binary", &other, &url("/doc/a%2Fb")],
        &out,
    );
    assert_eq!(code, 400);
    let (code, _) = curl(&[&url("/doc/nothing-here")], &out);
    assert_eq!(code, 404);
    let (code, _) = curl(&[&url("/doc/nothing-here/__meta")], &out);
    assert_eq!(code, 404);
    let big = dir.path().join("big");
    std::fs::write(&big, vec![7u8; peerstore_node::gateway::MAX_DOC_BODY + 1]).unwrap();
    let (code, _) = curl(
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", big.display()),
            &url("/doc/big"),
        ],
        &out,
    );
    assert_eq!(code, 413);
    let (code, _) = curl(&[&url("/doc/big")], &out);
    assert_eq!(code, 404, "nothing was stored under the refused name");
    // A small document at the limit's other end, and an empty one.
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    let empty = format!("@{}", dir.path().join("empty").display());
    let (code, _) = curl(
        &["-X", "PUT", "--data-binary", &empty, &url("/doc/empty")],
        &out,
    );
    assert_eq!(code, 201);
    let (code, _) = curl(&[&url("/doc/empty")], &out);
    assert_eq!(code, 200);
    assert!(std::fs::read(&out).unwrap().is_empty());

    // Two PUTs of one name at the same time (names belong to a node's gateway identity, so
    // both go to node 0's gateway): exactly one wins.
    let mut racers = Vec::new();
    for i in 0..2u8 {
        let f = dir.path().join(format!("racer{i}"));
        std::fs::write(&f, vec![i; 1000 + i as usize]).unwrap();
        let (u, o) = (url("/doc/raced"), dir.path().join(format!("race-out{i}")));
        racers.push(std::thread::spawn(move || {
            let at = format!("@{}", f.display());
            curl(&["-X", "PUT", "--data-binary", &at, &u], &o).0
        }));
    }
    let mut codes: Vec<u16> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![201, 409],
        "one PUT of a name wins, the other is told"
    );
    let (code, _) = curl(&[&url("/doc/raced")], &out);
    assert_eq!(code, 200);
    let got = std::fs::read(&out).unwrap();
    assert!(
        got == vec![0u8; 1000] || got == vec![1u8; 1001],
        "the name holds one racer's body whole"
    );

    // The node keeps serving, and its other pages still answer.
    let (code, _) = curl(&[&url("/ring.json")], &out);
    assert_eq!(code, 200);
    let (code, _) = curl(&["-X", "DELETE", &url("/doc/report.pdf")], &out);
    assert_eq!(code, 405);

    // No node's disk holds the body in the clear.
    for n in &c.nodes {
        if let Some(file) = any_file_contains(&n.data_dir, marker) {
            panic!("plaintext of a gateway document on a node's disk: {file}");
        }
    }
}
