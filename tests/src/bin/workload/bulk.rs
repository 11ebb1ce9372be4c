//! Many fds of mixed kinds (snapshot accuracy), and bursts (ring-buffer overflow).

use std::{
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::IntoRawFd,
};

use nix::{
    fcntl::{OFlag, open},
    sys::{
        eventfd::EventFd,
        socket::{AddressFamily, SockFlag, SockType, socketpair},
        stat::Mode,
    },
    unistd::pipe,
};
use serde_json::json;

pub fn run(files: usize, pipes: usize, tcp_pairs: usize, close_wait: usize, unix_pairs: usize) {
    for i in 0..files {
        let path = if i % 3 == 0 {
            "/etc"
        } else if i % 3 == 1 {
            "/dev/null"
        } else {
            "/etc/hostname"
        };
        let _ = open(path, OFlag::O_RDONLY, Mode::empty()).unwrap().into_raw_fd();
    }
    for _ in 0..pipes {
        let (r, w) = pipe().unwrap();
        let _ = (r.into_raw_fd(), w.into_raw_fd());
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    for _ in 0..tcp_pairs {
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let _ = (client.into_raw_fd(), server.into_raw_fd());
    }
    // The peer closes: our end sits in CLOSE_WAIT until we close it (never).
    let mut waiting = Vec::new();
    for _ in 0..close_wait {
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.shutdown(Shutdown::Both).unwrap();
        drop(server);
        waiting.push(client.into_raw_fd());
    }
    let _ = listener.into_raw_fd();
    for _ in 0..unix_pairs {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::empty()).unwrap();
        let _ = (a.into_raw_fd(), b.into_raw_fd());
    }
    crate::say(json!({"event": "ready", "pid": std::process::id(), "close_wait_fds": waiting}));
}

/// `n` fds created at once and kept, plus `n` open/close pairs: far more
/// records than a tiny ring buffer holds.
pub fn flood(n: usize) {
    let kept: Vec<i32> = (0..n)
        .map(|_| {
            let fd = EventFd::new().unwrap();
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            std::mem::forget(fd);
            raw
        })
        .collect();
    // /dev/null, not a file on the root: under `cargo xtask vm` the root is
    // 9p, where each open is a round trip to the host (milliseconds under
    // emulation: the loop took over a minute on 5.15).
    for _ in 0..n {
        drop(open("/dev/null", OFlag::O_RDONLY, Mode::empty()).unwrap());
    }
    crate::say(json!({"event": "ready", "pid": std::process::id(), "kept": kept.len()}));
}
