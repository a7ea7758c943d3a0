//! Agreement on views without an oracle, and read leases ([`crate::Config::view_agreement`]).
//!
//! View `e + 1` is chosen by the members of view `e`, one Paxos instance per epoch, in the
//! style of Vertical Paxos (Lamport, Malkhi & Zhou 2009): the acceptors of the instance that
//! picks view `e + 1` are the members of view `e`, and a view is installed only once a
//! majority of them accepted it. `docs/CHAIN.md` ("Agreement on views") has the argument.
//!
//! - A member whose suggestion ([`crate::Event::Suggest`]) differs from its view proposes:
//!   `Prepare` with a ballot `(round, its position)` to every member of its view. A member
//!   promises if the ballot is at least the highest it promised, and answers with the
//!   proposal it accepted for `e + 1` (if any) and whether it holds the chain's state.
//! - With promises from a majority, the proposer proposes the accepted proposal with the
//!   highest ballot among them, or else its own suggestion, provided the suggestion keeps the
//!   relative order of the members it keeps and contains a member that promised while holding
//!   the state. `Accept` goes to every member; a member accepts unless it promised a higher
//!   ballot, and only once every read lease it granted has expired. From then on it processes
//!   no message of the data path of epoch `e`, grants no lease, and answers no client.
//! - With a majority of acceptances the proposer installs the view and sends `Decided` to the
//!   members of both views. Laggards learn it from any member of a newer epoch (a message of
//!   an older epoch is answered with `Decided`), a replica that expects to be added asks with
//!   `ViewRequest`, and a member that accepted a view and heard nothing more proposes itself,
//!   which completes the pending proposal.
//! - Read leases: each member asks the others for a lease every `lease_renew_ms`; it answers
//!   reads only while a majority of its view (itself included) granted it one within the last
//!   `lease_ms - lease_margin_ms`. A member grants a lease only while it is not changing views
//!   (no prepare or accept seen within twice a lease), and accepts no next view until
//!   `lease_ms` after the last lease it granted. So no view `e + 1` can be installed while a
//!   member of view `e` holds a lease, and a member that was removed without hearing of it
//!   stops answering reads within a lease.

use super::{Action, Replica, Validate};
use crate::config::MAX_MEMBERS;
use crate::message::{Ballot, Msg, Proposal, View};
use std::collections::VecDeque;
use std::fmt::Debug;

/// Lease requests remembered (to match grants).
const LEASE_REQUESTS_KEPT: usize = 8;
/// Peers remembered for rate-limiting `Decided` and `ViewRequest`.
const CONTACTS_KEPT: usize = 64;

/// The agreement state of one replica.
#[derive(Clone, Debug)]
pub(super) struct Agreement<A> {
    /// The driver's suggestion without the suspected members.
    suggestion: Option<Vec<A>>,
    /// Since when the suggestion differs from the view.
    differs_since: Option<u64>,
    /// Acceptor (durable): the highest ballot promised for the next view.
    pub(super) promised: Option<Ballot>,
    /// Acceptor (durable): the proposal accepted for the next view.
    pub(super) accepted: Option<Proposal<A>>,
    /// When `accepted` was set (a member stuck with it proposes after a while).
    pub(super) accepted_at: u64,
    /// Accept no next view before this (leases granted run until then).
    pub(super) no_accept_before: u64,
    /// Grant no lease before this (a view change is under way).
    hold_until: u64,
    lease_seq: u64,
    /// (seq, sent at) of recent lease requests.
    lease_sent: VecDeque<(u64, u64)>,
    /// (member, lease valid until) for the current view, this replica included.
    grants: Vec<(A, u64)>,
    renew_at: u64,
    proposer: Option<Proposer<A>>,
    /// Highest round seen in this instance.
    max_round: u64,
    /// Do not start a proposal before this.
    propose_after: u64,
    /// (peer, next time we may send it a `Decided` or `ViewRequest`).
    contacts: VecDeque<(A, u64)>,
    /// Next `ViewRequest` round of a replica that expects to be added.
    poll_at: u64,
}

