//! Tests of the job layer: ordering and exclusion under contention, the
//! time-slice rule, timers, and the worker API (with private schedulers, so
//! tests running in parallel do not see each other's workers).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::queue::STATE_CONTENDED;
use super::scheduler::Scheduler;
use super::worker::WorkerAttachment;
use super::{Actor, JobQueue};
use crate::driver::Wake;

const LIMIT: Duration = Duration::from_secs(4);

/// Waits (bounded by [`LIMIT`]) until `done` holds; returns whether it did.
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    done()
}

fn private_scheduler() -> &'static Scheduler {
    Box::leak(Box::new(Scheduler::new()))
}

/// xorshift64*: enough randomness for delays, without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn spin_for(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

#[derive(Default)]
struct TestWaker {
    wakes: AtomicUsize,
    thread: Mutex<Option<Thread>>,
}

impl Wake for TestWaker {
    fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = &*self.thread.lock() {
            t.unpark();
        }
    }
}

#[test]
fn jobs_of_one_queue_never_overlap_and_run_exactly_once() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 10_000;
    let queue = JobQueue::new();
    let in_flight = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let ran: Arc<Vec<AtomicU8>> = Arc::new(
        (0..THREADS * PER_THREAD)
            .map(|_| AtomicU8::new(0))
            .collect(),
    );

    let pushers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (queue, in_flight, overlaps, done, ran) = (
                queue.clone(),
                in_flight.clone(),
                overlaps.clone(),
                done.clone(),
                ran.clone(),
            );
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let (in_flight, overlaps, done, ran) = (
                        in_flight.clone(),
                        overlaps.clone(),
                        done.clone(),
                        ran.clone(),
                    );
                    queue.do_async(move || {
                        if in_flight.swap(true, Ordering::SeqCst) {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        ran[t * PER_THREAD + i].fetch_add(1, Ordering::Relaxed);
                        std::hint::spin_loop();
                        in_flight.store(false, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::Release);
                    });
                }
            })
        })
        .collect();
    for p in pushers {
        p.join().unwrap();
    }
    assert!(
        wait_until(|| done.load(Ordering::Acquire) == THREADS * PER_THREAD),
        "only {} of {} jobs ran",
        done.load(Ordering::Acquire),
        THREADS * PER_THREAD
    );
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "jobs of one queue overlapped"
    );
    assert!(
        ran.iter().all(|r| r.load(Ordering::Relaxed) == 1),
        "a job ran twice or never"
    );
    assert_eq!(
        STATE_CONTENDED.load(Ordering::Relaxed),
        0,
        "two threads executed one queue"
    );
    // Ran to the end: the run is released.
    assert!(wait_until(|| queue.pending_jobs() == 0));
}

#[test]
fn push_order_is_kept_per_pushing_thread() {
    const THREADS: usize = 8;
    const PER_THREAD: u32 = 5_000;
    // next expected sequence number per pusher, and the number of misorders
    let actor = Actor::new(([0u32; THREADS], 0usize));
    let done = Arc::new(AtomicUsize::new(0));
    let pushers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (actor, done) = (actor.clone(), done.clone());
            thread::spawn(move || {
                let mut rng = Rng(t as u64 * 7919 + 1);
                for i in 0..PER_THREAD {
                    let done = done.clone();
                    let job = move |(next, bad): &mut ([u32; THREADS], usize)| {
                        if next[t] != i {
                            *bad += 1;
                        }
                        next[t] = i + 1;
                        done.fetch_add(1, Ordering::Release);
                    };
                    // Mix both paths: run-here and hand-off to the global queue.
                    if rng.below(4) == 0 {
                        actor.post(job);
                    } else {
                        actor.do_async(job);
                    }
                }
            })
        })
        .collect();
    for p in pushers {
        p.join().unwrap();
    }
    assert!(wait_until(
        || done.load(Ordering::Acquire) == THREADS * PER_THREAD as usize
    ));
    let (tx, rx) = crossbeam_channel::bounded(1);
    actor.do_async(move |(next, bad)| tx.send((*next, *bad)).unwrap());
    let (next, bad) = rx.recv_timeout(LIMIT).expect("final job ran");
    assert_eq!(bad, 0, "a pusher's jobs ran out of order");
    assert!(next.iter().all(|&n| n == PER_THREAD));
}

