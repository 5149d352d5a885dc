//! The dummy game clients (the course's DummyClient) behind `servercore client`.
//!
//! N sessions connect to a game server, log in, enter the game and send
//! `C_CHAT` at a fixed rate, each message stamped with `client_time_us`;
//! the latency of a message is measured when its sender receives its own
//! `S_CHAT`. In the move scenario ([`Scenario::Move`]) they also random-walk
//! the world with `C_MOVE`, track the neighbours the server spawns and
//! despawns, and time their own `S_MOVE`s. A live display shows progress; at the end a table (and, with
//! `--json FILE`, the same numbers as JSON) reports sessions, messages,
//! deliveries, latency percentiles and errors by kind.
//!
//! The library-style entry is [`run_load`] with a [`LoadConfig`], returning
//! a [`LoadReport`]; `demo` and `bench` reuse it.
//!
//! Submodules:
//! - `config`: [`LoadConfig`], the duration parser, source addresses;
//! - `session`: one dummy client's conversation and the chat/move schedule;
//! - `walk`: the random walk of the move scenario;
//! - `stats`: counters, latency histograms, errors by kind;
//! - `load`: the run itself (set-up, chat, drain, stop);
//! - `progress`: the live display (indicatif);
//! - `report`: [`LoadReport`], its table and JSON;
//! - `nodes`: runs over several nodes: local and cross-node deliveries;
//! - `follow`: the later connections of clients that follow a transfer or
//!   reconnect after their node died.

mod config;
mod follow;
mod load;
mod nodes;
mod progress;
mod report;
mod session;
mod stats;
mod walk;

pub use walk::Walker;

pub use config::{
    parse_duration, plan_source_addrs, LoadConfig, Scenario, ZoneSplit, SESSIONS_PER_SOURCE_ADDR,
};
pub use load::{run_load, run_load_observed, run_load_until, LoadObserver, WindowCounts};
pub use nodes::NodeSplit;
pub use report::{
    count, human_duration, summary_table, FollowSummary, LatencySummary, LoadReport, MoveSummary,
    SessionSummary, ZoneLatency,
};
