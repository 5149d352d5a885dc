//! The wire frame `[size: u16 LE][id: u16 LE][body]`, where `size` counts the
//! 4-byte header, and a pure splitter that disconnects a byte stream into frames.
//!
//! This module owns the header format and its validation. It does no I/O and
//! keeps no state: [`Frames`] walks a buffer, yields every whole packet in it
//! and tells how many bytes it consumed; the rest (a partial header or body)
//! is what a session keeps for the next receive. A header is checked as soon
//! as its 4 bytes are there, before the body arrives, so a hostile size is
//! refused without buffering anything.

use std::fmt;

/// Bytes of the header: `size` and `id`, two little-endian `u16`s.
pub const HEADER_SIZE: usize = 4;

/// The largest packet the header can describe (`u16::MAX`), header included.
pub const MAX_PACKET_SIZE: usize = u16::MAX as usize;

/// The 4-byte packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketHeader {
    /// Size of the whole packet, header included.
    pub size: u16,
    /// The packet id.
    pub id: u16,
}

impl PacketHeader {
    /// Reads a header from the first 4 bytes of `buf`; `None` if `buf` is
    /// shorter. The size is not validated (see [`split_frame`]).
    pub fn parse(buf: &[u8]) -> Option<PacketHeader> {
        match buf {
            [s0, s1, i0, i1, ..] => Some(PacketHeader {
                size: u16::from_le_bytes([*s0, *s1]),
                id: u16::from_le_bytes([*i0, *i1]),
            }),
            _ => None,
        }
    }

    /// The header as it goes on the wire.
    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let [s0, s1] = self.size.to_le_bytes();
        let [i0, i1] = self.id.to_le_bytes();
        [s0, s1, i0, i1]
    }

    /// Bytes of body that follow the header (0 for an invalid size).
    pub fn body_len(self) -> usize {
        (self.size as usize).saturating_sub(HEADER_SIZE)
    }
}

/// A header whose size breaks the framing rules. Either ends the session
/// with `MalformedPacket` carrying this error's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The size is smaller than the header itself.
    #[error("packet size {size} is below the {HEADER_SIZE}-byte header (id {id})")]
    TooSmall {
        /// The size the header claimed.
        size: u16,
        /// The id the header carried.
        id: u16,
    },
    /// The size is above the configured maximum.
    #[error("packet size {size} exceeds the maximum of {max} bytes (id {id})")]
    TooLarge {
        /// The size the header claimed.
        size: u16,
        /// The id the header carried.
        id: u16,
        /// The configured maximum packet size.
        max: usize,
    },
}

/// One whole packet inside a receive buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawPacket<'a> {
    /// The packet id.
    pub id: u16,
    /// The body (the protobuf payload), without the header.
    pub body: &'a [u8],
}

impl RawPacket<'_> {
    /// Size on the wire, header included.
    pub fn wire_len(&self) -> usize {
        HEADER_SIZE + self.body.len()
    }
}

impl fmt::Debug for RawPacket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawPacket")
            .field("id", &self.id)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Checks a header against the framing rules: `HEADER_SIZE <= size <=
/// max_packet_size`.
pub fn check_header(header: PacketHeader, max_packet_size: usize) -> Result<(), FrameError> {
    let size = header.size as usize;
    if size < HEADER_SIZE {
        Err(FrameError::TooSmall {
            size: header.size,
            id: header.id,
        })
    } else if size > max_packet_size {
        Err(FrameError::TooLarge {
            size: header.size,
            id: header.id,
            max: max_packet_size,
        })
    } else {
        Ok(())
    }
}

/// Cuts the first packet off `buf`.
///
/// Returns `Ok(Some(packet))` when `buf` starts with a whole packet,
/// `Ok(None)` when more bytes are needed (fewer than 4 bytes, or a valid
/// header whose body is incomplete), and an error as soon as a complete
/// header breaks the rules, whether or not its body has arrived.
pub fn split_frame(
    buf: &[u8],
    max_packet_size: usize,
) -> Result<Option<RawPacket<'_>>, FrameError> {
    let Some(header) = PacketHeader::parse(buf) else {
        return Ok(None);
    };
    check_header(header, max_packet_size)?;
    let size = header.size as usize;
    Ok(buf.get(HEADER_SIZE..size).map(|body| RawPacket {
        id: header.id,
        body,
    }))
}