#[test]
fn single_pusher_keeps_total_order() {
    const JOBS: u64 = 50_000;
    let actor = Actor::new((0u64, 0usize)); // (next expected, misorders)
    let mut rng = Rng(42);
    for i in 0..JOBS {
        let job = move |(next, bad): &mut (u64, usize)| {
            if *next != i {
                *bad += 1;
            }
            *next = i + 1;
        };
        if rng.below(8) == 0 {
            actor.post(job);
        } else {
            actor.do_async(job);
        }
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    actor.do_async(move |state| tx.send(*state).unwrap());
    assert_eq!(rx.recv_timeout(LIMIT).expect("final job ran"), (JOBS, 0));
}

#[test]
fn a_busy_queue_does_not_monopolise_its_first_pusher() {
    let queue = JobQueue::new();
    let b_pushed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicUsize::new(1)); // counts the first job too
    let ran = Arc::new(AtomicUsize::new(0));

    // B keeps the queue busy: at least 500 jobs of 200 µs queued at all times.
    let b = {
        let (queue, b_pushed, stop, pushed, ran) = (
            queue.clone(),
            b_pushed.clone(),
            stop.clone(),
            pushed.clone(),
            ran.clone(),
        );
        thread::spawn(move || {
            assert!(
                wait_until(|| queue.pending_jobs() > 0),
                "A's first job never arrived"
            );
            let deadline = Instant::now() + Duration::from_secs(3);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if queue.pending_jobs() >= 500 {
                    spin_for(Duration::from_micros(20));
                    continue;
                }
                let ran = ran.clone();
                queue.do_async(move || {
                    spin_for(Duration::from_micros(200));
                    ran.fetch_add(1, Ordering::SeqCst);
                });
                pushed.fetch_add(1, Ordering::SeqCst);
                b_pushed.store(true, Ordering::SeqCst);
            }
        })
    };

    // A becomes the first pusher: its job waits until B has queued more, so
    // A runs a queue that never drains while B pushes.
    let started = Instant::now();
    {
        let (b_pushed, ran) = (b_pushed.clone(), ran.clone());
        queue.do_async(move || {
            wait_until(|| b_pushed.load(Ordering::SeqCst));
            ran.fetch_add(1, Ordering::SeqCst);
        });
    }
    let a_took = started.elapsed();
    let b_was_pushing = !b.is_finished();
    stop.store(true, Ordering::SeqCst);
    b.join().unwrap();

    assert!(
        b_was_pushing,
        "B stopped (deadline) before A returned: A ran the queue for {a_took:?}"
    );
    assert!(
        a_took < Duration::from_secs(2),
        "do_async returned after {a_took:?}"
    );
    // The rest of the queue was handed off and still runs.
    let total = pushed.load(Ordering::SeqCst);
    assert!(total > 1);
    assert!(wait_until(|| ran.load(Ordering::SeqCst) == total));
}

#[test]
fn a_nested_push_goes_to_the_global_queue() {
    let a = JobQueue::new();
    let b = JobQueue::new();
    let in_a = Arc::new(Mutex::new(None::<thread::ThreadId>));
    let nested_inline = Arc::new(AtomicBool::new(false));
    let b_ran = Arc::new(AtomicBool::new(false));
    {
        let (b, in_a, nested_inline, b_ran) = (
            b.clone(),
            in_a.clone(),
            nested_inline.clone(),
            b_ran.clone(),
        );
        a.do_async(move || {
            *in_a.lock() = Some(thread::current().id());
            let in_a2 = in_a.clone();
            b.do_async(move || {
                if *in_a2.lock() == Some(thread::current().id()) {
                    nested_inline.store(true, Ordering::SeqCst);
                }
                b_ran.store(true, Ordering::SeqCst);
            });
            *in_a.lock() = None;
        });
    }
    assert!(wait_until(|| b_ran.load(Ordering::SeqCst)));
    assert!(
        !nested_inline.load(Ordering::SeqCst),
        "B ran inside A's job"
    );
}

#[test]
fn a_panicking_job_does_not_stop_its_queue() {
    let actor = Actor::new(0u32);
    actor.do_async(|n| *n += 1);
    actor.do_async(|_| panic!("job panic (expected by the test)"));
    let (tx, rx) = crossbeam_channel::bounded(1);
    actor.do_async(move |n| {
        *n += 1;
        tx.send(*n).unwrap();
    });
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 2);
}

