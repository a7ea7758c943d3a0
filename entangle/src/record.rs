//! The per-codeword metadata record.

use serde::{Deserialize, Serialize};

use crate::block::{header_len, write_header, HeaderFields, ParityHeader};
use crate::key::{BlockKey, CodewordId};
use crate::params::Params;
use crate::Error;

/// What the ring keeps (replicated) about one codeword: enough to find, verify and re-form
/// every one of its blocks, and to rebuild any block it points at as input symbol `s + i`.
///
/// A parity's header is a pure function of the record and the parity's index
/// ([`CodewordRecord::header`]), so a payload rebuilt anywhere can be turned back into the
/// exact stored bytes and checked against [`CodewordRecord::parity_keys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodewordRecord {
    /// The codeword's id.
    pub id: CodewordId,
    /// Its parameters.
    pub params: Params,
    /// The `t` pointer keys, in input order (anchors included).
    pub pointers: Vec<BlockKey>,
    /// The ring keys of its `p` stored parities, in index order.
    pub parity_keys: Vec<BlockKey>,
    /// BLAKE3 of each parity payload, in index order (also carried in every parity header).
    pub payload_hashes: Vec<[u8; 32]>,
    /// Length of the document bytes carried.
    pub len: u64,
    /// BLAKE3 of the document bytes carried.
    pub content_hash: [u8; 32],
}

impl CodewordRecord {
    /// Checks the record's internal consistency (counts, length, distinct pointers).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| {
            Err(Error::InvalidRecord {
                id: self.id,
                reason,
            })
        };
        if let Err(e) = self.params.validate() {
            return bad(e.to_string());
        }
        if self.pointers.len() != self.params.t() {
            return bad(format!(
                "{} pointers, t = {}",
                self.pointers.len(),
                self.params.t
            ));
        }
        if self.parity_keys.len() != self.params.p() || self.payload_hashes.len() != self.params.p()
        {
            return bad(format!(
                "{} parity keys and {} payload hashes, p = {}",
                self.parity_keys.len(),
                self.payload_hashes.len(),
                self.params.p
            ));
        }
        if self.len > self.params.capacity() {
            return bad(format!("length {} exceeds s * B", self.len));
        }
        let mut ptrs = self.pointers.clone();
        ptrs.sort();
        ptrs.dedup();
        if ptrs.len() != self.pointers.len() {
            return bad("duplicate pointer".into());
        }
        Ok(())
    }

    /// The header of parity `index` (`index < p`).
    #[must_use]
    pub fn header(&self, index: u16) -> ParityHeader {
        ParityHeader {
            params: self.params,
            index,
            codeword: self.id,
            len: self.len,
            content_hash: self.content_hash,
            pointers: self.pointers.clone(),
            payload_hashes: self.payload_hashes.clone(),
        }
    }

    /// The header fields shared by all of this codeword's parities, borrowed.
    pub(crate) fn header_fields(&self) -> HeaderFields<'_> {
        HeaderFields {
            params: &self.params,
            codeword: &self.id,
            len: self.len,
            content_hash: &self.content_hash,
            pointers: &self.pointers,
            payload_hashes: &self.payload_hashes,
        }
    }

    /// The exact stored bytes of parity `index` (`index < p`) with `payload`: the same bytes as
    /// `self.header(index).stored_bytes(payload)`, built in one allocation without cloning the
    /// record's lists.
    #[must_use]
    pub fn stored_bytes(&self, index: u16, payload: &[u8]) -> Vec<u8> {
        let hlen = header_len(self.pointers.len(), self.payload_hashes.len());
        let mut out = Vec::with_capacity(hlen + payload.len());
        out.resize(hlen, 0);
        write_header(&mut out, &self.header_fields(), index);
        out.extend_from_slice(payload);
        out
    }

    /// Re-forms the stored bytes of parity `index` from its payload and checks them against the
    /// recorded key. `None` if the index is out of range or the bytes do not verify.
    #[must_use]
    pub fn reform_parity(&self, index: usize, payload: &[u8]) -> Option<Vec<u8>> {
        let key = self.parity_keys.get(index)?;
        let j = u16::try_from(index).ok()?;
        let stored = self.stored_bytes(j, payload);
        key.verifies(&stored).then_some(stored)
    }

    /// The index of `key` among the parities, if it is one.
    #[must_use]
    pub fn parity_index(&self, key: &BlockKey) -> Option<usize> {
        self.parity_keys.iter().position(|k| k == key)
    }

    /// Whether `header` (from a stored parity) describes this codeword.
    #[must_use]
    pub fn matches_header(&self, header: &ParityHeader) -> bool {
        header.params == self.params
            && header.codeword == self.id
            && header.len == self.len
            && header.content_hash == self.content_hash
            && header.pointers == self.pointers
            && header.payload_hashes == self.payload_hashes
    }
}
