//! SOCK_FDS from user space: the TCP socket fds the probes did not see
//! created (seeded so that their HTTP calls are captured), the entries no
//! watched fd holds any more (collected), and the log streams (marked: the
//! probes then ship every write to them, `stream_flags::LOG`, for the
//! secret scan in `logscan::streams`).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use monitor_common::{SOCKADDR_UN_LEN, StreamState, config_flags, data_flags, stream_flags};
use tracing::debug;

use super::{BPF_NOEXIST, Probes};

/// How often SOCK_FDS is walked for entries no watched fd holds. Each key
/// costs a bpf() call: with 10k sockets watched, a walk every second was
/// most of an idle daemon's CPU. Stale entries cost only map space, and a
/// socket that takes a stale entry's number resets it (connect, accept).
const SOCK_FDS_WALK_INTERVAL: Duration = Duration::from_secs(5);

/// The syslog paths in SYSLOG_PATHS, where a watched process's connect()
/// makes a log stream in the kernel.
pub(super) struct SyslogMarks {
    map: BpfHashMap<MapData, [u8; SOCKADDR_UN_LEN], u32>,
    /// What the map holds: key -> index in the configured paths.
    keys: Vec<([u8; SOCKADDR_UN_LEN], u32)>,
    /// Since when every path's connects are marked (boot ns).
    since: Option<u64>,
}

impl SyslogMarks {
    pub(super) fn new(map: BpfHashMap<MapData, [u8; SOCKADDR_UN_LEN], u32>) -> SyslogMarks {
        SyslogMarks {
            map,
            keys: Vec::new(),
            since: None,
        }
    }
}

impl Probes {
    /// Lets the HTTP capture see the TCP socket fds `(pid, fd, inode)` the
    /// probes did not see being created (opened before the daemon watched
    /// the process); called with all of them at every housekeeping. Each
    /// socket is offered to the map once (offering 10k of them every second
    /// cost ~0.5 % of a core), and an fd the probes have keeps its stream
    /// state: overwriting it (as each housekeeping did) in the middle of a
    /// call made its answer look like more of the request, and the call lost
    /// its status. One the map refuses is counted once in `kernel.tracking_full`.
    pub fn seed_socket_fds(&mut self, fds: impl IntoIterator<Item = (u32, u32, u64)>) {
        let wanted: std::collections::HashMap<u64, u64> = (fds.into_iter())
            .map(|(pid, fd, inode)| (((pid as u64) << 32) | fd as u64, inode))
            .collect();
        self.seeded_socket_fds
            .retain(|key, inode| wanted.get(key) == Some(inode));
        self.refused_socket_fds.keep_only(|key| wanted.contains_key(key));
        for (&key, &inode) in &wanted {
            if inode != 0 && self.seeded_socket_fds.contains_key(&key) {
                continue;
            }
            let state = StreamState {
                last_dir: data_flags::READ,
                fd: key as u32,
                ..StreamState::default()
            };
            match self.sock_fds.insert(key, state, BPF_NOEXIST) {
                Ok(()) => {}
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    if self.refused_socket_fds.note(key) {
                        debug!(pid = key >> 32, fd = key as u32, error = %e, "SOCK_FDS refused a socket fd");
                    }
                    continue;
                }
            }
            self.seeded_socket_fds.insert(key, inode);
        }
    }

    /// Forgets socket fds `held` says are gone (closed by close_range,
    /// exec, exit: paths the probes do not clean up after), once they have
    /// been gone for the grace period (gc.rs). Walks the map at most every
    /// [`SOCK_FDS_WALK_INTERVAL`]: a walk is a bpf() per key.
    pub fn collect_socket_fds(&mut self, held: impl Fn(u32, u32) -> bool) -> usize {
        let now = Instant::now();
        if self
            .sock_fds_walked
            .is_some_and(|at| now.duration_since(at) < SOCK_FDS_WALK_INTERVAL)
        {
            return 0;
        }
        self.sock_fds_walked = Some(now);
        let unheld = self
            .sock_fds
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !held((key >> 32) as u32, *key as u32) && !self.log_streams.contains_key(key));
        let stale = self.suspects.sock_fds.confirm(unheld, now);
        for key in &stale {
            let _ = self.sock_fds.remove(key);
        }
        stale.len()
    }

    /// Makes the log streams exactly `wanted` ((tgid << 32 | fd) -> the
    /// fd's birth): a new one, or one whose fd was born again, is (re)marked;
    /// one no longer wanted is unmarked unless the fd is something else now
    /// (a TCP socket the probes track: they replaced its state).
    pub fn mark_log_streams(&mut self, wanted: HashMap<u64, u64>) {
        for (key, born) in &wanted {
            if self.log_streams.get(key) == Some(born) {
                continue;
            }
            let state = StreamState {
                flags: stream_flags::LOG,
                last_dir: data_flags::READ,
                writes: 0,
                fd: *key as u32,
            };
            if let Err(e) = self.sock_fds.insert(key, state, 0) {
                debug!(pid = key >> 32, fd = *key as u32, error = %e, "SOCK_FDS refused a log stream");
                continue;
            }
            self.log_streams.insert(*key, *born);
        }
        let gone: Vec<u64> = (self.log_streams.keys())
            .filter(|key| !wanted.contains_key(key))
            .copied()
            .collect();
        for key in gone {
            self.log_streams.remove(&key);
            let still_log = self
                .sock_fds
                .get(&key, 0)
                .is_ok_and(|state| state.flags & stream_flags::LOG != 0);
            if still_log {
                let _ = self.sock_fds.remove(&key);
            }
        }
    }

    /// Puts the syslog paths (by their index in `paths`) where a watched
    /// process's connect() makes a log stream in the kernel; `paths` empty:
    /// none. A path that leads into journald's directory (/dev/log on a
    /// systemd host) is left out: the journal is read instead. Checked each
    /// time (a path's target changes when a syslog daemon starts or stops);
    /// the map is written only when what it should hold changed.
    pub fn set_syslog_paths(&mut self, paths: &[String]) {
        let journald: Vec<bool> = (paths.iter())
            .map(|path| crate::logscan::streams::is_journald_path(path))
            .collect();
        let wanted: Vec<([u8; SOCKADDR_UN_LEN], u32)> = (paths.iter().enumerate())
            .filter(|(index, _)| !journald[*index])
            .filter_map(|(index, path)| Some((syslog_key_of(path)?, index as u32)))
            .collect();
        let changed = wanted != self.syslog.keys;
        if changed {
            for (key, _) in &self.syslog.keys {
                let _ = self.syslog.map.remove(key);
            }
            self.syslog.keys.clear();
            for (key, index) in wanted {
                match self.syslog.map.insert(key, index, 0) {
                    Ok(()) => self.syslog.keys.push((key, index)),
                    Err(e) => debug!(index, error = %e, "SYSLOG_PATHS refused a path"),
                }
            }
        }
        let inet_length = (self.syslog.keys.iter()).any(|(key, _)| address_may_look_inet(key));
        self.set_flag(config_flags::SYSLOG_CONNECTS, !self.syslog.keys.is_empty());
        self.set_flag(config_flags::SYSLOG_INET_LENGTHS, inet_length);
        // Every path not journald's is marked at connect (none abstract, no
        // key refused, connect() hooked; journald's are read through the
        // journal): from now on, sockets a process makes need no dump to be
        // told (`syslog_marks_since`).
        let in_map = |index: usize| self.syslog.keys.iter().any(|(_, i)| *i as usize == index);
        let connect_hooked = (self.hooks.iter()).any(|h| h.program == "connect_exit" && h.attached);
        let all_marked = connect_hooked && (0..paths.len()).all(|index| journald[index] || in_map(index));
        if changed || !all_marked {
            self.syslog.since = None;
        }
        if all_marked && self.syslog.since.is_none() {
            self.syslog.since = Some(crate::time::boot_ns());
        }
    }

    /// Since when (boot ns) a watched process's connect() to any of the
    /// syslog paths is marked by the probes; None when one of them cannot be
    /// (an abstract address, a refused key, connect() not hooked).
    pub fn syslog_marks_since(&self) -> Option<u64> {
        self.syslog.since
    }

    /// The index of the syslog path the probes saw `fd` of `pid` connected
    /// to, if they marked it.
    pub fn syslog_mark(&self, pid: u32, fd: u32) -> Option<usize> {
        let state = self.sock_fds.get(&(((pid as u64) << 32) | fd as u64), 0).ok()?;
        (state.flags & stream_flags::SYSLOG != 0).then_some(state.writes as usize)
    }

    /// Sets how many bytes of log streams each CPU may ship per second.
    pub fn set_log_budget(&mut self, bytes_per_cpu_s: u32) {
        if self.kernel.log_bytes_per_cpu_s != bytes_per_cpu_s {
            self.kernel.log_bytes_per_cpu_s = bytes_per_cpu_s;
            self.write_config();
        }
    }
}

