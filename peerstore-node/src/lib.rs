//! The PeerStore node daemon: Chord over libp2p, the block store, replication and repair.
//! Placeholder: built under the peerstore-node issue.
