//! The world: players on a square map, who sees whom (the interest grid),
//! movement, and the tick that tells every player what changed.
//!
//! This module owns the world's configuration ([`WorldConfig`]), the shared
//! [`World`] (the map's [`Grid`], one [`Region`] actor per block of cells,
//! the tick and its schedule, the live map for [`World::snapshot`]) and the
//! rules every player's move goes through ([`World::accept_move`]). The
//! submodules:
//! - `grid`: the geometry (cells, regions, clamping, cutting a jump);
//! - `seat`: a player's [`Seat`], where its actor leaves moves and a leave
//!   for the next tick;
//! - `tick`: the schedule, the three phases of a tick, and what regions
//!   hand each other between them;
//! - `region`: a region's players and its part of each phase;
//! - `cells`: what a tick publishes per cell, and the packets built from it;
//! - `limit`: the per-player token buckets and the rate-limited log line;
//! - `border`: the cells that cross a zone border to other nodes (one
//!   world across nodes, see [`crate::zones`]).
//!
//! # Semantics
//!
//! - The map is `[0, size)²`, cut into `cell × cell` cells. A player sees
//!   every other player whose cell is at most one cell away in each
//!   direction (the 3×3 block); seeing is symmetric.
//! - Enter: the player appears at its saved position (or a random point for
//!   a player never placed); `S_ENTER_GAME.player` carries it.
//! - `C_MOVE`: the point is clamped into the map (a coordinate that is not a
//!   number counts as 0); then a jump longer than `max_speed ×` (seconds
//!   since the player's last accepted move, or since it entered) `+ 50` is
//!   cut to that length along the same direction. The accepted `PosInfo`
//!   (`object_id` = the mover; `z`, `yaw` and `state` as sent, a `z` or
//!   `yaw` that is not finite as 0) is the move.
//! - Leave (`C_LEAVE_GAME` or a disconnect): the leaver, if it asked, gets
//!   `S_LEAVE_GAME` and may enter again. The position is saved.
//!
//! # The tick
//!
//! What a player is told is decided once per tick (`tick`, default 50 ms),
//! from where everyone stands at the tick's end, and reaches it as **one
//! write**. Let V_t(r) be the players in the 3×3 block around r's cell at
//! the end of tick t. At tick t, r gets, in this order: one `S_DESPAWN` of
//! V_{t-1} \ V_t, one `S_SPAWN` of V_t \ V_{t-1} (split into packets under
//! 64 KiB for a crowd), the tick's `S_MOVE`s of the players in V_t (its
//! own included), then the tick's world chat. So no client ever gets an
//! `S_MOVE` of a player it was not spawned, and nothing is kept per pair of
//! players: only players and receivers that changed cell cause spawns or
//! despawns.
//!
//! Each cell's `S_MOVE`s of a tick are encoded once, into one buffer; the
//! receivers standing in one cell share one view of their 3×3 block (the
//! nine cells' buffers, concatenated once); a receiver's write is that view,
//! its own spawns and despawns (shared too, by everyone who stayed in the
//! cell) and the tick's chat buffer, queued as a batch of shared `Bytes`.
//! Per delivered move the server does no encoding, no copy and no lookup.
//!
//! # Regions
//!
//! The cells are grouped into square blocks of `region_cells ×
//! region_cells` cells, each block a [`Region`], an [`Actor`]. A region owns
//! the players standing in its cells. A tick runs in three phases, each one
//! job per region on whichever worker takes it (module `tick`): apply (take
//! arrivals, moves and leaves; hand players now standing in another region
//! to it), publish (each cell's moves, members and departures), deliver
//! (every owned player's write, from the published cells of its block). A
//! player crossing a region border changes owner between apply and
//! publish; nothing is forwarded per move between regions.
//!
//! # Crowds
//!
//! A receiver whose 3×3 block holds more than `crowd_limit` players is in a
//! crowd: instead of every move of everyone, it gets its own moves as
//! always, and each tick the latest position (an `S_MOVE` with
//! `client_time_us` 0) of about one player in k of its block, a different
//! share each tick (k = ⌈4 × players in the block / crowd_limit⌉), of those
//! that moved lately. So every move still reaches a crowd's receivers
//! within k ticks, a receiver gets about `crowd_limit / 4` positions per
//! tick however big the crowd (32 at the default limit of 128: 640 a second
//! at 20 Hz), and a crowd that stands still costs nothing.
//! EVE's time dilation is the anchor: the crowd slows down, the server does
//! not. Counted in [`GameStats`](crate::GameStats) (`crowded_cells`,
//! `thinned_deliveries`).
//!
//! # Backpressure
//!
//! The session handler drops moves and chats past the per-player token
//! buckets (`move_rate`, `chat_rate`) before they become jobs; a player's
//! seat holds at most `max_pending_moves` moves for the next tick, and one
//! tick carries at most `chat_bytes_per_tick` of world chat; what is past
//! either is dropped, counted and logged at most once a second.

