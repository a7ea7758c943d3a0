//! The stored block format: parities (both layouts) and sources (systematic layout).
//!
//! ```text
//! offset size  field
//!      0    4  magic "ENTG"
//!      4    1  version: 1 = parity-only codeword, 2 = systematic codeword
//!      5    1  kind: 0 = parity, 1 = source (version 2 only)
//!      6    2  s            (all integers little endian)
//!      8    2  t
//!     10    2  p
//!     12    4  block size B
//!     16    2  stored index j: version 1, j < p (parity j); version 2, j < s + p
//!              (j < s: source j, kind 1; else parity j - s, kind 0)
//!     18    2  reserved, 0
//!     20   32  codeword id
//!     52    8  document length (bytes carried by the codeword, <= s * B)
//!     60   32  BLAKE3 of the document bytes
//!     92 32*t  pointer keys, in input order (input symbol s + i is pointer i)
//!      . 32*n  BLAKE3 of the payload of each stored block of the codeword, in stored index
//!              order: n = p (version 1) or s + p (version 2, sources first)
//!      .    b  payload: a parity's is recovery symbol j (j - s) of the Reed-Solomon code, a
//!              source's is input symbol j (the document's bytes j b .. (j + 1) b, the last
//!              source zero-padded)
//! ```
//!
//! The payload size `b` is the codeword's shard ([`Params::shard`]): `B` for a full codeword,
//! less for a short one (`len / s` rounded up to 64 bytes), so a small document is not padded
//! to `s * B` on disk. Version 1 blocks written before shards carry `B` bytes whatever their
//! length; both sizes parse (nothing in the header says which: the ring key, a hash of the
//! exact bytes, does). Version 2 blocks always carry exactly the shard.
//!
//! The block is self-describing: from any one block a node learns the parameters, the
//! pointers, and the payload hashes of all its siblings, so it can rebuild and verify the
//! siblings and re-form their exact stored bytes (their headers differ only in `j`, and for
//! version 2 in the kind that `j` implies) without any database or user key.
//!
//! The types keep their historical names ([`ParityHeader`], [`ParityBlock`], [`ParityRef`]):
//! they describe source blocks too ([`ParityHeader::is_source`]).

use crate::key::{BlockKey, CodewordId};
use crate::params::{Layout, Params};
use crate::Error;

/// The four magic bytes that open every stored block.
pub const MAGIC: [u8; 4] = *b"ENTG";
/// The format version of parity-only codewords' blocks.
pub const VERSION: u8 = 1;
/// The format version of systematic codewords' blocks.
pub const VERSION_SYSTEMATIC: u8 = 2;
/// Block kind of a parity.
pub const KIND_PARITY: u8 = 0;
/// Block kind of a source (version 2 only).
pub const KIND_SOURCE: u8 = 1;
/// Size of the fixed part of the header.
pub const FIXED_HEADER_LEN: usize = 92;

/// The header of a stored block (a parity, or a systematic codeword's source).
///
/// Its layout, and so its version, is that of its hash list: `p` hashes for a parity-only
/// codeword, `s + p` for a systematic one ([`ParityHeader::layout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParityHeader {
    /// Code parameters of the codeword.
    pub params: Params,
    /// Stored index `j` of this block among the codeword's stored blocks (see
    /// [`Layout`]: for a parity-only codeword, parity `j`).
    pub index: u16,
    /// The codeword this parity belongs to.
    pub codeword: CodewordId,
    /// Length of the document bytes the codeword carries.
    pub len: u64,
    /// BLAKE3 of those document bytes.
    pub content_hash: [u8; 32],
    /// The `t` pointer keys, in input order.
    pub pointers: Vec<BlockKey>,
    /// BLAKE3 of the payload of every stored block of the codeword, in stored index order
    /// (`p` entries for a parity-only codeword, `s + p` for a systematic one).
    pub payload_hashes: Vec<[u8; 32]>,
}

/// Header length for `t` pointers and `n` stored blocks (`n = p` for a parity-only codeword,
/// `s + p` for a systematic one: [`Layout::stored`]).
#[must_use]
pub fn header_len(t: usize, n: usize) -> usize {
    FIXED_HEADER_LEN + 32 * (t + n)
}

