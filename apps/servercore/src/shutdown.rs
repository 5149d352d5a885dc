//! The process's stop signals: the first SIGINT or SIGTERM asks for a clean
//! stop (the command stops accepting, flushes, drains its database queue,
//! prints its report and exits 0); a second one exits at once with
//! 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
//!
//! Only the CLI installs handlers (with `signal-hook`, on a thread of its
//! own: the handler itself only writes a byte); the library crates just read
//! the [`StopSignal`] flag they are given.

use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

pub use servercore_load::StopSignal;

/// Installs the handler (once per process) and returns the shared flag.
pub trait Install {
    /// The process-wide flag, with the handler installed on first use.
    fn install() -> StopSignal;
}

impl Install for StopSignal {
    fn install() -> StopSignal {
        static FLAG: OnceLock<StopSignal> = OnceLock::new();
        FLAG.get_or_init(|| {
            let flag = StopSignal::new();
            if let Err(error) = watch(flag.clone()) {
                tracing::warn!(%error, "cannot install the SIGINT/SIGTERM handler");
            }
            flag
        })
        .clone()
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Starts the threads that turn SIGINT/SIGTERM into `flag`. Each delivery
/// writes one byte into a socket (signal-hook's self-pipe), so two quick
/// signals count as two, and everything else runs on a normal thread.
fn watch(flag: StopSignal) -> std::io::Result<()> {
    let delivered = Arc::new(AtomicUsize::new(0));
    for signal in [SIGINT, SIGTERM] {
        let (mut reader, writer) = UnixStream::pair()?;
        signal_hook::low_level::pipe::register(signal, writer)?;
        let flag = flag.clone();
        let delivered = Arc::clone(&delivered);
        std::thread::Builder::new()
            .name(format!("{}-watch", signal_name(signal)))
            .spawn(move || {
                let mut byte = [0u8; 1];
                while matches!(reader.read(&mut byte), Ok(1)) {
                    if delivered.fetch_add(1, Ordering::AcqRel) > 0 {
                        eprintln!("second signal: exiting now");
                        std::process::exit(128 + signal);
                    }
                    flag.set();
                    tracing::info!(
                        signal = signal_name(signal),
                        "stopping gracefully; a second signal exits at once"
                    );
                }
            })?;
    }
    Ok(())
}
