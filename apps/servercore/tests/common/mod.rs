//! What the command's integration tests share: one test per backend.

/// Generates `name::poll` and `name::uring` tests for `fn name(Backend)`;
/// the io_uring one is skipped with a message where the kernel forbids
/// io_uring, unless SERVERCORE_REQUIRE_URING is set.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn poll() {
                    super::$name(servercore::Backend::Poll);
                }

                #[test]
                fn uring() {
                    if let Some(reason) = servercore::driver::uring_unavailable_reason() {
                        if std::env::var_os("SERVERCORE_REQUIRE_URING").is_some() {
                            panic!("io_uring required but unavailable: {reason}");
                        }
                        eprintln!("skipping io_uring test: {reason}");
                        return;
                    }
                    super::$name(servercore::Backend::IoUring);
                }
            }
        )*
    };
}
