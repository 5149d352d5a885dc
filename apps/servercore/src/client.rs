//! `servercore client`: the dummy game clients' command: its flags, the run,
//! the table and the JSON.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use servercore_load::client::{
    human_duration, parse_duration, run_load_until, LoadConfig, Scenario,
};

use crate::cli::EngineArgs;
use crate::shutdown::{Install as _, StopSignal};

/// `servercore client` options.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The game server's address, or several nodes of one cluster, comma
    /// separated (A,B,C): the sessions are spread over them and the report
    /// splits local from cross-node deliveries.
    #[arg(
        long,
        default_value = "127.0.0.1:7777",
        value_delimiter = ',',
        value_name = "ADDR,..."
    )]
    pub addr: Vec<SocketAddr>,

    /// How many sessions to connect.
    #[arg(long, default_value_t = 500)]
    pub sessions: usize,

    /// Connect over WebSocket to this URL instead of --addr:
    /// ws://HOST:PORT/PATH, or wss://... (TLS; see --tls-ca).
    #[arg(long, value_name = "URL", value_parser = crate::transport::parse_ws_url)]
    pub ws: Option<crate::transport::WsUrl>,

    /// Connect over QUIC to the UDP address HOST:PORT instead of --addr
    /// (TLS 1.3: needs --tls-ca or --tls-insecure); moves go both ways as
    /// datagrams, and the move scenario counts what came by datagram and
    /// by stream.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "ws")]
    pub quic: Option<String>,

    #[command(flatten)]
    pub tls: crate::transport::TlsClientArgs,

    /// What the sessions do in game: chat, or move (random-walk the world,
    /// tracking the neighbours the server spawns).
    #[arg(long, value_enum, default_value_t = Scenario::Chat)]
    pub scenario: Scenario,

    /// C_CHAT messages per second per session (0: no chat; default 1 for
    /// the chat scenario, 0 for move).
    #[arg(long)]
    pub rate: Option<f64>,

    /// C_MOVE messages per second per session (move scenario).
    #[arg(long, default_value_t = 10.0)]
    pub move_rate: f64,

    /// Walking speed in world units per second (move scenario; keep it
    /// below the server's --max-speed).
    #[arg(long, default_value_t = 150.0)]
    pub speed: f64,

    /// Side of the square map the sessions walk in (the server's
    /// --world-size).
    #[arg(long, default_value_t = 2000.0)]
    pub world_size: f64,

    /// How long the sessions chat once all are in game: 30s, 2m, 500ms, ...
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Also write the report as JSON to FILE (`-`: standard output, with
    /// the table on standard error).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Bytes of chat text per message.
    #[arg(long, default_value_t = 32)]
    pub message_bytes: usize,

    /// Local source addresses to spread the connections over, comma
    /// separated (default: 127.0.0.1, 127.0.0.2, ... when a loopback target
    /// needs more ports than one address has, else the system's choice).
    #[arg(long, value_delimiter = ',', value_name = "IP,...")]
    pub source_addrs: Option<Vec<IpAddr>>,

    /// Time allowed for each connect.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Longest wait for all sessions to be in game before the chat starts.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub setup_timeout: Duration,

    /// After the run's window and drain, keep the sessions in game, idle,
    /// this long before stopping them (the world can be looked at with
    /// everyone standing still).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub hold: Duration,

    /// Account names: this prefix and the session number.
    #[arg(long, default_value = "dummy")]
    pub account_prefix: String,

    /// No live progress display (it is also hidden when stderr is not a
    /// terminal).
    #[arg(long)]
    pub no_progress: bool,

    #[command(flatten)]
    pub engine: EngineArgs,
}

impl ClientArgs {
    /// The run these options describe (reads the TLS files).
    pub fn to_config(&self) -> anyhow::Result<LoadConfig> {
        if let Some(target) = &self.quic {
            let (addr, quic) = self.tls.quic_config(target)?;
            let mut config = LoadConfig::new(addr);
            config.quic = Some(quic);
            return Ok(self.fill(config));
        }
        let addr = self.ws.as_ref().map_or(self.addr[0], |url| url.addr);
        let mut config = LoadConfig::new(addr);
        config.transport = self.tls.client_transport(addr, self.ws.as_ref())?;
        if self.ws.is_none() {
            config.more_addrs = self.addr[1..].to_vec();
        }
        Ok(self.fill(config))
    }

    /// The options every transport shares.
    fn fill(&self, mut config: LoadConfig) -> LoadConfig {
        config.sessions = self.sessions;
        config.scenario = self.scenario;
        config.rate = self.rate.unwrap_or(match self.scenario {
            Scenario::Chat => 1.0,
            Scenario::Move => 0.0,
        });
        config.move_rate = self.move_rate;
        config.speed = self.speed;
        config.world_size = self.world_size;
        config.duration = self.duration;
        config.message_bytes = self.message_bytes;
        config.backend = self.engine.backend;
        config.workers = self.engine.workers;
        config.source_addrs = self.source_addrs.clone();
        config.connect_timeout = self.connect_timeout;
        config.setup_timeout = self.setup_timeout;
        config.hold = self.hold;
        config.account_prefix = self.account_prefix.clone();
        config
    }
}

/// Runs the dummy clients, prints the table (and, on standard error, what
/// the errors mean and what to do), writes the JSON if asked. Fails, after
/// reporting, when no session could connect or most sessions failed.
pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    let stop = StopSignal::install();
    let config = args.to_config()?;
    let moving = match config.move_period() {
        Some(_) => format!(", {} moves/s at {} units/s", config.move_rate, config.speed),
        None => String::new(),
    };
    eprintln!(
        "client: {} sessions -> {} ({}), {} msg/s each{moving} for {}; Ctrl-C stops early",
        config.sessions,
        config
            .addrs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        if config.quic.is_some() {
            "quic"
        } else {
            config.transport.name()
        },
        config.rate,
        human_duration(config.duration)
    );
    let report = run_load_until(config, !args.no_progress, &stop)?;
    let json_to_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    if json_to_stdout {
        eprintln!("{}", report.table());
    } else {
        println!("{}", report.table());
    }
    for line in report.advice() {
        eprintln!("{line}");
    }
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    verdict(&report, stop.is_set())
}

/// The command's verdict on a finished run: an error when no session could
/// connect or when most of them failed (a stop by signal is neither).
pub fn verdict(report: &servercore_load::client::LoadReport, stopped: bool) -> anyhow::Result<()> {
    let s = &report.sessions;
    if stopped {
        return Ok(());
    }
    anyhow::ensure!(
        s.requested == 0 || s.connected > 0,
        "no session could connect to {}",
        report.addr
    );
    anyhow::ensure!(
        !report.mostly_failed(),
        "{} of {} sessions failed (their errors are in the report above)",
        s.failed,
        s.requested
    );
    Ok(())
}
