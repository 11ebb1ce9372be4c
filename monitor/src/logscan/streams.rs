//! Log streams: where a watched process writes its log for another process
//! to keep. stdout and stderr that are a pipe or a socket (a container
//! runtime's shim, supervisord, a shell pipeline read them), and a socket
//! to a syslog daemon. The text is written by the collector, so there is no
//! file of the process's to read: the probes ship each write to a stream
//! the daemon marks (`stream_flags::LOG`), and it is scanned here as it
//! arrives. Only where a secret is (the stream, the offset of its line in
//! what the process wrote there) leaves this module, as for files.

use std::collections::HashMap;

use monitor_common::{DATA_CAPTURE, LOG_CHUNKS, syscalls as nr};

use super::{MAX_LINE, Sighting, patterns};
use crate::fdkind::FdKind;

/// Sightings kept between two detector ticks (a second): past this many a
/// line is still counted in `lines_over`, not kept.
const MAX_PENDING: usize = 1024;

/// What an fd of a watched process was found to be, for its birth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    pub born: u64,
    /// The stream's name, when the fd is one.
    pub name: Option<String>,
}

/// The log streams of one process and what was written to them.
#[derive(Debug, Default)]
pub struct Streams {
    /// fd -> what it was found to be (any fd looked at, stream or not).
    pub known: HashMap<u32, Classified>,
    tails: HashMap<u32, StreamTail>,
    sightings: Vec<Sighting>,
    /// Lines with a secret beyond [`MAX_PENDING`] in one tick.
    lines_over: u64,
    /// Bytes scanned since the last [`Streams::take`].
    bytes_scanned: u64,
}

#[derive(Debug)]
struct StreamTail {
    name: String,
    /// Bytes the process wrote to the stream since it was marked.
    offset: u64,
    /// The end of the last write, without its newline yet.
    partial: Vec<u8>,
    /// A datagram socket (syslog): each write is a whole message.
    datagram: bool,
}

/// The fds worth a look: stdout and stderr when they are pipes or unix
/// sockets; any other unix socket when syslog paths are configured.
pub fn is_candidate(fd: u32, kind: FdKind, syslog: bool) -> bool {
    match kind {
        FdKind::Pipe => fd == 1 || fd == 2,
        FdKind::SocketUnix => fd == 1 || fd == 2 || syslog,
        _ => false,
    }
}

/// Whether the probes' marks at connect settle what the unix socket `fd`
/// (made by `syscall` at `born_ns`) is, without a sock_diag dump: the
/// process made it itself (socket, socketpair, accept) after the probes
/// began marking connects to the syslog paths (`marks_since`), so a connect
/// of it to one was marked. stdout and stderr are looked at whatever they
/// are (a socket to a collector is a stream too), and so are the sockets a
/// process inherited or received.
pub fn settled_by_connect_marks(fd: u32, syscall: u32, born_ns: u64, marks_since: Option<u64>) -> bool {
    let made_here = matches!(syscall, nr::SOCKET | nr::SOCKETPAIR | nr::ACCEPT | nr::ACCEPT4);
    fd > 2 && made_here && marks_since.is_some_and(|since| born_ns > since)
}

/// What the socket at the other end of a watched unix socket tells.
pub struct UnixPeer {
    /// The name the peer is bound to (empty for an unnamed one).
    pub name: String,
    /// The watched socket is a datagram one (each write a message).
    pub datagram: bool,
}

/// journald's sockets (stdout streams, native entries, its /dev/log): what
/// arrives there is read from the journal instead.
pub const JOURNALD_DIR: &str = "/run/systemd/journal/";

/// Whether `path` is journald's socket or leads to it (on a systemd host
/// /dev/log is a link into [`JOURNALD_DIR`]).
pub fn is_journald_path(path: &str) -> bool {
    let target = std::fs::canonicalize(path).map(|p| p.to_string_lossy().into_owned());
    target.as_deref().unwrap_or(path).starts_with(JOURNALD_DIR)
}

/// The stream name of a socket connected to the syslog path `path`.
pub fn syslog_name(path: &str) -> String {
    format!("syslog ({path})")
}

