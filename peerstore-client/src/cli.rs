//! The command line: argument definitions (clap derive) and one function per command.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use crypto::{Identity, KdfParams};
use peerstore_proto::ScrubMode;
use serde::Serialize;

use crate::admin::{self, EntanglementDu, ScrubSchedule};
use crate::backup::{backup, previous_manifest, BackupOptions};
use crate::cache::KnownBlocks;
use crate::config::{self, Dirs};
use crate::error::{ClientError, Result};
use crate::forget::{ForgetLine, ForgetReport, Policy};
use crate::model::{parse_backup_path, EntryKind, Manifest};
use crate::progress::{human, Progress};
use crate::repo::Repo;
use crate::restore::{restore_entry, restore_tree};
use crate::store::{status_of, RingStore};
use crate::sync::{self as watcher, SyncOptions};

/// PeerStore client: end-to-end encrypted backup into a PeerStore ring.
#[derive(Parser, Debug)]
#[command(
    name = "peerstore-client",
    version,
    about,
    after_help = "Exit status: 0 success, 1 failed (or partly done), 2 usage error, 3 not found \
                  (snapshot, path in a snapshot), 4 ring unreachable or unavailable, 5 integrity \
                  failure (data missing or damaged), 6 access denied. With --json, a failure \
                  also prints {\"error\", \"code\", \"kind\"} as the last line of stdout."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Directory of the key file (default: the platform's config dir for peerstore-client).
    #[arg(long, global = true, env = "PEERSTORE_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Directory of caches and sync state (default: the platform's data dir).
    #[arg(long, global = true, env = "PEERSTORE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node to talk to: a full multiaddr ending in /p2p/<peer id>.
    #[arg(long, global = true, env = "PEERSTORE_PEER")]
    pub peer: Option<String>,
    /// Data directory of the local node whose address file to read (when --peer is absent).
    #[arg(long, global = true)]
    pub node_data_dir: Option<PathBuf>,
    /// Machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Timeout of one request to the node, in seconds.
    #[arg(long, global = true, default_value_t = 60)]
    pub timeout_secs: u64,
    /// The ring credential to use (a file holding an invite line); default: the one
    /// `peerstore-client join` stored in the config directory.
    #[arg(long, global = true, env = "PEERSTORE_CREDENTIAL")]
    pub credential: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new key (identity) in the config directory.
    Init,
    /// Keep the ring credential of an invite (`peerstore-node invite --role user`, or
    /// `--role admin` for repair, audit and scrub) in the config directory.
    Join {
        /// The invite line.
        invite: String,
        /// Replace a credential already there.
        #[arg(long)]
        force: bool,
    },
    /// Export or import the key file.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Back up a directory as a new snapshot.
    Backup {
        dir: PathBuf,
        /// Block uploads in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Read every file even if size and mtime match the previous snapshot.
        #[arg(long)]
        reread: bool,
    },
    /// Restore one file (or directory) of a snapshot to <dest>.
    Getfile {
        /// Path inside the backup, e.g. docs/report.pdf (with --cap: inside the share).
        path: String,
        dest: PathBuf,
        /// Snapshot number or id prefix (default: latest).
        #[arg(long, conflicts_with_all = ["version", "cap"])]
        snapshot: Option<String>,
        /// A version of a synced path kept after a conflict (its number in `ls --versions`).
        #[arg(long, conflicts_with = "cap")]
        version: Option<usize>,
        /// Read from what a read capability (`ps1r:...`, from `share`) opens.
        #[arg(long)]
        cap: Option<String>,
    },
    /// Restore a whole snapshot below <dest> (with --cap: everything the capability opens).
    Restore {
        dest: PathBuf,
        /// Snapshot number or id prefix (default: latest).
        #[arg(long, conflicts_with = "cap")]
        snapshot: Option<String>,
        /// Restore what a read capability (`ps1r:...`) opens.
        #[arg(long)]
        cap: Option<String>,
    },
    /// List the entries of a snapshot (below [path]).
    Ls {
        path: Option<String>,
        #[arg(long, conflicts_with_all = ["versions", "cap"])]
        snapshot: Option<String>,
        /// List the versions of synced paths kept after conflicts between devices (instead
        /// of a snapshot's entries).
        #[arg(long, conflicts_with = "cap")]
        versions: bool,
        /// List what a read capability (`ps1r:...`) opens.
        #[arg(long)]
        cap: Option<String>,
    },
    /// Print a read capability for a file, a folder, or (no path) a whole snapshot: whoever
    /// holds it can `ls`, `getfile` and `restore --cap` exactly that, with their own key.
    Share {
        /// Path inside the backup (none: the whole snapshot).
        path: Option<String>,
        /// Snapshot number or id prefix (default: latest).
        #[arg(long)]
        snapshot: Option<String>,
        /// The capability stops resolving after this long (e.g. 7d, 12h); default: never.
        #[arg(long, value_parser = parse_grace)]
        expires: Option<Duration>,
        /// A live share: it follows this user's later backups and syncs of the path (a
        /// holder mirrors it with `sync --from`), until `unshare`.
        #[arg(long)]
        live: bool,
    },
    /// Revoke a share: its capability stops resolving once the next `prune` removed it.
    Unshare {
        /// The capability (`ps1r:...`) as `share` printed it.
        cap: String,
    },
    /// List what this user has shared, with expiry and state.
    Shares,
    /// List snapshots, newest first.
    Snapshots,
    /// Check that everything the kept snapshots reference can be read from the ring; forget
    /// what cannot, so the next backup stores it again. Fails if something is missing.
    Check {
        /// Also decrypt every chunk and check it against its id.
        #[arg(long)]
        read_data: bool,
    },
    /// Forget snapshots: the named ones, and those no --keep-* rule keeps (restic's rules,
    /// applied per source directory, times in UTC). The latest snapshot is always kept. The
    /// data stays on the nodes until `prune` removes it.
    Forget {
        /// Snapshots to forget: numbers or id prefixes, as `snapshots` shows them.
        snapshots: Vec<String>,
        #[command(flatten)]
        keep: KeepArgs,
        /// Show what would be forgotten and why; change nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// Delete from the nodes what no kept snapshot references: unreferenced documents older
    /// than the grace period are marked; those marked at least the grace period ago and still
    /// unreferenced are deleted (with --grace 0s, at once). Only your own documents, with a
    /// statement signed by your key.
    Prune {
        /// How long a document must be unreferenced (and marked) before it is deleted, e.g.
        /// 1h, 30m, 0s (a backup running meanwhile must finish within it).
        #[arg(long, default_value = "1h", value_parser = parse_grace)]
        grace: Duration,
        /// Show what would be marked and deleted; change nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// Remove paths from the backup (recorded as a new snapshot; older snapshots keep them).
    Rm {
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Space used: logical bytes, stored bytes, overhead, and per node.
    Du,
    /// Watch a directory and push every change into the ring (runs until stopped).
    Sync {
        dir: PathBuf,
        /// Quiet period after the last change before syncing, in milliseconds.
        #[arg(long, default_value_t = 250)]
        debounce_ms: u64,
        /// Prune every so often (a number and a unit: 30m, 1h, 1d), so what the retention
        /// forgets gives its space back; 0s: never.
        #[arg(long, default_value = "1h", value_parser = parse_grace)]
        prune_every: Duration,
        /// The prune's grace period (see `prune --grace`).
        #[arg(long, default_value = "1h", value_parser = parse_grace)]
        prune_grace: Duration,
        /// Only push this folder's changes into the ring; do not take the user's other
        /// devices' changes in (the default is two-way sync).
        #[arg(long)]
        push_only: bool,
        /// Keep <dir> a read-only mirror of what a read capability (`ps1r:...`, a live share
        /// of someone else's) opens, following its owner's changes.
        #[arg(long, conflicts_with = "push_only")]
        from: Option<String>,
    },
    /// List the user's devices (the client data directories that ran `sync`) and when each
    /// last published its synced folder.
    Devices,
    /// Show the node the client talks to and the ring around it.
    Status,
    // --- entangled ring administration (admin.rs; no key needed) ---
    /// Rebuild lost blocks from the entanglement: the whole ring to a fixed point (no ids), or
    /// the given blocks. Exit status 5 (integrity) if anything stays undecodable or missing.
    Repair {
        /// Block ids (64 hex digits).
        blocks: Vec<String>,
    },
    /// Check every codeword of the ring and list the damaged ones. Exit status 5 (integrity)
    /// if damage remains after the run.
    Audit {
        /// Repair damaged codewords as they are found (then check again).
        #[arg(long)]
        fix: bool,
        /// Codewords checked per request.
        #[arg(long, default_value_t = crate::admin::AUDIT_PAGE, value_parser = clap::value_parser!(u32).range(1..=4096))]
        page: u32,
    },
    /// Replica management: bring well-entangled parities down to one copy, once or as a daemon.
    Scrub(ScrubArgs),
}

/// The retention rules of `forget` (0: the rule is off).
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the N newest hours that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the N newest days (UTC) that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the N newest ISO weeks that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the N newest months that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest snapshot of each of the N newest years that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
}

impl KeepArgs {
    #[must_use]
    pub fn policy(&self) -> Policy {
        Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
        }
    }
}

/// `scrub (--pointers N | --window W) [--interval SECS | --stop]`.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("policy").required(true).multiple(true).args(["pointers", "window", "stop"])))]
pub struct ScrubArgs {
    /// Scrub parities pointed at by at least N codewords.
    #[arg(long, value_name = "N", conflicts_with = "window")]
    pub pointers: Option<u32>,
    /// Scrub parities that are not among the W most recently written (0: all of them).
    #[arg(long, value_name = "W")]
    pub window: Option<u64>,
    /// Also keep scrubbing on every node every SECS seconds (until --stop or a node restart).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "stop")]
    pub interval: Option<u64>,
    /// Stop the scrub daemon on every node (scrubs nothing).
    #[arg(long)]
    pub stop: bool,
}

impl ScrubArgs {
    /// The mode and schedule of the request.
    pub fn request(&self) -> Result<(ScrubMode, ScrubSchedule)> {
        let sched = match (self.stop, self.interval) {
            (true, _) => ScrubSchedule::Stop,
            (false, Some(s)) => ScrubSchedule::Every(Duration::from_secs(s)),
            (false, None) => ScrubSchedule::Once,
        };
        let mode = match (self.pointers, self.window) {
            (Some(threshold), None) => ScrubMode::Pointers { threshold },
            (None, Some(blocks)) => ScrubMode::Window { blocks },
            // --stop alone: the node ignores the mode.
            (None, None) if self.stop => ScrubMode::Window { blocks: 0 },
            _ => {
                return Err(ClientError::Config(
                    "scrub: give exactly one of --pointers N or --window W".into(),
                ))
            }
        };
        Ok((mode, sched))
    }
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// Copy the (passphrase-sealed) key file to <file>.
    Export { file: PathBuf },
    /// Install a key file exported elsewhere (checks the passphrase opens it).
    Import {
        file: PathBuf,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
}

/// Runs one command. Errors print as one line from main.
pub async fn run(cli: Cli) -> Result<()> {
    let g = cli.global.clone();
    let dirs = Dirs::resolve(g.config_dir.clone(), g.data_dir.clone())?;
    match cli.command {
        Command::Init => cmd_init(&g, &dirs),
        Command::Join { invite, force } => {
            let (role, ring) = config::save_credential(&dirs, &invite, force)?;
            print(
                g.json,
                &serde_json::json!({
                    "ring": ring.to_string(),
                    "role": role.to_string(),
                    "config_dir": dirs.config,
                }),
                || {
                    format!(
                        "credential of ring {ring} ({role}) kept in {}",
                        dirs.config.display()
                    )
                },
            );
            Ok(())
        }
        Command::Key { action } => cmd_key(&g, &dirs, action),
        Command::Status => cmd_status(&g, &dirs).await,
        Command::Repair { blocks } => {
            let cred = config::credential(g.credential.as_deref(), &dirs)?;
            admin::cmd_repair(admin_node(&g)?, cred, admin_timeout(&g), g.json, &blocks).await
        }
        Command::Audit { fix, page } => {
            let cred = config::credential(g.credential.as_deref(), &dirs)?;
            admin::cmd_audit(admin_node(&g)?, cred, admin_timeout(&g), g.json, fix, page).await
        }
        Command::Scrub(a) => {
            let (mode, sched) = a.request()?;
            let cred = config::credential(g.credential.as_deref(), &dirs)?;
            admin::cmd_scrub(
                admin_node(&g)?,
                cred,
                admin_timeout(&g),
                g.json,
                mode,
                sched,
            )
            .await
        }
        cmd => {
            let identity = load_identity(&dirs)?;
            let ctx = Ctx::connect(&g, &dirs, identity).await?;
            match cmd {
                Command::Backup {
                    dir,
                    concurrency,
                    reread,
                } => cmd_backup(&ctx, &dir, concurrency, reread).await,
                Command::Getfile {
                    path,
                    dest,
                    version: Some(n),
                    ..
                } => cmd_getfile_version(&ctx, &path, &dest, n).await,
                Command::Getfile {
                    path,
                    dest,
                    snapshot,
                    version: None,
                    cap,
                } => {
                    let src = Source::of(&ctx, snapshot.as_deref(), cap.as_deref()).await?;
                    cmd_getfile(&ctx, &path, &dest, &src).await
                }
                Command::Restore {
                    dest,
                    snapshot,
                    cap,
                } => {
                    let src = Source::of(&ctx, snapshot.as_deref(), cap.as_deref()).await?;
                    cmd_restore(&ctx, &dest, &src).await
                }
                Command::Ls {
                    path,
                    versions: true,
                    ..
                } => cmd_ls_versions(&ctx, path.as_deref()).await,
                Command::Ls {
                    path,
                    snapshot,
                    cap,
                    ..
                } => {
                    let src = Source::of(&ctx, snapshot.as_deref(), cap.as_deref()).await?;
                    cmd_ls(&ctx, path.as_deref(), &src).await
                }
                Command::Share {
                    path,
                    snapshot,
                    expires,
                    live,
                } => cmd_share(&ctx, path.as_deref(), snapshot.as_deref(), expires, live).await,
                Command::Unshare { cap } => cmd_unshare(&ctx, &cap).await,
                Command::Shares => cmd_shares(&ctx).await,
                Command::Snapshots => cmd_snapshots(&ctx).await,
                Command::Check { read_data } => cmd_check(&ctx, read_data).await,
                Command::Forget {
                    snapshots,
                    keep,
                    dry_run,
                } => cmd_forget(&ctx, &keep.policy(), &snapshots, dry_run).await,
                Command::Prune { grace, dry_run } => cmd_prune(&ctx, grace, dry_run).await,
                Command::Rm { paths } => cmd_rm(&ctx, &paths).await,
                Command::Du => cmd_du(&ctx).await,
                Command::Sync {
                    from: Some(cap),
                    dir,
                    ..
                } => cmd_sync_from(&ctx, &cap, &dir).await,
                Command::Sync {
                    dir,
                    debounce_ms,
                    prune_every,
                    prune_grace,
                    push_only,
                    from: None,
                } => cmd_sync(&ctx, &dir, debounce_ms, prune_every, prune_grace, push_only).await,
                Command::Devices => cmd_devices(&ctx).await,
                Command::Init
                | Command::Join { .. }
                | Command::Key { .. }
                | Command::Status
                | Command::Repair { .. }
                | Command::Audit { .. }
                | Command::Scrub(_) => Ok(()),
            }
        }
    }
}

fn admin_node(g: &Global) -> Result<peerstore_proto::NodeAddr> {
    config::node_address(g.peer.as_deref(), g.node_data_dir.as_deref())
}

fn admin_timeout(g: &Global) -> Duration {
    Duration::from_secs(g.timeout_secs)
}

fn load_identity(dirs: &Dirs) -> Result<Identity> {
    let path = dirs.identity_path();
    if !path.exists() {
        return Err(ClientError::Config(format!(
            "no key at {}: run `peerstore-client init` (or `key import <file>`) first",
            path.display()
        )));
    }
    let pass = config::passphrase("Passphrase: ", false)?;
    config::open_key_file(&path, &pass)
}

/// A connected, unlocked client.
struct Ctx {
    g: Global,
    dirs: Dirs,
    ring: Arc<RingStore>,
    repo: Repo,
}

impl Ctx {
    async fn connect(g: &Global, dirs: &Dirs, identity: Identity) -> Result<Ctx> {
        let node = config::node_address(g.peer.as_deref(), g.node_data_dir.as_deref())?;
        let cred = config::credential(g.credential.as_deref(), dirs)?;
        let user = identity.user_id();
        let identity = Arc::new(identity);
        let ring = Arc::new(
            RingStore::connect(node, Duration::from_secs(g.timeout_secs), cred)
                .await?
                .with_writer(identity.clone()),
        );
        let repo = Repo::new(ring.clone(), identity)
            .with_root_watermark(dirs.user_data(&user).join("root-seen"));
        Ok(Ctx {
            g: g.clone(),
            dirs: dirs.clone(),
            ring,
            repo,
        })
    }

    /// The packs a `check` found missing from the ring.
    fn missing_packs_path(&self) -> PathBuf {
        self.dirs.user_data(&self.repo.user()).join("missing-packs")
    }

    /// The chunk cache, emptied first if a prune raised the user's prune epoch since it was
    /// filled (it may name deleted packs).
    async fn known(&self) -> Result<Arc<KnownBlocks>> {
        let p = self.dirs.user_data(&self.repo.user()).join("known-blocks");
        let known = KnownBlocks::open(&p)?;
        crate::prune::align_cache(&self.repo, &known).await?;
        Ok(Arc::new(known))
    }

    /// Where `prune` keeps its marks.
    fn prune_marks_path(&self) -> PathBuf {
        self.dirs.user_data(&self.repo.user()).join("prune-marks")
    }

    fn print<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) {
        print(self.g.json, value, text);
    }
}

use crate::admin::print;

/// A path inside the backup as the user typed it: an unsafe one (`..`, ...) is a usage error
/// (in a manifest, the same check is an integrity failure).
fn user_path(s: &str) -> Result<Vec<String>> {
    parse_backup_path(s).map_err(|e| ClientError::Config(e.to_string()))
}

fn cmd_init(g: &Global, dirs: &Dirs) -> Result<()> {
    let path = dirs.identity_path();
    if path.exists() {
        return Err(ClientError::Refused(format!(
            "{} already exists; refusing to overwrite it",
            path.display()
        )));
    }
    let pass = config::passphrase("New passphrase: ", true)?;
    let id = config::init_identity(dirs, &pass, &KdfParams::default())?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({"user": id.user_id().to_hex(), "key_file": path})
        );
    } else {
        println!(
            "created key for user {} at {}\nkeep a copy elsewhere: peerstore-client key export <file>",
            id.user_id(),
            path.display()
        );
    }
    Ok(())
}

