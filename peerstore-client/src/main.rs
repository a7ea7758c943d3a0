//! `peerstore-client`: see `peerstore-client --help` and docs/CLIENT.md.
//!
//! Exit status: 0 on success, otherwise the code of the error's kind
//! ([`peerstore_client::error::ErrorKind`], the table "Exit codes" in docs/CLIENT.md). With
//! `--json`, a failure also prints `{"error", "code", "kind"}` as the last line of stdout; the
//! one-line `error: ...` message goes to stderr either way.

use clap::Parser;
use peerstore_client::error::ErrorKind;

fn main() {
    let cli = match peerstore_client::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(&e),
    };
    let json = cli.global.json;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: warnings also end up in logs and test output.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => fail(
            json,
            ErrorKind::Failed,
            &format!("cannot start the async runtime: {e}"),
        ),
    };
    if let Err(e) = rt.block_on(peerstore_client::cli::run(cli)) {
        fail(json, e.kind(), &e.to_string());
    }
}

/// Prints the error (and with `--json` its JSON object on stdout) and exits with its code.
fn fail(json: bool, kind: ErrorKind, message: &str) -> ! {
    if json {
        println!("{}", kind.json(message));
    }
    eprintln!("error: {message}");
    std::process::exit(kind.code());
}

/// A command line clap refuses: clap's message and status (2); `--help` and `--version` print
/// and exit 0 as usual. With `--json` anywhere on the line, also the JSON error object.
fn usage_error(e: &clap::Error) -> ! {
    if e.use_stderr() && std::env::args_os().any(|a| a == "--json") {
        let text = e.to_string();
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("usage error");
        let message = first.strip_prefix("error: ").unwrap_or(first);
        println!("{}", ErrorKind::Usage.json(message));
    }
    e.exit()
}