/// The stream name of `fd` given what its /proc link says (`pipe:[N]`, a
/// FIFO's path, `socket:[N]`) and the peer of a socket, or None when it is
/// no log stream.
pub fn name_of(fd: u32, link: &str, peer: Option<&UnixPeer>, syslog_paths: &[String]) -> Option<String> {
    let std = match fd {
        1 => Some("stdout"),
        2 => Some("stderr"),
        _ => None,
    };
    // A pipe (`pipe:[N]`), or a FIFO opened by its path.
    if !link.starts_with("socket:") {
        return std.map(|std| format!("{std} ({link})"));
    }
    // No peer found: another network namespace's socket, or one the dump
    // missed; on stdout or stderr it is still where the log goes.
    let peer_name = peer.map_or("", |p| p.name.as_str());
    if peer_name.starts_with(JOURNALD_DIR) {
        return None;
    }
    if !peer_name.is_empty() && syslog_paths.iter().any(|p| p == peer_name) {
        return Some(syslog_name(peer_name));
    }
    let to = if peer_name.is_empty() { link } else { peer_name };
    std.map(|std| format!("{std} (socket to {to})"))
}

impl Streams {
    /// Records what `fd` (born at `born`) was found to be; a stream starts
    /// being read from here on.
    pub fn classify(&mut self, fd: u32, born: u64, name: Option<String>, datagram: bool) {
        match &name {
            Some(name) => {
                let tail = StreamTail {
                    name: name.clone(),
                    offset: 0,
                    partial: Vec::new(),
                    datagram,
                };
                self.tails.insert(fd, tail);
            }
            None => {
                self.tails.remove(&fd);
            }
        }
        self.known.insert(fd, Classified { born, name });
    }

    /// `fd` (born at `born`) was connected to the syslog path `path`, as
    /// the probes saw (they marked it then: `stream_flags::SYSLOG`). Named
    /// now, before the once-a-second look would, unless it already was: its
    /// first message may be in this record. A syslog socket is read as
    /// datagrams (glibc sends each message whole).
    pub fn connected_to_syslog(&mut self, fd: u32, born: u64, path: &str) {
        if self.tails.contains_key(&fd) {
            return;
        }
        self.classify(fd, born, Some(syslog_name(path)), true);
    }

    /// Forgets the fds `keep` says are gone or changed.
    pub fn retain(&mut self, keep: impl Fn(u32, u64) -> bool) {
        self.known.retain(|fd, c| keep(*fd, c.born));
        let known = &self.known;
        self.tails
            .retain(|fd, _| known.get(fd).is_some_and(|c| c.name.is_some()));
    }

    /// The fds that are streams, with their births.
    pub fn marked(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        (self.known.iter())
            .filter(|(_, c)| c.name.is_some())
            .map(|(fd, c)| (*fd, c.born))
    }

    /// A shipped piece of a write to `fd`: `bytes` start `start` bytes into
    /// the write, which had `left` bytes from there on (more than `bytes`
    /// when the probes cut it).
    pub fn write(&mut self, fd: u32, start: u64, left: u32, bytes: &[u8]) {
        // A copy of a stream (dup) the daemon has not named yet.
        let tail = self.tails.entry(fd).or_insert_with(|| StreamTail {
            name: format!("fd {fd} (a copy of a log stream)"),
            offset: 0,
            partial: Vec::new(),
            datagram: false,
        });
        if start == 0 && tail.datagram {
            tail.partial.clear();
        }
        let line_start = tail.offset - tail.partial.len() as u64;
        let mut text = std::mem::take(&mut tail.partial);
        text.extend_from_slice(bytes);
        tail.offset += bytes.len() as u64;
        self.bytes_scanned += bytes.len() as u64;
        // The write ends in this piece; or the probes shipped no more of it
        // (past LOG_CHUNKS records): what comes next is another write's.
        let last_piece = left as usize <= bytes.len();
        let cut = !last_piece && start + bytes.len() as u64 >= (LOG_CHUNKS * DATA_CAPTURE) as u64;
        let message_ends = tail.datagram && last_piece;
        // Whole lines now; the rest waits for its end, unless it already is
        // longer than any log line should be, or the write was cut.
        let whole = match text.iter().rposition(|&b| b == b'\n') {
            _ if message_ends || cut => text.len(),
            Some(end) => end + 1,
            None => 0,
        };
        let whole = if text.len() - whole > MAX_LINE {
            text.len()
        } else {
            whole
        };
        for (at, kind) in patterns::find(&text[..whole]) {
            if self.sightings.len() == MAX_PENDING {
                self.lines_over += 1;
                continue;
            }
            self.sightings.push(Sighting {
                path: tail.name.clone(),
                offset: line_start + at as u64,
                kind,
            });
        }
        tail.partial = text.split_off(whole);
    }

