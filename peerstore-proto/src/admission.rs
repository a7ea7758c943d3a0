//! Admission: who may speak to a ring's nodes, and as what.
//!
//! A ring has an Ed25519 **ring key**. Its public half is every member's root of trust; its
//! secret half stays with the operator (the node that created the ring keeps it in
//! `ring.key`). The ring key signs **certificates** that bind a libp2p PeerId to a [`Role`]:
//! `Member` (a node: may speak the chord and member protocols, and is put into routing state),
//! `User` (a client: may speak the client protocol, and its writes are counted against its
//! quota) or `Admin` (may also speak the admin protocol). A connection is authenticated by
//! libp2p (TLS or Noise prove the PeerId), so a certificate for that PeerId, sent in the
//! [`Hello`] that opens every conversation, proves the role; the certificate itself is public.
//!
//! An [`Invite`] is what an operator hands to a new node or user: a fresh key pair, its
//! certificate and where to find the ring, as one line of text. Because the operator draws the
//! key pair, the operator and not the newcomer chooses the newcomer's ring position.
//!
//! A signed [`Revocations`] list names PeerIds whose certificates no longer count; nodes pass
//! the newest list they have to every peer they greet, so it reaches the whole ring.

use libp2p::identity::{ed25519, Keypair, PeerId};
use serde::{Deserialize, Serialize};

use crate::frame::{Audience, Bulk, Message};

/// Longest label of a certificate (a name for humans, e.g. "node-3" or "alice").
pub const MAX_LABEL: usize = 64;
/// Most PeerIds in a revocation list.
pub const MAX_REVOKED: usize = 4096;
/// Most bootstrap addresses in an invite.
pub const MAX_BOOTSTRAP: usize = 16;
/// Longest bootstrap address in an invite.
pub const MAX_ADDR_LEN: usize = 256;
/// Bound on one hello frame (a certificate and a full revocation list).
pub const MAX_HELLO_FRAME: usize = 256 << 10;
/// What an invite line starts with.
pub const INVITE_PREFIX: &str = "peerstore-invite-1:";

/// Domain separation of what the ring key signs.
const CERT_DOMAIN: &[u8] = b"peerstore/certificate/1";
const REVOKE_DOMAIN: &[u8] = b"peerstore/revocations/1";

/// What a certificate lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A ring node: chord and member protocols, and the client protocol.
    Member,
    /// A client of the ring: the client protocol only.
    User,
    /// An administrator: the admin and client protocols.
    Admin,
}

impl Role {
    /// Whether this role may speak `audience`'s protocol.
    #[must_use]
    pub fn may(self, audience: Audience) -> bool {
        match audience {
            Audience::Chord | Audience::Member => self == Role::Member,
            Audience::Client | Audience::Hello => true,
            Audience::Admin => self == Role::Admin,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Member => "member",
            Role::User => "user",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "member" | "node" => Ok(Role::Member),
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role '{other}': use member, user or admin")),
        }
    }
}

/// Why a certificate, invite or list is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("{0}")]
    Malformed(String),
    #[error("the certificate is not signed by this ring's key (it belongs to another ring, or was forged)")]
    BadSignature,
    #[error("the certificate is for peer {cert}, but the connection is from {peer}")]
    WrongPeer { cert: String, peer: String },
    #[error("the certificate of peer {0} has been revoked by the ring's operator")]
    Revoked(String),
}

/// The public half of a ring key: what identifies a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RingPublic(pub [u8; 32]);

impl RingPublic {
    fn key(&self) -> Result<ed25519::PublicKey, AdmissionError> {
        ed25519::PublicKey::try_from_bytes(&self.0)
            .map_err(|_| AdmissionError::Malformed("the ring key is not an Ed25519 key".into()))
    }

    /// A short, stable name of the ring for logs and status: the first 8 bytes in hex.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        hex::encode(&blake3::hash(&self.0).as_bytes()[..8])
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<RingPublic, AdmissionError> {
        let bytes = hex::decode(s.trim())
            .map_err(|_| AdmissionError::Malformed("the ring key is not hex".into()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| AdmissionError::Malformed("the ring key is not 32 bytes".into()))?;
        Ok(RingPublic(arr))
    }
}

/// The secret half of a ring key: whoever holds it can admit and revoke.
pub struct RingKey(ed25519::Keypair);

impl RingKey {
    /// A new random ring key.
    #[must_use]
    pub fn generate() -> RingKey {
        RingKey(ed25519::Keypair::generate())
    }

