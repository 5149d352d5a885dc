//! Fuzzes the packet layer with arbitrary bytes from a peer: the frame
//! splitter, the per-session receiver (fed in chunks, as the engine does),
//! and the generated server and client dispatch.
//!
//! Input layout: byte 0 picks the chunk size the stream is fed in, byte 1
//! the maximum packet size; the rest is the stream.
//!
//! Checked, besides "no panic, no hang":
//! - every packet the splitter yields respects the maximum size;
//! - feeding the stream in chunks (keeping unconsumed bytes, like the
//!   engine) yields exactly the packets, and the error, of feeding it whole;
//! - what is kept between chunks never exceeds one packet;
//! - every message the dispatcher decodes re-encodes, through the pooled
//!   writer, into a packet that decodes to the same message.

#![no_main]

use std::ops::ControlFlow;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use servercore::packet::{
    split_frame, DispatchError, DispatchResult, Frames, Packet, PacketConfig, PacketReceiver,
    RateLimits, Violation, HEADER_SIZE, MAX_PACKET_SIZE,
};
use servercore_protocol::{
    dispatch_client, dispatch_server, make_packet, CChat, CEnterGame, CLogin, ClientHandler, SChat,
    SEnterGame, SLogin, ServerHandler,
};

/// Checks that `msg` survives make_packet -> split -> decode.
fn round_trip<M: Packet + PartialEq + std::fmt::Debug>(msg: M) -> DispatchResult {
    let Ok(bytes) = servercore::packet::try_make_packet(&msg) else {
        // Only possible for a body near 65535 bytes; the input is smaller.
        return Ok(());
    };
    let packet = split_frame(&bytes, MAX_PACKET_SIZE)
        .expect("own packet is well framed")
        .expect("own packet is whole");
    assert_eq!(packet.id, M::ID);
    assert_eq!(packet.wire_len(), bytes.len());
    let again = M::decode(packet.body).expect("own packet decodes");
    assert_eq!(again, msg);
    let _ = make_packet(&again);
    Ok(())
}

struct Sink;

impl ServerHandler<()> for Sink {
    fn handle_c_login(&mut self, _: &(), msg: CLogin) -> DispatchResult {
        round_trip(msg)
    }
    fn handle_c_enter_game(&mut self, _: &(), msg: CEnterGame) -> DispatchResult {
        round_trip(msg)
    }
    fn handle_c_chat(&mut self, _: &(), msg: CChat) -> DispatchResult {
        round_trip(msg)
    }
}

impl ClientHandler<()> for Sink {
    fn handle_s_login(&mut self, _: &(), msg: SLogin) -> DispatchResult {
        round_trip(msg)
    }
    fn handle_s_enter_game(&mut self, _: &(), msg: SEnterGame) -> DispatchResult {
        round_trip(msg)
    }
    fn handle_s_chat(&mut self, _: &(), msg: SChat) -> DispatchResult {
        round_trip(msg)
    }
}

fuzz_target!(|data: &[u8]| {
    let (chunk, max, stream) = match data {
        [c, m, rest @ ..] => (*c as usize + 1, HEADER_SIZE + *m as usize * 257, rest),
        _ => return,
    };
    let max = max.min(MAX_PACKET_SIZE);

    // 1. The whole stream at once through the pure splitter, dispatching
    //    every packet on both sides.
    let mut whole = Vec::new();
    let mut frames = Frames::new(stream, max);
    let mut whole_error = None;
    for frame in frames.by_ref() {
        match frame {
            Ok(packet) => {
                assert!(packet.wire_len() <= max);
                let server = dispatch_server(&mut Sink, &(), packet.id, packet.body);
                let client = dispatch_client(&mut Sink, &(), packet.id, packet.body);
                // An id is the server's, the client's, or unknown to both.
                if let (Err(DispatchError::UnknownId(_)), other)
                | (other, Err(DispatchError::UnknownId(_))) = (&server, &client)
                {
                    assert!(matches!(other, Err(DispatchError::UnknownId(_))));
                }
                whole.push((packet.id, packet.body.to_vec()));
            }
            Err(error) => whole_error = Some(error),
        }
    }
    assert!(frames.consumed() <= stream.len());

    // 2. The same stream in chunks through a session's receiver, keeping the
    //    unconsumed bytes like the engine does.
    let config = PacketConfig::default()
        .with_max_packet_size(max)
        .with_rate_limits(RateLimits::unlimited());
    let mut receiver = PacketReceiver::new(config);
    let mut leftover: Vec<u8> = Vec::new();
    let mut chunked = Vec::new();
    let mut chunked_error = None;
    let now = Instant::now();
    for piece in stream.chunks(chunk) {
        leftover.extend_from_slice(piece);
        let outcome = receiver.receive(&leftover, now, |packet| {
            chunked.push((packet.id, packet.body.to_vec()));
            let _ = dispatch_server(&mut Sink, &(), packet.id, packet.body);
            Ok(ControlFlow::Continue(()))
        });
        leftover.drain(..outcome.consumed);
        if let Some(violation) = outcome.violation {
            match violation {
                Violation::Frame(error) => chunked_error = Some(error),
                other => panic!("unexpected violation {other}"),
            }
            break;
        }
        assert!(
            leftover.len() < max.max(HEADER_SIZE),
            "kept more than a packet"
        );
    }
    assert_eq!(chunked, whole, "chunking changed the packets");
    assert_eq!(chunked_error, whole_error, "chunking changed the error");
});
