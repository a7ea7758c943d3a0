//! `forget`: drops snapshots from the chain, by name and/or by a retention policy in the manner
//! of restic (`--keep-last`, `--keep-hourly`, `--keep-daily`, `--keep-weekly`,
//! `--keep-monthly`, `--keep-yearly`).
//!
//! The selection is a pure function ([`plan`]): snapshots (number, time, source) in, a decision
//! per snapshot out, with the reasons a kept one is kept. Applying it ([`forget`]) rewrites the
//! chain so that it skips the removed snapshots: every kept snapshot newer than the oldest
//! removed one is stored again as a new object (same number, nonce, time, manifest and totals;
//! a new parent link), oldest first, and the root is pointed at the rewritten latest with the
//! next root sequence number. The root update is a compare-and-swap on that number; when another
//! device of the same user updated the root meanwhile, the work is redone on the new chain.
//!
//! Nothing is deleted from the ring: the objects of forgotten snapshots, and data only they
//! used, stay on the nodes until a `prune` removes them. [`referenced_keys`] gives the documents
//! the kept snapshots still need.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};
use crate::model::EntryKind;
use crate::repo::{Repo, RootBackoff, RootUpdate, SnapshotRef};

/// Retention rules: how many snapshots each rule keeps (0: the rule is off). Rules apply per
/// source directory (restic's default grouping by paths); a snapshot kept by any rule is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The N newest snapshots.
    pub keep_last: u32,
    /// The newest snapshot of each of the N newest hours that have snapshots.
    pub keep_hourly: u32,
    /// ... of each of the N newest days (UTC) that have snapshots.
    pub keep_daily: u32,
    /// ... of each of the N newest ISO weeks (Monday to Sunday, UTC).
    pub keep_weekly: u32,
    /// ... of each of the N newest calendar months (UTC).
    pub keep_monthly: u32,
    /// ... of each of the N newest calendar years (UTC).
    pub keep_yearly: u32,
}

impl Policy {
    /// The retention the sync watcher applies after every snapshot it publishes, unless the
    /// client config says otherwise: the 10 newest, then one per hour for a day, one per day
    /// for a week, one per week for a month, one per month for a year, one per year for 3.
    #[must_use]
    pub fn sync_default() -> Policy {
        Policy {
            keep_last: 10,
            keep_hourly: 24,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 12,
            keep_yearly: 3,
        }
    }

    /// Whether no rule is on.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules().iter().all(|(_, n)| *n == 0)
    }

    fn rules(&self) -> [(Reason, u32); 6] {
        [
            (Reason::Last, self.keep_last),
            (Reason::Hourly, self.keep_hourly),
            (Reason::Daily, self.keep_daily),
            (Reason::Weekly, self.keep_weekly),
            (Reason::Monthly, self.keep_monthly),
            (Reason::Yearly, self.keep_yearly),
        ]
    }

    /// The rules as options, e.g. `--keep-last 3 --keep-daily 7` (empty if none).
    #[must_use]
    pub fn describe(&self) -> String {
        self.rules()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("--keep-{} {n}", r.as_str()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Why a snapshot is kept, or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The chain's newest snapshot: the root must point at something.
    Latest,
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    /// Only named snapshots are forgotten (no rule given) and this one was not named.
    Unnamed,
    /// Removed: named on the command line.
    Named,
    /// Removed: no rule keeps it.
    Policy,
}

impl Reason {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Latest => "latest",
            Reason::Last => "last",
            Reason::Hourly => "hourly",
            Reason::Daily => "daily",
            Reason::Weekly => "weekly",
            Reason::Monthly => "monthly",
            Reason::Yearly => "yearly",
            Reason::Unnamed => "not named",
            Reason::Named => "named",
            Reason::Policy => "no rule keeps it",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`plan`] needs to know of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub number: u64,
    /// Creation time, ns since the Unix epoch.
    pub time_ns: i64,
    /// The rules apply per group: the source directory.
    pub group: String,
}

/// The fate of one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub number: u64,
    pub keep: bool,
    /// Why it is kept (every rule that keeps it), or why it is removed (one reason).
    pub reasons: Vec<Reason>,
}

/// Why [`plan`] refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("forget: nothing to do: name snapshots to forget or give a rule such as --keep-last N (see --help)")]
    NothingToDo,
    #[error("refusing to forget snapshot {0}: it is the latest snapshot, which the root must point at (back up again first, then forget it)")]
    Latest(u64),
    #[error("no snapshot {0} in the chain")]
    Unknown(u64),
}

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm; proleptic Gregorian).
#[must_use]
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d is in 1..=31 and m in 1..=12 by construction.
    (y, m as u32, d as u32)
}

/// The bucket of a time for a rule: snapshots in the same bucket compete for one slot. UTC.
fn bucket(rule: Reason, number: u64, time_ns: i64) -> i64 {
    let secs = time_ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    match rule {
        // Every snapshot is its own bucket.
        Reason::Last => number as i64,
        Reason::Hourly => secs.div_euclid(3600),
        Reason::Daily => days,
        // ISO weeks start on Monday; 1970-01-01 was a Thursday.
        Reason::Weekly => (days + 3).div_euclid(7),
        Reason::Monthly => {
            let (y, m, _) = civil_from_days(days);
            y * 12 + i64::from(m) - 1
        }
        Reason::Yearly => civil_from_days(days).0,
        _ => 0,
    }
}

