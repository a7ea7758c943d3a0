//! Placement across hosts and zones: which members hold a key's r copies.
//!
//! Several nodes on one machine are how people lose data without knowing it: a replica set of
//! three consecutive ring members that all run on one host is one disk failure from gone. So a
//! key's replica set is not simply its owner and the next r - 1 members: it is chosen, in the
//! manner of Dynamo's preference lists, from the owner and the next [`window`] - 1 members in
//! ring order, taking members on hosts (and zones) not used yet first.
//!
//! Every node tells its place with `--host` and `--zone` (default: the machine id, so that
//! nodes started on one machine are on one host without anyone saying so) and answers
//! `MemberRequest::Placement`; other nodes ask once and remember ([`Placements`]). A member
//! whose place cannot be learned counts as a host of its own.
//!
//! The rule ([`choose`]) is pure: the owner first; then, slot by slot, the first member in
//! ring order whose host is not used yet and whose zone is not used yet; failing that the
//! first whose host is not used yet; failing that the first not chosen (so a ring of one host
//! gets today's consecutive set). The window is r + [`RANGE_SLACK`]
//! members: a chosen member is then never further from the owner than the range a node accepts
//! signed records for, and a ring needs at most two extra nodes between hosts for every set to
//! span them ("as far as the ring allows": a longer run of one host's nodes than that keeps
//! some sets on fewer hosts, and `status` says so).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Predecessors beyond a holder set whose keys a node still accepts records for (and members
/// beyond r a replica set is chosen from). Ring changes in flight (a join or leave that not
/// every node has seen yet, the hand-off of a graceful leave to the leaver's successors) shift
/// a holder set by a node or two.
pub const RANGE_SLACK: usize = 2;

/// Longest host or zone label, in bytes.
pub const MAX_LABEL: usize = 64;
/// Most places a node remembers.
pub const MAX_KNOWN: usize = 4096;
/// How long a learnt place is trusted before it is asked again (a node restarted with
/// another `--host`): one small request per member and minute.
pub const KNOWN_FOR: Duration = Duration::from_secs(60);
/// How long a member that did not answer is not asked again.
pub const UNKNOWN_FOR: Duration = Duration::from_secs(10);

/// Where a node runs: its host (machine) and zone (a room, a building, a site).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Place {
    pub host: String,
    pub zone: String,
}

impl Place {
    /// A checked place: labels of 1 to [`MAX_LABEL`] bytes of letters, digits and `.-_:`.
    pub fn new(host: &str, zone: &str) -> Result<Place, String> {
        Ok(Place {
            host: label("host", host)?,
            zone: label("zone", zone)?,
        })
    }

    /// The place of a member that did not say: a host and zone of its own.
    #[must_use]
    pub fn unknown(peer: &PeerId) -> Place {
        let own = format!("unknown-{peer}");
        Place {
            host: own.clone(),
            zone: own,
        }
    }

    /// This machine: its machine id (systemd's `/etc/machine-id`, else D-Bus's, else the
    /// hostname), in the zone of the same name.
    #[must_use]
    pub fn this_machine() -> Place {
        let id = [
            "/etc/machine-id",
            "/var/lib/dbus/machine-id",
            "/etc/hostname",
        ]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| sanitize(s.trim()))
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "this-machine".into());
        Place {
            host: id.clone(),
            zone: id,
        }
    }

    /// The (zone, host) pair that names a machine: one host name may repeat in two zones.
    fn machine(&self) -> (&str, &str) {
        (&self.zone, &self.host)
    }
}

fn label(what: &str, s: &str) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if s.is_empty() || s.len() > MAX_LABEL || !s.chars().all(ok) {
        return Err(format!(
            "--{what} '{s}' is not a valid label: use 1 to {MAX_LABEL} letters, digits or . - _ :"
        ));
    }
    Ok(s.to_string())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        .take(MAX_LABEL)
        .collect()
}

/// How many members, the owner included, a replica set of `r` is chosen from.
#[must_use]
pub fn window(r: usize) -> usize {
    r + RANGE_SLACK
}

