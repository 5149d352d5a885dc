//! `ClientService::adopt`: streams the application connects itself run as
//! sessions of a running client service, each with the session its closure
//! makes (the factory is not called), to any server; past
//! `max_sessions` a stream is refused. Over real loopback sockets, on every
//! backend.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use servercore::{AdoptError, Backend, ClientService, ServerService, Session, SessionHandle};
use servercore_testkit::backend_tests;
use servercore_testkit::net::wait_until;
use servercore_testkit::sessions::{RecordingEcho, Shared};

backend_tests!(adopted_streams_run_the_sessions_they_came_with);

/// Says its name on connecting and keeps what comes back.
struct Greeter {
    name: &'static [u8],
    got: Arc<Mutex<Vec<u8>>>,
}

impl Session for Greeter {
    fn on_connected(&mut self, session: &SessionHandle) {
        session.send_copy(self.name).unwrap();
    }
    fn on_recv(&mut self, _session: &SessionHandle, data: &[u8]) -> usize {
        self.got.lock().extend_from_slice(data);
        data.len()
    }
}

fn echo_server(backend: Backend) -> (ServerService, Shared) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .shutdown_timeout(Duration::from_secs(1))
        .session(move || RecordingEcho {
            record: Arc::clone(&shared),
        })
        .start()
        .expect("server starts");
    (service, record)
}

fn adopted_streams_run_the_sessions_they_came_with(backend: Backend) {
    let (first, first_record) = echo_server(backend);
    let (second, second_record) = echo_server(backend);
    let factory_calls = Arc::new(Mutex::new(0usize));
    let calls = Arc::clone(&factory_calls);
    let client = ClientService::builder(first.local_addr())
        .backend(backend)
        .workers(2)
        .sessions(0)
        .max_sessions(2)
        .shutdown_timeout(Duration::from_secs(1))
        .session(move || {
            *calls.lock() += 1;
            Greeter {
                name: b"factory",
                got: Arc::default(),
            }
        })
        .start()
        .expect("client starts");
    assert!(wait_until(Duration::from_secs(5), || client.connecting_done()));
    assert_eq!(client.connected(), 0, "sessions(0) connects nothing");

    let got_a: Arc<Mutex<Vec<u8>>> = Arc::default();
    let got_b: Arc<Mutex<Vec<u8>>> = Arc::default();
    let to_first = TcpStream::connect(first.local_addr()).unwrap();
    let to_second = TcpStream::connect(second.local_addr()).unwrap();
    let a = Arc::clone(&got_a);
    client
        .adopt(to_first, move || Greeter {
            name: b"alpha",
            got: a,
        })
        .expect("the first stream is taken");
    let b = Arc::clone(&got_b);
    client
        .adopt(to_second, move || Greeter {
            name: b"beta",
            got: b,
        })
        .expect("the second stream is taken");
    assert!(
        wait_until(Duration::from_secs(5), || got_a.lock().as_slice()
            == b"alpha"
            && got_b.lock().as_slice() == b"beta"),
        "each adopted session got its own echo: {:?} {:?}",
        String::from_utf8_lossy(&got_a.lock()),
        String::from_utf8_lossy(&got_b.lock())
    );
    assert_eq!(first_record.lock().connected, 1);
    assert_eq!(second_record.lock().connected, 1);

    // Both places taken: a third stream is refused (and closed).
    let third = TcpStream::connect(first.local_addr()).unwrap();
    let refused = client.adopt(third, || Greeter {
        name: b"gamma",
        got: Arc::default(),
    });
    assert!(matches!(refused, Err(AdoptError::Full)), "{refused:?}");
    assert_eq!(*factory_calls.lock(), 0, "the factory was never called");

    client.stop();
    client.join();
    // The first server also saw the refused stream, closed at once.
    for (server, record, sessions) in [(&first, &first_record, 2), (&second, &second_record, 1)] {
        assert!(
            wait_until(Duration::from_secs(5), || {
                let record = record.lock();
                record.connected == sessions && record.disconnected.len() == sessions
            }),
            "every session of the server ended"
        );
        server.stop();
        server.join();
    }
}