/// Decides which snapshots to keep. `latest` is the chain's newest snapshot (always kept);
/// `named` are forgotten whatever the rules say (and then left out when the rules are applied).
/// Each rule of `policy` walks every group's remaining snapshots newest first (by time, then
/// number) and keeps the first snapshot of each new bucket (hour, day, ...) until it has kept
/// its count, as restic does: "the newest snapshot of each of the last N days that have
/// snapshots". Decisions come back in the order of `snapshots`.
pub fn plan(
    snapshots: &[Candidate],
    latest: u64,
    policy: &Policy,
    named: &BTreeSet<u64>,
) -> std::result::Result<Vec<Decision>, PlanError> {
    if policy.is_empty() && named.is_empty() {
        return Err(PlanError::NothingToDo);
    }
    if named.contains(&latest) {
        return Err(PlanError::Latest(latest));
    }
    if let Some(n) = named
        .iter()
        .find(|n| !snapshots.iter().any(|s| s.number == **n))
    {
        return Err(PlanError::Unknown(*n));
    }
    let mut reasons: BTreeMap<u64, Vec<Reason>> = BTreeMap::new();
    let mut groups: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for s in snapshots {
        reasons.entry(s.number).or_default();
        if s.number == latest {
            reasons.entry(s.number).or_default().push(Reason::Latest);
        }
        if named.contains(&s.number) {
            continue;
        }
        if policy.is_empty() {
            reasons.entry(s.number).or_default().push(Reason::Unnamed);
        } else {
            groups.entry(s.group.as_str()).or_default().push(s);
        }
    }
    for members in groups.values_mut() {
        members.sort_by_key(|s| std::cmp::Reverse((s.time_ns, s.number)));
        for (rule, count) in policy.rules() {
            let mut left = count;
            let mut last: Option<i64> = None;
            for s in members.iter() {
                if left == 0 {
                    break;
                }
                let b = bucket(rule, s.number, s.time_ns);
                if last != Some(b) {
                    last = Some(b);
                    left -= 1;
                    reasons.entry(s.number).or_default().push(rule);
                }
            }
        }
    }
    Ok(snapshots
        .iter()
        .map(|s| {
            let why = reasons.get(&s.number).cloned().unwrap_or_default();
            if why.is_empty() {
                Decision {
                    number: s.number,
                    keep: false,
                    reasons: vec![if named.contains(&s.number) {
                        Reason::Named
                    } else {
                        Reason::Policy
                    }],
                }
            } else {
                Decision {
                    number: s.number,
                    keep: true,
                    reasons: why,
                }
            }
        })
        .collect())
}

/// One snapshot in a [`ForgetReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForgetLine {
    pub number: u64,
    /// Short id: for a kept snapshot that was rewritten, the new object's.
    pub id: String,
    /// UTC, "YYYY-MM-DD HH:MM:SS".
    pub time: String,
    pub source: String,
    pub reasons: Vec<Reason>,
}

/// What `forget` did (or, with `dry_run`, would do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForgetReport {
    pub dry_run: bool,
    /// Kept snapshots, newest first.
    pub kept: Vec<ForgetLine>,
    /// Removed snapshots, newest first.
    pub removed: Vec<ForgetLine>,
    /// Kept snapshots stored again with a new parent link.
    pub rewritten: u64,
    /// The root's sequence number afterwards (unchanged when nothing was removed or on a dry
    /// run).
    pub root: u64,
    /// Attempts made (more than one when another device updated the root meanwhile).
    pub attempts: u32,
}

/// The chain below `latest`, newest first (each parent verified as in [`Repo::snapshots`]).
async fn chain(repo: &Repo, latest: SnapshotRef) -> Result<Vec<SnapshotRef>> {
    let mut out = Vec::new();
    let mut next = Some(latest);
    while let Some(s) = next {
        next = repo.parent(&s).await?;
        out.push(s);
    }
    Ok(out)
}

fn line(s: &SnapshotRef, reasons: &[Reason]) -> ForgetLine {
    ForgetLine {
        number: s.snapshot.number,
        id: s.short_id(),
        time: crate::cli::format_time(s.snapshot.time_ns),
        source: s.snapshot.source.clone(),
        reasons: reasons.to_vec(),
    }
}

/// Forgets the snapshots that `selectors` name (numbers, id prefixes, as `snapshots` shows
/// them) and those `policy` does not keep; see the module documentation. Refuses when there is
/// nothing to do ([`PlanError::NothingToDo`]) or when the latest snapshot is named.
pub async fn forget(
    repo: &Repo,
    policy: &Policy,
    selectors: &[String],
    dry_run: bool,
) -> Result<ForgetReport> {
    if policy.is_empty() && selectors.is_empty() {
        return Err(ClientError::Config(PlanError::NothingToDo.to_string()));
    }
    let mut named: Option<BTreeSet<u64>> = None;
    let mut backoff = RootBackoff::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (root, latest) = repo.head().await?.ok_or(ClientError::NoBackup)?;
        let all = chain(repo, latest).await?;
        // Names are resolved once, on the first read; numbers stay valid across rewrites.
        let named = match &named {
            Some(n) => n
                .iter()
                .copied()
                .filter(|n| all.iter().any(|s| s.snapshot.number == *n))
                .collect(),
            None => {
                let mut set = BTreeSet::new();
                for sel in selectors {
                    let s = crate::repo::pick(&all, sel)?;
                    if s.snapshot.number == all[0].snapshot.number {
                        return Err(ClientError::Refused(format!(
                            "refusing to forget snapshot {} ({}): it is the latest snapshot, which \
                             the root must point at (back up again first, then forget it)",
                            s.snapshot.number,
                            s.short_id()
                        )));
                    }
                    set.insert(s.snapshot.number);
                }
                named = Some(set.clone());
                set
            }
        };
        let candidates: Vec<Candidate> = all
            .iter()
            .map(|s| Candidate {
                number: s.snapshot.number,
                time_ns: s.snapshot.time_ns,
                group: s.snapshot.source.clone(),
            })
            .collect();
        let decisions = if policy.is_empty() && named.is_empty() {
            // Everything named was forgotten meanwhile (by another device).
            candidates
                .iter()
                .map(|c| Decision {
                    number: c.number,
                    keep: true,
                    reasons: vec![Reason::Unnamed],
                })
                .collect()
        } else {
            plan(&candidates, all[0].snapshot.number, policy, &named)
                .map_err(|e| ClientError::Refused(e.to_string()))?
        };
        let oldest_removed = decisions.iter().rposition(|d| !d.keep);
        let mut report = ForgetReport {
            dry_run,
            kept: Vec::new(),
            removed: Vec::new(),
            rewritten: 0,
            root: root.seq(),
            attempts,
        };
        let Some(oldest_removed) = oldest_removed.filter(|_| !dry_run) else {
            for (s, d) in all.iter().zip(&decisions) {
                let l = line(s, &d.reasons);
                if d.keep {
                    report.kept.push(l);
                } else {
                    report.removed.push(l);
                }
            }
            return Ok(report);
        };
        // Rewrite the kept snapshots newer than the oldest removed one, oldest first, each on
        // top of the one before; those older than it keep their objects.
        let mut parent: Option<SnapshotRef> = all.get(oldest_removed + 1).cloned();
        // The rewritten objects are a write session of their own that keeps the kept
        // snapshots' manifests: they never point into what this forget gives up.
        repo.store.begin_session();
        for (s, d) in all.iter().zip(&decisions) {
            if d.keep {
                let pieces: Vec<peerstore_proto::BlockKey> = s
                    .snapshot
                    .manifest_blocks
                    .iter()
                    .map(|k| peerstore_proto::BlockKey(*k))
                    .collect();
                repo.store.keep_documents(&pieces);
            }
        }
        let mut new_refs: BTreeMap<u64, SnapshotRef> = BTreeMap::new();
        for i in (0..oldest_removed).rev() {
            if !decisions[i].keep {
                continue;
            }
            let s = &all[i];
            let hashed = if s.bound() {
                s.hashed_keys
            } else {
                repo.hashed_keys()
            };
            let new = repo
                .write_snapshot(s.snapshot.clone(), parent.as_ref(), hashed)
                .await?;
            report.rewritten += 1;
            new_refs.insert(new.snapshot.number, new.clone());
            parent = Some(new);
        }
        // The latest is always kept, and newer than any removed snapshot: it was rewritten.
        let Some(new_latest) = new_refs.get(&all[0].snapshot.number) else {
            return Err(ClientError::Corrupt(
                "forget: the latest snapshot was not rewritten".into(),
            ));
        };
        let seq = root.seq() + 1;
        match repo.put_root(seq, new_latest, root.prune_epoch).await? {
            RootUpdate::Stored => {
                report.root = seq;
                for (s, d) in all.iter().zip(&decisions) {
                    if d.keep {
                        report.kept.push(line(
                            new_refs.get(&s.snapshot.number).unwrap_or(s),
                            &d.reasons,
                        ));
                    } else {
                        report.removed.push(line(s, &d.reasons));
                    }
                }
                return Ok(report);
            }
            RootUpdate::Conflict => backoff.wait("forget").await?,
        }
    }
}

