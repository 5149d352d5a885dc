//! Pooled packet building: the course's `SendBufferManager::Open/Close`.
//!
//! This module owns the send-side chunks. A [`PacketWriter`] holds one
//! `BytesMut` chunk ([`CHUNK_SIZE`] by default); each packet's header and
//! protobuf body are encoded in place at the chunk's free end, then split off
//! and frozen into a [`Bytes`] that shares the chunk. A new chunk is taken
//! only when the current one has no room left, and even then the old one is
//! reclaimed without allocating when every packet cut from it has been
//! dropped (written to the socket). A chunk whose packets still wait (a slow
//! reader's queue) is retired onto a short free list (at most four per
//! writer) and reused once they are gone, rather than freed and allocated
//! again. So in the steady state building a packet allocates nothing.
//!
//! [`make_packet`] and friends use one writer per thread, the course's
//! thread-local `SendBufferChunk`.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{PacketHeader, HEADER_SIZE, MAX_PACKET_SIZE};
use super::Packet;

/// Size of one pooled chunk: 64 KiB, room for the largest packet.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Retired chunks a writer keeps for reuse. A listed chunk stays allocated
/// (that is the point) and its packets are not copied out of it while they
/// wait, so a writer holds at most 256 KiB beyond its current chunk.
const RETIRED_CHUNKS: usize = 4;

/// A packet would not fit the `u16` size field of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet id {id} would be {size} bytes, above the {MAX_PACKET_SIZE}-byte maximum")]
pub struct PacketTooLarge {
    /// The packet id.
    pub id: u16,
    /// The size it would have had, header included.
    pub size: usize,
}

/// Builds packets into pooled chunks.
///
/// Each call to [`write`](PacketWriter::write) returns an independent,
/// immutable [`Bytes`]; many of them share one chunk, which is freed (or
/// reused) once they are all dropped.
#[derive(Debug)]
pub struct PacketWriter {
    chunk: BytesMut,
    /// Earlier chunks whose packets were still alive when the writer moved
    /// on, kept (at most [`RETIRED_CHUNKS`]) to be reused once they are gone.
    retired: Vec<BytesMut>,
    chunk_size: usize,
    chunks_allocated: u64,
}

impl Default for PacketWriter {
    fn default() -> Self {
        PacketWriter::new()
    }
}

impl PacketWriter {
    /// A writer with [`CHUNK_SIZE`] chunks. Allocates nothing until the
    /// first packet.
    pub fn new() -> PacketWriter {
        PacketWriter::with_chunk_size(CHUNK_SIZE)
    }

    /// A writer with chunks of `chunk_size` bytes (at least
    /// [`MAX_PACKET_SIZE`], so that any packet fits one chunk).
    pub fn with_chunk_size(chunk_size: usize) -> PacketWriter {
        PacketWriter {
            chunk: BytesMut::new(),
            retired: Vec::new(),
            chunk_size: chunk_size.max(MAX_PACKET_SIZE),
            chunks_allocated: 0,
        }
    }

    /// How many chunks this writer has allocated so far (reclaimed chunks
    /// are not counted again).
    pub fn chunks_allocated(&self) -> u64 {
        self.chunks_allocated
    }

    /// Builds packet `id` with `msg` as body.
    pub fn write<M: prost::Message>(&mut self, id: u16, msg: &M) -> Result<Bytes, PacketTooLarge> {
        let body_len = msg.encoded_len();
        self.write_with(id, body_len, |chunk| {
            // Cannot fail: a `BytesMut` always has room to grow, and the
            // chunk already holds `body_len` free bytes.
            let encoded = msg.encode(chunk);
            debug_assert!(encoded.is_ok());
        })
    }

    /// Builds packet `id` with a body already encoded (relays, echo).
    pub fn write_raw(&mut self, id: u16, body: &[u8]) -> Result<Bytes, PacketTooLarge> {
        self.write_with(id, body.len(), |chunk| chunk.put_slice(body))
    }

