//! Blocking loopback sockets, deterministic payloads and bounded waits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Connects a blocking client with 10 s read and write timeouts and
/// `TCP_NODELAY`.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads exactly `len` bytes.
pub fn read_exact(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    stream.read_exact(&mut buf).expect("read_exact");
    buf
}

/// Writes everything.
pub fn write_all(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).expect("write_all");
}

/// Makes the next close of `stream` send RST instead of FIN.
pub fn set_linger_zero(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// Polls `condition` every few ms until it holds or `limit` passes; true
/// if it came to hold.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`, waiting
/// up to `limit` for it.
pub fn wait_listening(port: u16, limit: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(limit, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}