/// The documents the given snapshots reference, by kind: what a `prune` must keep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReferencedKeys {
    /// The snapshot objects themselves.
    pub snapshots: BTreeSet<[u8; 32]>,
    /// The pieces of their manifests.
    pub manifests: BTreeSet<[u8; 32]>,
    /// The packs their files' chunks are in.
    pub packs: BTreeSet<[u8; 32]>,
}

impl ReferencedKeys {
    /// Every referenced document key.
    #[must_use]
    pub fn all(&self) -> BTreeSet<[u8; 32]> {
        self.snapshots
            .iter()
            .chain(&self.manifests)
            .chain(&self.packs)
            .copied()
            .collect()
    }

    /// Whether `key` is referenced.
    #[must_use]
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.snapshots.contains(key) || self.manifests.contains(key) || self.packs.contains(key)
    }
}

/// The documents `snapshots` reference (their objects, manifest pieces and packs), reading
/// and verifying each manifest.
pub async fn referenced_keys(repo: &Repo, snapshots: &[SnapshotRef]) -> Result<ReferencedKeys> {
    let mut out = ReferencedKeys::default();
    for s in snapshots {
        out.snapshots.insert(s.key);
        out.manifests
            .extend(s.snapshot.manifest_blocks.iter().copied());
        let m = repo.load_manifest(s).await?;
        for e in &m.entries {
            if let EntryKind::File { chunks, .. } = &e.kind {
                out.packs.extend(chunks.iter().map(|c| c.pack));
            }
        }
    }
    Ok(out)
}

