//! The tokio baseline of the move scenario: the sample game's world
//! (DESIGN.md, "The world") the way a competent tokio programmer would
//! first write it.
//!
//! - one task per connection reads and handles packets (the login and
//!   enter of [`super::chat`], with in-memory accounts), and a writer task
//!   per connection drains its unbounded channel of `Bytes` into one
//!   gathered write ([`super::tokio_server`]'s writer); over QUIC the
//!   connection task also takes `C_MOVE` datagrams, and the writer sends
//!   the `S_MOVE`s as datagrams;
//! - the whole world sits behind one `Mutex`: the players, their positions
//!   and an interest grid of `cell × cell` squares; a player sees the
//!   players of its 3×3 block of cells;
//! - a move builds its `S_MOVE` once, and every receiver's channel shares
//!   that `Bytes`; packets are queued under the lock, so each receiver gets
//!   them in the order the world decided them (spawns and despawns of a
//!   cell change before the move's `S_MOVE`).
//!
//! The rules are the game server's: positions clamped to `[0, size)²`, a
//! jump longer than `max_speed × dt + 50` cut to that length, spawns on
//! enter and cell changes, despawns on cell changes and leaving, chat to
//! everyone in the world.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use servercore_protocol::{
    CLeaveGame, CMove, MoveState, ObjectInfo, PacketId, PlayerType, PosInfo, SDespawn, SEnterGame,
    SLeaveGame, SMove, SSpawn,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::chat::{Action, ChatPeer, PlayerIds};
use super::proto;
use super::tokio_server::{write_queued, write_queued_quic, Writers};

/// How far a move may reach beyond `max_speed × dt`, in world units.
const MOVE_SLACK: f32 = 50.0;

/// The world's dimensions and speed limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorldRules {
    /// Side of the square map.
    pub size: f32,
    /// Side of a cell of the interest grid.
    pub cell: f32,
    /// Fastest a player may move, units per second.
    pub max_speed: f32,
}

impl Default for WorldRules {
    /// The game server's defaults: a 2000 × 2000 map, 100-unit cells,
    /// 300 units/s.
    fn default() -> Self {
        WorldRules {
            size: 2000.0,
            cell: 100.0,
            max_speed: 300.0,
        }
    }
}

/// What every connection of one tokio world server shares.
pub struct TokioWorld {
    world: Mutex<World>,
    ids: PlayerIds,
}

impl TokioWorld {
    /// An empty world with these rules.
    pub fn new(rules: WorldRules) -> TokioWorld {
        TokioWorld {
            world: Mutex::new(World::new(rules)),
            ids: PlayerIds::new(),
        }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().expect("world lock")
    }
}

/// One connection of the tokio world server, until it closes or breaks the
/// protocol.
pub async fn serve(stream: TcpStream, shared: Arc<TokioWorld>, writers: Writers) {
    let (mut reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(write_queued(writer, rx, writers));
    let mut peer = ChatPeer::new();
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if handle_buffered(&shared, &mut peer, &tx, &mut buf).is_err() {
            break;
        }
        buf.reserve(4096);
    }
    if let Some(player_id) = peer.player_id() {
        shared.world().leave(player_id);
    }
    drop(tx);
    let _ = writer.await;
}

/// One QUIC connection of the tokio world server: the packets of its first
/// bidirectional stream as in [`serve`], and `C_MOVE`s by datagram (whole
/// packets; other packets in a datagram are ignored), in one task that
/// waits for either. The writer sends the `S_MOVE`s as datagrams.
pub async fn serve_quic(
    connection: quinn::Connection,
    mut reader: quinn::RecvStream,
    writer: quinn::SendStream,
    shared: Arc<TokioWorld>,
    writers: Writers,
) {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(write_queued_quic(connection.clone(), writer, rx, writers));
    let mut peer = ChatPeer::new();
    let mut buf = BytesMut::with_capacity(4096);
    'read: loop {
        tokio::select! {
            read = reader.read_buf(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if handle_buffered(&shared, &mut peer, &tx, &mut buf).is_err() {
                    break;
                }
                buf.reserve(4096);
            }
            datagram = connection.read_datagram() => {
                let Ok(datagram) = datagram else {
                    break;
                };
                let mut rest = &datagram[..];
                while let Ok(Some(frame)) = proto::split_frame(rest) {
                    if frame.id == PacketId::CMove.as_u16()
                        && handle(&shared, &mut peer, &tx, frame.id, frame.body).is_err()
                    {
                        break 'read;
                    }
                    rest = &rest[frame.len..];
                }
            }
        }
    }
    if let Some(player_id) = peer.player_id() {
        shared.world().leave(player_id);
    }
    drop(tx);
    let _ = writer.await;
}