#[derive(Clone, Debug)]
struct Proposer<A> {
    ballot: Ballot,
    phase: Phase<A>,
    retry_at: u64,
}

#[derive(Clone, Debug)]
enum Phase<A> {
    /// Promises collected: (member, its accepted proposal, it holds the state).
    Prepare {
        promises: Vec<(A, Option<Proposal<A>>, bool)>,
    },
    /// Acceptances collected.
    Accept {
        proposal: Proposal<A>,
        accepted: Vec<A>,
    },
}

/// An acceptor's answer.
enum Vote<A> {
    Promise(Option<Proposal<A>>, bool),
    Accepted,
    Nack(Ballot),
    /// A lease this replica granted has not expired yet: asked again later.
    Deferred,
    /// Not a proposal for the next view.
    Invalid,
}

impl<A: Clone + Eq> Agreement<A> {
    pub(super) fn new() -> Self {
        Agreement {
            suggestion: None,
            differs_since: None,
            promised: None,
            accepted: None,
            accepted_at: 0,
            no_accept_before: 0,
            hold_until: 0,
            lease_seq: 0,
            lease_sent: VecDeque::new(),
            grants: Vec::new(),
            renew_at: 0,
            proposer: None,
            max_round: 0,
            propose_after: 0,
            contacts: VecDeque::new(),
            poll_at: 0,
        }
    }

    pub(super) fn has_suggestion(&self) -> bool {
        self.suggestion.is_some()
    }

    /// The driver's suggestion without the suspected members.
    pub(super) fn suggestion(&self) -> Option<&[A]> {
        self.suggestion.as_deref()
    }

    /// The proposal this replica is asking the others to accept (phase 2), if any.
    pub(super) fn proposing(&self) -> Option<&Proposal<A>> {
        match &self.proposer.as_ref()?.phase {
            Phase::Accept { proposal, .. } => Some(proposal),
            Phase::Prepare { .. } => None,
        }
    }

    /// A new view was installed: the instance of the old one is over.
    fn reset(&mut self, now: u64) {
        self.promised = None;
        self.accepted = None;
        self.accepted_at = now;
        self.no_accept_before = 0;
        self.hold_until = 0;
        self.lease_sent.clear();
        self.grants.clear();
        self.renew_at = now;
        self.proposer = None;
        self.max_round = 0;
        self.propose_after = 0;
    }

    fn set_grant(&mut self, who: &A, until: u64) {
        match self.grants.iter_mut().find(|(a, _)| a == who) {
            Some((_, u)) => *u = (*u).max(until),
            None => self.grants.push((who.clone(), until)),
        }
    }

    /// Internal consistency (for `check_invariants`).
    pub(super) fn check(&self, epoch: u64, view: Option<&View<A>>) -> Result<(), String> {
        if let Some(p) = &self.accepted {
            if Some(p.view.epoch) != epoch.checked_add(1) {
                return Err("accepted a proposal for another epoch".into());
            }
            if self.promised.is_none_or(|b| b < p.ballot) {
                return Err("accepted above the promise".into());
            }
        }
        let n = view.map_or(0, |v| v.members.len());
        if self.grants.len() > n || self.grants.len() > MAX_MEMBERS {
            return Err("lease grants of non-members".into());
        }
        if self.lease_sent.len() > LEASE_REQUESTS_KEPT || self.contacts.len() > CONTACTS_KEPT {
            return Err("agreement bookkeeping unbounded".into());
        }
        if let Some(p) = &self.proposer {
            let votes = match &p.phase {
                Phase::Prepare { promises } => promises.len(),
                Phase::Accept { accepted, .. } => accepted.len(),
            };
            if votes > n {
                return Err("more votes than members".into());
            }
        }
        Ok(())
    }
}

