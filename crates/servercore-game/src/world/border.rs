//! Border cells: what crosses a zone border each tick (see [`crate::zones`]
//! for the map of zones).
//!
//! After every tick's publish phase, a node that shares its world with
//! others sends each node that sees one of its cells (the owners of the
//! cell's column and of the columns next to it) one [`BorderTick`]: the
//! players standing in those cells at the tick's end (their `ObjectInfo`,
//! the very entries its own `S_SPAWN`s are made of) and the cells' move
//! buffers (the tick's `S_MOVE`s, as its own receivers get them). One NATS
//! message per neighbour per tick, sent even when empty (so a quiet border
//! is told from a dead one).
//!
//! The receiving node checks each message as hostile input (size, decoding,
//! a known origin, at most [`MAX_BORDER_MEMBERS`] players and
//! [`MAX_BORDER_MOVES`] moves, every move a well-formed `S_MOVE` of a
//! listed player, names and positions bounded; what fails is dropped and
//! counted, logged at most once a second), keeps at most
//! [`INBOX_DEPTH`] unread messages per origin, and at the start of its
//! next tick folds them into a [`RemoteView`]: per remote cell, the same
//! [`CellTick`] a local region publishes (members with the cell each stood
//! in at the end of the previous tick, departures, one move buffer encoded
//! here, never the bytes from the network). The deliver phase reads remote
//! cells beside its local ones, so players across a border are spawned,
//! moved and despawned by exactly the rules of one node, one tick late.
//!
//! The membership of a border cell is sent whole every tick, not as
//! changes: a lost message costs the moves it carried, never a spawn or a
//! despawn (the next one puts the cell right). An origin silent for
//! [`STALE_AFTER`] (NATS down, the node dead) is dropped from the view, so
//! its players despawn; they come back with its next message. A player
//! this node has in its own world is never shown from another's message.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use prost::Message as _;
use servercore::packet::{Frames, Packet as _};
use servercore_protocol::{ObjectInfo, PosInfo, SMove};

use super::cells::{self, CellTick, Departure, Member, RegionTick};
use super::grid::{Cell, Grid};
use super::limit::LogLimiter;
use super::Identity;
use crate::zones::ZoneMap;

/// Border messages for a node: this prefix, then the node's name.
pub const BORDER_PREFIX: &str = "servercore.world.border";

/// Largest border message taken off the wire (and sent): 1 MiB, NATS's
/// default payload limit.
pub const MAX_BORDER_PAYLOAD: usize = 1024 * 1024;

/// Most players one border message may list.
pub const MAX_BORDER_MEMBERS: usize = 8192;

/// Most `S_MOVE`s one border message may carry.
pub const MAX_BORDER_MOVES: usize = 32 * 1024;

/// Most moves of one remote player taken per tick; more are dropped.
pub const MAX_REMOTE_MOVES: usize = 32;

/// Longest player name taken from another node, in bytes.
pub const MAX_REMOTE_NAME: usize = 128;

/// Unread border messages kept per origin; older ones are dropped.
pub const INBOX_DEPTH: usize = 8;

/// An origin silent this long is dropped from the view (its players
/// despawn).
pub const STALE_AFTER: Duration = Duration::from_secs(1);

/// One node's border cells of one tick, as sent on
/// `servercore.world.border.<receiver>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BorderTick {
    /// The players standing in the cells at the tick's end (tag 1: the
    /// same bytes as the entries of an `S_SPAWN`).
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<ObjectInfo>,
    /// The cells' `S_MOVE` packets of the tick, concatenated.
    #[prost(bytes = "bytes", tag = "2")]
    pub moves: Bytes,
    /// The sending node.
    #[prost(string, tag = "3")]
    pub origin: String,
    /// The sender's tick number.
    #[prost(uint64, tag = "4")]
    pub tick: u64,
}

/// Why a border message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Longer than [`MAX_BORDER_PAYLOAD`], or more players or moves than
    /// allowed.
    TooBig,
    /// Does not decode, names no known origin, or carries a bad player or
    /// move.
    Malformed,
}

/// A checked border message.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    /// The sender.
    pub origin: String,
    /// Its players (positions clamped into the map, names bounded), in
    /// the order sent, each once.
    pub members: Vec<ObjectInfo>,
    /// Each listed player's moves of the tick, in the order sent.
    pub moves: HashMap<u64, Vec<(PosInfo, u64)>>,
}

/// Remote moves: `(position, client_time_us)` in the order sent.
type Moves = Vec<(PosInfo, u64)>;

/// Sends one border message to a node: `(node, payload)`; false if it was
/// dropped (NATS down or behind).
pub type BorderSend = Arc<dyn Fn(&str, Bytes) -> bool + Send + Sync>;

