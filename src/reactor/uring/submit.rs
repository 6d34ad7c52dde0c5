//! Getting submission entries into the ring without ever failing the reactor.
//!
//! The submission queue has a fixed size; when it is full the entries so far are handed to
//! the kernel (`io_uring_enter`) to make room. That call can fail for reasons that pass
//! (`EBUSY` or `EAGAIN` while completions wait to be reaped, `EINTR`): the entry then waits
//! here, in order, and goes in at the start of the next loop turn, after the reap. A
//! transient kernel condition delays an operation; it never ends a reactor with all its
//! connections.

use std::collections::VecDeque;
use std::io;

use io_uring::{squeue, IoUring};

/// Entries the ring could not take yet, oldest first.
#[derive(Default)]
pub(super) struct Submissions {
    backlog: VecDeque<squeue::Entry>,
}

impl Submissions {
    /// Queues `entry`, flushing the submission queue to the kernel if it is full.
    ///
    /// # Safety
    /// Every buffer `entry` points to must stay valid until its completion arrives.
    pub(super) unsafe fn push(&mut self, ring: &mut IoUring, entry: &squeue::Entry) {
        // SAFETY: passed on from the caller.
        unsafe { self.push_with(ring, entry, |ring| ring.submit()) }
    }

    /// [`Submissions::push`] with the flush to the kernel given, so that tests can make it
    /// fail.
    ///
    /// # Safety
    /// As for [`Submissions::push`].
    unsafe fn push_with(
        &mut self,
        ring: &mut IoUring,
        entry: &squeue::Entry,
        submit: impl FnMut(&mut IoUring) -> io::Result<usize>,
    ) {
        // Behind a backlog, an entry waits its turn: operations on one socket keep their order.
        // SAFETY: passed on from the caller.
        if !self.backlog.is_empty() || !unsafe { try_push(ring, entry, submit) } {
            self.backlog.push_back(entry.clone());
        }
    }

    /// Moves waiting entries into the ring while it takes them. Call once per loop turn,
    /// after reaping completions.
    pub(super) fn flush(&mut self, ring: &mut IoUring) {
        self.flush_with(ring, |ring| ring.submit());
    }

    fn flush_with(
        &mut self,
        ring: &mut IoUring,
        mut submit: impl FnMut(&mut IoUring) -> io::Result<usize>,
    ) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: every entry in the backlog came through `push`, whose caller keeps its
            // buffers valid until the completion, which cannot have arrived: it was never
            // submitted.
            if !unsafe { try_push(ring, entry, &mut submit) } {
                return;
            }
            self.backlog.pop_front();
        }
    }

    /// Whether entries wait: the loop must not sleep on the ring until they are in.
    pub(super) fn is_waiting(&self) -> bool {
        !self.backlog.is_empty()
    }
}

/// Pushes `entry`, flushing a full queue once; false when the ring cannot take it now.
///
/// # Safety
/// As for [`Submissions::push`].
unsafe fn try_push(
    ring: &mut IoUring,
    entry: &squeue::Entry,
    mut submit: impl FnMut(&mut IoUring) -> io::Result<usize>,
) -> bool {
    // SAFETY: passed on from the caller.
    if unsafe { ring.submission().push(entry) }.is_ok() {
        return true;
    }
    if let Err(error) = submit(ring) {
        tracing::debug!(%error, "io_uring submission deferred to the next turn");
        return false;
    }
    // SAFETY: passed on from the caller.
    unsafe { ring.submission().push(entry) }.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;

    fn nop(n: u64) -> squeue::Entry {
        opcode::Nop::new().build().user_data(n)
    }

    fn busy(_: &mut IoUring) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::EBUSY))
    }

    fn reap(ring: &mut IoUring) -> Vec<u64> {
        ring.completion().map(|c| c.user_data()).collect()
    }

    #[test]
    fn a_full_ring_that_the_kernel_refuses_keeps_every_entry_in_order() {
        let Ok(mut ring) = IoUring::new(2) else {
            eprintln!("skipping: io_uring is unavailable here");
            return;
        };
        let mut submissions = Submissions::default();
        for n in 0..6 {
            // SAFETY: a no-op references no memory.
            unsafe { submissions.push_with(&mut ring, &nop(n), busy) };
        }
        // Two fit in the queue; the kernel refused the flush, so four wait.
        assert!(submissions.is_waiting());
        assert_eq!(submissions.backlog.len(), 4);
        // Still refused: nothing is lost, nothing reordered.
        submissions.flush_with(&mut ring, busy);
        assert_eq!(submissions.backlog.len(), 4);

        let mut done = Vec::new();
        while submissions.is_waiting() {
            submissions.flush(&mut ring);
            ring.submit_and_wait(1).unwrap();
            done.extend(reap(&mut ring));
        }
        ring.submit_and_wait(0).unwrap();
        while done.len() < 6 {
            ring.submit_and_wait(1).unwrap();
            done.extend(reap(&mut ring));
        }
        assert_eq!(done, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn behind_a_backlog_a_new_entry_waits_its_turn() {
        let Ok(mut ring) = IoUring::new(2) else {
            eprintln!("skipping: io_uring is unavailable here");
            return;
        };
        let mut submissions = Submissions::default();
        for n in 0..3 {
            // SAFETY: a no-op references no memory.
            unsafe { submissions.push_with(&mut ring, &nop(n), busy) };
        }
        assert_eq!(submissions.backlog.len(), 1);
        ring.submit_and_wait(2).unwrap();
        assert_eq!(reap(&mut ring), [0, 1]);
        // The queue has room now, but entry 3 must not overtake entry 2.
        // SAFETY: a no-op references no memory.
        unsafe { submissions.push(&mut ring, &nop(3)) };
        assert_eq!(submissions.backlog.len(), 2);
        submissions.flush(&mut ring);
        assert!(!submissions.is_waiting());
        ring.submit_and_wait(2).unwrap();
        assert_eq!(reap(&mut ring), [2, 3]);
    }
}