impl<A: Clone + Eq + Debug, V: Validate> Replica<A, V> {
    /// Whether reads may be answered at `now`: always with an oracle; under agreement only
    /// with a lease from a majority of the view.
    pub(super) fn lease_valid(&self, now: u64) -> bool {
        if !self.cfg.view_agreement || self.cfg.unsafe_no_lease {
            return true;
        }
        let Some((view, _)) = self.member_view() else {
            return false;
        };
        if self.ag.accepted.is_some() {
            return false;
        }
        let n = self
            .ag
            .grants
            .iter()
            .filter(|(a, until)| *until > now && view.position(a).is_some())
            .count();
        n >= view.quorum()
    }

    fn proposer_quorum(&self) -> usize {
        if self.cfg.unsafe_install_without_majority {
            return 1;
        }
        self.view.as_ref().map_or(1, View::quorum)
    }

    fn retry_ms(&self) -> u64 {
        self.cfg.propose_retry_ms
    }

    fn send(out: &mut Vec<Action<A>>, to: A, msg: Msg<A>) {
        out.push(Action::Send { to, msg });
    }

    /// Rate limit of `Decided` and `ViewRequest` answers: at most one per peer per retry
    /// interval.
    fn contact_ok(&mut self, now: u64, to: &A) -> bool {
        let next = now.saturating_add(self.cfg.propose_retry_ms);
        if let Some((_, at)) = self.ag.contacts.iter_mut().find(|(a, _)| a == to) {
            if now < *at {
                return false;
            }
            *at = next;
            return true;
        }
        if self.ag.contacts.len() >= CONTACTS_KEPT {
            self.ag.contacts.pop_front();
        }
        self.ag.contacts.push_back((to.clone(), next));
        true
    }

    // ----- suggestions -----

    pub(super) fn on_suggest(
        &mut self,
        now: u64,
        members: Vec<A>,
        suspected: Vec<A>,
        out: &mut Vec<Action<A>>,
    ) {
        if !self.cfg.view_agreement || members.len() > MAX_MEMBERS || suspected.len() > MAX_MEMBERS
        {
            self.stats.ignored += 1;
            return;
        }
        let mut target: Vec<A> = Vec::with_capacity(members.len());
        for m in members {
            if !suspected.contains(&m) && !target.contains(&m) {
                target.push(m);
            }
        }
        self.ag.suggestion = Some(target);
        self.update_differs(now);
        self.maybe_propose(now, out);
        self.poll_view(now, out);
    }

    fn update_differs(&mut self, now: u64) {
        let differs = match (&self.ag.suggestion, &self.view) {
            (Some(s), Some(v)) => *s != v.members,
            _ => false,
        };
        if !differs {
            self.ag.differs_since = None;
        } else if self.ag.differs_since.is_none() {
            self.ag.differs_since = Some(now);
        }
    }

    fn wants_change(&self, now: u64) -> bool {
        let Some(pos) = self.pos else {
            return false;
        };
        let delay = self.cfg.propose_delay_ms.saturating_mul(pos as u64);
        self.ag
            .differs_since
            .is_some_and(|t| now >= t.saturating_add(delay))
            && self.ag.suggestion.as_ref().is_some_and(|s| !s.is_empty())
    }

    fn stuck(&self, now: u64) -> bool {
        self.ag.accepted.is_some()
            && now
                >= self
                    .ag
                    .accepted_at
                    .saturating_add(self.retry_ms().saturating_mul(2))
    }

    // ----- timer -----

    pub(super) fn ag_on_timer(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        self.lease_tick(now, out);
        self.proposer_tick(now, out);
        self.maybe_propose(now, out);
        self.poll_view(now, out);
    }

