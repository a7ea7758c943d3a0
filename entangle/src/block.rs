//! The stored parity block format.
//!
//! ```text
//! offset size  field
//!      0    4  magic "ENTG"
//!      4    1  version (1)
//!      5    1  kind (0 = parity)
//!      6    2  s            (all integers little endian)
//!      8    2  t
//!     10    2  p
//!     12    4  block size B
//!     16    2  index j of this parity, j < p
//!     18    2  reserved, 0
//!     20   32  codeword id
//!     52    8  document length (bytes carried by the codeword, <= s * B)
//!     60   32  BLAKE3 of the document bytes
//!     92 32*t  pointer keys, in input order (input symbol s + i is pointer i)
//!      . 32*p  BLAKE3 of each parity payload of the codeword, in index order
//!      .    B  payload: recovery symbol j of the Reed-Solomon code
//! ```
//!
//! The block is self-describing: from any one parity a node learns the parameters, the
//! pointers, and the payload hashes of all its siblings, so it can rebuild and verify the
//! siblings and re-form their exact stored bytes (their headers differ only in `j`) without
//! any database or user key.

use crate::key::{BlockKey, CodewordId};
use crate::params::Params;
use crate::Error;

/// The four magic bytes that open every parity block.
pub const MAGIC: [u8; 4] = *b"ENTG";
/// The current format version.
pub const VERSION: u8 = 1;
const KIND_PARITY: u8 = 0;
/// Size of the fixed part of the header.
pub const FIXED_HEADER_LEN: usize = 92;

/// The header of a stored parity block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParityHeader {
    /// Code parameters of the codeword.
    pub params: Params,
    /// Index `j` of this parity among the codeword's `p`.
    pub index: u16,
    /// The codeword this parity belongs to.
    pub codeword: CodewordId,
    /// Length of the document bytes the codeword carries.
    pub len: u64,
    /// BLAKE3 of those document bytes.
    pub content_hash: [u8; 32],
    /// The `t` pointer keys, in input order.
    pub pointers: Vec<BlockKey>,
    /// BLAKE3 of every parity payload of the codeword (`p` entries).
    pub payload_hashes: Vec<[u8; 32]>,
}

/// Header length for `t` pointers and `p` parities.
#[must_use]
pub fn header_len(t: usize, p: usize) -> usize {
    FIXED_HEADER_LEN + 32 * (t + p)
}

impl ParityHeader {
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

    /// The exact stored bytes of this parity with `payload`.
    #[must_use]
    pub fn stored_bytes(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() + payload.len());
        self.encode_into(&mut out);
        out.extend_from_slice(payload);
        out
    }
}

/// The fields of a parity header that all parities of a codeword share (everything but the
/// index), borrowed: the encoder writes every header from one of these without cloning the
/// pointer and hash lists.
pub(crate) struct HeaderFields<'a> {
    pub params: &'a Params,
    pub codeword: &'a CodewordId,
    pub len: u64,
    pub content_hash: &'a [u8; 32],
    pub pointers: &'a [BlockKey],
    pub payload_hashes: &'a [[u8; 32]],
}

/// Writes the header of parity `index` into `out`, which is exactly
/// `header_len(pointers, payload_hashes)` bytes. The one serializer of the format: every
/// header (stored blocks, re-formed parities, [`ParityHeader::encode`]) comes from here.
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
    put(&MAGIC);
    put(&[VERSION, KIND_PARITY]);
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

/// A parsed parity block borrowing its payload from the stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParityRef<'a> {
    /// The header.
    pub header: ParityHeader,
    /// The `B` payload bytes.
    pub payload: &'a [u8],
}

/// Parses and checks stored parity bytes without copying the payload.
///
/// Rejects a wrong magic, version or kind, invalid parameters, an index `>= p`, a length
/// larger than `s * B`, a total size other than header + `B`, and a payload whose hash is not
/// the one its own header records.
pub fn parse(bytes: &[u8]) -> Result<ParityRef<'_>, Error> {
    parse_inner(bytes)
}

/// The fixed part of a checked header.
struct Fixed {
    params: Params,
    index: u16,
    codeword: CodewordId,
    len: u64,
    content_hash: [u8; 32],
}

/// Checks everything about `bytes` except the payload hash: magic, version, kind, parameters,
/// index, reserved field, total size and length. Allocates nothing.
fn parse_fixed(bytes: &[u8]) -> Result<Fixed, Error> {
    let mut r = Reader { bytes, pos: 0 };
    if r.array::<4>()? != MAGIC {
        return Err(Error::Malformed("bad magic".into()));
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(Error::Malformed(format!("unsupported version {version}")));
    }
    let kind = r.u8()?;
    if kind != KIND_PARITY {
        return Err(Error::Malformed(format!("unknown block kind {kind}")));
    }
    let params = Params::new(r.u16()?, r.u16()?, r.u16()?, r.u32()?);
    params
        .validate()
        .map_err(|e| Error::Malformed(format!("header parameters: {e}")))?;
    let index = r.u16()?;
    if index >= params.p {
        return Err(Error::Malformed(format!(
            "parity index {index} >= p {}",
            params.p
        )));
    }
    if r.u16()? != 0 {
        return Err(Error::Malformed("reserved field is not zero".into()));
    }
    // Check the total size before allocating anything sized by the header.
    let expected = header_len(params.t(), params.p()) + params.block();
    if bytes.len() != expected {
        return Err(Error::Malformed(format!(
            "block is {} bytes, header says {expected}",
            bytes.len()
        )));
    }
    let codeword = CodewordId(r.array()?);
    let len = r.u64()?;
    if len > params.capacity() {
        return Err(Error::Malformed(format!(
            "document length {len} exceeds s * B = {}",
            params.capacity()
        )));
    }
    let content_hash = r.array()?;
    debug_assert_eq!(r.pos, FIXED_HEADER_LEN);
    Ok(Fixed {
        params,
        index,
        codeword,
        len,
        content_hash,
    })
}

/// The parameters and payload of stored parity bytes already verified against their ring key
/// (hashing the payload again would prove nothing more): the checks of [`parse`] but the
/// payload hash, without building the header's lists.
pub(crate) fn verified_payload(bytes: &[u8]) -> Result<(Params, &[u8]), Error> {
    let f = parse_fixed(bytes)?;
    let start = header_len(f.params.t(), f.params.p());
    Ok((f.params, &bytes[start..]))
}

fn parse_inner(bytes: &[u8]) -> Result<ParityRef<'_>, Error> {
    let Fixed {
        params,
        index,
        codeword,
        len,
        content_hash,
    } = parse_fixed(bytes)?;
    let mut r = Reader {
        bytes,
        pos: FIXED_HEADER_LEN,
    };
    let mut pointers = Vec::with_capacity(params.t());
    for _ in 0..params.t() {
        pointers.push(BlockKey(r.array()?));
    }
    let mut payload_hashes = Vec::with_capacity(params.p());
    for _ in 0..params.p() {
        payload_hashes.push(r.array()?);
    }
    let payload = r.take(params.block())?;
    if *blake3::hash(payload).as_bytes() != payload_hashes[usize::from(index)] {
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

/// An owned parity block: header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParityBlock {
    /// The header.
    pub header: ParityHeader,
    /// The `B` payload bytes.
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
}