/// The documents the current chain (every snapshot the root reaches) references, those of
/// the user's live shares (`share::live_documents`), and those
/// of the synced trees of the user's devices (their pieces, and the packs of every entry and
/// every kept version in them: a conflict version stays restorable after the snapshots that
/// had it are forgotten). A device whose head cannot be read makes this fail: nothing is
/// deleted on a partial view.
pub async fn live_keys(repo: &Repo) -> Result<ReferencedKeys> {
    let all = repo.snapshots().await?;
    let mut out = referenced_keys(repo, &all).await?;
    // What the user's live shares keep: their manifests and the packs they name.
    out.manifests
        .extend(crate::share::live_documents(repo).await?);
    for d in crate::devices::list(repo).await? {
        let Some(head) = crate::devices::head(repo, &d.id).await? else {
            continue;
        };
        out.manifests.extend(head.pieces.iter().copied());
        let tree = crate::devices::load(repo, &d.id, &head).await?;
        for state in tree.paths.values() {
            let entries = state
                .heads
                .iter()
                .map(|h| &h.version)
                .chain(&state.kept)
                .filter_map(|v| v.entry.as_ref());
            for e in entries {
                if let EntryKind::File { chunks, .. } = &e.kind {
                    out.packs.extend(chunks.iter().map(|c| c.pack));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3_600_000_000_000;
    const DAY: i64 = 24 * HOUR;

    /// Nanoseconds of a UTC date and time.
    fn at(y: i64, m: u32, d: u32, hour: i64) -> i64 {
        // Days from the civil date (inverse of civil_from_days, by search from a close guess).
        let mut days = (y - 1970) * 365 + (y - 1969) / 4 + i64::from(m - 1) * 30;
        while civil_from_days(days) < (y, m, d) {
            days += 1;
        }
        while civil_from_days(days) > (y, m, d) {
            days -= 1;
        }
        assert_eq!(civil_from_days(days), (y, m, d));
        days * DAY + hour * HOUR
    }

    fn cands(times: &[i64]) -> Vec<Candidate> {
        // Numbers 1..=n in the order given (oldest first), all of one source.
        times
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                number: i as u64 + 1,
                time_ns: *t,
                group: "/src".into(),
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<u64> {
        let mut k: Vec<u64> = d.iter().filter(|d| d.keep).map(|d| d.number).collect();
        k.sort_unstable();
        k
    }

    fn reasons_of(d: &[Decision], n: u64) -> Vec<Reason> {
        d.iter().find(|d| d.number == n).unwrap().reasons.clone()
    }

    fn none() -> BTreeSet<u64> {
        BTreeSet::new()
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_675), (2023, 11, 14));
        // 2024-12-30 is a Monday in ISO week 1 of 2025; 2024-12-29 a Sunday.
        let mon = at(2024, 12, 30, 0);
        let sun = at(2024, 12, 29, 23);
        assert_ne!(
            bucket(Reason::Weekly, 0, mon),
            bucket(Reason::Weekly, 0, sun)
        );
        assert_eq!(
            bucket(Reason::Weekly, 0, mon),
            bucket(Reason::Weekly, 0, at(2025, 1, 5, 23))
        );
        assert_ne!(
            bucket(Reason::Weekly, 0, mon),
            bucket(Reason::Weekly, 0, at(2025, 1, 6, 0))
        );
    }

    #[test]
    fn nothing_to_do_the_latest_and_unknown_names_are_refused() {
        let c = cands(&[1, 2, 3]);
        assert_eq!(
            plan(&c, 3, &Policy::default(), &none()),
            Err(PlanError::NothingToDo)
        );
        let e = plan(&c, 3, &Policy::default(), &BTreeSet::from([3])).unwrap_err();
        assert_eq!(e, PlanError::Latest(3));
        assert!(e.to_string().contains("latest"), "{e}");
        assert_eq!(
            plan(&c, 3, &Policy::default(), &BTreeSet::from([9])),
            Err(PlanError::Unknown(9))
        );
        assert!(PlanError::NothingToDo.to_string().contains("--keep-last"));
    }

    #[test]
    fn keep_last_keeps_the_n_newest_and_the_latest_always() {
        let c = cands(&[10, 20, 30, 40, 50]);
        let p = |n| Policy {
            keep_last: n,
            ..Policy::default()
        };
        assert_eq!(kept(&plan(&c, 5, &p(2), &none()).unwrap()), [4, 5]);
        assert_eq!(kept(&plan(&c, 5, &p(9), &none()).unwrap()), [1, 2, 3, 4, 5]);
        let d = plan(&c, 5, &p(1), &none()).unwrap();
        assert_eq!(kept(&d), [5]);
        assert_eq!(reasons_of(&d, 5), [Reason::Latest, Reason::Last]);
        assert_eq!(reasons_of(&d, 1), [Reason::Policy]);
        // A rule that keeps nothing of the newest still leaves the latest.
        let d = plan(
            &c,
            5,
            &Policy {
                keep_yearly: 1,
                ..Policy::default()
            },
            &none(),
        )
        .unwrap();
        assert_eq!(kept(&d), [5]);
        // The latest is kept even when its clock was behind (another device's).
        let skew = cands(&[10, 20, 30, 40, 5]);
        let d = plan(&skew, 5, &p(1), &none()).unwrap();
        assert_eq!(kept(&d), [4, 5]);
        assert_eq!(reasons_of(&d, 5), [Reason::Latest]);
        assert_eq!(reasons_of(&d, 4), [Reason::Last]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_of_the_last_days_that_have_snapshots() {
        // Three on 1 March, none on the 2nd, two on the 3rd, one on the 6th.
        let t = [
            at(2025, 3, 1, 8),
            at(2025, 3, 1, 12),
            at(2025, 3, 1, 23),
            at(2025, 3, 3, 1),
            at(2025, 3, 3, 2),
            at(2025, 3, 6, 0),
        ];
        let c = cands(&t);
        let daily = |n| Policy {
            keep_daily: n,
            ..Policy::default()
        };
        assert_eq!(kept(&plan(&c, 6, &daily(1), &none()).unwrap()), [6]);
        assert_eq!(kept(&plan(&c, 6, &daily(2), &none()).unwrap()), [5, 6]);
        assert_eq!(kept(&plan(&c, 6, &daily(3), &none()).unwrap()), [3, 5, 6]);
        assert_eq!(kept(&plan(&c, 6, &daily(30), &none()).unwrap()), [3, 5, 6]);
        // Hourly: 01:00 and 02:00 on the 3rd are different hours.
        let d = plan(
            &c,
            6,
            &Policy {
                keep_hourly: 3,
                ..Policy::default()
            },
            &none(),
        )
        .unwrap();
        assert_eq!(kept(&d), [4, 5, 6]);
    }

    #[test]
    fn weekly_monthly_and_yearly_buckets() {
        let t = [
            at(2023, 6, 1, 0),   // 1
            at(2023, 12, 31, 9), // 2: a Sunday, last of 2023
            at(2024, 1, 1, 9),   // 3: Monday, new week, month and year
            at(2024, 1, 20, 9),  // 4
            at(2024, 1, 31, 9),  // 5: Wednesday
            at(2024, 2, 1, 9),   // 6: Thursday, same ISO week as 5
            at(2024, 2, 29, 9),  // 7: leap day
        ];
        let c = cands(&t);
        let run = |p: Policy| kept(&plan(&c, 7, &p, &none()).unwrap());
        assert_eq!(
            run(Policy {
                keep_weekly: 3,
                ..Policy::default()
            }),
            [4, 6, 7]
        );
        assert_eq!(
            run(Policy {
                keep_monthly: 3,
                ..Policy::default()
            }),
            [2, 5, 7]
        );
        assert_eq!(
            run(Policy {
                keep_yearly: 5,
                ..Policy::default()
            }),
            [2, 7]
        );
        // Rules combine: a snapshot kept by any rule is kept, with every reason.
        let d = plan(
            &c,
            7,
            &Policy {
                keep_last: 2,
                keep_monthly: 2,
                keep_yearly: 2,
                ..Policy::default()
            },
            &none(),
        )
        .unwrap();
        assert_eq!(kept(&d), [2, 5, 6, 7]);
        assert_eq!(
            reasons_of(&d, 7),
            [
                Reason::Latest,
                Reason::Last,
                Reason::Monthly,
                Reason::Yearly
            ]
        );
        assert_eq!(reasons_of(&d, 2), [Reason::Yearly]);
        assert_eq!(reasons_of(&d, 5), [Reason::Monthly]);
        assert_eq!(reasons_of(&d, 6), [Reason::Last]);
    }

    #[test]
    fn named_snapshots_go_and_the_rules_apply_to_the_rest() {
        let c = cands(&[10, 20, 30, 40]);
        // Named only: everything else is kept.
        let d = plan(&c, 4, &Policy::default(), &BTreeSet::from([2])).unwrap();
        assert_eq!(kept(&d), [1, 3, 4]);
        assert_eq!(reasons_of(&d, 2), [Reason::Named]);
        assert_eq!(reasons_of(&d, 1), [Reason::Unnamed]);
        assert_eq!(reasons_of(&d, 4), [Reason::Latest, Reason::Unnamed]);
        // Named and a rule: the named one goes even though the rule would keep it, and the
        // rule's slot goes to the next one.
        let d = plan(
            &c,
            4,
            &Policy {
                keep_last: 2,
                ..Policy::default()
            },
            &BTreeSet::from([3]),
        )
        .unwrap();
        assert_eq!(kept(&d), [2, 4]);
        assert_eq!(reasons_of(&d, 3), [Reason::Named]);
        assert_eq!(reasons_of(&d, 1), [Reason::Policy]);
    }

    #[test]
    fn rules_apply_per_source_directory() {
        let mut c = cands(&[10, 20, 30, 40, 50]);
        c[0].group = "/photos".into();
        c[2].group = "/photos".into();
        let d = plan(
            &c,
            5,
            &Policy {
                keep_last: 1,
                ..Policy::default()
            },
            &none(),
        )
        .unwrap();
        // The newest of /src (5) and of /photos (3).
        assert_eq!(kept(&d), [3, 5]);
    }

    /// The reference model of one rule: the newest snapshot (by time, then number) of each of
    /// the `n` newest buckets.
    fn model(c: &[&Candidate], rule: Reason, n: u32) -> BTreeSet<u64> {
        let mut best: BTreeMap<i64, (i64, u64)> = BTreeMap::new();
        for s in c {
            let b = bucket(rule, s.number, s.time_ns);
            let e = best.entry(b).or_insert((s.time_ns, s.number));
            *e = (*e).max((s.time_ns, s.number));
        }
        let mut newest: Vec<(i64, u64)> = best.into_values().collect();
        newest.sort_unstable_by(|a, b| b.cmp(a));
        newest
            .into_iter()
            .take(n as usize)
            .map(|(_, number)| number)
            .collect()
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (0u32..5, 0u32..4, 0u32..5, 0u32..4, 0u32..4, 0u32..3).prop_map(
            |(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)| Policy {
                keep_last,
                keep_hourly,
                keep_daily,
                keep_weekly,
                keep_monthly,
                keep_yearly,
            },
        )
    }

    /// Snapshots over about three years, mostly in chain order but with some clock skew, in up
    /// to two source directories; some named.
    fn arb_case() -> impl Strategy<Value = (Vec<Candidate>, BTreeSet<u64>)> {
        proptest::collection::vec(
            (0i64..1100 * DAY, -3 * HOUR..3 * HOUR, 0u8..4, any::<bool>()),
            1..40,
        )
        .prop_map(|v| {
            let mut base: Vec<_> = v.clone();
            base.sort_by_key(|x| x.0);
            let mut named = BTreeSet::new();
            let c = base
                .iter()
                .enumerate()
                .map(|(i, (t, skew, g, name))| {
                    if *name && i % 3 == 0 {
                        named.insert(i as u64 + 1);
                    }
                    Candidate {
                        number: i as u64 + 1,
                        time_ns: 1_600_000_000 * 1_000_000_000 + t + skew,
                        group: if *g == 0 { "/b" } else { "/a" }.into(),
                    }
                })
                .collect::<Vec<_>>();
            let latest = c.len() as u64;
            named.remove(&latest);
            (c, named)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn plans_are_consistent((c, named) in arb_case(), policy in arb_policy()) {
            let latest = c.len() as u64;
            let d = match plan(&c, latest, &policy, &named) {
                Ok(d) => d,
                Err(PlanError::NothingToDo) => {
                    prop_assert!(policy.is_empty() && named.is_empty());
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            // One decision per snapshot, in the input order: kept and removed partition them.
            prop_assert_eq!(d.iter().map(|d| d.number).collect::<Vec<_>>(),
                c.iter().map(|c| c.number).collect::<Vec<_>>());
            // The latest is always kept.
            prop_assert!(d.last().unwrap().keep);
            prop_assert!(d.last().unwrap().reasons.contains(&Reason::Latest));
            for x in &d {
                if x.keep {
                    prop_assert!(!x.reasons.is_empty());
                    prop_assert!(!x.reasons.iter().any(|r| matches!(r, Reason::Named | Reason::Policy)));
                    prop_assert!(!named.contains(&x.number));
                } else {
                    let want = if named.contains(&x.number) { Reason::Named } else { Reason::Policy };
                    prop_assert_eq!(&x.reasons, &vec![want]);
                }
            }
            // Each rule keeps exactly what the model says, per group.
            if !policy.is_empty() {
                let mut groups: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
                for s in c.iter().filter(|s| !named.contains(&s.number)) {
                    groups.entry(&s.group).or_default().push(s);
                }
                for (rule, n) in policy.rules() {
                    let mut want = BTreeSet::new();
                    for g in groups.values() {
                        want.extend(model(g, rule, n));
                    }
                    let got: BTreeSet<u64> = d.iter()
                        .filter(|x| x.reasons.contains(&rule))
                        .map(|x| x.number)
                        .collect();
                    prop_assert_eq!(&got, &want, "rule {}", rule);
                    if rule == Reason::Last {
                        let count: usize = groups.values().map(|g| g.len().min(n as usize)).sum();
                        prop_assert_eq!(got.len(), count);
                    }
                }
            } else {
                for x in &d {
                    prop_assert_eq!(x.keep, !named.contains(&x.number));
                }
            }
            // More generous rules never keep less (named-only runs keep everything else).
            if policy.is_empty() {
                return Ok(());
            }
            let more = Policy {
                keep_last: policy.keep_last + 1,
                keep_daily: policy.keep_daily + 2,
                ..policy
            };
            let d2 = plan(&c, latest, &more, &named).unwrap();
            for (a, b) in d.iter().zip(&d2) {
                prop_assert!(!a.keep || b.keep, "snapshot {} lost", a.number);
            }
        }
    }
}

/// `forget` against the in-memory store: the rewritten chain reads back whole, and a backup
/// of another device racing it is never lost.
#[cfg(test)]
mod chain_tests {
    use std::future::Future;
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use crypto::{Identity, RootRecord};
    use peerstore_proto::BlockKey;
    use rand::SeedableRng;

    use super::*;
    use crate::backup::{backup, BackupOptions};
    use crate::cache::KnownBlocks;
    use crate::model::Manifest;
    use crate::progress::Progress;
    use crate::restore::restore_tree;
    use crate::store::{BlockStoreApi, MemStore, RecordAnswer, StoreError};

    fn repo_on(store: Arc<dyn BlockStoreApi>, watermark: Option<&Path>) -> Repo {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let r = Repo::new(store, Arc::new(Identity::generate(&mut rng)));
        match watermark {
            Some(p) => r.with_root_watermark(p.to_path_buf()),
            None => r,
        }
    }

    fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            out.insert(
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            );
        }
        out
    }

    /// Version `i` of the source tree: a shared file, a file that changes, and a file only this
    /// version has (so its pack is used by this snapshot alone).
    fn write_version(src: &Path, i: u64) {
        std::fs::create_dir_all(src).unwrap();
        let mut shared = vec![7u8; 100_000];
        shared[0] = 1;
        std::fs::write(src.join("shared.bin"), shared).unwrap();
        std::fs::write(src.join("v.txt"), format!("version {i}")).unwrap();
        if i > 1 {
            let _ = std::fs::remove_file(src.join(format!("only-{}.bin", i - 1)));
        }
        let only: Vec<u8> = (0..50_000u64).map(|x| (x * 31 + i * 7) as u8).collect();
        std::fs::write(src.join(format!("only-{i}.bin")), only).unwrap();
    }

    /// Backs up `n` versions; returns each number's files.
    async fn backups(
        repo: &Repo,
        src: &Path,
        from: u64,
        n: u64,
    ) -> BTreeMap<u64, BTreeMap<String, Vec<u8>>> {
        let known = Arc::new(KnownBlocks::in_memory());
        let mut out = BTreeMap::new();
        for i in from..from + n {
            write_version(src, i);
            let (_, _, s) = backup(
                repo,
                known.clone(),
                src,
                None,
                &BackupOptions::default(),
                &Arc::new(Progress::hidden()),
            )
            .await
            .unwrap();
            out.insert(s.unwrap().snapshot.number, files_of(src));
        }
        out
    }

    fn numbers(all: &[SnapshotRef]) -> Vec<u64> {
        all.iter().map(|s| s.snapshot.number).collect()
    }

    /// Every snapshot of the chain loads, and restores the files it was made of.
    async fn assert_restores(
        repo: &Repo,
        want: &BTreeMap<u64, BTreeMap<String, Vec<u8>>>,
        manifests: &BTreeMap<u64, Manifest>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        for s in repo.snapshots().await.unwrap() {
            let n = s.snapshot.number;
            let m = repo.load_manifest(&s).await.unwrap();
            assert_eq!(&m, &manifests[&n], "manifest of snapshot {n}");
            let dest = dir.path().join(format!("r{n}-{}", s.short_id()));
            restore_tree(repo, &m, &dest, &Arc::new(Progress::hidden()))
                .await
                .unwrap();
            assert_eq!(&files_of(&dest), &want[&n], "files of snapshot {n}");
        }
    }

    async fn manifests_of(repo: &Repo) -> BTreeMap<u64, Manifest> {
        let mut out = BTreeMap::new();
        for s in repo.snapshots().await.unwrap() {
            out.insert(s.snapshot.number, repo.load_manifest(&s).await.unwrap());
        }
        out
    }

    fn keep_last(n: u32) -> Policy {
        Policy {
            keep_last: n,
            ..Policy::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forget_rewrites_the_chain_and_every_kept_snapshot_still_reads() {
        for opaque in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let store = MemStore::new();
            store.set_opaque_keys(opaque);
            let mark = tmp.path().join("root-seen");
            let r = repo_on(Arc::new(store.clone()), Some(&mark));
            let src = tmp.path().join("src");
            let want = backups(&r, &src, 1, 5).await;
            let manifests = manifests_of(&r).await;
            // Another client of the same user that has seen root 5.
            let other_mark = tmp.path().join("other-root-seen");
            let other = repo_on(Arc::new(store.clone()), Some(&other_mark));
            assert_eq!(other.latest().await.unwrap().unwrap().snapshot.number, 5);
            let old = r.snapshots().await.unwrap();

            // A dry run changes nothing.
            let docs = store.documents().len();
            let dry = forget(&r, &keep_last(1), &[], true).await.unwrap();
            assert!(dry.dry_run);
            assert_eq!(dry.removed.len(), 4);
            assert_eq!((dry.rewritten, dry.root), (0, 5));
            assert_eq!(store.documents().len(), docs);
            assert_eq!(r.root().await.unwrap().unwrap().seq(), 5);

            // Forget snapshot 2 by number and snapshot 4 by id prefix.
            let id4 = hex::encode(old[1].key)[..10].to_string();
            let rep = forget(&r, &Policy::default(), &["2".into(), id4], false)
                .await
                .unwrap();
            assert_eq!(
                rep.removed
                    .iter()
                    .map(|l| (l.number, l.reasons.clone()))
                    .collect::<Vec<_>>(),
                [(4, vec![Reason::Named]), (2, vec![Reason::Named])]
            );
            assert_eq!(
                rep.kept.iter().map(|l| l.number).collect::<Vec<_>>(),
                [5, 3, 1]
            );
            // Snapshot 1 is older than every removed one: its object stays; 3 and 5 are new.
            assert_eq!((rep.rewritten, rep.root, rep.attempts), (2, 6, 1));
            let all = r.snapshots().await.unwrap();
            assert_eq!(numbers(&all), [5, 3, 1]);
            assert_eq!(all[2].key, old[4].key);
            assert_ne!(all[0].key, old[0].key);
            assert_eq!(all[0].short_id(), rep.kept[0].id);
            // The gaps are named in the headers; the rest of the object is unchanged.
            assert_eq!(all[0].parent_number, Some(3));
            assert_eq!(all[1].parent_number, Some(1));
            for (new, was) in [(&all[0], &old[0]), (&all[1], &old[2])] {
                let mut same = was.snapshot.clone();
                same.parent = new.snapshot.parent;
                assert_eq!(new.snapshot, same);
                assert_eq!(new.hashed_keys, !opaque);
            }
            assert_restores(&r, &want, &manifests).await;

            // A fresh reader (no watermark) and one that had seen root 5 accept the new chain.
            let fresh = repo_on(Arc::new(store.clone()), None);
            assert_eq!(numbers(&fresh.snapshots().await.unwrap()), [5, 3, 1]);
            assert_eq!(numbers(&other.snapshots().await.unwrap()), [5, 3, 1]);
            assert_eq!(std::fs::read_to_string(&other_mark).unwrap().trim(), "6");
            assert_eq!(std::fs::read_to_string(&mark).unwrap().trim(), "6");
            // A forgotten number selects nothing (not an id that starts with it).
            let e = r.select(Some("2")).await.unwrap_err().to_string();
            assert!(e.contains("no snapshot 2"), "{e}");

            // The next backup gets the next root number and chains onto the rewritten latest.
            let more = backups(&r, &src, 6, 1).await;
            let mut want = want;
            want.extend(more);
            let mut manifests = manifests;
            manifests.extend(manifests_of(&r).await);
            let all = r.snapshots().await.unwrap();
            assert_eq!(numbers(&all), [7, 5, 3, 1]);
            assert_eq!(all[0].parent_number, Some(5));

            // --keep-last 2: the chain's tail goes; 5 is rewritten without a parent.
            let rep = forget(&r, &keep_last(2), &[], false).await.unwrap();
            assert_eq!(
                rep.removed.iter().map(|l| l.number).collect::<Vec<_>>(),
                [3, 1]
            );
            assert_eq!(rep.kept[0].reasons, [Reason::Latest, Reason::Last]);
            assert_eq!((rep.rewritten, rep.root), (2, 8));
            let all = fresh.snapshots().await.unwrap();
            assert_eq!(numbers(&all), [7, 5]);
            assert_eq!(all[1].snapshot.parent, None);
            assert_restores(&fresh, &want, &manifests).await;
            assert_restores(&other, &want, &manifests).await;
            // Nothing left to forget: no write.
            let docs = store.documents().len();
            let rep = forget(&r, &keep_last(2), &[], false).await.unwrap();
            assert!(rep.removed.is_empty());
            assert_eq!((rep.rewritten, rep.root), (0, 8));
            assert_eq!(store.documents().len(), docs);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forget_refuses_the_latest_and_an_empty_request() {
        let tmp = tempfile::tempdir().unwrap();
        let store = MemStore::new();
        let r = repo_on(Arc::new(store.clone()), None);
        let e = forget(&r, &keep_last(1), &[], false).await.unwrap_err();
        assert!(matches!(e, ClientError::NoBackup), "{e}");
        backups(&r, &tmp.path().join("src"), 1, 3).await;
        for sel in ["3", "latest"] {
            let e = forget(&r, &Policy::default(), &[sel.into()], false)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("refusing to forget snapshot 3") && e.contains("latest"),
                "{e}"
            );
        }
        let e = forget(&r, &Policy::default(), &[], false)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing to do"), "{e}");
        let e = forget(&r, &Policy::default(), &["9".into()], false)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no snapshot 9"), "{e}");
        assert_eq!(numbers(&r.snapshots().await.unwrap()), [3, 2, 1]);
    }

    /// On an entangled ring (keys are not hashes) the pre-forget object of the latest snapshot
    /// (same user, same number) served in place of the rewritten one is refused: the root
    /// names the latest object's hash.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_old_object_of_a_rewritten_latest_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = MemStore::new();
        store.set_opaque_keys(true);
        let r = repo_on(Arc::new(store.clone()), None);
        backups(&r, &tmp.path().join("src"), 1, 3).await;
        let old = r.latest().await.unwrap().unwrap();
        forget(&r, &keep_last(1), &[], false).await.unwrap();
        let new = r.latest().await.unwrap().unwrap();
        let old_bytes = store
            .get_document(BlockKey(old.key))
            .await
            .unwrap()
            .unwrap();
        store.tamper(BlockKey(new.key), old_bytes);
        let e = repo_on(Arc::new(store.clone()), None)
            .latest()
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Untrusted(_)), "{e:?}");
        assert!(e.to_string().contains("snapshot 3"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn referenced_keys_are_what_the_kept_snapshots_use() {
        let tmp = tempfile::tempdir().unwrap();
        let store = MemStore::new();
        let r = repo_on(Arc::new(store.clone()), None);
        backups(&r, &tmp.path().join("src"), 1, 3).await;
        let before = r.snapshots().await.unwrap();
        let all_before = live_keys(&r).await.unwrap();
        // Every document stored so far is referenced by some snapshot.
        let stored: BTreeSet<[u8; 32]> = store.documents().iter().map(|k| k.0).collect();
        assert_eq!(all_before.all(), stored);
        let packs_of = |m: &Manifest| -> BTreeSet<[u8; 32]> {
            m.entries
                .iter()
                .flat_map(|e| match &e.kind {
                    EntryKind::File { chunks, .. } => chunks.iter().map(|c| c.pack).collect(),
                    _ => Vec::new(),
                })
                .collect()
        };
        // Snapshot 2's pack (its own files; the shared file is deduplicated into snapshot 1's).
        let m2 = r.load_manifest(&before[1]).await.unwrap();
        let m3 = r.load_manifest(&before[0]).await.unwrap();

        forget(&r, &keep_last(1), &[], false).await.unwrap();
        let kept = r.snapshots().await.unwrap();
        assert_eq!(numbers(&kept), [3]);
        let live = live_keys(&r).await.unwrap();
        assert_eq!(live, referenced_keys(&r, &kept).await.unwrap());
        assert_eq!(live.snapshots, BTreeSet::from([kept[0].key]));
        assert_eq!(
            live.manifests,
            kept[0].snapshot.manifest_blocks.iter().copied().collect()
        );
        assert_eq!(live.packs, packs_of(&m3));
        // The old objects and what only snapshot 2 used are not referenced any more (a prune
        // may delete them); all of it is still stored.
        for s in &before {
            assert!(!live.contains(&s.key));
            assert!(store.get_document(BlockKey(s.key)).await.unwrap().is_some());
        }
        let only2: Vec<_> = packs_of(&m2).difference(&packs_of(&m3)).copied().collect();
        assert!(!only2.is_empty());
        for p in &only2 {
            assert!(!live.contains(p));
            assert!(store.get_document(BlockKey(*p)).await.unwrap().is_some());
        }
        // Everything referenced is stored.
        for k in live.all() {
            assert!(store.get_document(BlockKey(k)).await.unwrap().is_some());
        }
    }

    type Hook = Pin<Box<dyn Future<Output = ()> + Send>>;

    /// The in-memory store with the nodes' rule for roots (a root must be newer than the one
    /// stored: compare-and-swap on the sequence number), and a hook that runs once, just
    /// before the next root update: another device's work that gets there first.
    #[derive(Clone)]
    struct CasStore {
        inner: MemStore,
        hook: Arc<Mutex<Option<Hook>>>,
        serial: Arc<tokio::sync::Mutex<()>>,
    }

    impl CasStore {
        fn new(inner: MemStore) -> CasStore {
            CasStore {
                inner,
                hook: Arc::new(Mutex::new(None)),
                serial: Arc::new(tokio::sync::Mutex::new(())),
            }
        }

        fn before_next_root(&self, f: impl Future<Output = ()> + Send + 'static) {
            *self.hook.lock().unwrap() = Some(Box::pin(f));
        }
    }

    #[async_trait]
    impl BlockStoreApi for CasStore {
        async fn put(&self, key: BlockKey, data: Vec<u8>) -> Result<(), StoreError> {
            self.inner.put(key, data).await
        }
        async fn get(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key).await
        }
        async fn put_document(&self, data: Vec<u8>) -> Result<BlockKey, StoreError> {
            self.inner.put_document(data).await
        }
        async fn get_document(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get_document(key).await
        }
        async fn put_record(&self, key: BlockKey, record: Vec<u8>) -> Result<(), StoreError> {
            let hook = self.hook.lock().unwrap().take();
            if let Some(h) = hook {
                h.await;
            }
            let _one_at_a_time = self.serial.lock().await;
            let new = RootRecord::decode(&record).map_err(|e| StoreError::Other(e.to_string()))?;
            let current = self
                .inner
                .get_record(key)
                .await?
                .map(|b| RootRecord::decode(&b).unwrap());
            crypto::accept_root_update(current.as_ref(), &new)
                .map_err(|e| StoreError::Rejected(e.to_string()))?;
            self.inner.put_record(key, record).await
        }
        async fn get_record(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get_record(key).await
        }
        async fn get_record_replicas(
            &self,
            key: BlockKey,
        ) -> Result<Vec<RecordAnswer>, StoreError> {
            self.inner.get_record_replicas(key).await
        }
    }

    /// Device B publishes a backup while device A forgets (both the same user): whichever
    /// updates the root second sees its compare-and-swap refused, reads the new chain and
    /// redoes its work on it; B's snapshot is never lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_racing_a_forget_is_never_lost() {
        // 1. B's backup gets its root in between A's read and A's root update.
        let tmp = tempfile::tempdir().unwrap();
        let store = CasStore::new(MemStore::new());
        let a = repo_on(Arc::new(store.clone()), Some(&tmp.path().join("a-seen")));
        let b = repo_on(Arc::new(store.clone()), Some(&tmp.path().join("b-seen")));
        let src = tmp.path().join("src");
        let mut want = backups(&a, &src, 1, 4).await;
        // B backs up the same directory (the rules apply per source directory).
        let b_src = src.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let b = b.clone();
            let b_src = b_src.clone();
            store.before_next_root(async move {
                write_version(&b_src, 50);
                let known = Arc::new(KnownBlocks::in_memory());
                let opts = BackupOptions::default();
                let (_, _, s) = backup(
                    &b,
                    known,
                    &b_src,
                    None,
                    &opts,
                    &Arc::new(Progress::hidden()),
                )
                .await
                .unwrap();
                let _ = tx.send(s.unwrap());
            });
        }
        let rep = forget(&a, &keep_last(2), &[], false).await.unwrap();
        let b_snap = rx.await.unwrap();
        assert_eq!(b_snap.snapshot.number, 5);
        want.insert(5, files_of(&b_src));
        assert_eq!(rep.attempts, 2, "forget had to redo its work");
        assert_eq!(
            rep.kept.iter().map(|l| l.number).collect::<Vec<_>>(),
            [5, 4]
        );
        assert_eq!(rep.root, 6);
        let fresh = repo_on(Arc::new(store.clone()), None);
        let all = fresh.snapshots().await.unwrap();
        assert_eq!(numbers(&all), [5, 4]);
        assert_eq!(all[0].snapshot.nonce, b_snap.snapshot.nonce, "B's snapshot");
        let manifests = manifests_of(&fresh).await;
        assert_restores(&fresh, &want, &manifests).await;
        // Both devices read the result (their watermarks saw root 5 or 6).
        assert_eq!(numbers(&b.snapshots().await.unwrap()), [5, 4]);

        // 2. A's forget gets its root in between B's read and B's root update: B's publish
        //    redoes its snapshot object on the rewritten chain.
        let a2 = a.clone();
        store.before_next_root(async move {
            let rep = forget(&a2, &keep_last(1), &[], false).await.unwrap();
            assert_eq!(rep.removed.len(), 1);
        });
        write_version(&b_src, 51);
        let known = Arc::new(KnownBlocks::in_memory());
        let opts = BackupOptions::default();
        let (_, _, s) = backup(
            &b,
            known,
            &b_src,
            None,
            &opts,
            &Arc::new(Progress::hidden()),
        )
        .await
        .unwrap();
        let s = s.unwrap();
        // Root 6 was A's first forget, 7 its second; B's snapshot is published by root 8.
        assert_eq!(s.snapshot.number, 8);
        assert_eq!(s.parent_number, Some(5));
        want.insert(8, files_of(&b_src));
        let all = fresh.snapshots().await.unwrap();
        assert_eq!(numbers(&all), [8, 5]);
        let manifests = manifests_of(&fresh).await;
        assert_restores(&fresh, &want, &manifests).await;
    }

    /// A root update refused for another reason than a newer root is an error, not a retry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_root_that_is_no_conflict_is_an_error() {
        #[derive(Clone)]
        struct Refusing(MemStore);
        #[async_trait]
        impl BlockStoreApi for Refusing {
            async fn put(&self, key: BlockKey, data: Vec<u8>) -> Result<(), StoreError> {
                self.0.put(key, data).await
            }
            async fn get(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
                self.0.get(key).await
            }
            async fn put_document(&self, data: Vec<u8>) -> Result<BlockKey, StoreError> {
                self.0.put_document(data).await
            }
            async fn get_document(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
                self.0.get_document(key).await
            }
            async fn put_record(&self, _: BlockKey, _: Vec<u8>) -> Result<(), StoreError> {
                Err(StoreError::Rejected("bad signature".into()))
            }
            async fn get_record(&self, key: BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
                self.0.get_record(key).await
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let store = MemStore::new();
        let r = repo_on(Arc::new(store.clone()), None);
        backups(&r, &tmp.path().join("src"), 1, 2).await;
        let refusing = repo_on(Arc::new(Refusing(store.clone())), None);
        let e = forget(&refusing, &keep_last(1), &[], false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("bad signature"), "{e}");
        assert_eq!(numbers(&r.snapshots().await.unwrap()), [2, 1]);
    }
}
