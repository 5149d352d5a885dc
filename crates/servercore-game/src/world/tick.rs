//! The world's tick: the schedule, the phases, and what regions hand each
//! other between them.
//!
//! A thread of its own (the ticker) wakes on a fixed schedule, every
//! `tick` from the world's start, and starts a tick unless one is still
//! running; then the start is owed (counted as an overrun) and the running
//! tick starts the next one as it ends. The ticker only posts jobs: every
//! phase runs as one job per region on the engine's workers (several
//! workers are woken so regions run side by side), and the region that
//! finishes a phase last starts the next one. Nothing waits on a lock held
//! across a phase, on another thread, or on the database.
//!
//! Between phases the regions exchange only what this module keeps:
//! players entering the world (per region, with the first tick they may
//! appear in), players handed from one region to another (between apply
//! and publish), each region's published [`RegionTick`] (read by its
//! neighbours in deliver), and the tick's world chat (one buffer every
//! player gets).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::{Condvar, Mutex};
use servercore::job::Actor;
use servercore_protocol::PosInfo;

use super::border::{Border, Handover, Local, RemoteView};
use super::cells::RegionTick;
use super::grid::Grid;
use super::region::{Entry, Region};
use super::seat::Seat;
use super::{PositionSave, Saver, Transfer, Transferer};
use crate::latency::{LatencyHistogram, LatencySnapshot};
use crate::stats::GameCounters;

/// The numbers a tick runs by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct TickSettings {
    /// Time from one tick's start to the next.
    pub interval: Duration,
    /// Players in a 3×3 block past which its centre cell is crowded (0:
    /// never).
    pub crowd_limit: usize,
    /// Bytes of world chat one tick carries; more is shed.
    pub chat_bytes: usize,
    /// Save moved players every this many ticks (`None`: never).
    pub save_every: Option<u64>,
}

/// A player entering the world.
pub(super) struct Arrival {
    pub seat: Arc<Seat>,
    pub pos: PosInfo,
}

struct PendingArrival {
    arrival: Arrival,
    /// The first tick it may appear in (after an older seat of the same
    /// player has gone).
    not_before: u64,
}

/// The world chat of one tick, shared by every receiver.
#[derive(Debug, Clone, Default)]
pub(super) struct TickChat {
    /// `S_CHAT` packets, in the order the chats were taken.
    pub packets: Bytes,
    /// How many.
    pub count: u64,
}

#[derive(Default)]
struct ChatBuffer {
    packets: BytesMut,
    count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Apply,
    Publish,
    Deliver,
}

struct RunState {
    running: bool,
    /// A scheduled start came while a tick was running.
    owed: bool,
    tick: u64,
    started: Instant,
}

/// What the regions share across the phases of a tick.
pub(super) struct TickShared {
    grid: Grid,
    settings: TickSettings,
    regions: Vec<Actor<Region>>,
    arrivals: Vec<Mutex<Vec<PendingArrival>>>,
    incoming: Vec<Mutex<Vec<Entry>>>,
    published: Vec<Mutex<Arc<RegionTick>>>,
    chat: Mutex<ChatBuffer>,
    tick_chat: Mutex<TickChat>,
    /// Every player in the world (or entering it), by id: its newest seat.
    present: Mutex<HashMap<u64, Arc<Seat>>>,
    run: Mutex<RunState>,
    remaining: AtomicUsize,
    /// The newest tick started.
    current: AtomicU64,
    durations: LatencyHistogram,
    saver: Mutex<Option<Saver>>,
    saves: Mutex<Vec<PositionSave>>,
    /// The running tick's region jobs' time, summed, in nanoseconds.
    work_ns: AtomicU64,
    work: LatencyHistogram,
    counters: Arc<GameCounters>,
    /// The world's border with other nodes' zones, once it is shared.
    border: OnceLock<Arc<Border>>,
    /// The running tick's remote cells (built at its start).
    remote: Mutex<Arc<RemoteView>>,
    /// Hand-overs begun this tick, for the transferer at its end.
    transfers: Mutex<Vec<Transfer>>,
    transferer: Mutex<Option<Transferer>>,
}

