//! Loopback TCP peers for the alert tests, run on threads of the test
//! process (which the daemon does not watch).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
};

#[derive(Clone, Copy, Debug)]
pub enum Peer {
    /// Accept, then close at once (the client's socket goes to CLOSE_WAIT).
    CloseAtOnce,
    /// Accept and hold the connection open.
    Hold,
    /// Read a request and answer it with this status, then close.
    Answer(u16),
    /// Read a request and never answer (a stalled Ironic).
    Silent,
}

pub struct Server {
    pub addr: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Server {
    pub fn start(peer: Peer) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                match peer {
                    Peer::CloseAtOnce => drop(stream),
                    Peer::Hold => keep.lock().unwrap().push(stream),
                    Peer::Answer(status) => {
                        thread::spawn(move || {
                            read_head(&mut stream);
                            let answer = format!(
                                "HTTP/1.1 {status} X\r\nX-Openstack-Request-Id: req-test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            );
                            let _ = stream.write_all(answer.as_bytes());
                        });
                    }
                    Peer::Silent => {
                        read_head(&mut stream);
                        keep.lock().unwrap().push(stream);
                    }
                }
            }
        });
        Server { addr, held }
    }

    /// Closes every connection it holds.
    pub fn drop_connections(&self) {
        self.held.lock().unwrap().clear();
    }
}

fn read_head(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// A loopback port free right now (for servers that take a port number).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on `addr`: (status, body), or None when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        unchunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A systemd-journald listening on its usual sockets: the host's own, or
/// one started for the test (a machine without systemd as PID 1 has none)
/// and stopped at drop.
pub struct Journald {
    started: Option<std::process::Child>,
    /// The sockets' directory, removed at drop if the test's journald made it.
    made_dir: bool,
}

const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";
const JOURNALD_DIR: &str = "/run/systemd/journal";

fn journald_listens() -> bool {
    datagram_listens(std::path::Path::new(JOURNALD_SOCKET))
}

/// Whether a datagram socket listens at `path` (a connect to it works).
fn datagram_listens(path: &std::path::Path) -> bool {
    std::os::unix::net::UnixDatagram::unbound().is_ok_and(|s| s.connect(path).is_ok())
}

/// Polls `check` every 20 ms; fails saying `what` after 10 s.
fn within_10_s(what: impl Fn() -> String, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "{} after 10 s", what());
        thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Journald {
    /// The reason, when there is no journald to run.
    pub fn ensure() -> Result<Journald, String> {
        if journald_listens() {
            return Ok(Journald {
                started: None,
                made_dir: false,
            });
        }
        let binary = "/lib/systemd/systemd-journald";
        if !std::path::Path::new(binary).exists() {
            return Err(format!("no journald listens and {binary} is not installed"));
        }
        let made_dir = !std::path::Path::new(JOURNALD_DIR).exists();
        let child = std::process::Command::new(binary)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {binary}: {e}"))?;
        let journald = Journald {
            started: Some(child),
            made_dir,
        };
        within_10_s(|| "journald does not listen".into(), journald_listens);
        Ok(journald)
    }

    /// Waits until the journal holds an entry of `pid` containing `needle`:
    /// journald stamps an entry when it takes it in, which can lag its
    /// sending (by 0.2 s once on a loaded 2-core CI machine).
    pub fn await_entry(&self, pid: u32, needle: &str) {
        let holds_it = || {
            let out = std::process::Command::new("journalctl")
                .args(["--output=cat", "--no-pager", &format!("_PID={pid}")])
                .output()
                .expect("journalctl");
            String::from_utf8_lossy(&out.stdout).contains(needle)
        };
        within_10_s(
            || format!("journald holds no entry of pid {pid} with {needle:?}"),
            holds_it,
        );
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(mut child) = self.started.take() {
            let _ = child.kill();
            let _ = child.wait();
            if self.made_dir {
                let _ = std::fs::remove_dir_all(JOURNALD_DIR);
            }
        }
    }
}

/// A real rsyslogd listening on a socket of its own (not /dev/log: the
/// host's logging is left alone) and writing what it gets to a file.
pub struct Rsyslog {
    child: std::process::Child,
    pub socket: std::path::PathBuf,
    pub file: std::path::PathBuf,
}

impl Rsyslog {
    /// The reason, when rsyslogd is not installed.
    pub fn start(dir: &std::path::Path) -> Result<Rsyslog, String> {
        Rsyslog::start_at(dir, &dir.join("syslog.sock"))
    }

    /// As [`Rsyslog::start`], listening at `socket`, which must not exist
    /// (it is removed at drop).
    pub fn start_at(dir: &std::path::Path, socket: &std::path::Path) -> Result<Rsyslog, String> {
        let binary = "/usr/sbin/rsyslogd";
        if !std::path::Path::new(binary).exists() {
            return Err(format!(
                "{binary} is not installed (cargo xtask setup installs rsyslog)"
            ));
        }
        if socket.exists() {
            return Err(format!(
                "{} exists: the host's logging is left alone",
                socket.display()
            ));
        }
        let socket = socket.to_path_buf();
        let file = dir.join("syslog.messages");
        let conf = dir.join("rsyslog.conf");
        let config = format!(
            "global(workDirectory=\"{dir}\")\n\
             module(load=\"imuxsock\" SysSock.Use=\"off\")\n\
             input(type=\"imuxsock\" Socket=\"{socket}\")\n\
             *.* action(type=\"omfile\" file=\"{file}\")\n",
            dir = dir.display(),
            socket = socket.display(),
            file = file.display(),
        );
        std::fs::write(&conf, config).map_err(|e| e.to_string())?;
        let child = std::process::Command::new(binary)
            .args(["-n", "-iNONE", "-f"])
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {binary}: {e}"))?;
        let rsyslog = Rsyslog { child, socket, file };
        within_10_s(
            || "rsyslogd does not listen".into(),
            || datagram_listens(&rsyslog.socket),
        );
        Ok(rsyslog)
    }

    /// Waits until rsyslogd wrote a line containing `needle` to its file.
    pub fn await_line(&self, needle: &str) {
        let holds_it = || std::fs::read_to_string(&self.file).is_ok_and(|text| text.contains(needle));
        within_10_s(|| format!("rsyslogd wrote no line with {needle:?}"), holds_it);
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
