//! The game protocol as the benchmark speaks it: the messages of
//! `proto/protocol.proto` that the broadcast scenario uses, their packet ids,
//! and the `[size u16 LE][id u16 LE][protobuf body]` framing.
//!
//! The tokio baseline, the benchmark's own engine chat server and the load
//! generator all share these definitions, so the three sides cannot drift
//! apart. The structs are hand-written prost messages with the field numbers
//! of the `.proto`; a wire-compatible peer (the C++ course client, the
//! sample game server) sees no difference.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

/// Size of the packet header: `[size u16 LE][id u16 LE]`.
pub const HEADER_SIZE: usize = 4;
/// Client → server: log in.
pub const C_LOGIN: u16 = 1000;
/// Server → client: the account's players.
pub const S_LOGIN: u16 = 1001;
/// Client → server: enter the game with one of the players.
pub const C_ENTER_GAME: u16 = 1002;
/// Server → client: entered; carries the player id chats will name.
pub const S_ENTER_GAME: u16 = 1003;
/// Client → server: a chat line for the room.
pub const C_CHAT: u16 = 1004;
/// Server → client: a chat line of a room member (the sender included).
pub const S_CHAT: u16 = 1005;

/// Players each login offers (the course server's three characters).
pub const PLAYERS_PER_ACCOUNT: u64 = 3;

/// `protocol.Player`.
#[derive(Clone, PartialEq, Message)]
pub struct Player {
    /// Player id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Display name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// `PlayerType` as its number.
    #[prost(int32, tag = "3")]
    pub player_type: i32,
}

/// `protocol.C_LOGIN`.
#[derive(Clone, PartialEq, Message)]
pub struct CLogin {
    /// Account name; empty for a guest.
    #[prost(string, tag = "1")]
    pub account: String,
}

/// `protocol.S_LOGIN`.
#[derive(Clone, PartialEq, Message)]
pub struct SLogin {
    /// Whether the login worked.
    #[prost(bool, tag = "1")]
    pub success: bool,
    /// The account's players.
    #[prost(message, repeated, tag = "2")]
    pub players: Vec<Player>,
}

/// `protocol.C_ENTER_GAME`.
#[derive(Clone, PartialEq, Message)]
pub struct CEnterGame {
    /// Index into the players of `S_LOGIN`.
    #[prost(uint64, tag = "1")]
    pub player_index: u64,
}

/// `protocol.S_ENTER_GAME`.
#[derive(Clone, PartialEq, Message)]
pub struct SEnterGame {
    /// Whether entering worked.
    #[prost(bool, tag = "1")]
    pub success: bool,
    /// The id `S_CHAT` will carry for this player.
    #[prost(uint64, tag = "2")]
    pub player_id: u64,
}

/// `protocol.C_CHAT`.
#[derive(Clone, PartialEq, Message)]
pub struct CChat {
    /// The line.
    #[prost(string, tag = "1")]
    pub msg: String,
    /// Sender's clock, echoed back in `S_CHAT` for latency.
    #[prost(uint64, tag = "2")]
    pub client_time_us: u64,
}

/// `protocol.S_CHAT`.
#[derive(Clone, PartialEq, Message)]
pub struct SChat {
    /// Who said it.
    #[prost(uint64, tag = "1")]
    pub player_id: u64,
    /// The line.
    #[prost(string, tag = "2")]
    pub msg: String,
    /// Copied from the `C_CHAT`.
    #[prost(uint64, tag = "3")]
    pub client_time_us: u64,
}

/// Encodes one packet (header and body) into a fresh `Bytes`.
///
/// # Panics
/// If the packet would not fit the 16-bit size field; the benchmark only
/// builds small packets.
pub fn packet<M: Message>(id: u16, msg: &M) -> Bytes {
    let size = HEADER_SIZE + msg.encoded_len();
    let size16 = u16::try_from(size).expect("benchmark packets are small");
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u16_le(size16);
    buf.put_u16_le(id);
    msg.encode(&mut buf).expect("capacity reserved");
    buf.freeze()
}

/// A frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Packet id.
    pub id: u16,
    /// Protobuf body.
    pub body: &'a [u8],
    /// Bytes the frame takes on the wire, header included.
    pub len: usize,
}

/// Why a byte stream is not a valid packet stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFrame {
    /// The size field that was read.
    pub size: u16,
}

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "packet size {} is below the 4-byte header", self.size)
    }
}

impl std::error::Error for BadFrame {}

/// Splits the first complete frame off `buf`: `Ok(None)` when more bytes
/// are needed.
pub fn split_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, BadFrame> {
    if buf.len() < HEADER_SIZE {
        return Ok(None);
    }
    let size = u16::from_le_bytes([buf[0], buf[1]]);
    let id = u16::from_le_bytes([buf[2], buf[3]]);
    let len = usize::from(size);
    if len < HEADER_SIZE {
        return Err(BadFrame { size });
    }
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame {
        id,
        body: &buf[HEADER_SIZE..len],
        len,
    }))
}

/// `player_id` and `client_time_us` of an `S_CHAT` body, read without
/// allocating (the load generator reads a million of them per second).
/// Unknown fields are skipped; `None` if the body is not valid protobuf.
pub fn peek_chat(body: &[u8]) -> Option<(u64, u64)> {
    let mut player_id = 0;
    let mut client_time_us = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let key = read_varint(&mut rest)?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                let value = read_varint(&mut rest)?;
                match field {
                    1 => player_id = value,
                    3 => client_time_us = value,
                    _ => {}
                }
            }
            1 => rest = rest.get(8..)?,
            2 => {
                let len = usize::try_from(read_varint(&mut rest)?).ok()?;
                rest = rest.get(len..)?;
            }
            5 => rest = rest.get(4..)?,
            _ => return None,
        }
    }
    Some((player_id, client_time_us))
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *buf = &buf[index + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_round_trips_through_split_frame() {
        let chat = SChat {
            player_id: 300,
            msg: "x".repeat(64),
            client_time_us: 1_234_567_890,
        };
        let bytes = packet(S_CHAT, &chat);
        assert_eq!(usize::from(u16::from_le_bytes([bytes[0], bytes[1]])), bytes.len());
        let frame = split_frame(&bytes).unwrap().unwrap();
        assert_eq!(frame.id, S_CHAT);
        assert_eq!(frame.len, bytes.len());
        assert_eq!(SChat::decode(frame.body).unwrap(), chat);
        assert_eq!(peek_chat(frame.body), Some((300, 1_234_567_890)));
        assert_eq!(split_frame(&bytes[..bytes.len() - 1]), Ok(None));
        assert_eq!(split_frame(&bytes[..3]), Ok(None));
    }

    #[test]
    fn undersized_frame_is_an_error() {
        assert_eq!(split_frame(&[2, 0, 0xe8, 0x03]), Err(BadFrame { size: 2 }));
    }

    #[test]
    fn peek_chat_rejects_garbage() {
        assert_eq!(peek_chat(&[0xff; 11]), None);
        assert_eq!(peek_chat(&[0x12, 0x05, b'a']), None);
        assert_eq!(peek_chat(&[]), Some((0, 0)));
    }
}