/// Header length of the stored blocks of a codeword of `params` in `layout`.
#[must_use]
pub fn header_len_for(params: &Params, layout: Layout) -> usize {
    header_len(params.t(), layout.stored(params))
}

/// The layout a header with `n` payload hashes describes (parity-only unless `n = s + p`),
/// and the version and kind byte of its block `index`.
fn version_and_kind(params: &Params, n: usize, index: u16) -> (Layout, u8, u8) {
    match Layout::of_stored(params, n) {
        Some(Layout::Systematic) => {
            let kind = if usize::from(index) < params.s() {
                KIND_SOURCE
            } else {
                KIND_PARITY
            };
            (Layout::Systematic, VERSION_SYSTEMATIC, kind)
        }
        _ => (Layout::ParityOnly, VERSION, KIND_PARITY),
    }
}

impl ParityHeader {
    /// The layout of the block's codeword (from the length of its hash list).
    #[must_use]
    pub fn layout(&self) -> Layout {
        version_and_kind(&self.params, self.payload_hashes.len(), self.index).0
    }

    /// Whether this is a systematic codeword's source block (stored index `< s`).
    #[must_use]
    pub fn is_source(&self) -> bool {
        version_and_kind(&self.params, self.payload_hashes.len(), self.index).2 == KIND_SOURCE
    }

    /// Serialized length of this header.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        header_len(self.pointers.len(), self.payload_hashes.len())
    }

    /// Serializes the header (without payload).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() + self.params.block());
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        write_header(
            &mut out[start..],
            &HeaderFields {
                params: &self.params,
                codeword: &self.codeword,
                len: self.len,
                content_hash: &self.content_hash,
                pointers: &self.pointers,
                payload_hashes: &self.payload_hashes,
            },
            self.index,
        );
    }

    /// The exact stored bytes of this block with `payload`.
    #[must_use]
    pub fn stored_bytes(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() + payload.len());
        self.encode_into(&mut out);
        out.extend_from_slice(payload);
        out
    }
}

/// The fields of a header that all stored blocks of a codeword share (everything but the
/// index and the kind it implies), borrowed: the encoder writes every header from one of
/// these without cloning the pointer and hash lists.
pub(crate) struct HeaderFields<'a> {
    pub params: &'a Params,
    pub codeword: &'a CodewordId,
    pub len: u64,
    pub content_hash: &'a [u8; 32],
    pub pointers: &'a [BlockKey],
    pub payload_hashes: &'a [[u8; 32]],
}

/// Writes the header of stored block `index` into `out`, which is exactly
/// `header_len(pointers, payload_hashes)` bytes. The one serializer of the format: every
/// header (stored blocks, re-formed blocks, [`ParityHeader::encode`]) comes from here. The
/// version and kind follow from the number of payload hashes and the index.
pub(crate) fn write_header(out: &mut [u8], h: &HeaderFields<'_>, index: u16) {
    debug_assert_eq!(
        out.len(),
        header_len(h.pointers.len(), h.payload_hashes.len())
    );
    let mut pos = 0;
    let mut put = |bytes: &[u8]| {
        out[pos..pos + bytes.len()].copy_from_slice(bytes);
        pos += bytes.len();
    };
    let (_, version, kind) = version_and_kind(h.params, h.payload_hashes.len(), index);
    put(&MAGIC);
    put(&[version, kind]);
    put(&h.params.s.to_le_bytes());
    put(&h.params.t.to_le_bytes());
    put(&h.params.p.to_le_bytes());
    put(&h.params.block_size.to_le_bytes());
    put(&index.to_le_bytes());
    put(&0u16.to_le_bytes());
    put(&h.codeword.0);
    put(&h.len.to_le_bytes());
    put(h.content_hash);
    for k in h.pointers {
        put(&k.0);
    }
    for x in h.payload_hashes {
        put(x);
    }
}

/// A bounds-checked little-endian reader over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| Error::Malformed("truncated header".into()))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// A parsed stored block borrowing its payload from the stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParityRef<'a> {
    /// The header.
    pub header: ParityHeader,
    /// The payload bytes (the codeword's shard, or `B` for version 1 blocks written before
    /// shards).
    pub payload: &'a [u8],
}

