//! Reading pack files during a restore: a small cache of whole packs, so that the many small
//! files of one pack (and the consecutive chunks of a large file) fetch it once, with a bound on
//! both the packs kept and the packs being fetched: memory does not grow with the file or tree
//! size.
//!
//! A pack is a concatenation of sealed chunks, stored as one ring document (see `backup`); the
//! manifest names each chunk's pack, offset and sealed length. Nothing in a pack is trusted:
//! where the ring keys documents by their hash the whole pack must hash to its key
//! (`Repo::get_required`), and every slice is opened with the chunk's AEAD and its id checked.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;

use crate::error::ClientError;
use crate::model::ChunkRef;
use crate::repo::Repo;

/// Whole packs kept in memory by a restore (4 MiB each at most).
pub const PACK_CACHE_PACKS: usize = 8;
/// Packs fetched at once by a restore.
pub const PACKS_IN_FLIGHT: usize = 8;

type PackResult = Result<Arc<Vec<u8>>, Arc<ClientError>>;
type PackFuture = Shared<BoxFuture<'static, PackResult>>;

/// A bounded, least-recently-used cache of packs that also merges concurrent fetches of the
/// same pack.
pub struct PackCache {
    repo: Repo,
    capacity: usize,
    fetch_permits: Arc<Semaphore>,
    state: Mutex<CacheState>,
    fetched: Arc<AtomicU64>,
}

#[derive(Default)]
struct CacheState {
    slots: HashMap<[u8; 32], PackFuture>,
    /// Keys in `slots`, least recently used first.
    order: VecDeque<[u8; 32]>,
}

impl PackCache {
    /// A cache of at most `capacity` packs with at most `in_flight` fetches at once.
    #[must_use]
    pub fn new(repo: &Repo, capacity: usize, in_flight: usize) -> PackCache {
        PackCache {
            repo: repo.clone(),
            capacity: capacity.max(1),
            fetch_permits: Arc::new(Semaphore::new(in_flight.max(1))),
            state: Mutex::new(CacheState::default()),
            fetched: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The default bounds ([`PACK_CACHE_PACKS`], [`PACKS_IN_FLIGHT`]).
    #[must_use]
    pub fn with_defaults(repo: &Repo) -> PackCache {
        PackCache::new(repo, PACK_CACHE_PACKS, PACKS_IN_FLIGHT)
    }

    /// Packs fetched from the ring so far.
    #[must_use]
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        peerstore_proto::lock(&self.state)
    }

    /// The pack under `key`, from the cache or the ring.
    pub async fn get(&self, key: [u8; 32]) -> PackResult {
        let fut = {
            let mut st = self.lock();
            if let Some(f) = st.slots.get(&key).cloned() {
                if let Some(i) = st.order.iter().position(|k| *k == key) {
                    st.order.remove(i);
                }
                st.order.push_back(key);
                f
            } else {
                let (repo, permits, fetched) = (
                    self.repo.clone(),
                    self.fetch_permits.clone(),
                    self.fetched.clone(),
                );
                let f = async move {
                    let _permit = permits
                        .acquire_owned()
                        .await
                        .map_err(|e| Arc::new(ClientError::Refused(e.to_string())))?;
                    let data = on_worker(async move { repo.get_required(key, "pack").await })
                        .await
                        .map_err(Arc::new)?;
                    fetched.fetch_add(1, Ordering::Relaxed);
                    Ok(Arc::new(data))
                }
                .boxed()
                .shared();
                st.slots.insert(key, f.clone());
                st.order.push_back(key);
                while st.order.len() > self.capacity {
                    if let Some(old) = st.order.pop_front() {
                        st.slots.remove(&old);
                    }
                }
                f
            }
        };
        let r = fut.await;
        if r.is_err() {
            // Do not keep a failure: a later request asks the ring again.
            let mut st = self.lock();
            if st.slots.remove(&key).is_some() {
                st.order.retain(|k| *k != key);
            }
        }
        r
    }

    /// Reads, checks and opens one chunk of the file `path`: the slice of its pack, the AEAD
    /// tag, the chunk id and the length. Errors name the file.
    pub async fn open_chunk(&self, c: &ChunkRef, path: &str) -> Result<Vec<u8>, ClientError> {
        let pack = self.get(c.pack).await.map_err(|e| for_file(&e, path))?;
        let keys = self.repo.chunk_keys();
        // Decryption off the caller's task too (see `on_worker`), on the blocking pool.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (c, path) = (c.clone(), path.to_string());
                rt.spawn_blocking(move || open_in_pack(&keys, &pack, &c, &path))
                    .await
                    .map_err(|e| {
                        ClientError::Refused(format!("opening a chunk ended early: {e}"))
                    })?
            }
            Err(_) => open_in_pack(&keys, &pack, c, path),
        }
    }
}

