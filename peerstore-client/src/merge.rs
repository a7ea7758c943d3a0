//! Two-way sync between a user's devices: the synced folder as a set of path states with
//! version vectors, and the merge every device runs (issue 12, "Devices and two-way sync").
//!
//! Every device keeps a [`SyncTree`]: for each path ever seen, what it holds now (an entry of the
//! snapshot model, or a tombstone), the version vector of the changes that led there, and the
//! versions of it that lost a conflict. A device turns its own folder scans into changes with
//! [`SyncTree::observe`] (its own counter goes up for each changed path) and takes the other
//! devices' trees in with [`SyncTree::merge`].
//!
//! The merge is a join: commutative, associative and idempotent, and deterministic (no clock,
//! no "who merges" in the result), so every device that has seen the same changes holds the
//! same tree, whatever order they came in (property tests below). Each path keeps its
//! **heads**, the versions no other known version descends from (by version vector, as Dynamo's
//! and Riak's siblings): one after a change seen by every device, several after concurrent
//! changes on devices that had not seen each other. Merging takes the union of the heads and
//! drops those another one descends from.
//! - The greatest head is at the path: a live entry beats a tombstone (deleted on one device,
//!   edited on the other: the edit stays), then the newer time, then the device and content
//!   (any total order works; this one is what users expect).
//! - The other heads are versions of the path, never written into the folder as conflict
//!   files. When a device changes the path again, its change descends from every head; the
//!   heads it replaces, except the one its folder held, are **kept** (a grow-only list, the
//!   newest [`MAX_VERSIONS`]), so a conflict's loser is never lost.
//! - A live path whose parent directory is a tombstone brings the directory back in the
//!   folder (a file created in a folder another device deleted meanwhile).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{Entry, EntryKind, Manifest};

/// A device of a user: random, chosen when a client data directory is first used.
pub type DeviceId = [u8; 16];

/// Most conflict versions kept per path (the newest).
pub const MAX_VERSIONS: usize = 16;
/// Most paths a synced tree may hold (live and deleted), bounded before decoding.
pub const MAX_PATHS: usize = 1 << 20;
/// Most devices a version vector names.
pub const MAX_DEVICES: usize = 64;

/// A version vector: for each device, how many changes of the path it made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Vv(pub BTreeMap<DeviceId, u64>);

/// How two version vectors relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causal {
    Equal,
    /// The first includes every change of the second, and more.
    After,
    /// The second includes every change of the first, and more.
    Before,
    /// Each has changes the other has not seen.
    Concurrent,
}

impl Vv {
    fn get(&self, d: &DeviceId) -> u64 {
        self.0.get(d).copied().unwrap_or(0)
    }

    /// How `self` relates to `other`.
    #[must_use]
    pub fn compare(&self, other: &Vv) -> Causal {
        let (mut ahead, mut behind) = (false, false);
        for d in self.0.keys().chain(other.0.keys()) {
            let (a, b) = (self.get(d), other.get(d));
            ahead |= a > b;
            behind |= a < b;
        }
        match (ahead, behind) {
            (false, false) => Causal::Equal,
            (true, false) => Causal::After,
            (false, true) => Causal::Before,
            (true, true) => Causal::Concurrent,
        }
    }

    /// The component-wise maximum.
    #[must_use]
    pub fn join(&self, other: &Vv) -> Vv {
        let mut out = self.clone();
        for (d, n) in &other.0 {
            let e = out.0.entry(*d).or_insert(0);
            *e = (*e).max(*n);
        }
        out
    }

    /// One more change by `device`.
    pub fn bump(&mut self, device: DeviceId) {
        *self.0.entry(device).or_insert(0) += 1;
    }
}

/// One state of a path: an entry (its content, mode, time) or a tombstone, and who made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// `None`: deleted.
    pub entry: Option<Entry>,
    /// The device whose change this is.
    pub by: DeviceId,
    /// When that device saw the change (nanoseconds since the Unix epoch; for a deletion the
    /// time it noticed it).
    pub at_ns: i64,
}

impl Version {
    /// The order in which concurrent versions win (the greatest wins): live before deleted,
    /// then the newer time, then device and content.
    fn rank(&self) -> (bool, i64, DeviceId, Vec<u8>) {
        (
            self.entry.is_some(),
            self.at_ns,
            self.by,
            postcard::to_allocvec(&self.entry).unwrap_or_default(),
        )
    }
}