fn cmd_key(g: &Global, dirs: &Dirs, action: KeyAction) -> Result<()> {
    match action {
        KeyAction::Export { file } => {
            let path = dirs.identity_path();
            let pass = config::passphrase("Passphrase: ", false)?;
            config::open_key_file(&path, &pass)?;
            let bytes = std::fs::read(&path).map_err(|e| ClientError::io(&path, e))?;
            config::write_private(&file, &bytes, false)?;
            print(g.json, &serde_json::json!({"exported": file}), || {
                format!("exported key to {}", file.display())
            });
        }
        KeyAction::Import { file, force } => {
            let pass = config::passphrase("Passphrase of the key file: ", false)?;
            let id = config::open_key_file(&file, &pass)?;
            let bytes = std::fs::read(&file).map_err(|e| ClientError::io(&file, e))?;
            config::write_private(&dirs.identity_path(), &bytes, force)?;
            print(
                g.json,
                &serde_json::json!({"user": id.user_id().to_hex(), "key_file": dirs.identity_path()}),
                || {
                    format!(
                        "imported key of user {} into {}",
                        id.user_id(),
                        dirs.identity_path().display()
                    )
                },
            );
        }
    }
    Ok(())
}

/// "YYYY-MM-DD HH:MM:SS" UTC from nanoseconds since the epoch.
#[must_use]
pub fn format_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::forget::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

