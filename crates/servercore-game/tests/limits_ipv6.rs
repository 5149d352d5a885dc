//! The per-address connection limit over real IPv6 sockets: several source
//! addresses of `::1`'s /64 count as one address, another /64 does not.
//! (IPv4-mapped peers are the unit tests' alone: the engine's IPv6
//! listeners are IPv6-only, so none of its sockets sees one.)
//!
//! Loopback has one IPv6 address, so each test runs on a thread of its own
//! in a network namespace it makes (its loopback up, with `::2`, `::3` and
//! `fd00:5c::1` added); the server's threads inherit it. Where the
//! platform does not allow that (no `CAP_SYS_ADMIN`, no `ip`), the test
//! says so and skips; the unit tests of `limits` check the same rules.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use servercore::Backend;
use servercore_game::{start, GameConfig};
use servercore_protocol::{make_packet, CLogin, ClientPacket};

use servercore_testkit::backend_tests;
use servercore_testkit::net::wait_until;

backend_tests!(addresses_of_one_64_share_the_limit);

const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `body` on a new thread inside a new network namespace with the
/// test addresses; false (and a message) if the platform does not allow it.
fn in_namespace(body: impl FnOnce() + Send + 'static) -> bool {
    let thread = std::thread::spawn(move || {
        if let Err(error) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "!!! SKIPPED: no network namespace ({error}); the limits' unit tests cover it"
            );
            return false;
        }
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|status| status.success())
        };
        let ready = ip(&["link", "set", "lo", "up"])
            && ["::2/128", "::3/128", "fd00:5c::1/128"]
                .iter()
                .all(|addr| ip(&["-6", "addr", "add", addr, "dev", "lo", "nodad"]));
        if !ready {
            eprintln!("!!! SKIPPED: cannot set up loopback in the namespace (`ip` failed)");
            return false;
        }
        body();
        true
    });
    match thread.join() {
        Ok(ran) => ran,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A connection from `from` to `to`.
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let domain = socket2::Domain::for_address(to);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|error| panic!("bind {from}: {error}"));
    socket.connect(&to.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream
}

/// True once the server closed `stream` (EOF or reset); false while open.
fn is_closed(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(error) if error.kind() == ErrorKind::WouldBlock => break false,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break true,
        }
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// Logs in as `account`; true if the server answered `success`.
fn logs_in(stream: &mut TcpStream, account: &str) -> bool {
    stream
        .write_all(&make_packet(&CLogin {
            account: account.into(),
        }))
        .unwrap();
    let mut header = [0u8; 4];
    if stream.read_exact(&mut header).is_err() {
        return false;
    }
    let size = u16::from_le_bytes([header[0], header[1]]) as usize;
    let mut body = vec![0u8; size - 4];
    stream.read_exact(&mut body).expect("a body");
    match ClientPacket::decode(u16::from_le_bytes([header[2], header[3]]), &body).unwrap() {
        ClientPacket::SLogin(login) => login.success,
        other => panic!("expected S_LOGIN, got {other:?}"),
    }
}

fn v6(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// With two connections per address: `::1` and `::2` get in, `::3` (the
/// same /64, `::/64`) is closed, `fd00:5c::1` (another /64) gets in; once
/// `::1` leaves, `::3` gets in.
fn addresses_of_one_64_share_the_limit(backend: Backend) {
    in_namespace(move || {
        let server = start(GameConfig {
            backend,
            workers: Some(2),
            max_conns_per_ip: 2,
            max_new_accounts_per_min: 0,
            ..GameConfig::in_memory(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)))
        })
        .expect("server on [::1]");
        let addr = server.local_addr();
        let mut first = connect_from(v6("::1"), addr);
        assert!(logs_in(&mut first, "one"));
        let mut second = connect_from(v6("::2"), addr);
        assert!(logs_in(&mut second, "two"));
        let mut third = connect_from(v6("::3"), addr);
        assert!(
            wait_until(Duration::from_secs(5), || is_closed(&mut third)),
            "::3 is a third connection of ::/64"
        );
        assert_eq!(server.stats().conns_refused_per_ip, 1);
        let mut other = connect_from(v6("fd00:5c::1"), addr);
        assert!(logs_in(&mut other, "elsewhere"), "another /64 gets in");
        drop(first);
        let mut again = None;
        assert!(
            wait_until(Duration::from_secs(5), || {
                let mut stream = connect_from(v6("::3"), addr);
                let ok = logs_in(&mut stream, "three");
                if ok {
                    again = Some(stream);
                }
                ok
            }),
            "the freed place of ::/64 is taken from ::3"
        );
        assert!(!is_closed(&mut second), "::2 stays");
        let stats = server.stop_and_join();
        assert_eq!(stats.player_states, 0);
    });
}
