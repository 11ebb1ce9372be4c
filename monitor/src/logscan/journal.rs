//! The systemd journal as one more log of each watched process. A service's
//! stdout and stderr, and Python's journal and syslog handlers, go to
//! journald, not to a file the process holds: the daemon follows the
//! journal with `journalctl --follow`, filtered to the watched pids, and
//! looks for auth tokens in each entry's MESSAGE. As with files, only where
//! (the pid, the time) and the kind are kept, never the text; entries from
//! before the daemon started are not read.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Instant,
};

use serde_json::Value;
use tracing::{debug, warn};

use super::{Sighting, patterns};

/// The `file` a journal sighting names.
pub const JOURNAL: &str = "journal";
/// journald's native socket: where it runs, it listens there (the file
/// stays behind when it stops).
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";
/// A `journalctl` that could not start or ended, or a journald that did
/// not listen, is tried again this late.
const RETRY_NS: u64 = 10_000_000_000;
/// A new set of watched pids restarts `journalctl` at most this often (a
/// process that forks often would restart it each time): it resumes after
/// the last entry read, so waiting loses nothing.
const RESTART_NS: u64 = 5_000_000_000;

/// Whether the journal is being followed, for `leakmon status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct JournalStatus {
    /// A `journalctl` runs now.
    pub following: bool,
    /// The watched pids it filters on.
    pub pids: usize,
    /// `journalctl`s started since the daemon started (one per new set of
    /// watched pids, at most every 5 s, and per retry).
    pub starts: u64,
}

/// What the reader found since the last [`Journal::poll`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// (pid, sighting) for each entry of a watched process with a secret.
    pub sightings: Vec<(u32, Sighting)>,
    pub bytes_scanned: u64,
    /// Beyond the per-second budget: not looked at.
    pub bytes_skipped: u64,
}

/// Shared with the reader thread.
#[derive(Default)]
struct Shared {
    found: Found,
    /// The last entry read: a new `journalctl` resumes after it.
    cursor: Option<String>,
}

/// The `journalctl` that follows the journal for the watched pids.
pub struct Journal {
    child: Option<(Child, JoinHandle<()>)>,
    /// The pids the running `journalctl` filters on, sorted.
    pids: Vec<u32>,
    shared: Arc<Mutex<Shared>>,
    started_ns: u64,
    retry_at_ns: u64,
    /// Whether "journal not followed" was said (once).
    said_unavailable: bool,
    starts: u64,
    /// `--since` of the first `journalctl`: the daemon's start (µs since
    /// the epoch); later ones resume after the last entry read.
    since_us: u128,
}

impl Default for Journal {
    fn default() -> Journal {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        Journal {
            child: None,
            pids: Vec::new(),
            shared: Default::default(),
            started_ns: 0,
            retry_at_ns: 0,
            said_unavailable: false,
            starts: 0,
            since_us: now.map_or(0, |d| d.as_micros()),
        }
    }
}

impl Journal {
    pub fn status(&self) -> JournalStatus {
        JournalStatus {
            following: self.child.is_some(),
            pids: self.pids.len(),
            starts: self.starts,
        }
    }

    /// Keeps a `journalctl` following `pids` (sorted) and takes what it
    /// found; `budget_per_s` bounds the MESSAGE bytes scanned per second.
    pub fn poll(&mut self, pids: &[u32], now_ns: u64, budget_per_s: u64) -> Found {
        let ended = (self.child.as_mut()).is_some_and(|(child, _)| !matches!(child.try_wait(), Ok(None)));
        if ended {
            self.stop();
            self.retry_at_ns = now_ns + RETRY_NS;
        }
        let restart_due = now_ns >= self.started_ns + RESTART_NS;
        if pids.is_empty() || (pids != self.pids.as_slice() && restart_due) {
            self.stop();
        }
        let due = self.child.is_none() && !pids.is_empty() && now_ns >= self.retry_at_ns;
        if due && !journald_listens() {
            // A host without journald is asked again after the retry delay.
            self.retry_at_ns = now_ns + RETRY_NS;
        } else if due {
            self.started_ns = now_ns;
            self.starts += 1;
            match self.start(pids, budget_per_s) {
                Ok(()) => debug!(pids = pids.len(), "following the journal"),
                Err(e) => {
                    self.retry_at_ns = now_ns + RETRY_NS;
                    let error = format!("{e:#}");
                    if std::mem::replace(&mut self.said_unavailable, true) {
                        debug!(%error, "journal not followed");
                    } else {
                        warn!(%error, "journal not followed: secret_in_log reads log files only");
                    }
                }
            }
        }
        std::mem::take(&mut self.shared.lock().expect("journal state").found)
    }