/// Parses and checks stored block bytes (either version, either kind) without copying the
/// payload.
///
/// Rejects a wrong magic, an unknown version, a kind other than 0 (version 1) or other than
/// the one the index implies (version 2), invalid parameters (for the version's layout:
/// [`Params::validate_for`]), an index `>= p` (version 1) or `>= s + p` (version 2), a
/// non-zero reserved field, a length larger than `s * B`, a total size other than header +
/// shard (or, version 1 only, header + `B`), and a payload whose hash is not the one its own
/// header records. Version 1 blocks parse exactly as before version 2 existed.
pub fn parse(bytes: &[u8]) -> Result<ParityRef<'_>, Error> {
    parse_inner(bytes, true)
}

/// As [`parse`], without hashing the payload: for a reader that checks the bytes it puts
/// together from several blocks against a hash of its own (a document's content hash), so
/// that each byte is hashed once, not twice. Everything else is checked as by [`parse`].
pub fn parse_unverified(bytes: &[u8]) -> Result<ParityRef<'_>, Error> {
    parse_inner(bytes, false)
}

/// The fixed part of a checked header.
struct Fixed {
    params: Params,
    layout: Layout,
    index: u16,
    codeword: CodewordId,
    len: u64,
    content_hash: [u8; 32],
}

impl Fixed {
    /// Stored blocks of the codeword: the length of the header's hash list.
    fn stored(&self) -> usize {
        self.layout.stored(&self.params)
    }

    fn header_len(&self) -> usize {
        header_len(self.params.t(), self.stored())
    }
}

/// Checks everything about `bytes` except the payload hash: magic, version, kind, parameters,
/// index, reserved field, total size and length. Allocates nothing.
fn parse_fixed(bytes: &[u8]) -> Result<Fixed, Error> {
    let mut r = Reader { bytes, pos: 0 };
    if r.array::<4>()? != MAGIC {
        return Err(Error::Malformed("bad magic".into()));
    }
    let version = r.u8()?;
    let layout = match version {
        VERSION => Layout::ParityOnly,
        VERSION_SYSTEMATIC => Layout::Systematic,
        _ => return Err(Error::Malformed(format!("unsupported version {version}"))),
    };
    let kind = r.u8()?;
    let known_kind = match layout {
        Layout::ParityOnly => kind == KIND_PARITY,
        Layout::Systematic => kind == KIND_PARITY || kind == KIND_SOURCE,
    };
    if !known_kind {
        return Err(Error::Malformed(format!("unknown block kind {kind}")));
    }
    let params = Params::new(r.u16()?, r.u16()?, r.u16()?, r.u32()?);
    params
        .validate_for(layout)
        .map_err(|e| Error::Malformed(format!("header parameters: {e}")))?;
    let index = r.u16()?;
    let stored = layout.stored(&params);
    if usize::from(index) >= stored {
        return Err(Error::Malformed(match layout {
            Layout::ParityOnly => format!("parity index {index} >= p {}", params.p),
            Layout::Systematic => format!("stored index {index} >= s + p {stored}"),
        }));
    }
    if version_and_kind(&params, stored, index).2 != kind {
        return Err(Error::Malformed(format!(
            "block {index} of a systematic codeword with s = {} has kind {kind}",
            params.s
        )));
    }
    if r.u16()? != 0 {
        return Err(Error::Malformed("reserved field is not zero".into()));
    }
    let codeword = CodewordId(r.array()?);
    let len = r.u64()?;
    if len > params.capacity() {
        return Err(Error::Malformed(format!(
            "document length {len} exceeds s * B = {}",
            params.capacity()
        )));
    }
    // Check the total size before allocating anything sized by the header: the payload is
    // the codeword's shard, or (version 1 only) B, for blocks written before shards.
    let hlen = header_len(params.t(), stored);
    let sizes = params.payload_sizes_for(len, layout);
    if !bytes
        .len()
        .checked_sub(hlen)
        .is_some_and(|n| sizes.allows(n))
    {
        return Err(Error::Malformed(format!(
            "block is {} bytes, header says {} + {} (or {})",
            bytes.len(),
            hlen,
            sizes.shard,
            sizes.block
        )));
    }
    let content_hash = r.array()?;
    debug_assert_eq!(r.pos, FIXED_HEADER_LEN);
    Ok(Fixed {
        params,
        layout,
        index,
        codeword,
        len,
        content_hash,
    })
}

