//! Progress display on stderr. On a terminal: an indicatif bar with bytes done of the total,
//! files done of the total, rate and ETA. Otherwise (stderr piped, or `--json`): no bar, and
//! one summary line when the command succeeds, e.g.
//! `backup: 1,234 files, 56.7 MiB in 3.2 s (17.7 MiB/s)`. [`Progress::hidden`] prints nothing.
//!
//! Totals may grow while the work runs (a backup learns them as its scan finds files); the bar
//! shows done of the total known so far.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar: "⠙ backup [=====>   ] 12.00 MiB/40.00 MiB, 3/12 files, 5.00 MiB/s, ETA 6s [2s]".
const BAR_TEMPLATE: &str = "{spinner} {prefix} [{bar:25}] {bytes}/{total_bytes}, {msg}, \
                            {binary_bytes_per_sec}, ETA {eta} [{elapsed}]";

/// Counts bytes and files done and their totals; draws a bar only on a terminal.
pub struct Progress {
    bar: ProgressBar,
    /// Print the summary line at [`Progress::finish`] (no bar drawn, not hidden).
    summary: bool,
    verb: &'static str,
    started: Instant,
    bytes: AtomicU64,
    total_bytes: AtomicU64,
    files: AtomicU64,
    total_files: AtomicU64,
}

/// Where a file's accounting started: see [`Progress::start_file`].
#[derive(Debug, Clone, Copy)]
pub struct FileTally {
    announced: u64,
    bytes: u64,
    files: u64,
}

impl Progress {
    /// When `enabled`: a bar on stderr if it is a terminal, else one summary line at the end.
    /// Not `enabled`: nothing at all (as [`Progress::hidden`]).
    #[must_use]
    pub fn new(verb: &'static str, enabled: bool) -> Progress {
        if enabled {
            Progress::reporting(verb, true)
        } else {
            Progress::build(verb, ProgressBar::hidden(), false)
        }
    }

    /// Reports on stderr: a bar when `bar` and stderr is a terminal, otherwise one summary
    /// line when the command succeeds (see [`Progress::finish`]).
    #[must_use]
    pub fn reporting(verb: &'static str, bar: bool) -> Progress {
        if bar && std::io::stderr().is_terminal() {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(BAR_TEMPLATE)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            Progress::build(verb, b, false)
        } else {
            Progress::build(verb, ProgressBar::hidden(), true)
        }
    }

    /// A progress that never prints (sync passes, tests).
    #[must_use]
    pub fn hidden() -> Progress {
        Progress::new("", false)
    }

    fn build(verb: &'static str, bar: ProgressBar, summary: bool) -> Progress {
        bar.set_prefix(verb);
        let p = Progress {
            bar,
            summary,
            verb,
            started: Instant::now(),
            bytes: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            total_files: AtomicU64::new(0),
        };
        p.show_files();
        p
    }

    /// More work is known: `bytes` in `files` files.
    pub fn add_total(&self, bytes: u64, files: u64) {
        self.total_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.total_files.fetch_add(files, Ordering::Relaxed);
        self.bar.inc_length(bytes);
        if files > 0 {
            self.show_files();
        }
    }

    /// Less work than announced: `bytes` in `files` files will not be done.
    fn drop_total(&self, bytes: u64, files: u64) {
        self.total_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.total_files.fetch_sub(files, Ordering::Relaxed);
        self.bar.dec_length(bytes);
        if files > 0 {
            self.show_files();
        }
    }