/// Handles every whole packet at the front of `buf` and removes them;
/// `Err` closes the connection.
fn handle_buffered(
    shared: &TokioWorld,
    peer: &mut ChatPeer,
    tx: &mpsc::UnboundedSender<Bytes>,
    buf: &mut BytesMut,
) -> Result<(), ()> {
    loop {
        let (len, handled) = match proto::split_frame(buf) {
            Ok(Some(frame)) => (frame.len, handle(shared, peer, tx, frame.id, frame.body)),
            Ok(None) => return Ok(()),
            Err(_) => return Err(()),
        };
        buf.advance(len);
        handled.map_err(|_| ())?;
    }
}

/// Handles one packet; `Err` closes the connection.
fn handle(
    shared: &TokioWorld,
    peer: &mut ChatPeer,
    tx: &mpsc::UnboundedSender<Bytes>,
    id: u16,
    body: &[u8],
) -> Result<(), String> {
    if id == PacketId::CMove.as_u16() {
        let msg = CMove::decode(body).map_err(|error| format!("C_MOVE: {error}"))?;
        if let (Some(player_id), Some(info)) = (peer.player_id(), msg.info) {
            shared
                .world()
                .move_player(player_id, &info, msg.client_time_us);
        }
        return Ok(());
    }
    if id == PacketId::CLeaveGame.as_u16() {
        CLeaveGame::decode(body).map_err(|error| format!("C_LEAVE_GAME: {error}"))?;
        if let Some(player_id) = peer.player_id() {
            shared.world().leave(player_id);
            peer.leave();
            let _ = tx.send(packet(PacketId::SLeaveGame, &SLeaveGame {}));
        }
        return Ok(());
    }
    match peer.handle(&shared.ids, id, body)? {
        None => {}
        Some(Action::Reply(reply)) => {
            let _ = tx.send(reply);
        }
        Some(Action::Enter { player_id, .. }) => {
            shared.world().enter(player_id, tx.clone());
        }
        Some(Action::Broadcast(chat)) => shared.world().broadcast(&chat),
    }
    Ok(())
}

fn packet<M: Message>(id: PacketId, msg: &M) -> Bytes {
    proto::packet(id.as_u16(), msg)
}

/// A player in the world.
struct Resident {
    tx: mpsc::UnboundedSender<Bytes>,
    info: ObjectInfo,
    cell: usize,
    last_move: Instant,
}

impl Resident {
    fn pos(&self) -> &PosInfo {
        self.info
            .pos_info
            .as_ref()
            .expect("a resident always has a position")
    }

    fn send(&self, packet: &Bytes) {
        let _ = self.tx.send(packet.clone());
    }
}

/// The world: players and the interest grid.
struct World {
    rules: WorldRules,
    /// Cells per side.
    side: usize,
    /// The players in each cell, row by row.
    cells: Vec<Vec<u64>>,
    players: HashMap<u64, Resident>,
}

impl World {
    fn new(rules: WorldRules) -> World {
        let side = ((rules.size / rules.cell).ceil() as usize).max(1);
        World {
            rules,
            side,
            cells: vec![Vec::new(); side * side],
            players: HashMap::new(),
        }
    }

    fn cell_of(&self, x: f32, y: f32) -> usize {
        let column = ((x / self.rules.cell) as usize).min(self.side - 1);
        let row = ((y / self.rules.cell) as usize).min(self.side - 1);
        row * self.side + column
    }

    /// The cells of the 3×3 block around `cell` that are on the map.
    fn block(&self, cell: usize) -> Vec<usize> {
        let (row, column) = (cell / self.side, cell % self.side);
        let mut block = Vec::with_capacity(9);
        for r in row.saturating_sub(1)..=(row + 1).min(self.side - 1) {
            for c in column.saturating_sub(1)..=(column + 1).min(self.side - 1) {
                block.push(r * self.side + c);
            }
        }
        block
    }

    /// Everyone in `cells` but `except`.
    fn players_in(&self, cells: &[usize], except: u64) -> Vec<u64> {
        cells
            .iter()
            .flat_map(|&cell| self.cells[cell].iter().copied())
            .filter(|&id| id != except)
            .collect()
    }

