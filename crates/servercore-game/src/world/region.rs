//! A region: one square block of cells, an [`Actor<Region>`](servercore::job::Actor).
//!
//! A region owns the players whose position is in its cells (their session
//! handles and what each has been shown, `known`) and keeps ghosts of the
//! players of other regions within one cell of its border (see the
//! [world's docs](super) for the protocol between regions). Every method
//! runs as a job of the region's actor, so the region's maps need no lock;
//! the only lock is the published position map the live snapshot reads.
//!
//! The one rule every event goes through is [`Region::deliver`]: for each
//! owned player near the event's old or new cell, compare "sees the subject
//! now" with "has been shown the subject" and send the difference
//! (`S_SPAWN` then `S_MOVE`, `S_MOVE`, or `S_DESPAWN`). Receivers are found
//! through the cell index, so a move costs the players of at most 18
//! cells, never the whole region.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use servercore::{SessionHandle, SessionId};
use servercore_protocol::{make_packet, ObjectInfo, PosInfo, SDespawn, SLeaveGame, SMove, SSpawn};

use super::grid::{Cell, Grid};
use super::{object_info, Change, Event, Identity, Left, Placed, Published, World};
use crate::stats::{bump, GameCounters};

/// What a region keeps of a player it owns, besides its position.
struct Owned {
    handle: SessionHandle,
    /// The players this one has been sent an `S_SPAWN` of and not an
    /// `S_DESPAWN` since, each with the sequence number of the last state
    /// of it this one was sent.
    known: HashMap<u64, u64>,
    /// The players despawned for this one lately, with the sequence number
    /// of the last state of each it was sent and when: after a handover,
    /// an event of theirs that this one saw before the despawn may still be
    /// on its way to the new region (pushed there by a third region a
    /// moment after it reached the old one), and must not be shown again.
    forgotten: HashMap<u64, (u64, Instant)>,
}

impl Owned {
    fn new(handle: SessionHandle) -> Owned {
        Owned {
            handle,
            known: HashMap::new(),
            forgotten: HashMap::new(),
        }
    }

    /// Stops showing `id` (after its `S_DESPAWN`), remembering for a while
    /// which state of it was shown last.
    fn forget(&mut self, id: u64, now: Instant) {
        if let Some(seq) = self.known.remove(&id) {
            if self.forgotten.len() >= FORGOTTEN_PRUNE_AT {
                self.forgotten
                    .retain(|_, (_, at)| now.saturating_duration_since(*at) < FORGET_AFTER);
            }
            self.forgotten.insert(id, (seq, now));
        }
    }

    /// What to do with a state `seq` of `id`, a player this one does not
    /// know: `Some(false)` show it (spawn) as usual, `Some(true)` spawn it
    /// but do not send its move again (this one saw exactly that move
    /// before it was despawned), `None` skip it (older than what this one
    /// saw: the newer one is on its way).
    fn unforget(&mut self, id: u64, seq: u64) -> Option<bool> {
        let Some((last, _)) = self.forgotten.get(&id).copied() else {
            return Some(false);
        };
        if seq < last {
            return None;
        }
        self.forgotten.remove(&id);
        Some(seq == last)
    }
}

/// How long a despawn is remembered (see `Owned::forgotten`): far longer
/// than a job takes from one region to the next.
const FORGET_AFTER: Duration = Duration::from_secs(2);

/// Past this many remembered despawns, the old ones are dropped.
const FORGOTTEN_PRUNE_AT: usize = 64;

/// A player in (or, as a ghost, near) this region.
struct Entry {
    identity: Arc<Identity>,
    pos: PosInfo,
    cell: Cell,
    /// The sequence number of the last event applied to this entry.
    seq: u64,
    /// Set if this region owns the player; `None` for a ghost.
    owned: Option<Owned>,
}

/// The lazily built packets about one event's subject, shared by every
/// receiver of that event in this region.
#[derive(Default)]
struct SubjectPackets {
    spawn: Option<Bytes>,
    despawn: Option<Bytes>,
}

/// One region's state, owned by its actor.
pub struct Region {
    index: usize,
    grid: Grid,
    entries: HashMap<u64, Entry>,
    /// Player ids by cell, owned players and ghosts alike.
    cells: HashMap<Cell, Vec<u64>>,
    counters: Arc<GameCounters>,
    published: Published,
}

impl Region {
    /// The empty region `index` of `grid`, publishing its owned players'
    /// positions into `published`.
    pub fn new(
        index: usize,
        grid: Grid,
        counters: Arc<GameCounters>,
        published: Published,
    ) -> Region {
        Region {
            index,
            grid,
            entries: HashMap::new(),
            cells: HashMap::new(),
            counters,
            published,
        }
    }

