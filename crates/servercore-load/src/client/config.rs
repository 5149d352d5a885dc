//! The settings of a load run ([`LoadConfig`]), the `--duration` parser and
//! the choice of local source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use servercore::{Backend, ClientTransport};

/// Connections one local source address takes before the next one is used.
/// Linux gives each source address its own ephemeral ports (28,232 by
/// default), so this leaves room for the rest of the machine.
pub const SESSIONS_PER_SOURCE_ADDR: usize = 20_000;

/// What the sessions do once in game.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Scenario {
    // These doc comments are the values' --help text: plain words, no
    // rustdoc links.
    /// Chat at --rate (the world's moves and spawns are still tracked if the
    /// server sends them).
    #[default]
    Chat,
    /// Random-walk at --move-rate and --speed, tracking the neighbours the
    /// server spawns; chat too if --rate is above 0.
    Move,
}

impl Scenario {
    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Chat => "chat",
            Scenario::Move => "move",
        }
    }
}

/// Everything a load run needs: the target, how many sessions, what they
/// do (chat, move) how fast and for how long, and the engine options of the
/// client side.
///
/// ```ignore
/// let mut config = LoadConfig::new("127.0.0.1:7777".parse()?);
/// config.sessions = 200;
/// config.duration = Duration::from_secs(10);
/// let report = run_load(config, true)?;
/// ```
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The game server (the first node when there are several).
    pub addr: SocketAddr,
    /// More nodes of one cluster: the sessions are spread round-robin over
    /// `addr` and these, and the report splits local from cross-node
    /// deliveries (empty: one server).
    pub more_addrs: Vec<SocketAddr>,
    /// How many sessions to connect.
    pub sessions: usize,
    /// What the sessions do in game.
    pub scenario: Scenario,
    /// `C_CHAT` messages per second per session (0: no chat; fractions
    /// allowed: 0.5 is one message every 2 s).
    pub rate: f64,
    /// `C_MOVE` messages per second per session in the move scenario.
    pub move_rate: f64,
    /// Walking speed in world units per second in the move scenario (keep
    /// it below the server's max speed, or moves come back corrected).
    pub speed: f64,
    /// Side of the square map the sessions walk in (the server's
    /// `--world-size`); walkers turn back at its edges.
    pub world_size: f64,
    /// How long the sessions chat and move, from the moment every session
    /// entered the game (or the set-up timeout passed), after the warm-up.
    pub duration: Duration,
    /// Sending runs this long before the measured window opens; what it
    /// counts is discarded (0: none, the default).
    pub warmup: Duration,
    /// Bytes of chat text per message.
    pub message_bytes: usize,
    /// The client side's I/O backend.
    pub backend: Backend,
    /// The client side's worker threads (None: available cores).
    pub workers: Option<usize>,
    /// Local source addresses to spread connections over. None: chosen
    /// automatically (see [`plan_source_addrs`]); an empty list: the
    /// system's choice.
    pub source_addrs: Option<Vec<IpAddr>>,
    /// Time allowed for each connect.
    pub connect_timeout: Duration,
    /// Longest wait for every session to connect, log in and enter before
    /// the chat starts anyway.
    pub setup_timeout: Duration,
    /// Longest wait after the chat window for the last messages in flight.
    pub drain_timeout: Duration,
    /// After the drain, the sessions stay in game this long, idle, before
    /// the run stops them (0: none): the world can be inspected with
    /// everyone standing still.
    pub hold: Duration,
    /// Account names are this prefix followed by the session number, so a
    /// second run against the same server reuses the same accounts.
    pub account_prefix: String,
    /// The connections' transport: plain TCP (default), TLS, WebSocket or
    /// WSS; the scenario is the same on each.
    pub transport: ClientTransport,
    /// Connect over QUIC instead (`addr` is then the UDP address): moves go
    /// both ways as datagrams where the server takes them.
    pub quic: Option<servercore::QuicClientConfig>,
    /// The zones of one world across the nodes of [`Self::addrs`], in that
    /// order (`None`: not split): with it, the move deliveries about other
    /// players are sorted into local and cross-border by where the mover
    /// stands, each with its latency ([`super::NodeSplit`]).
    pub zones: Option<ZoneSplit>,
}