/// One concurrent state of a path: a version and the vector of the changes that led to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub vv: Vv,
    pub version: Version,
}

/// What a path is in the synced tree: its heads (the versions no other version known here
/// descends from: one, or several after concurrent changes), the greatest first, and the
/// versions kept after losing a conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathState {
    pub heads: Vec<Head>,
    /// Conflict losers that a later change on some device replaced, newest first, at most
    /// [`MAX_VERSIONS`].
    pub kept: Vec<Version>,
}

impl PathState {
    /// The state at the path: the greatest head.
    #[must_use]
    pub fn current(&self) -> &Version {
        &self.heads[0].version
    }

    /// The other contents of the path that are kept: the other live heads (concurrent changes
    /// not resolved yet) and the kept versions, without the current content.
    #[must_use]
    pub fn versions(&self) -> Vec<&Version> {
        let cur = self.current();
        let mut out: Vec<&Version> = Vec::new();
        for v in self.heads[1..].iter().map(|h| &h.version).chain(&self.kept) {
            let Some(e) = &v.entry else { continue };
            let same_as = |o: &Version| o.entry.as_ref().is_some_and(|x| same_content(x, e));
            if !same_as(cur) && !out.iter().any(|o| same_as(o)) {
                out.push(v);
            }
        }
        out
    }

    /// The vector that descends from every head.
    fn joined(&self) -> Vv {
        self.heads
            .iter()
            .fold(Vv::default(), |acc, h| acc.join(&h.vv))
    }
}

/// The synced folder: every path ever seen, live or deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncTree {
    pub paths: BTreeMap<Vec<String>, PathState>,
}

/// Whether two entries hold the same thing (kind and content, mode); times and chunk
/// locations do not count (a file copied back from the ring is not a change).
#[must_use]
pub fn same_content(a: &Entry, b: &Entry) -> bool {
    a.mode == b.mode
        && match (&a.kind, &b.kind) {
            (EntryKind::Dir, EntryKind::Dir) => true,
            (EntryKind::Symlink { target: x }, EntryKind::Symlink { target: y }) => x == y,
            (
                EntryKind::File {
                    size: s1,
                    chunks: c1,
                },
                EntryKind::File {
                    size: s2,
                    chunks: c2,
                },
            ) => s1 == s2 && c1.len() == c2.len() && c1.iter().zip(c2).all(|(x, y)| x.id == y.id),
            _ => false,
        }
}

/// The live versions of `a` and `b`, newest first, without duplicates, at most
/// [`MAX_VERSIONS`] (a deterministic function of the union: merging kept lists is a join).
fn union_kept<'a>(
    a: impl IntoIterator<Item = &'a Version>,
    b: impl IntoIterator<Item = &'a Version>,
) -> Vec<Version> {
    let mut all: Vec<Version> = a
        .into_iter()
        .chain(b)
        .filter(|v| v.entry.is_some())
        .cloned()
        .collect();
    all.sort_by_key(|v| std::cmp::Reverse(v.rank()));
    all.dedup();
    all.truncate(MAX_VERSIONS);
    all
}

/// The heads of `a` and `b` together: the versions no other one descends from, the greatest
/// first.
fn union_heads(a: &[Head], b: &[Head]) -> Vec<Head> {
    let mut all: Vec<Head> = a.iter().chain(b).cloned().collect();
    all.sort_by(|x, y| {
        y.version
            .rank()
            .cmp(&x.version.rank())
            .then(x.vv.cmp(&y.vv))
    });
    let mut out: Vec<Head> = Vec::new();
    for h in &all {
        let dominated = all.iter().any(|o| o.vv.compare(&h.vv) == Causal::After);
        if !dominated && !out.iter().any(|o| o.vv == h.vv) {
            out.push(h.clone());
        }
    }
    out
}