    /// A player enters the world in this region.
    pub(super) fn enter(
        &mut self,
        world: &World,
        handle: SessionHandle,
        event: Arc<Event>,
        placed: Placed,
    ) {
        let old = self.entries.get(&event.subject);
        // Owned already: the player entered again from a new session before
        // the old session's leave arrived. The new session takes its place
        // (and the old leave is ignored), so the player is counted once.
        let replaces = old.is_some_and(|entry| entry.owned.is_some());
        let old = old.map(|entry| entry.cell);
        self.deliver(&event, old);
        let owned = Owned::new(handle);
        self.upsert(&event, Some(owned));
        if !replaces {
            self.counters
                .players_in_world
                .fetch_add(1, Ordering::Relaxed);
        }
        self.show_surroundings(event.subject);
        self.publish(&event);
        let mut targets = Vec::new();
        self.grid.regions_seeing(event.new_cell, &mut targets);
        world.forward(&event, &targets, [self.index, self.index]);
        placed(self.index);
    }

    /// A move of a player this region owns. If the player stays, it is
    /// applied here and forwarded; if it crosses into another region, the
    /// player is handed over with it (and `crossing` goes along, for the
    /// new region to call).
    pub(super) fn own_move(&mut self, world: &World, event: Arc<Event>, crossing: Option<Placed>) {
        let Some(old) = self
            .entries
            .get(&event.subject)
            .filter(|entry| entry.owned.is_some())
            .map(|entry| entry.cell)
        else {
            // The player actor sends moves only to the region that owns the
            // player; never expected. Unstick its handover if it waits.
            tracing::warn!(
                region = self.index,
                player_id = event.subject,
                "move for a player this region does not own"
            );
            if let Some(placed) = crossing {
                placed(self.index);
            }
            return;
        };
        self.deliver(&event, Some(old));
        let mut targets = Vec::new();
        self.grid.regions_seeing(old, &mut targets);
        self.grid.regions_seeing(event.new_cell, &mut targets);
        let target = self.grid.region_of(event.new_cell);
        if target == self.index {
            self.upsert(&event, None);
            if old != event.new_cell {
                self.show_surroundings(event.subject);
            }
            if let Change::Move(packet) = &event.change {
                self.send_to(event.subject, packet);
            }
            self.publish(&event);
            world.forward(&event, &targets, [self.index, self.index]);
            if let Some(placed) = crossing {
                placed(self.index);
            }
            return;
        }
        // Handover: out of this region (a ghost if still seen from here),
        // forwarded to the third regions, and into the new one, which tells
        // the mover what it sees.
        let owned = self
            .remove(event.subject)
            .and_then(|entry| entry.owned)
            .expect("checked above: owned here");
        self.published.lock().remove(&event.subject);
        if self.grid.region_sees(self.index, event.new_cell) {
            self.upsert(&event, None);
        }
        world.forward(&event, &targets, [self.index, target]);
        bump(&self.counters.handovers);
        world.regions[target].do_async(move |region| region.take_over(owned, event, crossing));
    }

    /// Takes in a player handed over by a neighbouring region with the move
    /// that brought it here.
    fn take_over(&mut self, owned: Owned, event: Arc<Event>, crossing: Option<Placed>) {
        let old = self
            .entries
            .get(&event.subject)
            .filter(|entry| entry.owned.is_none())
            .map(|entry| entry.cell);
        self.deliver(&event, old);
        self.upsert(&event, Some(owned));
        self.show_surroundings(event.subject);
        if let Change::Move(packet) = &event.change {
            self.send_to(event.subject, packet);
        }
        self.publish(&event);
        if let Some(placed) = crossing {
            placed(self.index);
        }
    }

    /// A player this region owns through `session` leaves the world. (If
    /// the player entered again from a new session before the old one's
    /// leave arrived, the new one stays.)
    pub(super) fn leave(
        &mut self,
        world: &World,
        event: Arc<Event>,
        session: SessionId,
        tell: bool,
        left: Left,
    ) {
        let owned_by_session = self
            .entries
            .get(&event.subject)
            .and_then(|entry| entry.owned.as_ref())
            .is_some_and(|owned| owned.handle.id() == session);
        if !owned_by_session {
            tracing::debug!(
                region = self.index,
                player_id = event.subject,
                %session,
                "leave of a player this region does not own through that session"
            );
            left();
            return;
        }
        let entry = self.remove(event.subject).expect("checked above");
        self.published.lock().remove(&event.subject);
        self.counters
            .players_in_world
            .fetch_sub(1, Ordering::Relaxed);
        self.deliver(&event, Some(entry.cell));
        if tell {
            if let Some(owned) = &entry.owned {
                let _ = owned.handle.send(make_packet(&SLeaveGame {}));
            }
        }
        let mut targets = Vec::new();
        self.grid.regions_seeing(entry.cell, &mut targets);
        world.forward(&event, &targets, [self.index, self.index]);
        left();
    }

