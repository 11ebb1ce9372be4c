//! Collecting kernel map entries that user space cannot account for.
//!
//! An entry the ledger does not know is not necessarily stale: the probes
//! may have made it after the last drain (a process that connects right
//! after exec has its socket in `SOCKS` and `SOCK_FDS` while its events
//! still wait in the ring buffer behind the exec being handled). So an
//! entry is removed only once it has been unaccounted for during a grace
//! period longer than any drain delay.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    time::{Duration, Instant},
};

/// Longer than the reader's drain interval (at most 10 s by config, 100 ms
/// by default) would make entries wait too long; 2 s covers the default
/// many times over, and an entry kept too long costs only map space.
pub const GRACE: Duration = Duration::from_secs(2);

/// Keys seen unaccounted for, with when they first were.
#[derive(Debug)]
pub struct Suspects<K> {
    since: HashMap<K, Instant>,
}

impl<K> Default for Suspects<K> {
    fn default() -> Self {
        Suspects {
            since: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Copy> Suspects<K> {
    /// Given the keys unaccounted for now, returns those that have been for
    /// the whole grace period (to remove); forgets keys accounted for again.
    pub fn confirm(&mut self, unaccounted: impl IntoIterator<Item = K>, now: Instant) -> Vec<K> {
        let mut still = HashMap::new();
        let mut confirmed = Vec::new();
        for key in unaccounted {
            let since = self.since.get(&key).copied().unwrap_or(now);
            if now.duration_since(since) >= GRACE {
                confirmed.push(key);
            } else {
                still.insert(key, since);
            }
        }
        self.since = still;
        confirmed
    }
}

/// Seeds (entries user space puts in a probes map for sockets the probes
/// did not see being opened) that the map refused, full: each counted once
/// (`kernel.tracking_full`) however often it is seeded again.
#[derive(Debug)]
pub struct Refused<K> {
    keys: HashSet<K>,
    pub total: u64,
}

impl<K> Default for Refused<K> {
    fn default() -> Self {
        Refused {
            keys: HashSet::new(),
            total: 0,
        }
    }
}

impl<K: Hash + Eq> Refused<K> {
    /// Forgets the keys not seeded any more (their sockets went away).
    pub fn keep_only(&mut self, seeded: impl Fn(&K) -> bool) {
        self.keys.retain(|key| seeded(key));
    }

    /// The map refused `key`: true the first time.
    pub fn note(&mut self, key: K) -> bool {
        let new = self.keys.insert(key);
        self.total += u64::from(new);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_seed_counts_once_while_it_is_seeded() {
        let mut refused = Refused::default();
        assert!(refused.note(7));
        assert!(!refused.note(7), "seeded again each housekeeping");
        assert!(refused.note(8));
        refused.keep_only(|key| *key == 8);
        // Fd 7's socket went; a new one on that number is another refusal.
        assert!(refused.note(7));
        assert_eq!(refused.total, 3);
    }

    #[test]
    fn only_keys_unaccounted_for_the_whole_grace_period_go() {
        let mut suspects = Suspects::default();
        let t0 = Instant::now();
        assert!(suspects.confirm([1, 2, 3], t0).is_empty(), "new suspects wait");
        // Two passes in a row (two processes discovered at once) change nothing.
        assert!(
            suspects
                .confirm([1, 2, 3], t0 + Duration::from_millis(1))
                .is_empty()
        );
        // Key 2 was accounted for meanwhile (its events drained): forgiven.
        let later = t0 + GRACE;
        assert_eq!(suspects.confirm([1, 3, 4], later), vec![1, 3]);
        assert!(
            suspects
                .confirm([2, 4], later + Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(
            suspects.confirm([2, 4], later + GRACE),
            vec![4],
            "2 has waited 1 ms less"
        );
        assert_eq!(
            suspects.confirm([2], later + Duration::from_millis(1) + GRACE),
            vec![2]
        );
    }
}
