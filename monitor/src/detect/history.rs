//! What the detectors look back on: one sample per process per tick of the
//! counts that leak (fds by kind, threads, sockets per endpoint), kept for
//! the longest window a rule uses; and a sparser series of its memory.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
};

use monitor_common::{TCP_CLOSE, TCP_CLOSE_WAIT, TCP_LISTEN};

use crate::{
    fdkind::FdKind,
    ledger::{
        Ledger, Process,
        sockets::{MAX_ENDPOINTS, SocketEntry, local_of, remote_of},
    },
    logscan::{SecretKind, Sighting},
};

/// The most logs of one process whose secrets are remembered at once.
const MAX_LOGS: usize = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointSample {
    /// Sockets to it that are not closed.
    pub open: u32,
    pub close_wait: u32,
    /// Counters since watching started.
    pub connects: u64,
    pub refused: u64,
    pub timeouts: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub ts_ns: u64,
    pub fds: u32,
    pub fds_by_kind: BTreeMap<FdKind, u32>,
    pub threads: u32,
    pub endpoints: BTreeMap<SocketAddr, EndpointSample>,
}

impl Sample {
    /// The endpoint rules are about connections the process makes: those
    /// it accepted on its own listeners are left out. Keyed by their
    /// clients' addresses they were one endpoint each, a map of thousands
    /// in every sample of a server's window (a process holding 5,000
    /// accepted connections grew the daemon by 30 MB a minute), and no
    /// endpoint rule could fire on one.
    pub fn of(ledger: &Ledger, process: &Process, ts_ns: u64) -> Sample {
        let mut endpoints: BTreeMap<SocketAddr, EndpointSample> = BTreeMap::new();
        let sockets: Vec<&SocketEntry> = (process.fds.sockets())
            .filter_map(|inode| ledger.sockets.get(&inode))
            .collect();
        let listeners: Vec<SocketAddr> = (sockets.iter())
            .filter(|socket| socket.state == Some(TCP_LISTEN))
            .filter_map(|socket| socket.tuple.as_ref().map(local_of))
            .collect();
        for socket in sockets {
            let Some(tuple) = &socket.tuple else { continue };
            let remote = remote_of(tuple);
            if remote.port() == 0 || accepted_on(&listeners, local_of(tuple)) {
                continue;
            }
            let entry = endpoints.entry(remote).or_default();
            match socket.state {
                Some(TCP_CLOSE_WAIT) => {
                    entry.open += 1;
                    entry.close_wait += 1;
                }
                Some(TCP_CLOSE) => {}
                _ => entry.open += 1,
            }
        }
        keep_busiest(&mut endpoints, process);
        for (remote, stats) in &process.endpoints {
            let entry = endpoints.entry(*remote).or_default();
            entry.connects = stats.connects;
            entry.refused = stats.refused;
            entry.timeouts = stats.timeouts;
        }
        Sample {
            ts_ns,
            fds: process.fds.len() as u32,
            fds_by_kind: process
                .counts()
                .into_iter()
                .map(|(kind, n)| (kind, n as u32))
                .collect(),
            threads: process.threads.len() as u32,
            endpoints,
        }
    }
}

/// Bounds what one sample holds for a process connected to many remotes
/// (a sample per second over a 10-minute window, ~80 bytes per endpoint in
/// each): besides the remotes with a health record in the ledger (at most
/// [`MAX_ENDPOINTS`]), the [`MAX_ENDPOINTS`] with the most sockets in
/// CLOSE_WAIT, then open. One left out has fewer than any kept, so it is
/// not the one an endpoint rule would fire on first.
fn keep_busiest(endpoints: &mut BTreeMap<SocketAddr, EndpointSample>, process: &Process) {
    let mut others: Vec<(u32, u32, SocketAddr)> = (endpoints.iter())
        .filter(|(remote, _)| !process.endpoints.contains_key(remote))
        .map(|(remote, e)| (e.close_wait, e.open, *remote))
        .collect();
    if others.len() <= MAX_ENDPOINTS {
        return;
    }
    others.sort_unstable_by(|a, b| b.cmp(a));
    for (_, _, remote) in &others[MAX_ENDPOINTS..] {
        endpoints.remove(remote);
    }
}

