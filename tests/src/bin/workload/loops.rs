//! Tight syscall loops for the benchmarks, and a slow steady leak for the demo.

use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::IntoRawFd,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

fn close(fd: i32) {
    // SAFETY: closing an fd this loop just created and owns.
    unsafe { libc::close(fd) };
}

fn one(kind: &str) {
    // SAFETY (all arms): plain syscalls on fds this loop owns; paths are NUL-terminated literals.
    match kind {
        "open" => close(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }),
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
        other => panic!("unknown loop {other}"),
    }
}

/// One TCP connection to a local server that accepts and closes. The
/// client closes with SO_LINGER 0 (a reset): TIME_WAIT sockets would
/// otherwise pile up and make port allocation, not the probes, the cost.
fn tcp_cycle(server: SocketAddr) {
    let stream = TcpStream::connect(server).unwrap();
    nix::sys::socket::setsockopt(
        &stream,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(stream);
}

/// Runs `ops` iterations of `kind` after a `go` line; reports ns per op.
/// `tcp:PORT` connects to a [`tcp_server`] on PORT and closes.
pub fn bench(kind: &str, ops: u64, commands: &mut impl Iterator<Item = String>) {
    crate::say(json!({"event": "started", "pid": std::process::id()}));
    commands.next();
    // A parsed address: a host string would cost a getaddrinfo per connect.
    let server: Option<SocketAddr> = kind
        .strip_prefix("tcp:")
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p.parse().expect("tcp:PORT"))));
    let run = |n: u64| {
        for _ in 0..n {
            match server {
                Some(server) => tcp_cycle(server),
                None => one(kind),
            }
        }
    };
    run(ops / 20); // warm-up
    let started = Instant::now();
    run(ops);
    let ns = started.elapsed().as_nanos() as f64 / ops as f64;
    crate::say(json!({"event": "done", "kind": kind, "ops": ops, "ns_per_op": ns}));
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