    fn write_with(
        &mut self,
        id: u16,
        body_len: usize,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<Bytes, PacketTooLarge> {
        let size = HEADER_SIZE.saturating_add(body_len);
        let Ok(size16) = u16::try_from(size) else {
            return Err(PacketTooLarge { id, size });
        };
        self.reserve(size);
        self.chunk
            .put_slice(&PacketHeader { size: size16, id }.to_bytes());
        encode(&mut self.chunk);
        debug_assert_eq!(self.chunk.len(), size, "encoded_len disagrees with encode");
        Ok(self.chunk.split().freeze())
    }

    /// Makes room for `size` more bytes in the current chunk.
    fn reserve(&mut self, size: usize) {
        debug_assert!(self.chunk.is_empty());
        if self.chunk.capacity() >= size {
            return;
        }
        // Take the whole chunk back if every packet cut from it is gone...
        if self.chunk.try_reclaim(self.chunk_size) {
            return;
        }
        // Before the first chunk the writer holds an empty, unallocated one.
        let had_chunk = self.chunks_allocated > 0;
        // ...or an earlier one whose packets are all gone...
        let chunk_size = self.chunk_size;
        let free = self
            .retired
            .iter_mut()
            .position(|chunk| chunk.try_reclaim(chunk_size));
        let next = match free {
            Some(index) => self.retired.swap_remove(index),
            // ...or start a new one.
            None => {
                self.chunks_allocated += 1;
                BytesMut::with_capacity(self.chunk_size)
            }
        };
        // The old one lives on in its packets; kept to be reused after them.
        let old = std::mem::replace(&mut self.chunk, next);
        if had_chunk {
            if self.retired.len() == RETIRED_CHUNKS {
                // The oldest is freed when its last packet is.
                self.retired.remove(0);
            }
            self.retired.push(old);
        }
    }
}

thread_local! {
    static WRITER: RefCell<PacketWriter> = RefCell::new(PacketWriter::new());
}

/// Builds packet `id` with `msg` as body, in this thread's pooled chunk.
pub fn write_packet<M: prost::Message>(id: u16, msg: &M) -> Result<Bytes, PacketTooLarge> {
    WRITER.with(|writer| writer.borrow_mut().write(id, msg))
}

/// Builds packet `M::ID` from `msg`, in this thread's pooled chunk.
pub fn try_make_packet<M: Packet>(msg: &M) -> Result<Bytes, PacketTooLarge> {
    write_packet(M::ID, msg)
}

/// Builds packet `M::ID` from `msg`, in this thread's pooled chunk: the
/// typed builder behind every generated message.
///
/// # Panics
/// If the packet would exceed [`MAX_PACKET_SIZE`] (65535 bytes). Where the
/// size depends on what a peer sent (a chat line relayed with extra
/// fields), bound the input or use [`try_make_packet`].
pub fn make_packet<M: Packet>(msg: &M) -> Bytes {
    match try_make_packet(msg) {
        Ok(bytes) => bytes,
        Err(error) => panic!("make_packet({}): {error}", M::NAME),
    }
}

/// Builds packet `id` with `body` copied in as is, in this thread's pooled
/// chunk.
pub fn make_raw_packet(id: u16, body: &[u8]) -> Result<Bytes, PacketTooLarge> {
    WRITER.with(|writer| writer.borrow_mut().write_raw(id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::frame::split_frame;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Chat {
        #[prost(uint64, tag = "1")]
        player_id: u64,
        #[prost(string, tag = "2")]
        msg: String,
    }

    impl Packet for Chat {
        const ID: u16 = 1005;
        const NAME: &'static str = "S_CHAT";
    }

    #[test]
    fn header_and_body_in_place() {
        let msg = Chat {
            player_id: 1,
            msg: "hi".into(),
        };
        let packet = make_packet(&msg);
        assert_eq!(
            &packet[..],
            &[10, 0, 0xed, 0x03, 0x08, 0x01, 0x12, 0x02, b'h', b'i']
        );
        let raw = split_frame(&packet, MAX_PACKET_SIZE).unwrap().unwrap();
        assert_eq!(raw.id, 1005);
        assert_eq!(<Chat as prost::Message>::decode(raw.body).unwrap(), msg);
        assert_eq!(msg.to_packet(), packet);
    }

    #[test]
    fn packets_share_a_chunk_and_stay_independent() {
        let mut writer = PacketWriter::new();
        let a = writer.write_raw(1, b"aaaa").unwrap();
        let b = writer.write_raw(2, b"bb").unwrap();
        assert_eq!(&a[..], &[8, 0, 1, 0, b'a', b'a', b'a', b'a']);
        assert_eq!(&b[..], &[6, 0, 2, 0, b'b', b'b']);
        assert_eq!(writer.chunks_allocated(), 1);
        // b follows a in the same allocation.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
    }

    #[test]
    fn a_new_chunk_only_when_full_and_reclaimed_when_free() {
        let mut writer = PacketWriter::new();
        let body = vec![7u8; 1000];
        let mut kept = Vec::new();
        for _ in 0..200 {
            kept.push(writer.write_raw(3, &body).unwrap());
        }
        // 200 * 1004 bytes over 64 KiB chunks: 4 chunks.
        assert_eq!(writer.chunks_allocated(), 4);
        drop(kept);
        for _ in 0..10_000 {
            let packet = writer.write_raw(3, &body).unwrap();
            assert_eq!(packet.len(), 1004);
        }
        assert_eq!(writer.chunks_allocated(), 4, "free chunks are reclaimed");
    }

    #[test]
    fn a_retired_chunk_is_reused_once_its_packets_are_gone() {
        let mut writer = PacketWriter::new();
        let body = vec![7u8; 1000];
        // 65 packets of 1004 bytes fill one 64 KiB chunk.
        let first: Vec<Bytes> = (0..65)
            .map(|_| writer.write_raw(3, &body).unwrap())
            .collect();
        let second: Vec<Bytes> = (0..65)
            .map(|_| writer.write_raw(3, &body).unwrap())
            .collect();
        assert_eq!(writer.chunks_allocated(), 2);
        // The first chunk's packets are written; the second's still wait
        // (a slow reader), so the current chunk cannot be taken back.
        drop(first);
        let third: Vec<Bytes> = (0..65)
            .map(|_| writer.write_raw(3, &body).unwrap())
            .collect();
        assert_eq!(
            writer.chunks_allocated(),
            2,
            "the first chunk is reused, not a new one allocated"
        );
        drop((second, third));
    }

    #[test]
    fn the_free_list_is_bounded() {
        let mut writer = PacketWriter::new();
        let body = vec![7u8; 1000];
        // Every chunk stays referenced: each switch retires one more.
        let kept: Vec<Bytes> = (0..65 * 20)
            .map(|_| writer.write_raw(3, &body).unwrap())
            .collect();
        assert_eq!(writer.chunks_allocated(), 20);
        assert!(writer.retired.len() <= RETIRED_CHUNKS);
        drop(kept);
    }

    #[test]
    fn largest_packet_fits_and_larger_is_refused() {
        let mut writer = PacketWriter::new();
        let body = vec![1u8; MAX_PACKET_SIZE - HEADER_SIZE];
        let packet = writer.write_raw(9, &body).unwrap();
        assert_eq!(packet.len(), MAX_PACKET_SIZE);
        assert_eq!(&packet[..4], &[0xff, 0xff, 9, 0]);
        let too_big = vec![1u8; MAX_PACKET_SIZE - HEADER_SIZE + 1];
        assert_eq!(
            writer.write_raw(9, &too_big),
            Err(PacketTooLarge {
                id: 9,
                size: MAX_PACKET_SIZE + 1
            })
        );
        let huge = Chat {
            player_id: 0,
            msg: "x".repeat(MAX_PACKET_SIZE),
        };
        assert!(try_make_packet(&huge).is_err());
    }

    #[test]
    #[should_panic(expected = "make_packet(S_CHAT)")]
    fn make_packet_panics_with_the_name_when_too_large() {
        let huge = Chat {
            player_id: 0,
            msg: "x".repeat(MAX_PACKET_SIZE),
        };
        let _ = make_packet(&huge);
    }
}
