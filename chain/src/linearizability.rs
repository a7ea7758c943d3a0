//! A linearizability checker for one compare-and-set register, after Wing & Gong (1993) with
//! Lowe's memoization (2017), the algorithm of Knossos and Porcupine.
//!
//! The register holds `(version, value)`, initially `(0, empty)` (absent). Operations:
//! - `Read` returns the state;
//! - `Cas { expected, value }` returns `CasOk { version: expected + 1 }` and sets the state to
//!   `(expected + 1, value)` if the version is `expected`, else returns
//!   `CasConflict { version, value }` with the state and changes nothing.
//!
//! A history lists every operation with its invocation time and, if a response arrived, the
//! response time and result. An operation without a response (the client timed out) may or may
//! not have taken effect: it is treated as completing at +infinity with whatever result fits,
//! so the search may linearize it anywhere after its invocation or not at all. Times are
//! virtual ms; an operation precedes another only if it responded strictly before the other
//! was invoked.
//!
//! The search walks a list of call and return entries in time order. At a call it tries to
//! linearize that operation now (if the model allows its result) and restarts from the front;
//! at a return whose operation is not linearized yet it backtracks. Each visited
//! (set of linearized operations, register state) pair is remembered, so no configuration is
//! explored twice. Cost is exponential only in the number of operations that overlap in time.

use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read the register.
    Read,
    /// Compare-and-set.
    Cas {
        /// The version the client expects (0: absent).
        expected: u64,
        /// The value to write.
        value: Vec<u8>,
    },
}

/// What the client was told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The read returned this state.
    Read {
        /// Version (0: absent).
        version: u64,
        /// Value (empty when absent).
        value: Vec<u8>,
    },
    /// The compare-and-set applied as this version.
    CasOk {
        /// Must be `expected + 1`.
        version: u64,
    },
    /// The compare-and-set did not apply; this was the state.
    CasConflict {
        /// The current version (not `expected`).
        version: u64,
        /// Its value.
        value: Vec<u8>,
    },
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The client (for messages only; each client's operations should not overlap).
    pub client: u64,
    /// What was asked.
    pub op: Op,
    /// Invocation time.
    pub invoke: u64,
    /// Response time and result; `None` if no response arrived (unknown outcome).
    pub complete: Option<(u64, Outcome)>,
}

impl Operation {
    /// A completed read.
    pub fn read(client: u64, invoke: u64, done: u64, version: u64, value: &[u8]) -> Self {
        Operation {
            client,
            op: Op::Read,
            invoke,
            complete: Some((
                done,
                Outcome::Read {
                    version,
                    value: value.to_vec(),
                },
            )),
        }
    }

    /// A compare-and-set that applied as `expected + 1`.
    pub fn cas_ok(client: u64, invoke: u64, done: u64, expected: u64, value: &[u8]) -> Self {
        Operation {
            client,
            op: Op::Cas {
                expected,
                value: value.to_vec(),
            },
            invoke,
            complete: Some((
                done,
                Outcome::CasOk {
                    version: expected.saturating_add(1),
                },
            )),
        }
    }

    /// A compare-and-set answered with a conflict.
    #[allow(clippy::too_many_arguments)]
    pub fn cas_conflict(
        client: u64,
        invoke: u64,
        done: u64,
        expected: u64,
        value: &[u8],
        current_version: u64,
        current_value: &[u8],
    ) -> Self {
        Operation {
            client,
            op: Op::Cas {
                expected,
                value: value.to_vec(),
            },
            invoke,
            complete: Some((
                done,
                Outcome::CasConflict {
                    version: current_version,
                    value: current_value.to_vec(),
                },
            )),
        }
    }