/// Chooses up to `r` of `places` (the owner first, then its successors in ring order): the
/// indices chosen, in ring order. See the module docs for the rule.
#[must_use]
pub fn choose(places: &[Place], r: usize) -> Vec<usize> {
    let want = r.min(places.len());
    let mut chosen: Vec<usize> = Vec::with_capacity(want);
    if want == 0 {
        return chosen;
    }
    chosen.push(0);
    while chosen.len() < want {
        let hosts: BTreeSet<(&str, &str)> = chosen.iter().map(|&i| places[i].machine()).collect();
        let zones: BTreeSet<&str> = chosen.iter().map(|&i| places[i].zone.as_str()).collect();
        let Some(next) = (1..places.len())
            .filter(|i| !chosen.contains(i))
            .min_by_key(|&i| {
                (
                    hosts.contains(&places[i].machine()),
                    zones.contains(places[i].zone.as_str()),
                    i,
                )
            })
        else {
            break;
        };
        chosen.push(next);
    }
    chosen.sort_unstable();
    chosen
}

/// Distinct machines (zone, host) among `places`.
#[must_use]
pub fn distinct_hosts(places: &[&Place]) -> usize {
    places
        .iter()
        .map(|p| p.machine())
        .collect::<BTreeSet<_>>()
        .len()
}

/// What `status` says about the spread of this node's replica set: `None` when its `r` copies
/// sit on `r` distinct hosts.
#[must_use]
pub fn warning(set: &[&Place], r: usize) -> Option<String> {
    let hosts = distinct_hosts(set);
    if r <= 1 || hosts >= r {
        return None;
    }
    if hosts <= 1 {
        let host = set.first().map_or("?", |p| p.host.as_str());
        return Some(format!(
            "all {} copies of the keys this node owns are on one host ({host}): if that machine fails they are lost; add nodes on other machines, and give each machine's nodes their own --host",
            set.len().max(1)
        ));
    }
    Some(format!(
        "the copies of the keys this node owns span {hosts} hosts for r = {r}: losing one machine can lose up to {} of the {} copies; add nodes on more machines",
        set.len() + 1 - hosts,
        set.len()
    ))
}

/// What a symbol is to a codeword, in the order in which the symbols of a codeword that sit on
/// one host go down to one copy: pointers first (parities of other codewords), then the
/// codeword's own parities, then its sources (the document's bytes, read directly, kept
/// replicated longest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SymbolKind {
    Pointer,
    Parity,
    Source,
}

/// The spread rule for the symbols of one codeword: whether `candidate` may go down to a single
/// copy on the machine of its place. `symbols` are the codeword's symbols that are fetched to
/// decode it (kind, key, the place that holds or would hold its single copy: its owner's);
/// `budget` is how many of them the codeword may lose and still decode
/// (`entangle::Layout::erasures`).
///
/// Each machine (and, when the symbols' places span more than one zone, each zone) may hold the
/// single copies of at most `budget` of the codeword's symbols: the first `budget` of its symbols
/// in ([`SymbolKind`], key) order; the others keep their replicas, which replica sets spread over
/// hosts. Then losing one machine (or one zone) loses at most `budget` symbols of any codeword,
/// and it decodes from the rest. Every owner ranks the same symbols the same way, so the
/// decisions agree without a word between them. A codeword whose symbols all sit on one machine
/// has nothing to spread: the rule allows all (and `status` warns about that ring).
#[must_use]
pub fn single_allowed<K: Ord>(
    symbols: &[(SymbolKind, K, &Place)],
    candidate: &K,
    budget: usize,
) -> bool {
    let Some(&(_, _, at)) = symbols.iter().find(|(_, k, _)| k == candidate) else {
        return true;
    };
    let rank_within = |same: &dyn Fn(&Place) -> bool| {
        let mut mine: Vec<(SymbolKind, &K)> = symbols
            .iter()
            .filter(|(_, _, p)| same(p))
            .map(|(kind, k, _)| (*kind, k))
            .collect();
        mine.sort();
        mine.dedup_by(|a, b| a.1 == b.1);
        mine.iter().position(|(_, k)| *k == candidate)
    };
    let machines: BTreeSet<(&str, &str)> = symbols.iter().map(|(_, _, p)| p.machine()).collect();
    if machines.len() > 1 && rank_within(&|p: &Place| p.machine() == at.machine()) >= Some(budget) {
        return false;
    }
    let zones: BTreeSet<&str> = symbols.iter().map(|(_, _, p)| p.zone.as_str()).collect();
    !(zones.len() > 1 && rank_within(&|p: &Place| p.zone == at.zone) >= Some(budget))
}

/// The places this node knows, with when it learnt them (bounded; see [`MAX_KNOWN`]).
#[derive(Debug, Default)]
pub struct Placements {
    known: std::sync::Mutex<HashMap<PeerId, (Option<Place>, Instant)>>,
}