/// Where each node's zone of a shared world ends, for sorting move
/// deliveries into local and cross-border ones.
///
/// Node `i` of the run's addresses owns `x` in `[bounds[i - 1], bounds[i])`
/// (the first from 0, the last to the map's edge). A mover within `band`
/// of a bound may still be on the node it came from (a player is handed
/// over only once it is more than half a cell past the border), so its
/// moves are left out of both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneSplit {
    /// The x of each border between two zones, ascending: one fewer than
    /// the nodes.
    pub bounds: Vec<f32>,
    /// Half a cell: how far past a border a player may stand and still be
    /// simulated by the node on the other side.
    pub band: f32,
}

impl ZoneSplit {
    /// The node whose zone `x` is in, or `None` within `band` of a border.
    pub fn node_of(&self, x: f32) -> Option<usize> {
        if self.bounds.iter().any(|b| (x - b).abs() < self.band) {
            return None;
        }
        Some(self.bounds.iter().take_while(|b| x >= **b).count())
    }
}

impl LoadConfig {
    /// The defaults of `servercore client` against `addr`: 500 sessions,
    /// one message per second each, for 30 s.
    pub fn new(addr: SocketAddr) -> LoadConfig {
        LoadConfig {
            addr,
            more_addrs: Vec::new(),
            sessions: 500,
            scenario: Scenario::Chat,
            rate: 1.0,
            move_rate: 10.0,
            speed: 150.0,
            world_size: 2000.0,
            duration: Duration::from_secs(30),
            warmup: Duration::ZERO,
            message_bytes: 32,
            backend: Backend::Auto,
            workers: None,
            source_addrs: None,
            connect_timeout: Duration::from_secs(5),
            setup_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            hold: Duration::ZERO,
            account_prefix: "dummy".to_owned(),
            transport: ClientTransport::plain(),
            quic: None,
            zones: None,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rate.is_finite() && self.rate >= 0.0,
            "rate must be a non-negative number of messages per second, not {}",
            self.rate
        );
        anyhow::ensure!(
            self.rate <= 1_000_000.0,
            "rate {} is above one message per microsecond",
            self.rate
        );
        anyhow::ensure!(
            self.move_rate.is_finite() && self.move_rate >= 0.0 && self.move_rate <= 1_000.0,
            "move rate must be between 0 and 1000 moves per second, not {}",
            self.move_rate
        );
        anyhow::ensure!(
            self.speed.is_finite() && self.speed >= 0.0,
            "speed must be a non-negative number of units per second, not {}",
            self.speed
        );
        anyhow::ensure!(
            self.world_size.is_finite() && self.world_size > 0.0,
            "world size must be positive, not {}",
            self.world_size
        );
        anyhow::ensure!(
            self.message_bytes <= 60_000,
            "messages of {} bytes do not fit a packet",
            self.message_bytes
        );
        Ok(())
    }

    /// Every node: `addr`, then `more_addrs`.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addr)
            .chain(self.more_addrs.iter().copied())
            .collect()
    }

    /// The time between two chat messages of one session (None at rate 0).
    pub fn period(&self) -> Option<Duration> {
        (self.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / self.rate))
    }

    /// The time between two moves of one session (None unless the scenario
    /// is [`Scenario::Move`] with a move rate above 0).
    pub fn move_period(&self) -> Option<Duration> {
        (self.scenario == Scenario::Move && self.move_rate > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / self.move_rate))
    }

    /// The source addresses the run will use: the configured ones, or
    /// [`plan_source_addrs`].
    pub fn resolved_source_addrs(&self) -> Vec<IpAddr> {
        match &self.source_addrs {
            Some(addrs) => addrs.clone(),
            None => plan_source_addrs(self.addr, self.sessions),
        }
    }
}

/// Local source addresses for `sessions` connections to `target`: none (the
/// system picks) while one address has ports enough, else 127.0.0.1,
/// 127.0.0.2, ... for an IPv4 loopback target (Linux routes the whole
/// 127/8 to loopback), one address per [`SESSIONS_PER_SOURCE_ADDR`]
/// connections. Other targets always get the system's choice.
pub fn plan_source_addrs(target: SocketAddr, sessions: usize) -> Vec<IpAddr> {
    let per_addr = SESSIONS_PER_SOURCE_ADDR
        .min(ephemeral_ports() * 3 / 4)
        .max(1);
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && sessions > per_addr => {
            let count = sessions.div_ceil(per_addr).min(254);
            (1..=count as u8)
                .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
                .collect()
        }
        _ => Vec::new(),
    }
}