pub mod border;
pub mod cells;
pub mod grid;
pub mod limit;
pub mod region;
pub mod seat;
pub mod tick;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use servercore::job::Actor;
use servercore::packet::Rate;
use servercore::SessionHandle;
use servercore_protocol::PosInfo;

pub use grid::{Cell, Grid, GridError};
pub use limit::TokenBucket;
pub use region::{Published, Region};
pub use seat::{MoveRefused, Seat};

use crate::latency::LatencySnapshot;
use crate::stats::{bump, GameCounters};
use limit::LogLimiter;
use tick::{TickSettings, TickShared, Ticker};

/// The length a jump may always have, whatever the time since the last
/// move (network jitter).
pub const JUMP_ALLOWANCE: f64 = 50.0;

/// The world's tick by default: 50 ms, 20 Hz.
pub const DEFAULT_TICK: Duration = Duration::from_millis(50);

/// Players in a 3×3 block past which it is a crowd, by default.
pub const DEFAULT_CROWD_LIMIT: usize = 128;

/// How often moved players' positions are saved, by default: 10 s.
pub const DEFAULT_SAVE_INTERVAL: Duration = Duration::from_secs(10);

/// One position to save: the player, its account ("" for a guest) and
/// where it stands.
#[derive(Debug, Clone)]
pub struct PositionSave {
    /// The account (routes the save to that account's database thread).
    pub account: Arc<str>,
    /// The player.
    pub player_id: u64,
    /// Where it stands.
    pub pos: PosInfo,
}

/// How long a player handed over to another node's zone stays in this
/// node's world waiting for the target to show it: 10 s.
pub const ARRIVAL_LIMIT: Duration = Duration::from_secs(10);

/// A player whose position passed into another node's zone (see
/// [`crate::zones`]): the world stopped taking its moves; the game saves
/// the position, tells the client where to go, and closes its session.
/// The world keeps showing it until the target node's border cells show
/// it (or [`ARRIVAL_LIMIT`] passes).
pub struct Transfer {
    /// The player's seat (its account and session).
    pub seat: Arc<Seat>,
    /// Where it stands.
    pub pos: PosInfo,
    /// The node whose zone it stands in.
    pub target: String,
}

/// Takes a tick's hand-overs. Called on a worker at the tick's end: it
/// must only hand them on, never wait.
pub type Transferer = Arc<dyn Fn(Vec<Transfer>) + Send + Sync>;

/// Takes a region's batch of positions to save. Called on a worker (from a
/// tick's apply phase): it must only hand the batch on (to the database
/// threads), never wait.
pub type Saver = Arc<dyn Fn(Vec<PositionSave>) + Send + Sync>;

/// The world's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    /// The map's side (`--world-size`).
    pub size: f32,
    /// A cell's side (`--cell`).
    pub cell: f32,
    /// Fastest movement, in map units per second (`--max-speed`).
    pub max_speed: f32,
    /// A region's side, in cells.
    pub region_cells: u32,
    /// Each player's accepted moves (`None`: no limit); excess is dropped.
    pub move_rate: Option<Rate>,
    /// Each player's accepted chats (`None`: no limit); excess is dropped.
    pub chat_rate: Option<Rate>,
    /// Time from one tick's start to the next (`--tick-ms`).
    pub tick: Duration,
    /// Players in a 3×3 block past which it is a crowd and its receivers
    /// get thinned positions (`--crowd-limit`; 0: never).
    pub crowd_limit: usize,
    /// Most moves one player may have waiting for the next tick; more are
    /// dropped.
    pub max_pending_moves: usize,
    /// Most bytes of world chat one tick carries; more is dropped.
    pub chat_bytes_per_tick: usize,
    /// No ticks on a schedule: each runs when [`World::step`] asks (tests
    /// and tools that drive the clock themselves).
    pub manual_ticks: bool,
    /// How often the positions of players who moved are saved, batched,
    /// through the [`Saver`] (`--save-interval`; `None`: only when a player
    /// leaves). The regions take turns, so saves spread over the interval.
    pub save_interval: Option<Duration>,
}

