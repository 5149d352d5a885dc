//! One test per I/O backend.

/// Generates `name::poll` and `name::uring` tests for `fn name(Backend)`:
/// `backend_tests!(echo_works);`. The io_uring one is skipped with a
/// message where the kernel forbids io_uring, unless
/// `SERVERCORE_REQUIRE_URING` is set. Attributes before a name go on both
/// tests (a test that needs an outside tool carries
/// `#[cfg_attr(servercore_missing = "TOOL", ignore = "needs TOOL ...")]`,
/// see [`probe`](crate::probe)). Both install the test logger
/// ([`init_logging`](crate::init_logging)).
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                $(#[$meta])*
                fn poll() {
                    $crate::init_logging();
                    super::$name(servercore::Backend::Poll);
                }

                #[test]
                $(#[$meta])*
                fn uring() {
                    $crate::init_logging();
                    if !$crate::require_uring() {
                        return;
                    }
                    super::$name(servercore::Backend::IoUring);
                }
            }
        )*
    };
}

/// Whether an io_uring test can run here: false (with a message) where the
/// kernel forbids io_uring; panics instead when `SERVERCORE_REQUIRE_URING`
/// is set (CI), so a skip there cannot hide.
pub fn require_uring() -> bool {
    match servercore::driver::uring_unavailable_reason() {
        None => true,
        Some(reason) => {
            if std::env::var_os("SERVERCORE_REQUIRE_URING").is_some() {
                panic!("io_uring required but unavailable: {reason}");
            }
            eprintln!("skipping io_uring test: {reason}");
            false
        }
    }
}
