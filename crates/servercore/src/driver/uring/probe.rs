//! Can the io_uring driver work here? Checked once, before choosing it.
//!
//! Owns a throw-away ring, a tiny buffer ring and two local sockets for the
//! duration of the check; everything is released (or, if the kernel did not
//! finish with it in time, leaked) before returning.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring};

use super::buf_ring::BufRing;
use super::{build_ring, EventFdWaker};

const PROBE_GROUP: u16 = 0;
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Checks that io_uring is allowed and offers everything `UringDriver`
/// uses: ring setup, `EXT_ARG` and `NODROP`, the opcodes it submits, a
/// provided-buffer ring, and working multishot receive and accept.
/// On failure the text names what is missing.
pub(crate) fn probe() -> Result<(), String> {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    if disabled == Some(2) {
        return Err(
            "io_uring is disabled system-wide (/proc/sys/kernel/io_uring_disabled = 2)".to_string(),
        );
    }
    let (mut ring, _mode) =
        build_ring(8).map_err(|error| describe_setup_error(&error, disabled))?;

    let params = ring.params();
    let mut missing = Vec::new();
    if !params.is_feature_ext_arg() {
        missing.push("feature IORING_FEAT_EXT_ARG (Linux 5.11)".to_string());
    }
    if !params.is_feature_nodrop() {
        missing.push("feature IORING_FEAT_NODROP (Linux 5.5)".to_string());
    }
    let mut opcodes = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut opcodes)
        .map_err(|error| {
            format!("io_uring opcode probe (IORING_REGISTER_PROBE, Linux 5.6) failed: {error}")
        })?;
    for (code, name) in [
        (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
        (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
        (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::Read::CODE, "IORING_OP_READ"),
    ] {
        if !opcodes.is_supported(code) {
            missing.push(format!("opcode {name}"));
        }
    }
    if !missing.is_empty() {
        return Err(format!("io_uring lacks {}", missing.join(", ")));
    }

    EventFdWaker::new()
        .map_err(|error| format!("eventfd for the io_uring waker failed: {error}"))?;

    let bufs = BufRing::new(4, 64)
        .map_err(|error| format!("allocating a provided-buffer ring failed: {error}"))?;
    if let Err(error) = bufs.register(&ring, PROBE_GROUP) {
        drop(ring);
        return Err(format!(
            "registering a provided-buffer ring (IORING_REGISTER_PBUF_RING, Linux 5.19) failed: {error}"
        ));
    }

    let result = check_multishot_recv(&mut ring).and_then(|()| check_multishot_accept(&mut ring));
    match result {
        Ok(()) | Err(Failure::Unsupported(_)) => {
            // Nothing is in flight any more: the ring can go, then the buffers.
            drop(ring);
            drop(bufs);
        }
        Err(Failure::Stuck(_)) => {
            // An operation may still use the buffers: keep them.
            drop(ring);
            std::mem::forget(bufs);
        }
    }
    result.map_err(|failure| match failure {
        Failure::Unsupported(text) | Failure::Stuck(text) => text,
    })
}

fn describe_setup_error(error: &io::Error, disabled: Option<u32>) -> String {
    match error.raw_os_error() {
        Some(libc::EPERM) if disabled == Some(1) => format!(
            "io_uring_setup is not permitted ({error}): /proc/sys/kernel/io_uring_disabled = 1 \
             allows only members of kernel.io_uring_group or CAP_SYS_ADMIN"
        ),
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "io_uring_setup is not permitted ({error}): blocked by a seccomp filter, an LSM or \
             the container runtime"
        ),
        Some(libc::ENOSYS) => format!(
            "io_uring_setup is not available ({error}): kernel without io_uring, or a seccomp \
             filter hides it"
        ),
        Some(libc::ENOMEM) => {
            format!("io_uring_setup failed ({error}): not enough locked memory (RLIMIT_MEMLOCK)")
        }
        _ => format!("io_uring_setup failed: {error}"),
    }
}

enum Failure {
    /// The kernel answered: the feature is missing. Nothing is in flight.
    Unsupported(String),
    /// No answer in time: operations may still be in flight.
    Stuck(String),
}

type Cqe = (u64, i32, u32);

/// Waits until `done` holds for the completions reaped so far.
fn reap(
    ring: &mut IoUring,
    what: &str,
    done: impl Fn(&[Cqe]) -> bool,
) -> Result<Vec<Cqe>, Failure> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut reaped = Vec::new();
    loop {
        reaped.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        if done(&reaped) {
            return Ok(reaped);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Failure::Stuck(format!(
                "io_uring {what}: no completion within {PROBE_TIMEOUT:?}"
            )));
        }
        let timespec = types::Timespec::from(deadline - now);
        let args = types::SubmitArgs::new().timespec(&timespec);
        if let Err(error) = ring.submitter().submit_with_args(1, &args) {
            if !matches!(
                error.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY)
            ) {
                return Err(Failure::Stuck(format!(
                    "io_uring_enter failed during {what}: {error}"
                )));
            }
        }
    }
}