    /// The sightings, bytes scanned and lines past [`MAX_PENDING`] since
    /// the last call.
    pub fn take(&mut self) -> (Vec<Sighting>, u64, u64) {
        (
            std::mem::take(&mut self.sightings),
            std::mem::take(&mut self.bytes_scanned),
            std::mem::take(&mut self.lines_over),
        )
    }

    /// The names of the streams found.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.known.values().filter_map(|c| c.name.clone()).collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logscan::SecretKind;

    const LINE: &str = "GET /v1/nodes {'X-Auth-Token': 'FAKE-TOKEN-leakmon-test-not-a-credential'}\n";

    fn peer(name: &str, datagram: bool) -> UnixPeer {
        UnixPeer {
            name: name.into(),
            datagram,
        }
    }

    #[test]
    fn pipes_and_sockets_on_stdout_are_streams_and_journald_is_not() {
        let syslog = vec!["/dev/log".to_string()];
        let name = |fd, link, p: Option<UnixPeer>| name_of(fd, link, p.as_ref(), &syslog);
        assert_eq!(name(1, "pipe:[7]", None).as_deref(), Some("stdout (pipe:[7])"));
        assert_eq!(name(2, "pipe:[7]", None).as_deref(), Some("stderr (pipe:[7])"));
        assert_eq!(name(5, "pipe:[7]", None), None, "a pipe elsewhere is not a log");
        assert_eq!(
            name(2, "/run/shim/err.fifo", None).as_deref(),
            Some("stderr (/run/shim/err.fifo)")
        );
        let stdout = Some(peer("/run/supervisor.sock", false));
        assert_eq!(
            name(1, "socket:[9]", stdout).as_deref(),
            Some("stdout (socket to /run/supervisor.sock)")
        );
        let unnamed = Some(peer("", false));
        assert_eq!(
            name(2, "socket:[9]", unnamed).as_deref(),
            Some("stderr (socket to socket:[9])")
        );
        let journald = Some(peer("/run/systemd/journal/stdout", false));
        assert_eq!(name(1, "socket:[9]", journald), None, "read from the journal");
        let syslogd = Some(peer("/dev/log", true));
        assert_eq!(
            name(7, "socket:[9]", syslogd).as_deref(),
            Some("syslog (/dev/log)")
        );
        assert_eq!(name(7, "socket:[9]", Some(peer("/run/other", true))), None);
        assert_eq!(name(7, "socket:[9]", None), None, "a socket without a known peer");
        assert_eq!(
            name(1, "socket:[9]", None).as_deref(),
            Some("stdout (socket to socket:[9])")
        );
    }

    #[test]
    fn a_line_split_across_writes_is_found_once_at_its_offset() {
        let mut streams = Streams::default();
        streams.classify(1, 10, Some("stdout (pipe:[7])".into()), false);
        streams.write(1, 0, 6, b"hello\n");
        let (head, tail) = LINE.split_at(30);
        streams.write(1, 0, head.len() as u32, head.as_bytes());
        assert!(streams.take().0.is_empty(), "waits for the end of the line");
        streams.write(1, 0, tail.len() as u32, tail.as_bytes());
        let (sightings, scanned, _) = streams.take();
        assert_eq!(scanned, tail.len() as u64);
        assert_eq!(
            sightings,
            vec![Sighting {
                path: "stdout (pipe:[7])".into(),
                offset: 6,
                kind: SecretKind::AuthHeader,
            }]
        );
    }

    #[test]
    fn a_datagram_is_a_whole_message_and_a_cut_write_ends_its_line() {
        let mut streams = Streams::default();
        streams.classify(4, 10, Some("syslog (/dev/log)".into()), true);
        let message = LINE.trim_end();
        streams.write(4, 0, message.len() as u32, message.as_bytes());
        assert_eq!(streams.take().0.len(), 1, "no newline needed");
        streams.classify(1, 10, Some("stdout (pipe:[7])".into()), false);
        // The probes' last piece of a longer write, cut inside the token:
        // what follows is another write's, not this line's end.
        let (head, tail) = LINE.split_at(LINE.find("FAKE").unwrap() + 4);
        let last = (LOG_CHUNKS - 1) * DATA_CAPTURE;
        let mut piece = vec![b'.'; DATA_CAPTURE - head.len()];
        piece.extend_from_slice(head.as_bytes());
        streams.write(1, last as u64, 10_000, &piece);
        streams.write(1, 0, tail.len() as u32, tail.as_bytes());
        assert!(streams.take().0.is_empty(), "no token across a cut");
    }

