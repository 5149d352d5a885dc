//! A region: one square block of cells and the players standing in it, an
//! [`Actor<Region>`](servercore::job::Actor).
//!
//! A region owns the players whose cell (at the end of the last tick) is one
//! of its cells: their seats, positions and the cell each stood in at the
//! end of the previous tick. It does its part of every tick in three jobs,
//! one per phase (see [`super::tick`] for who starts them):
//!
//! 1. [`Region::apply`]: takes the players entering here, each owned
//!    player's moves and leave from its seat, encodes the moves of the tick
//!    into one buffer, notes which cells each player left, and hands the
//!    players whose new cell another region owns to that region;
//! 2. [`Region::publish`]: takes the players handed to it and publishes
//!    each of its cells (the cell's moves, members and departures) as one
//!    immutable [`RegionTick`];
//! 3. [`Region::deliver`]: builds every owned player's write of the tick
//!    from the published cells of its 3×3 block (its own region's and its
//!    neighbours', read-only) and queues it as one batch of shared buffers.
//!
//! No lookup, encoding or copy happens per delivered move: the work is per
//! cell (one view of a 3×3 block, shared by every receiver standing in its
//! centre cell) and per receiver (a batch of a few `Bytes`), plus per player
//! that changed cell (its spawns and despawns).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use servercore_protocol::{make_packet, PosInfo, SLeaveGame, SMove};

use super::border::RemoteView;
use super::cells::{self, CellTick, Departure, Member, RegionTick};
use super::grid::{Cell, Grid};
use super::seat::{LeaveRequest, Seat};
use super::tick::{Arrival, TickShared};
use super::PositionSave;
use crate::stats::GameCounters;

/// A region's owned players' positions (`(player_id, x, y)`), rewritten
/// every tick, for the live map.
pub type Published = Arc<Mutex<Vec<(u64, f32, f32)>>>;

/// A crowd's receiver gets about `crowd_limit / CROWD_SHARE` positions a
/// tick: each player's latest position every `⌈CROWD_SHARE × players in the
/// block / crowd_limit⌉` ticks. At the limit itself that is every 4 ticks
/// (5 Hz at the default 20 Hz tick), half the fan-out of every move at 10
/// moves a second.
pub const CROWD_SHARE: usize = 4;

/// A player this region owns.
pub(super) struct Entry {
    seat: Arc<Seat>,
    pos: PosInfo,
    /// Its cell now (after this tick's moves, once applied).
    cell: Cell,
    /// Its cell at the end of the previous tick (`None`: entered this tick).
    prev: Option<Cell>,
    /// This tick's `S_MOVE`s of the player (a slice of the region's buffer).
    moves: Bytes,
    move_count: usize,
    /// The last tick the player moved in (0: not since it entered).
    moved: u64,
    /// The last tick its position was saved or it entered.
    saved: u64,
    /// Where the moves sit in the buffer being written (apply only).
    range: Option<(usize, usize)>,
    /// Entered this tick: its client has nobody spawned yet (its `prev`
    /// may be where another node showed it, for the others' sake).
    fresh: bool,
    /// Being handed over to another node's zone.
    frozen: Option<Frozen>,
}

/// A player handed over to another node's zone, kept (still, its moves
/// dropped) until the target shows it.
struct Frozen {
    /// The tick past which it leaves anyway (it never arrived).
    until: u64,
    /// Its leave, once asked (`Some(None)`: evicted).
    leave: Option<Option<LeaveRequest>>,
    /// The tick this node heard that the player is on another node.
    arrived: Option<u64>,
}

impl Entry {
    /// Its cell at the end of the previous tick in this world (not where
    /// another node showed it).
    fn local_prev(&self) -> Option<Cell> {
        self.prev.filter(|_| !self.fresh)
    }
}

/// A player taken out of the world this tick, answered after the phase.
struct Removal {
    seat: Arc<Seat>,
    request: Option<LeaveRequest>,
}

/// What a region's receivers got in one tick, added to the counters once.
#[derive(Default)]
struct Delivered {
    spawn_packets: u64,
    despawn_packets: u64,
    moves: u64,
    thinned: u64,
    chats: u64,
    crowded_cells: i64,
}