impl TickShared {
    pub fn new(
        grid: Grid,
        settings: TickSettings,
        regions: Vec<Actor<Region>>,
        counters: Arc<GameCounters>,
    ) -> TickShared {
        let n = regions.len();
        TickShared {
            grid,
            settings,
            arrivals: (0..n).map(|_| Mutex::default()).collect(),
            incoming: (0..n).map(|_| Mutex::default()).collect(),
            published: (0..n).map(|_| Mutex::default()).collect(),
            regions,
            chat: Mutex::default(),
            tick_chat: Mutex::default(),
            present: Mutex::default(),
            run: Mutex::new(RunState {
                running: false,
                owed: false,
                tick: 0,
                started: Instant::now(),
            }),
            remaining: AtomicUsize::new(0),
            current: AtomicU64::new(0),
            durations: LatencyHistogram::default(),
            saver: Mutex::new(None),
            saves: Mutex::default(),
            work_ns: AtomicU64::new(0),
            work: LatencyHistogram::default(),
            counters,
            border: OnceLock::new(),
            remote: Mutex::default(),
            transfers: Mutex::default(),
            transferer: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &TickSettings {
        &self.settings
    }

    /// Shares the world with other nodes' zones from the next tick; false
    /// if it was shared already.
    pub fn set_border(&self, border: Arc<Border>) -> bool {
        self.border.set(border).is_ok()
    }

    /// The border, once the world is shared.
    pub fn border(&self) -> Option<&Arc<Border>> {
        self.border.get()
    }

    /// The running tick's remote cells.
    pub fn remote(&self) -> Arc<RemoteView> {
        Arc::clone(&self.remote.lock())
    }

    pub fn set_transferer(&self, transferer: Transferer) {
        *self.transferer.lock() = Some(transferer);
    }

    /// Queues a hand-over begun in this tick.
    pub fn transfer(&self, transfer: Transfer) {
        self.transfers.lock().push(transfer);
    }

    /// Hands the tick's hand-overs to the transferer.
    fn flush_transfers(&self) {
        let batch = std::mem::take(&mut *self.transfers.lock());
        if batch.is_empty() {
            return;
        }
        let transferer = self.transferer.lock().clone();
        match transferer {
            Some(transferer) => transferer(batch),
            None => tracing::warn!(
                players = batch.len(),
                "hand-overs with nobody to tell the players (no transferer)"
            ),
        }
    }

    /// The hand-over rule of this tick (only in a shared world).
    pub fn handover(&self) -> Option<Handover> {
        self.border.get().map(|border| border.handover())
    }

    /// Ticks a handed-over player waits on this node for the target to
    /// show it: 10 s.
    pub fn arrival_ticks(&self) -> u64 {
        let ticks = super::ARRIVAL_LIMIT.as_nanos() / self.settings.interval.as_nanos().max(1);
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }

    pub fn set_saver(&self, saver: Saver) {
        *self.saver.lock() = Some(saver);
    }

    /// Queues a region's positions to save with the tick's others.
    pub fn save(&self, mut batch: Vec<PositionSave>) {
        if !batch.is_empty() {
            self.saves.lock().append(&mut batch);
        }
    }

    /// Hands the tick's positions to save to the saver, in one batch.
    fn flush_saves(&self) {
        let batch = std::mem::take(&mut *self.saves.lock());
        if batch.is_empty() {
            return;
        }
        let saver = self.saver.lock().clone();
        if let Some(saver) = saver {
            saver(batch);
        }
    }

    /// Puts a player into the world at the next tick (or, if an older seat
    /// of the same player is still in it, once that one has gone).
    pub fn enter(&self, seat: Arc<Seat>, pos: PosInfo) {
        let cell = self.grid.cell_of(pos.x, pos.y);
        seat.set_entered_cell(cell);
        let mut present = self.present.lock();
        let not_before = match present.insert(seat.player_id, Arc::clone(&seat)) {
            Some(old) => {
                old.evict();
                // The old seat goes at the latest in the tick after the
                // running one; the new one never appears before that.
                self.current.load(Ordering::Acquire) + 1
            }
            None => 0,
        };
        // Queued under the presence lock: a tick whose border view saw
        // the player present (and left it out) takes it in.
        self.arrivals[self.grid.region_of(cell)]
            .lock()
            .push(PendingArrival {
                arrival: Arrival { seat, pos },
                not_before,
            });
    }

    /// The arrivals of `region` that may appear in `tick`.
    pub fn take_arrivals(&self, region: usize, tick: u64) -> Vec<Arrival> {
        let mut pending = self.arrivals[region].lock();
        if pending.is_empty() {
            return Vec::new();
        }
        let mut ready = Vec::new();
        let mut i = 0;
        while i < pending.len() {
            if pending[i].not_before <= tick {
                ready.push(pending.swap_remove(i).arrival);
            } else {
                i += 1;
            }
        }
        ready
    }

    /// The world let `seat` go: it is no longer the player's presence
    /// (unless a newer seat already took its place).
    pub fn forget(&self, seat: &Arc<Seat>) {
        let mut present = self.present.lock();
        if present
            .get(&seat.player_id)
            .is_some_and(|current| Arc::ptr_eq(current, seat))
        {
            present.remove(&seat.player_id);
        }
    }

    pub fn hand_over(&self, region: usize, entries: Vec<Entry>) {
        self.incoming[region].lock().extend(entries);
    }

    pub fn take_incoming(&self, region: usize) -> Vec<Entry> {
        std::mem::take(&mut *self.incoming[region].lock())
    }

    pub fn publish(&self, region: usize, tick: Arc<RegionTick>) {
        *self.published[region].lock() = tick;
    }

    pub fn published(&self, region: usize) -> Arc<RegionTick> {
        Arc::clone(&self.published[region].lock())
    }

    /// The running tick's world chat.
    pub fn tick_chat(&self) -> TickChat {
        self.tick_chat.lock().clone()
    }

    /// Adds one `S_CHAT` packet to the next tick; false (and nothing added)
    /// if the tick's chat is full.
    pub fn push_chat(&self, packet: &[u8]) -> bool {
        let mut chat = self.chat.lock();
        if chat.packets.len() + packet.len() > self.settings.chat_bytes {
            return false;
        }
        chat.packets.extend_from_slice(packet);
        chat.count += 1;
        true
    }

    /// Starts a tick now, or owes one if a tick is still running.
    pub fn start_tick(self: &Arc<Self>) {
        let tick = {
            let mut run = self.run.lock();
            if run.running {
                run.owed = true;
                self.counters.tick_overruns.fetch_add(1, Ordering::Relaxed);
                return;
            }
            run.running = true;
            run.tick += 1;
            run.started = Instant::now();
            run.tick
        };
        self.current.store(tick, Ordering::Release);
        {
            let mut chat = self.chat.lock();
            let count = std::mem::take(&mut chat.count);
            *self.tick_chat.lock() = TickChat {
                packets: chat.packets.split().freeze(),
                count,
            };
        }
        if let Some(border) = self.border.get() {
            // What other nodes sent since the last tick, without the
            // players this node has itself (entering ones included).
            let view = {
                let present = self.present.lock();
                let view = border.build(tick, |id| match present.get(&id) {
                    None => Local::No,
                    Some(seat) => match seat.transferring() {
                        Some(cell) => Local::Leaving(cell),
                        None => Local::Here(seat.entered_cell()),
                    },
                });
                // A player handed in enters where the other node showed
                // it, also when its arrival waits a tick (an older seat
                // of it still here): the view says so this tick only.
                for (id, cell) in &view.handed_in {
                    if let Some(seat) = present.get(id) {
                        seat.set_shown_at(*cell);
                    }
                }
                view
            };
            *self.remote.lock() = Arc::new(view);
        }
        self.run_phase(Phase::Apply, tick);
    }

    fn run_phase(self: &Arc<Self>, phase: Phase, tick: u64) {
        self.remaining.store(self.regions.len(), Ordering::Release);
        for region in &self.regions {
            let shared = Arc::clone(self);
            region.post(move |region| {
                let started = Instant::now();
                match phase {
                    Phase::Apply => region.apply(&shared, tick),
                    Phase::Publish => region.publish(&shared, tick),
                    Phase::Deliver => region.deliver(&shared, tick),
                }
                let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                shared.work_ns.fetch_add(took, Ordering::Relaxed);
                shared.phase_done(phase, tick);
            });
        }
        // Regions side by side: every worker may take one.
        servercore::job::wake_workers(self.regions.len());
    }

    fn phase_done(self: &Arc<Self>, phase: Phase, tick: u64) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        match phase {
            Phase::Apply => self.run_phase(Phase::Publish, tick),
            Phase::Publish => {
                if let Some(border) = self.border.get() {
                    let published: Vec<Arc<RegionTick>> =
                        (0..self.regions.len()).map(|r| self.published(r)).collect();
                    border.send(tick, &published);
                }
                self.run_phase(Phase::Deliver, tick)
            }
            Phase::Deliver => self.finish_tick(),
        }
    }

    fn finish_tick(self: &Arc<Self>) {
        let owed = {
            let mut run = self.run.lock();
            let took = run.started.elapsed();
            run.running = false;
            self.durations.record(took);
            let work = self.work_ns.swap(0, Ordering::Relaxed);
            self.work.record(Duration::from_nanos(work));
            std::mem::take(&mut run.owed)
        };
        self.flush_saves();
        self.flush_transfers();
        self.counters.ticks.fetch_add(1, Ordering::Relaxed);
        if owed {
            self.start_tick();
        }
    }

    /// How long the ticks took, start to end of the last phase.
    pub fn histogram(&self) -> LatencySnapshot {
        self.durations.snapshot()
    }

    /// The work of each tick: its region jobs' run times, summed (the rest
    /// of a tick's duration is waiting for a worker).
    pub fn work_histogram(&self) -> LatencySnapshot {
        self.work.snapshot()
    }

    /// Whether a tick is running now.
    pub fn is_running(&self) -> bool {
        self.run.lock().running
    }

    /// Every region lets go of its players (the world is stopping).
    pub fn release_all(self: &Arc<Self>) {
        for region in &self.regions {
            let shared = Arc::clone(self);
            region.post(move |region| region.release_all(&shared));
        }
    }
}

/// The thread that starts ticks on schedule.
pub(super) struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    pub fn start(shared: Arc<TickShared>) -> std::io::Result<Ticker> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = Arc::clone(&stop);
        let interval = shared.settings.interval.max(Duration::from_millis(1));
        let thread = std::thread::Builder::new()
            .name("servercore-tick".to_owned())
            .spawn(move || {
                let start = Instant::now();
                let step = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
                let mut slot: u64 = 1;
                loop {
                    let due = start + Duration::from_nanos(step.saturating_mul(slot));
                    {
                        let (lock, wake) = &*stopped;
                        let mut stop = lock.lock();
                        while !*stop && Instant::now() < due {
                            wake.wait_until(&mut stop, due);
                        }
                        if *stop {
                            return;
                        }
                    }
                    shared.start_tick();
                    // Slots the ticker itself slept through are skipped, so
                    // the schedule stays where it was.
                    let behind = u64::try_from(start.elapsed().as_nanos() / u128::from(step))
                        .unwrap_or(u64::MAX);
                    slot = (slot + 1).max(behind.saturating_add(1));
                }
            })?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock() = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop();
    }
}