/// Whether a connection with local address `local` came in on one of
/// `listeners` (a connection the process made has an ephemeral port).
fn accepted_on(listeners: &[SocketAddr], local: SocketAddr) -> bool {
    (listeners.iter()).any(|listener| {
        listener.port() == local.port() && (listener.ip().is_unspecified() || listener.ip() == local.ip())
    })
}

/// Samples of one process, oldest first.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub samples: VecDeque<Sample>,
    /// About 60 per `memory_leak` window (see [`MemorySample::every_ns`]).
    pub memory: VecDeque<MemorySample>,
    /// Lines with a secret in each log the process writes, by path.
    pub log_secrets: BTreeMap<String, LogSecrets>,
}

/// Lines with a secret in one log (where, never what).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSecrets {
    pub lines: u64,
    pub kinds: BTreeSet<SecretKind>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Byte offset of the last such line in the file.
    pub last_offset: u64,
}

/// A process's resident anonymous memory, and the API requests it had sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySample {
    pub ts_ns: u64,
    pub anon_bytes: u64,
    /// Its HTTP requests since it was first watched (`calls.parse.requests`).
    pub requests: u64,
}

impl MemorySample {
    /// How often to take one for a window: ~60 per window, 1 s to 1 min apart
    /// (an hour's window keeps 60 samples, not 3600).
    pub fn every_ns(window_s: u64) -> u64 {
        (window_s / 60).clamp(1, 60) * 1_000_000_000
    }
}

impl History {
    /// Adds a sample and forgets those older than `keep_ns`.
    pub fn push(&mut self, sample: Sample, keep_ns: u64) {
        let now = sample.ts_ns;
        self.samples.push_back(sample);
        forget_older(&mut self.samples, |s| s.ts_ns, now, keep_ns);
    }

    /// Adds a memory sample and forgets those older than `keep_ns`.
    pub fn push_memory(&mut self, sample: MemorySample, keep_ns: u64) {
        let now = sample.ts_ns;
        self.memory.push_back(sample);
        forget_older(&mut self.memory, |s| s.ts_ns, now, keep_ns);
    }

    /// Counts `sightings` made at `now_ns`, and forgets logs with none for
    /// `keep_ns` (then the most recent [`MAX_LOGS`]).
    pub fn record_log_secrets(&mut self, sightings: &[Sighting], now_ns: u64, keep_ns: u64) {
        for sighting in sightings {
            let seen = self
                .log_secrets
                .entry(sighting.path.clone())
                .or_insert(LogSecrets {
                    first_ns: now_ns,
                    ..LogSecrets::default()
                });
            seen.lines += 1;
            seen.kinds.insert(sighting.kind);
            seen.last_ns = now_ns;
            seen.last_offset = sighting.offset;
        }
        self.log_secrets
            .retain(|_, seen| now_ns.saturating_sub(seen.last_ns) <= keep_ns);
        while self.log_secrets.len() > MAX_LOGS {
            let oldest = self.log_secrets.iter().min_by_key(|(_, seen)| seen.last_ns);
            let oldest = oldest.map(|(path, _)| path.clone()).expect("not empty");
            self.log_secrets.remove(&oldest);
        }
    }

    /// Whether a memory sample is due at `now_ns`.
    pub fn memory_due(&self, now_ns: u64, every_ns: u64) -> bool {
        self.memory
            .back()
            // A tenth early: ticks are a second apart, give or take.
            .is_none_or(|last| now_ns.saturating_sub(last.ts_ns) >= every_ns - every_ns / 10)
    }

    /// (time, value) over the last `window_ns`, oldest first.
    pub fn series(&self, window_ns: u64, now_ns: u64, value: impl Fn(&Sample) -> f64) -> Vec<(u64, f64)> {
        self.samples
            .iter()
            .filter(|s| now_ns.saturating_sub(s.ts_ns) <= window_ns)
            .map(|s| (s.ts_ns, value(s)))
            .collect()
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }
}

/// Histories of every watched process.
pub type Histories = HashMap<u32, History>;

/// Drops the oldest entries, those more than `keep_ns` before `now`.
fn forget_older<T>(entries: &mut VecDeque<T>, ts_ns: impl Fn(&T) -> u64, now: u64, keep_ns: u64) {
    while entries
        .front()
        .is_some_and(|e| now.saturating_sub(ts_ns(e)) > keep_ns)
    {
        entries.pop_front();
    }
}