impl Placements {
    /// The place of `peer` if known and fresh: `Some(Some(place))`; `Some(None)` if it did not
    /// answer lately (count it as a host of its own, do not ask again yet); `None` if it
    /// should be asked.
    #[must_use]
    pub fn get(&self, peer: &PeerId, now: Instant) -> Option<Option<Place>> {
        let known = peerstore_proto::lock(&self.known);
        let (place, at) = known.get(peer)?;
        let ttl = if place.is_some() {
            KNOWN_FOR
        } else {
            UNKNOWN_FOR
        };
        (now.duration_since(*at) < ttl).then(|| place.clone())
    }

    /// Forgets what `peer` said (its connections closed: it may come back elsewhere).
    pub fn forget(&self, peer: &PeerId) {
        peerstore_proto::lock(&self.known).remove(peer);
    }

    /// Remembers what `peer` answered (`None`: nothing).
    pub fn put(&self, peer: PeerId, place: Option<Place>, now: Instant) {
        let mut known = peerstore_proto::lock(&self.known);
        if known.len() >= MAX_KNOWN && !known.contains_key(&peer) {
            // Forget the oldest.
            if let Some(oldest) = known.iter().min_by_key(|(_, (_, at))| *at).map(|(p, _)| *p) {
                known.remove(&oldest);
            }
        }
        known.insert(peer, (place, now));
    }

