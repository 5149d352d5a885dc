//! `servercore`: the engine's command-line tools.
//!
//! `echo` and `hello` are the classic course's echo server and dummy client;
//! `server` is the sample game server, `client` its dummy clients, `demo`
//! runs both in one process for a newcomer's first run, and `bench` compares
//! the engine with a plain tokio baseline.

mod admin;
mod bench;
mod cli;
mod client;
mod config;
mod demo;
mod echo;
mod hello;
mod limits;
mod ready;
mod server;
mod shutdown;
mod token;
mod transport;

use shutdown::Install as _;

fn main() -> std::process::ExitCode {
    let cli = config::parse();
    init_logging(
        cli.log.as_deref(),
        cli.log_format,
        default_filter(&cli.command),
    );
    // The CLI owns the process's signals. A bench-server child takes the
    // terminal's Ctrl-C like its parent but stops when the parent closes
    // its stdin, so the measurement running then can finish.
    shutdown::StopSignal::install();
    limits::raised();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Servers log their start, refusals and stop by default; the other
/// commands only warnings (their report is the output).
fn default_filter(command: &cli::Command) -> &'static str {
    match command {
        cli::Command::Echo(_) | cli::Command::Server(_) => "info",
        _ => "warn",
    }
}

/// `--log` (or `SERVERCORE_LOG`, which clap reads into it) picks what is
/// logged, `--log-format` how: text lines or one JSON object a line.
fn init_logging(filter: Option<&str>, format: cli::LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::new(filter.unwrap_or(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        cli::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        cli::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
