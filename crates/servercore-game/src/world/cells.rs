//! What a tick publishes about each cell, and the packets built from it.
//!
//! After the first phases of a tick every region publishes one immutable
//! [`RegionTick`]: for each of its cells the tick's `S_MOVE`s of the players
//! whose tick-end cell it is (one shared buffer), those players (with the
//! cell each stood in at the end of the previous tick), and the players
//! that left the cell (with where they went). Every receiver's write of the
//! tick is put together from these, read-only, by whichever region owns
//! the receiver; nothing here knows of sessions.
//!
//! This module also owns the packet building the world needs beyond
//! single messages: `S_SPAWN` lists made from pre-encoded entries and split
//! into packets under 64 KiB, packed `S_DESPAWN`s, and the concatenated
//! view of a 3×3 block.

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use servercore::packet::{Packet, PacketHeader, HEADER_SIZE};
use servercore_protocol::{ObjectInfo, PosInfo, SDespawn, SMove, SSpawn};

use super::grid::Cell;
use super::Identity;

/// Largest body of one `S_SPAWN` or `S_DESPAWN` the world builds: a packet
/// stays under 64 KiB (the header's `u16` size) with room to spare.
pub const MAX_LIST_BODY: usize = 60 * 1024;

/// One region's cells as they stand at the end of a tick.
#[derive(Default)]
pub(super) struct RegionTick {
    /// The tick this describes (0: nothing published yet).
    pub tick: u64,
    /// Indexed by the cell's place in its region (row by row).
    pub cells: Vec<CellTick>,
}

/// One cell at the end of a tick.
#[derive(Default)]
pub(super) struct CellTick {
    /// The tick's `S_MOVE` packets of the players whose tick-end cell this
    /// is, each player's together, in the order they were accepted.
    pub moves: Bytes,
    /// How many `S_MOVE` packets `moves` holds.
    pub move_count: usize,
    /// The players whose tick-end cell this is.
    pub members: Vec<Member>,
    /// The players whose previous tick-end cell this was and who are now
    /// elsewhere (`Some(cell)`) or out of the world (`None`).
    pub departed: Vec<Departure>,
    /// A remote cell only: the last moves, sent by another node, of players
    /// handed over to this one that stand in this cell here now (not for
    /// those players themselves).
    pub late_moves: Bytes,
    /// How many `S_MOVE` packets `late_moves` holds.
    pub late_count: usize,
}

/// A player in a cell at the end of a tick.
pub(super) struct Member {
    /// The player's id.
    pub id: u64,
    /// Its cell at the end of the previous tick (`None`: it entered in this one).
    pub prev: Option<Cell>,
    /// Where it stands.
    pub pos: PosInfo,
    /// The last tick it moved in (0: not since it entered).
    pub moved: u64,
    pub identity: Arc<Identity>,
    info: OnceLock<Bytes>,
    latest: OnceLock<Bytes>,
}

impl Member {
    pub fn new(
        id: u64,
        prev: Option<Cell>,
        pos: PosInfo,
        moved: u64,
        identity: Arc<Identity>,
    ) -> Member {
        Member {
            id,
            prev,
            pos,
            moved,
            identity,
            info: OnceLock::new(),
            latest: OnceLock::new(),
        }
    }

    /// The player's `ObjectInfo` as one entry of `S_SPAWN.players` (field
    /// key, length, message), encoded the first time a receiver needs it
    /// this tick and shared by every other.
    pub fn spawn_entry(&self) -> &Bytes {
        self.info.get_or_init(|| {
            let info = ObjectInfo {
                object_id: self.id,
                player_type: self.identity.player_type,
                pos_info: Some(self.pos),
                name: self.identity.name.clone(),
            };
            let mut buf = BytesMut::with_capacity(info.encoded_len() + 4);
            prost::encoding::message::encode(1, &info, &mut buf);
            buf.freeze()
        })
    }

    /// An `S_MOVE` of where the player stands now (`client_time_us` 0: not
    /// an answer to any `C_MOVE`), for the thinned view of a crowd.
    pub fn position_packet(&self) -> &Bytes {
        self.latest.get_or_init(|| {
            let mut buf = BytesMut::new();
            put_packet(
                &mut buf,
                &SMove {
                    info: Some(self.pos),
                    client_time_us: 0,
                },
            );
            buf.freeze()
        })
    }
}

/// A player that left a cell in a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Departure {
    pub id: u64,
    /// Its new cell, or `None` if it left the world.
    pub to: Option<Cell>,
}

/// Appends packet `M` (header and body) to `buf`.
pub(super) fn put_packet<M: Packet>(buf: &mut BytesMut, msg: &M) {
    let size = HEADER_SIZE + msg.encoded_len();
    let size = u16::try_from(size).expect("world packets are far below 64 KiB");
    buf.reserve(usize::from(size));
    buf.put_slice(&PacketHeader { size, id: M::ID }.to_bytes());
    msg.encode(buf)
        .expect("a BytesMut grows to take any message");
}

/// Builds list packets of id `id` from pre-encoded body parts, starting a
/// new packet whenever the next part would take the body past
/// [`MAX_LIST_BODY`].
struct ListPackets<'a> {
    buf: &'a mut BytesMut,
    id: u16,
    /// Where the open packet's header starts, if one is open.
    open: Option<usize>,
    packets: usize,
}