impl SyncTree {
    /// The live entries, as a manifest (what the folder should hold). A live path under a
    /// deleted directory brings the directory back (a file created in a folder another device
    /// deleted meanwhile): it is listed as a directory of mode 0o755.
    #[must_use]
    pub fn manifest(&self) -> Manifest {
        let mut out: BTreeMap<&[String], Entry> = BTreeMap::new();
        for (path, state) in &self.paths {
            if let Some(e) = &state.current().entry {
                out.insert(path.as_slice(), e.clone());
            }
        }
        let live: Vec<Vec<String>> = out.keys().map(|p| p.to_vec()).collect();
        for path in &live {
            for n in 1..path.len() {
                let parent = &path[..n];
                let key = self.paths.get_key_value(parent).map(|(k, _)| k.as_slice());
                if let (Some(k), false) = (key, out.contains_key(parent)) {
                    out.insert(
                        k,
                        Entry {
                            path: parent.to_vec(),
                            kind: EntryKind::Dir,
                            mode: 0o755,
                            mtime_ns: 0,
                            owner: None,
                        },
                    );
                }
            }
        }
        Manifest::new(out.into_values().collect())
    }

    /// Takes a scan of this device's folder in: every path whose content differs from the
    /// tree's (new, changed, deleted) becomes a change by `me` at `now_ns`, descending from
    /// every head of the path (concurrent heads it replaces are kept as versions). Paths the
    /// scan shows unchanged keep their state.
    pub fn observe(&mut self, scan: &Manifest, me: DeviceId, now_ns: i64) -> usize {
        self.observe_keeping(scan, me, now_ns, &BTreeSet::new())
    }

    /// [`SyncTree::observe`], where the paths of `unapplied` hold another device's change that
    /// could not be written into the folder (it changed locally meanwhile): a local change of
    /// one of them keeps the tree's current content as a version too.
    pub fn observe_keeping(
        &mut self,
        scan: &Manifest,
        me: DeviceId,
        now_ns: i64,
        unapplied: &BTreeSet<Vec<String>>,
    ) -> usize {
        let mut changed = 0;
        let folder = self.manifest();
        let shown: BTreeMap<&Vec<String>, &Entry> =
            folder.entries.iter().map(|e| (&e.path, e)).collect();
        let live: BTreeSet<&Vec<String>> = scan.entries.iter().map(|e| &e.path).collect();
        let mut change =
            |tree: &mut SyncTree, path: &Vec<String>, entry: Option<Entry>, at: i64| {
                changed += 1;
                let version = Version {
                    entry,
                    by: me,
                    at_ns: at,
                };
                match tree.paths.get_mut(path) {
                    None => {
                        let mut vv = Vv::default();
                        vv.bump(me);
                        tree.paths.insert(
                            path.clone(),
                            PathState {
                                heads: vec![Head { vv, version }],
                                kept: Vec::new(),
                            },
                        );
                    }
                    Some(state) => {
                        let mut vv = state.joined();
                        vv.bump(me);
                        // The folder held the current head (unless it could not be written):
                        // that is history; the other heads lost to this change.
                        let skip = usize::from(!unapplied.contains(path));
                        let losers: Vec<Version> = state.heads[skip..]
                            .iter()
                            .map(|h| h.version.clone())
                            .collect();
                        state.kept = union_kept(&state.kept, &losers);
                        state.heads = vec![Head { vv, version }];
                    }
                }
            };
        for e in &scan.entries {
            if shown.get(&e.path).is_some_and(|cur| same_content(cur, e)) {
                continue;
            }
            change(self, &e.path, Some(e.clone()), e.mtime_ns.max(now_ns));
        }
        let gone: Vec<Vec<String>> = shown
            .keys()
            .filter(|p| !live.contains(*p))
            .map(|p| (*p).clone())
            .collect();
        for path in gone {
            change(self, &path, None, now_ns);
        }
        changed
    }

    /// Takes another device's tree in (see the module docs for the rule).
    pub fn merge(&mut self, other: &SyncTree) {
        for (path, theirs) in &other.paths {
            let merged = match self.paths.get(path) {
                None => theirs.clone(),
                Some(ours) => PathState {
                    heads: union_heads(&ours.heads, &theirs.heads),
                    kept: union_kept(&ours.kept, &theirs.kept),
                },
            };
            self.paths.insert(path.clone(), merged);
        }
    }
}

/// What must change in a folder that holds `local` (its scan) to hold `target`: paths to
/// remove (deepest first) and entries to write (parents first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub remove: Vec<Entry>,
    pub write: Vec<Entry>,
}