    /// A compare-and-set whose outcome is unknown.
    pub fn cas_unknown(client: u64, invoke: u64, expected: u64, value: &[u8]) -> Self {
        Operation {
            client,
            op: Op::Cas {
                expected,
                value: value.to_vec(),
            },
            invoke,
            complete: None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |v: &[u8]| String::from_utf8_lossy(&v[..v.len().min(24)]).into_owned();
        write!(f, "client {} ", self.client)?;
        match &self.op {
            Op::Read => write!(f, "Read")?,
            Op::Cas { expected, value } => {
                write!(f, "Cas(expected {expected}, {:?})", short(value))?
            }
        }
        match &self.complete {
            None => write!(f, " invoked at {}, no response", self.invoke),
            Some((t, o)) => {
                write!(f, " [{}..{}] -> ", self.invoke, t)?;
                match o {
                    Outcome::Read { version, value } => {
                        write!(f, "({version}, {:?})", short(value))
                    }
                    Outcome::CasOk { version } => write!(f, "Ok({version})"),
                    Outcome::CasConflict { version, value } => {
                        write!(f, "Conflict({version}, {:?})", short(value))
                    }
                }
            }
        }
    }
}

/// Why a history is not linearizable: the deepest point the search reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Index in the input of an operation that could not be linearized there.
    pub op_index: usize,
    /// That operation.
    pub op: Operation,
    /// How many operations were linearized before it, at best.
    pub linearized: usize,
    /// The register's state at that point.
    pub state: (u64, Vec<u8>),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not linearizable: after linearizing at best {} operations (register at version \
             {}, value {:?}), operation #{} ({}) cannot be placed before its response in any \
             order of the operations concurrent with it",
            self.linearized,
            self.state.0,
            String::from_utf8_lossy(&self.state.1[..self.state.1.len().min(24)]),
            self.op_index,
            self.op
        )
    }
}

/// The checker's verdict when not `Ok`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// No linearization exists.
    NotLinearizable(Box<Violation>),
    /// The search took more than the allowed number of steps.
    BudgetExhausted {
        /// Steps taken.
        steps: u64,
    },
    /// An operation is malformed (response before invocation, result of the wrong kind).
    Malformed {
        /// Its index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::NotLinearizable(v) => write!(f, "{v}"),
            CheckError::BudgetExhausted { steps } => {
                write!(f, "search budget exhausted after {steps} steps")
            }
            CheckError::Malformed { index, reason } => {
                write!(f, "operation #{index} is malformed: {reason}")
            }
        }
    }
}

impl std::error::Error for CheckError {}

/// Default step budget of [`check`].
pub const DEFAULT_BUDGET: u64 = 50_000_000;

/// Checks a history with [`DEFAULT_BUDGET`].
pub fn check(history: &[Operation]) -> Result<(), CheckError> {
    check_with_budget(history, DEFAULT_BUDGET)
}

/// FNV-1a style hasher: deterministic (no random seed) and fast on the memo keys.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    }
}

/// The register's state: (version, interned value).
type State = (u64, u32);

#[derive(Clone, Copy)]
enum MOutcome {
    Unknown,
    Read(State),
    Ok(u64),
    Conflict(State),
}

#[derive(Clone, Copy)]
struct MOp {
    /// Index in the input.
    index: usize,
    /// None: a read.
    cas: Option<(u64, u32)>,
    outcome: MOutcome,
}

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    call: bool,
    /// For a call: its return entry (NIL when unknown).
    matching: usize,
    prev: usize,
    next: usize,
}

