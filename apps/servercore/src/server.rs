//! `servercore server`: the sample game server's command: its flags, and a
//! run until a stop signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use servercore_game::auth::TokenKey;
use servercore_game::cluster::ClusterConfig;
use servercore_game::redact::SecretUrl;
use servercore_game::storage::DbTarget;
use servercore_game::{GameConfig, GameStats, WorldConfig, DEFAULT_DB_PATH};
use servercore_load::client::{count, parse_duration, summary_table};

use crate::cli::{AdminArgs, EngineArgs, LogFormat};
use crate::shutdown::{Install as _, StopSignal};

/// `servercore server` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on (IPv4 or IPv6; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub addr: SocketAddr,

    /// The database, created and migrated on start: an SQLite file
    /// (`:memory:` keeps nothing), or a PostgreSQL URL
    /// (`postgres://user[:password]@host[:port]/db`).
    #[arg(long, value_name = "PATH|URL", default_value = DEFAULT_DB_PATH)]
    pub db: DbTarget,

    /// Database threads, each with its own connection.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub db_pool: usize,

    /// Join a cluster through this NATS server (e.g. nats://127.0.0.1:4222,
    /// or nats://user:password@host:4222; a comma-separated list for
    /// several): world chat, presence and one session per account across
    /// nodes. Logs and --print-config show it without credentials.
    #[arg(long, value_name = "URL", requires = "node")]
    pub nats: Option<SecretUrl>,

    /// This node's name in the cluster (letters, digits, '-', '_'; unique).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,

    /// Share one world with these nodes (in map order, this node among
    /// them): the map's columns are split into vertical strips, one per
    /// live node; players near a border see each other across it. Needs
    /// --nats, --node and --cluster-secret.
    #[arg(long, value_name = "NODES", value_delimiter = ',', requires_all = ["nats", "cluster_secret"])]
    pub world_nodes: Vec<String>,

    /// The cluster's shared secret (a file of at least 32 bytes): signs the
    /// tokens of players handed from one node's zone to another.
    #[arg(long, value_name = "FILE")]
    pub cluster_secret: Option<PathBuf>,

    /// The TCP address players handed to this node are told to connect to
    /// (default: --addr).
    #[arg(long, value_name = "HOST:PORT")]
    pub public_addr: Option<String>,

    /// The WebSocket URL players handed to this node are told to connect to
    /// (default: from --ws-addr).
    #[arg(long, value_name = "URL")]
    pub public_ws_url: Option<String>,

    /// Milliseconds between this node's heartbeats to the cluster.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,

    /// A node silent for this many milliseconds is taken for dead and its
    /// accounts for offline.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub node_timeout_ms: u64,

    /// How long a node holds an account's lease (in the database) without
    /// renewing it, in milliseconds; it renews every third of it. A login
    /// on another node of an account whose node died or was cut off waits
    /// up to this long; a node paused or cut off past it closes the
    /// sessions whose accounts were taken meanwhile.
    #[arg(long, value_name = "MS", default_value_t = 6000)]
    pub lease_ms: u64,

    /// Most sessions at once; connections past it are refused.
    #[arg(long, default_value_t = 10_000)]
    pub max_sessions: usize,

    /// Disconnect a session that sends nothing for this long: 60s, 2m,
    /// 500ms, ... (a bare number is seconds; 0: never).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Longest chat message relayed, in bytes; longer ones are dropped.
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    pub max_chat_len: usize,

    /// Send coalescing: hold a session's packets up to N ms after its last
    /// write (default 0: off; moves and chat already go out with the world's
    /// tick, one write per player per tick).
    #[arg(long, value_name = "N")]
    pub coalesce_ms: Option<u64>,

    /// Wake batching, in microseconds (io_uring on Linux 6.12+): an I/O
    /// worker sleeps up to this much longer once its first completion is
    /// there, so moves wake it once per batch instead of once per packet
    /// (default 1000; 0: off). Any packet may wait this much more; the
    /// world applies moves at its tick anyway.
    #[arg(long, value_name = "US")]
    pub wake_batch_us: Option<u64>,

    /// Once every listener is bound, write FILE: one JSON object with the
    /// process id, the backend and every listening address (for
    /// supervisors and tests; removed again on stop).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<std::path::PathBuf>,

    /// Disconnect a connection that sends no C_LOGIN within this long
    /// (a duration like --idle-timeout; 0: never).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub login_timeout: Duration,

    /// Disconnect a connection whose started packet is not complete within
    /// this long, however slowly it keeps sending (a duration like
    /// --idle-timeout; 0: never).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub packet_timeout: Duration,

    /// Most accounts one IP address (an IPv6 /64 counts as one) may create
    /// per minute; past it a login of a new account is refused (0:
    /// unlimited).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_new_accounts_per_min: u32,

    /// Most connections at once from one IP address (an IPv6 /64 counts as
    /// one address); more are closed (0: unlimited, and the QUIC listener
    /// then does not rate-limit new connections per address either).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_conns_per_ip: usize,

    /// Accept only logins whose C_LOGIN.account is a token signed with the
    /// secret in FILE (at least 32 bytes; see `servercore token`). Without
    /// it the server is open: anyone may log in as any account.
    #[arg(long, value_name = "FILE")]
    pub auth_secret: Option<PathBuf>,

    /// Also serve WebSocket clients on ADDR, beside the TCP port and in the
    /// same world (binary messages carrying the packets; WSS with
    /// --tls-cert/--tls-key).
    #[arg(long, value_name = "ADDR")]
    pub ws_addr: Option<SocketAddr>,

    /// Also serve QUIC clients on the UDP address ADDR (ALPN servercore/1,
    /// TLS 1.3 with --tls-cert/--tls-key, which it needs), in the same
    /// world; moves go as datagrams.
    #[arg(long, value_name = "ADDR")]
    pub quic_addr: Option<SocketAddr>,

    /// The QUIC listener's own certificate chain (PEM), instead of
    /// --tls-cert's: the TCP and WebSocket ports stay as they are (plain
    /// without --tls-cert). A browser takes it by hash (WebTransport) only
    /// if it is valid for less than 14 days, as `servercore cert` writes.
    #[arg(long, value_name = "FILE", requires = "quic_key")]
    pub quic_cert: Option<PathBuf>,

    /// The key of --quic-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "quic_cert")]
    pub quic_key: Option<PathBuf>,

    #[command(flatten)]
    pub tls: crate::transport::TlsServerArgs,

    /// The world map's side: the map is [0, SIZE)².
    #[arg(long, value_name = "SIZE", default_value_t = 2000.0)]
    pub world_size: f32,

    /// The interest grid's cell side: a player sees the players of its own
    /// and the eight neighbouring cells.
    #[arg(long, value_name = "SIZE", default_value_t = 100.0)]
    pub cell: f32,

    /// Fastest movement in map units per second; a longer jump is disconnected.
    #[arg(long, value_name = "UNITS", default_value_t = 300.0)]
    pub max_speed: f32,

    /// The world's tick in milliseconds: each player gets what changed
    /// around it (spawns, despawns, moves, then world chat) once per tick,
    /// in one write. 50 ms is 20 Hz; a late tick is counted in
    /// servercore_game_tick_overruns_total.
    #[arg(long, value_name = "MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub tick_ms: u64,

    /// Save the positions of players who moved this often, batched, so a
    /// crash loses at most this much walking (a duration like
    /// --idle-timeout; 0: only when a player leaves).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub save_interval: Duration,

    /// Players in a 3x3 block of cells past which it is a crowd: its players
    /// get their own moves and, per tick, the latest positions of about
    /// N/4 of the others instead of every move of everyone (0: never thin).
    #[arg(long, value_name = "N", default_value_t = servercore_game::world::DEFAULT_CROWD_LIMIT)]
    pub crowd_limit: usize,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub admin: AdminArgs,
}

