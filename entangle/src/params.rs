//! Code parameters.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Largest block size accepted, so a block header from the network cannot make us allocate
/// without bound.
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024 * 1024;
/// Largest `s + t + p` accepted (far below the Reed-Solomon library's own limit of 65,536,
/// and it bounds the header size at about 128 KiB).
pub const MAX_SYMBOLS: usize = 4096;

/// The parameters of a step-archive: `s` source blocks, `t` pointers and `p` parities per
/// codeword, over blocks of `block_size` bytes. `e = p - s` symbols of a codeword may be lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Params {
    /// Source blocks per codeword (never stored).
    pub s: u16,
    /// Pointers per codeword: blocks already in the archive that are entangled with it.
    pub t: u16,
    /// Parity blocks per codeword (the only blocks stored); `p >= s`.
    pub p: u16,
    /// The fixed block (payload) size `B` in bytes, the same for the whole ring.
    pub block_size: u32,
}

impl Params {
    /// The design's default code, (s, t, p) = (2, 10, 6), 3x overhead, with 256 KiB blocks
    /// (the block size is the ring's choice; this is only a starting point).
    pub const DEFAULT: Params = Params::new(2, 10, 6, 256 * 1024);

    /// Parameters without validation; call [`Params::validate`] before use.
    #[must_use]
    pub const fn new(s: u16, t: u16, p: u16, block_size: u32) -> Self {
        Params {
            s,
            t,
            p,
            block_size,
        }
    }

    /// The number of symbols of a codeword that may be missing: `p - s` (0 if invalid).
    #[must_use]
    pub fn e(&self) -> usize {
        usize::from(self.p).saturating_sub(usize::from(self.s))
    }

    /// `s` as usize.
    #[must_use]
    pub fn s(&self) -> usize {
        usize::from(self.s)
    }

    /// `t` as usize.
    #[must_use]
    pub fn t(&self) -> usize {
        usize::from(self.t)
    }

    /// `p` as usize.
    #[must_use]
    pub fn p(&self) -> usize {
        usize::from(self.p)
    }

    /// `B` as usize.
    #[must_use]
    pub fn block(&self) -> usize {
        self.block_size as usize
    }

    /// The largest document one codeword carries: `s * B`.
    #[must_use]
    pub fn capacity(&self) -> u64 {
        u64::from(self.s) * u64::from(self.block_size)
    }

    /// Symbols needed to decode a codeword: `s + t` of its `t + p`.
    #[must_use]
    pub fn needed(&self) -> usize {
        self.s() + self.t()
    }

    /// The decoding rule, shared by the codec, repair and the simulator: a codeword whose
    /// `known` symbols (pointers, anchors and parities) number at least `s + t` can be decoded.
    #[must_use]
    pub fn decodable(&self, known: usize) -> bool {
        known >= self.needed()
    }

    /// Storage overhead of the code alone: `p / s`.
    #[must_use]
    pub fn overhead(&self) -> f64 {
        f64::from(self.p) / f64::from(self.s.max(1))
    }

    /// Checks `s >= 1`, `p >= s`, `0 < B <= MAX_BLOCK_SIZE`, `B` even (reed-solomon-simd
    /// works on 16-bit symbols, so a shard must be a non-zero multiple of 2 bytes), and
    /// that the Reed-Solomon library supports `s + t` originals with `p` recoveries.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidParams(m));
        if self.s == 0 {
            return bad("s must be at least 1".into());
        }
        if self.p < self.s {
            return bad(format!("p ({}) must be >= s ({})", self.p, self.s));
        }
        if self.block_size == 0 || self.block_size > MAX_BLOCK_SIZE {
            return bad(format!(
                "block size {} must be in 1..={MAX_BLOCK_SIZE}",
                self.block_size
            ));
        }
        if self.block_size % 2 != 0 {
            return bad(format!(
                "block size {} must be a multiple of 2 bytes",
                self.block_size
            ));
        }
        let total = self.s() + self.t() + self.p();
        if total > MAX_SYMBOLS {
            return bad(format!("s + t + p = {total} exceeds {MAX_SYMBOLS}"));
        }
        if !reed_solomon_simd::ReedSolomonEncoder::supports(self.needed(), self.p()) {
            return bad(format!(
                "reed-solomon does not support {} originals with {} recoveries",
                self.needed(),
                self.p
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(Params::new(2, 10, 6, 4096).validate().is_ok());
        assert!(Params::DEFAULT.validate().is_ok());
        assert!(Params::new(1, 10, 3, 2).validate().is_ok());
        assert!(Params::new(1, 0, 1, 2).validate().is_ok());
        assert!(Params::new(0, 10, 6, 4096).validate().is_err());
        assert!(Params::new(3, 10, 2, 4096).validate().is_err());
        assert!(Params::new(2, 10, 6, 0).validate().is_err());
        assert!(Params::new(2, 10, 6, 4095).validate().is_err());
        assert!(Params::new(2, 10, 6, MAX_BLOCK_SIZE + 2)
            .validate()
            .is_err());
        assert!(Params::new(2000, 2000, 2000, 64).validate().is_err());
        let p = Params::new(2, 10, 6, 4096);
        assert_eq!(p.e(), 4);
        assert_eq!(p.needed(), 12);
        assert_eq!(p.capacity(), 8192);
        assert!(p.decodable(12));
        assert!(!p.decodable(11));
        assert!((p.overhead() - 3.0).abs() < 1e-12);
    }
}