    /// Clamps `(x, y)` to the map `[0, size)²`.
    fn clamp(&self, x: f32, y: f32) -> (f32, f32) {
        let below_size = f32::from_bits(self.rules.size.to_bits().saturating_sub(1));
        let limit = |v: f32| {
            if v.is_nan() {
                0.0
            } else {
                v.clamp(0.0, below_size)
            }
        };
        (limit(x), limit(y))
    }

    /// A new player enters at a random point: `S_ENTER_GAME` with it, then
    /// one `S_SPAWN` of everyone it sees, and an `S_SPAWN` of it to each of
    /// them.
    fn enter(&mut self, player_id: u64, tx: mpsc::UnboundedSender<Bytes>) {
        let (x, y) = random_point(player_id, self.rules.size);
        let (x, y) = self.clamp(x, y);
        let info = ObjectInfo {
            object_id: player_id,
            player_type: PlayerType::Knight as i32,
            pos_info: Some(PosInfo {
                object_id: player_id,
                x,
                y,
                z: 0.0,
                yaw: 0.0,
                state: MoveState::Idle as i32,
            }),
            name: format!("player-{player_id}"),
        };
        let _ = tx.send(packet(
            PacketId::SEnterGame,
            &SEnterGame {
                success: true,
                player_id,
                player: Some(info.clone()),
            },
        ));
        let cell = self.cell_of(x, y);
        let seen = self.players_in(&self.block(cell), player_id);
        if !seen.is_empty() {
            let players: Vec<ObjectInfo> = seen
                .iter()
                .map(|id| self.players[id].info.clone())
                .collect();
            for spawn in spawn_packets(players) {
                let _ = tx.send(spawn);
            }
            let spawn_newcomer = packet(
                PacketId::SSpawn,
                &SSpawn {
                    players: vec![info.clone()],
                },
            );
            for id in &seen {
                self.players[id].send(&spawn_newcomer);
            }
        }
        self.cells[cell].push(player_id);
        self.players.insert(
            player_id,
            Resident {
                tx,
                info,
                cell,
                last_move: Instant::now(),
            },
        );
    }

    /// A `C_MOVE`: clamp, cut to the speed limit, move in the grid (with
    /// the despawns and spawns of a cell change), then `S_MOVE` to
    /// everyone who sees the new position, the mover included.
    fn move_player(&mut self, player_id: u64, wanted: &PosInfo, client_time_us: u64) {
        let now = Instant::now();
        let (x, y) = self.clamp(wanted.x, wanted.y);
        let max_speed = self.rules.max_speed;
        let Some(mover) = self.players.get_mut(&player_id) else {
            return;
        };
        let (from_x, from_y) = (mover.pos().x, mover.pos().y);
        let reach = max_speed * now.duration_since(mover.last_move).as_secs_f32() + MOVE_SLACK;
        let (dx, dy) = (x - from_x, y - from_y);
        let distance = (dx * dx + dy * dy).sqrt();
        let (x, y) = if distance > reach {
            let scale = reach / distance;
            (from_x + dx * scale, from_y + dy * scale)
        } else {
            (x, y)
        };
        mover.last_move = now;
        let pos = PosInfo {
            object_id: player_id,
            x,
            y,
            z: wanted.z,
            yaw: wanted.yaw,
            state: wanted.state,
        };
        mover.info.pos_info = Some(pos);
        let old_cell = mover.cell;
        let new_cell = self.cell_of(x, y);
        if new_cell != old_cell {
            self.change_cell(player_id, old_cell, new_cell);
        }
        let s_move = packet(
            PacketId::SMove,
            &SMove {
                info: Some(pos),
                client_time_us,
            },
        );
        for &cell in &self.block(new_cell) {
            for id in &self.cells[cell] {
                self.players[id].send(&s_move);
            }
        }
    }