impl ServerArgs {
    /// The configuration these options describe; fails on unreadable TLS
    /// files or an unreadable or too short secret file.
    pub fn to_config(&self) -> anyhow::Result<GameConfig> {
        let unless_zero = |duration: Duration| (!duration.is_zero()).then_some(duration);
        let auth = match &self.auth_secret {
            Some(path) => Some(TokenKey::from_file(path).context("--auth-secret")?),
            None => None,
        };
        let cluster_secret = match &self.cluster_secret {
            Some(path) => Some(TokenKey::from_file(path).context("--cluster-secret")?),
            None => None,
        };
        Ok(GameConfig {
            addr: self.addr,
            db_path: self.db.to_path(),
            db_pool: self.db_pool,
            cluster: self.nats.as_ref().map(|url| {
                let mut cluster =
                    ClusterConfig::new(url.expose(), self.node.clone().unwrap_or_default());
                cluster.heartbeat_interval = Duration::from_millis(self.heartbeat_ms);
                cluster.node_timeout = Duration::from_millis(self.node_timeout_ms);
                cluster.lease_ttl = Duration::from_millis(self.lease_ms);
                cluster.world_nodes = self.world_nodes.clone();
                cluster.cluster_secret = cluster_secret.clone();
                cluster.public_addr = self.public_addr.clone();
                cluster.public_ws_url = self.public_ws_url.clone();
                cluster
            }),
            backend: self.engine.backend,
            workers: self.engine.workers,
            max_sessions: self.max_sessions,
            idle_timeout: unless_zero(self.idle_timeout),
            max_chat_len: self.max_chat_len,
            send_coalescing: self
                .coalesce_ms
                .map_or(GameConfig::default().send_coalescing, Duration::from_millis),
            wake_batching: self
                .wake_batch_us
                .map_or(GameConfig::default().wake_batching, Duration::from_micros),
            login_deadline: unless_zero(self.login_timeout),
            packet_deadline: unless_zero(self.packet_timeout),
            max_new_accounts_per_min: self.max_new_accounts_per_min,
            max_conns_per_ip: self.max_conns_per_ip,
            auth,
            tls: self.tls.server_config()?,
            ws_addr: self.ws_addr,
            quic_addr: self.quic_addr,
            cert_sha256: match (
                self.quic_cert.as_ref().or(self.tls.tls_cert.as_ref()),
                self.quic_addr,
            ) {
                (Some(cert), Some(_)) => Some(crate::transport::cert_sha256(cert)?),
                _ => None,
            },
            quic_tls: match (&self.quic_cert, &self.quic_key) {
                (Some(cert), Some(key)) => Some(
                    servercore::transport::tls::server_config_from_pem(cert, key)?,
                ),
                _ => None,
            },
            world: WorldConfig {
                size: self.world_size,
                cell: self.cell,
                max_speed: self.max_speed,
                tick: Duration::from_millis(self.tick_ms),
                crowd_limit: self.crowd_limit,
                save_interval: unless_zero(self.save_interval),
                ..WorldConfig::default()
            },
            ..GameConfig::default()
        })
    }
}

