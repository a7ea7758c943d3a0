//! Lists from peers are bounded by the receiver's configuration: a peer that sends successor
//! or predecessor lists of thousands of entries (a Chord frame holds a few thousand) cannot
//! make a node keep them, in its tables, in a remembered rectify candidate, in a stabilize
//! step waiting for an answer, or in a lookup.

mod common;
use chord::{Action, Config, Message, Node, Peer, Time};
use common::{id, peer};

/// `n` distinct peers with ids from `from` on, clockwise.
fn many(from: u64, n: u64) -> Vec<Peer<u32>> {
    (0..n).map(|i| peer(from + i)).collect()
}

fn sends(node: &mut Node<u32>) -> Vec<(u32, Message<u32>)> {
    let mut v = Vec::new();
    while let Some(a) = node.poll_action() {
        if let Action::Send { to, msg } = a {
            v.push((to, msg));
        }
    }
    v
}

const HUGE: u64 = 3000;

/// A member, then messages whose lists have `len` entries: two Notify (one remembered as a
/// rectify candidate, one adopted), the Leave of its successor, and answers to its stabilize
/// and lookup requests. Returns the peer entries it holds afterwards.
fn scenario(len: u64) -> usize {
    let config = Config {
        successors: 8,
        predecessors: 8,
        replication: 3,
        ..Config::default()
    };
    let me = 1_000_000_000u64;
    let mut node = Node::new(config.clone(), peer(me));
    let succs: Vec<Peer<u32>> = (1..=8).map(|i| peer(me + i * 1_000_000)).collect();
    let preds: Vec<Peer<u32>> = (1..=8).map(|i| peer(me - i * 1_000_000)).collect();
    let mut fingers = vec![None; 256];
    fingers[200] = Some(peer(me + 500_000_000));
    node.install_member_state(Time(0), succs.clone(), preds.clone(), fingers);
    sends(&mut node);
    let mut t = 1;

    // Notify from a node that is not closer than our predecessor: it is remembered as a
    // rectify candidate with its predecessor list.
    let far = peer(7);
    node.handle_message(
        Time(t),
        far.addr,
        Message::Notify {
            req: 1,
            node: far.clone(),
            preds: many(10, len),
        },
    );
    t += 1;
    // Notify from a node between our predecessor and us: adopted, with its list.
    let near = peer(me - 1);
    node.handle_message(
        Time(t),
        near.addr,
        Message::Notify {
            req: 2,
            node: near.clone(),
            preds: many(me - 500_000, len),
        },
    );
    t += 1;
    assert!(node.predecessors().len() <= config.predecessors);

    // Leave of our successor with huge lists.
    let s0 = succs[0].clone();
    node.handle_message(
        Time(t),
        s0.addr,
        Message::Leave {
            req: 3,
            node: s0.clone(),
            preds: many(me - 900_000, len),
            successors: many(me + 1_500_000, len),
        },
    );
    t += 1;
    assert!(node.successors().len() <= config.successors);
    assert!(node.predecessors().len() <= config.predecessors);

    // Answers to our own requests: a stabilize step and a lookup, each answered with huge
    // lists.
    node.handle_timeout(Time(t + 5_000));
    t += 5_000;
    let key = id(me + 400_000_000);
    let _lookup = node.start_lookup(Time(t), key);
    for (to, msg) in sends(&mut node) {
        let (req, asked) = match msg {
            Message::GetState { req, .. } | Message::FindSuccessor { req, .. } => (req, to),
            _ => continue,
        };
        let who = u64::from(asked);
        node.handle_message(
            Time(t),
            asked,
            Message::Info {
                req,
                member: true,
                id: id(who),
                pred: Some(peer(me + 10)),
                successors: many(who + 1, len),
                closer: many(me + 100, len),
            },
        );
    }
    node.held_entries()
}

#[test]
fn hostile_lists_are_cut_to_the_configured_lengths() {
    // An honest peer sends lists of the configured length (8) and at most 8 candidates.
    let honest = scenario(8);
    let hostile = scenario(HUGE);
    // One kept hostile list would be 3,000 entries.
    assert!(
        hostile <= honest + 8,
        "after lists of {HUGE} the node holds {hostile} peer entries; after honest lists {honest}"
    );
}