    fn start(&mut self, pids: &[u32], budget_per_s: u64) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let mut command = Command::new("journalctl");
        command.args([
            "--follow",
            "--output=json",
            "--output-fields=MESSAGE,_PID",
            "--no-pager",
        ]);
        match &self.shared.lock().expect("journal state").cursor {
            Some(cursor) => command.arg(format!("--after-cursor={cursor}")),
            None => command.arg(format!(
                "--since=@{}.{:06}",
                self.since_us / 1_000_000,
                self.since_us % 1_000_000
            )),
        };
        command.args(pids.iter().map(|pid| format!("_PID={pid}")));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe, and the closure touches nothing
        // else between fork and exec. It ends journalctl with the daemon even
        // when the daemon is killed (the runtime's one thread is the main one).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting journalctl")?;
        let stdout = child.stdout.take().context("journalctl's stdout")?;
        let shared = self.shared.clone();
        let filter = pids.to_vec();
        let reader = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || read_entries(stdout, &filter, &shared, budget_per_s));
        let reader = match reader {
            Ok(reader) => reader,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e).context("starting the journal reader");
            }
        };
        self.child = Some((child, reader));
        self.pids = pids.to_vec();
        Ok(())
    }

    /// Ends the `journalctl`, and its reader once that has read what was
    /// left in the pipe: the next one resumes after the last entry read,
    /// not an entry this one is still to read.
    fn stop(&mut self) {
        if let Some((mut child, reader)) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            self.pids.clear();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn journald_listens() -> bool {
    super::datagram_listens(JOURNALD_SOCKET)
}

/// Reads `journalctl`'s JSON lines until it ends.
fn read_entries(stdout: impl std::io::Read, pids: &[u32], shared: &Mutex<Shared>, budget_per_s: u64) {
    let mut budget = Budget::new(budget_per_s);
    let mut malformed = 0u64;
    for line in BufReader::new(stdout).split(b'\n') {
        let Ok(line) = line else { break };
        let Ok(entry) = serde_json::from_slice::<Value>(&line) else {
            malformed += 1;
            continue;
        };
        let pid = entry["_PID"].as_str().and_then(|p| p.parse::<u32>().ok());
        let message = message_bytes(&entry["MESSAGE"]);
        let mut state = shared.lock().expect("journal state");
        if let Some(cursor) = entry["__CURSOR"].as_str() {
            state.cursor = Some(cursor.to_string());
        }
        let (Some(pid), Some(message)) = (pid, message) else {
            continue;
        };
        if !pids.contains(&pid) {
            continue;
        }
        if !budget.take(message.len() as u64) {
            state.found.bytes_skipped += message.len() as u64;
            continue;
        }
        state.found.bytes_scanned += message.len() as u64;
        for (_, kind) in patterns::find(&message) {
            let path = JOURNAL.to_string();
            state.found.sightings.push((
                pid,
                Sighting {
                    path,
                    offset: 0,
                    kind,
                },
            ));
        }
    }
    // The last line of a journalctl that was ended is cut short.
    if malformed > 0 {
        debug!(malformed, "journalctl lines that were not JSON, skipped");
    }
}

/// MESSAGE as journalctl's JSON gives it: a string, or an array of bytes
/// when it is not UTF-8 (an array of those when the entry has several).
fn message_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::String(text) => Some(text.clone().into_bytes()),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            Some(items.iter().filter_map(Value::as_u64).map(|b| b as u8).collect())
        }
        Value::Array(items) => {
            let parts: Vec<Vec<u8>> = items.iter().filter_map(message_bytes).collect();
            Some(parts.join(&b'\n'))
        }
        _ => None,
    }
}

/// Bytes that may be scanned in the current second.
struct Budget {
    per_s: u64,
    left: u64,
    second: Instant,
}

impl Budget {
    fn new(per_s: u64) -> Budget {
        Budget {
            per_s,
            left: per_s,
            second: Instant::now(),
        }
    }

    fn take(&mut self, bytes: u64) -> bool {
        if self.second.elapsed().as_secs() >= 1 {
            self.second = Instant::now();
            self.left = self.per_s;
        }
        let fits = bytes <= self.left;
        if fits {
            self.left -= bytes;
        }
        fits
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_message_is_text_or_bytes() {
        assert_eq!(message_bytes(&json!("a line")).unwrap(), b"a line");
        assert_eq!(message_bytes(&json!([104, 105, 255])).unwrap(), [104, 105, 255]);
        assert_eq!(message_bytes(&json!(["a", [98]])).unwrap(), b"a\nb");
        assert_eq!(message_bytes(&Value::Null), None);
    }

    /// journalctl's output: entries of a watched and an unwatched pid, one
    /// not JSON (the cut last line of an ended journalctl), one without a
    /// token, one beyond the budget.
    #[test]
    fn only_watched_entries_within_the_budget_are_scanned_and_the_cursor_follows() {
        let token = "X-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential".to_string();
        let entry = |pid: u32, cursor: &str, message: &str| {
            json!({"__CURSOR": cursor, "_PID": pid.to_string(), "MESSAGE": message}).to_string()
        };
        let lines = [
            entry(7, "c1", &token),
            entry(8, "c2", &token),
            "{\"__CURSOR\": \"c3\", \"MESS".to_string(),
            entry(7, "c4", "GET /v1/nodes 200"),
            entry(7, "c5", &"x".repeat(200)),
            entry(7, "c6", &token),
        ];
        let output = lines.join("\n") + "\n";
        let shared = Mutex::new(Shared::default());
        read_entries(output.as_bytes(), &[7], &shared, 100);
        let state = shared.into_inner().unwrap();
        assert_eq!(state.cursor.as_deref(), Some("c6"));
        let pids: Vec<u32> = state.found.sightings.iter().map(|(pid, _)| *pid).collect();
        assert_eq!(pids, [7], "pid 8 is not watched; c6 is past the budget");
        assert_eq!(state.found.sightings[0].1.path, JOURNAL);
        assert_eq!(state.found.sightings[0].1.kind, patterns::SecretKind::AuthHeader);
        let scanned = (token.len() + "GET /v1/nodes 200".len()) as u64;
        assert_eq!(state.found.bytes_scanned, scanned);
        // 100 bytes a second: the first token and the plain line fit, not the rest.
        assert_eq!(state.found.bytes_skipped, 200 + token.len() as u64);
    }

    #[test]
    fn the_budget_refuses_what_exceeds_the_second() {
        let mut budget = Budget::new(10);
        assert!(budget.take(6));
        assert!(!budget.take(6));
        assert!(budget.take(4));
        assert!(!budget.take(1));
    }
}