    /// The 32-byte secret (what `ring.key` holds).
    #[must_use]
    pub fn secret_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.secret().as_ref());
        out
    }

    pub fn from_secret(mut bytes: [u8; 32]) -> Result<RingKey, AdmissionError> {
        let secret = ed25519::SecretKey::try_from_bytes(&mut bytes)
            .map_err(|_| AdmissionError::Malformed("the ring key file is not a key".into()))?;
        Ok(RingKey(ed25519::Keypair::from(secret)))
    }

    #[must_use]
    pub fn public(&self) -> RingPublic {
        RingPublic(self.0.public().to_bytes())
    }

    /// Signs a certificate for `peer` in `role`.
    #[must_use]
    pub fn certify(&self, peer: &PeerId, role: Role, label: &str) -> Certificate {
        let mut label = label.to_string();
        label.truncate(MAX_LABEL);
        let mut cert = Certificate {
            subject: peer.to_bytes(),
            role,
            label,
            signature: Vec::new(),
        };
        cert.signature = self.0.sign(&cert.signed_bytes(&self.public()));
        cert
    }

    /// Signs a revocation list.
    #[must_use]
    pub fn revoke(&self, seq: u64, mut peers: Vec<PeerId>) -> Revocations {
        peers.sort();
        peers.dedup();
        peers.truncate(MAX_REVOKED);
        let mut list = Revocations {
            seq,
            peers: peers
                .iter()
                .map(|p| serde_bytes::ByteBuf::from(p.to_bytes()))
                .collect(),
            signature: Vec::new(),
        };
        list.signature = self.0.sign(&list.signed_bytes(&self.public()));
        list
    }

    /// An invite: a fresh key pair, its certificate and the ring's addresses.
    pub fn invite(&self, role: Role, label: &str, bootstrap: Vec<String>) -> Invite {
        let keypair = ed25519::Keypair::generate();
        self.invite_for(keypair, role, label, bootstrap)
    }

    /// An invite with a given key pair (e.g. one drawn for an even ring position).
    pub fn invite_for(
        &self,
        keypair: ed25519::Keypair,
        role: Role,
        label: &str,
        mut bootstrap: Vec<String>,
    ) -> Invite {
        let peer = Keypair::from(keypair.clone()).public().to_peer_id();
        bootstrap.retain(|a| a.len() <= MAX_ADDR_LEN);
        bootstrap.truncate(MAX_BOOTSTRAP);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(keypair.secret().as_ref());
        Invite {
            ring: self.public(),
            secret,
            certificate: self.certify(&peer, role, label),
            bootstrap,
        }
    }
}

/// A ring's statement that `subject` holds `role`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The PeerId's bytes.
    #[serde(with = "serde_bytes")]
    pub subject: Vec<u8>,
    pub role: Role,
    pub label: String,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Certificate {
    fn signed_bytes(&self, ring: &RingPublic) -> Vec<u8> {
        let mut out = Vec::with_capacity(CERT_DOMAIN.len() + 32 + self.subject.len() + 80);
        out.extend_from_slice(CERT_DOMAIN);
        out.extend_from_slice(&ring.0);
        out.push(self.subject.len() as u8);
        out.extend_from_slice(&self.subject);
        out.push(match self.role {
            Role::Member => 1,
            Role::User => 2,
            Role::Admin => 3,
        });
        out.extend_from_slice(self.label.as_bytes());
        out
    }

    /// The PeerId the certificate names.
    pub fn peer(&self) -> Result<PeerId, AdmissionError> {
        if self.subject.len() > 64 {
            return Err(AdmissionError::Malformed(
                "certificate subject too long".into(),
            ));
        }
        PeerId::from_bytes(&self.subject)
            .map_err(|_| AdmissionError::Malformed("certificate subject is not a PeerId".into()))
    }

    /// Checks the certificate against the ring's key and the peer at the other end of the
    /// connection, and that it is not revoked.
    pub fn verify(
        &self,
        ring: &RingPublic,
        peer: &PeerId,
        revoked: &Revocations,
    ) -> Result<Role, AdmissionError> {
        if self.label.len() > MAX_LABEL || self.signature.len() != 64 {
            return Err(AdmissionError::Malformed("malformed certificate".into()));
        }
        let subject = self.peer()?;
        if !ring
            .key()?
            .verify(&self.signed_bytes(ring), &self.signature)
        {
            return Err(AdmissionError::BadSignature);
        }
        if subject != *peer {
            return Err(AdmissionError::WrongPeer {
                cert: subject.to_string(),
                peer: peer.to_string(),
            });
        }
        if revoked.contains(peer) {
            return Err(AdmissionError::Revoked(peer.to_string()));
        }
        Ok(self.role)
    }
}

