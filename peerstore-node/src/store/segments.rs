//! Segment files: the append-only volumes that hold block payloads.
//!
//! A block is one record in a segment file `segments/<id>.seg` (ids count up, 8 hex digits):
//!
//! ```text
//! offset % 4096 == 0
//! +---------------------------------------------------------------------------------+
//! | magic "PSBLK\0v1" (8) | key (32) | len u32 LE (4) | 0 (4) | BLAKE3(first 48)[..16] |  64 bytes
//! +---------------------------------------------------------------------------------+
//! | payload: len bytes (hashes to key)                                              |
//! +---------------------------------------------------------------------------------+
//! | zero padding to the next multiple of 4096                                       |
//! ```
//!
//! Why segments and not one file per block: creating, writing, syncing and renaming a file and
//! syncing its directory costs 4-8 ms of kernel CPU per MiB on these machines (ext4 inode
//! allocation alone was 12% of a loaded node's CPU), appending to an open file and `fdatasync`
//! about 0.7 (docs/ARCHITECTURE.md). Concurrent puts share one `fdatasync` per segment.
//!
//! Records are 4 KiB aligned so that deleting one punches a hole over exactly its extent
//! (`fallocate(PUNCH_HOLE)`): the bytes leave the disk at once, no compaction needed. A segment
//! whose every record is gone is unlinked. The header makes a segment self-describing: the
//! index can be rebuilt from the segments alone ([`scan_file`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tracing::warn;

use super::error::{Result, StoreError};
use super::files::fsync_dir;
use peerstore_proto::BlockKey;

/// Records start at multiples of this, and a deleted record's extent is a whole number of it.
pub const ALIGN: u64 = 4096;
/// Bytes of a record header.
pub const HEADER_LEN: u64 = 64;
/// By default a segment stops taking new records once it reaches this size.
pub const SEGMENT_TARGET: u64 = 128 << 20;
const MAGIC: [u8; 8] = *b"PSBLK\0v1";

/// Where a record starts: segment id and the offset of its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Loc {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
}

impl Loc {
    pub(crate) fn payload(self) -> u64 {
        self.offset + HEADER_LEN
    }
}

/// The bytes a record of a `len`-byte payload takes in its segment.
pub(crate) fn extent(len: u64) -> u64 {
    (HEADER_LEN + len).div_ceil(ALIGN) * ALIGN
}

/// The header of a record of `len` payload bytes for `key` (public for tools and tests that
/// write segment files by hand).
pub fn record_header(key: &BlockKey, len: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..40].copy_from_slice(&key.0);
    h[40..44].copy_from_slice(&len.to_le_bytes());
    let check = blake3::hash(&h[..48]);
    h[48..].copy_from_slice(&check.as_bytes()[..16]);
    h
}

/// The key and payload length a header names, if it is a well-formed header.
pub(crate) fn parse_header(h: &[u8; HEADER_LEN as usize]) -> Option<(BlockKey, u32)> {
    if h[..8] != MAGIC || h[44..48] != [0; 4] || blake3::hash(&h[..48]).as_bytes()[..16] != h[48..]
    {
        return None;
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&h[8..40]);
    let len = u32::from_le_bytes([h[40], h[41], h[42], h[43]]);
    Some((BlockKey(key), len))
}

/// The file name of segment `id`.
pub(crate) fn file_name(id: u32) -> String {
    format!("{id:08x}.seg")
}

/// The id a segment file name stands for, if it is one.
pub(crate) fn parse_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 8 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// A record found by reading a segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRecord {
    /// The key its header names.
    pub key: BlockKey,
    /// The segment file.
    pub path: PathBuf,
    /// Offset of the payload in the file.
    pub offset: u64,
    /// Payload length.
    pub len: u64,
}

