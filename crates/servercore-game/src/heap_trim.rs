//! The heap trimmer: a thread that hands the C allocator's free memory back
//! to the kernel every few seconds.
//!
//! A game server's memory comes in peaks (a slow reader's send queue full of
//! broadcasts, a burst of logins, a backed-up room). glibc returns freed
//! memory only from the top of each arena, so after a peak the free chunks
//! in the middle stay resident and RSS ratchets up to the worst peak so far
//! while the bytes in use fall back (measured in docs/BENCHMARKS.md,
//! "Soak"). A trim every few seconds on a thread of its own (never on an
//! I/O worker: it walks every arena under its lock) keeps RSS near what is
//! in use. Where the C library is not glibc the thread does nothing.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

/// The running trimmer; [`HeapTrimmer::stop`] (or dropping it) ends it.
pub struct HeapTrimmer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HeapTrimmer {
    /// Starts a thread that trims every `interval`.
    pub fn start(interval: Duration) -> std::io::Result<HeapTrimmer> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("heap-trim".into())
            .spawn(move || {
                // Until the stop sender is dropped (or sends).
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    servercore::driver::heap::trim();
                }
            })?;
        Ok(HeapTrimmer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HeapTrimmer {
    fn drop(&mut self) {
        self.stop();
    }
}