/// Runs the game server until SIGINT or SIGTERM, then stops it cleanly
/// (every acknowledged login is on disk) and prints its counters: a table
/// on a terminal, one line of `key=value` pairs otherwise or with
/// `--log-format json`.
///
/// Every listener (game, WebSocket, admin) is bound before the banner, so a
/// port in use fails the command before it says it is listening.
pub fn run(args: ServerArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let stop = StopSignal::install();
    let limit = crate::limits::raised();
    let workers = crate::limits::workers(args.engine.workers);
    crate::limits::check_sessions(args.max_sessions, workers, limit)?;
    let config = args.to_config()?;
    if config.auth.is_none() {
        tracing::warn!(
            "no --auth-secret: the server is open, anyone may log in as any account \
             (C_LOGIN.account is taken as the account name)"
        );
    }
    let secure = config.tls.is_some();
    let server = Arc::new(servercore_game::start(config)?);
    let admin = crate::admin::start_for_game(&args.admin, &server, limit)?;
    let mut websocket = server
        .ws_addr()
        .map(|addr| format!(", WebSocket on {addr}"))
        .unwrap_or_default();
    if let Some(addr) = server.quic_addr() {
        websocket.push_str(&format!(", QUIC on udp {addr}"));
    }
    println!(
        "game server listening on {}{}{websocket} (backend {}, database {} {}); Ctrl-C stops it",
        server.local_addr(),
        if secure { " (TLS)" } else { "" },
        server.backend(),
        server.db_kind(),
        server.db_name()
    );
    crate::admin::announce(admin.as_ref());
    tracing::info!(
        addr = %server.local_addr(),
        backend = %server.backend(),
        database = %server.db_name(),
        node = args.node.as_deref(),
        nats = args.nats.as_ref().map(SecretUrl::redacted),
        admin = ?admin.as_ref().map(|admin| admin.local_addr()),
        workers,
        max_sessions = args.max_sessions,
        open_files_limit = limit.soft,
        "game server started"
    );
    if let Some(cluster) = &args.nats {
        println!(
            "cluster node {} via {cluster}",
            args.node.as_deref().unwrap_or_default()
        );
    }
    let ready = args
        .ready_file
        .as_deref()
        .map(|path| {
            crate::ready::Ready {
                kind: "game",
                pid: std::process::id(),
                backend: server.backend().to_string(),
                addr: server.local_addr(),
                ws: server.ws_addr(),
                quic: server.quic_addr(),
                admin: admin.as_ref().map(|admin| admin.local_addr()),
            }
            .write(path)
        })
        .transpose()?;
    while !stop.wait(Duration::from_secs(3600)) {}
    drop(ready);
    // The admin thread holds the last other reference to the server.
    drop(admin);
    let server = Arc::into_inner(server).expect("nothing else holds the game server");
    let sessions = server.service_stats();
    let cluster = server.cluster_stats();
    let stats = server.stop_and_join();
    tracing::info!(
        sessions = sessions.sessions_total,
        refused = sessions.refused_total,
        logins = stats.logins,
        enters = stats.enters,
        chats = stats.chats_relayed,
        deliveries = stats.chat_deliveries,
        "game server stopped"
    );
    let as_table =
        log_format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stdout());
    println!(
        "{}",
        closing_summary(
            sessions.sessions_total,
            sessions.refused_total,
            &stats,
            as_table
        )
    );
    if let Some(cluster) = cluster {
        println!("cluster: {cluster}");
    }
    Ok(())
}

