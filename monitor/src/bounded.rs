//! "The last N" queues: the ledger and the call log keep the newest few of
//! several things (failed syscalls, exited threads, closed fds, finished
//! calls and loops), dropping the oldest.

use std::collections::VecDeque;

/// Appends `item`, first dropping the oldest entry if `queue` holds `capacity`.
pub fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, capacity: usize) {
    if queue.len() >= capacity {
        queue.pop_front();
    }
    queue.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_goes_when_full() {
        let mut queue = VecDeque::new();
        for item in 1..=3 {
            push_bounded(&mut queue, item, 2);
        }
        assert_eq!(queue, [2, 3]);
    }
}
