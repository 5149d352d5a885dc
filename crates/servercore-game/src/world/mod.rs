//! The world: players on a square map, who sees whom (the interest grid),
//! movement, and the regions that share the work.
//!
//! This module owns the world's configuration ([`WorldConfig`]), the shared
//! [`World`] (the map's [`Grid`], one [`Region`] actor per region, the move
//! sequence, the live map for [`World::snapshot`]) and the rules every
//! player's move goes through ([`World::accept_move`]). The submodules:
//! - `grid`: the geometry (cells, regions, clamping, cutting a jump);
//! - `region`: a region's actor state and the visibility bookkeeping;
//! - `limit`: the per-player token buckets and the rate-limited log line.
//!
//! # Semantics
//!
//! - The map is `[0, size)²`, cut into `cell × cell` cells. A player sees
//!   every other player whose cell is at most one cell away in each
//!   direction (the 3×3 block); seeing is symmetric.
//! - Enter: the player appears at its saved position (or a random point for
//!   a player never placed); `S_ENTER_GAME.player` carries it. The newcomer
//!   then gets one `S_SPAWN` listing everyone it sees (if anyone) and each of
//!   them gets an `S_SPAWN` of the newcomer.
//! - `C_MOVE`: the point is clamped into the map (a coordinate that is not a
//!   number counts as 0); then a jump longer than `max_speed ×` (seconds
//!   since the player's last accepted move, or since it entered) `+ 50` is
//!   cut to that length along the same direction. The accepted `PosInfo`
//!   (`object_id` = the mover; `z`, `yaw` and `state` as sent, a `z` or
//!   `yaw` that is not finite as 0) goes out as one `S_MOVE` buffer, carrying
//!   the move's `client_time_us`, to everyone who sees the mover at its new
//!   position, the mover included.
//! - On a cell change, each player that no longer sees the mover gets an
//!   `S_DESPAWN` of it, each that newly sees it an `S_SPAWN` of it (then the
//!   `S_MOVE`); the mover gets one `S_DESPAWN` of all it no longer sees, then
//!   one `S_SPAWN` of all it newly sees, then its `S_MOVE`. So at every
//!   receiver a move's spawns and despawns come before its `S_MOVE`.
//! - Leave (`C_LEAVE_GAME` or a disconnect): everyone who saw the player
//!   gets an `S_DESPAWN` of it; the leaver, if still connected, then gets
//!   `S_LEAVE_GAME` and may enter again. The position is saved.
//!
//! # Regions
//!
//! The cells are grouped into square blocks of `region_cells × region_cells`
//! cells, each block a [`Region`], an [`Actor`]: moves in different regions
//! run on different workers. A region *owns* the players whose position is
//! in it (their session handle and what each of them has been shown) and
//! keeps a *ghost* (identity and position, no handle) of every player of
//! another region whose cell is seen from one of its own cells: the players
//! within one cell of its border.
//!
//! Every change to a player (enter, move, leave) is an [`Event`] numbered
//! from one world-wide sequence. The owning region applies it to its own
//! players and sends the same `Arc<Event>` to every other region owning a
//! cell that sees the old or the new cell; each of those applies it to its
//! own players and updates its ghost. So every player is told of every
//! change by exactly one actor: the region owning it.
//!
//! What a player has been shown is explicit: each owned player keeps a map
//! `known` of the players it has been sent an `S_SPAWN` of (with the
//! sequence number of the last state it was sent). A region sends `S_SPAWN`
//! only of a player not in `known`, `S_MOVE` and `S_DESPAWN` only of one in
//! it, and only for a newer sequence number. So no client ever gets an
//! `S_MOVE` or `S_DESPAWN` of a player it has not been spawned, never two
//! spawns in a row of one player, and never one move twice, however the
//! regions interleave. (A player despawned for a receiver is remembered for
//! two seconds with the last state shown, so that a region the receiver
//! moves into neither spawns it from an older copy nor shows a move it saw
//! before: see `Owned::forgotten` in `region`.)
//!
//! Where two regions decide about one pair of players from positions a
//! moment apart (two players moving at once on either side of a border),
//! the later event corrects the earlier decision: every region sees every
//! event that concerns its players, in each mover's order, so once the
//! players stop, every client's view is exactly the 3×3 rule of the final
//! positions, at the final positions.
//!
//! # Crossing a border
//!
//! A player's moves go through its [`Player`](crate::player::Player) actor,
//! which knows its current region and sends each move there. A move into
//! another region is a *handover*: the old region applies the move to its
//! own players, forwards it to the others, removes the player and sends its
//! state (handle, `known`, recent despawns) with the move to the new region
//! in one job; the new region takes it in, tells the mover what it sees from
//! there (`S_DESPAWN`, `S_SPAWN`, then the `S_MOVE`) and answers the player
//! actor. Until that answer the player actor holds the player's later
//! packets, in order, and sends them to the new region afterwards: no move
//! can reach a region that does not own the player, none is applied twice.
//!
//! Why no event is lost or doubled at the mover: jobs one actor pushes to
//! another run in push order. An event of the old region's own players is
//! applied there either before it pushes the handover (the mover gets it
//! from the old region) or after, and then its forward reaches the new
//! region after the handover (the mover gets it from the new region):
//! never both, never neither. An event from anywhere else (the new region's
//! own players, a third region) reaches the two regions independently. If
//! the old region applies it while it still owns the mover, the mover's
//! `known` carries its sequence number and the new region does not send it
//! again. If the new region applied it before the mover arrived and the old
//! one after the mover left, the mover's `known` is behind the new region's
//! copy, and the new region sends a caught-up `S_MOVE` (`client_time_us` 0)
//! with the copy's position as it takes the mover in.
//!
//! # Backpressure
//!
//! The session handler drops moves and chats past the per-player token
//! buckets (`move_rate`, `chat_rate`) before they become jobs; the player
//! actor drops a move whose region has `queue_limit` jobs waiting (and a
//! chat when the room has), counted in [`GameStats`](crate::GameStats) and
//! logged at most once a second. Enters, leaves, handovers and forwarded
//! events are never dropped: the queues they add to are bounded by the
//! moves and players let in.