async fn cmd_backup(ctx: &Ctx, dir: &Path, concurrency: usize, reread: bool) -> Result<()> {
    let known = ctx.known().await?;
    let mut prev = previous_manifest(&ctx.repo, dir, 20).await?;
    // Files whose data `check` found missing from the ring are read and stored again.
    let missing = crate::check::load_missing(&ctx.missing_packs_path())?;
    if let Some(p) = prev.as_mut() {
        let n = crate::check::forget_files_in(p, &missing);
        if n > 0 {
            eprintln!("{n} file(s) whose data the ring lost are read and stored again");
        }
    }
    let opts = BackupOptions {
        concurrency,
        reread_all: reread,
        ..BackupOptions::default()
    };
    let progress = Arc::new(Progress::reporting("backup", !ctx.g.json));
    let r = backup(&ctx.repo, known, dir, prev.as_ref(), &opts, &progress).await;
    progress.finish(r.is_ok());
    let (s, _, _) = r?;
    ctx.print(&s, || {
        format!(
            "snapshot {} ({}): {} files, {} dirs, {} symlinks, {}; read {} files ({}), {} unchanged; uploaded {} of {} chunks ({}), {} deduplicated, {} metadata blocks; {:.1} s",
            s.snapshot.unwrap_or(0),
            s.snapshot_id.clone().unwrap_or_default(),
            s.files,
            s.dirs,
            s.symlinks,
            human(s.bytes),
            s.files_read,
            human(s.bytes_read),
            s.files_unchanged,
            s.chunks_uploaded,
            s.chunks,
            human(s.bytes_uploaded),
            s.chunks_deduplicated,
            s.metadata_blocks,
            s.seconds
        )
    });
    if !s.skipped.is_empty() {
        for p in &s.skipped {
            eprintln!("warning: not saved: {p}");
        }
        return Err(ClientError::Refused(format!(
            "{} path(s) were not saved (see warnings above); run backup again",
            s.skipped.len()
        )));
    }
    Ok(())
}

/// What `ls`, `getfile` and `restore` read: one of the user's snapshots, or what a read
/// capability opens (then `repo` opens chunks with the share's keys only).
struct Source {
    repo: Repo,
    manifest: Manifest,
    /// For messages: "snapshot 3", or "share 0123abcd (folder photos)".
    what: String,
}

