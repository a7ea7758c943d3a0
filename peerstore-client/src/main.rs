//! `peerstore-client`: see `peerstore-client --help` and docs/CLIENT.md.

use clap::Parser;

fn main() {
    let cli = peerstore_client::cli::Cli::parse();
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
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(peerstore_client::cli::run(cli)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
