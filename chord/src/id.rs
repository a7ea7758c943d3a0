//! 256-bit ring identifiers and interval arithmetic on the ring.
//!
//! An [`Id`] is a big-endian 256-bit unsigned integer; all arithmetic is modulo 2^256, so the
//! identifier space is a circle. The two interval predicates, [`Id::in_open`] and
//! [`Id::in_half_open`], are the only comparisons the protocol uses: plain `<` is meaningless on
//! a ring.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// A point on the Chord ring: a big-endian 256-bit unsigned integer. `Ord` is numeric order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Id(pub [u8; 32]);

/// Errors from parsing an [`Id`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The string is not 64 hex characters.
    #[error("an id is 64 hex characters, got {0}")]
    BadLength(usize),
    /// The string contains a character that is not a hex digit.
    #[error("an id must be hex: {0}")]
    BadHex(String),
}

impl Id {
    /// The id 0.
    pub const ZERO: Id = Id([0u8; 32]);
    /// The id 2^256 - 1.
    pub const MAX: Id = Id([0xffu8; 32]);

    /// SHA-256 of `bytes`, read as a big-endian number.
    pub fn hash(bytes: &[u8]) -> Id {
        let digest = Sha256::digest(bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest);
        Id(out)
    }

    /// The id of virtual node `index` of the physical node called `name`:
    /// SHA-256(name || index as 4 big-endian bytes).
    pub fn vnode(name: &[u8], index: u32) -> Id {
        let mut h = Sha256::new();
        h.update(name);
        h.update(index.to_be_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(&h.finalize());
        Id(out)
    }

    /// Wraps 32 big-endian bytes.
    pub fn from_bytes(b: [u8; 32]) -> Id {
        Id(b)
    }

    /// The 32 big-endian bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id with the low 64 bits set to `v` and all other bits zero (handy in tests).
    pub fn from_u64(v: u64) -> Id {
        let mut b = [0u8; 32];
        b[24..].copy_from_slice(&v.to_be_bytes());
        Id(b)
    }

    /// The low 64 bits.
    pub fn low_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[24..]);
        u64::from_be_bytes(b)
    }

    /// The high 64 bits (useful as a float-free position on the ring).
    pub fn high_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }

    #[inline]
    fn limbs(&self) -> [u64; 4] {
        let mut l = [0u64; 4];
        for (i, limb) in l.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.0[i * 8..i * 8 + 8]);
            *limb = u64::from_be_bytes(b);
        }
        l
    }

    fn from_limbs(l: [u64; 4]) -> Id {
        let mut out = [0u8; 32];
        for (i, limb) in l.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_be_bytes());
        }
        Id(out)
    }

    /// `self + o` modulo 2^256.
    pub fn wrapping_add(self, o: Id) -> Id {
        let a = self.limbs();
        let b = o.limbs();
        let mut r = [0u64; 4];
        let mut carry = false;
        for i in (0..4).rev() {
            let (s1, c1) = a[i].overflowing_add(b[i]);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            r[i] = s2;
            carry = c1 || c2;
        }
        Id::from_limbs(r)
    }

    /// `self - o` modulo 2^256.
    pub fn wrapping_sub(self, o: Id) -> Id {
        let a = self.limbs();
        let b = o.limbs();
        let mut r = [0u64; 4];
        let mut borrow = false;
        for i in (0..4).rev() {
            let (d1, b1) = a[i].overflowing_sub(b[i]);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            r[i] = d2;
            borrow = b1 || b2;
        }
        Id::from_limbs(r)
    }

    /// 2^i for i < 256 (i is taken modulo 256).
    pub fn pow2(i: u32) -> Id {
        let i = i % 256;
        let mut b = [0u8; 32];
        let byte = 31 - (i / 8) as usize;
        b[byte] = 1u8 << (i % 8);
        Id(b)
    }

    /// `self + 2^i` modulo 2^256, for `i < 256` (i is taken modulo 256).
    pub fn add_pow2(self, i: u32) -> Id {
        self.wrapping_add(Id::pow2(i))
    }

    /// Clockwise distance from `self` to `to`: `(to - self) mod 2^256`.
    pub fn distance_to(self, to: Id) -> Id {
        to.wrapping_sub(self)
    }

    /// `(to - from) mod 2^256` as big-endian u64 limbs (compares without memcmp).
    #[inline]
    fn dist_limbs(from: &Id, to: &Id) -> [u64; 4] {
        let a = to.limbs();
        let b = from.limbs();
        let mut r = [0u64; 4];
        let mut borrow = false;
        for i in (0..4).rev() {
            let (d1, b1) = a[i].overflowing_sub(b[i]);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            r[i] = d2;
            borrow = b1 || b2;
        }
        r
    }

    /// `self` lies in the open ring interval `(a, b)`. If `a == b` the interval is the whole ring
    /// except `a`.
    #[inline]
    pub fn in_open(self, a: Id, b: Id) -> bool {
        let d = Id::dist_limbs(&a, &self);
        if d == [0; 4] {
            return false;
        }
        let e = Id::dist_limbs(&a, &b);
        e == [0; 4] || d < e
    }

    /// `self` lies in the half-open ring interval `(a, b]`. If `a == b` the interval is the whole
    /// ring.
    #[inline]
    pub fn in_half_open(self, a: Id, b: Id) -> bool {
        let e = Id::dist_limbs(&a, &b);
        if e == [0; 4] {
            return true;
        }
        let d = Id::dist_limbs(&a, &self);
        d != [0; 4] && d <= e
    }

    /// A sort key for "clockwise distance from `from` to `self`" that compares fast.
    #[inline]
    pub fn dist_key(self, from: Id) -> [u64; 4] {
        Id::dist_limbs(&from, &self)
    }

    /// All 64 hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Id, IdError> {
        if s.len() != 64 {
            return Err(IdError::BadLength(s.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| IdError::BadHex(e.to_string()))?;
        Ok(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &hex::encode(&self.0[..4]))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &hex::encode(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An id whose top 24 bytes are `hi` (a fixed pattern) and low 8 bytes are `lo`.
    fn with_low(hi: u8, lo: u64) -> Id {
        let mut b = [hi; 32];
        b[24..].copy_from_slice(&lo.to_be_bytes());
        Id(b)
    }

    fn any_id() -> impl Strategy<Value = Id> {
        any::<[u8; 32]>().prop_map(Id)
    }

    /// Reference for (x in (a, b)) on a ring of size 2^64.
    fn ref_open(x: u64, a: u64, b: u64) -> bool {
        if a == b {
            x != a
        } else if a < b {
            a < x && x < b
        } else {
            x > a || x < b
        }
    }

    fn ref_half_open(x: u64, a: u64, b: u64) -> bool {
        if a == b {
            true
        } else if a < b {
            a < x && x <= b
        } else {
            x > a || x <= b
        }
    }

    #[test]
    fn basics() {
        assert_eq!(Id::ZERO.wrapping_sub(Id::from_u64(1)), Id::MAX);
        assert_eq!(Id::MAX.wrapping_add(Id::from_u64(1)), Id::ZERO);
        assert_eq!(Id::ZERO.add_pow2(255).0[0], 0x80);
        assert_eq!(Id::ZERO.add_pow2(0), Id::from_u64(1));
        assert_eq!(Id::ZERO.add_pow2(64).0[23], 1);
        let x = Id::hash(b"abc");
        assert_eq!(
            x.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(format!("{x}"), "ba7816bf");
        assert_eq!(format!("{x:?}"), "ba7816bf");
        assert_eq!(Id::from_hex(&x.to_hex()), Ok(x));
        assert!(matches!(Id::from_hex("00"), Err(IdError::BadLength(2))));
        assert!(matches!(
            Id::from_hex(&"zz".repeat(32)),
            Err(IdError::BadHex(_))
        ));
        assert_ne!(Id::vnode(b"n", 0), Id::vnode(b"n", 1));
        // a == b conventions
        assert!(!x.in_open(x, x));
        assert!(Id::ZERO.in_open(x, x));
        assert!(x.in_half_open(x, x));
    }

    proptest! {
        // Interval predicates agree with a u64 reference when ids differ only in the low 64 bits.
        #[test]
        fn intervals_match_u64_reference(hi in any::<u8>(), x in any::<u64>(), a in any::<u64>(), b in any::<u64>()) {
            let (xi, ai, bi) = (with_low(hi, x), with_low(hi, a), with_low(hi, b));
            prop_assert_eq!(xi.in_open(ai, bi), ref_open(x, a, b));
            prop_assert_eq!(xi.in_half_open(ai, bi), ref_half_open(x, a, b));
        }

        // Small values exercise the equal/adjacent corner cases far more often.
        #[test]
        fn intervals_small_values(x in 0u64..6, a in 0u64..6, b in 0u64..6) {
            let (xi, ai, bi) = (Id::from_u64(x), Id::from_u64(a), Id::from_u64(b));
            // On the 2^256 ring these small values never wrap unless a > b.
            let open = if a == b { x != a } else if a < b { a < x && x < b } else { x > a || x < b };
            let half = if a == b { true } else if a < b { a < x && x <= b } else { x > a || x <= b };
            prop_assert_eq!(xi.in_open(ai, bi), open);
            prop_assert_eq!(xi.in_half_open(ai, bi), half);
        }

        // Addition and subtraction of the low 64 bits match u64 wrapping arithmetic plus a carry
        // into byte 23.
        #[test]
        fn add_sub_match_u64(a in any::<u64>(), b in any::<u64>()) {
            let s = Id::from_u64(a).wrapping_add(Id::from_u64(b));
            let (lo, carry) = a.overflowing_add(b);
            prop_assert_eq!(s.low_u64(), lo);
            prop_assert_eq!(s.0[23], u8::from(carry));
            prop_assert!(s.0[..23].iter().all(|&v| v == 0));
            let d = Id::from_u64(a).wrapping_sub(Id::from_u64(b));
            prop_assert_eq!(d.low_u64(), a.wrapping_sub(b));
            let fill = if a < b { 0xff } else { 0 };
            prop_assert!(d.0[..24].iter().all(|&v| v == fill));
        }

        #[test]
        fn algebra(a in any_id(), b in any_id(), c in any_id(), i in 0u32..256) {
            prop_assert_eq!(a.wrapping_add(b), b.wrapping_add(a));
            prop_assert_eq!(a.wrapping_add(b).wrapping_add(c), a.wrapping_add(b.wrapping_add(c)));
            prop_assert_eq!(a.wrapping_add(b).wrapping_sub(b), a);
            prop_assert_eq!(a.wrapping_sub(a), Id::ZERO);
            prop_assert_eq!(a.distance_to(b).wrapping_add(b.distance_to(a)), Id::ZERO);
            prop_assert_eq!(a.add_pow2(i).wrapping_sub(a), Id::pow2(i));
            prop_assert_eq!(a.wrapping_add(a.distance_to(b)), b);
            // the predicates partition the ring: x in (a, b] iff x in (a, b) or x == b (a != b)
            if a != b {
                prop_assert_eq!(c.in_half_open(a, b), c.in_open(a, b) || c == b);
                // exactly one of (a, b] and (b, a] contains c
                prop_assert!(c.in_half_open(a, b) ^ c.in_half_open(b, a));
            }
            prop_assert!(!a.in_open(a, b));
            prop_assert!(!b.in_open(a, b));
            // shifting everything preserves interval membership
            prop_assert_eq!(
                c.wrapping_add(Id::pow2(i)).in_open(a.add_pow2(i), b.add_pow2(i)),
                c.in_open(a, b)
            );
        }

        #[test]
        fn hex_roundtrip(a in any_id()) {
            prop_assert_eq!(Id::from_hex(&a.to_hex()), Ok(a));
            prop_assert_eq!(a.cmp(&Id::ZERO), a.0.cmp(&[0u8; 32]));
        }
    }
}
