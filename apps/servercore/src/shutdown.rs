//! The process's stop signals: the first Ctrl-C (SIGINT/SIGTERM) asks for a
//! clean stop, a second one exits at once. Only the CLI installs handlers;
//! the library crates just read the [`StopSignal`] flag.

pub use servercore_load::StopSignal;

/// Installs the handler (once per process) and returns the shared flag.
pub trait Install {
    /// The process-wide flag, with the handler installed on first use.
    fn install() -> StopSignal;
}

impl Install for StopSignal {
    fn install() -> StopSignal {
        static FLAG: std::sync::OnceLock<StopSignal> = std::sync::OnceLock::new();
        FLAG.get_or_init(|| {
            let flag = StopSignal::new();
            let handler_flag = flag.clone();
            if let Err(error) = ctrlc::set_handler(move || {
                if handler_flag.set_again() {
                    std::process::exit(130);
                }
            }) {
                tracing::warn!(%error, "cannot install the Ctrl-C handler");
            }
            flag
        })
        .clone()
    }
}
