//! Code parameters and the layout of a codeword's stored blocks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Largest block size accepted, so a block header from the network cannot make us allocate
/// without bound.
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024 * 1024;
/// Largest `s + t + p` accepted (far below the Reed-Solomon library's own limit of 65,536,
/// and it bounds the header size at about 128 KiB).
pub const MAX_SYMBOLS: usize = 4096;

/// Shard sizes are multiples of this many bytes (Reed-Solomon and BLAKE3 work in wide SIMD
/// lanes; a multiple of 2 is the Reed-Solomon crate's own requirement).
pub const SHARD_ALIGN: usize = 64;

/// The payload sizes a codeword's parities may have ([`Params::payload_sizes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadSizes {
    /// The codeword's shard size ([`Params::shard`]), written by this version.
    pub shard: usize,
    /// `B`, written by versions before shards.
    pub block: usize,
}

impl PayloadSizes {
    /// Whether `n` is one of them.
    #[must_use]
    pub fn allows(&self, n: usize) -> bool {
        n == self.shard || n == self.block
    }

    /// The sizes, the shard first, without repetition.
    pub fn iter(&self) -> impl Iterator<Item = usize> {
        let second = (self.block != self.shard).then_some(self.block);
        std::iter::once(self.shard).chain(second)
    }
}

/// How a codeword's symbols are stored: the codec's two formats (and the simulator's two
/// models).
///
/// Both use the same Reed-Solomon code over the same `s + t` input symbols (`s` sources,
/// `t` pointers) with `p` recovery symbols (parities); a codeword decodes from any `s + t`
/// of its symbols. They differ in what is stored:
///
/// | layout | stored blocks | symbols | may be missing | overhead | block format |
/// |---|---|---|---|---|---|
/// | parity-only | `p` parities | `t + p` | `p - s` | `p / s` | version 1 |
/// | systematic | `s` sources, `p` parities | `s + t + p` | `p` | `(s + p) / s` | version 2 |
///
/// A codeword's stored blocks have one index space, the *stored index* `j`: parity-only,
/// `j < p` is parity `j`; systematic, `j < s` is source `j` and `s <= j < s + p` parity
/// `j - s`. Record key lists, header hash lists and [`crate::Role`] use it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Only the `p` parities are stored (RECAST; every codeword written before layouts); a
    /// codeword has `t + p` symbols. Overhead `p / s`.
    #[default]
    ParityOnly,
    /// The `s` sources are stored once each, readable directly, plus `p` parities over
    /// sources and pointers; a codeword has `s + t + p` symbols. Overhead `(s + p) / s`.
    Systematic,
}

impl Layout {
    /// Stored blocks per codeword.
    #[must_use]
    pub fn stored_per_codeword(self, s: u16, p: u16) -> usize {
        match self {
            Layout::ParityOnly => usize::from(p),
            Layout::Systematic => usize::from(s) + usize::from(p),
        }
    }

    /// Storage overhead of the code alone (before replication): stored blocks / source blocks.
    #[must_use]
    pub fn overhead(self, s: u16, p: u16) -> f64 {
        self.stored_per_codeword(s, p) as f64 / f64::from(s.max(1))
    }

    /// The name used on the command line and in JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Layout::ParityOnly => "parity-only",
            Layout::Systematic => "systematic",
        }
    }

    /// Stored blocks of a codeword of `params`: `p`, or `s + p`.
    #[must_use]
    pub fn stored(self, params: &Params) -> usize {
        self.stored_per_codeword(params.s, params.p)
    }

    /// Stored source blocks of a codeword of `params` (the first stored indexes): 0, or `s`.
    #[must_use]
    pub fn sources(self, params: &Params) -> usize {
        match self {
            Layout::ParityOnly => 0,
            Layout::Systematic => params.s(),
        }
    }

    /// Symbols of a codeword: its `t` pointers and its stored blocks.
    #[must_use]
    pub fn symbols(self, params: &Params) -> usize {
        params.t() + self.stored(params)
    }

    /// Symbols of a codeword that may be missing: `p - s` (parity-only) or `p` (systematic).
    #[must_use]
    pub fn erasures(self, params: &Params) -> usize {
        self.symbols(params).saturating_sub(params.needed())
    }

    /// The layout whose codewords of `params` store `n` blocks, if any.
    #[must_use]
    pub fn of_stored(params: &Params, n: usize) -> Option<Layout> {
        [Layout::ParityOnly, Layout::Systematic]
            .into_iter()
            .find(|l| l.stored(params) == n)
    }

    /// The version byte of this layout's stored blocks ([`crate::block`]).
    #[must_use]
    pub fn block_version(self) -> u8 {
        match self {
            Layout::ParityOnly => 1,
            Layout::Systematic => 2,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layout {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "parity-only" => Ok(Layout::ParityOnly),
            "systematic" => Ok(Layout::Systematic),
            other => Err(Error::InvalidParams(format!(
                "unknown layout {other:?} (parity-only or systematic)"
            ))),
        }
    }
}

