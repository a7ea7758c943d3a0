//! Per-user quotas: what each user (a PeerId with a user or admin certificate) has stored
//! through this node, and the limit `--user-quota` puts on it.
//!
//! The node that accepts a user's write (the entry node, or the member a routed client sends
//! it to) charges the user the bytes the user asked to store (a block's or document's length),
//! once per user and content: storing the same block again costs nothing. The charge is
//! reserved atomically before the write (compare-and-set on the user's usage, so concurrent
//! writes cannot overshoot the limit) and released if the write fails. Usage is kept in the
//! node's index (redb), so it survives restarts. A quota is per node: a ring of n nodes
//! lets a user whose writes spread evenly store about n times `--user-quota`. Without
//! `--user-quota` nothing is booked (no index writes on the data path, no usage in status).

use std::sync::Arc;

use peerstore_proto::{BlockKey, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::driver::Caller;
use crate::ring::RingError;
use crate::store::{BlockStore, RecordTable, RecordUpdate};

/// Usage per user: blake3(PeerId bytes) -> [`Usage`].
const USAGE: RecordTable = RecordTable::new("user_usage");
/// What was charged: blake3(PeerId bytes || content key) -> bytes (charged once).
const CHARGES: RecordTable = RecordTable::new("user_charges");
/// Who was charged for a content: content key -> postcard `Vec<([u8; 32], [u8; 32])>` of
/// (usage key, charge key), at most [`MAX_PAYERS`], so that deleting the content gives them
/// back what it cost.
const PAYERS: RecordTable = RecordTable::new("user_payers");
/// Most users remembered as charged for one content (more are charged, but only these get
/// their bytes back when it is deleted).
pub const MAX_PAYERS: usize = 64;
/// Most users listed in a status report.
pub const MAX_LISTED_USERS: usize = 64;

/// One user's usage on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The PeerId (text).
    pub user: String,
    /// The certificate's label.
    pub label: String,
    pub bytes: u64,
}

/// Whether a user who has stored `used` bytes may store `add` more under `limit`.
#[must_use]
pub fn admits(used: u64, add: u64, limit: Option<u64>) -> bool {
    limit.is_none_or(|l| used.saturating_add(add) <= l)
}

/// The error a user over quota gets.
#[must_use]
pub fn exceeded(label: &str, used: u64, add: u64, limit: u64) -> RingError {
    let who = if label.is_empty() { "this user" } else { label };
    RingError {
        code: ErrorCode::QuotaExceeded,
        message: format!(
            "quota exceeded: {who} has stored {used} of {limit} bytes on this node and asked for {add} more; forget old snapshots, or ask the ring's operator to raise --user-quota"
        ),
    }
}

/// The quota book of one node.
pub struct Quotas {
    store: Arc<BlockStore>,
    limit: Option<u64>,
    /// Serializes the read-modify-write of usage records (this process is their only writer).
    book: Arc<std::sync::Mutex<()>>,
}

fn user_key(caller: &Caller) -> [u8; 32] {
    *blake3::hash(&caller.peer.to_bytes()).as_bytes()
}

fn charge_key(caller: &Caller, content: &BlockKey) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&caller.peer.to_bytes());
    h.update(&content.0);
    *h.finalize().as_bytes()
}

/// Runs store work off the async threads.
async fn run<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RingError> + Send + 'static,
) -> Result<T, RingError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(RingError::internal(format!("quota task failed: {e}"))))
}

/// A user charged for a content: (usage key, charge key).
type Payer = ([u8; 32], [u8; 32]);

/// The payers remembered for `content`.
fn payers_of(store: &BlockStore, content: &BlockKey) -> Result<Vec<Payer>, RingError> {
    Ok(store
        .record_get(PAYERS, &content.0)?
        .and_then(|b| postcard::from_bytes(&b).ok())
        .unwrap_or_default())
}

fn put_payers(store: &BlockStore, content: &BlockKey, payers: &[Payer]) -> Result<(), RingError> {
    let bytes = postcard::to_stdvec(payers).map_err(|e| RingError::internal(e.to_string()))?;
    store.record_put(PAYERS, &content.0, &bytes)?;
    Ok(())
}

