//! servercore-load: the tools that put load on a server: the dummy game
//! clients ([`client`]) and the echo server ([`echo`]). The benchmarks
//! that drive them against baselines live in `servercore-bench`.
//!
//! The `servercore` command's `client`, `echo` and `demo` subcommands are
//! thin shells over this crate: they turn their flags into the plain
//! option structs here ([`client::LoadConfig`], [`echo::EchoConfig`]) and
//! own the process's signals, which reach these loops as a
//! [`StopSignal`].

#![warn(missing_docs)]

pub mod client;
pub mod echo;
mod fd_limit;
pub mod stop;

pub use fd_limit::raise_nofile_limit;
pub use stop::StopSignal;
