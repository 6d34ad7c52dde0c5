//! A hashed timer wheel: O(1) schedule, cancel and per-tick expiry, no allocation after
//! the first use of a key, and no clock inside (the caller passes `now` in ticks).
//!
//! Each key (a connection's slab index) has at most one deadline. Entries live in a
//! `Vec` indexed by key and are threaded into per-slot doubly-linked lists, so cancelling
//! is an unlink. A slot holds every deadline congruent to it modulo the wheel size; when
//! the wheel turns past a slot, entries due by then fire and later rounds stay put.

/// Slots in the wheel: 1024 ticks of 1 ms cover one second per round; longer deadlines
/// are skipped on the rounds before theirs.
const SLOTS: usize = 1024;
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Entry {
    deadline: u64,
    prev: u32,
    next: u32,
    scheduled: bool,
}

const UNSCHEDULED: Entry = Entry {
    deadline: 0,
    prev: NIL,
    next: NIL,
    scheduled: false,
};

/// A timer wheel over keys `0..u32::MAX`, ticking in caller-defined units (wsedge: ms).
pub struct TimerWheel {
    entries: Vec<Entry>,
    heads: Box<[u32; SLOTS]>,
    occupied: [u64; SLOTS / 64],
    /// Every tick before this one has been expired.
    /// INVARIANT: no scheduled entry has `deadline < cursor`.
    cursor: u64,
    len: usize,
}

impl TimerWheel {
    /// An empty wheel whose clock starts at tick `now`.
    pub fn new(now: u64) -> Self {
        TimerWheel {
            entries: Vec::new(),
            heads: Box::new([NIL; SLOTS]),
            occupied: [0; SLOTS / 64],
            cursor: now,
            len: 0,
        }
    }

    /// Number of scheduled deadlines.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets `key`'s deadline, replacing any earlier one. A deadline in the past fires on
    /// the next [`TimerWheel::expire`].
    pub fn schedule(&mut self, key: u32, deadline: u64) {
        self.cancel(key);
        let index = key as usize;
        if index >= self.entries.len() {
            self.entries.resize(index + 1, UNSCHEDULED);
        }
        let deadline = deadline.max(self.cursor);
        let slot = (deadline % SLOTS as u64) as usize;
        let head = self.heads[slot];
        self.entries[index] = Entry {
            deadline,
            prev: NIL,
            next: head,
            scheduled: true,
        };
        if head != NIL {
            self.entries[head as usize].prev = key;
        }
        self.heads[slot] = key;
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
    }

    /// Removes `key`'s deadline, if any.
    pub fn cancel(&mut self, key: u32) {
        let Some(entry) = self.entries.get(key as usize).copied() else {
            return;
        };
        if !entry.scheduled {
            return;
        }
        let slot = (entry.deadline % SLOTS as u64) as usize;
        if entry.prev == NIL {
            self.heads[slot] = entry.next;
            if entry.next == NIL {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
            }
        } else {
            self.entries[entry.prev as usize].next = entry.next;
        }
        if entry.next != NIL {
            self.entries[entry.next as usize].prev = entry.prev;
        }
        self.entries[key as usize] = UNSCHEDULED;
        self.len -= 1;
    }

    /// Makes `key`'s deadline `deadline` (none: cancelled), touching the wheel only if it
    /// changes: the backends call this after every event of a connection.
    pub fn set(&mut self, key: u32, deadline: Option<u64>) {
        match deadline {
            Some(at) if self.deadline(key) != Some(at) => self.schedule(key, at),
            Some(_) => {}
            None => self.cancel(key),
        }
    }

    /// The deadline scheduled for `key`.
    pub fn deadline(&self, key: u32) -> Option<u64> {
        self.entries
            .get(key as usize)
            .filter(|e| e.scheduled)
            .map(|e| e.deadline)
    }

    /// Turns the wheel to `now`, calling `fire(key)` for every deadline `<= now` (each is
    /// unscheduled before its call). Costs one step per tick passed, capped at one round
    /// when the gap is longer.
    pub fn expire(&mut self, now: u64, mut fire: impl FnMut(u32)) {
        if now < self.cursor {
            return;
        }
        if self.len == 0 {
            self.cursor = now + 1;
            return;
        }
        let ticks = (now - self.cursor + 1).min(SLOTS as u64);
        for step in 0..ticks {
            let slot = ((self.cursor + step) % SLOTS as u64) as usize;
            let mut key = self.heads[slot];
            while key != NIL {
                let entry = self.entries[key as usize];
                if entry.deadline <= now {
                    self.cancel(key);
                    fire(key);
                }
                key = entry.next;
            }
        }
        self.cursor = now + 1;
    }