    /// Every known place, for the ring page.
    #[must_use]
    pub fn all(&self) -> Vec<(PeerId, Place)> {
        peerstore_proto::lock(&self.known)
            .iter()
            .filter_map(|(p, (place, _))| place.clone().map(|pl| (*p, pl)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(host: &str, zone: &str) -> Place {
        Place::new(host, zone).unwrap()
    }

    /// Three nodes on host a, then two on host b.
    fn aaabb() -> Vec<Place> {
        ["a", "a", "a", "b", "b"]
            .iter()
            .map(|h| p(h, "z"))
            .collect()
    }

    fn hosts(places: &[Place], r: usize) -> Vec<String> {
        choose(places, r)
            .into_iter()
            .map(|i| places[i].host.clone())
            .collect()
    }

    #[test]
    fn one_host_keeps_the_consecutive_set() {
        let ring: Vec<Place> = (0..5).map(|_| p("a", "z")).collect();
        assert_eq!(choose(&ring, 3), vec![0, 1, 2]);
        assert!(warning(&[&ring[0], &ring[1], &ring[2]], 3)
            .unwrap()
            .contains("one host"));
    }

    #[test]
    fn other_hosts_come_first_then_the_rest_in_ring_order() {
        // Owner a, then a, a, b, b: the set takes the first b, then the next a.
        let ring = aaabb();
        assert_eq!(choose(&ring, 3), vec![0, 1, 3]);
        assert_eq!(hosts(&ring, 3), ["a", "a", "b"]);
        // Three hosts in the window: one copy on each.
        let ring = vec![
            p("a", "z"),
            p("a", "z"),
            p("b", "z"),
            p("b", "z"),
            p("c", "z"),
        ];
        assert_eq!(choose(&ring, 3), vec![0, 2, 4]);
        // A new zone beats a new host in an old zone.
        let ring = vec![p("a", "x"), p("b", "x"), p("c", "y"), p("d", "x")];
        assert_eq!(choose(&ring, 2), vec![0, 2]);
        assert_eq!(choose(&ring, 3), vec![0, 1, 2]);
        // A host name repeated in two zones is two machines.
        let ring = vec![p("a", "x"), p("a", "x"), p("a", "y")];
        assert_eq!(choose(&ring, 2), vec![0, 2]);
    }

    #[test]
    fn small_rings_and_r_one() {
        let ring = vec![p("a", "z"), p("b", "z")];
        assert_eq!(choose(&ring, 3), vec![0, 1]);
        assert_eq!(choose(&ring, 1), vec![0]);
        assert!(choose(&[], 3).is_empty());
        assert_eq!(warning(&[&ring[0]], 1), None);
    }

    #[test]
    fn every_window_of_a_ring_spans_both_hosts_when_it_can() {
        // Any cyclic order of three a's and two b's: every set of 3 chosen from a window of
        // r + 2 = 5 spans both hosts; consecutive sets would not when the a's are adjacent.
        let ring = aaabb();
        let mut consecutive_one_host = 0;
        for start in 0..5 {
            let w: Vec<Place> = (0..window(3))
                .map(|i| ring[(start + i) % 5].clone())
                .collect();
            let chosen = choose(&w, 3);
            let set: Vec<&Place> = chosen.iter().map(|&i| &w[i]).collect();
            assert_eq!(distinct_hosts(&set), 2, "start {start}");
            let cons: Vec<&Place> = w[..3].iter().collect();
            if distinct_hosts(&cons) == 1 {
                consecutive_one_host += 1;
            }
            let warn = warning(&set, 3).unwrap();
            assert!(warn.contains("span 2 hosts"), "{warn}");
        }
        assert_eq!(
            consecutive_one_host, 1,
            "the old rule left one arc on one host"
        );
    }

    #[test]
    fn labels_are_checked_and_the_cache_forgets() {
        assert!(Place::new("", "z").is_err());
        assert!(Place::new("a b", "z").is_err());
        assert!(Place::new(&"x".repeat(MAX_LABEL + 1), "z").is_err());
        assert!(Place::new("host-1.example:2", "rack_3").is_ok());
        let m = Place::this_machine();
        assert!(!m.host.is_empty() && m.host.len() <= MAX_LABEL);
        let c = Placements::default();
        let peer = PeerId::random();
        let t = Instant::now();
        assert_eq!(c.get(&peer, t), None);
        c.put(peer, Some(p("a", "z")), t);
        assert_eq!(c.get(&peer, t), Some(Some(p("a", "z"))));
        assert_eq!(c.get(&peer, t + KNOWN_FOR), None, "asked again later");
        c.put(peer, None, t);
        assert_eq!(c.get(&peer, t + Duration::from_secs(1)), Some(None));
        assert_eq!(c.get(&peer, t + UNKNOWN_FOR), None);
        for _ in 0..MAX_KNOWN + 5 {
            c.put(PeerId::random(), None, t);
        }
        assert!(peerstore_proto::lock(&c.known).len() <= MAX_KNOWN);
    }

    fn sym(kind: SymbolKind, key: u32, place: &Place) -> (SymbolKind, u32, &Place) {
        (kind, key, place)
    }

    #[test]
    fn a_machine_holds_single_copies_of_at_most_budget_symbols_of_a_codeword() {
        let (a, b) = (p("a", "z"), p("b", "z"));
        // Six symbols, budget 2: four on a (a pointer, a parity, two sources), two on b.
        let s = vec![
            sym(SymbolKind::Source, 1, &a),
            sym(SymbolKind::Source, 2, &a),
            sym(SymbolKind::Parity, 9, &a),
            sym(SymbolKind::Pointer, 7, &a),
            sym(SymbolKind::Parity, 3, &b),
            sym(SymbolKind::Source, 4, &b),
        ];
        let allowed: Vec<u32> = s
            .iter()
            .map(|(_, k, _)| *k)
            .filter(|k| single_allowed(&s, k, 2))
            .collect();
        // On a: the pointer, then the parity go single; both sources keep their replicas.
        assert_eq!(allowed, vec![9, 7, 3, 4]);
        // Whatever machine is lost, at most `budget` symbols are lost with it.
        for m in [&a, &b] {
            let lost = s
                .iter()
                .filter(|(_, k, p)| *p == m && allowed.contains(k))
                .count();
            assert!(lost <= 2, "{lost} single copies on {}", m.host);
        }
        // A key that is not a symbol of the codeword is not constrained by it.
        assert!(single_allowed(&s, &100, 2));
    }

    #[test]
    fn one_machine_has_nothing_to_spread_and_zones_count_too() {
        let a = p("a", "z");
        let s: Vec<_> = (0..6).map(|k| sym(SymbolKind::Source, k, &a)).collect();
        assert!((0..6).all(|k| single_allowed(&s, &k, 2)));
        // Two hosts per zone, two zones: zone y may hold 2 single copies in all, not 2 a host.
        let (y1, y2, w1) = (p("h1", "y"), p("h2", "y"), p("h3", "w"));
        let s = vec![
            sym(SymbolKind::Parity, 1, &y1),
            sym(SymbolKind::Parity, 2, &y2),
            sym(SymbolKind::Parity, 3, &y1),
            sym(SymbolKind::Parity, 4, &w1),
        ];
        let allowed: Vec<u32> = (1..=4).filter(|k| single_allowed(&s, k, 2)).collect();
        assert_eq!(allowed, vec![1, 2, 4]);
    }
}
