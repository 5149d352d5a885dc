//! The open-file limit: a load run opens a descriptor per session, more
//! than the usual soft limit of 1024.

/// Raises the soft open-file limit to the hard limit; returns the limit now
/// in force.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}