/// Runs `fut` as a task of its own when there is a Tokio runtime (else in place): a pack's
/// fetch, its hash check and, on an entangled ring, the assembly of its sources then run on a
/// worker thread beside the restore's own task, which opens and writes chunks, instead of after
/// it. The task is aborted if the caller goes away first.
async fn on_worker<T, F>(fut: F) -> Result<T, ClientError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, ClientError>> + Send + 'static,
{
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let task = rt.spawn(fut);
            let _abort = AbortOnDrop(task.abort_handle());
            task.await
                .map_err(|e| ClientError::Refused(format!("a pack fetch ended early: {e}")))?
        }
        Err(_) => fut.await,
    }
}

/// The keys chunks are opened with.
#[derive(Clone)]
pub enum ChunkKeys {
    /// The owner's: every chunk's key derives from the user's keys, and the chunk's id (a MAC
    /// of its plaintext under the user's id key) is checked.
    User(Arc<crypto::UserKeys>),
    /// A share holder's: the keys of exactly the shared chunks (from the share's manifest);
    /// the AEAD tag authenticates each chunk under its key and id.
    Shared(Arc<HashMap<crypto::ChunkId, [u8; 32]>>),
}

impl ChunkKeys {
    fn open(&self, id: &crypto::ChunkId, sealed: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            ChunkKeys::User(keys) => {
                crypto::open_chunk(keys, id, sealed).map_err(|e| e.to_string())
            }
            ChunkKeys::Shared(map) => {
                let key = map
                    .get(id)
                    .ok_or_else(|| "the share carries no key for it".to_string())?;
                crypto::open_chunk_shared(key, id, sealed).map_err(|e| e.to_string())
            }
        }
    }
}

/// Opens one chunk of the file `path` out of its (already fetched) pack: the slice, the AEAD
/// tag against the chunk id, and the length. Errors name the file.
pub(crate) fn open_in_pack(
    keys: &ChunkKeys,
    pack: &[u8],
    c: &ChunkRef,
    path: &str,
) -> Result<Vec<u8>, ClientError> {
    let range = c.range_in(pack.len()).ok_or_else(|| {
        ClientError::Corrupt(format!(
            "{path}: a chunk lies outside its pack {} ({} bytes)",
            hex::encode(&c.pack[..8]),
            pack.len()
        ))
    })?;
    let plain = keys
        .open(&c.id, &pack[range])
        .map_err(|e| ClientError::Corrupt(format!("chunk of {path}: {e}")))?;
    if plain.len() != c.len as usize {
        return Err(ClientError::Corrupt(format!(
            "chunk of {path} has the wrong length"
        )));
    }
    Ok(plain)
}

/// The error of a pack fetch, as seen by one file that needed it.
pub(crate) fn for_file(e: &ClientError, path: &str) -> ClientError {
    match e {
        ClientError::Missing(m) => ClientError::Missing(format!("{m}, needed by {path}")),
        ClientError::Corrupt(m) => ClientError::Corrupt(format!("{m}, needed by {path}")),
        ClientError::Untrusted(m) => ClientError::Untrusted(format!("{m} (needed by {path})")),
        ClientError::Store(s) => ClientError::Store(s.clone()),
        other => ClientError::Refused(format!("{path}: {other}")),
    }
}