/// The changes that bring a folder scanned as `local` to `target` (see [`Plan`]).
#[must_use]
pub fn plan(local: &Manifest, target: &Manifest) -> Plan {
    let have: BTreeMap<&Vec<String>, &Entry> = local.entries.iter().map(|e| (&e.path, e)).collect();
    let want: BTreeMap<&Vec<String>, &Entry> =
        target.entries.iter().map(|e| (&e.path, e)).collect();
    let mut remove: Vec<Entry> = local
        .entries
        .iter()
        .filter(|e| match want.get(&e.path) {
            None => true,
            // A file that becomes a directory (or the reverse) goes first.
            Some(w) => std::mem::discriminant(&w.kind) != std::mem::discriminant(&e.kind),
        })
        .cloned()
        .collect();
    remove.sort_by(|a, b| b.path.cmp(&a.path));
    let write: Vec<Entry> = target
        .entries
        .iter()
        .filter(|e| have.get(&e.path).is_none_or(|h| !same_content(h, e)))
        .cloned()
        .collect();
    Plan { remove, write }
}

/// Encodes a tree (postcard).
pub fn encode(tree: &SyncTree) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(tree).map_err(|e| e.to_string())
}

/// Decodes a tree, refusing one over the bounds.
pub fn decode(bytes: &[u8]) -> Result<SyncTree, String> {
    let tree: SyncTree = postcard::from_bytes(bytes).map_err(|e| format!("sync tree: {e}"))?;
    if tree.paths.len() > MAX_PATHS {
        return Err(format!("sync tree: more than {MAX_PATHS} paths"));
    }
    for (path, s) in &tree.paths {
        if s.heads.is_empty() || s.heads.len() > MAX_DEVICES || s.kept.len() > MAX_VERSIONS {
            return Err(
                "sync tree: a path without heads, or with too many heads or versions".into(),
            );
        }
        crate::model::check_components(path).map_err(|e| format!("sync tree: {e}"))?;
        let versions = s.heads.iter().map(|h| &h.version).chain(&s.kept);
        for v in versions {
            if let Some(e) = &v.entry {
                if e.path != *path {
                    return Err(format!(
                        "sync tree: an entry of {:?} under {path:?}",
                        e.path
                    ));
                }
            }
        }
        if s.heads.iter().any(|h| h.vv.0.len() > MAX_DEVICES) {
            return Err("sync tree: a version vector with too many devices".into());
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChunkRef;
    use proptest::prelude::*;

    const A: DeviceId = [1; 16];
    const B: DeviceId = [2; 16];
    const C: DeviceId = [3; 16];

    fn file(path: &str, content: u8, mtime: i64) -> Entry {
        Entry {
            path: path.split('/').map(String::from).collect(),
            kind: EntryKind::File {
                size: 1,
                chunks: vec![ChunkRef {
                    id: crypto::ChunkId([content; 32]),
                    pack: [0; 32],
                    offset: 0,
                    sealed_len: 1 + crypto::CHUNK_OVERHEAD as u32,
                    len: 1,
                }],
            },
            mode: 0o644,
            mtime_ns: mtime,
            owner: None,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.split('/').map(String::from).collect(),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns: 0,
            owner: None,
        }
    }

    fn scan(entries: Vec<Entry>) -> Manifest {
        Manifest::new(entries)
    }

    fn content_at(t: &SyncTree, path: &str) -> Option<u8> {
        let p: Vec<String> = path.split('/').map(String::from).collect();
        match &t.paths.get(&p)?.current().entry.as_ref()?.kind {
            EntryKind::File { chunks, .. } => Some(chunks[0].id.0[0]),
            _ => None,
        }
    }

    fn versions_at(t: &SyncTree, path: &str) -> Vec<u8> {
        let p: Vec<String> = path.split('/').map(String::from).collect();
        t.paths[&p]
            .versions()
            .iter()
            .filter_map(|v| match &v.entry.as_ref()?.kind {
                EntryKind::File { chunks, .. } => Some(chunks[0].id.0[0]),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_change_on_one_device_reaches_the_other() {
        let (mut a, mut b) = (SyncTree::default(), SyncTree::default());
        assert_eq!(a.observe(&scan(vec![file("x", 1, 10)]), A, 10), 1);
        b.merge(&a);
        assert_eq!(content_at(&b, "x"), Some(1));
        // B edits it after seeing A's version: no conflict, B's wins everywhere.
        b.observe(&scan(vec![file("x", 2, 20)]), B, 20);
        a.merge(&b);
        assert_eq!(content_at(&a, "x"), Some(2));
        assert!(versions_at(&a, "x").is_empty());
        // Unchanged scans change nothing, a copy back with another mtime neither.
        assert_eq!(a.observe(&scan(vec![file("x", 2, 99)]), A, 30), 0);
        // A deletes it: gone on B too.
        a.observe(&scan(vec![]), A, 40);
        b.merge(&a);
        assert_eq!(b.manifest().entries.len(), 0);
        assert_eq!(a, b);
    }

    #[test]
    fn concurrent_edits_keep_both_the_newer_at_the_path() {
        let (mut a, mut b) = (SyncTree::default(), SyncTree::default());
        a.observe(&scan(vec![file("x", 1, 10)]), A, 10);
        b.merge(&a);
        a.observe(&scan(vec![file("x", 2, 20)]), A, 20);
        b.observe(&scan(vec![file("x", 3, 21)]), B, 21);
        let (mut a2, mut b2) = (a.clone(), b.clone());
        a2.merge(&b);
        b2.merge(&a);
        assert_eq!(a2, b2, "both devices converge");
        assert_eq!(content_at(&a2, "x"), Some(3), "the newer wins the path");
        assert_eq!(
            versions_at(&a2, "x"),
            vec![2],
            "the other is kept as a version"
        );
    }

    #[test]
    fn deleted_on_one_and_edited_on_the_other_keeps_the_edit() {
        let (mut a, mut b) = (SyncTree::default(), SyncTree::default());
        a.observe(&scan(vec![dir("d"), file("d/x", 1, 10)]), A, 10);
        b.merge(&a);
        // A deletes the folder (later in time); B edits the file inside.
        a.observe(&scan(vec![]), A, 100);
        b.observe(&scan(vec![dir("d"), file("d/x", 2, 50)]), B, 50);
        a.merge(&b);
        b.merge(&a);
        assert_eq!(a, b);
        assert_eq!(content_at(&a, "d/x"), Some(2));
        // Its folder comes back with it.
        let m = a.manifest();
        assert!(m.entries.iter().any(|e| e.path == ["d"]));
    }

    #[test]
    fn a_file_created_in_a_folder_deleted_meanwhile_revives_the_folder() {
        let (mut a, mut b) = (SyncTree::default(), SyncTree::default());
        a.observe(&scan(vec![dir("d")]), A, 10);
        b.merge(&a);
        a.observe(&scan(vec![]), A, 20);
        b.observe(&scan(vec![dir("d"), file("d/new", 7, 15)]), B, 15);
        a.merge(&b);
        b.merge(&a);
        let m = a.manifest();
        assert!(m.entries.iter().any(|e| e.path == ["d"]), "{m:?}");
        assert_eq!(content_at(&a, "d/new"), Some(7));
    }

    #[test]
    fn a_local_edit_over_an_unapplied_remote_change_keeps_the_remote_as_a_version() {
        let (mut a, mut b) = (SyncTree::default(), SyncTree::default());
        a.observe(&scan(vec![file("x", 1, 10)]), A, 10);
        b.merge(&a);
        a.observe(&scan(vec![file("x", 2, 20)]), A, 20);
        b.merge(&a);
        // B could not write A's 2 (the file changed locally to 3 meanwhile).
        let unapplied: BTreeSet<Vec<String>> = [vec!["x".to_string()]].into();
        b.observe_keeping(&scan(vec![file("x", 3, 30)]), B, 30, &unapplied);
        assert_eq!(content_at(&b, "x"), Some(3));
        assert_eq!(versions_at(&b, "x"), vec![2]);
    }

    #[test]
    fn the_plan_removes_deepest_first_and_writes_parents_first() {
        let local = scan(vec![
            dir("a"),
            file("a/x", 1, 1),
            file("y", 1, 1),
            file("z", 1, 1),
        ]);
        let target = scan(vec![dir("b"), file("b/x", 1, 1), dir("y"), file("z", 2, 1)]);
        let p = plan(&local, &target);
        let rm: Vec<String> = p.remove.iter().map(Entry::display_path).collect();
        assert_eq!(rm, vec!["y", "a/x", "a"]);
        let wr: Vec<String> = p.write.iter().map(Entry::display_path).collect();
        assert_eq!(wr, vec!["b", "b/x", "y", "z"]);
    }

    #[test]
    fn bounded_decoding() {
        let mut t = SyncTree::default();
        t.observe(&scan(vec![file("x", 1, 1)]), A, 1);
        assert_eq!(decode(&encode(&t).unwrap()).unwrap(), t);
        // A path that escapes the folder, an entry filed under another path.
        let mut bad = SyncTree::default();
        let state = t.paths.values().next().unwrap().clone();
        bad.paths
            .insert(vec!["..".into(), "etc".into()], state.clone());
        assert!(decode(&encode(&bad).unwrap()).is_err());
        let mut bad = SyncTree::default();
        bad.paths.insert(vec!["y".into()], state);
        assert!(decode(&encode(&bad).unwrap()).is_err());
        assert!(decode(&[0xff; 7]).is_err());
    }

    /// A random history on three devices: local edits and merges in any order.
    #[derive(Clone, Debug)]
    enum Step {
        Edit { dev: usize, path: u8, content: u8 },
        Delete { dev: usize, path: u8 },
        Merge { from: usize, to: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize, 0..4u8, 1..6u8).prop_map(|(dev, path, content)| Step::Edit {
                dev,
                path,
                content
            }),
            (0..3usize, 0..4u8).prop_map(|(dev, path)| Step::Delete { dev, path }),
            (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Merge { from, to }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// After any history, once every device has merged every other's tree, all hold the
        /// same tree (in whatever order the final merges run), and no live edit that was ever
        /// observed is lost: it is at its path or among its versions, unless a later change
        /// on a device that had seen it replaced it.
        #[test]
        fn devices_converge_whatever_the_order(steps in prop::collection::vec(step(), 1..40)) {
            let devs = [A, B, C];
            let mut trees = vec![SyncTree::default(); 3];
            let mut folders: Vec<BTreeMap<u8, u8>> = vec![BTreeMap::new(); 3];
            let mut t = 0i64;
            for s in &steps {
                t += 1;
                match *s {
                    Step::Edit { dev, path, content } => {
                        folders[dev].insert(path, content);
                    }
                    Step::Delete { dev, path } => {
                        folders[dev].remove(&path);
                    }
                    Step::Merge { from, to } => {
                        let other = trees[from].clone();
                        trees[to].merge(&other);
                        // The device applies the merged tree to its folder.
                        folders[to] = trees[to]
                            .manifest()
                            .entries
                            .iter()
                            .filter_map(|e| match &e.kind {
                                EntryKind::File { chunks, .. } => {
                                    Some((e.path[0].parse().unwrap(), chunks[0].id.0[0]))
                                }
                                _ => None,
                            })
                            .collect();
                        continue;
                    }
                }
                let entries = folders[s_dev(s)]
                    .iter()
                    .map(|(p, c)| file(&p.to_string(), *c, t))
                    .collect();
                trees[s_dev(s)].observe(&scan(entries), devs[s_dev(s)], t);
            }
            // Everyone merges everyone, in two different orders.
            let mut forward = trees.clone();
            for _ in 0..2 {
                for i in 0..3 {
                    for j in 0..3 {
                        let o = forward[j].clone();
                        forward[i].merge(&o);
                    }
                }
            }
            let mut backward = trees.clone();
            for _ in 0..2 {
                for i in (0..3).rev() {
                    for j in (0..3).rev() {
                        let o = backward[j].clone();
                        backward[i].merge(&o);
                    }
                }
            }
            prop_assert_eq!(&forward[0], &forward[1]);
            prop_assert_eq!(&forward[1], &forward[2]);
            prop_assert_eq!(&forward[0], &backward[0]);
            // Idempotent.
            let mut again = forward[0].clone();
            again.merge(&forward[1]);
            prop_assert_eq!(&again, &forward[0]);
        }
    }

    fn s_dev(s: &Step) -> usize {
        match *s {
            Step::Edit { dev, .. } | Step::Delete { dev, .. } => dev,
            Step::Merge { to, .. } => to,
        }
    }
}
