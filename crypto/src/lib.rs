//! Pure cryptography for PeerStore (user identity, chunk encryption, content ids, signed root
//! records). Placeholder: built under the client/crypto issue.