/// The parameters of a step-archive: `s` source blocks, `t` pointers and `p` parities per
/// codeword, over blocks of `block_size` bytes. `e = p - s` symbols of a codeword may be lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Params {
    /// Source blocks per codeword (stored only in the [systematic](Layout::Systematic) layout).
    pub s: u16,
    /// Pointers per codeword: blocks already in the archive that are entangled with it.
    pub t: u16,
    /// Parity blocks per codeword; `p >= s` in the parity-only layout (where they are the only
    /// blocks stored), `p >= 1` in the systematic one.
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

    /// The payload size of every parity of a codeword carrying `len` bytes: `B` for a full
    /// codeword, and for a shorter one the least multiple of [`SHARD_ALIGN`] that holds
    /// `len / s` (rounded up), at most `B`. A small document is not padded to `s * B`: a
    /// 2 KiB codeword at (4, 8, 12) stores 12 payloads of 512 bytes, not 12 of `B`.
    ///
    /// Blocks written before shards existed have `B`-byte payloads whatever their length;
    /// readers accept both sizes (see [`Params::payload_sizes`]), and the keys tell them apart.
    #[must_use]
    pub fn shard(&self, len: u64) -> usize {
        let s = u64::from(self.s.max(1));
        let per = len.div_ceil(s).max(1);
        let aligned = per.div_ceil(SHARD_ALIGN as u64) * SHARD_ALIGN as u64;
        usize::try_from(aligned.min(u64::from(self.block_size))).unwrap_or(self.block())
    }

    /// The payload sizes a parity of a codeword carrying `len` bytes may have: its
    /// [`shard`](Params::shard), and `B` (the size of every payload before shards existed).
    /// One entry when they are equal.
    #[must_use]
    pub fn payload_sizes(&self, len: u64) -> PayloadSizes {
        PayloadSizes {
            shard: self.shard(len),
            block: self.block(),
        }
    }

    /// The payload sizes a stored block of a codeword of `layout` carrying `len` bytes may
    /// have: [`Params::payload_sizes`] for parity-only codewords, the shard alone for
    /// systematic ones (their format is newer than shards).
    #[must_use]
    pub fn payload_sizes_for(&self, len: u64, layout: Layout) -> PayloadSizes {
        let shard = self.shard(len);
        match layout {
            Layout::ParityOnly => self.payload_sizes(len),
            Layout::Systematic => PayloadSizes {
                shard,
                block: shard,
            },
        }
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
        self.validate_for(Layout::ParityOnly)
    }

    /// [`Params::validate`] for codewords of `layout`. Parity-only needs `p >= s` (a codeword
    /// decodes from `s + t` of its `t + p` symbols); systematic only `p >= 1` (its `s` stored
    /// sources are symbols too), the other checks being the same.
    pub fn validate_for(&self, layout: Layout) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidParams(m));
        if self.s == 0 {
            return bad("s must be at least 1".into());
        }
        match layout {
            Layout::ParityOnly if self.p < self.s => {
                return bad(format!("p ({}) must be >= s ({})", self.p, self.s));
            }
            Layout::Systematic if self.p == 0 => {
                return bad("p must be at least 1".into());
            }
            _ => {}
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

    #[test]
    fn shards_fit_the_codeword_and_never_exceed_b() {
        let p = Params::new(4, 8, 12, 256 * 1024);
        assert_eq!(p.shard(0), 64);
        assert_eq!(p.shard(1), 64);
        assert_eq!(p.shard(2048), 512);
        assert_eq!(p.shard(2049), 576);
        assert_eq!(p.shard(p.capacity()), 256 * 1024);
        assert_eq!(p.shard(p.capacity() - 1), 256 * 1024);
        assert_eq!(
            p.payload_sizes(2048).iter().collect::<Vec<_>>(),
            [512, 262_144]
        );
        assert_eq!(p.payload_sizes(p.capacity()).iter().count(), 1);
        // Small B: the alignment never takes a shard past B.
        let small = Params::new(2, 3, 4, 16);
        assert_eq!(small.shard(1), 16);
        for len in 0..=small.capacity() {
            let b = small.shard(len);
            assert!(b <= 16 && b % 2 == 0 && b as u64 * 2 >= len);
        }
        for len in (0..p.capacity()).step_by(4093) {
            let b = p.shard(len);
            assert!(b % SHARD_ALIGN == 0 && b <= p.block() && (b as u64) * 4 >= len);
        }
    }
}