    fn lease_tick(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        if now < self.ag.renew_at {
            return;
        }
        self.ag.renew_at = now.saturating_add(self.cfg.lease_renew_ms);
        let Some((view, _)) = self.member_view() else {
            return;
        };
        if self.ag.accepted.is_some() {
            return;
        }
        let epoch = view.epoch;
        let others: Vec<A> = view
            .members
            .iter()
            .filter(|m| **m != self.me)
            .cloned()
            .collect();
        self.ag.lease_seq = self.ag.lease_seq.wrapping_add(1);
        let seq = self.ag.lease_seq;
        if self.ag.lease_sent.len() >= LEASE_REQUESTS_KEPT {
            self.ag.lease_sent.pop_front();
        }
        self.ag.lease_sent.push_back((seq, now));
        if now >= self.ag.hold_until {
            // This replica's own grant.
            let until = now.saturating_add(self.cfg.lease_ms);
            self.ag.no_accept_before = self.ag.no_accept_before.max(until);
            let me = self.me.clone();
            self.ag.set_grant(&me, until - self.cfg.lease_margin_ms);
        }
        for m in others {
            Self::send(out, m, Msg::LeaseRequest { epoch, seq });
        }
    }

    /// A member that expects to be in the chain but has no view with it asks for the view.
    fn poll_view(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        if self.pos.is_some() || now < self.ag.poll_at {
            return;
        }
        let Some(s) = &self.ag.suggestion else {
            return;
        };
        if !s.contains(&self.me) {
            return;
        }
        let epoch = self.epoch();
        for m in s.iter().filter(|m| **m != self.me) {
            Self::send(out, m.clone(), Msg::ViewRequest { epoch });
        }
        self.ag.poll_at = now.saturating_add(self.retry_ms());
    }

    // ----- proposer -----

    fn maybe_propose(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        if self.ag.proposer.is_some() || now < self.ag.propose_after {
            return;
        }
        if !self.stuck(now) && !self.wants_change(now) {
            return;
        }
        let Some((view, pos)) = self.member_view() else {
            return;
        };
        let epoch = view.epoch;
        let others: Vec<A> = view
            .members
            .iter()
            .filter(|m| **m != self.me)
            .cloned()
            .collect();
        let round = self
            .ag
            .max_round
            .max(self.ag.promised.map_or(0, |b| b.round))
            .saturating_add(1);
        self.ag.max_round = round;
        let ballot = Ballot {
            round,
            node: u32::try_from(pos).unwrap_or(u32::MAX),
        };
        self.ag.proposer = Some(Proposer {
            ballot,
            phase: Phase::Prepare {
                promises: Vec::new(),
            },
            retry_at: now.saturating_add(self.retry_ms()),
        });
        self.stats.proposals += 1;
        for m in others {
            Self::send(out, m, Msg::Prepare { epoch, ballot });
        }
        let me = self.me.clone();
        match self.vote_prepare(now, ballot) {
            Vote::Promise(acc, synced) => self.on_promise(now, me, ballot, acc, synced, out),
            Vote::Nack(p) => self.on_nack(now, p),
            _ => {}
        }
    }

    fn proposer_tick(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        let still_wanted = self.wants_change(now) || self.ag.accepted.is_some();
        let Some((view, _)) = self.member_view() else {
            return;
        };
        let epoch = view.epoch;
        let members = view.members.clone();
        let me = self.me.clone();
        let retry = self.retry_ms();
        let Some(p) = &mut self.ag.proposer else {
            return;
        };
        if now < p.retry_at {
            return;
        }
        p.retry_at = now.saturating_add(retry);
        let ballot = p.ballot;
        match &p.phase {
            Phase::Prepare { promises } => {
                if !still_wanted {
                    // Nothing accepted yet and the suggestion no longer asks for a change.
                    self.ag.proposer = None;
                    return;
                }
                for m in members.iter().filter(|m| **m != me) {
                    if !promises.iter().any(|(a, ..)| a == m) {
                        Self::send(out, m.clone(), Msg::Prepare { epoch, ballot });
                    }
                }
            }
            Phase::Accept { proposal, accepted } => {
                let self_done = accepted.contains(&me);
                let proposal = proposal.clone();
                for m in members.iter().filter(|m| **m != me) {
                    if !accepted.contains(m) {
                        Self::send(
                            out,
                            m.clone(),
                            Msg::Accept {
                                epoch,
                                proposal: proposal.clone(),
                            },
                        );
                    }
                }
                if !self_done {
                    self.self_accept(now, &proposal, out);
                }
            }
        }
    }