impl Source {
    async fn of(ctx: &Ctx, snapshot: Option<&str>, cap: Option<&str>) -> Result<Source> {
        match cap {
            Some(cap) => {
                let cap = crate::share::Capability::parse(cap)?;
                let sm = crate::share::resolve(&ctx.repo, &cap).await?;
                let what = format!("share {} ({} {})", cap.id(), sm.kind.as_str(), sm.name);
                let (manifest, keys) = crate::share::into_parts(sm);
                Ok(Source {
                    repo: ctx.repo.clone().with_shared_chunks(keys),
                    manifest,
                    what,
                })
            }
            None => {
                let snap = ctx.repo.select(snapshot).await?;
                let manifest = ctx.repo.load_manifest(&snap).await?;
                Ok(Source {
                    repo: ctx.repo.clone(),
                    manifest,
                    what: format!("snapshot {}", snap.snapshot.number),
                })
            }
        }
    }
}

async fn cmd_restore(ctx: &Ctx, dest: &Path, src: &Source) -> Result<()> {
    let m = &src.manifest;
    let progress = Arc::new(Progress::reporting("restore", !ctx.g.json));
    let r = restore_tree(&src.repo, m, dest, &progress).await;
    progress.finish(r.is_ok());
    let s = r?;
    ctx.print(&s, || {
        format!(
            "restored {} to {}: {} files, {} dirs, {} symlinks, {} in {:.1} s",
            src.what,
            dest.display(),
            s.files,
            s.dirs,
            s.symlinks,
            human(s.bytes),
            s.seconds
        )
    });
    Ok(())
}

async fn cmd_getfile(ctx: &Ctx, path: &str, dest: &Path, src: &Source) -> Result<()> {
    let comps = user_path(path)?;
    if comps.is_empty() {
        return Err(ClientError::Config(
            "give a path inside the backup (use restore for everything)".into(),
        ));
    }
    let m = &src.manifest;
    let entry = m
        .find(&comps)
        .ok_or_else(|| ClientError::NotInSnapshot(path.to_string()))?;
    let target = match std::fs::symlink_metadata(dest) {
        Ok(md) if md.is_dir() && !matches!(entry.kind, EntryKind::Dir) => {
            dest.join(&comps[comps.len() - 1])
        }
        _ => dest.to_path_buf(),
    };
    let progress = Arc::new(Progress::reporting("getfile", !ctx.g.json));
    let r = restore_entry(&src.repo, m, entry, &target, &progress).await;
    progress.finish(r.is_ok());
    let s = r?;
    ctx.print(&s, || {
        format!(
            "restored {} to {} ({})",
            path,
            target.display(),
            human(s.bytes)
        )
    });
    Ok(())
}

/// One kept version of a synced path (`ls --versions`).
#[derive(Serialize)]
struct VersionRow {
    path: String,
    /// Its number for `getfile --version`.
    version: usize,
    /// The device that made it.
    device: String,
    time: String,
    kind: &'static str,
    size: u64,
}

/// The kept versions of `path` in the devices' merged tree, numbered from 1 (newest first).
fn versions_of<'a>(
    tree: &'a crate::merge::SyncTree,
    path: &[String],
) -> Vec<&'a crate::merge::Version> {
    tree.paths
        .get(path)
        .map(crate::merge::PathState::versions)
        .unwrap_or_default()
}

async fn cmd_ls_versions(ctx: &Ctx, path: Option<&str>) -> Result<()> {
    let prefix = user_path(path.unwrap_or(""))?;
    let (tree, devices) = crate::devices::merged(&ctx.repo).await?;
    let name = |id: &crate::merge::DeviceId| {
        devices
            .iter()
            .find(|d| d.id == *id)
            .map_or_else(|| hex::encode(&id[..4]), |d| d.name.clone())
    };
    let mut rows = Vec::new();
    for p in tree.paths.keys() {
        if p.len() < prefix.len() || p[..prefix.len()] != prefix[..] {
            continue;
        }
        for (i, v) in versions_of(&tree, p).into_iter().enumerate() {
            let Some(e) = &v.entry else { continue };
            rows.push(VersionRow {
                path: e.display_path(),
                version: i + 1,
                device: name(&v.by),
                time: format_time(v.at_ns),
                kind: match e.kind {
                    EntryKind::Dir => "dir",
                    EntryKind::File { .. } => "file",
                    EntryKind::Symlink { .. } => "symlink",
                },
                size: e.size(),
            });
        }
    }
    if ctx.g.json {
        ctx.print(&rows, String::new);
    } else if rows.is_empty() {
        println!("no kept versions (no conflicts between devices)");
    } else {
        for r in &rows {
            println!(
                "{} #{} {:>12} {} from {}",
                r.path, r.version, r.size, r.time, r.device
            );
        }
    }
    Ok(())
}

async fn cmd_getfile_version(ctx: &Ctx, path: &str, dest: &Path, n: usize) -> Result<()> {
    let comps = user_path(path)?;
    let (tree, _) = crate::devices::merged(&ctx.repo).await?;
    let versions = versions_of(&tree, &comps);
    let entry = n
        .checked_sub(1)
        .and_then(|i| versions.get(i))
        .and_then(|v| v.entry.clone())
        .ok_or_else(|| {
            ClientError::NotInSnapshot(format!(
                "{path} version {n} (`ls --versions {path}` lists {} version(s))",
                versions.len()
            ))
        })?;
    let target = match std::fs::symlink_metadata(dest) {
        Ok(md) if md.is_dir() && !matches!(entry.kind, EntryKind::Dir) => {
            dest.join(&comps[comps.len() - 1])
        }
        _ => dest.to_path_buf(),
    };
    let m = Manifest::new(vec![entry.clone()]);
    let progress = Arc::new(Progress::reporting("getfile", !ctx.g.json));
    let r = restore_entry(&ctx.repo, &m, &entry, &target, &progress).await;
    progress.finish(r.is_ok());
    let s = r?;
    ctx.print(&s, || {
        format!(
            "restored {path} version {n} to {} ({})",
            target.display(),
            human(s.bytes)
        )
    });
    Ok(())
}

async fn cmd_share(
    ctx: &Ctx,
    path: Option<&str>,
    snapshot: Option<&str>,
    expires: Option<Duration>,
    live: bool,
) -> Result<()> {
    let comps = user_path(path.unwrap_or(""))?;
    let snap = ctx.repo.select(snapshot).await?;
    let m = ctx.repo.load_manifest(&snap).await?;
    let expires_us = expires.map(|d| crate::share::now_us().saturating_add(d.as_micros() as u64));
    let cap = crate::share::share(&ctx.repo, &snap, &m, &comps, expires_us, live).await?;
    let text = cap.encode();
    ctx.print(
        &serde_json::json!({
            "capability": text,
            "id": cap.id(),
            "kind": cap.kind.as_str(),
            "path": comps.join("/"),
            "snapshot": snap.snapshot.number,
            "expires": expires_us.map(|e| format_time((e as i64).saturating_mul(1000))),
            "live": live,
        }),
        || text.clone(),
    );
    if !ctx.g.json {
        eprintln!(
            "shared {} {} of snapshot {}{}: whoever holds this capability can read it (and only it)",
            cap.kind.as_str(),
            if comps.is_empty() { "(everything)".to_string() } else { comps.join("/") },
            snap.snapshot.number,
            expires_us.map_or_else(String::new, |e| format!(
                " until {}",
                format_time((e as i64).saturating_mul(1000))
            )),
        );
    }
    Ok(())
}

async fn cmd_unshare(ctx: &Ctx, cap: &str) -> Result<()> {
    let cap = crate::share::Capability::parse(cap)?;
    if !crate::share::unshare(&ctx.repo, &cap).await? {
        return Err(ClientError::NotInSnapshot(format!(
            "share {} is not among this user's shares (see `shares`)",
            cap.id()
        )));
    }
    ctx.print(
        &serde_json::json!({ "id": cap.id(), "revoked": true }),
        || {
            format!(
                "share {} revoked: it stops resolving once `prune` has removed it \
                 (what its holders already downloaded stays theirs)",
                cap.id()
            )
        },
    );
    Ok(())
}