/// The ring's list of revoked PeerIds; a higher `seq` replaces a lower one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    pub seq: u64,
    pub peers: Vec<serde_bytes::ByteBuf>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Revocations {
    fn signed_bytes(&self, ring: &RingPublic) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(REVOKE_DOMAIN);
        out.extend_from_slice(&ring.0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        for p in &self.peers {
            out.push(p.len() as u8);
            out.extend_from_slice(p);
        }
        out
    }

    /// Whether `peer` is on the list.
    #[must_use]
    pub fn contains(&self, peer: &PeerId) -> bool {
        let b = peer.to_bytes();
        self.peers.iter().any(|p| p.as_slice() == b.as_slice())
    }

    /// The revoked PeerIds (entries that are not PeerIds are skipped).
    #[must_use]
    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter_map(|p| PeerId::from_bytes(p).ok())
            .collect()
    }

    /// Checks the list's signature (the empty list with seq 0 needs none).
    pub fn verify(&self, ring: &RingPublic) -> Result<(), AdmissionError> {
        if self.seq == 0 && self.peers.is_empty() {
            return Ok(());
        }
        if self.peers.len() > MAX_REVOKED
            || self.peers.iter().any(|p| p.len() > 64)
            || self.signature.len() != 64
        {
            return Err(AdmissionError::Malformed(
                "malformed revocation list".into(),
            ));
        }
        if ring
            .key()?
            .verify(&self.signed_bytes(ring), &self.signature)
        {
            Ok(())
        } else {
            Err(AdmissionError::BadSignature)
        }
    }
}

/// What a new node or user is started with: its key pair, its certificate, the ring's public
/// key and addresses of ring members to contact.
#[derive(Clone, Serialize, Deserialize)]
pub struct Invite {
    pub ring: RingPublic,
    /// The Ed25519 secret key of the invited peer.
    pub secret: [u8; 32],
    pub certificate: Certificate,
    pub bootstrap: Vec<String>,
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("ring", &self.ring.fingerprint())
            .field("role", &self.certificate.role)
            .field("label", &self.certificate.label)
            .finish_non_exhaustive()
    }
}

impl Invite {
    /// The invite as one line of text.
    #[must_use]
    pub fn to_line(&self) -> String {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        format!("{INVITE_PREFIX}{}", hex::encode(bytes))
    }

    /// Reads an invite line (surrounding white space ignored), checking its certificate.
    pub fn from_line(line: &str) -> Result<Invite, AdmissionError> {
        let bad = |m: &str| AdmissionError::Malformed(format!("not a valid invite: {m}"));
        let body = line
            .trim()
            .strip_prefix(INVITE_PREFIX)
            .ok_or_else(|| bad(&format!("it does not start with {INVITE_PREFIX}")))?;
        if body.len() > 16 << 10 {
            return Err(bad("too long"));
        }
        let bytes = hex::decode(body).map_err(|_| bad("not hex after the prefix"))?;
        let invite: Invite = postcard::from_bytes(&bytes).map_err(|_| bad("damaged"))?;
        if invite.bootstrap.len() > MAX_BOOTSTRAP
            || invite.bootstrap.iter().any(|a| a.len() > MAX_ADDR_LEN)
        {
            return Err(bad("too many addresses"));
        }
        let keypair = invite.keypair()?;
        invite.certificate.verify(
            &invite.ring,
            &keypair.public().to_peer_id(),
            &Revocations::default(),
        )?;
        Ok(invite)
    }

    /// The invited peer's libp2p key pair.
    pub fn keypair(&self) -> Result<Keypair, AdmissionError> {
        let mut s = self.secret;
        let secret = ed25519::SecretKey::try_from_bytes(&mut s)
            .map_err(|_| AdmissionError::Malformed("the invite's key is damaged".into()))?;
        Ok(Keypair::from(ed25519::Keypair::from(secret)))
    }

    /// What a peer keeps to prove its membership: its certificate and the ring's key.
    #[must_use]
    pub fn credential(&self) -> Credential {
        Credential {
            ring: self.ring,
            certificate: self.certificate.clone(),
        }
    }
}

/// A peer's proof of admission: the ring's public key and its own certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub ring: RingPublic,
    pub certificate: Certificate,
}

/// A peer's libp2p key pair with its proof of admission: what a node, a client or a tool
/// connects as.
#[derive(Clone)]
pub struct Identity {
    pub keypair: Keypair,
    pub credential: Credential,
}

