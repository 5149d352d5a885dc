//! Service-layer tests that need the engine's internals.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::config::ServiceConfig;
use super::engine::Engine;
use crate::{Backend, Session, SessionHandle};

struct Sink;

impl Session for Sink {
    fn on_recv(&mut self, _: &SessionHandle, data: &[u8]) -> usize {
        data.len()
    }
}

fn engine(backend: Backend, workers: usize) -> Engine {
    let config = ServiceConfig {
        workers,
        backend,
        shutdown_timeout: Duration::from_millis(200),
        ..ServiceConfig::default()
    };
    Engine::start(
        config,
        Box::new(|| Box::new(Sink) as Box<dyn Session>),
        Vec::new(),
        super::engine::Transports::Client(crate::ClientTransport::plain()),
    )
    .unwrap()
}

fn backends() -> Vec<Backend> {
    crate::driver::available_backends()
}

/// A connected pair: (the end handed to the engine, the peer's end).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    (server, client)
}

/// A connection handed to a worker that has already left its loop (its
/// place was reserved before the stop) is closed at once and its place
/// given back: nothing stays counted or open until the process exits.
#[test]
fn adopt_after_the_worker_left_its_loop_is_refused_and_released() {
    for backend in backends() {
        let engine = engine(backend, 2);
        assert!(engine.shared.try_reserve_session());
        engine.stop();
        engine.join();
        let (server, mut client) = pair();
        let peer = client.local_addr().unwrap();
        engine.shared.hand_out(server, peer);
        assert_eq!(engine.stats().active_sessions, 0, "{backend}");
        let started = Instant::now();
        let mut buf = [0u8; 1];
        assert_eq!(
            client.read(&mut buf).expect("EOF, not a timeout"),
            0,
            "{backend}: the connection is closed"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
