//! Secrets a watched process writes to its logs (`secret_in_log`). Once a
//! second the daemon reads what was appended to each file the process holds
//! open for appending (how Python's and oslo.log's file handlers open logs;
//! also fds 1 and 2 when they are files) and looks for auth tokens in it.
//! A file is read from where it ended when first seen: what was there
//! before is not scanned. Only where a secret is (file, byte offset of its
//! line) and its kind are kept: the text is dropped as soon as it is scanned.
//! The other two sources: what a process writes to its log streams (pipes
//! and sockets another process keeps the text of: `streams`) and what it
//! sends to the systemd journal (`journal`).

pub mod journal;
pub mod patterns;
pub mod streams;

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    fs::File,
    os::unix::fs::{FileExt as _, MetadataExt as _},
};

pub use self::patterns::SecretKind;

/// A line waits for its newline to be scanned whole, unless it is already
/// longer than this: then it is scanned as it is.
const MAX_LINE: usize = 64 * 1024;
/// New fds whose open flags one scan reads from /proc.
const LOOKUPS_PER_SCAN: usize = 512;
const O_ACCMODE: u32 = 0o3;
const O_APPEND: u32 = 0o2000;

/// One line of a log with a secret in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub path: String,
    /// Byte offset of the line in the file.
    pub offset: u64,
    pub kind: SecretKind,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub sightings: Vec<Sighting>,
    pub bytes_scanned: u64,
    /// Appended beyond the per-second budget, jumped over unread.
    pub bytes_skipped: u64,
}

/// An appended-to file, read on from where the last read ended.
struct Tail {
    file: File,
    path: String,
    offset: u64,
    /// The end of the last line read, without its newline yet.
    partial: Vec<u8>,
}

/// What an fd of the process was found to be.
struct KnownFd {
    /// Its birth time: a log reopened on the same fd number (rotation) is a
    /// new birth, looked at again.
    born: u64,
    /// The (device, inode) of the log it is, if one.
    log: Option<(u64, u64)>,
    /// The last scan that saw it open.
    seen: u64,
}

/// The logs of one process.
#[derive(Default)]
pub struct LogTails {
    fds: HashMap<u32, KnownFd>,
    /// (device, inode) -> its tail: a file open on several fds is read once.
    tails: HashMap<(u64, u64), Tail>,
    scans: u64,
}

impl LogTails {
    /// Reads what was appended to the logs among `files` ((fd, birth time)
    /// of the process's regular files), at most `left` bytes, which it
    /// lowers by what it read.
    pub fn scan(&mut self, pid: u32, files: impl Iterator<Item = (u32, u64)>, left: &mut u64) -> Scan {
        self.scans += 1;
        let mut looked_up = 0;
        for (fd, born) in files {
            if let Some(known) = self.fds.get_mut(&fd).filter(|known| known.born == born) {
                known.seen = self.scans;
                continue;
            }
            // New fds are looked up in /proc a few hundred per second (a
            // process with 100k files open stalls nothing); one that /proc
            // could not tell about is asked again next time.
            if looked_up == LOOKUPS_PER_SCAN {
                continue;
            }
            looked_up += 1;
            if let Ok(log) = self.open_log(pid, fd) {
                let seen = self.scans;
                self.fds.insert(fd, KnownFd { born, log, seen });
            }
        }
        let scans = self.scans;
        self.fds.retain(|_, known| known.seen == scans);
        let mut scan = Scan::default();
        for tail in self.tails.values_mut() {
            tail.read_new(left, &mut scan);
        }
        // After their last read: the lines a log got before the process
        // closed it (rotation, exit) are read too.
        let live: HashSet<(u64, u64)> = self.fds.values().filter_map(|known| known.log).collect();
        self.tails.retain(|key, _| live.contains(key));
        scan
    }

    /// The (device, inode) of `fd` if it is a log, opening its tail at the
    /// end of the file; None for other files; an error when /proc could not
    /// tell (the fd is gone, or its entries are unreadable).
    fn open_log(&mut self, pid: u32, fd: u32) -> Result<Option<(u64, u64)>, ()> {
        let flags = fd_flags(pid, fd).ok_or(())?;
        let writes = flags & O_ACCMODE != 0;
        if !writes || (flags & O_APPEND == 0 && fd != 1 && fd != 2) {
            return Ok(None);
        }
        let link = format!("/proc/{pid}/fd/{fd}");
        let file = File::open(&link).map_err(drop)?;
        let meta = file.metadata().map_err(drop)?;
        if !meta.is_file() {
            return Ok(None);
        }
        let key = (meta.dev(), meta.ino());
        if let Entry::Vacant(entry) = self.tails.entry(key) {
            let path = std::fs::read_link(&link).map_err(drop)?;
            entry.insert(Tail {
                file,
                path: path.to_string_lossy().into_owned(),
                offset: meta.len(),
                partial: Vec::new(),
            });
        }
        Ok(Some(key))
    }
}

impl Tail {
    fn read_new(&mut self, left: &mut u64, scan: &mut Scan) {
        let Ok(size) = self.file.metadata().map(|m| m.len()) else {
            return;
        };
        if size < self.offset {
            // Truncated in place (logrotate's copytruncate): start again.
            self.offset = 0;
            self.partial.clear();
        }
        let mut pending = size - self.offset;
        if pending > *left {
            scan.bytes_skipped += pending - *left;
            self.offset = size - *left;
            self.partial.clear();
            pending = *left;
        }
        if pending == 0 {
            return;
        }
        let mut text = std::mem::take(&mut self.partial);
        let start = self.offset - text.len() as u64;
        let old = text.len();
        text.resize(old + pending as usize, 0);
        let read = match self.file.read_at(&mut text[old..], self.offset) {
            Ok(read) => read,
            Err(_) => {
                // Tried again next time, with the line read so far.
                text.truncate(old);
                self.partial = text;
                return;
            }
        };
        text.truncate(old + read);
        self.offset += read as u64;
        *left -= read as u64;
        scan.bytes_scanned += read as u64;
        // Whole lines now; the rest waits for its end (a token is not split),
        // unless it is already longer than any log line should be.
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |end| end + 1);
        let whole = if text.len() - whole > MAX_LINE {
            text.len()
        } else {
            whole
        };
        for (at, kind) in patterns::find(&text[..whole]) {
            scan.sightings.push(Sighting {
                path: self.path.clone(),
                offset: start + at as u64,
                kind,
            });
        }
        self.partial = text.split_off(whole);
    }
}

/// Whether a datagram socket listens at `path` (a connect to it works).
pub fn datagram_listens(path: impl AsRef<std::path::Path>) -> bool {
    std::os::unix::net::UnixDatagram::unbound().is_ok_and(|socket| socket.connect(path).is_ok())
}

/// The open flags of `fd` (`flags:` in /proc/PID/fdinfo/FD, octal).
fn fd_flags(pid: u32, fd: u32) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|line| line.strip_prefix("flags:"))?;
    u32::from_str_radix(flags.trim(), 8).ok()
}

#[cfg(test)]
mod tests;