impl Identity {
    /// The identity an invite carries.
    pub fn from_invite(invite: &Invite) -> Result<Identity, AdmissionError> {
        Ok(Identity {
            keypair: invite.keypair()?,
            credential: invite.credential(),
        })
    }

    /// The hello this identity opens conversations with.
    #[must_use]
    pub fn hello(&self, revocations: Revocations) -> Hello {
        Hello {
            ring: self.credential.ring,
            certificate: self.credential.certificate.clone(),
            revocations,
        }
    }

    /// Checks a node's answer to our hello: it must be a member of our ring, not revoked.
    pub fn check_welcome(
        &self,
        peer: &PeerId,
        answer: &HelloResponse,
        revoked: &Revocations,
    ) -> Result<(), String> {
        match answer {
            HelloResponse::Welcome { certificate, .. } => {
                match certificate.verify(&self.credential.ring, peer, revoked) {
                    Ok(Role::Member) => Ok(()),
                    Ok(role) => Err(format!(
                        "peer {peer} holds a {role} certificate of ring {}, not a member's",
                        self.credential.ring.fingerprint()
                    )),
                    Err(e) => Err(format!(
                        "peer {peer} is not a member of ring {}: {e}",
                        self.credential.ring.fingerprint()
                    )),
                }
            }
            HelloResponse::Refused { message } => Err(message.clone()),
        }
    }
}

/// The first request on every connection: "this is who I am in this ring".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The ring the sender belongs to.
    pub ring: RingPublic,
    pub certificate: Certificate,
    /// The newest revocation list the sender has (seq 0 and empty when none).
    pub revocations: Revocations,
}

/// The answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloResponse {
    /// Admitted; the answering node's own certificate and newest revocation list, so the sender
    /// can check it is talking to a member of its ring.
    Welcome {
        certificate: Certificate,
        revocations: Revocations,
    },
    /// Not admitted, and why.
    Refused { message: String },
}

impl Bulk for Hello {}
impl Bulk for HelloResponse {}
impl Message for Hello {
    const AUDIENCE: Audience = Audience::Hello;
}
impl Message for HelloResponse {
    const AUDIENCE: Audience = Audience::Hello;
}

/// Tracks which peers have admitted us, and holds what we want to send to a peer until they
/// have: the first message to a peer is a [`Hello`], everything else waits for its answer.
/// Pure (no I/O): the endpoint asks it what to do and tells it what happened.
pub struct HelloGate<T> {
    peers: std::collections::HashMap<PeerId, GateState<T>>,
    /// Most items queued for one peer while its hello is in flight.
    max_queued: usize,
}

enum GateState<T> {
    /// A hello is in flight; these wait for its answer.
    Greeting(Vec<T>),
    /// The peer admitted us.
    Ready,
}

/// What to do with an item given to [`HelloGate::submit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Gate<T> {
    /// The peer admitted us: send it now.
    Send(T),
    /// Send a hello to the peer first (the item is queued).
    Greet,
    /// Queued behind the hello in flight.
    Queued,
    /// Too many items wait for this peer: fail it.
    Full(T),
}

impl<T> HelloGate<T> {
    #[must_use]
    pub fn new(max_queued: usize) -> Self {
        HelloGate {
            peers: std::collections::HashMap::new(),
            max_queued,
        }
    }

    /// An item to send to `peer`.
    pub fn submit(&mut self, peer: PeerId, item: T) -> Gate<T> {
        match self.peers.get_mut(&peer) {
            Some(GateState::Ready) => Gate::Send(item),
            Some(GateState::Greeting(q)) if q.len() >= self.max_queued => Gate::Full(item),
            Some(GateState::Greeting(q)) => {
                q.push(item);
                Gate::Queued
            }
            None => {
                self.peers.insert(peer, GateState::Greeting(vec![item]));
                Gate::Greet
            }
        }
    }

    /// The peer admitted us: everything queued for it, to send now.
    pub fn admitted(&mut self, peer: PeerId) -> Vec<T> {
        match self.peers.insert(peer, GateState::Ready) {
            Some(GateState::Greeting(q)) => q,
            _ => Vec::new(),
        }
    }

    /// The hello failed or was refused: everything queued for the peer, to fail.
    pub fn refused(&mut self, peer: &PeerId) -> Vec<T> {
        match self.peers.remove(peer) {
            Some(GateState::Greeting(q)) => q,
            _ => Vec::new(),
        }
    }

    /// The last connection to the peer closed: the next item greets again.
    pub fn disconnected(&mut self, peer: &PeerId) -> Vec<T> {
        self.refused(peer)
    }