    fn self_accept(&mut self, now: u64, proposal: &Proposal<A>, out: &mut Vec<Action<A>>) {
        let me = self.me.clone();
        match self.vote_accept(now, proposal) {
            Vote::Accepted => self.on_accepted(now, me, proposal.ballot, out),
            Vote::Nack(p) => self.on_nack(now, p),
            _ => {}
        }
    }

    fn on_promise(
        &mut self,
        now: u64,
        from: A,
        ballot: Ballot,
        accepted: Option<Proposal<A>>,
        synced: bool,
        out: &mut Vec<Action<A>>,
    ) {
        let quorum = self.proposer_quorum();
        let Some(p) = &mut self.ag.proposer else {
            return;
        };
        if p.ballot != ballot {
            return;
        }
        let Phase::Prepare { promises } = &mut p.phase else {
            return;
        };
        if promises.iter().any(|(a, ..)| *a == from) {
            return;
        }
        promises.push((from, accepted, synced));
        if promises.len() < quorum {
            return;
        }
        let promises = std::mem::take(promises);
        let Some((view, _)) = self.member_view() else {
            return;
        };
        let epoch = view.epoch;
        let next = epoch.saturating_add(1);
        // A view some majority may have chosen must be kept: the accepted proposal with the
        // highest ballot among the promises.
        let adopted = promises
            .iter()
            .filter_map(|(_, a, _)| a.as_ref())
            .filter(|a| a.view.epoch == next)
            .max_by_key(|a| a.ballot)
            .map(|a| a.view.members.clone());
        let members = match adopted.or_else(|| self.own_value(&promises)) {
            Some(m) => m,
            None => {
                // Nothing valid to propose (yet): try again later.
                self.ag.proposer = None;
                self.stats.nacks += 1;
                self.ag.propose_after = now.saturating_add(self.retry_ms());
                return;
            }
        };
        let proposal = Proposal {
            ballot,
            view: View::new(next, members),
        };
        let others: Vec<A> = view
            .members
            .iter()
            .filter(|m| **m != self.me)
            .cloned()
            .collect();
        let retry_at = now.saturating_add(self.retry_ms());
        if let Some(p) = &mut self.ag.proposer {
            p.phase = Phase::Accept {
                proposal: proposal.clone(),
                accepted: Vec::new(),
            };
            p.retry_at = retry_at;
        }
        for m in others {
            Self::send(
                out,
                m,
                Msg::Accept {
                    epoch,
                    proposal: proposal.clone(),
                },
            );
        }
        self.self_accept(now, &proposal, out);
    }

    /// The proposer's own value: its suggestion, if it keeps the relative order of the
    /// members it keeps and contains a member that promised while holding the state.
    fn own_value(&self, promises: &[(A, Option<Proposal<A>>, bool)]) -> Option<Vec<A>> {
        let (view, _) = self.member_view()?;
        let target = match &self.ag.suggestion {
            Some(s) if !s.is_empty() => s.clone(),
            _ => view.members.clone(),
        };
        let mut last: Option<usize> = None;
        for m in &target {
            if let Some(i) = view.position(m) {
                if last.is_some_and(|l| i <= l) {
                    return None;
                }
                last = Some(i);
            }
        }
        let holds_state = target
            .iter()
            .any(|m| promises.iter().any(|(a, _, synced)| a == m && *synced));
        holds_state.then_some(target)
    }

    fn on_accepted(&mut self, now: u64, from: A, ballot: Ballot, out: &mut Vec<Action<A>>) {
        let quorum = self.proposer_quorum();
        let Some(p) = &mut self.ag.proposer else {
            return;
        };
        if p.ballot != ballot {
            return;
        }
        let Phase::Accept { proposal, accepted } = &mut p.phase else {
            return;
        };
        if accepted.contains(&from) {
            return;
        }
        accepted.push(from);
        if accepted.len() < quorum {
            return;
        }
        let view = proposal.view.clone();
        self.ag.proposer = None;
        self.stats.decided += 1;
        let mut tell: Vec<A> = self.view.as_ref().map_or(Vec::new(), |v| v.members.clone());
        for m in &view.members {
            if !tell.contains(m) {
                tell.push(m.clone());
            }
        }
        for m in tell.into_iter().filter(|m| *m != self.me) {
            Self::send(out, m, Msg::Decided { view: view.clone() });
        }
        self.ag_install(now, view, false, out);
    }

