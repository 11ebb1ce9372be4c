//! Tight syscall loops for the benchmarks, and a slow steady leak for the demo.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::IntoRawFd,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

pub fn close(fd: i32) {
    // SAFETY: closing an fd the caller just created and owns.
    unsafe { libc::close(fd) };
}

fn one(kind: &str) {
    // SAFETY (all arms): plain syscalls on fds this loop owns; paths are NUL-terminated literals;
    // the forked child calls only execv and _exit (async-signal-safe in a threaded parent).
    match kind {
        "open" => close(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }),
        // Open for most of the iteration, with no syscall (no record) in between.
        "open-held" => {
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            let opened = Instant::now();
            while opened.elapsed() < Duration::from_micros(20) {}
            close(fd)
        }
        "socket" => close(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }),
        "pipe2" => {
            let mut fds = [0i32; 2];
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
            close(fds[0]);
            close(fds[1]);
        }
        "dup" => close(unsafe { libc::dup(0) }),
        "eventfd" => close(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }),
        "epoll" => close(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }),
        "getppid" => {
            unsafe { libc::getppid() };
        }
        "thread" => thread::spawn(|| ()).join().unwrap(),
        "fork" => match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(0) },
            child => {
                let mut status = 0;
                unsafe { libc::waitpid(child, &mut status, 0) };
            }
        },
        // The child runs /bin/true: an exec like any on the host.
        "exec" => match unsafe { libc::fork() } {
            0 => unsafe {
                let argv = [c"true".as_ptr(), std::ptr::null()];
                libc::execv(c"/bin/true".as_ptr(), argv.as_ptr());
                libc::_exit(127)
            },
            child => {
                let mut status = 0;
                unsafe { libc::waitpid(child, &mut status, 0) };
                assert_eq!(status, 0, "/bin/true failed");
            }
        },
        other => panic!("unknown loop {other}"),
    }
}

/// One TCP connection to a local server that accepts and closes. The
/// client closes with SO_LINGER 0 (a reset): TIME_WAIT sockets would
/// otherwise pile up and make port allocation, not the probes, the cost.
fn tcp_cycle(server: SocketAddr) {
    let stream = TcpStream::connect(server).unwrap();
    reset_on_close(&stream);
    drop(stream);
}