/// Finds the records with a well-formed header in `[from, to)` of a segment file, walking
/// from record to record and, past anything that is not a header, 4 KiB at a time. Payloads
/// are not checked against their keys. Read-only: safe on the files of a running node.
pub fn scan_file(file: &File, from: u64, to: u64) -> io::Result<Vec<(Loc, BlockKey, u64)>> {
    let mut out = Vec::new();
    let mut at = from.div_ceil(ALIGN) * ALIGN;
    let mut h = [0u8; HEADER_LEN as usize];
    while at + HEADER_LEN <= to {
        match next_data(file, at)? {
            Some(d) if d < to => {
                // Holes are never inside a record: data resumes at a record boundary or later.
                at = at.max(d / ALIGN * ALIGN);
            }
            _ => break,
        }
        if at + HEADER_LEN > to {
            break;
        }
        file.read_exact_at(&mut h, at)?;
        match parse_header(&h) {
            Some((key, len)) if at + HEADER_LEN + u64::from(len) <= to => {
                out.push((
                    Loc {
                        segment: 0,
                        offset: at,
                    },
                    key,
                    u64::from(len),
                ));
                at += extent(u64::from(len));
            }
            _ => at += ALIGN,
        }
    }
    Ok(out)
}

/// Every record with a well-formed header in the segment files under a store's root, in file
/// and offset order. Reading only, so tools and tests can look at a running node's disk.
pub fn records_on_disk(root: &Path) -> io::Result<Vec<DiskRecord>> {
    let dir = root.join("segments");
    let mut ids = Vec::new();
    for e in fs::read_dir(&dir)? {
        let e = e?;
        if let Some(id) = e.file_name().to_str().and_then(parse_name) {
            ids.push((id, e.path()));
        }
    }
    ids.sort();
    let mut out = Vec::new();
    for (_, path) in ids {
        let f = File::open(&path)?;
        let len = f.metadata()?.len();
        for (loc, key, n) in scan_file(&f, 0, len)? {
            out.push(DiskRecord {
                key,
                path: path.clone(),
                offset: loc.payload(),
                len: n,
            });
        }
    }
    Ok(out)
}