    fn on_nack(&mut self, now: u64, promised: Ballot) {
        let Some(p) = &self.ag.proposer else {
            return;
        };
        if promised <= p.ballot {
            return;
        }
        self.ag.max_round = self.ag.max_round.max(promised.round);
        self.ag.proposer = None;
        self.stats.nacks += 1;
        // Back off, the head least: duelling proposers settle.
        let pos = self.pos.unwrap_or(0) as u64;
        self.ag.propose_after = now.saturating_add(self.retry_ms().saturating_mul(1 + pos));
    }

    // ----- acceptor -----

    /// A view change is under way: grant no lease for a while, so that an accept can follow.
    fn hold(&mut self, now: u64) {
        let until = now
            .saturating_add(self.cfg.lease_ms.saturating_mul(2))
            .saturating_add(self.retry_ms());
        self.ag.hold_until = self.ag.hold_until.max(until);
    }

    fn vote_prepare(&mut self, now: u64, ballot: Ballot) -> Vote<A> {
        self.hold(now);
        self.ag.max_round = self.ag.max_round.max(ballot.round);
        if let Some(p) = self.ag.promised {
            if p > ballot {
                return Vote::Nack(p);
            }
        }
        self.ag.promised = Some(ballot);
        Vote::Promise(self.ag.accepted.clone(), self.synced)
    }

    fn vote_accept(&mut self, now: u64, proposal: &Proposal<A>) -> Vote<A> {
        if Some(proposal.view.epoch) != self.epoch().checked_add(1)
            || !proposal.view.is_well_formed()
        {
            return Vote::Invalid;
        }
        self.hold(now);
        self.ag.max_round = self.ag.max_round.max(proposal.ballot.round);
        if let Some(p) = self.ag.promised {
            if p > proposal.ballot {
                return Vote::Nack(p);
            }
        }
        if now < self.ag.no_accept_before {
            self.stats.accept_deferred += 1;
            return Vote::Deferred;
        }
        self.ag.promised = Some(proposal.ballot);
        if self.ag.accepted.as_ref() != Some(proposal) {
            self.ag.accepted = Some(proposal.clone());
            self.ag.accepted_at = now;
            self.stats.accepts += 1;
        }
        Vote::Accepted
    }

    // ----- messages -----