#[test]
fn timers_never_fire_early_and_none_is_lost() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 125;
    let queues: Vec<JobQueue> = (0..4).map(|_| JobQueue::new()).collect();
    let fired = Arc::new(AtomicUsize::new(0));
    let early = Arc::new(AtomicUsize::new(0));
    let pushers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (queues, fired, early) = (queues.clone(), fired.clone(), early.clone());
            thread::spawn(move || {
                let mut rng = Rng(t as u64 * 31 + 17);
                for i in 0..PER_THREAD {
                    let delay = Duration::from_millis(rng.below(51));
                    let (fired, early) = (fired.clone(), early.clone());
                    let pushed_at = Instant::now();
                    queues[(t + i) % queues.len()].do_timer(delay, move || {
                        if Instant::now() < pushed_at + delay {
                            early.fetch_add(1, Ordering::SeqCst);
                        }
                        fired.fetch_add(1, Ordering::SeqCst);
                    });
                    // Load: plain jobs on the same queues meanwhile.
                    queues[i % queues.len()].do_async(|| spin_for(Duration::from_micros(5)));
                }
            })
        })
        .collect();
    for p in pushers {
        p.join().unwrap();
    }
    assert!(
        wait_until(|| fired.load(Ordering::SeqCst) == THREADS * PER_THREAD),
        "{} of {} timers fired",
        fired.load(Ordering::SeqCst),
        THREADS * PER_THREAD
    );
    assert_eq!(early.load(Ordering::SeqCst), 0, "a timer fired early");
}

#[test]
fn timers_of_one_actor_fire_in_due_order() {
    let actor = Actor::new(Vec::new());
    let delays_ms = [40, 30, 20, 10, 0, 10];
    for (id, ms) in delays_ms.into_iter().enumerate() {
        actor.do_timer(Duration::from_millis(ms), move |order: &mut Vec<usize>| {
            order.push(id)
        });
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    actor.do_timer(Duration::from_millis(60), move |order| {
        tx.send(order.clone()).unwrap()
    });
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), vec![4, 3, 5, 2, 1, 0]);
}

#[test]
fn timers_of_a_dropped_actor_are_skipped() {
    struct State {
        dropped: Arc<AtomicBool>,
    }
    impl Drop for State {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicBool::new(false));
    let actor = Actor::new(State {
        dropped: dropped.clone(),
    });
    {
        let fired = fired.clone();
        actor.do_timer(Duration::from_millis(20), move |_| {
            fired.store(true, Ordering::SeqCst)
        });
    }
    drop(actor);
    assert!(
        dropped.load(Ordering::SeqCst),
        "a pending timer kept the state alive"
    );

    // A later timer on another queue fires after the dropped actor's was due.
    let sentinel = JobQueue::new();
    let sentinel_fired = Arc::new(AtomicBool::new(false));
    {
        let sentinel_fired = sentinel_fired.clone();
        sentinel.do_timer(Duration::from_millis(60), move || {
            sentinel_fired.store(true, Ordering::SeqCst)
        });
    }
    assert!(wait_until(|| sentinel_fired.load(Ordering::SeqCst)));
    assert!(!fired.load(Ordering::SeqCst), "a dropped actor's timer ran");
}