/// The other live nodes of the cluster now.
pub type LiveNodes = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// How this node shares its world.
#[derive(Clone)]
pub struct BorderLink {
    /// This node.
    pub me: String,
    /// The nodes of the world, in map order (`--world-nodes`).
    pub world_nodes: Vec<String>,
    /// Which other nodes are alive.
    pub live: LiveNodes,
    /// Where the messages go.
    pub send: BorderSend,
}

/// What the border has done, for the metrics.
#[derive(Debug, Default)]
pub struct BorderCounters {
    /// Border messages sent.
    pub messages_out: AtomicU64,
    /// Their bytes.
    pub bytes_out: AtomicU64,
    /// Border messages not sent (NATS down or behind, or too big).
    pub messages_out_dropped: AtomicU64,
    /// Border messages taken in.
    pub messages_in: AtomicU64,
    /// Their bytes.
    pub bytes_in: AtomicU64,
    /// Messages dropped for their size or counts.
    pub dropped_too_big: AtomicU64,
    /// Messages dropped as malformed.
    pub dropped_malformed: AtomicU64,
    /// Messages dropped unread because a newer one of the same origin
    /// was waiting past [`INBOX_DEPTH`].
    pub dropped_backlog: AtomicU64,
    /// Moves of a remote player past [`MAX_REMOTE_MOVES`] in a tick.
    pub moves_dropped: AtomicU64,
    /// Origins dropped from the view for silence.
    pub origins_stale: AtomicU64,
    /// Players of other nodes in the view now.
    pub remote_players: AtomicI64,
}

/// A snapshot of [`BorderCounters`] and the zone map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BorderStats {
    /// See [`BorderCounters`].
    pub messages_out: u64,
    /// See [`BorderCounters`].
    pub bytes_out: u64,
    /// See [`BorderCounters`].
    pub messages_out_dropped: u64,
    /// See [`BorderCounters`].
    pub messages_in: u64,
    /// See [`BorderCounters`].
    pub bytes_in: u64,
    /// See [`BorderCounters`].
    pub dropped_too_big: u64,
    /// See [`BorderCounters`].
    pub dropped_malformed: u64,
    /// See [`BorderCounters`].
    pub dropped_backlog: u64,
    /// See [`BorderCounters`].
    pub moves_dropped: u64,
    /// See [`BorderCounters`].
    pub origins_stale: u64,
    /// See [`BorderCounters`].
    pub remote_players: i64,
    /// The zone map as this node uses it now: `(node, first column, end
    /// column)` in map order.
    pub zones: Vec<(String, u32, u32)>,
}

/// Whether a player a border message shows is in this node's own world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Local {
    /// No.
    No,
    /// Yes (it entered in this cell): never shown from a message.
    Here(Option<Cell>),
    /// Yes, but being handed over to another node's zone, standing in
    /// this cell: shown from the target's message once it has the player
    /// (and then this node lets it go).
    Leaving(Cell),
}

/// The remote cells one tick's receivers see, by cell.
#[derive(Default)]
pub(super) struct RemoteView {
    pub cells: HashMap<Cell, CellTick>,
    /// Players shown last tick from another node that are this node's own
    /// now (handed over to it), with the cell they were shown in: where
    /// they stood at the end of the last tick.
    pub handed_in: HashMap<u64, Cell>,
    /// Players being handed over by this node that another node shows
    /// now, with the cell it shows them in: this node lets them go.
    pub handed_out: HashMap<u64, Cell>,
}

/// Where the players of one tick are handed over to.
pub(super) struct Handover {
    map: Arc<ZoneMap>,
    me: String,
    cell: f32,
}

impl Handover {
    /// The node a player of this node standing at `x` goes to, if any.
    pub fn target(&self, x: f32) -> Option<&str> {
        self.map.handover_target(&self.me, x, self.cell)
    }
}

impl RemoteView {
    /// The remote part of `cell`, if another node has players there (or
    /// had at the end of the previous tick).
    pub fn cell(&self, cell: Cell) -> Option<&CellTick> {
        if self.cells.is_empty() {
            return None;
        }
        self.cells.get(&cell)
    }
}

/// The zone map with, per column, the other nodes that see it.
struct MapView {
    /// The live other nodes it was made from.
    live: Vec<String>,
    map: Arc<ZoneMap>,
    /// Per column: indices (into the map's strips) of the other nodes that
    /// see it.
    seers: Vec<Vec<usize>>,
}

impl MapView {
    fn new(link: &BorderLink, live: Vec<String>, columns: u32) -> MapView {
        let map = ZoneMap::split(
            &link.world_nodes,
            |node| node == link.me || live.iter().any(|other| other == node),
            columns,
        );
        let seers = (0..columns)
            .map(|column| {
                map.seen_by(column, &link.me)
                    .iter()
                    .filter_map(|node| map.strips().iter().position(|(name, _)| name == node))
                    .collect()
            })
            .collect();
        MapView {
            live,
            map: Arc::new(map),
            seers,
        }
    }
}

