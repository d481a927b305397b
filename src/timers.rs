//! The timer heap: one binary min-heap ordered by deadline, then by scheduling order.
//!
//! Deadlines are `f64` seconds on the loop's monotonic clock, kept at full precision (no
//! rounding to milliseconds). Ties fire in the order they were scheduled, which asyncio programs
//! rely on (sleeps started in order wake in order).
//!
//! Cancellation is lazy: a cancelled timer stays in the heap until it reaches the top or until
//! cancelled entries make up more than half of a large heap, when [`TimerHeap::retain`] rebuilds
//! it in O(n). The heap itself knows nothing about cancellation; the loop decides.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed, so that std's max-heap pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.when.total_cmp(&self.when).then_with(|| other.seq.cmp(&self.seq))
    }
}

pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<T> TimerHeap<T> {
    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { when, seq, item });
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// The earliest deadline and its item, if any.
    pub fn peek(&self) -> Option<(f64, &T)> {
        self.heap.peek().map(|e| (e.when, &e.item))
    }

    pub fn pop(&mut self) -> Option<T> {
        self.heap.pop().map(|e| e.item)
    }

    /// Pops the earliest timer if its deadline is at or before `now`.
    pub fn pop_due(&mut self, now: f64) -> Option<T> {
        if self.heap.peek()?.when <= now {
            self.pop()
        } else {
            None
        }
    }

    /// Keeps only the items for which `keep` is true; returns the removed items so the caller
    /// chooses when to drop them (dropping a Python object can run arbitrary code).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        let mut kept = Vec::with_capacity(self.heap.len());
        for entry in std::mem::take(&mut self.heap).into_vec() {
            if keep(&entry.item) {
                kept.push(entry);
            } else {
                removed.push(entry.item);
            }
        }
        self.heap = BinaryHeap::from(kept);
        removed
    }

    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.heap.drain().map(|e| e.item)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }
}

#[cfg(test)]
mod tests {
    use super::TimerHeap;

    #[test]
    fn pops_in_deadline_order() {
        let mut h = TimerHeap::default();
        for (when, name) in [(3.0, "c"), (1.0, "a"), (2.0, "b")] {
            h.push(when, name);
        }
        assert_eq!(h.pop(), Some("a"));
        assert_eq!(h.pop(), Some("b"));
        assert_eq!(h.pop(), Some("c"));
        assert_eq!(h.pop(), None);
    }

    #[test]
    fn equal_deadlines_pop_in_scheduling_order() {
        let mut h = TimerHeap::default();
        for i in 0..100 {
            h.push(5.0, i);
        }
        let order: Vec<_> = std::iter::from_fn(|| h.pop()).collect();
        assert_eq!(order, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn pop_due_never_returns_a_future_deadline() {
        let mut h = TimerHeap::default();
        h.push(1.000_000_1, "later");
        h.push(0.999_999_9, "sooner");
        assert_eq!(h.pop_due(1.0), Some("sooner"));
        assert_eq!(h.pop_due(1.0), None);
        assert_eq!(h.pop_due(1.000_000_1), Some("later"));
    }

    #[test]
    fn retain_removes_and_keeps_order() {
        let mut h = TimerHeap::default();
        for i in 0..1000 {
            h.push(f64::from(1000 - i), i);
        }
        let removed = h.retain(|i| i % 2 == 0);
        assert_eq!(removed.len(), 500);
        assert_eq!(h.len(), 500);
        let mut last = f64::NEG_INFINITY;
        while let Some((when, _)) = h.peek() {
            assert!(when >= last);
            last = when;
            h.pop();
        }
    }

    #[test]
    fn peek_reports_the_earliest_deadline() {
        let mut h = TimerHeap::default();
        assert!(h.peek().is_none());
        h.push(2.5, ());
        h.push(0.5, ());
        assert_eq!(h.peek().map(|(w, ())| w), Some(0.5));
        assert_eq!(h.len(), 2);
    }
}
