//! The PeerStore client: encrypted backup, getfile/restore, sync watcher.
//! Placeholder: built under the client issue.