/// The parameters and payload of stored bytes already verified against their ring key
/// (hashing the payload again would prove nothing more): the checks of [`parse`] but the
/// payload hash, without building the header's lists. Any block of either version and kind.
pub(crate) fn verified_payload(bytes: &[u8]) -> Result<(Params, &[u8]), Error> {
    let f = parse_fixed(bytes)?;
    Ok((f.params, &bytes[f.header_len()..]))
}

fn parse_inner(bytes: &[u8], verify_payload: bool) -> Result<ParityRef<'_>, Error> {
    let fixed = parse_fixed(bytes)?;
    let (stored, hlen) = (fixed.stored(), fixed.header_len());
    let Fixed {
        params,
        index,
        codeword,
        len,
        content_hash,
        ..
    } = fixed;
    let mut r = Reader {
        bytes,
        pos: FIXED_HEADER_LEN,
    };
    let mut pointers = Vec::with_capacity(params.t());
    for _ in 0..params.t() {
        pointers.push(BlockKey(r.array()?));
    }
    let mut payload_hashes = Vec::with_capacity(stored);
    for _ in 0..stored {
        payload_hashes.push(r.array()?);
    }
    let payload = r.take(bytes.len() - hlen)?;
    if verify_payload && *blake3::hash(payload).as_bytes() != payload_hashes[usize::from(index)] {
        return Err(Error::Malformed(
            "payload does not match its recorded hash".into(),
        ));
    }
    Ok(ParityRef {
        header: ParityHeader {
            params,
            index,
            codeword,
            len,
            content_hash,
            pointers,
            payload_hashes,
        },
        payload,
    })
}

