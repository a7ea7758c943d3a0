//! The invariants of CHORD.md (Zave, TSE 2017) on a global snapshot of a simulation.
//!
//! "Member" means alive and a ring member (`Member` or `Leaving`). `bestSucc(a)` is the first
//! entry of a's successor list that is a live member (a itself if a is alone, list empty).
//!
//! - **LiveSuccessor**: every member with a non-empty list has a live member in it.
//! - **OrderedSuccessorLists**: each list is strictly clockwise-increasing from its owner.
//! - **NoDuplicates**: no node in its own list; entries distinct (implied by the strict order).
//! - **AtLeastOneRing / AtMostOneRing**: following bestSucc from members yields exactly one cycle.
//! - **OrderedRing**: no ring member lies strictly between a ring member a and bestSucc(a),
//!   checked with one sorted pass.
//! - **ConnectedAppendages**: every member reaches the ring by following bestSucc.
//! - **AtLeastRPlusOne** (optional): at least r+1 members.
//! - **Ideal** ([`is_ideal`]): the list of every member is exactly its next min(r, n-1) members
//!   in id order and its predecessor is the previous member.
//!
//! Cost: O(N r + N log N) per check.

use super::Sim;

/// Checks the safety invariants. `min_members`: also require that many members.
pub fn check(sim: &Sim, min_members: Option<usize>) -> Result<(), String> {
    let nodes = sim.nodes();
    let n = nodes.len();
    let is_member = |a: u32| -> bool {
        nodes
            .get(a as usize)
            .map(|x| x.alive && x.node.is_member())
            .unwrap_or(false)
    };
    let mut best = vec![u32::MAX; n];
    let mut members: Vec<u32> = Vec::new();
    for (i, sn) in nodes.iter().enumerate() {
        let i = i as u32;
        if !(sn.alive && sn.node.is_member()) {
            continue;
        }
        members.push(i);
        let me = sn.node.me().id;
        let list = sn.node.successors();
        let mut last = crate::id::Id::ZERO;
        for p in list {
            if p.addr == i || p.id == me {
                return Err(format!("NoDuplicates: node {i} lists itself"));
            }
            let d = me.distance_to(p.id);
            if d <= last {
                return Err(format!(
                    "OrderedSuccessorLists/NoDuplicates: list of node {i} is not strictly ordered"
                ));
            }
            last = d;
        }
        if list.is_empty() {
            best[i as usize] = i;
        } else {
            match list.iter().find(|p| is_member(p.addr)) {
                Some(p) => best[i as usize] = p.addr,
                None => {
                    return Err(format!(
                        "LiveSuccessor: node {i} has no live member in its successor list"
                    ))
                }
            }
        }
    }
    if let Some(min) = min_members {
        if members.len() < min {
            return Err(format!(
                "AtLeastRPlusOne: {} members < {min}",
                members.len()
            ));
        }
    }
    if members.is_empty() {
        return Ok(());
    }
    // Cycle detection in the functional graph a -> bestSucc(a).
    // color: 0 unvisited, 1 on the current path, 2 done. on_ring marks cycle members.
    let mut color = vec![0u8; n];
    let mut on_ring = vec![false; n];
    let mut cycles = 0usize;
    let mut path: Vec<u32> = Vec::new();
    for &m in &members {
        if color[m as usize] != 0 {
            continue;
        }
        path.clear();
        let mut x = m;
        loop {
            match color[x as usize] {
                0 => {
                    color[x as usize] = 1;
                    path.push(x);
                    x = best[x as usize];
                }
                1 => {
                    // A new cycle starting at x.
                    cycles += 1;
                    if let Some(pos) = path.iter().position(|&p| p == x) {
                        for &c in &path[pos..] {
                            on_ring[c as usize] = true;
                        }
                    }
                    break;
                }
                _ => break,
            }
        }
        for &p in &path {
            color[p as usize] = 2;
        }
    }
    if cycles == 0 {
        return Err("AtLeastOneRing: no ring".into());
    }
    if cycles > 1 {
        return Err(format!("AtMostOneRing: {cycles} rings"));
    }
    // ConnectedAppendages holds: with exactly one cycle and bestSucc defined for every member,
    // every path ends on that cycle.
    let mut ring: Vec<(crate::id::Id, u32)> = members
        .iter()
        .filter(|&&m| on_ring[m as usize])
        .map(|&m| (nodes[m as usize].node.me().id, m))
        .collect();
    ring.sort_unstable();
    let k = ring.len();
    for (idx, &(_, a)) in ring.iter().enumerate() {
        let next = ring[(idx + 1) % k].1;
        if best[a as usize] != next {
            return Err(format!(
                "OrderedRing: ring member {} lies between {a} and its best successor {}",
                next, best[a as usize]
            ));
        }
    }
    Ok(())
}

/// Whether the system is Ideal: every member's successor list is exactly its next
/// min(r, n-1) members and its predecessor the previous member.
pub fn is_ideal(sim: &Sim) -> bool {
    ideal_report(sim, false).is_ok()
}

/// Like [`is_ideal`], optionally also requiring full predecessor lists; `Err` says why not.
pub fn ideal_report(sim: &Sim, with_pred_lists: bool) -> Result<(), String> {
    if sim.joins_pending() {
        return Err("joins pending".into());
    }
    let nodes = sim.nodes();
    let mut ring: Vec<(crate::id::Id, u32)> = nodes
        .iter()
        .enumerate()
        .filter(|(_, x)| x.alive && x.node.is_member())
        .map(|(i, x)| (x.node.me().id, i as u32))
        .collect();
    if ring.is_empty() {
        return Err("no members".into());
    }
    ring.sort_unstable();
    let n = ring.len();
    let r = sim.cfg.node.successors;
    let want = r.min(n - 1);
    let pw = sim.cfg.node.predecessors.min(n - 1);
    for (k, &(_, a)) in ring.iter().enumerate() {
        let node = &nodes[a as usize].node;
        let s = node.successors();
        if s.len() != want {
            return Err(format!("node {a}: {} successors, want {want}", s.len()));
        }
        for (j, p) in s.iter().enumerate() {
            if p.addr != ring[(k + 1 + j) % n].1 {
                return Err(format!("node {a}: successor {j} wrong"));
            }
        }
        if n > 1 {
            let pred = ring[(k + n - 1) % n].1;
            if node.predecessor().map(|p| p.addr) != Some(pred) {
                return Err(format!("node {a}: predecessor wrong"));
            }
            if with_pred_lists {
                let ps = node.predecessors();
                if ps.len() != pw {
                    return Err(format!("node {a}: {} predecessors, want {pw}", ps.len()));
                }
                for (j, p) in ps.iter().enumerate() {
                    if p.addr != ring[(k + 2 * n - 1 - j) % n].1 {
                        return Err(format!("node {a}: predecessor {j} wrong"));
                    }
                }
            }
        }
    }
    Ok(())
}
