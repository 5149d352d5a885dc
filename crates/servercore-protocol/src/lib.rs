//! The sample game's protocol: everything `servercore-codegen` generates at
//! build time from the project's copy of the reference protocol,
//! `proto/protocol.proto`.
//!
//! - the prost messages: [`CLogin`], [`SLogin`], [`CEnterGame`],
//!   [`SEnterGame`], [`CChat`], [`SChat`], the world's [`CLeaveGame`],
//!   [`SLeaveGame`], [`SSpawn`], [`SDespawn`], [`CMove`], [`SMove`], the
//!   cross-node [`STransfer`], and
//!   the plain structs (no id) [`Player`], [`PosInfo`], [`ObjectInfo`] and
//!   enums [`PlayerType`], [`MoveState`], [`LoginRefusal`] (`S_LOGIN.reason`);
//! - [`PacketId`] (`C_LOGIN = 1000` ... `S_TRANSFER = 1012`, in message order)
//!   and the id lists [`ALL_IDS`], [`SERVER_RECEIVES_IDS`],
//!   [`CLIENT_RECEIVES_IDS`];
//! - [`ServerHandler`] / [`dispatch_server`] for the `C_` packets the server
//!   receives, [`ClientHandler`] / [`dispatch_client`] for the `S_` packets
//!   the client receives, and the decoded-packet enums [`ServerPacket`] and
//!   [`ClientPacket`];
//! - [`make_packet`]: header and body written into servercore's pooled
//!   chunks, frozen into [`bytes::Bytes`].
//!
//! Every packet is `[size: u16 LE][id: u16 LE][protobuf body]`, the wire
//! format of the classic C++ clients; `proto/test_vectors.txt` pins the exact
//! bytes of one packet of each message (checked by this crate's tests).
//!
//! ```no_run
//! use servercore::packet::{DispatchError, PacketConfig, PacketHandler, PacketSession};
//! use servercore::{ServerService, SessionHandle};
//! use servercore_protocol::{dispatch_server, make_packet, CChat, SChat, ServerHandler};
//!
//! #[derive(Default)]
//! struct GameSession {
//!     player_id: u64,
//! }
//!
//! impl ServerHandler for GameSession {
//!     fn handle_c_chat(&mut self, session: &SessionHandle, msg: CChat) -> Result<(), DispatchError> {
//!         let reply = SChat {
//!             player_id: self.player_id,
//!             msg: msg.msg,
//!             client_time_us: msg.client_time_us,
//!         };
//!         let _ = session.send(make_packet(&reply));
//!         Ok(())
//!     }
//!     // C_LOGIN and C_ENTER_GAME keep their default: `Unexpected`, which
//!     // disconnects the peer with `MalformedPacket`.
//! }
//!
//! impl PacketHandler for GameSession {
//!     fn on_packet(&mut self, session: &SessionHandle, id: u16, body: &[u8]) -> Result<(), DispatchError> {
//!         dispatch_server(self, session, id, body)
//!     }
//! }
//!
//! let config = PacketConfig::default().with_known_ids(servercore_protocol::SERVER_RECEIVES_IDS.iter().copied());
//! let service = ServerService::builder("127.0.0.1:7777")
//!     .session(move || PacketSession::new(GameSession::default(), config.clone()))
//!     .start()?;
//! service.join();
//! # Ok::<(), servercore::StartError>(())
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

/// The prost messages of `protocol.proto` (package `protocol`), as
/// prost-build generates them; re-exported at the crate root.
pub mod messages {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/protocol.rs"));
}

pub use messages::*;

/// The protocol's source, `proto/protocol.proto`, as this crate was built
/// from it (the browser client compiles it at load time).
pub const PROTOCOL_PROTO: &str = include_str!("../proto/protocol.proto");

include!(concat!(env!("OUT_DIR"), "/protocol.packets.rs"));

#[cfg(test)]
mod tests;