impl Default for WorldConfig {
    /// A 2000 × 2000 map of 100 × 100 cells in regions of 5 × 5 cells (16
    /// regions), 300 units/s, moves 20/s (burst 40) and chats 20/s (burst
    /// 40) per player, a 50 ms tick, crowds past 128 players in a block,
    /// 16 moves waiting per player and 64 KiB of chat per tick.
    fn default() -> Self {
        WorldConfig {
            size: 2000.0,
            cell: 100.0,
            max_speed: 300.0,
            region_cells: 5,
            move_rate: Some(Rate::per_second(20).burst(40)),
            chat_rate: Some(Rate::per_second(20).burst(40)),
            tick: DEFAULT_TICK,
            crowd_limit: DEFAULT_CROWD_LIMIT,
            max_pending_moves: 16,
            chat_bytes_per_tick: 64 * 1024,
            manual_ticks: false,
            save_interval: Some(DEFAULT_SAVE_INTERVAL),
        }
    }
}

/// A player's name and kind: what an `S_SPAWN` shows besides the position.
#[derive(Debug)]
pub struct Identity {
    /// Display name.
    pub name: String,
    /// The protocol's `PlayerType` number.
    pub player_type: i32,
}

/// Called once the world has let a player go.
pub type Left = Box<dyn FnOnce() + Send>;

/// What a move came to: the accepted position and what was done to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AcceptedMove {
    /// The position the world takes.
    pub pos: PosInfo,
    /// A coordinate was outside the map.
    pub clamped: bool,
    /// The jump was longer than the speed allows and was disconnected.
    pub cut: bool,
}

/// The world shared by every player: the map, its regions and the tick.
pub struct World {
    grid: Grid,
    max_speed: f32,
    max_pending_moves: usize,
    shared: Arc<TickShared>,
    /// Each region's owned players' positions, for [`World::snapshot`].
    published: Vec<Published>,
    ticker: Mutex<Option<Ticker>>,
    counters: Arc<GameCounters>,
    move_shed_log: LogLimiter,
}

impl World {
    /// The world `config` describes, counting into `counters`; its tick
    /// starts at once.
    pub fn new(config: &WorldConfig, counters: Arc<GameCounters>) -> Result<World, GridError> {
        if !(config.max_speed.is_finite() && config.max_speed >= 0.0) {
            return Err(GridError::new(format!(
                "max speed {} must be a finite number of at least 0",
                config.max_speed
            )));
        }
        if config.tick.is_zero() || config.tick > Duration::from_secs(10) {
            return Err(GridError::new(format!(
                "tick {:?} must be above 0 and at most 10 s",
                config.tick
            )));
        }
        let grid = Grid::new(config.size, config.cell, config.region_cells)?;
        let mut regions = Vec::with_capacity(grid.region_count());
        let mut published = Vec::with_capacity(grid.region_count());
        for index in 0..grid.region_count() {
            let map: Published = Arc::default();
            regions.push(Actor::new(Region::new(
                index,
                grid.clone(),
                Arc::clone(&counters),
                Arc::clone(&map),
            )));
            published.push(map);
        }
        let settings = TickSettings {
            interval: config.tick,
            crowd_limit: config.crowd_limit,
            chat_bytes: config.chat_bytes_per_tick.max(1),
            save_every: config
                .save_interval
                .filter(|every| !every.is_zero())
                .map(|every| {
                    let ticks = every.as_nanos().div_ceil(config.tick.as_nanos().max(1));
                    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
                }),
        };
        let shared = Arc::new(TickShared::new(
            grid.clone(),
            settings,
            regions,
            Arc::clone(&counters),
        ));
        let ticker = match config.manual_ticks {
            true => None,
            false => Some(Ticker::start(Arc::clone(&shared)).map_err(|error| {
                GridError::new(format!("cannot start the tick thread: {error}"))
            })?),
        };
        Ok(World {
            grid,
            max_speed: config.max_speed,
            max_pending_moves: config.max_pending_moves.max(1),
            shared,
            published,
            ticker: Mutex::new(ticker),
            counters,
            move_shed_log: LogLimiter::new(Duration::from_secs(1)),
        })
    }

    /// The map.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// The time between ticks.
    pub fn tick_interval(&self) -> Duration {
        self.shared.settings().interval
    }