    /// Whether the peer has admitted us.
    #[must_use]
    pub fn is_ready(&self, peer: &PeerId) -> bool {
        matches!(self.peers.get(peer), Some(GateState::Ready))
    }

    /// Peers that admitted us (to greet again, e.g. with a newer revocation list).
    pub fn ready_peers(&self) -> impl Iterator<Item = &PeerId> {
        self.peers
            .iter()
            .filter(|(_, s)| matches!(s, GateState::Ready))
            .map(|(p, _)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_of(kp: &Keypair) -> PeerId {
        kp.public().to_peer_id()
    }

    #[test]
    fn certificates_verify_only_for_their_ring_peer_and_while_not_revoked() {
        let ring = RingKey::generate();
        let other = RingKey::generate();
        let kp = Keypair::generate_ed25519();
        let peer = peer_of(&kp);
        let cert = ring.certify(&peer, Role::Member, "node-1");
        let none = Revocations::default();
        assert_eq!(cert.verify(&ring.public(), &peer, &none), Ok(Role::Member));
        assert_eq!(
            cert.verify(&other.public(), &peer, &none),
            Err(AdmissionError::BadSignature)
        );
        let stranger = PeerId::random();
        assert!(matches!(
            cert.verify(&ring.public(), &stranger, &none),
            Err(AdmissionError::WrongPeer { .. })
        ));
        // A certificate whose role was edited no longer verifies.
        let mut forged = cert.clone();
        forged.role = Role::Admin;
        assert_eq!(
            forged.verify(&ring.public(), &peer, &none),
            Err(AdmissionError::BadSignature)
        );
        let list = ring.revoke(1, vec![peer]);
        list.verify(&ring.public()).unwrap();
        assert!(other.revoke(1, vec![peer]).verify(&ring.public()).is_err());
        assert_eq!(
            cert.verify(&ring.public(), &peer, &list),
            Err(AdmissionError::Revoked(peer.to_string()))
        );
        let mut tampered = list.clone();
        tampered.seq = 9;
        assert!(tampered.verify(&ring.public()).is_err());
    }

    #[test]
    fn invites_round_trip_and_carry_a_matching_key() {
        let ring = RingKey::generate();
        let inv = ring.invite(
            Role::User,
            "alice",
            vec!["/ip4/127.0.0.1/tcp/1/p2p/x".into()],
        );
        let line = inv.to_line();
        assert!(line.starts_with(INVITE_PREFIX));
        assert!(!line.contains('\n'));
        let back = Invite::from_line(&format!("  {line}\n")).unwrap();
        assert_eq!(back.certificate, inv.certificate);
        assert_eq!(back.ring, ring.public());
        let peer = back.keypair().unwrap().public().to_peer_id();
        assert_eq!(back.certificate.peer().unwrap(), peer);
        assert!(Invite::from_line("peerstore-invite-1:zz").is_err());
        assert!(Invite::from_line("hello").is_err());
        // An invite whose key does not match its certificate is refused.
        let mut bad = inv.clone();
        bad.secret = [7u8; 32];
        assert!(Invite::from_line(&bad.to_line()).is_err());
        let k = RingKey::from_secret(ring.secret_bytes()).unwrap();
        assert_eq!(k.public(), ring.public());
    }

    #[test]
    fn roles_speak_only_their_protocols() {
        use Audience::*;
        assert!(Role::Member.may(Chord) && Role::Member.may(Member) && !Role::Member.may(Admin));
        assert!(Role::User.may(Client) && !Role::User.may(Member) && !Role::User.may(Chord));
        assert!(Role::Admin.may(Admin) && Role::Admin.may(Client) && !Role::Admin.may(Member));
    }

    #[test]
    fn the_gate_holds_items_until_the_hello_is_answered() {
        let p = PeerId::random();
        let mut g: HelloGate<u32> = HelloGate::new(2);
        assert_eq!(g.submit(p, 1), Gate::Greet);
        assert_eq!(g.submit(p, 2), Gate::Queued);
        assert_eq!(g.submit(p, 3), Gate::Full(3));
        assert_eq!(g.admitted(p), vec![1, 2]);
        assert_eq!(g.submit(p, 4), Gate::Send(4));
        assert!(g.is_ready(&p));
        assert!(g.disconnected(&p).is_empty());
        assert_eq!(g.submit(p, 5), Gate::Greet);
        assert_eq!(g.refused(&p), vec![5]);
        assert_eq!(g.submit(p, 6), Gate::Greet);
    }
}