/// One region's state, owned by its actor.
pub struct Region {
    index: usize,
    grid: Grid,
    entries: Vec<Entry>,
    /// Per local cell: the entries standing there (rebuilt every publish).
    by_cell: Vec<Vec<u32>>,
    /// Per local cell: who left it this tick (filled by apply).
    departed: Vec<Vec<Departure>>,
    /// Bytes of moves the last tick encoded (the next buffer's size).
    last_moves_len: usize,
    /// Crowded centre cells this region counted in the gauge.
    crowded_cells: i64,
    counters: Arc<GameCounters>,
    positions: Published,
}

impl Region {
    /// The empty region `index` of `grid`, publishing its owned players'
    /// positions into `positions`.
    pub fn new(
        index: usize,
        grid: Grid,
        counters: Arc<GameCounters>,
        positions: Published,
    ) -> Region {
        let slots = grid.cells_per_region();
        Region {
            index,
            grid,
            entries: Vec::new(),
            by_cell: vec![Vec::new(); slots],
            departed: vec![Vec::new(); slots],
            last_moves_len: 0,
            crowded_cells: 0,
            counters,
            positions,
        }
    }

    /// Phase 1: arrivals, moves and leaves of tick `tick`; players now in
    /// another region's cells are handed to it.
    pub(super) fn apply(&mut self, shared: &TickShared, tick: u64) {
        let remote = shared.remote();
        let handover = shared.handover();
        for Arrival { seat, pos } in shared.take_arrivals(self.index, tick) {
            let cell = self.grid.cell_of(pos.x, pos.y);
            // Handed over to this node: where the other node showed it.
            let prev = seat
                .take_shown_at()
                .or_else(|| remote.handed_in.get(&seat.player_id).copied());
            self.entries.push(Entry {
                seat,
                pos,
                cell,
                prev,
                moves: Bytes::new(),
                move_count: 0,
                moved: 0,
                saved: tick,
                range: None,
                fresh: true,
                frozen: None,
            });
            self.counters
                .players_in_world
                .fetch_add(1, Ordering::Relaxed);
        }
        let mut buf = BytesMut::with_capacity(self.last_moves_len + self.last_moves_len / 4);
        let mut removed = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            let entry = &mut self.entries[i];
            if entry.fresh && entry.prev.is_some() {
                // Handed in from another node this tick: it ends the tick
                // in the cell it entered, where the other node's copy
                // departed to, so whoever saw that copy keeps it (moved
                // at once, it would leave a cell whose departure no
                // receiver is told). Its moves wait a tick in its inbox.
                entry.range = None;
                entry.move_count = 0;
                i += 1;
                continue;
            }
            let taken = entry.seat.take();
            if let Some(frozen) = &mut entry.frozen {
                // Handed over: still, its leave waits for the target.
                if !taken.moves.is_empty() {
                    self.counters
                        .moves_dropped_not_in_world
                        .fetch_add(taken.moves.len() as u64, Ordering::Relaxed);
                }
                // A newer seat of the player here (it came back before
                // this hand-over ended) evicts this one: it goes now.
                let evicted = entry.seat.is_evicted();
                if let Some(request) = taken.leave {
                    frozen.leave = Some(request);
                }
                let shown = remote.handed_out.get(&entry.seat.player_id).copied();
                if frozen.arrived.is_none() && entry.seat.arrived_elsewhere() {
                    frozen.arrived = Some(tick);
                }
                // Logged in on the target, and not shown from there after
                // a grace (a player the target's border cells show is let
                // go when they do): it stands where no receiver of this
                // node gets the target's copy.
                let arrived = frozen
                    .arrived
                    .is_some_and(|at| tick >= at + shared.arrival_ticks() / 10);
                if shown.is_none() && tick < frozen.until && !arrived && !evicted {
                    entry.range = None;
                    entry.move_count = 0;
                    i += 1;
                    continue;
                }
                let mut entry = self.entries.swap_remove(i);
                if let Some(prev) = entry.local_prev() {
                    self.departed[self.grid.local_index(prev)].push(Departure {
                        id: entry.seat.player_id,
                        to: shown,
                    });
                }
                let waiting = entry
                    .frozen
                    .take()
                    .and_then(|frozen| frozen.leave)
                    .flatten();
                let request = waiting.or_else(|| entry.seat.release());
                if shown.is_none() && !arrived && !evicted {
                    self.counters
                        .transfers_never_arrived
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        player_id = entry.seat.player_id,
                        "a player handed over did not arrive within 10 s: it leaves the world"
                    );
                }
                removed.push(Removal {
                    seat: entry.seat,
                    request,
                });
                continue;
            }
            let start = buf.len();
            for input in &taken.moves {
                cells::put_packet(
                    &mut buf,
                    &SMove {
                        info: Some(input.pos),
                        client_time_us: input.client_time_us,
                    },
                );
                entry.pos = input.pos;
            }
            entry.move_count = taken.moves.len();
            if entry.move_count > 0 {
                entry.moved = tick;
            }
            entry.range = (buf.len() > start).then_some((start, buf.len()));
            entry.cell = self.grid.cell_of(entry.pos.x, entry.pos.y);
            if let Some(request) = taken.leave {
                let entry = self.entries.swap_remove(i);
                if let Some(prev) = entry.local_prev() {
                    self.departed[self.grid.local_index(prev)].push(Departure {
                        id: entry.seat.player_id,
                        to: None,
                    });
                }
                removed.push(Removal {
                    seat: entry.seat,
                    request,
                });
                continue;
            }
            if let Some(target) = handover
                .as_ref()
                .filter(|_| !entry.seat.account.is_empty())
                .and_then(|handover| handover.target(entry.pos.x))
            {
                if entry.seat.begin_transfer(entry.cell) {
                    entry.frozen = Some(Frozen {
                        until: tick + shared.arrival_ticks(),
                        leave: None,
                        arrived: None,
                    });
                    self.counters.transfers_out.fetch_add(1, Ordering::Relaxed);
                    shared.transfer(super::Transfer {
                        seat: Arc::clone(&entry.seat),
                        pos: entry.pos,
                        target: target.to_owned(),
                    });
                }
            }
            i += 1;
        }
        self.last_moves_len = buf.len();
        self.save_moved(shared, tick);
        let moves = buf.freeze();
        let mut leaving: Vec<(usize, Vec<Entry>)> = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            let entry = &mut self.entries[i];
            entry.moves = match entry.range.take() {
                Some((start, end)) => moves.slice(start..end),
                None => Bytes::new(),
            };
            if let Some(prev) = entry.local_prev().filter(|prev| *prev != entry.cell) {
                self.departed[self.grid.local_index(prev)].push(Departure {
                    id: entry.seat.player_id,
                    to: Some(entry.cell),
                });
            }
            let target = self.grid.region_of(entry.cell);
            if target == self.index {
                i += 1;
                continue;
            }
            let entry = self.entries.swap_remove(i);
            match leaving.iter_mut().find(|(region, _)| *region == target) {
                Some((_, list)) => list.push(entry),
                None => leaving.push((target, vec![entry])),
            }
        }
        for (target, list) in leaving {
            self.counters
                .handovers
                .fetch_add(list.len() as u64, Ordering::Relaxed);
            shared.hand_over(target, list);
        }
        self.answer_leaves(shared, removed);
    }

    /// Queues a save of every owned player that moved since its last save
    /// and whose last save is an interval old (so a crash loses at most one
    /// interval of walking; the saves of all regions go out together at
    /// the tick's end).
    fn save_moved(&mut self, shared: &TickShared, tick: u64) {
        let Some(every) = shared.settings().save_every else {
            return;
        };
        let mut batch = Vec::new();
        for entry in &mut self.entries {
            if entry.moved > entry.saved && tick - entry.saved >= every {
                batch.push(PositionSave {
                    account: Arc::clone(&entry.seat.account),
                    player_id: entry.seat.player_id,
                    pos: entry.pos,
                });
                entry.saved = tick;
            }
        }
        self.counters
            .positions_saved
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        shared.save(batch);
    }

    /// Tells each leaver (asked with `C_LEAVE_GAME`) `S_LEAVE_GAME`, lets go
    /// of its seat and answers its player actor.
    fn answer_leaves(&mut self, shared: &TickShared, removed: Vec<Removal>) {
        if removed.is_empty() {
            return;
        }
        self.counters
            .players_in_world
            .fetch_sub(removed.len() as i64, Ordering::Relaxed);
        let leave_packet = make_packet(&SLeaveGame {});
        for Removal { seat, request } in removed {
            shared.forget(&seat);
            if let Some(request) = request {
                if request.tell {
                    let _ = seat.handle.send(leave_packet.clone());
                }
                (request.left)();
            }
        }
    }

    /// Phase 2: takes the players handed over, then publishes every cell.
    pub(super) fn publish(&mut self, shared: &TickShared, tick: u64) {
        self.entries.extend(shared.take_incoming(self.index));
        for list in &mut self.by_cell {
            list.clear();
        }
        for (i, entry) in self.entries.iter().enumerate() {
            self.by_cell[self.grid.local_index(entry.cell)].push(i as u32);
        }
        // Members in id order, so what a receiver is sent does not depend
        // on the order players arrived in.
        let entries = &self.entries;
        for list in &mut self.by_cell {
            if list.len() > 1 {
                list.sort_unstable_by_key(|&i| entries[i as usize].seat.player_id);
            }
        }
        for departed in &mut self.departed {
            departed.sort_unstable_by_key(|departure| departure.id);
        }
        let mut cells = Vec::with_capacity(self.by_cell.len());
        for (local, ids) in self.by_cell.iter().enumerate() {
            let departed = std::mem::take(&mut self.departed[local]);
            if ids.is_empty() {
                cells.push(CellTick {
                    departed,
                    ..CellTick::default()
                });
                continue;
            }
            let len: usize = ids
                .iter()
                .map(|&i| self.entries[i as usize].moves.len())
                .sum();
            let mut moves = BytesMut::with_capacity(len);
            let mut members = Vec::with_capacity(ids.len());
            let mut move_count = 0;
            for &i in ids {
                let entry = &self.entries[i as usize];
                moves.extend_from_slice(&entry.moves);
                move_count += entry.move_count;
                members.push(Member::new(
                    entry.seat.player_id,
                    entry.prev,
                    entry.pos,
                    entry.moved,
                    Arc::clone(&entry.seat.identity),
                ));
            }
            cells.push(CellTick {
                moves: moves.freeze(),
                move_count,
                members,
                departed,
                ..CellTick::default()
            });
        }
        {
            let mut positions = self.positions.lock();
            positions.clear();
            positions.extend(
                self.entries
                    .iter()
                    .map(|entry| (entry.seat.player_id, entry.pos.x, entry.pos.y)),
            );
        }
        shared.publish(self.index, Arc::new(RegionTick { tick, cells }));
    }

    /// Phase 3: every owned player's write of the tick.
    pub(super) fn deliver(&mut self, shared: &TickShared, tick: u64) {
        let mut around = Around::new(tick);
        let remote = shared.remote();
        for (_, neighbour) in self.grid.regions_around(self.index) {
            around.load(neighbour, shared);
        }
        for entry in &self.entries {
            if let Some(prev) = entry
                .prev
                .filter(|prev| self.grid.region_of(*prev) != self.index)
            {
                around.load_around(&self.grid, prev, shared);
            }
        }
        let chat = shared.tick_chat();
        let crowd_limit = shared.settings().crowd_limit;
        let mut delivered = Delivered::default();
        let mut crowded_cells = 0i64;
        for (local, ids) in self.by_cell.iter().enumerate() {
            if ids.is_empty() {
                continue;
            }
            let Some(centre) = self.grid.cell_at(self.index, local) else {
                continue;
            };
            let block: Vec<(Cell, &CellTick)> = self
                .grid
                .around(centre)
                .flat_map(|cell| with_remote(cell, around.cell(&self.grid, cell), &remote))
                .collect();
            let seen: usize = block.iter().map(|(_, cell)| cell.members.len()).sum();
            let crowded = crowd_limit > 0 && seen > crowd_limit;
            let (view, view_moves) = if crowded {
                crowded_cells += 1;
                let every = (seen * CROWD_SHARE).div_ceil(crowd_limit) as u64;
                thinned_view(&block, every, tick)
            } else {
                full_view(&block, true)
            };
            // The spawns and despawns of a receiver that stayed in `centre`
            // are the same for all of them: built once, if one needs them.
            let mut stationary: Option<(Bytes, u64, u64)> = None;
            for &i in ids {
                let entry = &self.entries[i as usize];
                let (changes, spawns, despawns) = if entry.prev == Some(centre) && !entry.fresh {
                    stationary
                        .get_or_insert_with(|| stationary_changes(centre, &block))
                        .clone()
                } else {
                    // A fresh client has nobody spawned: it gets its whole
                    // block.
                    let prev = entry.local_prev();
                    let prev_block: Vec<(Cell, &CellTick)> = prev
                        .map(|prev| {
                            self.grid
                                .around(prev)
                                .flat_map(|cell| {
                                    with_remote(cell, around.cell(&self.grid, cell), &remote)
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    crossing_changes(entry.seat.player_id, prev, centre, &block, &prev_block)
                };
                let own = if crowded {
                    entry.moves.clone()
                } else {
                    Bytes::new()
                };
                // A player handed over to this node this tick does not
                // get its own last moves over there again.
                let view = match entry.fresh && !crowded {
                    true => full_view(&block, false).0,
                    false => view.clone(),
                };
                let handle = &entry.seat.handle;
                let sent = if handle.max_datagram_size().is_some() {
                    // A QUIC peer with datagrams: the moves go unreliably
                    // (whole packets, several per datagram), the rest by
                    // the stream.
                    handle
                        .send_batch([changes, chat.packets.clone()])
                        .and_then(|()| handle.send_datagram(view))
                        .and_then(|()| handle.send_datagram(own))
                } else {
                    handle.send_batch([changes, view, own, chat.packets.clone()])
                };
                if sent.is_ok() {
                    delivered.spawn_packets += spawns;
                    delivered.despawn_packets += despawns;
                    if crowded {
                        delivered.thinned += view_moves;
                        delivered.moves += entry.move_count as u64;
                    } else {
                        delivered.moves += view_moves;
                    }
                    delivered.chats += chat.count;
                }
            }
        }
        drop(around);
        for entry in &mut self.entries {
            entry.prev = Some(entry.cell);
            entry.fresh = false;
            entry.moves = Bytes::new();
            entry.move_count = 0;
        }
        delivered.crowded_cells = crowded_cells - self.crowded_cells;
        self.crowded_cells = crowded_cells;
        self.count(&delivered);
    }

    /// The world is stopping (no tick runs any more): every owned player,
    /// and every player still waiting to enter here, lets go of its seat;
    /// leaves that were waiting are answered.
    pub(super) fn release_all(&mut self, shared: &TickShared) {
        let mut removed: Vec<Removal> = self
            .entries
            .drain(..)
            .chain(shared.take_incoming(self.index))
            .map(|entry| Removal {
                request: entry.seat.release(),
                seat: entry.seat,
            })
            .collect();
        let arrivals = shared.take_arrivals(self.index, u64::MAX);
        // Arrivals never counted in the world; answer_leaves takes every
        // removal off the count.
        self.counters
            .players_in_world
            .fetch_add(arrivals.len() as i64, Ordering::Relaxed);
        removed.extend(arrivals.into_iter().map(|arrival| Removal {
            request: arrival.seat.release(),
            seat: arrival.seat,
        }));
        self.answer_leaves(shared, removed);
        self.counters
            .crowded_cells
            .fetch_sub(std::mem::take(&mut self.crowded_cells), Ordering::Relaxed);
        self.positions.lock().clear();
    }

    fn count(&self, delivered: &Delivered) {
        let counters = &self.counters;
        let add = |counter: &std::sync::atomic::AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&counters.spawns_sent, delivered.spawn_packets);
        add(&counters.despawns_sent, delivered.despawn_packets);
        add(&counters.move_deliveries, delivered.moves);
        add(&counters.thinned_deliveries, delivered.thinned);
        add(&counters.chat_deliveries, delivered.chats);
        if delivered.crowded_cells != 0 {
            counters
                .crowded_cells
                .fetch_add(delivered.crowded_cells, Ordering::Relaxed);
        }
    }
}

/// The published ticks a deliver reads: the region's own, its neighbours',
/// and, for a receiver that jumped here from further away, those around
/// the cell it came from.
struct Around {
    /// `(region, its tick)`, few enough to search in order.
    ticks: Vec<(usize, Arc<RegionTick>)>,
    /// The tick being delivered (every region published it).
    tick: u64,
    empty: CellTick,
}

impl Around {
    fn new(tick: u64) -> Around {
        Around {
            ticks: Vec::with_capacity(9),
            tick,
            empty: CellTick::default(),
        }
    }

    /// Loads `region`'s published tick if it is not loaded yet.
    fn load(&mut self, region: usize, shared: &TickShared) {
        if !self.ticks.iter().any(|(loaded, _)| *loaded == region) {
            let published = shared.published(region);
            debug_assert!(published.tick == self.tick || published.tick == 0);
            self.ticks.push((region, published));
        }
    }

    /// Loads every region owning a cell of `cell`'s 3×3 block.
    fn load_around(&mut self, grid: &Grid, cell: Cell, shared: &TickShared) {
        for seen in grid.around(cell) {
            self.load(grid.region_of(seen), shared);
        }
    }

    /// The published state of `cell` (loaded before; empty otherwise).
    fn cell(&self, grid: &Grid, cell: Cell) -> &CellTick {
        let region = grid.region_of(cell);
        self.ticks
            .iter()
            .find(|(loaded, _)| *loaded == region)
            .and_then(|(_, tick)| tick.cells.get(grid.local_index(cell)))
            .unwrap_or(&self.empty)
    }
}

/// A cell's local published state, then its remote one (players of other
/// nodes' zones, see `border`) if any: a block lists both, and every rule
/// below reads them alike.
fn with_remote<'a>(
    cell: Cell,
    local: &'a CellTick,
    remote: &'a RemoteView,
) -> impl Iterator<Item = (Cell, &'a CellTick)> + 'a {
    std::iter::once((cell, local)).chain(remote.cell(cell).map(move |tick| (cell, tick)))
}

/// Every `S_MOVE` of the block's cells, in one buffer (no copy for one
/// cell with moves), with the late moves of players handed over to this
/// node if `with_late`; returns it with the number of moves.
fn full_view(block: &[(Cell, &CellTick)], with_late: bool) -> (Bytes, u64) {
    let mut count = 0;
    let mut parts: Vec<&Bytes> = Vec::new();
    for (_, cell) in block {
        count += cell.move_count;
        if !cell.moves.is_empty() {
            parts.push(&cell.moves);
        }
        if with_late && !cell.late_moves.is_empty() {
            count += cell.late_count;
            parts.push(&cell.late_moves);
        }
    }
    match parts.as_slice() {
        [] => (Bytes::new(), 0),
        [one] => ((*one).clone(), count as u64),
        _ => {
            let len: usize = parts.iter().map(|part| part.len()).sum();
            let mut view = BytesMut::with_capacity(len);
            for part in parts {
                view.extend_from_slice(part);
            }
            (view.freeze(), count as u64)
        }
    }
}

/// A crowd's view: each tick, the latest positions of about one player in
/// `every` (a different share each tick), of those that moved in the last
/// `2 × every` ticks: every move reaches the crowd's receivers within
/// `every` ticks as a position, however big the crowd, and a crowd that
/// stands still costs nothing.
fn thinned_view(block: &[(Cell, &CellTick)], every: u64, tick: u64) -> (Bytes, u64) {
    let mut view = BytesMut::new();
    let mut count = 0;
    let recent = tick.saturating_sub(2 * every);
    for (_, cell) in block {
        for member in &cell.members {
            if member.moved > recent && member.id.wrapping_add(tick) % every == 0 {
                view.extend_from_slice(member.position_packet());
                count += 1;
            }
        }
    }
    (view.freeze(), count)
}

/// Despawns then spawns for a receiver that stayed in `centre`: the players
/// that left its block, then those that came into it.
fn stationary_changes(centre: Cell, block: &[(Cell, &CellTick)]) -> (Bytes, u64, u64) {
    let mut gone = Vec::new();
    for (_, cell) in block {
        for departure in &cell.departed {
            if departure.to.is_none_or(|to| !Grid::sees(centre, to)) {
                gone.push(departure.id);
            }
        }
    }
    let came: Vec<&Member> = block
        .iter()
        .flat_map(|(_, cell)| {
            cell.members
                .iter()
                .filter(|member| member.prev.is_none_or(|prev| !Grid::sees(centre, prev)))
        })
        .collect();
    let (gone, came) = as_sets(gone, came, block, None);
    changes_packets(&gone, came.into_iter())
}

/// Despawns then spawns for a receiver that entered the world or changed
/// cell this tick: it saw the players standing in its previous block at the
/// end of the last tick, and sees those of `block` now.
fn crossing_changes(
    me: u64,
    prev: Option<Cell>,
    centre: Cell,
    block: &[(Cell, &CellTick)],
    prev_block: &[(Cell, &CellTick)],
) -> (Bytes, u64, u64) {
    let mut gone = Vec::new();
    for (cell_at, cell) in prev_block {
        for member in &cell.members {
            // Stayed in a cell this receiver no longer sees.
            if member.prev == Some(*cell_at) && !Grid::sees(centre, *cell_at) {
                gone.push(member.id);
            }
        }
        for departure in &cell.departed {
            if departure.id != me && departure.to.is_none_or(|to| !Grid::sees(centre, to)) {
                gone.push(departure.id);
            }
        }
    }
    let came: Vec<&Member> = block
        .iter()
        .flat_map(|(_, cell)| {
            cell.members.iter().filter(move |member| {
                member.id != me
                    && match (prev, member.prev) {
                        (Some(was), Some(theirs)) => !Grid::sees(was, theirs),
                        _ => true,
                    }
            })
        })
        .collect();
    let (gone, came) = as_sets(gone, came, block, Some(me));
    changes_packets(&gone, came.into_iter())
}

/// The changes of one receiver as what they mean: the players it saw and
/// sees no more, and those it sees and did not see. Cell by cell they are
/// the same, except for a player being handed over between nodes, which
/// may stand in two cells of one block for a tick (its old node's copy and
/// its new node's: one local, one remote) and so leave one and come into
/// the other at once: the receiver sees one player, spawned once, and
/// despawned once when no cell of its block has it any more.
///
/// `gone` lists players of cells the receiver saw (they were seen);
/// `came` members of `block` that were not seen where they stood; the
/// other members of `block` (but `me`) were seen, and are seen.
fn as_sets<'m>(
    mut gone: Vec<u64>,
    mut came: Vec<&'m Member>,
    block: &[(Cell, &'m CellTick)],
    me: Option<u64>,
) -> (Vec<u64>, Vec<&'m Member>) {
    if gone.is_empty() && came.is_empty() {
        return (gone, came);
    }
    let came_at: HashSet<*const Member> = came.iter().map(|member| *member as *const _).collect();
    let mut now: HashSet<u64> = HashSet::new();
    let mut stayed: HashSet<u64> = HashSet::new();
    for (_, cell) in block {
        for member in &cell.members {
            if Some(member.id) == me {
                continue;
            }
            now.insert(member.id);
            if !came_at.contains(&(member as *const _)) {
                stayed.insert(member.id);
            }
        }
    }
    let was: HashSet<u64> = gone.iter().copied().chain(stayed).collect();
    gone.sort_unstable();
    gone.dedup();
    gone.retain(|id| !now.contains(id));
    let mut spawned: HashSet<u64> = HashSet::new();
    came.retain(|member| !was.contains(&member.id) && spawned.insert(member.id));
    (gone, came)
}

/// One buffer of `S_DESPAWN`s of `gone` then `S_SPAWN`s of `came`; with
/// the counts of each kind of packet.
fn changes_packets<'m>(gone: &[u64], came: impl Iterator<Item = &'m Member>) -> (Bytes, u64, u64) {
    let mut buf = BytesMut::new();
    let despawns = cells::put_despawns(&mut buf, gone);
    let spawns = cells::put_spawns(&mut buf, came.map(Member::spawn_entry));
    (buf.freeze(), spawns as u64, despawns as u64)
}