    /// Moves `player_id` from `old_cell` to `new_cell`: despawns between it
    /// and the players it no longer sees, spawns with those it newly sees.
    fn change_cell(&mut self, player_id: u64, old_cell: usize, new_cell: usize) {
        let cell = &mut self.cells[old_cell];
        if let Some(index) = cell.iter().position(|&id| id == player_id) {
            cell.swap_remove(index);
        }
        self.cells[new_cell].push(player_id);
        let old_block = self.block(old_cell);
        let new_block = self.block(new_cell);
        let left: Vec<usize> = old_block
            .iter()
            .copied()
            .filter(|cell| !new_block.contains(cell))
            .collect();
        let entered: Vec<usize> = new_block
            .iter()
            .copied()
            .filter(|cell| !old_block.contains(cell))
            .collect();
        let gone = self.players_in(&left, player_id);
        let new = self.players_in(&entered, player_id);
        let mover = &self.players[&player_id];
        if !gone.is_empty() {
            let despawn_mover = packet(
                PacketId::SDespawn,
                &SDespawn {
                    object_ids: vec![player_id],
                },
            );
            for id in &gone {
                self.players[id].send(&despawn_mover);
            }
            mover.send(&packet(PacketId::SDespawn, &SDespawn { object_ids: gone }));
        }
        if !new.is_empty() {
            let spawn_mover = packet(
                PacketId::SSpawn,
                &SSpawn {
                    players: vec![mover.info.clone()],
                },
            );
            for id in &new {
                self.players[id].send(&spawn_mover);
            }
            let players = new.iter().map(|id| self.players[id].info.clone()).collect();
            for spawn in spawn_packets(players) {
                mover.send(&spawn);
            }
        }
        self.players
            .get_mut(&player_id)
            .expect("the mover is in the world")
            .cell = new_cell;
    }

    /// The player leaves: `S_DESPAWN` of it to everyone who saw it.
    fn leave(&mut self, player_id: u64) {
        let Some(leaver) = self.players.remove(&player_id) else {
            return;
        };
        let cell = &mut self.cells[leaver.cell];
        if let Some(index) = cell.iter().position(|&id| id == player_id) {
            cell.swap_remove(index);
        }
        let despawn = packet(
            PacketId::SDespawn,
            &SDespawn {
                object_ids: vec![player_id],
            },
        );
        for id in self.players_in(&self.block(leaver.cell), player_id) {
            self.players[&id].send(&despawn);
        }
    }

    /// World chat: the `S_CHAT` to every player in the world.
    fn broadcast(&self, chat: &Bytes) {
        for player in self.players.values() {
            player.send(chat);
        }
    }
}

/// A point of the map chosen by `seed` (splitmix64), for a new player.
fn random_point(seed: u64, size: f32) -> (f32, f32) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    };
    (next() * size, next() * size)
}

/// Players per `S_SPAWN`: a crowd's list is split so that every packet
/// stays far below the 16-bit size field (an `ObjectInfo` is ~40 bytes).
const SPAWNS_PER_PACKET: usize = 500;