    /// `n` bytes done (read, written, or found unchanged).
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.bar.inc(n);
    }

    pub fn file_done(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.show_files();
    }

    /// Announces one file of `size` bytes to a single producer (the backup scan) and notes
    /// where its accounting starts; [`Progress::end_file`] then makes the totals match what was
    /// done for it (a re-read counts twice, a file that vanished or was skipped not at all).
    pub fn start_file(&self, size: u64) -> FileTally {
        self.add_total(size, 1);
        FileTally {
            announced: size,
            bytes: self.bytes.load(Ordering::Relaxed),
            files: self.files.load(Ordering::Relaxed),
        }
    }

    /// See [`Progress::start_file`].
    pub fn end_file(&self, t: FileTally) {
        let counted = self.bytes.load(Ordering::Relaxed).saturating_sub(t.bytes);
        let finished = self.files.load(Ordering::Relaxed) > t.files;
        if counted > t.announced {
            self.add_total(counted - t.announced, 0);
        }
        let unused = t.announced.saturating_sub(counted);
        if unused > 0 || !finished {
            self.drop_total(unused, u64::from(!finished));
        }
    }

    /// Bytes done so far.
    #[must_use]
    pub fn bytes_done(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Files done so far.
    #[must_use]
    pub fn files_done(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    fn show_files(&self) {
        if !self.bar.is_hidden() {
            self.bar.set_message(format!(
                "{}/{} files",
                group(self.files.load(Ordering::Relaxed)),
                group(self.total_files.load(Ordering::Relaxed))
            ));
        }
    }

    /// Ends the display: clears the bar; if no bar was drawn (and not hidden) and the command
    /// `succeeded`, prints the summary line on stderr.
    pub fn finish(&self, succeeded: bool) {
        self.bar.finish_and_clear();
        if self.summary && succeeded {
            eprintln!(
                "{}",
                summary_line(
                    self.verb,
                    self.files_done(),
                    self.bytes_done(),
                    self.started.elapsed()
                )
            );
        }
    }
}

/// The line printed when no bar was drawn:
/// `backup: 1,234 files, 56.7 MiB in 3.2 s (17.7 MiB/s)`. The rate is left out when no time
/// was measured.
#[must_use]
pub fn summary_line(verb: &str, files: u64, bytes: u64, took: Duration) -> String {
    let secs = took.as_secs_f64();
    let noun = if files == 1 { "file" } else { "files" };
    let mut s = format!(
        "{verb}: {} {noun}, {} in {secs:.1} s",
        group(files),
        human(bytes)
    );
    if secs > 0.0 {
        s.push_str(&format!(" ({}/s)", human((bytes as f64 / secs) as u64)));
    }
    s
}

/// A count with thousands separators: "1,234,567".
#[must_use]
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_template_parses() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(1_234), "1,234");
        assert_eq!(group(123_456), "123,456");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(64 << 20), "64.0 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn summary_with_rate() {
        let bytes = (56.7 * 1024.0 * 1024.0) as u64;
        assert_eq!(
            summary_line("backup", 1_234, bytes, Duration::from_millis(3_200)),
            "backup: 1,234 files, 56.7 MiB in 3.2 s (17.7 MiB/s)"
        );
        assert_eq!(
            summary_line("restore", 2, 2048, Duration::from_secs(2)),
            "restore: 2 files, 2.0 KiB in 2.0 s (1.0 KiB/s)"
        );
    }

    #[test]
    fn summary_counts_one_file_and_none() {
        assert_eq!(
            summary_line("getfile", 1, 5, Duration::from_secs(1)),
            "getfile: 1 file, 5 B in 1.0 s (5 B/s)"
        );
        assert_eq!(
            summary_line("backup", 0, 0, Duration::from_secs(1)),
            "backup: 0 files, 0 B in 1.0 s (0 B/s)"
        );
    }

    #[test]
    fn summary_survives_zero_and_tiny_durations() {
        assert_eq!(
            summary_line("backup", 3, 10 << 20, Duration::ZERO),
            "backup: 3 files, 10.0 MiB in 0.0 s"
        );
        // A nanosecond: a huge but finite rate, no panic.
        let s = summary_line("restore", 1, u64::MAX, Duration::from_nanos(1));
        assert!(
            s.starts_with("restore: 1 file, 16777216.0 TiB in 0.0 s ("),
            "{s}"
        );
        assert!(s.ends_with(" TiB/s)"), "{s}");
    }

    #[test]
    fn hidden_counts_but_never_reports() {
        let p = Progress::hidden();
        assert!(!p.summary);
        p.add_total(100, 2);
        p.add_bytes(100);
        p.file_done();
        p.file_done();
        assert_eq!((p.bytes_done(), p.files_done()), (100, 2));
        p.finish(true);
    }

    #[test]
    fn piped_reports_a_summary() {
        // Summary mode is chosen whenever no bar is drawn.
        let p = Progress::reporting("backup", false);
        assert!(p.summary && p.bar.is_hidden());
        assert!(!Progress::new("backup", false).summary);
    }

    fn totals(p: &Progress) -> (u64, u64) {
        (
            p.total_bytes.load(Ordering::Relaxed),
            p.total_files.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn file_tally_matches_totals_to_the_work_done() {
        let p = Progress::hidden();
        // Read whole.
        let t = p.start_file(100);
        p.add_bytes(100);
        p.file_done();
        p.end_file(t);
        assert_eq!(totals(&p), (100, 1));
        // Read twice (changed during the first read): both reads count.
        let t = p.start_file(50);
        p.add_bytes(30);
        p.add_bytes(50);
        p.file_done();
        p.end_file(t);
        assert_eq!(totals(&p), (180, 2));
        // Vanished half way: neither its bytes nor the file stay in the totals.
        let t = p.start_file(40);
        p.add_bytes(10);
        p.end_file(t);
        assert_eq!(totals(&p), (190, 2));
        // Unchanged: counted done without reading.
        let t = p.start_file(7);
        p.add_bytes(7);
        p.file_done();
        p.end_file(t);
        assert_eq!(totals(&p), (197, 3));
        assert_eq!((p.bytes_done(), p.files_done()), (197, 3));
    }

    /// Done equals the total at the end of a backup (read, then unchanged, then partly
    /// changed) and of a restore, so the bar reaches 100%.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backup_and_restore_end_at_their_totals() {
        use crate::backup::{backup, BackupOptions};
        use crate::cache::KnownBlocks;
        use crate::repo::Repo;
        use crate::restore::{restore_tree_with, RestoreOptions};
        use crate::store::MemStore;
        use rand::{RngCore, SeedableRng};
        use std::sync::Arc;

        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut total = 0u64;
        for (i, len) in [0usize, 1, 5000, 70_000, 3 << 20].into_iter().enumerate() {
            let mut v = vec![0u8; len];
            rng.fill_bytes(&mut v);
            let dir = if i % 2 == 0 {
                src.join("a/b")
            } else {
                src.clone()
            };
            std::fs::write(dir.join(format!("f{i}")), &v).unwrap();
            total += len as u64;
        }
        std::os::unix::fs::symlink("f1", src.join("link")).unwrap();
        let store = MemStore::new();
        let mut seed = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let repo = Repo::new(
            Arc::new(store),
            Arc::new(crypto::Identity::generate(&mut seed)),
        );
        let known = Arc::new(KnownBlocks::in_memory());
        let opts = BackupOptions::default();
        // A file read again (it changed during its read: a write within a timestamp grain
        // counts as such) adds its bytes once more, to done and to the total alike.
        let ends = |p: &Progress, bytes: u64, files: u64| {
            assert!(p.bytes_done() >= bytes, "{} < {bytes}", p.bytes_done());
            assert_eq!(p.files_done(), files);
            assert_eq!(totals(p), (p.bytes_done(), files));
        };

        let p = Arc::new(Progress::hidden());
        let (_, m, _) = backup(&repo, known.clone(), &src, None, &opts, &p)
            .await
            .unwrap();
        ends(&p, total, 5);
        // Unchanged files count as done without being read.
        let p = Arc::new(Progress::hidden());
        let (_, m, _) = backup(&repo, known.clone(), &src, Some(&m), &opts, &p)
            .await
            .unwrap();
        ends(&p, total, 5);
        // One file rewritten, one removed.
        std::fs::write(src.join("f1"), b"xy").unwrap();
        std::fs::remove_file(src.join("f3")).unwrap();
        let total = total - 1 + 2 - 70_000;
        let p = Arc::new(Progress::hidden());
        let (_, m, _) = backup(&repo, known, &src, Some(&m), &opts, &p)
            .await
            .unwrap();
        ends(&p, total, 4);

        let p = Arc::new(Progress::hidden());
        let opts = RestoreOptions { as_root: false };
        restore_tree_with(&repo, &m, &tmp.path().join("dest"), &p, &opts)
            .await
            .unwrap();
        assert_eq!(totals(&p), (total, 4));
        assert_eq!((p.bytes_done(), p.files_done()), (total, 4));
    }
}
