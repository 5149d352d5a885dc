//! Tests of what only the io_uring backend does: the probe (and a sandbox
//! that forbids io_uring), receive-buffer ring exhaustion, the fallback
//! ring setups, tiny submission and completion queues, and dropped
//! completions. The contract both backends keep is tested by the shared
//! suite (`driver::conformance`), instantiated here.

use std::io::{self, Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{SetupMode, UringDriver};
use crate::driver::conformance::{
    config, driver_conformance, flood, pair, pattern, poll_until, send_all, Collect, Ev, LIMIT,
};
use crate::driver::{CloseMode, Driver, DriverConfig, SendBatch, Token};

driver_conformance!(crate::driver::uring::UringDriver);

#[test]
fn probe_succeeds_here() {
    super::probe().expect("io_uring probe");
}

#[test]
fn ring_exhaustion_loses_and_reorders_nothing() {
    flood(UringDriver::new(&config(4, 64)).unwrap(), &[1], 1 << 20, 64);
}

#[test]
fn ring_exhaustion_with_two_connections_sharing_the_ring() {
    flood(
        UringDriver::new(&config(4, 64)).unwrap(),
        &[1, 2],
        512 << 10,
        64,
    );
}

#[test]
fn fallback_ring_setups_work_too() {
    for mode in [SetupMode::CoopTaskrun, SetupMode::Plain] {
        // Receive with ring exhaustion.
        let driver = UringDriver::with_setup(&config(4, 64), &[mode]).expect("ring setup");
        flood(driver, &[1, 2], 128 << 10, 64);

        // Send, wake, zero timeout, close with a receive in flight.
        let mut driver = UringDriver::with_setup(&config(4, 64), &[mode]).expect("ring setup");
        let mut sink = Collect::default();
        let (server, mut client) = pair();
        driver.add_stream(1, server).unwrap();
        let bufs: Vec<Bytes> = (0..10).map(|i| Bytes::from(pattern(1000, i))).collect();
        let expected: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        send_all(&mut driver, &mut sink, 1, bufs);
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).unwrap();
        assert!(got == expected);

        let waker = driver.waker();
        let thread = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        let start = Instant::now();
        driver.poll(None, &mut sink).unwrap();
        assert!(start.elapsed() < Duration::from_secs(3));
        thread.join().unwrap();
        driver.poll(Some(Duration::ZERO), &mut sink).unwrap();

        driver.close(1, CloseMode::Graceful);
        poll_until(&mut driver, &mut sink, "Released", |s| s.released(1) == 1);
        assert!(
            sink.events.iter().all(|e| matches!(e, Ev::Released(1))),
            "{:?}",
            sink.events
        );
    }
}

#[test]
fn tiny_queues_overflow_without_losing_anything() {
    // 4 submission entries for 40 connections: pushes overflow the queue;
    // 16 completion entries: completions overflow into the kernel's list.
    let mut driver = UringDriver::new(&DriverConfig {
        recv_ring_entries: 64,
        recv_buffer_size: 256,
        sq_entries: 4,
        ..DriverConfig::default()
    })
    .unwrap();
    let mut sink = Collect::default();
    let mut clients = Vec::new();
    for token in 0..40u64 {
        let (server, client) = pair();
        driver.add_stream(token, server).unwrap();
        clients.push(client);
    }
    let message = Bytes::from(pattern(3000, 9));
    for token in 0..40u64 {
        driver.send(
            token,
            SendBatch::from(vec![message.clone(), message.slice(..10)]),
        );
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(&pattern(5000, i)).unwrap();
    }
    let mut sent = 0;
    let deadline = Instant::now() + LIMIT;
    loop {
        for token in 0..40u64 {
            if let Some((result, _)) = sink.take_sent(token) {
                assert_eq!(result.unwrap(), 3010);
                sent += 1;
            }
        }
        if sent == 40 && (0..40u64).all(|t| sink.received(t).len() >= 5000) {
            break;
        }
        assert!(Instant::now() < deadline, "timed out: {sent} sent");
        driver
            .poll(Some(Duration::from_millis(50)), &mut sink)
            .unwrap();
    }
    for (i, client) in clients.iter_mut().enumerate() {
        assert!(sink.received(i as Token) == pattern(5000, i), "token {i}");
        let mut got = vec![0u8; 3010];
        client.read_exact(&mut got).unwrap();
        assert!(got[..3000] == message[..] && got[3000..] == message[..10]);
    }
    for token in 0..40u64 {
        driver.close(token, CloseMode::Graceful);
    }
    poll_until(&mut driver, &mut sink, "all Released", |s| {
        (0..40u64).all(|t| s.released(t) == 1)
    });
    // Held back, never dropped: every poll checked the counter.
    assert_eq!(driver.sq.ring.completion().overflow(), 0);
}

