//! Hash maps for the hot paths: the ledger (several lookups per kernel
//! record) and snapshot joins (one per socket). foldhash, seeded per
//! process, costs a fraction of std's SipHash: `perf` on the daemon during
//! the watched TCP loop put a quarter of its time in SipHash. The keys are
//! pids, fds, inodes and addresses, in tables bounded by the watched
//! processes' own limits, so SipHash's resistance to chosen keys buys little.

use std::collections::{HashMap, HashSet};

pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;
