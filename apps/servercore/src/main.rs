//! `servercore`: the engine's command-line tools.
//!
//! `echo` and `hello` are the classic course's echo server and dummy client;
//! `server` is the sample game server, `client` its dummy clients, `demo`
//! runs both in one process for a newcomer's first run, and `bench` compares
//! the engine with a plain tokio baseline.

mod bench;
mod cli;
mod client;
mod demo;
mod echo;
mod hello;
mod server;
mod shutdown;
mod transport;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.log.as_deref());
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(filter) => EnvFilter::new(filter),
        None => {
            EnvFilter::try_from_env("SERVERCORE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"))
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
