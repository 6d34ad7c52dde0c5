//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, kernel 5.19+): the kernel picks a
//! buffer only when data arrives, so a connection waiting on a receive owns no buffer.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// A ring of `count` buffers of `size` bytes, registered as buffer group `group`.
///
/// # Ownership of the buffers
/// The kernel writes into a buffer while it sits in the ring, from the moment it is
/// published until the completion that names it: Rust must hold no reference to it then.
/// So the buffers are raw memory, never a Rust slice, and [`BufRing::get`] borrows one only
/// between its completion and its [`BufRing::recycle`] (which takes `&mut self`, ending
/// every borrow first).
pub struct BufRing {
    /// The ring entries: `count` [`BufRingEntry`]s in anonymous mmap'd memory.
    /// INVARIANT: valid for `count` entries until `drop`, page-aligned, shared with the kernel.
    entries: NonNull<BufRingEntry>,
    /// The buffers, `count * size` bytes of anonymous mmap'd memory.
    /// INVARIANT: mapped from `new` to `drop`, never moved; written by the kernel.
    buffers: NonNull<u8>,
    count: u16,
    size: usize,
    /// Our copy of the tail; published to the kernel after each change.
    tail: u16,
    group: u16,
}

impl BufRing {
    /// Allocates and registers the ring; every buffer starts out available to the kernel.
    pub fn new(ring: &IoUring, group: u16, count: u16, size: usize) -> io::Result<BufRing> {
        assert!(
            count.is_power_of_two(),
            "buffer count must be a power of two"
        );
        let bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let entries = map_anonymous(bytes)?.cast::<BufRingEntry>();
        let buffers = match map_anonymous(usize::from(count) * size) {
            Ok(buffers) => buffers,
            Err(error) => {
                // SAFETY: the entries were mapped above with this size and are not used.
                unsafe { libc::munmap(entries.as_ptr().cast(), bytes) };
                return Err(error);
            }
        };
        let mut ring_buffers = BufRing {
            entries,
            buffers,
            count,
            size,
            tail: 0,
            group,
        };
        for bid in 0..count {
            ring_buffers.push(bid);
        }
        ring_buffers.publish();
        // SAFETY: `entries` points to `count` entries that stay mapped until `drop`, which
        // unregisters the group before unmapping.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                group,
                0,
            )?
        };
        Ok(ring_buffers)
    }

    /// The buffer group id to put in receive requests.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// The first `len` bytes of buffer `bid`, as filled by a completed receive (an id
    /// outside the ring, which the kernel never reports, gives an empty slice).
    ///
    /// # Safety
    /// `bid` must come from a completion of this group and not be recycled since: the
    /// kernel does not write into it until it is recycled.
    pub unsafe fn get(&self, bid: u16, len: usize) -> &[u8] {
        if bid >= self.count {
            return &[];
        }
        let start = usize::from(bid) * self.size;
        // SAFETY: `start + len.min(size)` is inside the mapping (bid < count), which lives as
        // long as `self`; the caller guarantees the kernel is not writing into this buffer,
        // and `recycle`, which hands it back, needs `&mut self`, so the slice ends first.
        unsafe { std::slice::from_raw_parts(self.buffers.as_ptr().add(start), len.min(self.size)) }
    }

    /// Hands buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        let addr = self.buffers.as_ptr() as u64 + (usize::from(bid) * self.size) as u64;
        // SAFETY: `index < count`, so the entry is inside the mapping (see INVARIANT); the
        // kernel reads only entries between its head and the published tail, and this one is
        // past the tail until `publish`.
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives inside the first entry of the live mapping, and the
        // kernel reads it as an atomic u16, so an atomic release store is the right access.
        let tail = unsafe { &*BufRingEntry::tail(self.entries.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Unregisters the group from `ring`. Call before dropping, while the ring lives.
    pub fn unregister(&self, ring: &IoUring) {
        let _ = ring.submitter().unregister_buf_ring(self.group);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        let bytes = usize::from(self.count) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: the mapping was created in `new` with this size and is unmapped only here.
        unsafe { libc::munmap(self.entries.as_ptr().cast(), bytes) };
        // SAFETY: as for the entries; the group is unregistered (see `unregister`'s callers)
        // or the ring is gone, so the kernel no longer writes here.
        unsafe {
            libc::munmap(
                self.buffers.as_ptr().cast(),
                usize::from(self.count) * self.size,
            )
        };
    }
}

/// `bytes` of private anonymous memory, zeroed by the kernel.
fn map_anonymous(bytes: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint; the result is checked.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}
