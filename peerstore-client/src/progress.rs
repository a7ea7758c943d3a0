//! Progress display: an indicatif bar with bytes, files and rate when stderr is a terminal,
//! nothing otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts bytes and files; draws only on a terminal.
pub struct Progress {
    bar: ProgressBar,
    files: AtomicU64,
    verb: &'static str,
}

impl Progress {
    /// A bar on stderr when stderr is a terminal and `enabled`; hidden otherwise.
    #[must_use]
    pub fn new(verb: &'static str, enabled: bool) -> Progress {
        let bar = if enabled && std::io::stderr().is_terminal() {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} {bytes} ({binary_bytes_per_sec}) {msg} [{elapsed}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        } else {
            ProgressBar::hidden()
        };
        bar.set_prefix(verb);
        Progress {
            bar,
            files: AtomicU64::new(0),
            verb,
        }
    }

    /// A progress that never draws.
    #[must_use]
    pub fn hidden() -> Progress {
        Progress::new("", false)
    }

    pub fn add_bytes(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn file_done(&self) {
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.bar.is_hidden() {
            self.bar.set_message(format!("{n} files {}", self.verb));
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A byte count for people: "5 B", "1.5 KiB", "64.0 MiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