    /// An event of a player another region owns: applied to this region's
    /// players, and the ghost updated (dropped once the player is no
    /// longer seen from here).
    pub(super) fn apply_remote(&mut self, event: &Event) {
        let old = match self.entries.get(&event.subject) {
            Some(entry) if entry.owned.is_some() => {
                tracing::debug!(
                    region = self.index,
                    player_id = event.subject,
                    "remote event for a player this region owns"
                );
                return;
            }
            // Older than what is here: nothing new (see the world's docs).
            Some(entry) if entry.seq >= event.seq => return,
            Some(entry) => Some(entry.cell),
            None => None,
        };
        self.deliver(event, old);
        let keep = !matches!(event.change, Change::Leave)
            && self.grid.region_sees(self.index, event.new_cell);
        if keep {
            self.upsert(event, None);
        } else {
            self.remove(event.subject);
        }
    }

    /// The rule: tells each owned player near `old` (where this region had
    /// the subject) or the event's new cell what changed for it.
    fn deliver(&mut self, event: &Event, old: Option<Cell>) {
        let mut packets = SubjectPackets::default();
        let new_cell = event.new_cell;
        let sees_subject_now = !matches!(event.change, Change::Leave);
        let near_old = old
            .into_iter()
            .flat_map(|old| self.grid.around(old))
            .filter(|cell| !Grid::sees(*cell, new_cell));
        let scan: Vec<Cell> = self.grid.around(new_cell).chain(near_old).collect();
        let (mut spawns, mut despawns, mut moves) = (0u64, 0u64, 0u64);
        let mut now = None;
        for cell in scan {
            let Some(ids) = self.cells.get(&cell) else {
                continue;
            };
            for id in ids {
                if *id == event.subject {
                    continue;
                }
                let Some(entry) = self.entries.get_mut(id) else {
                    continue;
                };
                let receiver_cell = entry.cell;
                let Some(owned) = entry.owned.as_mut() else {
                    continue;
                };
                let sees = sees_subject_now && Grid::sees(receiver_cell, new_cell);
                match (sees, owned.known.get_mut(&event.subject)) {
                    (true, None) => {
                        let Some(seen_this_move) = owned.unforget(event.subject, event.seq) else {
                            continue;
                        };
                        let spawn = packets.spawn.get_or_insert_with(|| {
                            make_packet(&SSpawn {
                                players: vec![event.object_info()],
                            })
                        });
                        let _ = owned.handle.send(spawn.clone());
                        spawns += 1;
                        owned.known.insert(event.subject, event.seq);
                        if let Change::Move(packet) = &event.change {
                            if !seen_this_move {
                                let _ = owned.handle.send(packet.clone());
                                moves += 1;
                            }
                        }
                    }
                    (true, Some(seen)) => {
                        if event.seq > *seen {
                            if let Change::Move(packet) = &event.change {
                                let _ = owned.handle.send(packet.clone());
                                moves += 1;
                            }
                            *seen = event.seq;
                        }
                    }
                    (false, Some(_)) => {
                        let despawn = packets.despawn.get_or_insert_with(|| {
                            make_packet(&SDespawn {
                                object_ids: vec![event.subject],
                            })
                        });
                        let _ = owned.handle.send(despawn.clone());
                        despawns += 1;
                        owned.forget(event.subject, *now.get_or_insert_with(Instant::now));
                    }
                    (false, None) => {}
                }
            }
        }
        self.count(spawns, despawns, moves);
    }