/// What the server prints when it stops: the sessions it served and refused
/// and every game counter, as a table for a person or as the one line of
/// `key=value` pairs (`stopped: sessions=N refused=N logins=N ...`) that
/// scripts and tests read.
fn closing_summary(sessions: u64, refused: u64, stats: &GameStats, as_table: bool) -> String {
    let fields = stats.fields();
    if !as_table {
        let pairs: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        return format!(
            "stopped: sessions={sessions} refused={refused} {}",
            pairs.join(" ")
        );
    }
    let shown = |value: i64| match u64::try_from(value) {
        Ok(value) => count(value),
        Err(_) => value.to_string(),
    };
    let rows: Vec<(String, String)> =
        [("sessions served", sessions), ("sessions refused", refused)]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), count(value)))
            .chain(
                fields
                    .iter()
                    .map(|(key, value)| (key.replace('_', " "), shown(*value))),
            )
            .collect();
    summary_table("game server stopped", &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_summary_is_a_table_or_key_value_pairs() {
        let stats = GameStats {
            logins: 1234,
            spawn_packets_sent: 7,
            ..GameStats::default()
        };
        let line = closing_summary(1500, 2, &stats, false);
        assert!(
            line.starts_with("stopped: sessions=1500 refused=2 logins=1234 "),
            "{line}"
        );
        assert!(line.contains(" spawn_packets_sent=7 "), "{line}");
        assert_eq!(line.lines().count(), 1);

        let table = closing_summary(1500, 2, &stats, true);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "game server stopped");
        assert!(lines[1].trim_start().starts_with("---"), "{table}");
        let row = |name: &str| {
            lines
                .iter()
                .find_map(|line| {
                    let rest = line.trim_start().strip_prefix(name)?;
                    rest.starts_with("  ").then(|| rest.trim().to_owned())
                })
                .unwrap_or_else(|| panic!("no row {name:?} in\n{table}"))
        };
        assert_eq!(row("sessions served"), "1,500");
        assert_eq!(row("logins refused"), "0");
        assert_eq!(row("logins"), "1,234");
        assert_eq!(row("spawn packets sent"), "7");
        // One row per counter, the two session rows and the three rules.
        assert_eq!(lines.len(), 1 + 2 + stats.fields().len() + 2, "{table}");
        let width = lines[2].chars().count();
        assert!(
            lines[2..lines.len() - 1]
                .iter()
                .all(|line| line.chars().count() == width),
            "rows are aligned:\n{table}"
        );
    }
}