/// Iterates over the whole packets at the front of a buffer.
///
/// Stops (returns `None`) at the first incomplete packet, or after yielding
/// one error; [`Frames::consumed`] then tells how many bytes the yielded
/// packets took, which is what a session's `on_recv` returns.
///
/// ```
/// use servercore::packet::Frames;
///
/// let stream = [6, 0, 0xe8, 0x03, 0xaa, 0xbb, 4, 0, 0xe9, 0x03, 9, 0];
/// let mut frames = Frames::new(&stream, 1024);
/// let ids: Vec<u16> = frames.by_ref().map(|p| p.unwrap().id).collect();
/// assert_eq!(ids, [1000, 1001]);
/// assert_eq!(frames.consumed(), 10); // the last 2 bytes wait for more
/// ```
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    max_packet_size: usize,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Walks `buf`, refusing sizes above `max_packet_size` (clamped to
    /// `HEADER_SIZE..=MAX_PACKET_SIZE`).
    pub fn new(buf: &'a [u8], max_packet_size: usize) -> Frames<'a> {
        Frames {
            buf,
            pos: 0,
            max_packet_size: max_packet_size.clamp(HEADER_SIZE, MAX_PACKET_SIZE),
            failed: false,
        }
    }

    /// Bytes taken by the packets yielded so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// The bytes not consumed yet.
    pub fn remaining(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<RawPacket<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match split_frame(self.remaining(), self.max_packet_size) {
            Ok(Some(packet)) => {
                self.pos += packet.wire_len();
                Some(Ok(packet))
            }
            Ok(None) => None,
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

/// Appends one packet (header and body) to `out`: a helper for tests and
/// tools; servers build packets with [`super::make_packet`].
pub fn encode_frame(id: u16, body: &[u8], out: &mut Vec<u8>) -> Result<(), super::PacketTooLarge> {
    let size = HEADER_SIZE + body.len();
    let size = u16::try_from(size).map_err(|_| super::PacketTooLarge { id, size })?;
    out.extend_from_slice(&PacketHeader { size, id }.to_bytes());
    out.extend_from_slice(body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Packets = Vec<(u16, Vec<u8>)>;

    fn stream_of(packets: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, body) in packets {
            encode_frame(*id, body, &mut out).unwrap();
        }
        out
    }

    /// Feeds `chunks` the way the engine does: what `on_recv` did not
    /// consume is kept and shown again in front of the next bytes.
    fn split_chunked(chunks: &[&[u8]], max: usize) -> Result<(Packets, usize), FrameError> {
        let mut leftover: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            leftover.extend_from_slice(chunk);
            let mut frames = Frames::new(&leftover, max);
            for packet in frames.by_ref() {
                let packet = packet?;
                out.push((packet.id, packet.body.to_vec()));
            }
            let consumed = frames.consumed();
            leftover.drain(..consumed);
        }
        Ok((out, leftover.len()))
    }

    #[test]
    fn header_round_trip() {
        let header = PacketHeader {
            size: 0x1234,
            id: 1000,
        };
        let bytes = header.to_bytes();
        assert_eq!(bytes, [0x34, 0x12, 0xe8, 0x03]);
        assert_eq!(PacketHeader::parse(&bytes), Some(header));
        assert_eq!(PacketHeader::parse(&bytes[..3]), None);
        assert_eq!(header.body_len(), 0x1230);
    }

    #[test]
    fn empty_body_is_a_packet() {
        let buf = [4, 0, 7, 0];
        let packet = split_frame(&buf, 100).unwrap().unwrap();
        assert_eq!(packet.id, 7);
        assert!(packet.body.is_empty());
        assert_eq!(packet.wire_len(), 4);
    }

    #[test]
    fn partial_header_and_body_wait() {
        assert_eq!(split_frame(&[], 100), Ok(None));
        assert_eq!(split_frame(&[9], 100), Ok(None));
        assert_eq!(split_frame(&[9, 0, 1], 100), Ok(None));
        assert_eq!(split_frame(&[9, 0, 1, 0, 1, 2], 100), Ok(None));
    }

    #[test]
    fn hostile_sizes_are_refused_before_the_body() {
        for size in 0u16..4 {
            let [a, b] = size.to_le_bytes();
            assert_eq!(
                split_frame(&[a, b, 1, 0], 100),
                Err(FrameError::TooSmall { size, id: 1 })
            );
        }
        assert_eq!(
            split_frame(&[101, 0, 2, 0], 100),
            Err(FrameError::TooLarge {
                size: 101,
                id: 2,
                max: 100
            })
        );
        assert!(split_frame(&[100, 0, 2, 0], 100).unwrap().is_none());
        assert_eq!(
            split_frame(&[0xff, 0xff, 0, 0], MAX_PACKET_SIZE),
            Ok(None),
            "65535 is a legal size at the default maximum"
        );
    }

    #[test]
    fn error_text_names_what_was_wrong() {
        let small = FrameError::TooSmall { size: 2, id: 1000 };
        assert_eq!(
            small.to_string(),
            "packet size 2 is below the 4-byte header (id 1000)"
        );
        let large = FrameError::TooLarge {
            size: 9000,
            id: 1004,
            max: 4096,
        };
        assert_eq!(
            large.to_string(),
            "packet size 9000 exceeds the maximum of 4096 bytes (id 1004)"
        );
    }

    #[test]
    fn frames_stop_after_an_error() {
        let mut buf = stream_of(&[(1, vec![1, 2])]);
        buf.extend_from_slice(&[2, 0, 0, 0]);
        buf.extend_from_slice(&stream_of(&[(3, vec![])]));
        let mut frames = Frames::new(&buf, 100);
        assert_eq!(frames.next().unwrap().unwrap().id, 1);
        assert!(frames.next().unwrap().is_err());
        assert!(frames.next().is_none());
        assert_eq!(frames.consumed(), 6);
    }

    #[test]
    fn max_is_clamped() {
        let frames = Frames::new(&[], 0);
        assert_eq!(frames.max_packet_size, HEADER_SIZE);
        let frames = Frames::new(&[], usize::MAX);
        assert_eq!(frames.max_packet_size, MAX_PACKET_SIZE);
    }

    #[test]
    fn every_split_offset_yields_the_same_packets() {
        let packets: Vec<(u16, Vec<u8>)> = (0..12u16)
            .map(|i| (1000 + i % 6, (0..(i as u8 * 3)).collect()))
            .collect();
        let stream = stream_of(&packets);
        for cut in 0..=stream.len() {
            let (got, left) = split_chunked(&[&stream[..cut], &stream[cut..]], 1024).unwrap();
            assert_eq!(got, packets, "cut at {cut}");
            assert_eq!(left, 0);
        }
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let chunks = [&stream[..a], &stream[a..b], &stream[b..]];
                let (got, _) = split_chunked(&chunks, 1024).unwrap();
                assert_eq!(got, packets, "cuts at {a} and {b}");
            }
        }
    }

    fn packets_strategy() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
        prop::collection::vec(
            (any::<u16>(), prop::collection::vec(any::<u8>(), 0..300)),
            0..40,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_chunking_yields_the_same_packets(
            packets in packets_strategy(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let stream = stream_of(&packets);
            let mut offsets: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            offsets.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for offset in offsets {
                chunks.push(&stream[start..offset]);
                start = offset;
            }
            chunks.push(&stream[start..]);
            let (got, left) = split_chunked(&chunks, MAX_PACKET_SIZE).unwrap();
            prop_assert_eq!(got, packets);
            prop_assert_eq!(left, 0);
        }

        #[test]
        fn byte_by_byte_yields_the_same_packets(packets in packets_strategy()) {
            let stream = stream_of(&packets);
            let chunks: Vec<&[u8]> = stream.chunks(1).collect();
            let (got, _) = split_chunked(&chunks, MAX_PACKET_SIZE).unwrap();
            prop_assert_eq!(got, packets);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_consume_at_most_the_input(
            data in prop::collection::vec(any::<u8>(), 0..512),
            max in 0usize..70_000,
        ) {
            let mut frames = Frames::new(&data, max);
            let mut count = 0;
            for packet in frames.by_ref() {
                count += 1;
                if let Ok(packet) = packet {
                    prop_assert!(packet.wire_len() <= max.max(HEADER_SIZE));
                }
            }
            prop_assert!(frames.consumed() <= data.len());
            prop_assert!(count <= data.len() / HEADER_SIZE + 1);
        }
    }
}
