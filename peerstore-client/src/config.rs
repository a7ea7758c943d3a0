//! Where the client keeps its things, how it gets the passphrase, and how it finds its node.

use std::fs::{self, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use crypto::{Identity, KdfParams, KeyError};
use peerstore_proto::{parse_node_addr, NodeAddr};
use rand::rngs::OsRng;

use crate::error::{ClientError, Result};

/// Environment variable holding the passphrase (for scripts and tests).
pub const PASSPHRASE_ENV: &str = "PEERSTORE_PASSPHRASE";
/// File name of the sealed identity in the config directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// The directories a command uses.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub config: PathBuf,
    pub data: PathBuf,
}

impl Dirs {
    /// The platform's directories for the client unless overridden.
    pub fn resolve(config: Option<PathBuf>, data: Option<PathBuf>) -> Result<Dirs> {
        let pd = directories::ProjectDirs::from("org", "peerstore", "peerstore-client");
        let config = match (config, &pd) {
            (Some(c), _) => c,
            (None, Some(pd)) => pd.config_dir().to_path_buf(),
            (None, None) => {
                return Err(ClientError::Config(
                    "no home directory; pass --config-dir".into(),
                ))
            }
        };
        let data = match (data, &pd) {
            (Some(d), _) => d,
            (None, Some(pd)) => pd.data_dir().to_path_buf(),
            (None, None) => {
                return Err(ClientError::Config(
                    "no home directory; pass --data-dir".into(),
                ))
            }
        };
        Ok(Dirs { config, data })
    }

    #[must_use]
    pub fn identity_path(&self) -> PathBuf {
        self.config.join(IDENTITY_FILE)
    }

    /// The per-user part of the data directory.
    #[must_use]
    pub fn user_data(&self, user: &crypto::UserId) -> PathBuf {
        self.data.join("users").join(&user.to_hex()[..16])
    }
}

/// The passphrase: `$PEERSTORE_PASSPHRASE`, else a prompt when stdin is a terminal.
pub fn passphrase(prompt: &str, confirm: bool) -> Result<Vec<u8>> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(p.into_bytes());
    }
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::Config(format!(
            "no passphrase: set {PASSPHRASE_ENV} or run in a terminal"
        )));
    }
    let p = rpassword::prompt_password(prompt)
        .map_err(|e| ClientError::Config(format!("cannot read the passphrase: {e}")))?;
    if confirm {
        let again = rpassword::prompt_password("Repeat passphrase: ")
            .map_err(|e| ClientError::Config(format!("cannot read the passphrase: {e}")))?;
        if again != p {
            return Err(ClientError::Config("passphrases differ".into()));
        }
    }
    if p.is_empty() {
        return Err(ClientError::Config("empty passphrase".into()));
    }
    Ok(p.into_bytes())
}

fn key_error(path: &Path, e: KeyError) -> ClientError {
    match e {
        KeyError::WrongPassphrase => ClientError::WrongPassphrase(path.to_path_buf()),
        other => ClientError::KeyFile {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// Opens a key file with a passphrase.
pub fn open_key_file(path: &Path, passphrase: &[u8]) -> Result<Identity> {
    let bytes = fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ClientError::Config(format!(
                "no key at {}: run `peerstore-client init` (or `key import <file>`) first",
                path.display()
            ))
        } else {
            ClientError::io(path, e)
        }
    })?;
    Identity::open(&bytes, passphrase).map_err(|e| key_error(path, e))
}

/// Writes `bytes` to a new file (mode 0600), refusing to replace an existing one unless
/// `overwrite`; temp file, fsync, rename.
pub fn write_private(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    if !overwrite && fs::symlink_metadata(path).is_ok() {
        return Err(ClientError::Refused(format!(
            "{} already exists; refusing to overwrite it",
            path.display()
        )));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| ClientError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key")
    ));
    let _ = fs::remove_file(&tmp);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ClientError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| ClientError::io(&tmp, e))?;
        f.sync_all().map_err(|e| ClientError::io(&tmp, e))?;
    }
    if !overwrite && fs::symlink_metadata(path).is_ok() {
        let _ = fs::remove_file(&tmp);
        return Err(ClientError::Refused(format!(
            "{} already exists; refusing to overwrite it",
            path.display()
        )));
    }
    fs::rename(&tmp, path).map_err(|e| ClientError::io(path, e))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates a new identity sealed under `passphrase` at the config directory's key path.
