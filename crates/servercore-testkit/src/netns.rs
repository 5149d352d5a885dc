//! A network namespace of a test's own, for running a server and its
//! clients over a loopback that loses packets: made with `ip netns add`,
//! holding only its own `lo`, removed on drop.
//!
//! Processes run inside it through `ip netns exec` ([`NetNs::command`]);
//! the test's own clients open their sockets on a thread that joined it
//! ([`NetNs::run`]: a socket belongs to the namespace it was made in, and
//! may be used from any thread afterwards).
//!
//! Loss ([`NetNs::add_loss`]): `tc qdisc ... netem loss P% delay D` where
//! the kernel has netem; else an nftables rule dropping a random P % of
//! every packet `lo` delivers (`iif lo numgen random mod 100 < P drop` on
//! the input hook), without a delay.
//! Either way only the namespace's `lo` is touched.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable that turns a missing namespace into a
/// failure instead of a skip (set where the suite is known to run as root
/// with `ip netns`).
pub const REQUIRE_ENV: &str = "SERVERCORE_REQUIRE_NETNS";

/// How [`NetNs::add_loss`] makes the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossEmulation {
    /// `tc netem`: loss and delay.
    Netem,
    /// An nftables rule: random loss, no delay (this kernel has no netem).
    Nftables,
}

impl std::fmt::Display for LossEmulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossEmulation::Netem => "tc netem (loss and delay)",
            LossEmulation::Nftables => {
                "nftables random drop on lo (no delay: this kernel has no netem qdisc)"
            }
        })
    }
}

/// A network namespace with only `lo`, up; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

/// Runs `ip ARGS`; the error is its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args))
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|error| format!("{command:?}: {error}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Makes a namespace named after `prefix`, this process and a counter,
    /// with `lo` up.
    pub fn create(prefix: &str) -> Result<NetNs, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace for a test, or `None` (with the reason printed) where
    /// this machine cannot make one: not root, no `ip netns`. Panics
    /// instead when [`REQUIRE_ENV`] is set.
    pub fn for_test(prefix: &str) -> Option<NetNs> {
        let made = if nix::unistd::Uid::effective().is_root() {
            NetNs::create(prefix)
        } else {
            Err("not running as root".to_string())
        };
        match made {
            Ok(ns) => Some(ns),
            Err(reason) if std::env::var_os(REQUIRE_ENV).is_some() => {
                panic!("a network namespace is required ({REQUIRE_ENV}) but: {reason}")
            }
            Err(reason) => {
                eprintln!("skipping: cannot make a network namespace: {reason}");
                None
            }
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` to be run inside the namespace (`ip netns exec NAME
    /// program`, which execs it: the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `f` on a thread that joined the namespace, and returns its
    /// result: sockets `f` opens belong to the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path)
                        .unwrap_or_else(|error| panic!("{path}: {error}"));
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|error| panic!("joining {path}: {error}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Makes `lo` lose `percent` % of its packets (and, with netem, delay
    /// it by `delay_ms`), with netem where the kernel has it, else with
    /// nftables; says which.
    pub fn add_loss(&self, percent: u32, delay_ms: u32) -> Result<LossEmulation, String> {
        let netem = ip(&[
            "netns",
            "exec",
            &self.name,
            "tc",
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "netem",
            "loss",
            &format!("{percent}%"),
            "delay",
            &format!("{delay_ms}ms"),
        ]);
        if netem.is_ok() {
            return Ok(LossEmulation::Netem);
        }
        let nft = |args: &[&str]| run(self.command("nft").args(args));
        nft(&["add", "table", "inet", "loss"])
            .and_then(|()| {
                // On input, not output: a packet dropped on output fails
                // its sendmsg (EPERM), so the sender would know; dropped
                // on input it is lost on the way, as on a network.
                nft(&[
                    "add",
                    "chain",
                    "inet",
                    "loss",
                    "in",
                    "{ type filter hook input priority 0; }",
                ])
            })
            .and_then(|()| {
                nft(&[
                    "add",
                    "rule",
                    "inet",
                    "loss",
                    "in",
                    "iif",
                    "lo",
                    "numgen",
                    "random",
                    "mod",
                    "100",
                    "<",
                    &percent.to_string(),
                    "drop",
                ])
            })
            .map(|()| LossEmulation::Nftables)
            .map_err(|nft| {
                format!(
                    "no loss emulation: netem: {}; nftables: {nft}",
                    netem.unwrap_err()
                )
            })
    }

    /// Removes the loss [`add_loss`](Self::add_loss) made (either kind).
    pub fn clear_loss(&self) {
        let _ = ip(&[
            "netns", "exec", &self.name, "tc", "qdisc", "del", "dev", "lo", "root",
        ]);
        let _ = run(self
            .command("nft")
            .args(["delete", "table", "inet", "loss"]));
    }

    /// The namespace's counter `field` of `group` in `/proc/net/snmp`
    /// (`Tcp`, `RetransSegs`), read by a process inside it.
    pub fn snmp(&self, group: &str, field: &str) -> Option<u64> {
        let out = self.command("cat").arg("/proc/net/snmp").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let prefix = format!("{group}:");
        let mut lines = text.lines().filter(|line| line.starts_with(&prefix));
        let names = lines.next()?;
        let values = lines.next()?;
        let at = names.split_whitespace().position(|name| name == field)?;
        values.split_whitespace().nth(at)?.parse().ok()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!("could not remove network namespace {}: {error}", self.name);
        }
    }
}