    #[test]
    fn a_token_across_two_pieces_of_one_write_is_found_once() {
        let mut streams = Streams::default();
        streams.classify(2, 10, Some("stderr (pipe:[7])".into()), true);
        // One 3000-byte write (a datagram, to end the message with it), the
        // token across the two records the probes ship.
        let at = LINE.find("FAKE").unwrap();
        let mut write = vec![b'.'; DATA_CAPTURE - at - 4];
        write.extend_from_slice(LINE.trim_end().as_bytes());
        write.resize(3000, b'.');
        let (first, second) = write.split_at(DATA_CAPTURE);
        streams.write(2, 0, 3000, first);
        streams.write(2, DATA_CAPTURE as u64, (3000 - DATA_CAPTURE) as u32, second);
        let (sightings, scanned, _) = streams.take();
        assert_eq!(scanned, 3000);
        assert_eq!(sightings.len(), 1, "{sightings:?}");
    }

    #[test]
    fn an_unnamed_copy_is_scanned_and_forgotten_fds_stop_being_streams() {
        let mut streams = Streams::default();
        streams.write(9, 0, LINE.len() as u32, LINE.as_bytes());
        let (sightings, _, _) = streams.take();
        assert_eq!(sightings[0].path, "fd 9 (a copy of a log stream)");
        streams.classify(1, 10, Some("stdout (pipe:[7])".into()), false);
        streams.classify(3, 11, None, false);
        assert_eq!(streams.marked().collect::<Vec<_>>(), vec![(1, 10)]);
        streams.retain(|fd, born| fd == 1 && born == 11);
        assert_eq!(streams.marked().count(), 0);
        assert!(streams.known.is_empty());
    }

    #[test]
    fn a_socket_the_probes_saw_connect_to_syslog_is_read_from_its_first_message() {
        let mut streams = Streams::default();
        streams.connected_to_syslog(6, 10, "/dev/log");
        let message = LINE.trim_end();
        streams.write(6, 0, message.len() as u32, message.as_bytes());
        let (sightings, _, _) = streams.take();
        assert_eq!(sightings.len(), 1, "a datagram: no newline needed");
        assert_eq!(sightings[0].path, "syslog (/dev/log)");
        assert_eq!(streams.marked().collect::<Vec<_>>(), vec![(6, 10)], "kept marked");
        // Records marked at connect keep coming until user space marks the
        // stream itself: the stream and its offsets go on.
        streams.connected_to_syslog(6, 10, "/dev/log");
        streams.write(6, 0, message.len() as u32, message.as_bytes());
        assert_eq!(streams.take().0[0].offset, message.len() as u64);
        assert!(is_journald_path("/run/systemd/journal/dev-log"));
        assert!(!is_journald_path("/nonexistent/log"));
    }

    #[test]
    fn only_sockets_made_after_the_marks_began_are_settled_by_them() {
        let since = Some(100);
        assert!(settled_by_connect_marks(5, nr::SOCKET, 101, since));
        assert!(settled_by_connect_marks(5, nr::ACCEPT4, 101, since));
        assert!(
            !settled_by_connect_marks(5, nr::SOCKET, 99, since),
            "before the marks"
        );
        assert!(!settled_by_connect_marks(5, nr::SOCKET, 101, None), "no marks");
        assert!(!settled_by_connect_marks(1, nr::SOCKET, 101, since), "stdout");
        assert!(!settled_by_connect_marks(5, nr::RECVMSG, 101, since), "received");
        assert!(
            !settled_by_connect_marks(5, monitor_common::NO_SYSCALL, 101, since),
            "inherited"
        );
    }

    #[test]
    fn pending_sightings_are_bounded_and_the_rest_counted() {
        let mut streams = Streams::default();
        let many = LINE.repeat(MAX_PENDING + 5);
        streams.classify(1, 10, Some("stdout (pipe:[7])".into()), false);
        streams.write(1, 0, many.len() as u32, many.as_bytes());
        let (sightings, _, over) = streams.take();
        assert_eq!((sightings.len(), over), (MAX_PENDING, 5));
    }
}