pub fn init_identity(dirs: &Dirs, passphrase: &[u8], kdf: &KdfParams) -> Result<Identity> {
    let path = dirs.identity_path();
    if fs::symlink_metadata(&path).is_ok() {
        return Err(ClientError::Refused(format!(
            "{} already exists; refusing to overwrite it (use another --config-dir)",
            path.display()
        )));
    }
    let id = Identity::generate(&mut OsRng);
    let bytes = id
        .seal(passphrase, kdf, &mut OsRng)
        .map_err(|e| key_error(&path, e))?;
    write_private(&path, &bytes, false)?;
    Ok(id)
}

/// File name of the client's settings in the config directory (optional).
pub const CONFIG_FILE: &str = "config.toml";

/// The client's settings, from `<config-dir>/config.toml`. The file and every part of it are
/// optional:
///
/// ```toml
/// [sync.retention]      # after every snapshot `sync` publishes; absent: Policy::sync_default
/// enabled = true        # false: keep every snapshot
/// keep_last = 10        # the rules given here replace the defaults; a rule not given is off
/// keep_daily = 7
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    pub sync: SyncConfig,
}

/// The `[sync]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// `[sync.retention]`; `None`: the default retention.
    pub retention: Option<RetentionConfig>,
}

/// The `[sync.retention]` table: the rules of `forget --keep-*` (a rule not given is off).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    pub enabled: bool,
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            enabled: true,
            keep_last: 0,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_yearly: 0,
        }
    }
}

impl ClientConfig {
    /// Reads `<config-dir>/config.toml`; the defaults if there is none.
    pub fn load(dirs: &Dirs) -> Result<ClientConfig> {
        let path = dirs.config.join(CONFIG_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ClientConfig::default())
            }
            Err(e) => return Err(ClientError::io(&path, e)),
        };
        ClientConfig::parse(&text)
            .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))
    }

    /// Parses the text of a config file.
    pub fn parse(text: &str) -> std::result::Result<ClientConfig, String> {
        let c: ClientConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if let Some(r) = &c.sync.retention {
            if r.enabled && c.sync_retention().is_none() {
                return Err(
                    "[sync.retention] turns on no keep_* rule; give one, or set \
                            enabled = false to keep every snapshot"
                        .into(),
                );
            }
        }
        Ok(c)
    }

    /// The retention the sync watcher applies after each snapshot it publishes (`None`: keep
    /// every snapshot).
    #[must_use]
    pub fn sync_retention(&self) -> Option<crate::forget::Policy> {
        match &self.sync.retention {
            None => Some(crate::forget::Policy::sync_default()),
            Some(r) if !r.enabled => None,
            Some(r) => Some(crate::forget::Policy {
                keep_last: r.keep_last,
                keep_hourly: r.keep_hourly,
                keep_daily: r.keep_daily,
                keep_weekly: r.keep_weekly,
                keep_monthly: r.keep_monthly,
                keep_yearly: r.keep_yearly,
            })
            .filter(|p| !p.is_empty()),
        }
    }
}

/// File name of the ring credential (an invite line) in the config directory.
pub const CREDENTIAL_FILE: &str = "credential";

/// The credential the client shows the ring: `explicit` (a file holding an invite line), else
/// `<config>/credential` if `peerstore-client join` stored one, else none (a ring then refuses
/// the client with a message that says how to get one).
pub fn credential(
    explicit: Option<&Path>,
    dirs: &Dirs,
) -> Result<Option<peerstore_proto::Identity>> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let p = dirs.config.join(CREDENTIAL_FILE);
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    let line = fs::read_to_string(&path).map_err(|e| {
        ClientError::Config(format!(
            "cannot read the credential {}: {e}",
            path.display()
        ))
    })?;
    let invite = peerstore_proto::Invite::from_line(&line)
        .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
    peerstore_proto::Identity::from_invite(&invite)
        .map(Some)
        .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))
}