    /// Tells owned player `id` what it sees from its cell that it has not
    /// been told: one `S_DESPAWN` of those it no longer sees, one `S_SPAWN`
    /// of those it newly sees, and an `S_MOVE` (`client_time_us` 0) of each
    /// it sees whose last move it missed (a handover's gap).
    fn show_surroundings(&mut self, id: u64) {
        let Some((cell, mut owned)) = self
            .entries
            .get_mut(&id)
            .and_then(|entry| Some((entry.cell, entry.owned.take()?)))
        else {
            return;
        };
        let mut seen_now = HashSet::new();
        let mut spawns: Vec<ObjectInfo> = Vec::new();
        let mut catch_up: Vec<Bytes> = Vec::new();
        for around in self.grid.around(cell) {
            for other in self.cells.get(&around).into_iter().flatten() {
                if *other == id {
                    continue;
                }
                let Some(entry) = self.entries.get(other) else {
                    continue;
                };
                seen_now.insert(*other);
                match owned.known.get_mut(other) {
                    None => {
                        // Older than what this one was shown before a
                        // despawn: the newer state is on its way here and
                        // will spawn it.
                        if owned.unforget(*other, entry.seq).is_none() {
                            continue;
                        }
                        spawns.push(object_info(*other, &entry.identity, &entry.pos));
                        owned.known.insert(*other, entry.seq);
                    }
                    Some(seen) if entry.seq > *seen => {
                        catch_up.push(make_packet(&SMove {
                            info: Some(entry.pos),
                            client_time_us: 0,
                        }));
                        *seen = entry.seq;
                    }
                    Some(_) => {}
                }
            }
        }
        let mut gone: Vec<u64> = owned
            .known
            .keys()
            .filter(|other| !seen_now.contains(other))
            .copied()
            .collect();
        gone.sort_unstable();
        let now = Instant::now();
        for other in &gone {
            owned.forget(*other, now);
        }
        let (mut despawns, mut spawned, moves) = (0, 0, catch_up.len() as u64);
        if !gone.is_empty() {
            let _ = owned
                .handle
                .send(make_packet(&SDespawn { object_ids: gone }));
            despawns = 1;
        }
        if !spawns.is_empty() {
            spawns.sort_by_key(|info| info.object_id);
            let _ = owned.handle.send(make_packet(&SSpawn { players: spawns }));
            spawned = 1;
        }
        for packet in catch_up {
            let _ = owned.handle.send(packet);
        }
        self.count(spawned, despawns, moves);
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.owned = Some(owned);
        }
    }

    /// Sends `packet` to owned player `id` (one delivery of a move).
    fn send_to(&self, id: u64, packet: &Bytes) {
        if let Some(owned) = self.entries.get(&id).and_then(|e| e.owned.as_ref()) {
            let _ = owned.handle.send(packet.clone());
            self.count(0, 0, 1);
        }
    }

    fn count(&self, spawns: u64, despawns: u64, moves: u64) {
        let counters = &self.counters;
        if spawns > 0 {
            counters.spawns_sent.fetch_add(spawns, Ordering::Relaxed);
        }
        if despawns > 0 {
            counters
                .despawns_sent
                .fetch_add(despawns, Ordering::Relaxed);
        }
        if moves > 0 {
            counters.move_deliveries.fetch_add(moves, Ordering::Relaxed);
        }
    }

    fn publish(&self, event: &Event) {
        self.published
            .lock()
            .insert(event.subject, (event.pos.x, event.pos.y));
    }

    /// Records the event's position for its subject (inserting it if new),
    /// and `owned` if given (else an owned player stays owned, a ghost a
    /// ghost).
    fn upsert(&mut self, event: &Event, owned: Option<Owned>) {
        let subject = event.subject;
        match self.entries.get_mut(&subject) {
            Some(entry) => {
                if entry.cell != event.new_cell {
                    remove_from_cell(&mut self.cells, entry.cell, subject);
                    self.cells.entry(event.new_cell).or_default().push(subject);
                }
                entry.cell = event.new_cell;
                entry.pos = event.pos;
                entry.seq = event.seq;
                if owned.is_some() {
                    if entry.owned.is_none() {
                        self.counters.ghosts.fetch_sub(1, Ordering::Relaxed);
                    }
                    entry.owned = owned;
                }
            }
            None => {
                if owned.is_none() {
                    self.counters.ghosts.fetch_add(1, Ordering::Relaxed);
                }
                self.cells.entry(event.new_cell).or_default().push(subject);
                self.entries.insert(
                    subject,
                    Entry {
                        identity: Arc::clone(&event.identity),
                        pos: event.pos,
                        cell: event.new_cell,
                        seq: event.seq,
                        owned,
                    },
                );
            }
        }
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        remove_from_cell(&mut self.cells, entry.cell, id);
        if entry.owned.is_none() {
            self.counters.ghosts.fetch_sub(1, Ordering::Relaxed);
        }
        Some(entry)
    }
}

fn remove_from_cell(cells: &mut HashMap<Cell, Vec<u64>>, cell: Cell, id: u64) {
    if let Some(ids) = cells.get_mut(&cell) {
        if let Some(at) = ids.iter().position(|other| *other == id) {
            ids.swap_remove(at);
        }
        if ids.is_empty() {
            cells.remove(&cell);
        }
    }
}