/// SO_LINGER 0: close() sends a reset and leaves no TIME_WAIT behind.
pub fn reset_on_close(stream: &TcpStream) {
    nix::sys::socket::setsockopt(
        stream,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
}

/// A request and a response of the sizes nova and Ironic exchange for a
/// node lookup (headers; the body is short here).
const REQUEST: &[u8] = concat!(
    "GET /v1/nodes/1ea5a24b-6b22-4891-834f-e44fa7929a51?fields=uuid%2Cpower_state%2Cprovision_state HTTP/1.1\r\n\
Host: 127.0.0.1:6385\r\nUser-Agent: nova-compute keystoneauth1/5.0 python-requests/2.32\r\n\
Accept-Encoding: gzip, deflate\r\nAccept: application/json\r\nConnection: keep-alive\r\n\
X-OpenStack-Ironic-API-Version: 1.46\r\n",
    "X-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential\r\n\r\n"
)
.as_bytes();
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
OpenStack-API-Version: baremetal 1.46\r\nX-OpenStack-Ironic-API-Version: 1.46\r\n\
X-Openstack-Request-Id: req-6e5a2b8a-3f1c-4d6e-9a0b-1c2d3e4f5a6b\r\n\r\n{}";

/// Runs on the last CPU only: the HTTP loop and its server on one CPU
/// exchange by context switch, a cost that idle states do not blur.
fn pin_to_last_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut set = nix::sched::CpuSet::new();
    set.set(cpus - 1).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

/// What one iteration of a benchmark loop does.
enum Op {
    Syscall(String),
    /// Connect to a [`tcp_server`] and close.
    Tcp(SocketAddr),
    /// One request and response on a keep-alive connection to an [`http_server`].
    Http(TcpStream),
    /// One request and response through both ends of a TLS connection.
    Tls(crate::tls::TlsPair),
    /// One log line written to stderr, a pipe a thread drains (a
    /// collector's): a log stream when the daemon watches the loop.
    LogLine,
}

/// A nova-compute debug line's length and shape (no token in it).
const LOG_LINE: &[u8] = b"2026-12-05 23:50:01.123 4242 DEBUG nova.virt.ironic.driver [req-6e5a2b8a-3f1c-4d6e-9a0b - - - - -] Node 1ea5a24b-6b22-4891-834f-e44fa7929a51 power state is power on _wait\n";

/// Makes stderr a pipe whose other end a thread reads and drops.
fn stderr_to_a_drained_pipe() {
    let (read, write) = nix::unistd::pipe().unwrap();
    nix::unistd::dup2_stderr(&write).unwrap();
    drop(write);
    thread::spawn(move || {
        let mut read = std::fs::File::from(read);
        let mut buffer = vec![0u8; 1 << 16];
        while read.read(&mut buffer).is_ok_and(|n| n > 0) {}
    });
}

impl Op {
    /// `KIND`, `tcp:PORT`, `http:PORT`, `tls:CERT:KEY` or `logline`.
    fn parse(kind: &str) -> Op {
        let local = |port: &str| SocketAddr::from(([127, 0, 0, 1], port.parse().expect("PORT")));
        if let Some(port) = kind.strip_prefix("tcp:") {
            Op::Tcp(local(port))
        } else if let Some(port) = kind.strip_prefix("http:") {
            let stream = TcpStream::connect(local(port)).unwrap();
            stream.set_nodelay(true).unwrap();
            Op::Http(stream)
        } else if kind == "logline" {
            stderr_to_a_drained_pipe();
            Op::LogLine
        } else if let Some(files) = kind.strip_prefix("tls:") {
            let (cert, key) = files.split_once(':').expect("tls:CERT:KEY");
            Op::Tls(crate::tls::TlsPair::new(cert, key))
        } else {
            Op::Syscall(kind.to_string())
        }
    }

    fn once(&mut self) {
        match self {
            Op::Syscall(kind) => one(kind),
            Op::Tcp(server) => tcp_cycle(*server),
            Op::Http(stream) => {
                stream.write_all(REQUEST).unwrap();
                let mut response = [0u8; 512];
                stream.read_exact(&mut response[..RESPONSE.len()]).unwrap();
            }
            Op::Tls(pair) => pair.round(REQUEST, RESPONSE),
            Op::LogLine => {
                // SAFETY: a write of a static buffer to fd 2.
                let written = unsafe { libc::write(2, LOG_LINE.as_ptr().cast(), LOG_LINE.len()) };
                assert_eq!(written, LOG_LINE.len() as isize);
            }
        }
    }
}

/// Runs `ops` iterations of `kind` (see [`Op::parse`]) after a `go` line;
/// reports ns per op.
pub fn bench(kind: &str, ops: u64, commands: &mut impl Iterator<Item = String>) {
    // Thread create+join across two CPUs wakes the other one for each
    // thread (an IPI, an idle exit): under a hypervisor that is slow and
    // erratic (unpinned runs spread 40-60 µs), and it hides the probes' cost.
    if kind.starts_with("http:") || kind == "thread" {
        pin_to_last_cpu();
    }
    let mut op = Op::parse(kind);
    crate::say(json!({"event": "started", "pid": std::process::id()}));
    commands.next();
    let mut run = |n: u64| {
        for _ in 0..n {
            op.once();
        }
    };
    run(ops / 20); // warm-up
    let started = Instant::now();
    run(ops);
    let ns = started.elapsed().as_nanos() as f64 / ops as f64;
    crate::say(json!({"event": "done", "kind": kind, "ops": ops, "ns_per_op": ns}));
}

/// For each `RATE SECONDS` line: dup+close pairs making RATE fd events per
/// second (two per pair) for SECONDS, paced every 200 µs; reports what it did.
pub fn paced(commands: &mut impl Iterator<Item = String>) {
    crate::say(json!({"event": "ready", "pid": std::process::id()}));
    for line in commands {
        if line == "exit" {
            std::process::exit(0);
        }
        let mut words = line
            .split_whitespace()
            .map(|w| w.parse::<f64>().expect("RATE SECONDS"));
        let (rate, seconds) = (words.next().unwrap(), words.next().unwrap());
        let pairs = (rate * seconds / 2.0) as u64;
        let started = Instant::now();
        let mut done = 0u64;
        while done < pairs {
            let due = ((started.elapsed().as_secs_f64() * rate / 2.0) as u64).min(pairs);
            while done < due {
                one("dup");
                done += 1;
            }
            if done < pairs {
                thread::sleep(Duration::from_micros(200));
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        crate::say(json!({"event": "paced", "pairs": done, "events": 2 * done, "seconds": elapsed}));
    }
}

/// Answers every request on every connection with [`RESPONSE`], forever
/// (the other end of the `http:PORT` loop, in a process of its own).
pub fn http_server() -> ! {
    pin_to_last_cpu();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    crate::say(json!({"event": "ready", "port": listener.local_addr().unwrap().port()}));
    for stream in listener.incoming().map_while(Result::ok) {
        thread::spawn(move || {
            let mut stream = stream;
            stream.set_nodelay(true).unwrap();
            let mut request = vec![0u8; REQUEST.len()];
            while stream.read_exact(&mut request).is_ok() {
                if stream.write_all(RESPONSE).is_err() {
                    break;
                }
            }
        });
    }
    unreachable!()
}

/// Accepts connections and closes them at once, forever (the other end of
/// the `tcp:PORT` loop, in a process of its own so it can go unwatched).
pub fn tcp_server() -> ! {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // A deep accept queue: an overflow drops a SYN and costs the client a
    // one-second retransmission, which would swamp the measurement.
    // SAFETY: listen(2) again on our own listening socket.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
    crate::say(json!({"event": "ready", "port": listener.local_addr().unwrap().port()}));
    for stream in listener.incoming() {
        drop(stream);
    }
    unreachable!()
}

/// The demo's leak: every second a file and a socket whose peer hangs up
/// (CLOSE_WAIT), every fifth second a thread that never ends.
pub fn leak() -> ! {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    });
    for tick in 0u64.. {
        let _ = std::fs::File::open("/etc/hostname").unwrap().into_raw_fd();
        let _ = TcpStream::connect(addr).unwrap().into_raw_fd();
        if tick % 5 == 0 {
            thread::Builder::new()
                .name(format!("stuck-{tick}"))
                .spawn(|| {
                    loop {
                        thread::park();
                    }
                })
                .unwrap();
        }
        thread::sleep(Duration::from_secs(1));
    }
    unreachable!()
}
