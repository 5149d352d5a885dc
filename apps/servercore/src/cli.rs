//! Command-line arguments and dispatch to the subcommands.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use servercore::Backend;

/// servercore: a TCP game-server engine on io_uring, with its sample apps.
#[derive(Debug, Parser)]
#[command(name = "servercore", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing syntax, e.g. `info` or `servercore=debug`);
    /// defaults to $SERVERCORE_LOG or `warn`.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,

    /// Log line format: text (for people) or json (one object a line, for
    /// log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Read the command's options from a TOML file (keys: the long flag
    /// names); flags and SERVERCORE_* environment variables override it.
    #[arg(long, global = true, value_name = "FILE", env = "SERVERCORE_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Print the effective configuration (defaults, file, environment and
    /// flags combined) as TOML and exit.
    #[arg(long, global = true)]
    pub print_config: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The admin HTTP listener's flags, on every server command.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Serve /metrics (Prometheus), /healthz, /status (JSON) and a live
    /// status page on this address (off by default; a loopback address,
    /// e.g. 127.0.0.1:9100, unless --admin-public).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// Allow --admin on an address other machines can reach (0.0.0.0, a
    /// public interface). Its pages are unauthenticated: put a firewall or
    /// an authenticating proxy in front.
    #[arg(long, requires = "admin")]
    pub admin_public: bool,
}

/// The subcommands.
// Parsed once at start and matched once: the size of the largest variant
// (the game server's many flags) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Echo server: sends every received byte back.
    Echo(EchoArgs),
    /// The classic dummy client: sends "Hello World" and again a second
    /// after each reply.
    Hello(HelloArgs),
    /// The sample game server: login, enter game, chat rooms, embedded database.
    Server(crate::server::ServerArgs),
    /// Dummy game clients: log in, enter, chat at a rate; prints throughput
    /// and latency percentiles.
    Client(crate::client::ClientArgs),
    /// Server and clients in one process: a newcomer's first run.
    Demo(DemoArgs),
    /// Scripted benchmarks against the engine and a plain tokio baseline.
    Bench(crate::bench::BenchArgs),
    /// Mints a signed login token for `server --auth-secret` (what a
    /// separate login service would do).
    Token(crate::token::TokenArgs),
    /// Writes a self-signed certificate and key (PEM) for development TLS.
    Cert(crate::transport::CertArgs),
    /// A benchmark server process (started by `bench`).
    #[command(hide = true)]
    BenchServer(crate::bench::BenchServerArgs),
}

/// Options every command that runs sessions shares.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// I/O backend: auto (io_uring if the kernel allows, else poll), uring, poll.
    #[arg(long, env = "SERVERCORE_BACKEND", default_value = "auto", value_parser = parse_backend)]
    pub backend: Backend,

    /// Worker threads (default: available cores).
    #[arg(long)]
    pub workers: Option<usize>,
}

fn parse_backend(value: &str) -> Result<Backend, String> {
    value
        .parse()
        .map_err(|error: servercore::BackendError| error.to_string())
}

/// `servercore echo`.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on (IPv4 or IPv6, e.g. [::1]:7777).
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub addr: SocketAddr,

    /// Print `OnRecv Len = N` and `OnSend Len = N` for every event.
    #[arg(long, short)]
    pub verbose: bool,

    /// Most sessions at once; connections past it are refused.
    #[arg(long, default_value_t = 10_000)]
    pub max_sessions: usize,

    /// Send coalescing: hold a session's replies up to N ms after its last
    /// write, for fewer, fuller writes (0: off).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub coalesce_ms: u64,

    /// Also serve WebSocket clients on ADDR (binary messages; WSS with
    /// --tls-cert/--tls-key).
    #[arg(long, value_name = "ADDR")]
    pub ws_addr: Option<SocketAddr>,

    /// Also serve QUIC clients on the UDP address ADDR (ALPN servercore/1;
    /// needs --tls-cert/--tls-key).
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    pub quic_addr: Option<SocketAddr>,

    /// Once every listener is bound, write FILE: one JSON object with the
    /// process id, the backend and every listening address (for
    /// supervisors and tests; removed again on stop).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub tls: crate::transport::TlsServerArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `servercore hello`.