/// The first offset at or after `at` that holds data, `None` past the last data.
fn next_data(file: &File, at: u64) -> io::Result<Option<u64>> {
    #[cfg(target_os = "linux")]
    {
        match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
            Ok(d) => Ok(Some(d)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            // A filesystem without SEEK_DATA: treat everything as data.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(Some(at)),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        Ok(Some(at))
    }
}

/// The segment new records go to.
struct Active {
    id: u32,
    file: Arc<File>,
    end: u64,
}

/// The segment files of one store.
pub(crate) struct Segments {
    dir: PathBuf,
    target: u64,
    files: RwLock<BTreeMap<u32, Arc<File>>>,
    /// Records (held or being written) per segment; a segment that drops to 0 is unlinked.
    live: Mutex<BTreeMap<u32, u64>>,
    active: Mutex<Option<Active>>,
    next_id: Mutex<u32>,
    /// Segments written since their last `fdatasync`.
    dirty: Mutex<BTreeSet<u32>>,
    /// Cleared the first time the filesystem refuses to punch holes.
    can_punch: AtomicBool,
}

// Every critical section here is a few map operations: a poisoned lock is still consistent.
use peerstore_proto::lock;

impl Segments {
    /// Opens the segment files in `dir` (which must exist). Files whose names are not segment
    /// names are returned for the caller to deal with.
    pub(crate) fn open(dir: &Path, target: u64) -> Result<(Segments, Vec<PathBuf>)> {
        let mut files = BTreeMap::new();
        let mut strays = Vec::new();
        for e in fs::read_dir(dir).map_err(StoreError::io("list", dir))? {
            let e = e.map_err(StoreError::io("list", dir))?;
            let path = e.path();
            match e.file_name().to_str().and_then(parse_name) {
                Some(id) if path.is_file() => {
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&path)
                        .map_err(StoreError::io("open segment", &path))?;
                    files.insert(id, Arc::new(f));
                }
                _ => strays.push(path),
            }
        }
        let next = files.keys().next_back().map_or(1, |id| id + 1);
        Ok((
            Segments {
                dir: dir.to_path_buf(),
                target,
                files: RwLock::new(files),
                live: Mutex::new(BTreeMap::new()),
                active: Mutex::new(None),
                next_id: Mutex::new(next),
                dirty: Mutex::new(BTreeSet::new()),
                can_punch: AtomicBool::new(true),
            },
            strays,
        ))
    }

    pub(crate) fn path(&self, id: u32) -> PathBuf {
        self.dir.join(file_name(id))
    }

    pub(crate) fn ids(&self) -> Vec<u32> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    pub(crate) fn file(&self, id: u32) -> Option<Arc<File>> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Number of segment files.
    pub(crate) fn count(&self) -> usize {
        self.files.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Counts a record of segment `id` as held (while opening).
    pub(crate) fn add_live(&self, id: u32) {
        *lock(&self.live).entry(id).or_default() += 1;
    }

    /// Appends a record and returns where it went. The bytes are written but not yet durable:
    /// [`Segments::sync_dirty`] makes them so. On error nothing is left counted.
    pub(crate) fn append(&self, key: &BlockKey, bytes: &[u8]) -> Result<Loc> {
        let len = u32::try_from(bytes.len()).map_err(|_| {
            StoreError::InvalidArgument(format!(
                "block of {} bytes is over the 4 GiB a record holds",
                bytes.len()
            ))
        })?;
        let size = extent(bytes.len() as u64);
        let mut rolled_from = None;
        let (id, file, offset) = {
            let mut active = lock(&self.active);
            let full = active
                .as_ref()
                .is_none_or(|a| a.end > 0 && a.end + size > self.target);
            if full {
                rolled_from = active.as_ref().map(|a| a.id);
                *active = Some(self.create_segment()?);
            }
            let a = active
                .as_mut()
                .ok_or_else(|| StoreError::Db("no active segment after creating one".into()))?;
            let offset = a.end;
            a.end += size;
            // Counted while still under the active lock, so a concurrent release of the
            // segment's last old record cannot unlink it under this write.
            *lock(&self.live).entry(a.id).or_default() += 1;
            (a.id, a.file.clone(), offset)
        };
        if let Some(old) = rolled_from {
            // Its records may all have gone while it was taking new ones.
            if let Err(e) = self.unlink_if_unused(old) {
                warn!(error = %e, "cannot remove an empty segment; opening will retry");
            }
        }
        let loc = Loc {
            segment: id,
            offset,
        };
        let written = file
            .write_all_at(&record_header(key, len), offset)
            .and_then(|()| file.write_all_at(bytes, loc.payload()));
        match written {
            Ok(()) => {
                lock(&self.dirty).insert(id);
                Ok(loc)
            }
            Err(e) => {
                let err = StoreError::io("write segment", self.path(id))(e);
                let _ = self.release(loc, bytes.len() as u64);
                Err(err)
            }
        }
    }

    fn create_segment(&self) -> Result<Active> {
        let mut next = lock(&self.next_id);
        let id = *next;
        let path = self.path(id);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StoreError::io("create segment", &path))?;
        // The name must be durable before any record in it is acknowledged.
        fsync_dir(&self.dir)?;
        *next = id
            .checked_add(1)
            .ok_or_else(|| StoreError::Db("segment ids exhausted".into()))?;
        let file = Arc::new(f);
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, file.clone());
        Ok(Active { id, file, end: 0 })
    }

    /// Makes every record appended so far durable (one `fdatasync` per written segment).
    pub(crate) fn sync_dirty(&self) -> Result<()> {
        let ids = std::mem::take(&mut *lock(&self.dirty));
        for id in &ids {
            if let Some(f) = self.file(*id) {
                if let Err(e) = f.sync_data() {
                    // Whoever syncs next must try these again.
                    lock(&self.dirty).extend(ids.iter().copied());
                    return Err(StoreError::io("fsync segment", self.path(*id))(e));
                }
                // Durable now: its pages leave the page cache (a hint; errors do not matter).
                // A node's blocks are rarely read back soon, a backup no longer pushes the
                // machine's working set out of the cache, and the next writes reuse those
                // pages instead of touching fresh memory. On this project's 2-core VM, B
                // (256 MiB) backups took 2.5-3.0 s (plain) and 4.8-5.0 s (entangled) instead
                // of 3.6 and 6.3, and restores 1.2-1.6 s instead of 2.2 (session 19,
                // `bench-alt --datasets B`), as Borg does for its segment files.
                let _ = rustix::fs::fadvise(&*f, 0, None, rustix::fs::Advice::DontNeed);
            }
        }
        Ok(())
    }

    /// Reads the payload of the `len`-byte record at `loc`. `Ok(None)` if the segment is gone
    /// or too short to hold it.
    pub(crate) fn read(&self, loc: Loc, len: u64) -> Result<Option<Vec<u8>>> {
        let Some(f) = self.file(loc.segment) else {
            return Ok(None);
        };
        let n = usize::try_from(len).map_err(|_| StoreError::BadIndex("length".into()))?;
        let mut buf = vec![0u8; n];
        match f.read_exact_at(&mut buf, loc.payload()) {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(StoreError::io("read segment", self.path(loc.segment))(e)),
        }
    }

    /// The key and length the header at `loc` names, if it is well formed.
    pub(crate) fn read_header(&self, loc: Loc) -> Result<Option<(BlockKey, u32)>> {
        let Some(f) = self.file(loc.segment) else {
            return Ok(None);
        };
        let mut h = [0u8; HEADER_LEN as usize];
        match f.read_exact_at(&mut h, loc.offset) {
            Ok(()) => Ok(parse_header(&h)),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(StoreError::io("read segment", self.path(loc.segment))(e)),
        }
    }

    /// The length of a segment file.
    pub(crate) fn len(&self, id: u32) -> Result<u64> {
        match self.file(id) {
            Some(f) => Ok(f
                .metadata()
                .map_err(StoreError::io("stat", self.path(id)))?
                .len()),
            None => Ok(0),
        }
    }

    /// Removes a record's bytes from the disk and stops counting it; unlinks its segment when
    /// that was its last record (unless new records still go there).
    pub(crate) fn release(&self, loc: Loc, len: u64) -> Result<()> {
        self.punch(loc.segment, loc.offset, extent(len))?;
        self.forget(loc)
    }

    /// Stops counting the (already punched) record at `loc`; unlinks its segment when that was
    /// its last record (unless new records still go there).
    pub(crate) fn forget(&self, loc: Loc) -> Result<()> {
        let empty = {
            let mut live = lock(&self.live);
            let n = live.entry(loc.segment).or_default();
            *n = n.saturating_sub(1);
            *n == 0
        };
        if empty {
            self.unlink_if_unused(loc.segment)?;
        }
        Ok(())
    }

    /// Deallocates `[offset, offset + len)` of segment `id`; where the filesystem cannot punch
    /// holes, overwrites it with zeros (the bytes are gone, the space stays until the whole
    /// segment is).
    pub(crate) fn punch(&self, id: u32, offset: u64, len: u64) -> Result<()> {
        let Some(f) = self.file(id) else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        let path = || self.path(id);
        #[cfg(target_os = "linux")]
        if self.can_punch.load(Ordering::Relaxed) {
            use rustix::fs::FallocateFlags;
            match rustix::fs::fallocate(
                &*f,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                offset,
                len,
            ) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::OPNOTSUPP) => {
                    warn!(
                        dir = ?self.dir,
                        "filesystem cannot punch holes; deleted blocks are zeroed instead"
                    );
                    self.can_punch.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(StoreError::io("punch hole", path())(e.into())),
            }
        }
        // Zero only what exists: writing past the end would grow the file.
        let end = f.metadata().map_err(StoreError::io("stat", path()))?.len();
        let stop = (offset + len).min(end);
        let zeros = vec![0u8; ALIGN as usize * 16];
        let mut at = offset;
        while at < stop {
            let n = (stop - at).min(zeros.len() as u64) as usize;
            f.write_all_at(&zeros[..n], at)
                .map_err(StoreError::io("zero", path()))?;
            at += n as u64;
        }
        Ok(())
    }

    /// Unlinks segment `id` if it holds no records and is not the one new records go to.
    pub(crate) fn unlink_if_unused(&self, id: u32) -> Result<()> {
        let active = lock(&self.active);
        if active.as_ref().is_some_and(|a| a.id == id) {
            return Ok(());
        }
        {
            let mut live = lock(&self.live);
            if live.get(&id).copied().unwrap_or(0) > 0 {
                return Ok(());
            }
            live.remove(&id);
        }
        drop(active);
        let removed = self
            .files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if removed.is_some() {
            lock(&self.dirty).remove(&id);
            let path = self.path(id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove segment", path)(e)),
            }
            // Not synced: a segment that comes back after a crash holds nothing indexed, and
            // opening sweeps it away again.
        }
        Ok(())
    }

    /// Bytes the segment files take on disk (allocated blocks, so punched holes do not count).
    pub(crate) fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let files = self.files.read().unwrap_or_else(|p| p.into_inner());
        files
            .values()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_damage() {
        let key = BlockKey::of(b"x");
        let h = record_header(&key, 12345);
        assert_eq!(parse_header(&h), Some((key, 12345)));
        for i in 0..h.len() {
            let mut bad = h;
            bad[i] ^= 1;
            assert_eq!(parse_header(&bad), None, "flip at byte {i} accepted");
        }
        assert_eq!(parse_header(&[0u8; 64]), None);
    }

    #[test]
    fn names_and_extents() {
        assert_eq!(file_name(0x1f), "0000001f.seg");
        assert_eq!(parse_name("0000001f.seg"), Some(0x1f));
        for bad in [
            "0000001F.seg",
            "1f.seg",
            "0000001f.se",
            "0000001f.seg.tmp",
            "zzzzzzzz.seg",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
        assert_eq!(extent(0), ALIGN);
        assert_eq!(extent(ALIGN - HEADER_LEN), ALIGN);
        assert_eq!(extent(ALIGN - HEADER_LEN + 1), 2 * ALIGN);
        assert_eq!(extent(256 << 10), (256 << 10) + ALIGN);
    }

    #[test]
    fn append_read_release_and_scan() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("segments");
        fs::create_dir(&dir).unwrap();
        let (segs, strays) = Segments::open(&dir, SEGMENT_TARGET).unwrap();
        assert!(strays.is_empty());
        let blocks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 5000 * usize::from(i)]).collect();
        let mut locs = Vec::new();
        for b in &blocks {
            locs.push(segs.append(&BlockKey::of(b), b).unwrap());
        }
        segs.sync_dirty().unwrap();
        for (b, l) in blocks.iter().zip(&locs) {
            assert_eq!(l.offset % ALIGN, 0);
            assert_eq!(segs.read(*l, b.len() as u64).unwrap().as_ref(), Some(b));
        }
        let on_disk = records_on_disk(root.path()).unwrap();
        assert_eq!(on_disk.len(), 5);
        assert_eq!(on_disk[3].offset, locs[3].payload());
        let f = segs.file(locs[0].segment).unwrap();
        let len = segs.len(locs[0].segment).unwrap();
        let found: Vec<BlockKey> = scan_file(&f, 0, len)
            .unwrap()
            .into_iter()
            .map(|r| r.1)
            .collect();
        assert_eq!(
            found,
            blocks.iter().map(|b| BlockKey::of(b)).collect::<Vec<_>>()
        );
        // Release the middle one: its bytes read as zeros and the scan skips it.
        segs.release(locs[2], blocks[2].len() as u64).unwrap();
        let found: Vec<BlockKey> = scan_file(&f, 0, len)
            .unwrap()
            .into_iter()
            .map(|r| r.1)
            .collect();
        assert_eq!(found.len(), 4);
        assert!(!found.contains(&BlockKey::of(&blocks[2])));
        let zeros = segs.read(locs[2], blocks[2].len() as u64).unwrap().unwrap();
        assert!(zeros.iter().all(|b| *b == 0));
    }
}
