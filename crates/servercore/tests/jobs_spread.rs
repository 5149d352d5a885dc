//! A burst of independent actors handed to the global queue runs on several
//! I/O workers side by side once `job::wake_workers` wakes them (a game
//! tick's one job per region), on every backend; without the wake-up the
//! first worker woken would run them one after another.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;

use servercore_testkit::backend_tests;
use std::thread::ThreadId;
use std::time::Duration;

use parking_lot::Mutex;
use servercore::job::Actor;
use servercore::{Backend, ServerService, Session, SessionHandle};

backend_tests!(a_burst_of_actors_runs_on_several_workers);

/// The scheduler is one per process: one backend's test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Idle;

impl Session for Idle {
    fn on_recv(&mut self, _session: &SessionHandle, data: &[u8]) -> usize {
        data.len()
    }
}

fn a_burst_of_actors_runs_on_several_workers(backend: Backend) {
    const ACTORS: usize = 8;
    let _alone = ONE_AT_A_TIME.lock();
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .session(|| Idle)
        .start()
        .expect("start");
    // Let both workers attach and go idle.
    std::thread::sleep(Duration::from_millis(50));
    let threads: Arc<Mutex<HashSet<ThreadId>>> = Arc::default();
    let (done_tx, done_rx) = mpsc::channel();
    let actors: Vec<Actor<usize>> = (0..ACTORS).map(Actor::new).collect();
    for actor in &actors {
        let threads = Arc::clone(&threads);
        let done = done_tx.clone();
        actor.post(move |_| {
            threads.lock().insert(std::thread::current().id());
            // Long enough that one worker could not finish them all before
            // its next housekeeping round.
            std::thread::sleep(Duration::from_millis(5));
            done.send(()).unwrap();
        });
    }
    servercore::job::wake_workers(ACTORS);
    for _ in 0..ACTORS {
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("every job ran");
    }
    let seen = threads.lock().len();
    assert!(
        seen >= 2,
        "{backend}: {ACTORS} actors ran on {seen} thread(s)"
    );
    drop(actors);
    service.stop();
    service.join();
}
