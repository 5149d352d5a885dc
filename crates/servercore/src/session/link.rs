//! [`Link`]: what a session carried by a bridged transport (QUIC) shares
//! with that transport, beside the byte stream the worker drives: the
//! unreliable datagram path and the disconnect reason in both directions.
//!
//! A bridged session's bytes run over an ordinary stream socket the worker
//! adopts, so every engine mechanism (framing, limits, deadlines,
//! backpressure, coalescing, both backends) works unchanged; only what a
//! stream cannot carry goes through the link.

use std::net::SocketAddr;

use bytes::Bytes;

use super::DisconnectReason;

/// Why a datagram was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DatagramRefused {
    /// Larger than the peer accepts (it goes by the stream instead).
    TooLarge,
    /// The connection is gone.
    Closed,
}

/// The transport side of a bridged session.
pub(crate) trait Link: Send + Sync + 'static {
    /// A short name for logs and metrics (`quic`).
    fn transport(&self) -> &'static str;

    /// The local address of the transport's socket (the UDP port).
    fn local_addr(&self) -> SocketAddr;

    /// The largest datagram the peer accepts now, or `None` when it takes
    /// none (then every datagram send falls back to the stream).
    fn max_datagram_size(&self) -> Option<usize>;

    /// Queues one datagram in the transport's own bounded queue (the
    /// oldest is dropped when it is full: a newer position is worth more).
    fn send_datagram(&self, datagram: Bytes) -> Result<(), DatagramRefused>;

    /// Packets the peer sent by datagram that reached the session so far.
    fn datagram_packets_received(&self) -> u64;

    /// The worker ends the session with `reason`. Returns the reason to
    /// report: the transport's own (a QUIC error the peer or the network
    /// caused) when the stream only saw the end of it.
    fn session_ended(&self, reason: DisconnectReason) -> DisconnectReason;
}

/// One piece of a buffer of whole `[size][id][body]` packets cut for
/// datagrams.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Whole packets that fit one datagram together.
    Datagram(Bytes),
    /// What cannot go as a datagram: a packet larger than `max`, or bytes
    /// that are not whole packets (they go by the stream, in order).
    Stream(Bytes),
}

/// Cuts `packets` (whole packets back to back) into datagrams of at most
/// `max` bytes, at packet boundaries only, packing as many packets in each
/// as fit. Never copies: every piece is a slice of `packets`.
pub(crate) fn cut_datagrams(packets: &Bytes, max: usize, mut out: impl FnMut(Piece)) {
    let mut start = 0;
    let mut at = 0;
    while at < packets.len() {
        let rest = &packets[at..];
        let size = match rest {
            [s0, s1, _, _, ..] => usize::from(u16::from_le_bytes([*s0, *s1])),
            _ => 0,
        };
        if size < 4 || size > rest.len() {
            // Not a whole packet: the rest goes by the stream as it is.
            if at > start {
                out(Piece::Datagram(packets.slice(start..at)));
            }
            out(Piece::Stream(packets.slice(at..)));
            return;
        }
        if size > max {
            if at > start {
                out(Piece::Datagram(packets.slice(start..at)));
            }
            out(Piece::Stream(packets.slice(at..at + size)));
            at += size;
            start = at;
            continue;
        }
        if at + size - start > max {
            out(Piece::Datagram(packets.slice(start..at)));
            start = at;
        }
        at += size;
    }
    if at > start {
        out(Piece::Datagram(packets.slice(start..at)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(id: u16, body: usize) -> Vec<u8> {
        let size = (4 + body) as u16;
        let mut out = size.to_le_bytes().to_vec();
        out.extend_from_slice(&id.to_le_bytes());
        out.extend(std::iter::repeat_n(id as u8, body));
        out
    }

    fn cut(buf: &[u8], max: usize) -> Vec<Piece> {
        let mut pieces = Vec::new();
        cut_datagrams(&Bytes::copy_from_slice(buf), max, |p| pieces.push(p));
        pieces
    }

    #[test]
    fn packets_are_packed_whole_and_never_split() {
        let mut buf = Vec::new();
        for id in 0..5 {
            buf.extend(packet(id, 6)); // 10 bytes each
        }
        let pieces = cut(&buf, 25);
        assert_eq!(
            pieces,
            vec![
                Piece::Datagram(Bytes::copy_from_slice(&buf[0..20])),
                Piece::Datagram(Bytes::copy_from_slice(&buf[20..40])),
                Piece::Datagram(Bytes::copy_from_slice(&buf[40..50])),
            ]
        );
        assert_eq!(cut(&buf, 50).len(), 1);
        assert!(cut(&[], 50).is_empty());
    }

    #[test]
    fn a_packet_over_the_maximum_and_broken_bytes_go_by_the_stream() {
        let mut buf = packet(1, 6);
        buf.extend(packet(2, 40));
        buf.extend(packet(3, 6));
        buf.extend([9, 0, 1]); // a truncated header
        let pieces = cut(&buf, 20);
        assert_eq!(
            pieces,
            vec![
                Piece::Datagram(Bytes::copy_from_slice(&buf[0..10])),
                Piece::Stream(Bytes::copy_from_slice(&buf[10..54])),
                Piece::Datagram(Bytes::copy_from_slice(&buf[54..64])),
                Piece::Stream(Bytes::copy_from_slice(&buf[64..])),
            ]
        );
    }
}