/// A completion queue of 8 entries under a flood: the kernel holds the
/// overflow back (NODROP) and nothing is lost; and once the kernel reports
/// dropped completions the next poll fails the driver instead of running on
/// with operations that will never complete.
#[test]
fn dropped_completions_fail_the_next_poll() {
    let mut driver = UringDriver::new(&DriverConfig {
        recv_ring_entries: 64,
        recv_buffer_size: 256,
        sq_entries: 2,
        ..DriverConfig::default()
    })
    .unwrap();
    assert_eq!(driver.sq.ring.params().cq_entries(), 8);
    let mut sink = Collect::default();
    let mut clients = Vec::new();
    for token in 0..32u64 {
        let (server, mut client) = pair();
        driver.add_stream(token, server).unwrap();
        client.write_all(&pattern(2000, token as usize)).unwrap();
        clients.push(client);
    }
    poll_until(&mut driver, &mut sink, "every byte", |s| {
        (0..32u64).all(|t| s.received(t).len() == 2000)
    });
    for token in 0..32u64 {
        assert!(sink.received(token) == pattern(2000, token as usize));
    }
    assert_eq!(driver.sq.ring.completion().overflow(), 0);

    assert!(driver.check_dropped(0).is_ok());
    let error = driver.check_dropped(3).unwrap_err();
    assert!(
        error.to_string().contains("dropped 3 completions"),
        "{error}"
    );
    assert!(
        driver.check_dropped(3).is_ok(),
        "each drop is reported once"
    );

    // Through `poll`: the kernel's counter (0) is one past what the driver
    // saw last, as after one dropped completion.
    driver.cq_dropped_seen = u32::MAX;
    let error = driver
        .poll(Some(Duration::ZERO), &mut sink)
        .expect_err("a dropped completion fails the poll");
    assert!(
        error.to_string().contains("dropped 1 completions"),
        "{error}"
    );
    driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
}

/// Runs `probe` on a fresh thread whose seccomp filter fails
/// `io_uring_setup` with `errno` (a filter binds only its thread).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn probe_under_seccomp(errno: i32) -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    thread::spawn(move || {
        let filter = [
            // Load the architecture; other architectures pass untouched.
            libc::sock_filter {
                code: LD_W_ABS,
                jt: 0,
                jf: 0,
                k: 4,
            },
            libc::sock_filter {
                code: JEQ_K,
                jt: 0,
                jf: 3,
                k: AUDIT_ARCH,
            },
            // Load the syscall number; io_uring_setup fails with `errno`.
            libc::sock_filter {
                code: LD_W_ABS,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: JEQ_K,
                jt: 0,
                jf: 1,
                k: libc::SYS_io_uring_setup as u32,
            },
            libc::sock_filter {
                code: RET_K,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | errno as u32,
            },
            libc::sock_filter {
                code: RET_K,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ];
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: prctl with plain integer arguments, on this thread only.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_NO_NEW_PRIVS: {}", io::Error::last_os_error());
        // SAFETY: `program` points at a valid filter that outlives the call;
        // without SECCOMP_FILTER_FLAG_TSYNC it binds this thread only.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &program as *const libc::sock_fprog,
            )
        };
        assert_eq!(rc, 0, "seccomp: {}", io::Error::last_os_error());
        super::probe()
    })
    .join()
    .unwrap()
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn probe_names_a_sandbox_that_forbids_io_uring() {
    let error = probe_under_seccomp(libc::EPERM).expect_err("EPERM from io_uring_setup");
    assert!(error.contains("not permitted"), "{error}");
    let error = probe_under_seccomp(libc::ENOSYS).expect_err("ENOSYS from io_uring_setup");
    assert!(error.contains("not available"), "{error}");
    // The filter bound only its own thread.
    super::probe().expect("probe on an unfiltered thread");
}

/// A burst of writes on many connections at once leaves a send block per
/// connection in the pool; two trims with no write between give them back
/// (the first sees them used during its interval).
#[test]
fn trim_gives_back_the_send_blocks_of_a_burst() {
    let mut driver = UringDriver::new(&config(64, 4096)).unwrap();
    let mut sink = Collect::default();
    let mut clients = Vec::new();
    for token in 0..40u64 {
        let (server, client) = pair();
        driver.add_stream(token, server).unwrap();
        clients.push(client);
    }
    for token in 0..40u64 {
        driver.send(token, SendBatch::from(vec![Bytes::from(pattern(100, 1))]));
    }
    poll_until(&mut driver, &mut sink, "every Sent", |s| {
        s.events
            .iter()
            .filter(|e| matches!(e, Ev::Sent(..)))
            .count()
            == 40
    });
    assert_eq!(driver.send_pool.len(), 40);
    driver.trim();
    assert_eq!(driver.send_pool.len(), 40, "used in the interval: kept");
    driver.trim();
    assert_eq!(driver.send_pool.len(), 0, "quiet since: given back");
    // Still works after the trims.
    sink.events.clear();
    driver.send(0, SendBatch::from(vec![Bytes::from_static(b"after")]));
    poll_until(&mut driver, &mut sink, "the last Sent", |s| {
        s.events.iter().any(|e| matches!(e, Ev::Sent(0, Ok(5), _)))
    });
    let mut got = vec![0u8; 105];
    clients[0].read_exact(&mut got).unwrap();
    assert_eq!(&got[100..], b"after");
}
