//! Headless Chromium for the tests that open the node's pages (the Debian package
//! `chromium`, installed by `scripts/setup.sh`); tests skip that part with a message when none
//! is installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A headless Chromium on PATH, if any.
pub fn browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for name in [
        "chromium",
        "chromium-headless-shell",
        "chromium-browser",
        "google-chrome",
        "headless_shell",
    ] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// `target/test-artifacts`, beside the test executable's profile directory.
pub fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// Renders `url` in headless `browser` after 5 s of virtual time: saves a screenshot as
/// `target/test-artifacts/<shot>` and returns the DOM.
pub async fn render(browser: &Path, url: &str, shot: &str) -> String {
    let profile = tempfile::tempdir().expect("tempdir");
    let png = artifacts().join(shot);
    let common = |cmd: &mut Command| {
        cmd.arg("--headless")
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .arg("--no-first-run")
            .arg("--hide-scrollbars")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--window-size=1280,640")
            .arg("--virtual-time-budget=5000");
    };
    let mut dump = Command::new(browser);
    common(&mut dump);
    dump.arg("--dump-dom").arg(url);
    let dom = run(dump).await;
    let mut snap = Command::new(browser);
    common(&mut snap);
    snap.arg(format!("--screenshot={}", png.display())).arg(url);
    run(snap).await;
    assert!(png.exists(), "no screenshot at {}", png.display());
    println!("screenshot of the page: {}", png.display());
    dom
}

/// Runs a browser command for at most 60 s and returns its standard output.
pub async fn run(mut cmd: Command) -> String {
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the browser");
        let mut out = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            s
        });
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the browser did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        reader.join().unwrap_or_default()
    })
    .await
    .expect("browser task")
}