/// The SYSLOG_PATHS key of a configured path; None for an abstract address
/// ('@', left to the once-a-second look) or one too long.
fn syslog_key_of(path: &str) -> Option<[u8; SOCKADDR_UN_LEN]> {
    path.starts_with('/')
        .then(|| monitor_common::syslog_key(path.as_bytes()))
        .flatten()
}

/// Whether a connect() to the path in `key` may pass an address as long as
/// an IPv4 or IPv6 one (16 or 28 bytes), which the probes otherwise skip: a
/// unix address is the family (2 bytes) and the path, with or without its
/// NUL, or the whole struct.
fn address_may_look_inet(key: &[u8; SOCKADDR_UN_LEN]) -> bool {
    let len = 2 + key[2..]
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(SOCKADDR_UN_LEN - 2);
    [len, len + 1].iter().any(|len| *len == 16 || *len == 28)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_whose_address_could_be_an_inet_ones_length_need_every_connect_read() {
        let key = |path: &str| monitor_common::syslog_key(path.as_bytes()).unwrap();
        assert!(!address_may_look_inet(&key("/dev/log")));
        assert!(
            address_may_look_inet(&key("/run/syslog.s")),
            "13 bytes and a NUL: 16"
        );
        assert!(address_may_look_inet(&key("/run/syslog.so")), "14 bytes: 16");
        assert!(!address_may_look_inet(&key("/run/syslog.soc")));
        assert!(
            address_may_look_inet(&key("/var/run/rsyslog/syslog.so")),
            "26 bytes: 28"
        );
        assert!(
            address_may_look_inet(&key("/var/run/rsyslog/syslog.s")),
            "25 and a NUL: 28"
        );
        assert!(!address_may_look_inet(&key("/var/run/rsyslog/syslog.soc")));
        assert_eq!(monitor_common::syslog_key(b""), None);
        assert_eq!(
            monitor_common::syslog_key(&[b'a'; 108]),
            None,
            "no room for the NUL"
        );
        assert!(monitor_common::syslog_key(&[b'a'; 107]).is_some());
    }
}