/// `S_SPAWN` packets announcing `players`, at most [`SPAWNS_PER_PACKET`]
/// each.
fn spawn_packets(players: Vec<ObjectInfo>) -> Vec<Bytes> {
    players
        .chunks(SPAWNS_PER_PACKET)
        .map(|chunk| {
            packet(
                PacketId::SSpawn,
                &SSpawn {
                    players: chunk.to_vec(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids and decoded bodies queued on a channel so far.
    fn drain(rx: &mut mpsc::UnboundedReceiver<Bytes>) -> Vec<(u16, Bytes)> {
        let mut out = Vec::new();
        while let Ok(bytes) = rx.try_recv() {
            let frame = proto::split_frame(&bytes).unwrap().unwrap();
            assert_eq!(frame.len, bytes.len(), "one packet per Bytes");
            out.push((frame.id, Bytes::copy_from_slice(frame.body)));
        }
        out
    }

    fn ids(packets: &[(u16, Bytes)]) -> Vec<PacketId> {
        packets
            .iter()
            .map(|(id, _)| PacketId::from_u16(*id).unwrap())
            .collect()
    }

    /// A world with two players at chosen points.
    fn two_players(
        a: (f32, f32),
        b: (f32, f32),
    ) -> (
        World,
        mpsc::UnboundedReceiver<Bytes>,
        mpsc::UnboundedReceiver<Bytes>,
    ) {
        let mut world = World::new(WorldRules::default());
        let (tx_a, mut rx_a) = mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = mpsc::unbounded_channel();
        world.enter(1, tx_a);
        world.enter(2, tx_b);
        for (id, (x, y)) in [(1, a), (2, b)] {
            // Teleport for the test: place directly, then fix the grid.
            let old = world.players[&id].cell;
            let new = world.cell_of(x, y);
            world.cells[old].retain(|&p| p != id);
            world.cells[new].push(id);
            let resident = world.players.get_mut(&id).unwrap();
            resident.cell = new;
            let pos = resident.info.pos_info.as_mut().unwrap();
            pos.x = x;
            pos.y = y;
        }
        drain(&mut rx_a);
        drain(&mut rx_b);
        (world, rx_a, rx_b)
    }

    fn pos(x: f32, y: f32) -> PosInfo {
        PosInfo {
            x,
            y,
            ..PosInfo::default()
        }
    }

    #[test]
    fn enter_spawns_both_ways_for_neighbours() {
        let mut world = World::new(WorldRules {
            size: 100.0,
            cell: 100.0,
            max_speed: 300.0,
        });
        let (tx_a, mut rx_a) = mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = mpsc::unbounded_channel();
        world.enter(1, tx_a);
        assert_eq!(ids(&drain(&mut rx_a)), [PacketId::SEnterGame]);
        world.enter(2, tx_b);
        let b = drain(&mut rx_b);
        assert_eq!(ids(&b), [PacketId::SEnterGame, PacketId::SSpawn]);
        let spawn = SSpawn::decode(b[1].1.clone()).unwrap();
        assert_eq!(spawn.players.len(), 1);
        assert_eq!(spawn.players[0].object_id, 1);
        let a = drain(&mut rx_a);
        assert_eq!(ids(&a), [PacketId::SSpawn]);
        assert_eq!(
            SSpawn::decode(a[0].1.clone()).unwrap().players[0].object_id,
            2
        );
        world.leave(1);
        let b = drain(&mut rx_b);
        assert_eq!(ids(&b), [PacketId::SDespawn]);
        assert_eq!(SDespawn::decode(b[0].1.clone()).unwrap().object_ids, [1]);
    }

    #[test]
    fn a_move_reaches_everyone_who_sees_the_mover_and_echoes_the_time() {
        let (mut world, mut rx_a, mut rx_b) = two_players((150.0, 150.0), (250.0, 150.0));
        world.move_player(1, &pos(160.0, 150.0), 77);
        for rx in [&mut rx_a, &mut rx_b] {
            let got = drain(rx);
            assert_eq!(ids(&got), [PacketId::SMove]);
            let s_move = SMove::decode(got[0].1.clone()).unwrap();
            assert_eq!(s_move.client_time_us, 77);
            let info = s_move.info.unwrap();
            assert_eq!((info.object_id, info.x, info.y), (1, 160.0, 150.0));
        }
    }

    #[test]
    fn a_cell_change_despawns_and_spawns_before_the_move() {
        // b at cell column 3; a walks from column 1 (sees b? no: 1 vs 3)
        // into column 2 (sees b), then back.
        let (mut world, mut rx_a, mut rx_b) = two_players((190.0, 150.0), (350.0, 150.0));
        world.move_player(1, &pos(210.0, 150.0), 1);
        let a = drain(&mut rx_a);
        assert_eq!(ids(&a), [PacketId::SSpawn, PacketId::SMove]);
        assert_eq!(
            SSpawn::decode(a[0].1.clone()).unwrap().players[0].object_id,
            2
        );
        let b = drain(&mut rx_b);
        assert_eq!(ids(&b), [PacketId::SSpawn, PacketId::SMove]);
        world.move_player(1, &pos(190.0, 150.0), 2);
        let a = drain(&mut rx_a);
        assert_eq!(ids(&a), [PacketId::SDespawn, PacketId::SMove]);
        assert_eq!(SDespawn::decode(a[0].1.clone()).unwrap().object_ids, [2]);
        assert_eq!(ids(&drain(&mut rx_b)), [PacketId::SDespawn]);
    }

    #[test]
    fn moves_are_clamped_to_the_map_and_cut_to_the_speed_limit() {
        let (mut world, mut rx_a, _rx_b) = two_players((10.0, 10.0), (1900.0, 1900.0));
        world.move_player(1, &pos(-30.0, 20.0), 1);
        let got = drain(&mut rx_a);
        let info = SMove::decode(got[0].1.clone()).unwrap().info.unwrap();
        assert_eq!((info.x, info.y), (0.0, 20.0));
        // A jump across the map right after is cut to about 50 units.
        world.move_player(1, &pos(1000.0, 20.0), 2);
        let got = drain(&mut rx_a);
        let info = SMove::decode(got.last().unwrap().1.clone())
            .unwrap()
            .info
            .unwrap();
        assert!(info.x > 49.0 && info.x < 60.0, "{info:?}");
        assert_eq!(info.y, 20.0);
    }
}
