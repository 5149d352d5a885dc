//! servercore-load: the tools that put load on a server: the dummy game
//! clients ([`client`]), the echo server the benchmarks measure ([`echo`]),
//! and the benchmark scenarios against a plain tokio baseline ([`bench`]).
//!
//! The `servercore` command's `client`, `echo`, `demo` and `bench`
//! subcommands are thin shells over this crate: they turn their flags into
//! the plain option structs here ([`client::LoadConfig`],
//! [`bench::BenchOptions`], [`echo::EchoConfig`]) and own the process's
//! signals, which reach these loops as a [`StopSignal`].

#![warn(missing_docs)]

pub mod bench;
pub mod client;
pub mod echo;
pub mod stop;

pub use stop::StopSignal;