/// Removes charge `ck` of `size` bytes and takes it off usage `uk` (the book lock held).
fn refund(store: &BlockStore, uk: [u8; 32], ck: [u8; 32], size: u64) -> Result<(), RingError> {
    store.record_delete(CHARGES, &ck)?;
    for _ in 0..8 {
        let cur = store
            .record_get(USAGE, &uk)?
            .and_then(|b| postcard::from_bytes::<Usage>(&b).ok())
            .unwrap_or_default();
        let next = Usage {
            bytes: cur.bytes.saturating_sub(size),
            ..cur.clone()
        };
        let bytes = postcard::to_stdvec(&next).map_err(|e| RingError::internal(e.to_string()))?;
        let done = store.record_update(USAGE, &uk, &bytes, |current, _| {
            current
                .and_then(|b| postcard::from_bytes::<Usage>(b).ok())
                .map_or(0, |u| u.bytes)
                == cur.bytes
        })?;
        if done == RecordUpdate::Stored {
            break;
        }
    }
    Ok(())
}

/// A reservation: released (the write failed) or kept.
pub struct Reservation {
    charge: Option<([u8; 32], [u8; 32], u64)>,
}

impl Quotas {
    #[must_use]
    pub fn new(store: Arc<BlockStore>, limit: Option<u64>) -> Quotas {
        Quotas {
            store,
            limit,
            book: Arc::new(std::sync::Mutex::new(())),
        }
    }

    /// The limit per user, if any.
    #[must_use]
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Reserves `size` bytes of `content` for `caller`, or refuses with "quota exceeded".
    /// Content the caller has stored before costs nothing.
    pub async fn reserve(
        &self,
        caller: &Caller,
        content: BlockKey,
        size: u64,
    ) -> Result<Reservation, RingError> {
        // Without a limit nothing is booked: no extra index writes on the data path.
        if self.limit.is_none() {
            return Ok(Reservation { charge: None });
        }
        let book = self.book.clone();
        let store = self.store.clone();
        let limit = self.limit;
        let uk = user_key(caller);
        let ck = charge_key(caller, &content);
        let caller = caller.clone();
        run(move || -> Result<Reservation, RingError> {
            let _book = peerstore_proto::lock(&book);
            if store.record_get(CHARGES, &ck)?.is_some() {
                return Ok(Reservation { charge: None });
            }
            let mut refused = None;
            let mut next = Usage {
                user: caller.peer.to_string(),
                label: caller.label.clone(),
                bytes: size,
            };
            let cur = store
                .record_get(USAGE, &uk)?
                .and_then(|b| postcard::from_bytes::<Usage>(&b).ok())
                .unwrap_or_default();
            next.bytes = cur.bytes.saturating_add(size);
            let bytes =
                postcard::to_stdvec(&next).map_err(|e| RingError::internal(e.to_string()))?;
            let outcome = store.record_update(USAGE, &uk, &bytes, |current, _| {
                let used = current
                    .and_then(|b| postcard::from_bytes::<Usage>(b).ok())
                    .map_or(0, |u| u.bytes);
                // The book lock makes this the value read above; check anyway.
                if used != cur.bytes {
                    return false;
                }
                if !admits(used, size, limit) {
                    refused = Some(used);
                    return false;
                }
                true
            })?;
            match outcome {
                RecordUpdate::Stored => {
                    store.record_put(CHARGES, &ck, &size.to_le_bytes())?;
                    let mut payers = payers_of(&store, &content)?;
                    if payers.len() < MAX_PAYERS && !payers.contains(&(uk, ck)) {
                        payers.push((uk, ck));
                        put_payers(&store, &content, &payers)?;
                    }
                    Ok(Reservation {
                        charge: Some((uk, ck, size)),
                    })
                }
                RecordUpdate::Rejected { .. } => match (refused, limit) {
                    (Some(used), Some(l)) => Err(exceeded(&caller.label, used, size, l)),
                    _ => Err(RingError {
                        code: ErrorCode::Unavailable,
                        message: "concurrent writes of this user; retry".into(),
                    }),
                },
            }
        })
        .await
    }

    /// Gives a reservation back (the write did not happen).
    pub async fn release(&self, r: Reservation) {
        let Some((uk, ck, size)) = r.charge else {
            return;
        };
        let store = self.store.clone();
        let book = self.book.clone();
        let _ = run(move || -> Result<(), RingError> {
            let _book = peerstore_proto::lock(&book);
            refund(&store, uk, ck, size)
        })
        .await;
    }