fn step(state: State, op: &MOp) -> Option<State> {
    match (op.cas, op.outcome) {
        (None, MOutcome::Read(s)) => (s == state).then_some(state),
        (Some((exp, val)), MOutcome::Ok(v)) => {
            (state.0 == exp && exp.checked_add(1) == Some(v)).then_some((v, val))
        }
        (Some((exp, _)), MOutcome::Conflict(s)) => (state.0 != exp && s == state).then_some(state),
        // Unknown outcome: linearizing it only matters if it applies.
        (Some((exp, val)), MOutcome::Unknown) => {
            if state.0 == exp {
                exp.checked_add(1).map(|v| (v, val))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Checks a history, giving up after `max_steps` search steps.
pub fn check_with_budget(history: &[Operation], max_steps: u64) -> Result<(), CheckError> {
    // Intern values; 0 is the empty value.
    let mut values: std::collections::HashMap<Vec<u8>, u32, BuildHasherDefault<Fnv>> =
        Default::default();
    values.insert(Vec::new(), 0);
    let mut intern = |v: &[u8]| -> u32 {
        if let Some(&i) = values.get(v) {
            return i;
        }
        let i = u32::try_from(values.len()).unwrap_or(u32::MAX);
        values.insert(v.to_vec(), i);
        i
    };
    let mut ops: Vec<MOp> = Vec::new();
    for (index, o) in history.iter().enumerate() {
        if let Some((t, _)) = &o.complete {
            if *t < o.invoke {
                return Err(CheckError::Malformed {
                    index,
                    reason: "response before invocation".into(),
                });
            }
        }
        let cas = match &o.op {
            Op::Read => None,
            Op::Cas { expected, value } => Some((*expected, intern(value))),
        };
        let outcome = match (&o.op, &o.complete) {
            (Op::Read, None) => continue, // a read with no response constrains nothing
            (_, None) => MOutcome::Unknown,
            (Op::Read, Some((_, Outcome::Read { version, value }))) => {
                MOutcome::Read((*version, intern(value)))
            }
            (Op::Cas { .. }, Some((_, Outcome::CasOk { version }))) => MOutcome::Ok(*version),
            (Op::Cas { .. }, Some((_, Outcome::CasConflict { version, value }))) => {
                MOutcome::Conflict((*version, intern(value)))
            }
            _ => {
                return Err(CheckError::Malformed {
                    index,
                    reason: "result does not match the operation".into(),
                })
            }
        };
        ops.push(MOp {
            index,
            cas,
            outcome,
        });
    }

    // Entries in time order; at equal times calls come first (so the operations overlap).
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, m) in ops.iter().enumerate() {
        let o = &history[m.index];
        order.push((o.invoke, 0, i));
        if let Some((t, _)) = &o.complete {
            order.push((*t, 1, i));
        }
    }
    order.sort_unstable();
    // entries[0] is the head sentinel.
    let mut entries: Vec<Entry> = Vec::with_capacity(order.len() + 1);
    entries.push(Entry {
        op: NIL,
        call: false,
        matching: NIL,
        prev: NIL,
        next: NIL,
    });
    let mut call_entry = vec![NIL; ops.len()];
    for (k, &(_, kind, i)) in order.iter().enumerate() {
        let idx = k + 1;
        entries.push(Entry {
            op: i,
            call: kind == 0,
            matching: NIL,
            prev: idx - 1,
            next: NIL,
        });
        entries[idx - 1].next = idx;
        if kind == 0 {
            call_entry[i] = idx;
        } else {
            let c = call_entry[i];
            entries[c].matching = idx;
        }
    }

    fn lift(entries: &mut [Entry], e: usize) {
        let (p, n) = (entries[e].prev, entries[e].next);
        entries[p].next = n;
        if n != NIL {
            entries[n].prev = p;
        }
        let m = entries[e].matching;
        if m != NIL {
            let (p, n) = (entries[m].prev, entries[m].next);
            entries[p].next = n;
            if n != NIL {
                entries[n].prev = p;
            }
        }
    }
    fn unlift(entries: &mut [Entry], e: usize) {
        let m = entries[e].matching;
        if m != NIL {
            let (p, n) = (entries[m].prev, entries[m].next);
            entries[p].next = m;
            if n != NIL {
                entries[n].prev = m;
            }
        }
        let (p, n) = (entries[e].prev, entries[e].next);
        entries[p].next = e;
        if n != NIL {
            entries[n].prev = e;
        }
    }

    let words = ops.len().div_ceil(64).max(1);
    let mut lin = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State), BuildHasherDefault<Fnv>> = HashSet::default();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = (0, 0);
    let mut entry = entries[0].next;
    let mut steps: u64 = 0;
    // The deepest failure: (linearized count, op, state).
    let mut best: Option<(usize, usize, State)> = None;

    loop {
        if entry == NIL {
            return Ok(());
        }
        steps += 1;
        if steps > max_steps {
            return Err(CheckError::BudgetExhausted { steps });
        }
        let e = entries[entry];
        if e.call {
            if let Some(next_state) = step(state, &ops[e.op]) {
                lin[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((lin.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    lift(&mut entries, entry);
                    entry = entries[0].next;
                    continue;
                }
                lin[e.op / 64] &= !(1 << (e.op % 64));
            }
            entry = e.next;
        } else {
            if best.is_none_or(|(d, _, _)| stack.len() > d) {
                best = Some((stack.len(), e.op, state));
            }
            let Some((call, prev_state)) = stack.pop() else {
                let (linearized, op, st) = best.unwrap_or((0, e.op, state));
                let index = ops[op].index;
                let value = values
                    .iter()
                    .find(|(_, &i)| i == st.1)
                    .map(|(v, _)| v.clone())
                    .unwrap_or_default();
                return Err(CheckError::NotLinearizable(Box::new(Violation {
                    op_index: index,
                    op: history[index].clone(),
                    linearized,
                    state: (st.0, value),
                })));
            };
            state = prev_state;
            let op = entries[call].op;
            lin[op / 64] &= !(1 << (op % 64));
            unlift(&mut entries, call);
            entry = entries[call].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_lin(h: &[Operation]) -> Violation {
        match check(h) {
            Err(CheckError::NotLinearizable(v)) => *v,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert_eq!(check(&[]), Ok(()));
        let h = vec![
            Operation::read(1, 0, 1, 0, b""),
            Operation::cas_ok(1, 2, 3, 0, b"a"),
            Operation::read(2, 4, 5, 1, b"a"),
            Operation::cas_ok(2, 6, 7, 1, b"b"),
            Operation::cas_conflict(1, 8, 9, 1, b"c", 2, b"b"),
            Operation::read(1, 10, 11, 2, b"b"),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn concurrent_read_may_see_old_or_new() {
        // The write [0, 10] overlaps both reads; one sees it, the earlier one does not.
        let h = vec![
            Operation::cas_ok(1, 0, 10, 0, b"a"),
            Operation::read(2, 1, 3, 0, b""),
            Operation::read(3, 4, 6, 1, b"a"),
        ];
        assert_eq!(check(&h), Ok(()));
        // Both orders of two overlapping reads are fine as long as the new value is not
        // followed, in real time, by the old one.
        let h = vec![
            Operation::cas_ok(1, 0, 10, 0, b"a"),
            Operation::read(2, 1, 9, 1, b"a"),
            Operation::read(3, 2, 8, 0, b""),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn stale_read_is_caught() {
        // The write completed at 10; a read invoked at 20 still returns the absent record.
        let h = vec![
            Operation::cas_ok(1, 0, 10, 0, b"a"),
            Operation::read(2, 20, 30, 0, b""),
        ];
        let v = not_lin(&h);
        assert_eq!(v.op_index, 1);
        assert!(v.to_string().contains("not linearizable"));
        // New value then old value in real time, with the write still in flight.
        let h = vec![
            Operation::cas_ok(1, 0, 100, 0, b"a"),
            Operation::read(2, 10, 20, 1, b"a"),
            Operation::read(3, 30, 40, 0, b""),
        ];
        not_lin(&h);
    }

    #[test]
    fn lost_write_is_caught() {
        // Two acknowledged writes in sequence, then a read that sees only the first.
        let h = vec![
            Operation::cas_ok(1, 0, 10, 0, b"a"),
            Operation::cas_ok(2, 20, 30, 1, b"b"),
            Operation::read(3, 40, 50, 1, b"a"),
        ];
        let v = not_lin(&h);
        assert_eq!(v.op_index, 2);
        // An acknowledged write, then another write that succeeds as if it had never happened.
        let h = vec![
            Operation::cas_ok(1, 0, 10, 0, b"a"),
            Operation::cas_ok(2, 20, 30, 0, b"b"),
        ];
        not_lin(&h);
    }

    #[test]
    fn two_concurrent_cas_from_the_same_version_cannot_both_succeed() {
        let h = vec![
            Operation::cas_ok(1, 0, 10, 0, b"a"),
            Operation::cas_ok(2, 1, 11, 0, b"b"),
        ];
        not_lin(&h);
        // One wins, the other conflicts with the winner's value: fine.
        let h = vec![
            Operation::cas_ok(1, 0, 10, 0, b"a"),
            Operation::cas_conflict(2, 1, 11, 0, b"b", 1, b"a"),
        ];
        assert_eq!(check(&h), Ok(()));
        // A conflict naming the loser's own value is not.
        let h = vec![
            Operation::cas_ok(1, 0, 10, 0, b"a"),
            Operation::cas_conflict(2, 1, 11, 0, b"b", 1, b"b"),
        ];
        not_lin(&h);
    }

    #[test]
    fn conflict_must_name_another_version() {
        let h = vec![Operation::cas_conflict(1, 0, 1, 0, b"a", 0, b"")];
        not_lin(&h);
        // Ok must be expected + 1.
        let mut bad = Operation::cas_ok(1, 0, 1, 0, b"a");
        bad.complete = Some((1, Outcome::CasOk { version: 2 }));
        not_lin(&[bad]);
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_apply() {
        // A timed-out write; later reads may see it or not, but not both in that order.
        let w = Operation::cas_unknown(1, 0, 0, b"a");
        assert_eq!(
            check(&[w.clone(), Operation::read(2, 50, 60, 1, b"a")]),
            Ok(())
        );
        assert_eq!(
            check(&[w.clone(), Operation::read(2, 50, 60, 0, b"")]),
            Ok(())
        );
        assert_eq!(
            check(&[
                w.clone(),
                Operation::read(2, 50, 60, 0, b""),
                Operation::read(2, 70, 80, 1, b"a"),
            ]),
            Ok(())
        );
        not_lin(&[
            w.clone(),
            Operation::read(2, 50, 60, 1, b"a"),
            Operation::read(2, 70, 80, 0, b""),
        ]);
        // It cannot take effect before it was invoked.
        not_lin(&[
            Operation::read(2, 0, 5, 1, b"a"),
            Operation::cas_unknown(1, 10, 0, b"a"),
        ]);
        // Unknown reads are ignored.
        let r = Operation {
            client: 3,
            op: Op::Read,
            invoke: 0,
            complete: None,
        };
        assert_eq!(check(&[r]), Ok(()));
    }

    #[test]
    fn malformed_histories_are_reported() {
        let mut o = Operation::read(1, 10, 5, 0, b"");
        assert!(matches!(
            check(std::slice::from_ref(&o)),
            Err(CheckError::Malformed { index: 0, .. })
        ));
        o.complete = Some((20, Outcome::CasOk { version: 1 }));
        assert!(matches!(
            check(&[o]),
            Err(CheckError::Malformed { index: 0, .. })
        ));
    }

    #[test]
    fn random_sequential_register_histories_are_linearizable() {
        use rand::{Rng, SeedableRng};
        for seed in 0..50u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut state: (u64, Vec<u8>) = (0, Vec::new());
            let mut h = Vec::new();
            let mut t = 0u64;
            for i in 0..300u64 {
                // Operations overlap their neighbours: each takes effect at `t`, and its
                // interval stretches randomly around it.
                let start = t.saturating_sub(rng.gen_range(0..3));
                t += 2;
                let end = t + rng.gen_range(0..3);
                let client = i % 4;
                if rng.gen_bool(0.5) {
                    h.push(Operation::read(client, start, end, state.0, &state.1));
                } else {
                    let expected = if rng.gen_bool(0.7) {
                        state.0
                    } else {
                        state.0 + 1
                    };
                    let value = format!("v{i}").into_bytes();
                    if expected == state.0 {
                        h.push(Operation::cas_ok(client, start, end, expected, &value));
                        state = (expected + 1, value);
                    } else {
                        h.push(Operation::cas_conflict(
                            client, start, end, expected, &value, state.0, &state.1,
                        ));
                    }
                }
            }
            assert_eq!(check(&h), Ok(()), "seed {seed}");
            // Corrupting one read result to a value never written must be caught.
            let idx = h.iter().rposition(|o| o.op == Op::Read).unwrap();
            if let Some((_, Outcome::Read { value, .. })) = &mut h[idx].complete {
                *value = b"never written".to_vec();
            }
            assert!(matches!(check(&h), Err(CheckError::NotLinearizable(_))));
        }
    }

    #[test]
    fn budget_is_enforced() {
        let mut h = Vec::new();
        for c in 0..12u64 {
            h.push(Operation::cas_unknown(c, 0, c, b"x"));
        }
        h.push(Operation::read(99, 1, 2, 7, b"nope"));
        assert!(matches!(
            check_with_budget(&h, 10),
            Err(CheckError::BudgetExhausted { .. })
        ));
    }
}