/// How many ephemeral ports one local address has (Linux's
/// `ip_local_port_range`, or its default where it cannot be read).
fn ephemeral_ports() -> usize {
    const DEFAULT: usize = 60_999 - 32_768 + 1;
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return DEFAULT;
    };
    let mut bounds = text.split_whitespace().map(str::parse::<usize>);
    match (bounds.next(), bounds.next()) {
        (Some(Ok(low)), Some(Ok(high))) if high >= low => high - low + 1,
        _ => DEFAULT,
    }
}

/// Parses a duration such as `30s`, `2m`, `500ms`, `1h`, `2d`, `1m30s` or
/// `1.5s`; a bare number is seconds. Every duration flag of every command
/// takes this syntax.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_duration(seconds, text);
    }
    let mut total = 0.0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?}: a number needs a unit (ms, s, m, h, d)"))?;
        if number_len == 0 {
            return Err(format!("{text:?}: expected a number at {rest:?}"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("{text:?}: bad number {:?}", &rest[..number_len]))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match rest[..unit_len].trim() {
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            unit => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use us, ms, s, m, h or d)"
                ))
            }
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    seconds_to_duration(total, text)
}

fn seconds_to_duration(seconds: f64, text: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?}: not a valid duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = |text: &str, millis: u64| {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        };
        ok("30s", 30_000);
        ok("2m", 120_000);
        ok("500ms", 500);
        ok("1h", 3_600_000);
        ok("2d", 172_800_000);
        ok("1m30s", 90_000);
        ok("1.5s", 1_500);
        ok("10", 10_000);
        ok(" 0.25 ", 250);
        ok("0s", 0);
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        for bad in ["", "s", "10x", "-1s", "1.2.3s", "ms10", "-5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn source_addresses() {
        let loopback: SocketAddr = "127.0.0.1:7777".parse().unwrap();
        assert!(plan_source_addrs(loopback, 500).is_empty());
        let many = plan_source_addrs(loopback, 100_000);
        assert!(many.len() >= 5, "{many:?}");
        assert_eq!(many[0], IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(many[1], "127.0.0.2".parse::<IpAddr>().unwrap());
        let v6: SocketAddr = "[::1]:7777".parse().unwrap();
        assert!(plan_source_addrs(v6, 100_000).is_empty());
        let remote: SocketAddr = "192.0.2.1:7777".parse().unwrap();
        assert!(plan_source_addrs(remote, 100_000).is_empty());
    }

    #[test]
    fn zones_place_a_mover_on_a_node_or_in_a_border_band() {
        let split = ZoneSplit {
            bounds: vec![300.0, 600.0],
            band: 50.0,
        };
        assert_eq!(split.node_of(0.0), Some(0));
        assert_eq!(split.node_of(249.0), Some(0));
        assert_eq!(split.node_of(251.0), None);
        assert_eq!(split.node_of(349.0), None);
        assert_eq!(split.node_of(350.0), Some(1));
        assert_eq!(split.node_of(700.0), Some(2));
        let one = ZoneSplit {
            bounds: Vec::new(),
            band: 50.0,
        };
        assert_eq!(one.node_of(10.0), Some(0));
    }

    #[test]
    fn config_checks() {
        let mut config = LoadConfig::new("127.0.0.1:1".parse().unwrap());
        assert!(config.validate().is_ok());
        assert_eq!(config.period(), Some(Duration::from_secs(1)));
        config.rate = 0.0;
        assert_eq!(config.period(), None);
        config.rate = f64::NAN;
        assert!(config.validate().is_err());
        config.rate = -1.0;
        assert!(config.validate().is_err());
        config.rate = 1.0;
        assert_eq!(config.move_period(), None, "chat scenario: no moves");
        config.scenario = Scenario::Move;
        assert_eq!(config.move_period(), Some(Duration::from_millis(100)));
        config.speed = f64::INFINITY;
        assert!(config.validate().is_err());
    }
}
