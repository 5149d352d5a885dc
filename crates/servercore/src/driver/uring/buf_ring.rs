//! The provided receive-buffer ring of one driver.
//!
//! Owns two anonymous mappings: the ring of `io_uring_buf` descriptors the
//! kernel picks receive buffers from, and the buffers themselves
//! (`entries × size` bytes). A buffer is either in the ring (the kernel may
//! fill it at any time) or lent to the driver by a completion (nobody else
//! touches it) until [`BufRing::recycle`] puts it back.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;

/// The kernel's `struct io_uring_buf`. In the first entry, `resv` is the
/// ring's tail (`struct io_uring_buf_ring` overlays it).
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<RawBuf>() == 16);

/// An anonymous, private, read-write mapping.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    fn unmap(&self) {
        // SAFETY: `ptr`/`len` describe a mapping made by `new` and unmapped
        // only here, once (callers drop the Mapping right after).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A provided-buffer ring registered with one io_uring instance.
pub(super) struct BufRing {
    ring: Mapping,
    data: Mapping,
    entries: u16,
    buf_size: u32,
    /// Our copy of the tail; published to the kernel after each recycle.
    tail: u16,
    /// Set when memory must outlive the driver (operations still in flight).
    leaked: bool,
}

impl BufRing {
    /// Allocates `entries` (a power of two, at most 32768) buffers of
    /// `buf_size` bytes and puts them all in the ring.
    pub(super) fn new(entries: u16, buf_size: usize) -> io::Result<BufRing> {
        debug_assert!(entries.is_power_of_two() && entries <= 32_768);
        let buf_size_u32 = u32::try_from(buf_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "receive buffer too large"))?;
        let data_len = usize::from(entries).checked_mul(buf_size).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "receive buffers too large")
        })?;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        // The kernel pins the ring's pages, rounded up to whole pages.
        let ring_len = (usize::from(entries) * std::mem::size_of::<RawBuf>()).div_ceil(page) * page;
        let ring = Mapping::new(ring_len)?;
        let data = match Mapping::new(data_len) {
            Ok(data) => data,
            Err(error) => {
                ring.unmap();
                return Err(error);
            }
        };
        let mut this = BufRing {
            ring,
            data,
            entries,
            buf_size: buf_size_u32,
            tail: 0,
            leaked: false,
        };
        for bid in 0..entries {
            this.write_entry(bid);
        }
        this.publish_tail();
        Ok(this)
    }

    /// Registers the ring with `uring` as buffer group `group`.
    pub(super) fn register(&self, uring: &IoUring, group: u16) -> io::Result<()> {
        // SAFETY: the ring mapping stays valid until `self` is dropped, and
        // the driver drops its `IoUring` (unregistering everything) before
        // its `BufRing`; if operations are still in flight at that point the
        // mappings are leaked instead (`leak`).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                self.ring.ptr.as_ptr() as u64,
                self.entries,
                group,
                0,
            )
        }
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    ///
    /// `bid` must have been handed out by a completion of this ring and not
    /// recycled since, and `len` must be at most what the kernel wrote.
    pub(super) unsafe fn filled(&self, bid: u16, len: usize) -> &[u8] {
        debug_assert!(bid < self.entries && len <= self.buf_size as usize);
        let offset = usize::from(bid) * self.buf_size as usize;
        // SAFETY: `bid < entries`, so the range lies inside the data mapping;
        // per the caller's contract the kernel wrote those bytes and no
        // longer writes to this buffer until it is recycled, which needs
        // `&mut self` and so ends this borrow first.
        unsafe { std::slice::from_raw_parts(self.data.ptr.as_ptr().add(offset), len) }
    }

    /// Gives buffer `bid` back to the kernel.
    pub(super) fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.entries);
        self.write_entry(bid);
        self.publish_tail();
    }

    /// Keeps both mappings alive forever (operations still reference them).
    pub(super) fn leak(&mut self) {
        self.leaked = true;
    }

    /// Writes the descriptor of buffer `bid` at the tail and advances our
    /// copy of the tail (not yet visible to the kernel).
    fn write_entry(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.entries - 1));
        let addr = self.data.ptr.as_ptr() as u64 + u64::from(bid) * u64::from(self.buf_size);
        // SAFETY: `slot < entries`, inside the ring mapping. The kernel reads
        // the slots between its head and the published tail only, and this
        // slot is past the published tail (at most `entries` buffers are ever
        // in the ring, and `bid` was out of it). Fields are written through
        // raw pointers: the first entry's `resv` (the tail) is not touched.
        unsafe {
            let entry = self.ring.ptr.as_ptr().cast::<RawBuf>().add(slot);
            std::ptr::addr_of_mut!((*entry).addr).write(addr);
            std::ptr::addr_of_mut!((*entry).len).write(self.buf_size);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every entry written so far visible to the kernel.
    fn publish_tail(&self) {
        // SAFETY: the tail is the `resv` field of the first entry: inside the
        // mapping, 2-byte aligned (offset 14 of a page-aligned mapping), and
        // only ever accessed atomically by us and the kernel
        // (`smp_load_acquire`). The Release store orders the entry writes
        // before it.
        unsafe {
            let tail = std::ptr::addr_of_mut!((*self.ring.ptr.as_ptr().cast::<RawBuf>()).resv);
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if !self.leaked {
            self.ring.unmap();
            self.data.unmap();
        }
    }
}
