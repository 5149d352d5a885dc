//! `servercore server`: the sample game server's command: its flags, and a
//! run until a stop signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use servercore_game::cluster::ClusterConfig;
use servercore_game::{GameConfig, DEFAULT_DB_PATH};

use crate::cli::EngineArgs;
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
    pub db: PathBuf,

    /// Database threads, each with its own connection.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub db_pool: usize,

    /// Join a cluster through this NATS server (e.g. nats://127.0.0.1:4222):
    /// world chat, presence and one session per account across nodes.
    #[arg(long, value_name = "URL", requires = "node")]
    pub nats: Option<String>,

    /// This node's name in the cluster (letters, digits, '-', '_'; unique).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,

    /// Milliseconds between this node's heartbeats to the cluster.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,

    /// A node silent for this many milliseconds is taken for dead and its
    /// accounts for offline.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub node_timeout_ms: u64,

    /// Most sessions at once; connections past it are refused.
    #[arg(long, default_value_t = 10_000)]
    pub max_sessions: usize,

    /// Disconnect a session that sends nothing for this many seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub idle_timeout: u64,

    /// Longest chat message relayed, in bytes; longer ones are dropped.
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    pub max_chat_len: usize,

    /// Also serve WebSocket clients on ADDR, beside the TCP port and in the
    /// same world (binary messages carrying the packets; WSS with
    /// --tls-cert/--tls-key).
    #[arg(long, value_name = "ADDR")]
    pub ws_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub tls: crate::transport::TlsServerArgs,

    #[command(flatten)]
    pub engine: EngineArgs,
}

impl ServerArgs {
    /// The configuration these options describe (reads the TLS files).
    pub fn to_config(&self) -> anyhow::Result<GameConfig> {
        Ok(GameConfig {
            addr: self.addr,
            db_path: self.db.clone(),
            db_pool: self.db_pool,
            cluster: self.nats.as_ref().map(|url| {
                let mut cluster =
                    ClusterConfig::new(url.clone(), self.node.clone().unwrap_or_default());
                cluster.heartbeat_interval = Duration::from_millis(self.heartbeat_ms);
                cluster.node_timeout = Duration::from_millis(self.node_timeout_ms);
                cluster
            }),
            backend: self.engine.backend,
            workers: self.engine.workers,
            max_sessions: self.max_sessions,
            idle_timeout: (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout)),
            max_chat_len: self.max_chat_len,
            tls: self.tls.server_config()?,
            ws_addr: self.ws_addr,
            ..GameConfig::default()
        })
    }
}

/// Runs the game server until Ctrl-C, then stops it cleanly and prints its
/// counters.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let stop = StopSignal::install();
    let config = args.to_config()?;
    let secure = config.tls.is_some();
    let server = servercore_game::start(config)?;
    let websocket = server
        .ws_addr()
        .map(|addr| format!(", WebSocket on {addr}"))
        .unwrap_or_default();
    println!(
        "game server listening on {}{}{websocket} (backend {}, database {} {}); Ctrl-C stops it",
        server.local_addr(),
        if secure { " (TLS)" } else { "" },
        server.backend(),
        server.db_kind(),
        server.db_name()
    );
    if let Some(cluster) = &args.nats {
        println!(
            "cluster node {} via {cluster}",
            args.node.as_deref().unwrap_or_default()
        );
    }
    while !stop.wait(Duration::from_secs(3600)) {}
    let sessions = server.service_stats();
    let cluster = server.cluster_stats();
    let stats = server.stop_and_join();
    println!(
        "stopped: sessions={} refused={} {stats}",
        sessions.sessions_total, sessions.refused_total
    );
    if let Some(cluster) = cluster {
        println!("cluster: {cluster}");
    }
    Ok(())
}