impl<'a> ListPackets<'a> {
    fn new(buf: &'a mut BytesMut, id: u16) -> ListPackets<'a> {
        ListPackets {
            buf,
            id,
            open: None,
            packets: 0,
        }
    }

    /// Makes room for a part of `len` bytes, closing the open packet if it
    /// would not fit.
    fn room(&mut self, len: usize) {
        if let Some(start) = self.open {
            if self.buf.len() - start - HEADER_SIZE + len > MAX_LIST_BODY {
                self.close();
            }
        }
        if self.open.is_none() {
            self.open = Some(self.buf.len());
            self.buf.put_slice(&[0; HEADER_SIZE]);
            self.packets += 1;
        }
    }

    fn push(&mut self, part: &[u8]) {
        self.room(part.len());
        self.buf.put_slice(part);
    }

    fn close(&mut self) {
        if let Some(start) = self.open.take() {
            let size = u16::try_from(self.buf.len() - start).expect("bounded by MAX_LIST_BODY");
            self.buf[start..start + HEADER_SIZE]
                .copy_from_slice(&PacketHeader { size, id: self.id }.to_bytes());
        }
    }

    fn finish(mut self) -> usize {
        self.close();
        self.packets
    }
}

/// Appends `S_SPAWN` packets listing `entries` (from
/// [`Member::spawn_entry`]) to `buf`; returns how many packets.
pub(super) fn put_spawns<'e>(
    buf: &mut BytesMut,
    entries: impl IntoIterator<Item = &'e Bytes>,
) -> usize {
    let mut list = ListPackets::new(buf, SSpawn::ID);
    for entry in entries {
        list.push(entry);
    }
    list.finish()
}

/// Appends `S_DESPAWN` packets of `ids` to `buf`; returns how many packets.
pub(super) fn put_despawns(buf: &mut BytesMut, ids: &[u64]) -> usize {
    // A packed list is one field; split into runs whose encoding fits.
    let mut packets = 0;
    let mut start = 0;
    while start < ids.len() {
        let mut end = start;
        let mut len = 0;
        while end < ids.len() {
            let id_len = prost::encoding::encoded_len_varint(ids[end]);
            if len + id_len > MAX_LIST_BODY - 16 {
                break;
            }
            len += id_len;
            end += 1;
        }
        put_packet(
            buf,
            &SDespawn {
                object_ids: ids[start..end].to_vec(),
            },
        );
        packets += 1;
        start = end;
    }
    packets
}

#[cfg(test)]
mod tests {
    use super::*;
    use servercore::packet::Frames;
    use servercore_protocol::PlayerType;

    fn member(id: u64, name_len: usize) -> Member {
        Member::new(
            id,
            None,
            PosInfo {
                object_id: id,
                x: 1.5,
                y: 2.5,
                ..PosInfo::default()
            },
            0,
            Arc::new(Identity {
                name: "n".repeat(name_len),
                player_type: PlayerType::Mage as i32,
            }),
        )
    }

    fn frames(buf: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut frames = Frames::new(buf, servercore::packet::MAX_PACKET_SIZE);
        let mut out = Vec::new();
        for frame in frames.by_ref() {
            let frame = frame.expect("valid frame");
            out.push((frame.id, frame.body.to_vec()));
        }
        assert!(frames.remaining().is_empty(), "no partial packet");
        out
    }

    #[test]
    fn a_spawn_entry_is_the_field_of_a_real_s_spawn() {
        let members: Vec<Member> = (1..=3).map(|id| member(id, 5)).collect();
        let mut buf = BytesMut::new();
        assert_eq!(
            put_spawns(&mut buf, members.iter().map(Member::spawn_entry)),
            1
        );
        let expected = servercore_protocol::make_packet(&SSpawn {
            players: members
                .iter()
                .map(|m| ObjectInfo {
                    object_id: m.id,
                    player_type: PlayerType::Mage as i32,
                    pos_info: Some(m.pos),
                    name: "nnnnn".into(),
                })
                .collect(),
        });
        assert_eq!(&buf[..], &expected[..]);
    }

    #[test]
    fn a_crowd_spawn_is_split_under_64_kib_and_lists_everyone_once() {
        let members: Vec<Member> = (1..=5000).map(|id| member(id, 20)).collect();
        let mut buf = BytesMut::new();
        let packets = put_spawns(&mut buf, members.iter().map(Member::spawn_entry));
        let frames = frames(&buf);
        assert_eq!(frames.len(), packets);
        assert!(packets >= 4, "{packets} packets for 5000 players");
        let mut ids = Vec::new();
        for (id, body) in &frames {
            assert_eq!(*id, SSpawn::ID);
            assert!(body.len() + HEADER_SIZE <= 64 * 1024);
            let spawn = SSpawn::decode(&body[..]).unwrap();
            ids.extend(spawn.players.iter().map(|p| p.object_id));
        }
        assert_eq!(ids, (1..=5000).collect::<Vec<u64>>());
    }

    #[test]
    fn despawns_are_split_and_packed() {
        let mut buf = BytesMut::new();
        assert_eq!(put_despawns(&mut buf, &[]), 0);
        assert!(buf.is_empty());
        let ids: Vec<u64> = (0..20_000).map(|i| u64::MAX - i).collect();
        let packets = put_despawns(&mut buf, &ids);
        let frames = frames(&buf);
        assert_eq!(frames.len(), packets);
        assert!(packets >= 3);
        let got: Vec<u64> = frames
            .iter()
            .flat_map(|(_, body)| SDespawn::decode(&body[..]).unwrap().object_ids)
            .collect();
        assert_eq!(got, ids);
    }

    #[test]
    fn a_position_packet_has_no_client_time() {
        let m = member(7, 3);
        let got = frames(m.position_packet());
        assert_eq!(got.len(), 1);
        let mv = SMove::decode(&got[0].1[..]).unwrap();
        assert_eq!((mv.info, mv.client_time_us), (Some(m.pos), 0));
    }
}