pub mod grid;
pub mod limit;
pub mod region;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use servercore::job::Actor;
use servercore::packet::Rate;
use servercore::{SessionHandle, SessionId};
use servercore_protocol::{ObjectInfo, PosInfo};

pub use grid::{Cell, Grid, GridError};
pub use limit::TokenBucket;
pub use region::Region;

use crate::stats::{bump, GameCounters};
use limit::LogLimiter;

/// The length a jump may always have, whatever the time since the last
/// move (network jitter).
pub const JUMP_ALLOWANCE: f64 = 50.0;

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
    /// Most jobs waiting in one region (or the room) before new moves (or
    /// chats) are shed.
    pub queue_limit: usize,
}

impl Default for WorldConfig {
    /// A 2000 × 2000 map of 100 × 100 cells in regions of 5 × 5 cells (16
    /// regions), 300 units/s, moves 20/s (burst 40) and chats 20/s (burst
    /// 40) per player, 4096 queued jobs per region.
    fn default() -> Self {
        WorldConfig {
            size: 2000.0,
            cell: 100.0,
            max_speed: 300.0,
            region_cells: 5,
            move_rate: Some(Rate::per_second(20).burst(40)),
            chat_rate: Some(Rate::per_second(20).burst(40)),
            queue_limit: 4096,
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

/// What happened to a player.
#[derive(Debug)]
pub enum Change {
    /// It entered the world.
    Enter,
    /// It moved; the `S_MOVE` every receiver gets (one buffer).
    Move(Bytes),
    /// It left the world.
    Leave,
}

/// One change to one player, shared by every region that applies it.
#[derive(Debug)]
pub struct Event {
    /// The player.
    pub subject: u64,
    /// World-wide sequence number: later events of a player are larger.
    pub seq: u64,
    /// The player's name and kind.
    pub identity: Arc<Identity>,
    /// The position after the change (before it, for a leave).
    pub pos: PosInfo,
    /// The cell before the change (none for an enter).
    pub old_cell: Option<Cell>,
    /// The cell after the change (the cell left, for a leave).
    pub new_cell: Cell,
    /// What happened.
    pub change: Change,
}

impl Event {
    /// The `ObjectInfo` an `S_SPAWN` of the subject carries.
    pub fn object_info(&self) -> ObjectInfo {
        object_info(self.subject, &self.identity, &self.pos)
    }
}

fn object_info(id: u64, identity: &Identity, pos: &PosInfo) -> ObjectInfo {
    ObjectInfo {
        object_id: id,
        player_type: identity.player_type,
        pos_info: Some(*pos),
        name: identity.name.clone(),
    }
}

/// A region's owned players' positions (`player_id → (x, y)`), shared
/// with the snapshot.
pub type Published = Arc<Mutex<HashMap<u64, (f32, f32)>>>;

/// Called by a region with its index once it owns the player (after an
/// enter or a handover).
pub type Placed = Box<dyn FnOnce(usize) + Send>;

/// Called by a region once a player has left it.
pub type Left = Box<dyn FnOnce() + Send>;

/// What a move came to: the accepted position and what was done to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AcceptedMove {
    /// The position the world takes.
    pub pos: PosInfo,
    /// A coordinate was outside the map.
    pub clamped: bool,
    /// The jump was longer than the speed allows and was cut.
    pub cut: bool,
}

/// The world shared by every player: the map and its regions.
pub struct World {
    grid: Grid,
    max_speed: f32,
    queue_limit: usize,
    regions: Vec<Actor<Region>>,
    /// Each region's owned players' positions, for [`World::snapshot`].
    published: Vec<Published>,
    seq: AtomicU64,
    counters: Arc<GameCounters>,
    shed_log: LogLimiter,
}

impl World {
    /// The world `config` describes, counting into `counters`.
    pub fn new(config: &WorldConfig, counters: Arc<GameCounters>) -> Result<World, GridError> {
        if !(config.max_speed.is_finite() && config.max_speed >= 0.0) {
            return Err(GridError::new(format!(
                "max speed {} must be a finite number of at least 0",
                config.max_speed
            )));
        }
        let grid = Grid::new(config.size, config.cell, config.region_cells)?;
        let mut regions = Vec::with_capacity(grid.region_count());
        let mut published = Vec::with_capacity(grid.region_count());
        for index in 0..grid.region_count() {
            let map = Arc::new(Mutex::new(HashMap::new()));
            regions.push(Actor::new(Region::new(
                index,
                grid.clone(),
                Arc::clone(&counters),
                Arc::clone(&map),
            )));
            published.push(map);
        }
        Ok(World {
            grid,
            max_speed: config.max_speed,
            queue_limit: config.queue_limit.max(1),
            regions,
            published,
            seq: AtomicU64::new(1),
            counters,
            shed_log: LogLimiter::new(Duration::from_secs(1)),
        })
    }

    /// The map.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Every player in the world now, as `(player_id, x, y)`, sorted by
    /// player id. Cheap: one uncontended lock per region, no job; a player
    /// crossing a border at this moment may be missing.
    pub fn snapshot(&self) -> Vec<(u64, f32, f32)> {
        let mut players: Vec<(u64, f32, f32)> = Vec::new();
        for map in &self.published {
            players.extend(map.lock().iter().map(|(id, (x, y))| (*id, *x, *y)));
        }
        players.sort_by_key(|(id, _, _)| *id);
        players
    }

    /// The next event sequence number.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `region` has too many jobs waiting to take another move;
    /// counted and logged (at most once a second) when it has.
    pub fn shed_move(&self, region: usize) -> bool {
        let pending = self.regions[region].pending_jobs();
        if pending < self.queue_limit {
            return false;
        }
        bump(&self.counters.moves_dropped_queue_full);
        if self.shed_log.allow() {
            tracing::warn!(
                region,
                pending,
                limit = self.queue_limit,
                dropped = self
                    .counters
                    .moves_dropped_queue_full
                    .load(Ordering::Relaxed),
                "region overloaded: shedding moves"
            );
        }
        true
    }

    /// Whether an actor with `pending` jobs is past the queue limit.
    pub fn over_queue_limit(&self, pending: usize) -> bool {
        pending >= self.queue_limit
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

    /// Puts a player into the world at `event.pos` (an [`Change::Enter`]
    /// event); `placed` gets the region that owns it.
    pub fn enter(self: &Arc<Self>, handle: SessionHandle, event: Event, placed: Placed) {
        let region = self.grid.region_of(event.new_cell);
        let world = Arc::clone(self);
        self.regions[region]
            .do_async(move |state| state.enter(&world, handle, Arc::new(event), placed));
    }

    /// Sends an accepted move to the region owning the player; `crossing`
    /// (for a move into another region) gets the new region once the
    /// handover is done.
    pub fn move_player(self: &Arc<Self>, region: usize, event: Event, crossing: Option<Placed>) {
        let world = Arc::clone(self);
        self.regions[region]
            .do_async(move |state| state.own_move(&world, Arc::new(event), crossing));
    }

    /// Takes the player of `session` out of the world (a [`Change::Leave`]
    /// event), sending it `S_LEAVE_GAME` if `tell` and it is still
    /// connected.
    pub fn leave(
        self: &Arc<Self>,
        region: usize,
        event: Event,
        session: SessionId,
        tell: bool,
        left: Left,
    ) {
        let world = Arc::clone(self);
        self.regions[region]
            .do_async(move |state| state.leave(&world, Arc::new(event), session, tell, left));
    }

    /// Sends `event` to every region in `targets` but `skip`.
    fn forward(&self, event: &Arc<Event>, targets: &[usize], skip: [usize; 2]) {
        for &region in targets {
            if skip.contains(&region) {
                continue;
            }
            let event = Arc::clone(event);
            self.regions[region].do_async(move |state| state.apply_remote(&event));
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
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_busy_region_sheds_moves() {
        let counters = Arc::new(GameCounters::default());
        let config = WorldConfig {
            queue_limit: 3,
            ..WorldConfig::default()
        };
        let world = World::new(&config, Arc::clone(&counters)).unwrap();
        assert!(!world.shed_move(0));
        // One job holds the region while two more wait behind it.
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let region = world.regions[0].clone();
        let blocker = std::thread::spawn(move || {
            region.do_async(move |_| {
                started_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(10));
            });
        });
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        world.regions[0].do_async(|_| {});
        world.regions[0].do_async(|_| {});
        assert!(world.shed_move(0));
        assert!(world.shed_move(0));
        assert!(!world.shed_move(1), "other regions are not affected");
        assert_eq!(counters.moves_dropped_queue_full.load(Ordering::Relaxed), 2);
        release_tx.send(()).unwrap();
        blocker.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while world.regions[0].pending_jobs() > 0 {
            assert!(Instant::now() < deadline, "the region never drained");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!world.shed_move(0));
    }

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