    /// Calls `visit(key)` for every deadline `<= until`, leaving the wheel as it is. Costs
    /// one step per tick to `until`, capped at one round.
    pub fn due_by(&self, until: u64, mut visit: impl FnMut(u32)) {
        if self.len == 0 || until < self.cursor {
            return;
        }
        let ticks = (until - self.cursor + 1).min(SLOTS as u64);
        for step in 0..ticks {
            let slot = ((self.cursor + step) % SLOTS as u64) as usize;
            let mut key = self.heads[slot];
            while key != NIL {
                let entry = self.entries[key as usize];
                if entry.deadline <= until {
                    visit(key);
                }
                key = entry.next;
            }
        }
    }

    /// Ticks from `now` until the wheel may next have something to fire: the distance to
    /// the next occupied slot (a lower bound, exact unless that slot's entries are due on
    /// a later round). `None` when nothing is scheduled.
    pub fn next_wake(&self, now: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let start = self.cursor.max(now);
        for distance in 0..SLOTS as u64 {
            let slot = ((start + distance) % SLOTS as u64) as usize;
            let word = self.occupied[slot / 64] >> (slot % 64);
            if word & 1 != 0 {
                return Some(start + distance - now);
            }
            // Skip the rest of an empty word in one step.
            if word == 0 && slot % 64 != 0 {
                continue;
            }
        }
        Some(SLOTS as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(wheel: &mut TimerWheel, now: u64) -> Vec<u32> {
        let mut keys = Vec::new();
        wheel.expire(now, |k| keys.push(k));
        keys.sort_unstable();
        keys
    }

    #[test]
    fn due_by_lists_what_is_due_by_then_and_fires_nothing() {
        let mut wheel = TimerWheel::new(0);
        wheel.schedule(1, 100);
        wheel.schedule(2, 1_500);
        wheel.schedule(3, 2_500);
        let mut due = Vec::new();
        wheel.due_by(2_000, |k| due.push(k));
        due.sort_unstable();
        assert_eq!(due, [1, 2]);
        assert_eq!(wheel.len(), 3);
        assert_eq!(fired(&mut wheel, 100), [1]);
    }

    #[test]
    fn fires_at_the_deadline_not_before() {
        let mut wheel = TimerWheel::new(0);
        wheel.schedule(1, 10);
        wheel.schedule(2, 10);
        wheel.schedule(3, 11);
        assert!(fired(&mut wheel, 9).is_empty());
        assert_eq!(fired(&mut wheel, 10), [1, 2]);
        assert_eq!(wheel.len(), 1);
        assert_eq!(fired(&mut wheel, 11), [3]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_round_wait_for_their_round() {
        let mut wheel = TimerWheel::new(0);
        wheel.schedule(7, 10_000);
        for now in (0..10_000).step_by(333) {
            assert!(fired(&mut wheel, now).is_empty(), "fired early at {now}");
        }
        assert!(fired(&mut wheel, 9_999).is_empty());
        assert_eq!(fired(&mut wheel, 10_000), [7]);
    }

    #[test]
    fn a_long_jump_fires_everything_due() {
        let mut wheel = TimerWheel::new(0);
        for key in 0..3000 {
            wheel.schedule(key, u64::from(key) * 7);
        }
        assert_eq!(fired(&mut wheel, 50_000).len(), 3000);
    }

    #[test]
    fn cancel_and_reschedule() {
        let mut wheel = TimerWheel::new(0);
        wheel.schedule(1, 5);
        wheel.schedule(2, 5);
        wheel.schedule(3, 5);
        wheel.cancel(2);
        wheel.cancel(2);
        wheel.schedule(1, 50);
        assert_eq!(wheel.deadline(1), Some(50));
        assert_eq!(fired(&mut wheel, 5), [3]);
        assert_eq!(fired(&mut wheel, 50), [1]);
        wheel.cancel(99);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_turn() {
        let mut wheel = TimerWheel::new(100);
        wheel.expire(200, |_| {});
        wheel.schedule(4, 150);
        assert_eq!(fired(&mut wheel, 201), [4]);
    }

    #[test]
    fn next_wake_points_at_the_earliest_slot() {
        let mut wheel = TimerWheel::new(0);
        assert_eq!(wheel.next_wake(0), None);
        wheel.schedule(1, 300);
        wheel.schedule(2, 40);
        assert_eq!(wheel.next_wake(0), Some(40));
        assert_eq!(wheel.next_wake(10), Some(30));
        wheel.cancel(2);
        assert_eq!(wheel.next_wake(10), Some(290));
        // A deadline rounds away still wakes at most a round later than needed.
        wheel.schedule(3, 5_000);
        wheel.cancel(1);
        assert!(wheel.next_wake(0).is_some_and(|t| t <= 5_000));
    }

    #[test]
    fn fire_callback_may_reschedule_others() {
        let mut wheel = TimerWheel::new(0);
        wheel.schedule(1, 3);
        wheel.schedule(2, 3);
        let mut order = Vec::new();
        wheel.expire(3, |k| order.push(k));
        assert_eq!(order.len(), 2);
    }
}
