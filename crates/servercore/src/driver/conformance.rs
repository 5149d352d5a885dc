//! The driver contract ([`Driver`]'s rules) as one suite of tests, generic
//! over the driver and run unchanged for each backend: each backend's tests
//! instantiate it with [`driver_conformance!`]. Every case runs over real
//! loopback sockets and is bounded in time; what only one backend does
//! (ring exhaustion and setups on io_uring, per-round caps on poll) is
//! tested beside that backend.
//!
//! The harness (an event collector, bounded polls, loopback pairs,
//! resumed sends) is in `harness`; the cases are grouped by what they
//! exercise: moving bytes (`transfer`), a connection's and a listener's
//! life (`lifecycle`), accepting and its failures (`accept`).

mod accept;
mod harness;
mod lifecycle;
mod transfer;

pub(crate) use accept::*;
pub(crate) use harness::*;
pub(crate) use lifecycle::*;
pub(crate) use transfer::*;

/// Instantiates every case of the suite for the driver type `$driver`, as
/// `#[test]`s in a module `conformance`.
macro_rules! driver_conformance {
    ($driver:ty) => {
        mod conformance {
            $crate::driver::conformance::cases!(
                $driver;
                accept_and_receive_exact_bytes,
                a_flood_from_several_peers_arrives_complete_and_in_order,
                gathered_send_of_many_buffers_arrives_in_order,
                large_send_to_slow_reader_resumes_partial_writes,
                peer_close_reports_eof_then_close_releases_once,
                peer_reset_reports_connection_reset_and_a_send_fails,
                close_with_a_send_in_flight_returns_the_batch_then_releases_once,
                close_modes_send_fin_or_rst,
                graceful_close_ignores_later_calls_and_frees_the_token,
                close_right_after_add_stream_releases_once,
                unknown_tokens_are_ignored_and_live_ones_refused_twice,
                empty_batch_is_reported_as_an_error,
                wake_from_another_thread_returns_poll_promptly,
                zero_timeout_does_not_block,
                close_listeners_frees_the_port_at_once,
                close_listeners_stops_accepting,
                drop_with_operations_in_flight_is_prompt_and_closes,
                trim_between_writes_changes_nothing_that_is_in_use,
            );

            #[cfg(target_os = "linux")]
            $crate::driver::conformance::cases!($driver; a_listener_that_cannot_accept_reports_once);

            /// Runs in a child process (the descriptor limit is per
            /// process): see the suite's
            /// `accept_backs_off_on_emfile_and_resumes`.
            #[cfg(unix)]
            #[test]
            fn accept_backs_off_on_emfile_and_resumes() {
                let path = module_path!();
                let name = format!(
                    "{}::accept_backs_off_on_emfile_and_resumes",
                    path.split_once("::").map_or(path, |(_, rest)| rest)
                );
                $crate::driver::conformance::accept_backs_off_on_emfile_and_resumes::<$driver>(
                    &name,
                );
            }
        }
    };
}
pub(crate) use driver_conformance;

/// One `#[test]` per case, running it for `$driver`.
macro_rules! cases {
    ($driver:ty; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::driver::conformance::$case::<$driver>();
            }
        )*
    };
}
pub(crate) use cases;