/// What the view keeps from one origin.
#[derive(Default)]
struct OriginState {
    members: Vec<ObjectInfo>,
    /// This tick's moves (cleared on a tick with no message).
    moves: HashMap<u64, Vec<(PosInfo, u64)>>,
    /// The last tick a message of it was folded in.
    heard: u64,
}

/// A remote player the view shows.
struct Known {
    identity: Arc<Identity>,
    /// Its cell at the end of the last tick.
    cell: Cell,
    /// The last tick it moved in.
    moved: u64,
}

#[derive(Default)]
struct ViewState {
    origins: HashMap<String, OriginState>,
    known: HashMap<u64, Known>,
}

/// A world's border: the map, the inbox and the remote view's state.
pub struct Border {
    link: BorderLink,
    grid: Grid,
    stale_ticks: u64,
    inbox: Mutex<HashMap<String, VecDeque<Heard>>>,
    state: Mutex<ViewState>,
    map: Mutex<Arc<MapView>>,
    counters: BorderCounters,
    drop_log: LogLimiter,
}

impl Border {
    /// The border of a world on `grid` ticking every `tick`, shared as
    /// `link` says.
    pub(super) fn new(link: BorderLink, grid: Grid, tick: Duration) -> Border {
        let stale_ticks = (STALE_AFTER.as_nanos() / tick.as_nanos().max(1)).max(3) as u64;
        let map = MapView::new(&link, Vec::new(), grid.cells_per_side());
        Border {
            link,
            grid,
            stale_ticks,
            inbox: Mutex::default(),
            state: Mutex::default(),
            map: Mutex::new(Arc::new(map)),
            counters: BorderCounters::default(),
            drop_log: LogLimiter::new(Duration::from_secs(1)),
        }
    }

    /// The zone map as of the last tick.
    pub fn zone_map(&self) -> Arc<ZoneMap> {
        Arc::clone(&self.map.lock().map)
    }

    /// The hand-over rule under the current map.
    pub(super) fn handover(&self) -> Handover {
        Handover {
            map: self.zone_map(),
            me: self.link.me.clone(),
            cell: self.grid.cell_size(),
        }
    }

    /// The counters and the map.
    pub fn stats(&self) -> BorderStats {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BorderStats {
            messages_out: get(&c.messages_out),
            bytes_out: get(&c.bytes_out),
            messages_out_dropped: get(&c.messages_out_dropped),
            messages_in: get(&c.messages_in),
            bytes_in: get(&c.bytes_in),
            dropped_too_big: get(&c.dropped_too_big),
            dropped_malformed: get(&c.dropped_malformed),
            dropped_backlog: get(&c.dropped_backlog),
            moves_dropped: get(&c.moves_dropped),
            origins_stale: get(&c.origins_stale),
            remote_players: c.remote_players.load(Ordering::Relaxed),
            zones: self
                .zone_map()
                .strips()
                .iter()
                .map(|(node, strip)| (node.clone(), strip.start, strip.end))
                .collect(),
        }
    }

    /// A border message from the network: checked, then kept for the next
    /// tick (or dropped, counted and logged).
    pub fn take_in(&self, payload: Bytes) {
        let len = payload.len() as u64;
        match check(&payload, &self.link, &self.grid) {
            Ok(heard) => {
                self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_in.fetch_add(len, Ordering::Relaxed);
                let mut inbox = self.inbox.lock();
                let queue = inbox.entry(heard.origin.clone()).or_default();
                if queue.len() >= INBOX_DEPTH {
                    queue.pop_front();
                    self.counters
                        .dropped_backlog
                        .fetch_add(1, Ordering::Relaxed);
                }
                queue.push_back(heard);
            }
            Err(refused) => {
                let counter = match refused {
                    Refused::TooBig => &self.counters.dropped_too_big,
                    Refused::Malformed => &self.counters.dropped_malformed,
                };
                let dropped = counter.fetch_add(1, Ordering::Relaxed) + 1;
                if self.drop_log.allow() {
                    tracing::warn!(
                        ?refused,
                        dropped,
                        bytes = len,
                        "dropping a border message from the cluster that is not valid"
                    );
                }
            }
        }
    }

    /// Refreshes the zone map from the live nodes (at a tick's start).
    fn refresh_map(&self) -> Arc<MapView> {
        let mut live = (self.link.live)();
        live.sort();
        let mut current = self.map.lock();
        if current.live != live {
            let view = MapView::new(&self.link, live, self.grid.cells_per_side());
            tracing::info!(
                zones = ?view.map.strips(),
                "the zone map changed"
            );
            *current = Arc::new(view);
        }
        Arc::clone(&current)
    }