    pub(super) fn ag_on_message(
        &mut self,
        now: u64,
        from: A,
        msg: Msg<A>,
        out: &mut Vec<Action<A>>,
    ) {
        if from == self.me {
            self.stats.ignored += 1;
            return;
        }
        let my = self.epoch();
        match msg {
            Msg::Decided { view } => {
                if !view.is_well_formed() {
                    self.stats.ignored += 1;
                } else if self.view.is_none() || view.epoch > my {
                    self.ag_install(now, view, false, out);
                }
                return;
            }
            Msg::ViewRequest { epoch } => {
                if epoch < my {
                    self.teach(now, from, out);
                }
                return;
            }
            _ => {}
        }
        let e = msg.epoch();
        if self.view.is_none() || e != my {
            self.stats.epoch_mismatch += 1;
            if self.view.is_some() && e < my {
                self.teach(now, from, out);
            } else if e > my && self.contact_ok(now, &from) {
                Self::send(out, from, Msg::ViewRequest { epoch: my });
            }
            return;
        }
        let Some((view, _)) = self.member_view() else {
            self.stats.ignored += 1;
            return;
        };
        let Some(from_pos) = view.position(&from) else {
            self.stats.ignored += 1;
            return;
        };
        let names_sender = |b: &Ballot| b.node as usize == from_pos;
        match msg {
            Msg::Prepare { ballot, .. } => {
                if !names_sender(&ballot) {
                    self.stats.ignored += 1;
                    return;
                }
                let reply = match self.vote_prepare(now, ballot) {
                    Vote::Promise(accepted, synced) => Msg::Promise {
                        epoch: my,
                        ballot,
                        accepted,
                        synced,
                    },
                    Vote::Nack(promised) => Msg::Nack {
                        epoch: my,
                        promised,
                    },
                    _ => return,
                };
                Self::send(out, from, reply);
            }
            Msg::Accept { proposal, .. } => {
                if !names_sender(&proposal.ballot) {
                    self.stats.ignored += 1;
                    return;
                }
                let reply = match self.vote_accept(now, &proposal) {
                    Vote::Accepted => Msg::Accepted {
                        epoch: my,
                        ballot: proposal.ballot,
                    },
                    Vote::Nack(promised) => Msg::Nack {
                        epoch: my,
                        promised,
                    },
                    Vote::Invalid => {
                        self.stats.ignored += 1;
                        return;
                    }
                    _ => return,
                };
                Self::send(out, from, reply);
            }
            Msg::Promise {
                ballot,
                accepted,
                synced,
                ..
            } => {
                let next = my.checked_add(1);
                if accepted
                    .as_ref()
                    .is_some_and(|a| Some(a.view.epoch) != next || !a.view.is_well_formed())
                {
                    self.stats.ignored += 1;
                    return;
                }
                self.on_promise(now, from, ballot, accepted, synced, out);
            }
            Msg::Accepted { ballot, .. } => self.on_accepted(now, from, ballot, out),
            Msg::Nack { promised, .. } => self.on_nack(now, promised),
            Msg::LeaseRequest { seq, .. } => {
                if self.ag.accepted.is_some() || now < self.ag.hold_until {
                    return;
                }
                let until = now.saturating_add(self.cfg.lease_ms);
                self.ag.no_accept_before = self.ag.no_accept_before.max(until);
                Self::send(out, from, Msg::LeaseGrant { epoch: my, seq });
            }
            Msg::LeaseGrant { seq, .. } => {
                let Some(&(_, sent)) = self.ag.lease_sent.iter().find(|(s, _)| *s == seq) else {
                    self.stats.ignored += 1;
                    return;
                };
                let until = sent
                    .saturating_add(self.cfg.lease_ms)
                    .saturating_sub(self.cfg.lease_margin_ms);
                self.ag.set_grant(&from, until);
            }
            Msg::Decided { .. } | Msg::ViewRequest { .. } => {}
            data => {
                if self.ag.accepted.is_some() {
                    // Accepted the next view: epoch `e` is over for this member.
                    self.stats.stopped += 1;
                    return;
                }
                self.on_data_message(now, from, data, out);
            }
        }
    }

    /// Answers a member of an older epoch with the current view.
    fn teach(&mut self, now: u64, to: A, out: &mut Vec<Action<A>>) {
        let Some(view) = self.view.clone() else {
            return;
        };
        if self.contact_ok(now, &to) {
            Self::send(out, to, Msg::Decided { view });
        }
    }

    /// Installs an agreed view. Only a member that held the state in the view just before it
    /// keeps its state; a replica that skipped a view (or was catching up) starts a state
    /// transfer.
    pub(super) fn ag_install(
        &mut self,
        now: u64,
        view: View<A>,
        founding: bool,
        out: &mut Vec<Action<A>>,
    ) {
        let direct = founding
            || (self.pos.is_some()
                && self.synced
                && self
                    .view
                    .as_ref()
                    .is_some_and(|v| v.epoch.checked_add(1) == Some(view.epoch)));
        if !direct {
            self.synced = false;
        }
        self.ag.reset(now);
        out.push(Action::ViewInstalled(view.clone()));
        self.install_view(now, view, out);
        self.update_differs(now);
        self.lease_tick(now, out);
    }
}
