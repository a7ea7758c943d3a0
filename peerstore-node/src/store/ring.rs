//! Arithmetic on the 2^256 ring of keys: half-open intervals `(a, b]` and equal splits.
//!
//! Numbers up to 2^256 inclusive are needed (the length of the whole ring), so they are held in
//! five 64-bit limbs.

use std::cmp::Ordering;

use peerstore_proto::BlockKey;

/// A number below 2^320, little-endian limbs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Wide([u64; 5]);

impl Wide {
    pub(crate) const ZERO: Wide = Wide([0; 5]);
    /// 2^256, the size of the ring.
    pub(crate) const RING: Wide = Wide([0, 0, 0, 0, 1]);

    pub(crate) fn from_key(k: &BlockKey) -> Wide {
        let mut l = [0u64; 5];
        for (i, limb) in l.iter_mut().take(4).enumerate() {
            let start = 32 - 8 * (i + 1);
            let mut b = [0u8; 8];
            b.copy_from_slice(&k.0[start..start + 8]);
            *limb = u64::from_be_bytes(b);
        }
        Wide(l)
    }

    /// The value mod 2^256 as a key.
    pub(crate) fn to_key(self) -> BlockKey {
        let mut out = [0u8; 32];
        for i in 0..4 {
            let start = 32 - 8 * (i + 1);
            out[start..start + 8].copy_from_slice(&self.0[i].to_be_bytes());
        }
        BlockKey(out)
    }

    pub(crate) fn from_u64(v: u64) -> Wide {
        Wide([v, 0, 0, 0, 0])
    }

    /// Wrapping addition mod 2^320.
    pub(crate) fn add(self, o: Wide) -> Wide {
        let mut out = [0u64; 5];
        let mut carry = 0u128;
        for (i, slot) in out.iter_mut().enumerate() {
            let s = u128::from(self.0[i]) + u128::from(o.0[i]) + carry;
            *slot = s as u64;
            carry = s >> 64;
        }
        Wide(out)
    }

    /// Wrapping subtraction mod 2^320.
    pub(crate) fn sub(self, o: Wide) -> Wide {
        let mut out = [0u64; 5];
        let mut borrow = false;
        for (i, slot) in out.iter_mut().enumerate() {
            let (d1, b1) = self.0[i].overflowing_sub(o.0[i]);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            *slot = d2;
            borrow = b1 || b2;
        }
        Wide(out)
    }

    /// Wrapping multiplication by a small number mod 2^320.
    pub(crate) fn mul_small(self, m: u64) -> Wide {
        let mut out = [0u64; 5];
        let mut carry = 0u128;
        for (i, slot) in out.iter_mut().enumerate() {
            let p = u128::from(self.0[i]) * u128::from(m) + carry;
            *slot = p as u64;
            carry = p >> 64;
        }
        Wide(out)
    }

    /// Quotient and remainder by a non-zero small number.
    pub(crate) fn divrem_small(self, d: u64) -> (Wide, u64) {
        debug_assert!(d != 0);
        let mut out = [0u64; 5];
        let mut rem = 0u128;
        for i in (0..5).rev() {
            let cur = (rem << 64) | u128::from(self.0[i]);
            out[i] = (cur / u128::from(d)) as u64;
            rem = cur % u128::from(d);
        }
        (Wide(out), rem as u64)
    }
}

impl Ord for Wide {
    fn cmp(&self, o: &Self) -> Ordering {
        for i in (0..5).rev() {
            match self.0[i].cmp(&o.0[i]) {
                Ordering::Equal => {}
                other => return other,
            }
        }
        Ordering::Equal
    }
}

impl PartialOrd for Wide {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Clockwise distance from `a` to `k`: `(k - a) mod 2^256`, in `[0, 2^256)`.
pub(crate) fn distance(a: &BlockKey, k: &BlockKey) -> Wide {
    let (a, k) = (Wide::from_key(a), Wide::from_key(k));
    if k >= a {
        k.sub(a)
    } else {
        k.add(Wide::RING).sub(a)
    }
}

/// The number of keys in the ring interval `(a, b]`; `a == b` is the whole ring (2^256).
pub(crate) fn interval_len(a: &BlockKey, b: &BlockKey) -> Wide {
    if a == b {
        Wide::RING
    } else {
        distance(a, b)
    }
}

/// Whether `k` lies in the ring interval `(a, b]` (`a == b` is the whole ring).
#[must_use]
pub fn in_interval(a: &BlockKey, b: &BlockKey, k: &BlockKey) -> bool {
    if a == b {
        return true;
    }
    let d = distance(a, k);
    d != Wide::ZERO && d <= distance(a, b)
}

/// The split of `(a, b]` into `n` equal consecutive sub-intervals: offsets from `a` of the
/// bucket ends. Bucket `i` is `(a + off(i), a + off(i + 1)]`.
pub(crate) struct Split {
    start: BlockKey,
    step: Wide,
    rem: u64,
    n: u64,
}

impl Split {
    /// `n` is clamped to `1..=len` so that no bucket is empty.
    pub(crate) fn new(a: &BlockKey, b: &BlockKey, n: u32) -> Split {
        let len = interval_len(a, b);
        let n = u64::from(n.max(1));
        let n = if Wide::from_u64(n) > len {
            // len < n <= u32::MAX, so len fits in the low limb.
            len.0[0].max(1)
        } else {
            n
        };
        let (step, rem) = len.divrem_small(n);
        Split {
            start: *a,
            step,
            rem,
            n,
        }
    }