fn push(ring: &mut IoUring, entry: io_uring::squeue::Entry) -> Result<(), Failure> {
    // SAFETY: the probe's entries point at no memory but the buffer ring,
    // which `probe` keeps alive until every completion is reaped (or leaks).
    unsafe { ring.submission().push(&entry) }.map_err(|_| {
        Failure::Unsupported("io_uring submission queue unexpectedly full".to_string())
    })
}

fn has_final(reaped: &[Cqe], user_data: u64) -> bool {
    reaped
        .iter()
        .any(|&(ud, _, flags)| ud == user_data && !cqueue::more(flags))
}

/// A multishot receive with buffer selection on a local socket pair must
/// deliver a byte into a ring buffer and stay armed.
fn check_multishot_recv(ring: &mut IoUring) -> Result<(), Failure> {
    const RECV: u64 = 1;
    const CANCEL: u64 = 2;
    let (ours, mut theirs) = UnixStream::pair().map_err(|error| {
        Failure::Unsupported(format!("socketpair for the io_uring probe failed: {error}"))
    })?;
    theirs.write_all(b"x").map_err(|error| {
        Failure::Unsupported(format!("write for the io_uring probe failed: {error}"))
    })?;
    push(
        ring,
        opcode::RecvMulti::new(types::Fd(ours.as_raw_fd()), PROBE_GROUP)
            .build()
            .user_data(RECV),
    )?;
    let reaped = reap(ring, "multishot receive", |r| r.iter().any(|c| c.0 == RECV));
    let reaped = match reaped {
        Ok(reaped) => reaped,
        Err(failure) => {
            std::mem::forget((ours, theirs));
            return Err(failure);
        }
    };
    let (_, res, flags) = *reaped
        .iter()
        .find(|c| c.0 == RECV)
        .expect("checked by reap");
    let still_armed = cqueue::more(flags);
    if still_armed {
        push(
            ring,
            opcode::AsyncCancel::new(RECV).build().user_data(CANCEL),
        )?;
        if let Err(failure) = reap(ring, "cancel of the multishot receive", |r| {
            has_final(r, RECV) && r.iter().any(|c| c.0 == CANCEL)
        }) {
            std::mem::forget((ours, theirs));
            return Err(failure);
        }
    }
    if res == -libc::EINVAL {
        return Err(Failure::Unsupported(
            "io_uring lacks multishot receive (IORING_RECV_MULTISHOT, Linux 6.0)".to_string(),
        ));
    }
    if res != 1 || cqueue::buffer_select(flags).is_none() {
        return Err(Failure::Unsupported(format!(
            "io_uring multishot receive with a provided-buffer ring did not work (res {res}: {})",
            if res < 0 {
                io::Error::from_raw_os_error(-res).to_string()
            } else {
                "no buffer".to_string()
            }
        )));
    }
    if !still_armed {
        return Err(Failure::Unsupported(
            "io_uring multishot receive ended after one completion (no IORING_CQE_F_MORE)"
                .to_string(),
        ));
    }
    Ok(())
}

/// A multishot accept on a listening socket must stay pending until
/// cancelled (a kernel without it fails the request with EINVAL).
fn check_multishot_accept(ring: &mut IoUring) -> Result<(), Failure> {
    const ACCEPT: u64 = 3;
    const CANCEL: u64 = 4;
    let name = format!(
        "servercore-uring-probe-{}-{:?}",
        std::process::id(),
        Instant::now()
    );
    let listener = match bind_abstract(name.as_bytes()) {
        Ok(listener) => listener,
        // No local socket to try it on: the multishot receive above already
        // proved a kernel (6.0+) that has multishot accept (5.19+).
        Err(error) => {
            tracing::debug!(%error, "io_uring probe: skipping the multishot accept check");
            return Ok(());
        }
    };
    push(
        ring,
        opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(ACCEPT),
    )?;
    push(
        ring,
        opcode::AsyncCancel::new(ACCEPT).build().user_data(CANCEL),
    )?;
    let reaped = match reap(ring, "multishot accept", |r| {
        has_final(r, ACCEPT) && r.iter().any(|c| c.0 == CANCEL)
    }) {
        Ok(reaped) => reaped,
        Err(failure) => {
            std::mem::forget(listener);
            return Err(failure);
        }
    };
    for &(user_data, res, _) in &reaped {
        if user_data != ACCEPT {
            continue;
        }
        if res == -libc::EINVAL {
            return Err(Failure::Unsupported(
                "io_uring lacks multishot accept (IORING_ACCEPT_MULTISHOT, Linux 5.19)".to_string(),
            ));
        }
        if res >= 0 {
            // Someone connected to our abstract name: close what we got.
            // SAFETY: a successful accept returns a new descriptor we own.
            drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(res) });
        } else if res != -libc::ECANCELED {
            return Err(Failure::Unsupported(format!(
                "io_uring multishot accept failed: {}",
                io::Error::from_raw_os_error(-res)
            )));
        }
    }
    Ok(())
}

fn bind_abstract(name: &[u8]) -> io::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    UnixListener::bind_addr(&addr)
}
