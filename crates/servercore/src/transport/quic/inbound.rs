//! What flows from a QUIC client to its session: where the client's stream
//! stands between two packets (so a datagram's packets are fed in between,
//! never inside one), and which datagrams are whole packets the session
//! may take.

/// Follows the `[size: u16 LE][id][body]` packets of the client's stream
/// just enough to know whether it stands at a packet boundary. Bytes that
/// break the framing (a size below the header's) end the tracking: from
/// then on the stream is never at a boundary again, and the session's own
/// framing disconnects the peer for them.
#[derive(Debug, Default)]
pub(super) struct Boundary {
    /// Header bytes of the current packet seen so far (0..2 of the size).
    header: [u8; 2],
    header_len: usize,
    /// Bytes of the current packet still to come after its size.
    remaining: usize,
    broken: bool,
}

impl Boundary {
    /// Takes the next bytes of the stream.
    pub(super) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.broken {
            if self.remaining > 0 {
                let step = self.remaining.min(data.len());
                self.remaining -= step;
                data = &data[step..];
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if self.header_len == 2 {
                let size = usize::from(u16::from_le_bytes(self.header));
                self.header_len = 0;
                if size < 4 {
                    self.broken = true;
                } else {
                    self.remaining = size - 2;
                }
            }
        }
    }

    /// True between two packets.
    pub(super) fn at_boundary(&self) -> bool {
        !self.broken && self.remaining == 0 && self.header_len == 0
    }
}

/// Why a client's datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejected {
    /// Empty, or not whole packets back to back.
    NotWholePackets,
    /// A packet id the listener does not take by datagram.
    IdNotAllowed(u16),
}

/// Checks that `datagram` is whole packets back to back, each of an id in
/// `allowed` (`None`: any); returns how many packets it holds.
pub(super) fn check_datagram(datagram: &[u8], allowed: Option<&[u16]>) -> Result<u64, Rejected> {
    if datagram.is_empty() {
        return Err(Rejected::NotWholePackets);
    }
    let mut rest = datagram;
    let mut packets = 0;
    while !rest.is_empty() {
        let [s0, s1, i0, i1, ..] = rest else {
            return Err(Rejected::NotWholePackets);
        };
        let size = usize::from(u16::from_le_bytes([*s0, *s1]));
        let id = u16::from_le_bytes([*i0, *i1]);
        if size < 4 || size > rest.len() {
            return Err(Rejected::NotWholePackets);
        }
        if allowed.is_some_and(|ids| !ids.contains(&id)) {
            return Err(Rejected::IdNotAllowed(id));
        }
        rest = &rest[size..];
        packets += 1;
    }
    Ok(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(id: u16, body: &[u8]) -> Vec<u8> {
        let mut out = ((4 + body.len()) as u16).to_le_bytes().to_vec();
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn the_boundary_is_found_over_any_split() {
        let mut stream = packet(7, b"hello");
        stream.extend(packet(8, b""));
        stream.extend(packet(9, &[1; 300]));
        for split in 0..=stream.len() {
            let mut boundary = Boundary::default();
            boundary.feed(&stream[..split]);
            let expected = [0, 9, 13, stream.len()].contains(&split);
            assert_eq!(boundary.at_boundary(), expected, "split at {split}");
            boundary.feed(&stream[split..]);
            assert!(boundary.at_boundary());
        }
        let mut boundary = Boundary::default();
        boundary.feed(&[2, 0, 0, 0]);
        assert!(!boundary.at_boundary());
        boundary.feed(&packet(1, b"x"));
        assert!(!boundary.at_boundary(), "broken framing stays broken");
    }

    #[test]
    fn datagrams_must_be_whole_packets_of_allowed_ids() {
        let mut two = packet(5, b"ab");
        two.extend(packet(5, b""));
        assert_eq!(check_datagram(&two, Some(&[5])), Ok(2));
        assert_eq!(check_datagram(&two, None), Ok(2));
        assert_eq!(
            check_datagram(&packet(6, b""), Some(&[5])),
            Err(Rejected::IdNotAllowed(6))
        );
        assert_eq!(
            check_datagram(&two[..5], None),
            Err(Rejected::NotWholePackets)
        );
        assert_eq!(check_datagram(&[], None), Err(Rejected::NotWholePackets));
        assert_eq!(
            check_datagram(&[3, 0, 5, 0], None),
            Err(Rejected::NotWholePackets)
        );
    }
}
