//! The process's C allocator: what it holds and giving its free memory back
//! to the kernel. These are FFI calls into glibc, so they live with the
//! driver's other unsafe code; elsewhere (musl, macOS, Windows) they report
//! nothing and do nothing.
//!
//! Why a server needs this: glibc returns freed memory to the kernel only
//! from the top of each arena. After a peak (a slow reader's send queue, a
//! burst of sessions) the freed chunks in the middle of an arena stay
//! resident until something calls `malloc_trim`, so RSS follows the worst
//! peak so far rather than what is in use. [`stats`] tells the two apart;
//! [`trim`] returns the free pages.

/// What the allocator holds now (glibc's `mallinfo2`, summed over arenas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeapStats {
    /// Bytes in live allocations (small chunks and mmapped large ones).
    pub in_use: u64,
    /// Bytes the allocator holds free in its arenas (resident unless
    /// trimmed).
    pub free: u64,
    /// Bytes taken from the kernel: arenas plus mmapped chunks.
    pub from_system: u64,
}

/// The allocator's totals now; `None` where the C library is not glibc.
/// Walks every arena under its lock: cheap enough for a sample every few
/// seconds, not for a hot path.
pub fn stats() -> Option<HeapStats> {
    imp::stats()
}

/// Gives the allocator's free pages back to the kernel (glibc's
/// `malloc_trim(0)`: the top of each arena and whole free pages inside
/// them). Returns true if memory was released. Takes each arena's lock for
/// the walk (about a millisecond for a few hundred MiB): call it from a
/// housekeeping thread every few seconds, never per request.
pub fn trim() -> bool {
    imp::trim()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use super::HeapStats;

    pub(super) fn stats() -> Option<HeapStats> {
        // SAFETY: `mallinfo2` takes no arguments, only reads the
        // allocator's bookkeeping under its own locks and returns a plain
        // struct by value; it is safe to call from any thread at any time.
        let info = unsafe { libc::mallinfo2() };
        Some(HeapStats {
            in_use: (info.uordblks + info.hblkhd) as u64,
            free: info.fordblks as u64,
            from_system: (info.arena + info.hblkhd) as u64,
        })
    }

    pub(super) fn trim() -> bool {
        // SAFETY: `malloc_trim` only releases pages the allocator itself
        // marks free, under each arena's lock; no pointer the program holds
        // is touched, and any thread may call it at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    use super::HeapStats;

    pub(super) fn stats() -> Option<HeapStats> {
        None
    }

    pub(super) fn trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stats_see_an_allocation_and_trim_runs() {
        let Some(before) = super::stats() else {
            return; // not glibc: nothing to see
        };
        let block = vec![1u8; 8 << 20];
        let during = super::stats().expect("glibc");
        assert!(
            during.in_use >= before.in_use + (8 << 20) - 4096,
            "{before:?} -> {during:?}"
        );
        drop(block);
        super::trim();
        let after = super::stats().expect("glibc");
        assert!(after.in_use < during.in_use, "{during:?} -> {after:?}");
    }
}
