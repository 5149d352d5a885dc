//! The benchmarks behind `servercore bench`: scripted benchmarks of the engine against a plain
//! tokio baseline, one after the other in one run, printed as tables of
//! ratios (see `docs/BENCHMARKS.md`).
//!
//! This module owns the whole harness:
//! - the command-line options ([`BenchOptions`], and [`BenchServerOptions`] of the
//!   hidden `bench-server` subcommand) and the run loop ([`run`]);
//! - [`server`]: the `bench-server` process (engine echo, the engine chat
//!   server of [`engine_chat`], or the tokio baseline of [`tokio_server`]),
//!   and [`child`], the harness's handle on it;
//! - [`load`]: the load generators (echo clients, chatting game clients,
//!   idle connections) on a tokio runtime in the harness process;
//! - [`chat`] and [`proto`]: the room logic and the game protocol that both
//!   chat servers and the load generator share;
//! - [`moves`]: the move scenario (the dummy client's move load against the
//!   game server's world and [`tokio_world`], and the capacity sweep), with
//!   its records and tables in [`move_report`];
//! - [`procfs`]: CPU time and RSS of the server from `/proc`; [`perf`]: its
//!   system calls and context switches from `perf stat` (`--perf`);
//! - [`report`] and [`chart`]: tables, targets, JSON and the SVG chart;
//! - [`progress`]: the progress bar;
//! - [`zones`]: one world over several `servercore server` nodes (its
//!   own nats-server, the nodes, the move load following transfers), with
//!   its records and tables in [`zones_report`];
//! - [`soak`]: `bench soak`, the long churn run watched for leaks (its own
//!   loop and report, not a comparison).
//!
//! The server under test always runs in its own process, so the load
//! generator's CPU and memory are never counted. Targets are printed beside
//! the results; nothing is asserted.

mod chart;
mod chat;
mod child;
mod engine_chat;
mod load;
mod measure;
mod move_report;
mod moves;
mod options;
mod perf;
mod plan;
mod procfs;
mod progress;
mod proto;
mod report;
mod run;
mod server;
pub mod soak;
mod tokio_server;
mod tokio_world;
mod transport;
mod zones;
mod zones_report;

pub(crate) use measure::Bench;
pub use options::{BenchOptions, BenchServerOptions, ChatServer, Impl, Scenario};
pub use procfs::raise_nofile_limit;
pub use run::{run, run_server, run_until};
pub use transport::Transport;