#[derive(Debug, Args)]
pub struct HelloArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub addr: SocketAddr,

    /// How many client sessions to connect.
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,

    #[command(flatten)]
    pub tls: crate::transport::TlsClientArgs,

    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `servercore demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long the clients chat, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,

    /// How many dummy clients.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,

    /// Chat messages per second per client.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,

    /// Moves per second per client (0: the clients only chat).
    #[arg(long, default_value_t = 10.0)]
    pub move_rate: f64,

    /// Walking speed of the clients, world units per second.
    #[arg(long, default_value_t = 150.0)]
    pub speed: f64,

    /// Also write the clients' report as JSON to FILE (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,

    /// No live progress display.
    #[arg(long)]
    pub no_progress: bool,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Echo(args) => crate::echo::run(args),
        Command::Hello(args) => crate::hello::run(args),
        Command::Server(args) => crate::server::run(args, cli.log_format),
        Command::Client(args) => crate::client::run(args),
        Command::Demo(args) => crate::demo::run(args),
        Command::Bench(args) => crate::bench::run(args),
        Command::Cert(args) => crate::transport::run_cert(args),
        Command::BenchServer(args) => crate::bench::run_server(args),
        Command::Token(args) => crate::token::run(args),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{command, parse_from, Parsed};

    /// Every command's long help, its subcommands' too.
    fn all_help(cmd: &mut clap::Command, out: &mut Vec<(String, String)>) {
        out.push((
            cmd.get_name().to_owned(),
            cmd.render_long_help().to_string(),
        ));
        for sub in cmd.get_subcommands_mut() {
            all_help(sub, out);
        }
    }

    #[test]
    fn help_text_is_plain_words() {
        let mut helps = Vec::new();
        all_help(&mut command(), &mut helps);
        assert!(helps.len() > 8, "every command's help was rendered");
        for (name, help) in helps {
            for link in ["[`", "`]", "](", "[Self::", "[crate::"] {
                assert!(
                    !help.contains(link),
                    "`servercore {name} --help` shows rustdoc link syntax {link:?}:\n{help}"
                );
            }
        }
    }

    fn parsed(args: &[&str]) -> Command {
        let argv = std::iter::once("servercore")
            .chain(args.iter().copied())
            .map(Into::into)
            .collect();
        match parse_from(argv) {
            Ok(Parsed::Run(cli)) => cli.command,
            Ok(Parsed::Print(_)) => panic!("{args:?}: printed the configuration"),
            Err(crate::config::Failure::Clap(error)) => panic!("{args:?}: {error}"),
            Err(crate::config::Failure::Config(error)) => panic!("{args:?}: {error}"),
        }
    }

    #[test]
    fn one_duration_syntax_for_every_command() {
        let Command::Bench(bench) = parsed(&["bench", "--duration", "2s", "--warmup", "500ms"])
        else {
            panic!("not bench");
        };
        assert_eq!(bench.duration, Some(Duration::from_secs(2)));
        assert_eq!(bench.warmup, Some(Duration::from_millis(500)));
        let Command::Bench(bench) = parsed(&["bench", "--duration", "1.5"]) else {
            panic!("not bench");
        };
        assert_eq!(bench.duration, Some(Duration::from_millis(1500)));
        let Command::Client(client) = parsed(&["client", "--duration", "10s"]) else {
            panic!("not client");
        };
        assert_eq!(client.duration, Duration::from_secs(10));
        let Command::Server(server) = parsed(&[
            "server",
            "--idle-timeout",
            "2m",
            "--login-timeout",
            "1500ms",
            "--packet-timeout",
            "3",
        ]) else {
            panic!("not server");
        };
        assert_eq!(server.idle_timeout, Duration::from_secs(120));
        assert_eq!(server.login_timeout, Duration::from_millis(1500));
        assert_eq!(server.packet_timeout, Duration::from_secs(3));
        let Command::Token(token) = parsed(&[
            "token",
            "--secret-file",
            "f",
            "--account",
            "a",
            "--ttl",
            "90m",
        ]) else {
            panic!("not token");
        };
        assert_eq!(token.ttl, Duration::from_secs(5400));
    }
}