/// Stores an invite as this client's credential (mode 0600); returns its role and ring.
pub fn save_credential(
    dirs: &Dirs,
    line: &str,
    force: bool,
) -> Result<(peerstore_proto::Role, String)> {
    let invite =
        peerstore_proto::Invite::from_line(line).map_err(|e| ClientError::Config(e.to_string()))?;
    let path = dirs.config.join(CREDENTIAL_FILE);
    if path.exists() && !force {
        return Err(ClientError::Config(format!(
            "{} already holds a credential; pass --force to replace it",
            path.display()
        )));
    }
    fs::create_dir_all(&dirs.config).map_err(|e| {
        ClientError::Config(format!("cannot create {}: {e}", dirs.config.display()))
    })?;
    let tmp = path.with_extension("tmp");
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .map_err(|e| ClientError::Config(format!("cannot write {}: {e}", tmp.display())))?;
    f.write_all(format!("{}\n", invite.to_line()).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| ClientError::Config(format!("cannot write {}: {e}", tmp.display())))?;
    fs::rename(&tmp, &path)
        .map_err(|e| ClientError::Config(format!("cannot write {}: {e}", path.display())))?;
    Ok((invite.certificate.role, invite.ring.fingerprint()))
}

/// Where the node is: `--peer`, else the address file in `--node-data-dir` (or the default
/// node data directory).
pub fn node_address(peer: Option<&str>, node_data_dir: Option<&Path>) -> Result<NodeAddr> {
    if let Some(p) = peer {
        return parse_node_addr(p).map_err(|e| ClientError::Config(format!("--peer: {e}")));
    }
    let dir = node_data_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(peerstore_proto::local::default_node_data_dir);
    peerstore_proto::local::read_address_file(&dir).map_err(|_| {
        ClientError::Config(format!(
            "no node reachable: no address file in {}; start one with peerstore-node or pass --peer",
            dir.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            config: dir.path().join("cfg"),
            data: dir.path().join("data"),
        };
        let kdf = KdfParams::insecure_for_tests();
        let id = init_identity(&dirs, b"pw", &kdf).unwrap();
        assert!(init_identity(&dirs, b"pw", &kdf).is_err(), "overwrote");
        let back = open_key_file(&dirs.identity_path(), b"pw").unwrap();
        assert_eq!(back.user_id(), id.user_id());
        let err = open_key_file(&dirs.identity_path(), b"nope").unwrap_err();
        assert!(matches!(err, ClientError::WrongPassphrase(_)), "{err}");
        assert!(err.to_string().contains("wrong passphrase"));
        let mode = fs::metadata(dirs.identity_path()).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn config_file_retention() {
        use crate::forget::Policy;
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            config: dir.path().join("cfg"),
            data: dir.path().join("data"),
        };
        // No file: the default retention.
        let c = ClientConfig::load(&dirs).unwrap();
        assert_eq!(c.sync_retention(), Some(Policy::sync_default()));
        assert_eq!(
            ClientConfig::parse("").unwrap().sync_retention(),
            Some(Policy::sync_default())
        );
        // The rules given replace the defaults.
        let c = ClientConfig::parse("[sync.retention]\nkeep_last = 3\nkeep_daily = 2\n").unwrap();
        assert_eq!(
            c.sync_retention(),
            Some(Policy {
                keep_last: 3,
                keep_daily: 2,
                ..Policy::default()
            })
        );
        // Off.
        let c = ClientConfig::parse("[sync.retention]\nenabled = false\n").unwrap();
        assert_eq!(c.sync_retention(), None);
        // Clear errors: no rule, an unknown key, a negative count.
        for (bad, says) in [
            ("[sync.retention]\n", "no keep_* rule"),
            ("[sync.retention]\nkeep_lats = 3\n", "keep_lats"),
            ("[sync.retention]\nkeep_last = -1\n", "keep_last"),
            ("[sync]\nretention = 5\n", "retention"),
        ] {
            let e = ClientConfig::parse(bad).unwrap_err();
            assert!(e.contains(says) || e.contains("invalid"), "{bad:?}: {e}");
        }
        fs::create_dir_all(&dirs.config).unwrap();
        fs::write(
            dirs.config.join(CONFIG_FILE),
            "[sync.retention]\nbogus = 1\n",
        )
        .unwrap();
        let e = ClientConfig::load(&dirs).unwrap_err().to_string();
        assert!(e.contains("config.toml") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn node_address_sources() {
        let dir = tempfile::tempdir().unwrap();
        let err = node_address(None, Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no node reachable"), "{err}");
        assert!(node_address(Some("/ip4/127.0.0.1/tcp/1"), None).is_err());
    }
}
