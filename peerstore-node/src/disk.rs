//! What the node's data directory really occupies on disk, for `status` and `du`: the blocks
//! allocated to every file under it (so punched holes and sparse files count as what they
//! are), logs left out (`*.log`: not storage). Walked at most once a second.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a measurement is reused.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// Most directory entries one measurement looks at (a runaway tree is not walked forever).
const MAX_ENTRIES: usize = 1 << 20;
/// Deepest directory level walked.
const MAX_DEPTH: usize = 8;

/// Allocated bytes of the files under `dir`, logs left out.
#[must_use]
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut left = MAX_ENTRIES;
    walk(dir, 0, &mut left)
}

fn walk(dir: &Path, depth: usize, left: &mut usize) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in rd.flatten() {
        if *left == 0 {
            break;
        }
        *left -= 1;
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if md.is_dir() {
            if depth < MAX_DEPTH {
                total += walk(&e.path(), depth + 1, left);
            }
        } else if md.is_file() && e.path().extension().is_none_or(|x| x != "log") {
            total += md.blocks() * 512;
        }
    }
    total
}

/// The data directory's usage, measured at most once per [`FRESH_FOR`].
#[derive(Debug)]
pub struct DiskUsage {
    dir: PathBuf,
    last: Mutex<Option<(Instant, u64)>>,
}

impl DiskUsage {
    #[must_use]
    pub fn new(dir: PathBuf) -> DiskUsage {
        DiskUsage {
            dir,
            last: Mutex::new(None),
        }
    }

    /// Bytes the data directory occupies now (or a moment ago).
    pub async fn bytes(&self) -> u64 {
        if let Some((at, b)) = *peerstore_proto::lock(&self.last) {
            if at.elapsed() < FRESH_FOR {
                return b;
            }
        }
        let dir = self.dir.clone();
        let b = tokio::task::spawn_blocking(move || dir_bytes(&dir))
            .await
            .unwrap_or(0);
        *peerstore_proto::lock(&self.last) = Some((Instant::now(), b));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocated_bytes_of_files_not_logs() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(dir_bytes(d.path()), 0);
        std::fs::write(d.path().join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), vec![2u8; 5_000]).unwrap();
        std::fs::write(d.path().join("node.log"), vec![3u8; 100_000]).unwrap();
        let n = dir_bytes(d.path());
        // Allocated in file-system blocks: at least the bytes written, at most a block more
        // per file (4 KiB blocks here; some file systems use larger ones).
        assert!((15_000..=15_000 + 2 * 65_536).contains(&n), "{n}");
        // A sparse file counts what it allocates, not its length.
        let f = std::fs::File::create(d.path().join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        assert!(dir_bytes(d.path()) < n + 65_536);
        assert_eq!(dir_bytes(&d.path().join("missing")), 0);
    }
}