/// `sync --from CAP DIR`: keeps `dir` equal to what `cap` opens, checking every 500 ms;
/// stops (with the error) when the share is revoked or expires, or at Ctrl-C.
async fn cmd_sync_from(ctx: &Ctx, cap: &str, dir: &Path) -> Result<()> {
    let cap = crate::share::Capability::parse(cap)?;
    std::fs::create_dir_all(dir).map_err(|e| ClientError::io(dir, e))?;
    // The mirror removes whatever the share does not have: only into an empty directory, or
    // one this client already mirrors this share into.
    let canonical = dir.canonicalize().map_err(|e| ClientError::io(dir, e))?;
    let marks = ctx.dirs.data.join("mirrors");
    let mark = marks.join(hex::encode(
        &blake3::hash(canonical.to_string_lossy().as_bytes()).as_bytes()[..16],
    ));
    let mirrored_here = std::fs::read_to_string(&mark).is_ok_and(|s| s.trim() == cap.id());
    let empty = std::fs::read_dir(&canonical)
        .map_err(|e| ClientError::io(&canonical, e))?
        .next()
        .is_none();
    if !empty && !mirrored_here {
        return Err(ClientError::Refused(format!(
            "{} is not empty and not a mirror of share {}: the mirror would delete what the \
             share does not have; give a new or empty directory",
            dir.display(),
            cap.id()
        )));
    }
    std::fs::create_dir_all(&marks).map_err(|e| ClientError::io(&marks, e))?;
    std::fs::write(&mark, format!("{}\n", cap.id())).map_err(|e| ClientError::io(&mark, e))?;
    if !ctx.g.json {
        eprintln!(
            "mirroring share {} into {} (Ctrl-C to stop)",
            cap.id(),
            dir.display()
        );
    }
    let mut last: Option<[u8; 32]> = None;
    loop {
        match crate::share::resolve_with_hash(&ctx.repo, &cap).await {
            Ok((hash, sm)) if last != Some(hash) => {
                let snapshot = sm.snapshot;
                let (m, keys) = crate::share::into_parts(sm);
                let repo = ctx.repo.clone().with_shared_chunks(keys);
                let removed = crate::share::remove_extraneous(dir, &m)?;
                let progress = Arc::new(Progress::hidden());
                let s = restore_tree(&repo, &m, dir, &progress).await?;
                last = Some(hash);
                ctx.print(
                    &serde_json::json!({
                        "share": cap.id(),
                        "snapshot": snapshot,
                        "files": s.files,
                        "removed": removed,
                    }),
                    || {
                        format!(
                            "mirrored share {} at snapshot {snapshot}: {} files, {} removed",
                            cap.id(),
                            s.files,
                            removed
                        )
                    },
                );
            }
            Ok(_) => {}
            Err(e @ (ClientError::Refused(_) | ClientError::Integrity(_))) => return Err(e),
            Err(e) => eprintln!("warning: {e}; trying again"),
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[derive(Serialize)]
struct ShareRow {
    id: String,
    kind: &'static str,
    path: String,
    snapshot: u64,
    created: String,
    expires: Option<String>,
    state: &'static str,
    /// A live share: it follows the owner's later snapshots.
    follows: bool,
    capability: String,
}

async fn cmd_shares(ctx: &Ctx) -> Result<()> {
    let now = crate::share::now_us();
    let rows: Vec<ShareRow> = crate::share::list(&ctx.repo)
        .await?
        .into_iter()
        .map(|l| ShareRow {
            id: l.cap.id(),
            kind: l.cap.kind.as_str(),
            path: if l.path.is_empty() {
                "/".into()
            } else {
                l.path.clone()
            },
            snapshot: l.snapshot,
            created: format_time((l.created_us as i64).saturating_mul(1000)),
            expires: l
                .expires_us
                .map(|e| format_time((e as i64).saturating_mul(1000))),
            state: if l.revoked {
                "revoked"
            } else if l.live(now) {
                "live"
            } else {
                "expired"
            },
            follows: l.follow,
            capability: l.cap.encode(),
        })
        .collect();
    if ctx.g.json {
        ctx.print(&rows, String::new);
    } else if rows.is_empty() {
        println!("nothing shared");
    } else {
        for r in &rows {
            println!(
                "{} {:8} {:7} {}{} (snapshot {}) created {} expires {}",
                r.id,
                r.kind,
                r.state,
                r.path,
                if r.follows { " [live: follows]" } else { "" },
                r.snapshot,
                r.created,
                r.expires.as_deref().unwrap_or("never")
            );
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct LsEntry {
    path: String,
    kind: &'static str,
    mode: String,
    size: u64,
    mtime: String,
    target: Option<String>,
}

async fn cmd_ls(ctx: &Ctx, path: Option<&str>, src: &Source) -> Result<()> {
    let prefix = user_path(path.unwrap_or(""))?;
    let m = &src.manifest;
    if !prefix.is_empty() && m.find(&prefix).is_none() {
        return Err(ClientError::NotInSnapshot(path.unwrap_or("").to_string()));
    }
    let list: Vec<LsEntry> = m
        .entries
        .iter()
        .filter(|e| e.is_under(&prefix))
        .map(|e| LsEntry {
            path: e.display_path(),
            kind: match e.kind {
                EntryKind::Dir => "dir",
                EntryKind::File { .. } => "file",
                EntryKind::Symlink { .. } => "symlink",
            },
            mode: format!("{:04o}", e.mode),
            size: e.size(),
            mtime: format_time(e.mtime_ns),
            target: match &e.kind {
                EntryKind::Symlink { target } => Some(target.clone()),
                _ => None,
            },
        })
        .collect();
    if ctx.g.json {
        ctx.print(&list, String::new);
    } else {
        for e in &list {
            let k = &e.kind[..1];
            match &e.target {
                Some(t) => println!(
                    "{k} {} {:>12} {} {} -> {t}",
                    e.mode, e.size, e.mtime, e.path
                ),
                None => println!("{k} {} {:>12} {} {}", e.mode, e.size, e.mtime, e.path),
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct SnapshotLine {
    number: u64,
    id: String,
    time: String,
    origin: String,
    source: String,
    files: u64,
    dirs: u64,
    bytes: u64,
    /// Object format: 2 is bound to the user, number and parent; 1 (older clients) is not.
    format: u8,
}

async fn cmd_check(ctx: &Ctx, read_data: bool) -> Result<()> {
    let known = ctx.known().await?;
    let spin = crate::admin::spinner("checking the snapshots", !ctx.g.json);
    let r = crate::check::check(&ctx.repo, &known, &ctx.missing_packs_path(), read_data).await;
    spin.finish_and_clear();
    let r = r?;
    ctx.print(&r, || {
        let mut s = format!(
            "{} snapshots, {} packs read{}",
            r.snapshots,
            r.packs,
            if read_data {
                format!(", {} chunks verified", r.chunks_verified)
            } else {
                String::new()
            }
        );
        if r.is_clean() {
            s.push_str(": no errors");
        }
        s
    });
    if r.is_clean() {
        return Ok(());
    }
    for p in &r.missing_packs {
        eprintln!("missing pack {p}");
    }
    for c in &r.bad_chunks {
        eprintln!("bad chunk: {c}");
    }
    Err(ClientError::Integrity(format!(
        "check failed: {} pack(s) missing and {} chunk(s) bad, used by snapshot(s) {:?}; {} dedup entries forgotten: the next backup stores that data again where it still exists locally",
        r.missing_packs.len(),
        r.bad_chunks.len(),
        r.damaged_snapshots,
        r.cache_entries_purged
    )))
}

async fn cmd_snapshots(ctx: &Ctx) -> Result<()> {
    let all = ctx.repo.snapshots().await?;
    let lines: Vec<SnapshotLine> = all
        .iter()
        .map(|s| SnapshotLine {
            number: s.snapshot.number,
            id: s.short_id(),
            time: format_time(s.snapshot.time_ns),
            origin: s.snapshot.origin.clone(),
            source: s.snapshot.source.clone(),
            files: s.snapshot.totals.files,
            dirs: s.snapshot.totals.dirs,
            bytes: s.snapshot.totals.bytes,
            format: s.format,
        })
        .collect();
    if ctx.g.json {
        ctx.print(&lines, String::new);
    } else {
        if lines.is_empty() {
            println!("no snapshots yet");
        }
        for l in &lines {
            println!(
                "{:>5} {} {} {:<6} {:>7} files {:>10}  {}{}",
                l.number,
                l.id,
                l.time,
                l.origin,
                l.files,
                human(l.bytes),
                l.source,
                if l.format < 2 {
                    "  (format 1: not bound to its number and parent)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// One row of the `forget` table.
fn forget_row(l: &ForgetLine) -> String {
    let reasons: Vec<&str> = l.reasons.iter().map(|r| r.as_str()).collect();
    format!(
        "{:>5} {} {}  {}  ({})",
        l.number,
        l.id,
        l.time,
        l.source,
        reasons.join(", ")
    )
}

/// The text output of `forget`.
fn forget_text(r: &ForgetReport) -> String {
    let mut out = format!("keep {} snapshot(s):", r.kept.len());
    for l in &r.kept {
        out.push('\n');
        out.push_str(&forget_row(l));
    }
    if !r.removed.is_empty() {
        out.push_str(&format!(
            "\n{} {} snapshot(s):",
            if r.dry_run { "would remove" } else { "remove" },
            r.removed.len()
        ));
        for l in &r.removed {
            out.push('\n');
            out.push_str(&forget_row(l));
        }
    }
    out.push('\n');
    out.push_str(&if r.removed.is_empty() {
        "nothing to forget".to_string()
    } else if r.dry_run {
        format!(
            "dry run: would forget {} snapshot(s); nothing changed",
            r.removed.len()
        )
    } else {
        format!(
            "forgot {} snapshot(s): rewrote {} kept snapshot object(s), root {}; the data stays on the nodes until a prune removes it",
            r.removed.len(),
            r.rewritten,
            r.root
        )
    });
    out
}

async fn cmd_forget(ctx: &Ctx, policy: &Policy, named: &[String], dry_run: bool) -> Result<()> {
    let spin = crate::admin::spinner("forgetting snapshots", !ctx.g.json);
    let r = crate::forget::forget(&ctx.repo, policy, named, dry_run).await;
    spin.finish_and_clear();
    let r = r?;
    ctx.print(&r, || forget_text(&r));
    Ok(())
}

/// A duration as `--grace` takes it (the largest unit that divides it).
fn humantime_short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `--grace`: a number and a unit (s, m, h, d), e.g. `0s`, `30m`, `1h`.
fn parse_grace(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: give a number and a unit, e.g. 1h, 30m, 0s"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

async fn cmd_prune(ctx: &Ctx, grace: Duration, dry_run: bool) -> Result<()> {
    let spin = crate::admin::spinner("pruning", !ctx.g.json);
    let known = if dry_run {
        None
    } else {
        Some(ctx.known().await?)
    };
    let r = crate::prune::prune(
        &ctx.repo,
        &ctx.prune_marks_path(),
        known.as_deref(),
        crate::prune::PruneOptions { grace, dry_run },
    )
    .await;
    spin.finish_and_clear();
    let r = r?;
    ctx.print(&r, || r.text());
    if r.failed.is_empty() {
        Ok(())
    } else {
        Err(ClientError::Refused(format!(
            "{} documents were not deleted ({}); run prune again",
            r.failed.len(),
            r.failed.first().cloned().unwrap_or_default()
        )))
    }
}

async fn cmd_rm(ctx: &Ctx, paths: &[String]) -> Result<()> {
    let snap = ctx.repo.select(None).await?;
    let m = ctx.repo.load_manifest(&snap).await?;
    let mut entries = m.entries.clone();
    for p in paths {
        let comps = user_path(p)?;
        if comps.is_empty() {
            return Err(ClientError::Config("refusing to remove everything".into()));
        }
        let before = entries.len();
        entries.retain(|e| !e.is_under(&comps));
        if entries.len() == before {
            return Err(ClientError::NotInSnapshot(p.clone()));
        }
    }
    let removed = m.entries.len() - entries.len();
    let (s, _) = ctx
        .repo
        .publish(&Manifest::new(entries), &snap.snapshot.source, "rm")
        .await?;
    ctx.print(
        &serde_json::json!({"snapshot": s.snapshot.number, "id": s.short_id(), "removed": removed}),
        || {
            format!(
                "snapshot {} ({}): removed {removed} entries",
                s.snapshot.number,
                s.short_id()
            )
        },
    );
    Ok(())
}

#[derive(Serialize)]
struct NodeUsage {
    node: String,
    bytes_used: u64,
    capacity: u64,
    keys_owned: u64,
    keys_replica: u64,
    /// What its data directory occupies on disk.
    disk_bytes: u64,
    reachable: bool,
}

/// Most members `du` asks.
const DU_MAX_NODES: usize = 1024;

/// Every member of the ring `du` can find from `first` (the node asked), following successor
/// lists, with their usage; and the placement warnings they give.
async fn ring_usage(
    ctx: &Ctx,
    first: peerstore_proto::StatusReport,
) -> (Vec<NodeUsage>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut nodes = Vec::new();
    // By PeerId bytes (the client does not name libp2p's types).
    let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
    seen.insert(first.addr.peer.to_bytes());
    let mut answers = vec![(first.addr.clone(), Ok(first))];
    while !answers.is_empty() {
        let mut todo = Vec::new();
        for (addr, r) in answers {
            let Ok(s) = r else {
                nodes.push(NodeUsage {
                    node: addr.to_string(),
                    bytes_used: 0,
                    capacity: 0,
                    keys_owned: 0,
                    keys_replica: 0,
                    disk_bytes: 0,
                    reachable: false,
                });
                continue;
            };
            if let Some(w) = &s.placement.warning {
                warnings.push(format!("{addr}: {w}"));
            }
            for m in s.successors.iter().chain(&s.predecessor) {
                if seen.len() < DU_MAX_NODES && seen.insert(m.addr.peer.to_bytes()) {
                    todo.push(m.addr.clone());
                }
            }
            nodes.push(NodeUsage {
                node: addr.to_string(),
                bytes_used: s.bytes_used,
                capacity: s.capacity,
                keys_owned: s.keys_owned,
                keys_replica: s.keys_replica,
                disk_bytes: s.disk_bytes,
                reachable: true,
            });
        }
        answers = futures::future::join_all(todo.into_iter().map(|a| async move {
            let r = status_of(&a, Duration::from_secs(5), ctx.ring.identity()).await;
            (a, r)
        }))
        .await;
    }
    (nodes, warnings)
}

/// Placement warnings ("ADDR: message") as printed: one line per distinct message, naming the
/// node when one gives it and the count when several do (a ring on one machine is one line).
fn placement_summary(warnings: &[String]) -> Vec<String> {
    let mut by_message: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for w in warnings {
        let (node, message) = w.split_once(": ").unwrap_or(("", w.as_str()));
        by_message.entry(message).or_default().push(node);
    }
    by_message
        .into_iter()
        .map(|(message, nodes)| match nodes.as_slice() {
            [one] => format!("{one}: {message}"),
            many => format!("{} nodes: {message}", many.len()),
        })
        .collect()
}

#[derive(Serialize)]
struct DuReport {
    snapshots: usize,
    logical_bytes: u64,
    logical_bytes_all_snapshots: u64,
    unique_blocks: u64,
    /// Plaintext bytes of the unique chunks.
    unique_plain_bytes: u64,
    /// Encrypted bytes of the unique blocks (chunks, manifests, snapshot objects).
    unique_bytes: u64,
    replication: u32,
    /// What the ring's nodes occupy on their disks, measured by each node (its data
    /// directory: every user's blocks, single copies, records and indexes), summed over every
    /// member that answered.
    stored_bytes: u64,
    /// What r copies of this user's unique blocks take (`unique_bytes` x r).
    expected_bytes: u64,
    /// `stored_bytes` / `unique_plain_bytes`.
    overhead: f64,
    /// Every ring member found, in ring order from the node asked.
    nodes: Vec<NodeUsage>,
    /// Nodes whose keys have fewer distinct hosts than copies (`status` warns the same).
    placement_warnings: Vec<String>,
    /// The ring's entanglement figures (`None` if the node could not give them).
    entanglement: Option<EntanglementDu>,
}

async fn cmd_du(ctx: &Ctx) -> Result<()> {
    let all = ctx.repo.snapshots().await?;
    let mut blocks: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    let mut plain: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    let mut logical_all = 0;
    let mut logical = 0;
    for (i, s) in all.iter().enumerate() {
        let m = ctx.repo.load_manifest(s).await?;
        let t = m.totals();
        if i == 0 {
            logical = t.bytes;
        }
        logical_all += t.bytes;
        for e in &m.entries {
            if let EntryKind::File { chunks, .. } = &e.kind {
                for c in chunks {
                    blocks.insert(c.id.0, u64::from(c.sealed_len));
                    plain.insert(c.id.0, u64::from(c.len));
                }
            }
        }
        let mut left = s.snapshot.manifest_len;
        for k in &s.snapshot.manifest_blocks {
            let n = left.min(peerstore_proto::MAX_BLOCK_SIZE as u64);
            blocks.insert(*k, n);
            left -= n;
        }
        blocks.insert(s.key, 256);
    }
    let unique_bytes: u64 = blocks.values().sum();
    let unique_plain: u64 = plain.values().sum();
    let status = ctx.ring.status().await?;
    let replication = status.replication;
    let expected = unique_bytes * u64::from(replication);
    let (nodes, warnings) = ring_usage(ctx, status).await;
    let stored: u64 = nodes.iter().map(|n| n.disk_bytes).sum();
    let report = DuReport {
        snapshots: all.len(),
        logical_bytes: logical,
        logical_bytes_all_snapshots: logical_all,
        unique_blocks: blocks.len() as u64,
        unique_plain_bytes: unique_plain,
        unique_bytes,
        replication,
        stored_bytes: stored,
        expected_bytes: expected,
        overhead: if unique_plain > 0 {
            stored as f64 / unique_plain as f64
        } else {
            0.0
        },
        nodes,
        placement_warnings: warnings,
        entanglement: match admin::entangle_stats(ctx.ring.as_ref()).await {
            Ok(st) => Some(EntanglementDu::from_stats(&st)),
            Err(e) => {
                eprintln!("warning: no entanglement figures from the ring: {e}");
                None
            }
        },
    };
    for w in placement_summary(&report.placement_warnings) {
        eprintln!("WARNING: {w}");
    }
    ctx.print(&report, || {
        let entangled = report
            .entanglement
            .as_ref()
            .is_some_and(|e| e.kind == "step");
        let missing = report.nodes.iter().filter(|n| !n.reachable).count();
        let mut stored = format!(
            "on the nodes' disks: {} over {} nodes (everything they store, all users; measured by each node): x{:.2} of the unique data",
            human(report.stored_bytes),
            report.nodes.len() - missing,
            report.overhead
        );
        if missing > 0 {
            stored.push_str(&format!(" ({missing} nodes did not answer: not counted)"));
        }
        // On an entangled ring the data is stored as sources and parities (figures below).
        if !entangled {
            stored.push_str(&format!(
                "
r = {} copies of the unique data alone: {}",
                report.replication,
                human(report.expected_bytes)
            ));
        }
        let mut out = format!(
            "latest snapshot: {} logical ({} over {} snapshots)\nunique data: {} in {} blocks ({} encrypted, with metadata)\n{stored}\nper node:",
            human(report.logical_bytes),
            human(report.logical_bytes_all_snapshots),
            report.snapshots,
            human(report.unique_plain_bytes),
            report.unique_blocks,
            human(report.unique_bytes),
        );
        for n in &report.nodes {
            if n.reachable {
                out.push_str(&format!(
                    "\n  {}  used {} of {}, {} on disk ({} owned + {} replica keys)",
                    n.node,
                    human(n.bytes_used),
                    human(n.capacity),
                    human(n.disk_bytes),
                    n.keys_owned,
                    n.keys_replica
                ));
            } else {
                out.push_str(&format!("\n  {}  unreachable", n.node));
            }
        }
        if let Some(e) = &report.entanglement {
            out.push('\n');
            out.push_str(&e.text());
        }
        out
    });
    Ok(())
}

async fn cmd_status(g: &Global, dirs: &Dirs) -> Result<()> {
    let node = config::node_address(g.peer.as_deref(), g.node_data_dir.as_deref())?;
    let cred = config::credential(g.credential.as_deref(), dirs)?;
    let s = status_of(&node, Duration::from_secs(g.timeout_secs), cred).await?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({
                "node": s.addr.to_string(), "member": s.member, "replication": s.replication,
                "successors": s.successors.iter().map(|m| m.addr.to_string()).collect::<Vec<_>>(),
                "bytes_used": s.bytes_used, "capacity": s.capacity,
                "placement": {
                    "host": s.placement.host, "zone": s.placement.zone,
                    "replica_hosts": s.placement.replica_hosts, "warning": s.placement.warning,
                },
            })
        );
    } else {
        println!(
            "node {}\nmember: {}, replication: {}, used {} of {}\nsuccessors:",
            s.addr,
            s.member,
            s.replication,
            human(s.bytes_used),
            human(s.capacity)
        );
        for m in &s.successors {
            println!("  {}", m.addr);
        }
        println!(
            "placement: host {}, zone {}; the keys it owns are on {} host(s)",
            s.placement.host, s.placement.zone, s.placement.replica_hosts
        );
    }
    if let Some(w) = &s.placement.warning {
        eprintln!("WARNING: {w}");
    }
    Ok(())
}

async fn cmd_sync(
    ctx: &Ctx,
    dir: &Path,
    debounce_ms: u64,
    prune_every: Duration,
    prune_grace: Duration,
    push_only: bool,
) -> Result<()> {
    let known = ctx.known().await?;
    let device = if push_only {
        None
    } else {
        Some(crate::devices::this_device(
            &ctx.dirs.user_data(&ctx.repo.user()),
        )?)
    };
    let source = crate::backup::absolute(dir)?;
    let state_file = watcher::state_path(&ctx.dirs.user_data(&ctx.repo.user()), &source);
    let opts = SyncOptions {
        debounce: Duration::from_millis(debounce_ms),
        retention: config::ClientConfig::load(&ctx.dirs)?.sync_retention(),
        prune: (!prune_every.is_zero()).then(|| watcher::AutoPrune {
            every: prune_every,
            grace: prune_grace,
            marks: ctx.prune_marks_path(),
        }),
        device,
        ..SyncOptions::default()
    };
    let json = ctx.g.json;
    eprintln!(
        "watching {} (Ctrl-C to stop); after each snapshot: {}; {}",
        source.display(),
        match &opts.retention {
            Some(p) => format!("forget {}", p.describe()),
            None => "no retention (every snapshot is kept)".into(),
        },
        match &opts.prune {
            Some(p) => format!(
                "prune every {} (grace {})",
                humantime_short(p.every),
                humantime_short(p.grace)
            ),
            None => "no prune".into(),
        }
    );
    watcher::run(
        &ctx.repo,
        known,
        &source,
        &state_file,
        &opts,
        shutdown_signal(),
        |s| {
            if json {
                println!("{}", serde_json::to_string(s).unwrap_or_default());
            } else {
                println!(
                    "snapshot {}: {} files, {}; uploaded {} chunks ({})",
                    s.snapshot.unwrap_or(0),
                    s.files,
                    human(s.bytes),
                    s.chunks_uploaded,
                    human(s.bytes_uploaded)
                );
            }
        },
    )
    .await
}

async fn cmd_devices(ctx: &Ctx) -> Result<()> {
    let me = crate::devices::this_device(&ctx.dirs.user_data(&ctx.repo.user()))?;
    let mut rows = Vec::new();
    for d in crate::devices::list(&ctx.repo).await? {
        let head = crate::devices::head(&ctx.repo, &d.id).await?;
        rows.push(serde_json::json!({
            "id": hex::encode(d.id),
            "name": d.name,
            "this_device": d.id == me.id,
            "added_ns": d.added_ns,
            "last_sync_ns": head.as_ref().map(|h| h.at_ns),
            "head": head.as_ref().map(|h| h.seq),
        }));
    }
    if ctx.g.json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no devices yet: run `peerstore-client sync <dir>` on each machine");
    }
    for r in &rows {
        let last = r["last_sync_ns"]
            .as_i64()
            .map_or("never synced".to_string(), |ns| {
                format!("last sync {}", format_time(ns))
            });
        println!(
            "{}  {}{}  {last}",
            &r["id"].as_str().unwrap_or_default()[..8],
            r["name"].as_str().unwrap_or_default(),
            if r["this_device"] == true {
                " (this device)"
            } else {
                ""
            },
        );
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_warnings_are_one_line_per_message() {
        let w = |n: &str, m: &str| format!("/ip4/127.0.0.1/tcp/{n}/p2p/X: {m}");
        let all = vec![
            w("1", "all 3 copies on one host (h)"),
            w("2", "all 3 copies on one host (h)"),
            w("3", "span 2 hosts"),
        ];
        assert_eq!(
            placement_summary(&all),
            vec![
                "2 nodes: all 3 copies on one host (h)".to_string(),
                "/ip4/127.0.0.1/tcp/3/p2p/X: span 2 hosts".to_string(),
            ]
        );
        assert!(placement_summary(&[]).is_empty());
    }

    #[test]
    fn time_formatting() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400_000_000_000), "2000-02-29 00:00:00");
        assert_eq!(
            format_time(1_700_000_000_123_000_000),
            "2023-11-14 22:13:20"
        );
        assert_eq!(format_time(-1_000_000_000), "1969-12-31 23:59:59");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(5), "5 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(64 << 20), "64.0 MiB");
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from([
            "peerstore-client",
            "--json",
            "backup",
            "/tmp",
            "--peer",
            "x",
        ])
        .unwrap();
        assert!(c.global.json);
        assert_eq!(c.global.peer.as_deref(), Some("x"));
        assert!(matches!(c.command, Command::Backup { .. }));
        assert!(Cli::try_parse_from(["peerstore-client", "rm"]).is_err());
    }

    #[test]
    fn forget_parses_and_prints() {
        let c = Cli::try_parse_from([
            "peerstore-client",
            "forget",
            "--keep-last",
            "3",
            "--keep-weekly",
            "2",
            "5",
            "ab12",
            "--dry-run",
        ])
        .unwrap();
        let Command::Forget {
            snapshots,
            keep,
            dry_run,
        } = c.command
        else {
            panic!("not forget");
        };
        assert_eq!(snapshots, ["5", "ab12"]);
        assert!(dry_run);
        assert_eq!(
            keep.policy(),
            Policy {
                keep_last: 3,
                keep_weekly: 2,
                ..Policy::default()
            }
        );
        assert_eq!(keep.policy().describe(), "--keep-last 3 --keep-weekly 2");
        assert!(Cli::try_parse_from(["peerstore-client", "forget", "--keep-last", "-1"]).is_err());
        let c = Cli::try_parse_from(["peerstore-client", "forget"]).unwrap();
        assert!(matches!(c.command, Command::Forget { ref snapshots, .. } if snapshots.is_empty()));

        use crate::forget::Reason;
        let l = |number, reasons: Vec<Reason>| ForgetLine {
            number,
            id: "0badc0de".into(),
            time: "2026-01-02 03:04:05".into(),
            source: "/src".into(),
            reasons,
        };
        let mut r = ForgetReport {
            dry_run: false,
            kept: vec![l(7, vec![Reason::Latest, Reason::Last])],
            removed: vec![l(3, vec![Reason::Policy])],
            rewritten: 1,
            root: 9,
            attempts: 1,
        };
        let text = forget_text(&r);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "keep 1 snapshot(s):",
                "    7 0badc0de 2026-01-02 03:04:05  /src  (latest, last)",
                "remove 1 snapshot(s):",
                "    3 0badc0de 2026-01-02 03:04:05  /src  (no rule keeps it)",
                "forgot 1 snapshot(s): rewrote 1 kept snapshot object(s), root 9; the data stays on the nodes until a prune removes it",
            ]
        );
        r.dry_run = true;
        assert!(forget_text(&r).contains("would remove 1 snapshot(s):"));
        assert!(forget_text(&r).ends_with("dry run: would forget 1 snapshot(s); nothing changed"));
        r.removed.clear();
        assert!(forget_text(&r).ends_with("nothing to forget"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["kept"][0]["reasons"],
            serde_json::json!(["latest", "last"])
        );
    }

    fn scrub_of(args: &[&str]) -> std::result::Result<(ScrubMode, ScrubSchedule), String> {
        let mut v = vec!["peerstore-client", "scrub"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v)
            .map_err(|e| e.kind().to_string())?
            .command
        {
            Command::Scrub(a) => a.request().map_err(|e| e.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn admin_commands_parse() {
        let once = scrub_of(&["--window", "0"]).unwrap();
        assert_eq!(once, (ScrubMode::Window { blocks: 0 }, ScrubSchedule::Once));
        let daemon = scrub_of(&["--pointers", "2", "--interval", "30"]).unwrap();
        assert_eq!(
            daemon,
            (
                ScrubMode::Pointers { threshold: 2 },
                ScrubSchedule::Every(Duration::from_secs(30))
            )
        );
        assert_eq!(scrub_of(&["--stop"]).unwrap().1, ScrubSchedule::Stop);
        assert_eq!(
            scrub_of(&["--window", "5", "--stop"]).unwrap().1,
            ScrubSchedule::Stop
        );
        // A mode is required, only one, and --interval 0 or with --stop is refused.
        assert!(scrub_of(&[]).is_err());
        assert!(scrub_of(&["--interval", "5"]).is_err());
        assert!(scrub_of(&["--window", "1", "--pointers", "1"]).is_err());
        assert!(scrub_of(&["--window", "1", "--interval", "0"]).is_err());
        assert!(scrub_of(&["--window", "1", "--interval", "3", "--stop"]).is_err());
        let c = Cli::try_parse_from(["peerstore-client", "repair", "ab", "cd"]).unwrap();
        assert!(matches!(c.command, Command::Repair { ref blocks } if blocks.len() == 2));
        let c = Cli::try_parse_from(["peerstore-client", "audit", "--fix"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Audit {
                fix: true,
                page: crate::admin::AUDIT_PAGE
            }
        ));
        assert!(Cli::try_parse_from(["peerstore-client", "audit", "--page", "0"]).is_err());
    }
}
