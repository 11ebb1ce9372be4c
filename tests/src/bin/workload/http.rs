//! `http-call ADDR PATH`: one HTTP request on a new connection, with a file,
//! a socket and a thread created while it is in flight (between the request
//! written and the response read) and a file created after it. Mode
//! `http-early ADDR` connects right after exec; `http-send FD PATH` then
//! sends a request on that connection and reads the answer (or only one of
//! the two: `http-write FD PATH`, `http-read FD`).

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::fd::{AsRawFd, IntoRawFd},
    sync::mpsc,
};

use serde_json::json;

pub fn call(addr: &str, path: &str) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: leakmon-workload\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    // In flight now: what is created here belongs to the call.
    let file = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().into_raw_fd();
    let (started, tid) = mpsc::channel();
    std::thread::spawn(move || {
        started.send(nix::unistd::gettid().as_raw()).unwrap();
        std::thread::park();
    });
    let thread = tid.recv().unwrap();
    let mut response = [0u8; 4096];
    let read = stream.read(&mut response).unwrap();
    assert!(response[..read].starts_with(b"HTTP/1.1 "), "no HTTP response");
    let after = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
    crate::say(json!({
        "event": "called",
        "connection": stream.as_raw_fd(),
        "file": file,
        "socket": socket,
        "thread": thread,
        "after": after,
    }));
    // Kept open, like the resources above, for the test to inspect.
    let _ = stream.into_raw_fd();
}

/// Connects at once (before the daemon can have handled the exec).
pub fn connect_early(addr: &str) -> i32 {
    TcpStream::connect(addr).expect("connect").into_raw_fd()
}

/// One request and its answer on an open connection.
pub fn send(fd: i32, path: &str) {
    write_request(fd, path);
    read_answer(fd);
    crate::say(json!({"event": "sent", "fd": fd}));
}

/// `http-write FD PATH`: a request on an open connection, its answer left
/// unread.
pub fn write(fd: i32, path: &str) {
    write_request(fd, path);
    crate::say(json!({"event": "written", "fd": fd}));
}

/// `http-read FD`: reads the answer to a request `http-write` sent.
pub fn read(fd: i32) {
    read_answer(fd);
    crate::say(json!({"event": "read", "fd": fd}));
}

/// The connection `fd` this process opened and keeps open, for `with`.
fn on_connection(fd: i32, with: impl FnOnce(&mut TcpStream)) {
    // SAFETY: the fd is a connection this process opened and keeps open; the
    // stream is turned back into a raw fd below, so it is not closed here.
    let mut stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    with(&mut stream);
    let _ = stream.into_raw_fd();
}

fn write_request(fd: i32, path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: ironic\r\n\r\n");
    on_connection(fd, |stream| stream.write_all(request.as_bytes()).unwrap());
}

fn read_answer(fd: i32) {
    on_connection(fd, |stream| {
        let mut response = [0u8; 4096];
        let read = stream.read(&mut response).unwrap();
        assert!(response[..read].starts_with(b"HTTP/1.1 "), "no HTTP response");
    });
}