    /// The remote cells tick `tick` shows: the messages that came since
    /// the last tick folded in. `is_local` tells the players this node has
    /// in its own world (never shown from a message).
    pub(super) fn build(&self, tick: u64, is_local: impl Fn(u64) -> Local) -> RemoteView {
        let view = self.refresh_map();
        let arrived = std::mem::take(&mut *self.inbox.lock());
        let mut state = self.state.lock();
        let state = &mut *state;
        for origin in state.origins.values_mut() {
            origin.moves.clear();
        }
        for (name, heards) in arrived {
            let origin = state.origins.entry(name).or_default();
            origin.heard = tick;
            for heard in heards {
                for (id, moves) in heard.moves {
                    let kept = origin.moves.entry(id).or_default();
                    let room = MAX_REMOTE_MOVES.saturating_sub(kept.len());
                    if moves.len() > room {
                        self.counters
                            .moves_dropped
                            .fetch_add((moves.len() - room) as u64, Ordering::Relaxed);
                    }
                    kept.extend(moves.into_iter().take(room));
                }
                origin.members = heard.members;
            }
        }
        let stale_ticks = self.stale_ticks;
        let before = state.origins.len();
        state
            .origins
            .retain(|_, origin| tick.saturating_sub(origin.heard) <= stale_ticks);
        if state.origins.len() < before {
            let gone = (before - state.origins.len()) as u64;
            self.counters
                .origins_stale
                .fetch_add(gone, Ordering::Relaxed);
            tracing::warn!(
                origins = gone,
                "no border message from a neighbour for {STALE_AFTER:?}: its players leave the view"
            );
        }
        // Each remote player once: from the origin owning its column when
        // two show it (a hand-over in flight), else from the first.
        let mut chosen: HashMap<u64, (&ObjectInfo, &OriginState)> = HashMap::new();
        let mut here: HashMap<u64, Option<Cell>> = HashMap::new();
        let mut late: Vec<(Cell, Moves)> = Vec::new();
        let mut leaving: HashMap<u64, Cell> = HashMap::new();
        for id in state.known.keys() {
            if let Local::Here(cell) = is_local(*id) {
                here.insert(*id, cell);
            }
        }
        for name in &self.link.world_nodes {
            let Some(origin) = state.origins.get(name) else {
                continue;
            };
            for member in &origin.members {
                match is_local(member.object_id) {
                    Local::No => {}
                    Local::Here(cell) => {
                        here.insert(member.object_id, cell);
                        // Its last moves over there, sent before it came
                        // here: they still go to whoever sees it now.
                        if let (Some(cell), Some(moves)) =
                            (cell, origin.moves.get(&member.object_id))
                        {
                            late.push((cell, moves.clone()));
                        }
                        continue;
                    }
                    Local::Leaving(cell) => {
                        leaving.insert(member.object_id, cell);
                    }
                }
                let owns = |info: &ObjectInfo| {
                    let pos = info.pos_info.unwrap_or_default();
                    let column = self.grid.cell_of(pos.x, pos.y).0;
                    view.map.owner(column) == Some(name.as_str())
                };
                match chosen.entry(member.object_id) {
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert((member, origin));
                    }
                    std::collections::hash_map::Entry::Occupied(mut slot) => {
                        if owns(member) && !owns(slot.get().0) {
                            slot.insert((member, origin));
                        }
                    }
                }
            }
        }
        #[derive(Default)]
        struct Building {
            members: Vec<(Member, Option<Moves>)>,
            departed: Vec<Departure>,
            /// Moves of players handed over to this node, who are
            /// members of its own cell now.
            late: Vec<Moves>,
        }
        let mut cells: HashMap<Cell, Building> = HashMap::new();
        for (cell, moves) in late {
            cells.entry(cell).or_default().late.push(moves);
        }
        let mut known: HashMap<u64, Known> = HashMap::with_capacity(chosen.len());
        let mut handed_in = HashMap::new();
        let mut handed_out = HashMap::new();
        for (id, (info, origin)) in chosen {
            let pos = info.pos_info.unwrap_or_default();
            let cell = self.grid.cell_of(pos.x, pos.y);
            let moves = origin.moves.get(&id).filter(|moves| !moves.is_empty());
            let before = state.known.remove(&id);
            let identity = match &before {
                Some(old)
                    if old.identity.name == info.name
                        && old.identity.player_type == info.player_type =>
                {
                    Arc::clone(&old.identity)
                }
                _ => Arc::new(Identity {
                    name: info.name.clone(),
                    player_type: info.player_type,
                }),
            };
            let moved = match (&moves, &before) {
                (Some(_), _) => tick,
                (None, Some(old)) => old.moved,
                (None, None) => 0,
            };
            let prev = before.as_ref().map(|old| old.cell);
            if let Some(prev) = prev.filter(|prev| *prev != cell) {
                cells
                    .entry(prev)
                    .or_default()
                    .departed
                    .push(Departure { id, to: Some(cell) });
            }
            // A player this node hands over: it stood in its local cell
            // (whose departure the region notes when it lets it go).
            let prev = match leaving.get(&id) {
                Some(local) => {
                    handed_out.insert(id, cell);
                    prev.or(Some(*local))
                }
                None => prev,
            };
            cells.entry(cell).or_default().members.push((
                Member::new(id, prev, pos, moved, Arc::clone(&identity)),
                moves.cloned(),
            ));
            known.insert(
                id,
                Known {
                    identity,
                    cell,
                    moved,
                },
            );
        }
        // Shown last tick, gone now (or this node's own now: then it went
        // to the cell it entered in here).
        for (id, old) in state.known.drain() {
            let to = match here.get(&id) {
                Some(cell) => {
                    handed_in.insert(id, old.cell);
                    *cell
                }
                None => None,
            };
            cells
                .entry(old.cell)
                .or_default()
                .departed
                .push(Departure { id, to });
        }
        state.known = known;
        self.counters
            .remote_players
            .store(state.known.len() as i64, Ordering::Relaxed);
        let cells = cells
            .into_iter()
            .map(|(cell, mut building)| {
                building
                    .members
                    .sort_unstable_by_key(|(member, _)| member.id);
                building
                    .departed
                    .sort_unstable_by_key(|departure| departure.id);
                let mut buf = BytesMut::new();
                let mut move_count = 0;
                let mut members = Vec::with_capacity(building.members.len());
                for (member, moves) in building.members {
                    for (pos, client_time_us) in moves.into_iter().flatten() {
                        cells::put_packet(
                            &mut buf,
                            &SMove {
                                info: Some(pos),
                                client_time_us,
                            },
                        );
                        move_count += 1;
                    }
                    members.push(member);
                }
                let mut late_buf = BytesMut::new();
                let mut late_count = 0;
                for (pos, client_time_us) in building.late.into_iter().flatten() {
                    cells::put_packet(
                        &mut late_buf,
                        &SMove {
                            info: Some(pos),
                            client_time_us,
                        },
                    );
                    late_count += 1;
                }
                (
                    cell,
                    CellTick {
                        moves: buf.freeze(),
                        move_count,
                        members,
                        departed: building.departed,
                        late_moves: late_buf.freeze(),
                        late_count,
                    },
                )
            })
            .collect();
        RemoteView {
            cells,
            handed_in,
            handed_out,
        }
    }

    /// Sends tick `tick`'s border cells (from every region's published
    /// tick) to the nodes that see them: one message per neighbour.
    pub(super) fn send(&self, tick: u64, published: &[Arc<RegionTick>]) {
        let view = Arc::clone(&self.map.lock());
        let strips = view.map.strips();
        struct Out {
            members: BytesMut,
            moves: BytesMut,
            count: usize,
        }
        // Indexed like the strips; the neighbours always get one.
        let mut outs: Vec<Option<Out>> = strips.iter().map(|_| None).collect();
        let new_out = || Out {
            members: BytesMut::new(),
            moves: BytesMut::new(),
            count: 0,
        };
        for node in view.map.neighbours(&self.link.me) {
            if let Some(i) = strips.iter().position(|(name, _)| name == node) {
                outs[i] = Some(new_out());
            }
        }
        for (column, seers) in view.seers.iter().enumerate() {
            if seers.is_empty() {
                continue;
            }
            for row in 0..self.grid.cells_per_side() {
                let cell = (column as u32, row);
                let Some(tick) = published
                    .get(self.grid.region_of(cell))
                    .and_then(|region| region.cells.get(self.grid.local_index(cell)))
                else {
                    continue;
                };
                if tick.members.is_empty() {
                    continue;
                }
                for &seer in seers {
                    let out = outs[seer].get_or_insert_with(new_out);
                    for member in &tick.members {
                        out.members.extend_from_slice(member.spawn_entry());
                    }
                    out.count += tick.members.len();
                    out.moves.extend_from_slice(&tick.moves);
                }
            }
        }
        for (i, out) in outs.into_iter().enumerate() {
            let Some(out) = out else { continue };
            let node = &strips[i].0;
            let payload = encode_tick(out.members, out.moves.freeze(), &self.link.me, tick);
            if payload.len() > MAX_BORDER_PAYLOAD || out.count > MAX_BORDER_MEMBERS {
                let dropped = self
                    .counters
                    .messages_out_dropped
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if self.drop_log.allow() {
                    tracing::warn!(
                        %node,
                        players = out.count,
                        bytes = payload.len(),
                        dropped,
                        "a border message is too big to send (a crowd at the border)"
                    );
                }
                continue;
            }
            let len = payload.len() as u64;
            if (self.link.send)(node, payload) {
                self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_out.fetch_add(len, Ordering::Relaxed);
            } else {
                self.counters
                    .messages_out_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A [`BorderTick`] from pre-encoded member entries (field 1, as
/// [`Member::spawn_entry`] gives them) and the moves.
fn encode_tick(mut members: BytesMut, moves: Bytes, origin: &str, tick: u64) -> Bytes {
    if !moves.is_empty() {
        prost::encoding::bytes::encode(2, &moves, &mut members);
    }
    prost::encoding::string::encode(3, &origin.to_owned(), &mut members);
    if tick != 0 {
        prost::encoding::uint64::encode(4, &tick, &mut members);
    }
    members.freeze()
}

fn finite_or_zero(v: f32) -> f32 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// A border message from the network, checked (see the module's docs).
pub fn check(payload: &Bytes, link: &BorderLink, grid: &Grid) -> Result<Heard, Refused> {
    if payload.len() > MAX_BORDER_PAYLOAD {
        return Err(Refused::TooBig);
    }
    let tick = BorderTick::decode(payload.clone()).map_err(|_| Refused::Malformed)?;
    if tick.origin == link.me || !link.world_nodes.contains(&tick.origin) {
        return Err(Refused::Malformed);
    }
    if tick.members.len() > MAX_BORDER_MEMBERS {
        return Err(Refused::TooBig);
    }
    let mut members = Vec::with_capacity(tick.members.len());
    let mut moves: HashMap<u64, Vec<(PosInfo, u64)>> = HashMap::with_capacity(tick.members.len());
    for member in tick.members {
        let id = member.object_id;
        let Some(pos) = member.pos_info else {
            return Err(Refused::Malformed);
        };
        if id == 0 || member.name.len() > MAX_REMOTE_NAME || moves.contains_key(&id) {
            return Err(Refused::Malformed);
        }
        moves.insert(id, Vec::new());
        members.push(ObjectInfo {
            object_id: id,
            player_type: member.player_type,
            pos_info: Some(clean_pos(grid, id, &pos)),
            name: member.name,
        });
    }
    let mut count = 0;
    let mut frames = Frames::new(&tick.moves, 1024);
    for frame in frames.by_ref() {
        let frame = frame.map_err(|_| Refused::Malformed)?;
        count += 1;
        if count > MAX_BORDER_MOVES {
            return Err(Refused::TooBig);
        }
        if frame.id != SMove::ID {
            return Err(Refused::Malformed);
        }
        let moved = SMove::decode(frame.body).map_err(|_| Refused::Malformed)?;
        let Some(info) = moved.info else {
            return Err(Refused::Malformed);
        };
        let Some(list) = moves.get_mut(&info.object_id) else {
            return Err(Refused::Malformed);
        };
        list.push((clean_pos(grid, info.object_id, &info), moved.client_time_us));
    }
    if !frames.remaining().is_empty() {
        return Err(Refused::Malformed);
    }
    moves.retain(|_, list| !list.is_empty());
    Ok(Heard {
        origin: tick.origin,
        members,
        moves,
    })
}

/// A position from the network, made safe: inside the map, finite.
fn clean_pos(grid: &Grid, id: u64, pos: &PosInfo) -> PosInfo {
    PosInfo {
        object_id: id,
        x: grid.clamp(pos.x),
        y: grid.clamp(pos.y),
        z: finite_or_zero(pos.z),
        yaw: finite_or_zero(pos.yaw),
        state: pos.state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use servercore_protocol::make_packet;

    fn link(me: &str) -> BorderLink {
        BorderLink {
            me: me.to_owned(),
            world_nodes: vec!["a".into(), "b".into()],
            live: Arc::new(Vec::new),
            send: Arc::new(|_, _| true),
        }
    }

    fn grid() -> Grid {
        Grid::new(2000.0, 100.0, 5).unwrap()
    }

    fn info(id: u64, x: f32, y: f32) -> ObjectInfo {
        ObjectInfo {
            object_id: id,
            player_type: 2,
            pos_info: Some(PosInfo {
                object_id: id,
                x,
                y,
                ..PosInfo::default()
            }),
            name: format!("p{id}"),
        }
    }

    fn moves(list: &[(u64, f32, u64)]) -> Bytes {
        let mut buf = Vec::new();
        for &(id, x, t) in list {
            buf.extend_from_slice(&make_packet(&SMove {
                info: Some(PosInfo {
                    object_id: id,
                    x,
                    y: 5.0,
                    ..PosInfo::default()
                }),
                client_time_us: t,
            }));
        }
        Bytes::from(buf)
    }

    #[test]
    fn the_wire_form_is_a_border_tick_and_round_trips() {
        let members: Vec<Member> = [info(7, 950.0, 5.0), info(9, 990.0, 5.0)]
            .into_iter()
            .map(|info| {
                Member::new(
                    info.object_id,
                    None,
                    info.pos_info.unwrap(),
                    0,
                    Arc::new(Identity {
                        name: info.name.clone(),
                        player_type: info.player_type,
                    }),
                )
            })
            .collect();
        let mut entries = BytesMut::new();
        for member in &members {
            entries.extend_from_slice(member.spawn_entry());
        }
        let mv = moves(&[(7, 951.0, 11), (9, 991.0, 12), (7, 952.0, 13)]);
        let payload = encode_tick(entries, mv.clone(), "a", 42);
        let decoded = BorderTick::decode(payload.clone()).unwrap();
        assert_eq!(
            decoded,
            BorderTick {
                members: vec![info(7, 950.0, 5.0), info(9, 990.0, 5.0)],
                moves: mv,
                origin: "a".into(),
                tick: 42,
            }
        );
        let heard = check(&payload, &link("b"), &grid()).unwrap();
        assert_eq!(heard.origin, "a");
        assert_eq!(heard.members, decoded.members);
        let xs =
            |id| -> Vec<(f32, u64)> { heard.moves[&id].iter().map(|(p, t)| (p.x, *t)).collect() };
        assert_eq!(xs(7), [(951.0, 11), (952.0, 13)]);
        assert_eq!(xs(9), [(991.0, 12)]);
    }

    #[test]
    fn hostile_messages_are_refused() {
        let link = link("b");
        let grid = grid();
        let refused = |tick: BorderTick| check(&Bytes::from(tick.encode_to_vec()), &link, &grid);
        let good = BorderTick {
            members: vec![info(7, 950.0, 5.0)],
            moves: moves(&[(7, 951.0, 1)]),
            origin: "a".into(),
            tick: 1,
        };
        assert!(refused(good.clone()).is_ok());
        // Not a protobuf.
        assert_eq!(
            check(&Bytes::from_static(b"\xff\xff\xff"), &link, &grid),
            Err(Refused::Malformed)
        );
        // Too long.
        assert_eq!(
            check(
                &Bytes::from(vec![0u8; MAX_BORDER_PAYLOAD + 1]),
                &link,
                &grid
            ),
            Err(Refused::TooBig)
        );
        // Unknown origin, or this node itself.
        for origin in ["z", "b", ""] {
            let tick = BorderTick {
                origin: origin.into(),
                ..good.clone()
            };
            assert_eq!(refused(tick), Err(Refused::Malformed), "{origin:?}");
        }
        // A move of a player not listed.
        let tick = BorderTick {
            moves: moves(&[(8, 951.0, 1)]),
            ..good.clone()
        };
        assert_eq!(refused(tick), Err(Refused::Malformed));
        // Moves that are not S_MOVEs, or cut short.
        let tick = BorderTick {
            moves: Bytes::from(make_packet(&servercore_protocol::SLeaveGame {}).to_vec()),
            ..good.clone()
        };
        assert_eq!(refused(tick), Err(Refused::Malformed));
        let mut cut = moves(&[(7, 951.0, 1)]).to_vec();
        cut.pop();
        let tick = BorderTick {
            moves: Bytes::from(cut),
            ..good.clone()
        };
        assert_eq!(refused(tick), Err(Refused::Malformed));
        // A player listed twice, id 0, no position, a long name.
        let tick = BorderTick {
            members: vec![info(7, 1.0, 1.0), info(7, 2.0, 2.0)],
            ..good.clone()
        };
        assert_eq!(refused(tick), Err(Refused::Malformed));
        let tick = BorderTick {
            members: vec![info(0, 1.0, 1.0)],
            moves: Bytes::new(),
            ..good.clone()
        };
        assert_eq!(refused(tick), Err(Refused::Malformed));
        let mut nowhere = info(7, 1.0, 1.0);
        nowhere.pos_info = None;
        let tick = BorderTick {
            members: vec![nowhere],
            ..good.clone()
        };
        assert_eq!(refused(tick), Err(Refused::Malformed));
        let mut long = info(7, 1.0, 1.0);
        long.name = "n".repeat(MAX_REMOTE_NAME + 1);
        let tick = BorderTick {
            members: vec![long],
            ..good.clone()
        };
        assert_eq!(refused(tick), Err(Refused::Malformed));
        // Too many players.
        let tick = BorderTick {
            members: (1..=MAX_BORDER_MEMBERS as u64 + 1)
                .map(|id| info(id, 1.0, 1.0))
                .collect(),
            moves: Bytes::new(),
            ..good.clone()
        };
        assert_eq!(refused(tick), Err(Refused::TooBig));
        // Positions off the map or not numbers are clamped.
        let tick = BorderTick {
            members: vec![info(7, f32::NAN, 1e9)],
            moves: Bytes::new(),
            ..good
        };
        let heard = refused(tick).unwrap();
        let pos = heard.members[0].pos_info.unwrap();
        assert_eq!((pos.x, pos.y), (0.0, grid.clamp(1e9)));
    }

    fn heard_from(origin: &str, members: Vec<ObjectInfo>, mv: Bytes) -> Bytes {
        BorderTick {
            members,
            moves: mv,
            origin: origin.into(),
            tick: 1,
        }
        .encode_to_vec()
        .into()
    }

    fn ids(cell: &CellTick) -> Vec<(u64, Option<Cell>)> {
        cell.members.iter().map(|m| (m.id, m.prev)).collect()
    }

    #[test]
    fn the_view_spawns_moves_and_departs_like_a_local_cell() {
        let border = Border::new(link("b"), grid(), Duration::from_millis(50));
        // Tick 1: player 7 appears in cell (9, 0) with a move.
        border.take_in(heard_from(
            "a",
            vec![info(7, 950.0, 5.0)],
            moves(&[(7, 950.0, 3)]),
        ));
        let view = border.build(1, |_| Local::No);
        let cell = view.cell((9, 0)).unwrap();
        assert_eq!(ids(cell), [(7, None)]);
        assert_eq!(cell.move_count, 1);
        assert!(cell.departed.is_empty());
        // Tick 2: no message: still there, no moves.
        let view = border.build(2, |_| Local::No);
        let cell = view.cell((9, 0)).unwrap();
        assert_eq!(ids(cell), [(7, Some((9, 0)))]);
        assert_eq!(cell.move_count, 0);
        assert_eq!(cell.members[0].moved, 1);
        // Tick 3: two messages: it walks on to (8, 0); both moves count.
        border.take_in(heard_from(
            "a",
            vec![info(7, 899.0, 5.0)],
            moves(&[(7, 920.0, 4)]),
        ));
        border.take_in(heard_from(
            "a",
            vec![info(7, 850.0, 5.0)],
            moves(&[(7, 850.0, 5)]),
        ));
        let view = border.build(3, |_| Local::No);
        let to = view.cell((8, 0)).unwrap();
        assert_eq!(ids(to), [(7, Some((9, 0)))]);
        assert_eq!(to.move_count, 2);
        let from = view.cell((9, 0)).unwrap();
        assert!(from.members.is_empty());
        assert_eq!(
            from.departed,
            [Departure {
                id: 7,
                to: Some((8, 0))
            }]
        );
        // Tick 4: an empty message: it left the border.
        border.take_in(heard_from("a", Vec::new(), Bytes::new()));
        let view = border.build(4, |_| Local::No);
        assert_eq!(
            view.cell((8, 0)).unwrap().departed,
            [Departure { id: 7, to: None }]
        );
        assert_eq!(border.stats().remote_players, 0);
        let view = border.build(5, |_| Local::No);
        assert!(view.cells.is_empty());
    }

    #[test]
    fn a_silent_origin_goes_stale_and_local_players_are_never_remote() {
        let border = Border::new(link("b"), grid(), Duration::from_millis(100));
        border.take_in(heard_from(
            "a",
            vec![info(7, 950.0, 5.0), info(8, 950.0, 5.0)],
            Bytes::new(),
        ));
        let view = border.build(1, |id| {
            if id == 8 {
                Local::Here(None)
            } else {
                Local::No
            }
        });
        assert_eq!(ids(view.cell((9, 0)).unwrap()), [(7, None)]);
        // 1 s at 100 ms is 10 ticks: still there at tick 11, gone at 12.
        let view = border.build(11, |_| Local::No);
        assert_eq!(
            ids(view.cell((9, 0)).unwrap()),
            [(7, Some((9, 0))), (8, None)]
        );
        let view = border.build(12, |_| Local::No);
        let cell = view.cell((9, 0)).unwrap();
        assert!(cell.members.is_empty());
        assert_eq!(
            cell.departed,
            [Departure { id: 7, to: None }, Departure { id: 8, to: None }]
        );
        assert_eq!(border.stats().origins_stale, 1);
    }

    #[test]
    fn the_inbox_is_bounded_per_origin() {
        let border = Border::new(link("b"), grid(), Duration::from_millis(50));
        for i in 0..(INBOX_DEPTH as u64 + 3) {
            border.take_in(heard_from(
                "a",
                vec![info(7, 950.0, 5.0)],
                moves(&[(7, 950.0, i)]),
            ));
        }
        let stats = border.stats();
        assert_eq!(stats.messages_in, INBOX_DEPTH as u64 + 3);
        assert_eq!(stats.dropped_backlog, 3);
        let view = border.build(1, |_| Local::No);
        assert_eq!(view.cell((9, 0)).unwrap().move_count, INBOX_DEPTH);
    }
}