/// An owned stored block (a parity, or a systematic codeword's source): header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParityBlock {
    /// The header.
    pub header: ParityHeader,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl ParityBlock {
    /// The exact stored bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        self.header.stored_bytes(&self.payload)
    }

    /// Parses stored bytes (see [`parse`] for the checks).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let r = parse(bytes)?;
        Ok(ParityBlock {
            header: r.header,
            payload: r.payload.to_vec(),
        })
    }

    /// The block's ring key.
    #[must_use]
    pub fn key(&self) -> BlockKey {
        BlockKey::of(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ParityBlock {
        let params = Params::new(2, 3, 4, 16);
        let payload = vec![7u8; 16];
        let mut payload_hashes = vec![[1u8; 32]; 4];
        payload_hashes[2] = *blake3::hash(&payload).as_bytes();
        ParityBlock {
            header: ParityHeader {
                params,
                index: 2,
                codeword: CodewordId([9; 32]),
                len: 30,
                content_hash: [3; 32],
                pointers: vec![BlockKey([4; 32]), BlockKey([5; 32]), BlockKey([6; 32])],
                payload_hashes,
            },
            payload,
        }
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let bytes = b.encode();
        assert_eq!(bytes.len(), header_len(3, 4) + 16);
        assert_eq!(ParityBlock::decode(&bytes).unwrap(), b);
    }

    /// The serializer as it was (one `extend_from_slice` per field): [`write_header`] writes
    /// the same bytes.
    fn reference_header(h: &ParityHeader) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(KIND_PARITY);
        out.extend_from_slice(&h.params.s.to_le_bytes());
        out.extend_from_slice(&h.params.t.to_le_bytes());
        out.extend_from_slice(&h.params.p.to_le_bytes());
        out.extend_from_slice(&h.params.block_size.to_le_bytes());
        out.extend_from_slice(&h.index.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&h.codeword.0);
        out.extend_from_slice(&h.len.to_le_bytes());
        out.extend_from_slice(&h.content_hash);
        for k in &h.pointers {
            out.extend_from_slice(&k.0);
        }
        for x in &h.payload_hashes {
            out.extend_from_slice(x);
        }
        out
    }

    #[test]
    fn header_bytes_are_unchanged() {
        let mut b = sample();
        for (t, p) in [(3, 4), (0, 1), (8, 12), (30, 3)] {
            b.header.params = Params::new(1, t as u16, p as u16, 16);
            b.header.pointers = (0..t).map(|i| BlockKey([i as u8; 32])).collect();
            b.header.payload_hashes = (0..p).map(|i| [100 + i as u8; 32]).collect();
            b.header.index = p as u16 - 1;
            let want = reference_header(&b.header);
            assert_eq!(b.header.encode(), want);
            let mut stored = want.clone();
            stored.extend_from_slice(&b.payload);
            assert_eq!(b.header.stored_bytes(&b.payload), stored);
            assert_eq!(b.encode(), stored);
        }
    }

    #[test]
    fn verified_payload_checks_like_parse() {
        let bytes = sample().encode();
        let (params, payload) = verified_payload(&bytes).unwrap();
        assert_eq!(params, sample().header.params);
        assert_eq!(payload, &sample().payload[..]);
        for n in 0..bytes.len() {
            assert!(verified_payload(&bytes[..n]).is_err(), "prefix {n}");
        }
        // It does not check the payload hash (the caller verified the whole block's key).
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(verified_payload(&b).is_ok());
        assert!(parse(&b).is_err());
    }

    #[test]
    fn parse_unverified_checks_all_but_the_payload_hash() {
        let bytes = sample().encode();
        let r = parse_unverified(&bytes).unwrap();
        assert_eq!(r, parse(&bytes).unwrap());
        for n in 0..bytes.len() {
            assert!(parse_unverified(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(parse_unverified(&b).is_ok());
        assert!(parse(&b).is_err());
        let mut b = bytes.clone();
        b[0] ^= 1;
        assert!(parse_unverified(&b).is_err(), "bad magic");
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(ParityBlock::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ParityBlock::decode(&longer).is_err());
    }

    #[test]
    fn bad_fields_are_rejected() {
        let bytes = sample().encode();
        let cases: Vec<(usize, &[u8])> = vec![
            (0, b"XNTG"),                    // magic
            (4, &[2]),                       // version
            (5, &[1]),                       // kind
            (6, &[0, 0]),                    // s = 0
            (10, &[1, 0]),                   // p < s
            (12, &[0xff, 0xff, 0xff, 0x7f]), // huge block size
            (12, &[17, 0, 0, 0]),            // odd block size
            (8, &[0xff, 0xff]),              // huge t: length mismatch or params
            (16, &[4, 0]),                   // index >= p
            (18, &[1, 0]),                   // reserved
            (52, &[0xff; 8]),                // length > s * B
            (316, &[0]),                     // payload byte: hash mismatch
        ];
        for (off, patch) in cases {
            let mut b = bytes.clone();
            b[off..off + patch.len()].copy_from_slice(patch);
            assert!(ParityBlock::decode(&b).is_err(), "patch at {off}");
        }
    }

    /// A version 2 block: stored index `index` of a systematic (2, 3, 4) codeword carrying
    /// `len` bytes, with a payload of the codeword's shard.
    fn sample_v2(index: u16, block_size: u32, len: u64) -> ParityBlock {
        let params = Params::new(2, 3, 4, block_size);
        let payload = vec![7u8 ^ index as u8; params.shard(len)];
        let mut payload_hashes: Vec<[u8; 32]> = (0..6).map(|i| [50 + i as u8; 32]).collect();
        payload_hashes[usize::from(index)] = *blake3::hash(&payload).as_bytes();
        ParityBlock {
            header: ParityHeader {
                params,
                index,
                codeword: CodewordId([9; 32]),
                len,
                content_hash: [3; 32],
                pointers: vec![BlockKey([4; 32]), BlockKey([5; 32]), BlockKey([6; 32])],
                payload_hashes,
            },
            payload,
        }
    }

    #[test]
    fn version_2_round_trip_and_kinds() {
        for index in 0..6u16 {
            let b = sample_v2(index, 16, 30);
            let bytes = b.encode();
            assert_eq!(bytes.len(), header_len(3, 6) + 16);
            assert_eq!(
                bytes.len(),
                header_len_for(&b.header.params, Layout::Systematic) + 16
            );
            assert_eq!(bytes[4], VERSION_SYSTEMATIC);
            let source = index < 2;
            assert_eq!(bytes[5], if source { KIND_SOURCE } else { KIND_PARITY });
            let back = ParityBlock::decode(&bytes).unwrap();
            assert_eq!(back, b);
            assert_eq!(back.header.layout(), Layout::Systematic);
            assert_eq!(back.header.is_source(), source);
            let (params, payload) = verified_payload(&bytes).unwrap();
            assert_eq!((params, payload), (b.header.params, &b.payload[..]));
        }
        // Version 1 blocks are parity-only and never sources.
        assert_eq!(sample().header.layout(), Layout::ParityOnly);
        assert!(!sample().header.is_source());
        assert_eq!(sample().encode()[4..6], [VERSION, KIND_PARITY]);
    }

    #[test]
    fn version_2_truncations_and_bad_fields_are_rejected() {
        let bytes = sample_v2(1, 16, 30).encode();
        for n in 0..bytes.len() {
            assert!(ParityBlock::decode(&bytes[..n]).is_err(), "prefix {n}");
            assert!(verified_payload(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ParityBlock::decode(&longer).is_err());
        let cases: Vec<(usize, &[u8])> = vec![
            (4, &[3]),                       // unknown version
            (4, &[1]),                       // version 1 has no source kind
            (5, &[0]),                       // a source index with the parity kind
            (5, &[2]),                       // unknown kind
            (10, &[0, 0]),                   // p = 0
            (16, &[6, 0]),                   // index >= s + p
            (16, &[3, 0]),                   // a parity index with the source kind
            (18, &[0, 1]),                   // reserved
            (52, &[33, 0, 0, 0]),            // length > s * B
            (header_len(3, 6) + 3, &[0xff]), // payload byte: hash mismatch
        ];
        for (off, patch) in cases {
            let mut b = bytes.clone();
            b[off..off + patch.len()].copy_from_slice(patch);
            assert!(ParityBlock::decode(&b).is_err(), "patch at {off}");
        }
        // A parity (index 3) with the source kind.
        let mut b = sample_v2(3, 16, 30).encode();
        b[5] = KIND_SOURCE;
        assert!(ParityBlock::decode(&b).is_err());
        // A parity read as version 1: its hash list is then s entries too long for its size.
        b[4] = VERSION;
        b[5] = KIND_PARITY;
        assert!(ParityBlock::decode(&b).is_err());
        assert!(verified_payload(&b).is_err());
        // p < s is a valid systematic code (and not a valid parity-only one).
        let mut small = sample_v2(0, 16, 30);
        small.header.params = Params::new(2, 3, 1, 16);
        small.header.payload_hashes.truncate(3);
        let bytes = small.encode();
        assert_eq!(ParityBlock::decode(&bytes).unwrap(), small);
        let mut as_v1 = bytes.clone();
        as_v1[4] = VERSION;
        as_v1[5] = KIND_PARITY;
        assert!(ParityBlock::decode(&as_v1).is_err());
    }

    /// Version 1 accepts a payload of B bytes for a short codeword (written before shards);
    /// version 2, newer than shards, only the shard.
    #[test]
    fn version_2_payload_is_exactly_the_shard() {
        let short = sample_v2(4, 256, 10);
        assert_eq!(short.payload.len(), 64);
        assert!(ParityBlock::decode(&short.encode()).is_ok());
        let mut padded = short.clone();
        padded.payload.resize(256, 0);
        padded.header.payload_hashes[4] = *blake3::hash(&padded.payload).as_bytes();
        assert!(ParityBlock::decode(&padded.encode()).is_err());
        let mut v1 = sample();
        v1.header.params = Params::new(2, 3, 4, 256);
        v1.header.len = 10;
        v1.payload = vec![1; 256];
        v1.header.payload_hashes[2] = *blake3::hash(&v1.payload).as_bytes();
        assert!(ParityBlock::decode(&v1.encode()).is_ok());
    }
}