#[test]
fn two_workers_drain_the_global_queue() {
    const QUEUES: usize = 10;
    const PER_QUEUE: usize = 100;
    let sched = private_scheduler();
    let wakers = [
        Arc::new(TestWaker::default()),
        Arc::new(TestWaker::default()),
    ];
    let attachments: Vec<WorkerAttachment> = wakers
        .iter()
        .map(|w| WorkerAttachment::new(sched, w.clone() as Arc<dyn Wake>))
        .collect();
    assert_eq!(sched.attached_workers(), 2);
    let total_wakes = || {
        wakers
            .iter()
            .map(|w| w.wakes.load(Ordering::SeqCst))
            .sum::<usize>()
    };

    // Nobody runs yet: every queue lands in the global queue, and only the
    // first hand-off (empty -> non-empty) wakes a worker.
    let ran = Arc::new(AtomicUsize::new(0));
    let runners = Arc::new(Mutex::new(HashSet::new()));
    let queues: Vec<JobQueue> = (0..QUEUES)
        .map(|_| JobQueue::with_scheduler(sched))
        .collect();
    for _ in 0..PER_QUEUE {
        for q in &queues {
            let (ran, runners) = (ran.clone(), runners.clone());
            q.post(move || {
                runners
                    .lock()
                    .insert(thread::current().name().map(str::to_owned));
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
    }
    assert_eq!(sched.global_len(), QUEUES);
    assert_eq!(
        total_wakes(),
        1,
        "wakes only on the empty -> non-empty transition"
    );

    let workers: Vec<_> = attachments
        .into_iter()
        .zip(wakers.iter().cloned())
        .enumerate()
        .map(|(i, (attachment, waker))| {
            let ran = ran.clone();
            thread::Builder::new()
                .name(format!("test-worker-{i}"))
                .spawn(move || {
                    *waker.thread.lock() = Some(thread::current());
                    let deadline = Instant::now() + LIMIT;
                    while ran.load(Ordering::SeqCst) < QUEUES * PER_QUEUE
                        && Instant::now() < deadline
                    {
                        let now = Instant::now();
                        let next = attachment.run_slice(now + Duration::from_micros(500));
                        let wait = next.map_or(Duration::from_millis(10), |t| {
                            t.saturating_duration_since(now)
                        });
                        thread::park_timeout(wait.min(Duration::from_millis(10)));
                    }
                })
                .unwrap()
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(ran.load(Ordering::SeqCst), QUEUES * PER_QUEUE);
    assert_eq!(sched.global_len(), 0);
    assert_eq!(
        sched.attached_workers(),
        0,
        "dropping the attachments detached them"
    );
    let runners = runners.lock();
    assert!(
        runners.iter().all(|name| name
            .as_deref()
            .is_some_and(|n| n.starts_with("test-worker-"))),
        "jobs ran outside the workers: {runners:?}"
    );
    assert_eq!(STATE_CONTENDED.load(Ordering::Relaxed), 0);
}

#[test]
fn run_slice_reports_timers_and_wakes_only_for_the_earliest() {
    let sched = private_scheduler();
    let me_waker = Arc::new(TestWaker::default());
    let other_waker = Arc::new(TestWaker::default());
    let me = WorkerAttachment::new(sched, me_waker.clone() as Arc<dyn Wake>);
    let _other = WorkerAttachment::new(sched, other_waker.clone() as Arc<dyn Wake>);
    let slice = || Instant::now() + Duration::from_millis(10);

    assert_eq!(me.run_slice(slice()), None, "nothing to do, no timer");

    let queue = JobQueue::with_scheduler(sched);
    let fired = Arc::new(AtomicUsize::new(0));
    let f1 = fired.clone();
    queue.do_timer(Duration::from_millis(30), move || {
        f1.fetch_add(1, Ordering::SeqCst);
    });
    // This thread is worker `me` (it ran a slice), so the other one is woken.
    assert_eq!(
        other_waker.wakes.load(Ordering::SeqCst),
        1,
        "earliest timer wakes a worker"
    );
    assert_eq!(
        me_waker.wakes.load(Ordering::SeqCst),
        0,
        "never wakes the caller"
    );
    let f2 = fired.clone();
    queue.do_timer(Duration::from_millis(60), move || {
        f2.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(
        other_waker.wakes.load(Ordering::SeqCst),
        1,
        "a later timer wakes nobody"
    );

    let first_due = me.run_slice(slice()).expect("a timer is pending");
    assert!(first_due > Instant::now());
    thread::sleep(first_due.saturating_duration_since(Instant::now()));
    let second_due = run_until_idle(&me).expect("the second timer is pending");
    assert_eq!(fired.load(Ordering::SeqCst), 1, "the due timer ran");
    assert!(second_due >= first_due + Duration::from_millis(20));
    thread::sleep(second_due.saturating_duration_since(Instant::now()));
    assert_eq!(run_until_idle(&me), None);
    assert_eq!(fired.load(Ordering::SeqCst), 2);
}

/// Calls `run_slice` until it reports no work due now (a busy machine can
/// end a slice before the global queue is drained); returns its last answer.
fn run_until_idle(worker: &WorkerAttachment) -> Option<Instant> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let next = worker.run_slice(Instant::now() + Duration::from_millis(10));
        match next {
            Some(t) if t <= Instant::now() && Instant::now() < deadline => continue,
            other => return other,
        }
    }
}

#[test]
fn the_fallback_thread_takes_over_when_the_last_worker_detaches() {
    let sched = private_scheduler();
    let waker = Arc::new(TestWaker::default());
    let attachment = WorkerAttachment::new(sched, waker.clone() as Arc<dyn Wake>);
    let queue = JobQueue::with_scheduler(sched);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    queue.post(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(waker.wakes.load(Ordering::SeqCst), 1);
    assert_eq!(
        sched.global_len(),
        1,
        "an attached worker, not the fallback, is in charge"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);

    drop(attachment);
    assert!(
        wait_until(|| ran.load(Ordering::SeqCst) == 1),
        "the fallback thread ran the job"
    );

    // With no worker attached, timers run on the fallback thread too.
    let r = ran.clone();
    queue.do_timer(Duration::from_millis(5), move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert!(wait_until(|| ran.load(Ordering::SeqCst) == 2));
}