    pub(crate) fn buckets(&self) -> u64 {
        self.n
    }

    /// Offset of the end of bucket `i - 1` (the start of bucket `i`) from `a`; `off(n) = len`.
    pub(crate) fn offset(&self, i: u64) -> Wide {
        // i * rem < n^2 <= 2^64, since rem < n <= 2^32.
        self.step
            .mul_small(i)
            .add(Wide::from_u64(i.wrapping_mul(self.rem) / self.n))
    }

    /// The key at which bucket `i` starts (exclusive); `bound(n) == b`.
    pub(crate) fn bound(&self, i: u64) -> BlockKey {
        Wide::from_key(&self.start).add(self.offset(i)).to_key()
    }
}

/// The `(start, end]` bounds of the buckets of `(a, b]` split into `n`, exactly as
/// [`super::BlockStore::bucket_digests`] splits it.
#[must_use]
pub fn bucket_bounds(a: &BlockKey, b: &BlockKey, n: u32) -> Vec<(BlockKey, BlockKey)> {
    let s = Split::new(a, b, n);
    (0..s.buckets())
        .map(|i| (s.bound(i), s.bound(i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_u64(v: u64) -> BlockKey {
        Wide::from_u64(v).to_key()
    }

    #[test]
    fn wide_round_trip_and_arith() {
        let k = BlockKey::of(b"a");
        assert_eq!(Wide::from_key(&k).to_key(), k);
        assert_eq!(Wide::RING.to_key(), BlockKey::ZERO);
        assert_eq!(
            Wide::from_key(&BlockKey::MAX).add(Wide::from_u64(1)),
            Wide::RING
        );
        let (q, r) = Wide::RING.divrem_small(3);
        assert_eq!(q.mul_small(3).add(Wide::from_u64(r)), Wide::RING);
        assert_eq!(r, 1);
        assert_eq!(Wide::RING.sub(Wide::from_u64(1)).to_key(), BlockKey::MAX);
    }

    #[test]
    fn interval_membership() {
        let (a, b) = (key_u64(10), key_u64(20));
        assert!(!in_interval(&a, &b, &key_u64(10)));
        assert!(in_interval(&a, &b, &key_u64(11)));
        assert!(in_interval(&a, &b, &key_u64(20)));
        assert!(!in_interval(&a, &b, &key_u64(21)));
        // wrap-around
        assert!(in_interval(&b, &a, &key_u64(21)));
        assert!(in_interval(&b, &a, &BlockKey::MAX));
        assert!(in_interval(&b, &a, &BlockKey::ZERO));
        assert!(in_interval(&b, &a, &key_u64(10)));
        assert!(!in_interval(&b, &a, &key_u64(15)));
        assert!(!in_interval(&b, &a, &key_u64(20)));
        // whole ring
        assert!(in_interval(&a, &a, &a));
        assert!(in_interval(&a, &a, &key_u64(3)));
    }

    #[test]
    fn split_covers_interval_exactly() {
        for (a, b, n) in [
            (key_u64(0), key_u64(100), 7u32),
            (key_u64(90), key_u64(5), 4),
            (key_u64(5), key_u64(5), 16),
            (key_u64(5), key_u64(8), 10),
            (BlockKey::MAX, BlockKey::ZERO, 3),
        ] {
            let s = Split::new(&a, &b, n);
            assert_eq!(s.bound(0), a);
            assert_eq!(s.bound(s.buckets()), b);
            assert_eq!(s.offset(s.buckets()), interval_len(&a, &b));
            for i in 0..s.buckets() {
                assert!(s.offset(i) < s.offset(i + 1), "bucket {i} empty");
            }
        }
        // clamped: 3 keys cannot be split into 10 non-empty buckets
        assert_eq!(Split::new(&key_u64(5), &key_u64(8), 10).buckets(), 3);
    }
}