    /// Every player in the world at the end of the last tick, as
    /// `(player_id, x, y)`, sorted by player id. Cheap: one uncontended
    /// lock per region, no job.
    pub fn snapshot(&self) -> Vec<(u64, f32, f32)> {
        let mut players: Vec<(u64, f32, f32)> = Vec::new();
        for map in &self.published {
            players.extend(map.lock().iter().copied());
        }
        players.sort_by_key(|(id, _, _)| *id);
        players
    }

    /// Runs one tick now and waits (up to `limit`) until it has ended;
    /// returns whether it did. Meant for a world with
    /// [`WorldConfig::manual_ticks`]: on a schedule it may overlap a
    /// scheduled tick and count as an overrun.
    pub fn step(&self, limit: Duration) -> bool {
        let before = self
            .counters
            .ticks
            .load(std::sync::atomic::Ordering::Acquire);
        self.shared.start_tick();
        let deadline = std::time::Instant::now() + limit;
        while self
            .counters
            .ticks
            .load(std::sync::atomic::Ordering::Acquire)
            <= before
        {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Shares this world with other nodes' zones as `link` says (see
    /// `border`): from the next tick, border cells go out after every
    /// publish and the other nodes' come into every deliver. Once only;
    /// false if it was shared already.
    pub fn share(&self, link: border::BorderLink) -> bool {
        let border = border::Border::new(link, self.grid.clone(), self.shared.settings().interval);
        self.shared.set_border(Arc::new(border))
    }

    /// A border message from another node (checked, then kept for the
    /// next tick); ignored while the world is not shared.
    pub fn border_in(&self, payload: bytes::Bytes) {
        if let Some(border) = self.shared.border() {
            border.take_in(payload);
        }
    }

    /// The border's counters and zone map (`None`: not shared).
    pub fn border_stats(&self) -> Option<border::BorderStats> {
        self.shared.border().map(|border| border.stats())
    }

    /// The zone map as of the last tick (`None`: not shared).
    pub fn zone_map(&self) -> Option<Arc<crate::zones::ZoneMap>> {
        self.shared.border().map(|border| border.zone_map())
    }

    /// Where hand-overs to other nodes' zones go (see [`Transfer`]).
    pub fn set_transferer(&self, transferer: Transferer) {
        self.shared.set_transferer(transferer);
    }

    /// Where the periodic saves go (see [`WorldConfig::save_interval`]);
    /// until it is set, none is made.
    pub fn set_saver(&self, saver: Saver) {
        self.shared.set_saver(saver);
    }

    /// How long the ticks have taken (start to the end of the last phase).
    pub fn tick_histogram(&self) -> LatencySnapshot {
        self.shared.histogram()
    }

    /// The CPU work of each tick: its region jobs' run times, summed over
    /// every worker (a tick whose duration is far above its work waited
    /// for busy workers).
    pub fn tick_work_histogram(&self) -> LatencySnapshot {
        self.shared.work_histogram()
    }

    /// A random point on the map for a player never placed.
    pub fn random_pos(&self, player_id: u64) -> PosInfo {
        let mut state = limit::seed() ^ player_id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut coordinate = || {
            let unit = (limit::splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32;
            self.grid.clamp(unit * self.grid.size())
        };
        PosInfo {
            object_id: player_id,
            x: coordinate(),
            y: coordinate(),
            ..PosInfo::default()
        }
    }

    /// A saved position, checked against this map (a smaller map than when
    /// it was saved clamps it).
    pub fn restore_pos(&self, player_id: u64, x: f32, y: f32, z: f32, yaw: f32) -> PosInfo {
        PosInfo {
            object_id: player_id,
            x: self.grid.clamp(x),
            y: self.grid.clamp(y),
            z: finite_or_zero(z),
            yaw: finite_or_zero(yaw),
            state: 0,
        }
    }

    /// Applies the movement rules to a move from `from` to `requested`,
    /// `since_last` after the player's previous accepted move.
    pub fn accept_move(
        &self,
        from: &PosInfo,
        requested: &PosInfo,
        since_last: Duration,
    ) -> AcceptedMove {
        let x = self.grid.clamp(requested.x);
        let y = self.grid.clamp(requested.y);
        let clamped = x != requested.x || y != requested.y;
        let max_len = f64::from(self.max_speed) * since_last.as_secs_f64() + JUMP_ALLOWANCE;
        let ((x, y), cut) = grid::limit_jump((from.x, from.y), (x, y), max_len);
        AcceptedMove {
            pos: PosInfo {
                object_id: from.object_id,
                x,
                y,
                z: finite_or_zero(requested.z),
                yaw: finite_or_zero(requested.yaw),
                state: requested.state,
            },
            clamped,
            cut,
        }
    }

    /// Puts player `player_id` into the world at `pos` (from the next
    /// tick), played through `handle`; returns its seat. A seat of the same
    /// player still in the world (an older session) leaves first.
    pub fn enter(
        &self,
        handle: SessionHandle,
        account: Arc<str>,
        player_id: u64,
        identity: Arc<Identity>,
        pos: PosInfo,
    ) -> Arc<Seat> {
        let seat = Arc::new(Seat::new(
            player_id,
            account,
            identity,
            handle,
            self.max_pending_moves,
        ));
        let pos = PosInfo {
            object_id: player_id,
            ..pos
        };
        self.shared.enter(Arc::clone(&seat), pos);
        bump(&self.counters.world_enters);
        seat
    }

    /// Asks the world to let `seat`'s player go at the next tick (`tell`:
    /// send it `S_LEAVE_GAME`); `left` is called once it has.
    pub fn leave(&self, seat: &Seat, tell: bool, left: Left) {
        seat.leave(tell, left);
        bump(&self.counters.world_leave_requests);
    }

    /// Queues an accepted move of `seat`'s player for the next tick; a
    /// move past the seat's bound is dropped, counted and logged.
    pub fn push_move(&self, seat: &Seat, pos: PosInfo, client_time_us: u64) {
        match seat.push_move(pos, client_time_us) {
            Ok(()) => {}
            Err(MoveRefused::Gone) => bump(&self.counters.moves_dropped_not_in_world),
            Err(MoveRefused::Full) => {
                bump(&self.counters.moves_dropped_queue_full);
                if self.move_shed_log.allow() {
                    tracing::warn!(
                        player_id = seat.player_id,
                        limit = self.max_pending_moves,
                        dropped = self
                            .counters
                            .moves_dropped_queue_full
                            .load(std::sync::atomic::Ordering::Relaxed),
                        "a player's moves wait for a tick that is late: shedding moves"
                    );
                }
            }
        }
    }

    /// Adds one `S_CHAT` packet to the next tick's world chat; false (and
    /// nothing added) if the tick's chat is full (the caller counts it:
    /// see `GameContext::admit_chat`).
    pub fn push_chat(&self, packet: &[u8]) -> bool {
        self.shared.push_chat(packet)
    }

    /// Stops the tick and lets every player still in the world go (their
    /// leaves are answered). Waits up to `limit` for a running tick.
    pub fn stop(&self, limit: Duration) {
        if let Some(mut ticker) = self.ticker.lock().take() {
            ticker.stop();
        }
        let deadline = std::time::Instant::now() + limit;
        while self.shared.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.shared.release_all();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut ticker) = self.ticker.get_mut().take() {
            ticker.stop();
        }
    }
}

fn finite_or_zero(v: f32) -> f32 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_are_clamped_then_cut() {
        let counters = Arc::new(GameCounters::default());
        let config = WorldConfig {
            size: 600.0,
            max_speed: 100.0,
            ..WorldConfig::default()
        };
        let world = World::new(&config, counters).unwrap();
        let from = PosInfo {
            object_id: 7,
            x: 10.0,
            y: 10.0,
            ..PosInfo::default()
        };
        let to = |x, y| PosInfo {
            object_id: 99, // ignored: the mover is `from`'s
            x,
            y,
            z: f32::NAN,
            yaw: 45.0,
            state: 2,
        };
        // One second: 100 + 50 allowed.
        let accepted = world.accept_move(&from, &to(10.0, 1000.0), Duration::from_secs(1));
        assert_eq!(
            accepted,
            AcceptedMove {
                pos: PosInfo {
                    object_id: 7,
                    x: 10.0,
                    y: 160.0,
                    z: 0.0,
                    yaw: 45.0,
                    state: 2
                },
                clamped: true,
                cut: true,
            }
        );
        let near = world.accept_move(&from, &to(-5.0, 10.0), Duration::ZERO);
        assert_eq!(
            (near.pos.x, near.pos.y, near.clamped, near.cut),
            (0.0, 10.0, true, false)
        );
        let nan = world.accept_move(&from, &to(f32::NAN, 20.0), Duration::ZERO);
        assert_eq!((nan.pos.x, nan.pos.y, nan.clamped), (0.0, 20.0, true));
    }
}