    /// Gives every user charged for `content` here what it cost them: the content was deleted
    /// (a document removed on its writer's statement). Idempotent. A content written twice as
    /// two documents is charged once, so deleting either refunds it.
    pub async fn release_content(&self, content: BlockKey) -> Result<u64, RingError> {
        if self.limit.is_none() {
            return Ok(0);
        }
        let store = self.store.clone();
        let book = self.book.clone();
        run(move || -> Result<u64, RingError> {
            let _book = peerstore_proto::lock(&book);
            let mut freed = 0;
            for (uk, ck) in payers_of(&store, &content)? {
                let Some(b) = store.record_get(CHARGES, &ck)? else {
                    continue;
                };
                let size = b
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_le_bytes);
                refund(&store, uk, ck, size)?;
                freed += size;
            }
            store.record_delete(PAYERS, &content.0)?;
            Ok(freed)
        })
        .await
    }

    /// Usage of up to [`MAX_LISTED_USERS`] users, largest first.
    pub fn usage(&self) -> Vec<Usage> {
        let mut all = Vec::new();
        let mut after: Option<[u8; 32]> = None;
        // Bounded: at most 64 pages of 256 users are read for a status report.
        for _ in 0..64 {
            let Ok(page) = self.store.record_list(USAGE, after.as_ref(), 256) else {
                break;
            };
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            let n = page.len();
            all.extend(
                page.into_iter()
                    .filter_map(|(_, v)| postcard::from_bytes::<Usage>(&v).ok()),
            );
            all.sort_by_key(|u| std::cmp::Reverse(u.bytes));
            all.truncate(MAX_LISTED_USERS);
            if n < 256 {
                break;
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_inclusive_and_absent_means_none() {
        assert!(admits(0, 10, None));
        assert!(admits(90, 10, Some(100)));
        assert!(!admits(91, 10, Some(100)));
        assert!(!admits(u64::MAX, 1, Some(u64::MAX - 1)));
        let e = exceeded("alice", 95, 10, 100);
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert!(
            e.message.starts_with("quota exceeded: alice"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn charges_once_per_content_refuses_over_the_limit_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) =
            BlockStore::open(crate::store::StoreConfig::new(dir.path(), 1 << 30)).unwrap();
        let q = Quotas::new(Arc::new(store), Some(100));
        let alice = Caller {
            peer: libp2p::PeerId::random(),
            role: peerstore_proto::Role::User,
            label: "alice".into(),
        };
        let bob = Caller {
            peer: libp2p::PeerId::random(),
            role: peerstore_proto::Role::User,
            label: "bob".into(),
        };
        let k = |i: u8| BlockKey::of(&[i]);
        q.reserve(&alice, k(1), 60).await.unwrap();
        // The same content again is free.
        q.reserve(&alice, k(1), 60).await.unwrap();
        let err = q.reserve(&alice, k(2), 60).await.err().unwrap();
        assert_eq!(err.code, ErrorCode::QuotaExceeded);
        // Others keep writing.
        q.reserve(&bob, k(2), 60).await.unwrap();
        let r = q.reserve(&alice, k(3), 40).await.unwrap();
        q.release(r).await;
        q.reserve(&alice, k(4), 40).await.unwrap();
        let usage = q.usage();
        assert_eq!(usage.len(), 2);
        assert_eq!(
            usage.iter().find(|u| u.label == "alice").unwrap().bytes,
            100
        );
        // Deleting content 1 gives Alice its 60 bytes back (once), and she writes again.
        assert_eq!(q.release_content(k(1)).await.unwrap(), 60);
        assert_eq!(q.release_content(k(1)).await.unwrap(), 0);
        q.reserve(&alice, k(5), 60).await.unwrap();
        // Content 2 was Bob's: Alice's usage does not move when it goes.
        assert_eq!(q.release_content(k(2)).await.unwrap(), 60);
        let usage = q.usage();
        assert_eq!(
            usage.iter().find(|u| u.label == "alice").unwrap().bytes,
            100
        );
        assert_eq!(usage.iter().find(|u| u.label == "bob").unwrap().bytes, 0);
    }
}
