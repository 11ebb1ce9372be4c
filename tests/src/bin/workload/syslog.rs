//! Logging the way Python's `logging.handlers.SysLogHandler` does on a unix
//! socket (oslo.log's `use_syslog`): a datagram socket connected once, a
//! `<priority>message` datagram per record.

use std::{cell::RefCell, os::unix::net::UnixDatagram};

use serde_json::json;

thread_local! {
    static SOCKET: RefCell<Option<UnixDatagram>> = const { RefCell::new(None) };
}

/// Connects the handler's socket to the syslog daemon at `path`.
pub fn open(path: &str) {
    let socket = UnixDatagram::unbound().unwrap();
    socket.connect(path).unwrap();
    SOCKET.with(|s| *s.borrow_mut() = Some(socket));
    crate::say(json!({"event": "syslog-open"}));
}

/// One record on a socket of its own, connected right before and closed
/// right after (glibc's `syslog()` connects at its first message): the
/// daemon's once-a-second look at the process's fds never sees it.
pub fn once(path: &str, text: &str) {
    let socket = UnixDatagram::unbound().unwrap();
    socket.connect(path).unwrap();
    socket.send(record(text).as_bytes()).unwrap();
    drop(socket);
    crate::say(json!({"event": "syslogged-once"}));
}

fn record(text: &str) -> String {
    format!("<14>lm-workload: {text}\0")
}

/// Sends one record.
pub fn send(text: &str) {
    let record = record(text);
    SOCKET.with(|s| {
        s.borrow()
            .as_ref()
            .expect("syslog-open first")
            .send(record.as_bytes())
            .unwrap()
    });
    crate::say(json!({"event": "syslogged"}));
}
