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

/// Sends one record.
pub fn send(text: &str) {
    let record = format!("<14>lm-workload: {text}\0");
    SOCKET.with(|s| {
        s.borrow()
            .as_ref()
            .expect("syslog-open first")
            .send(record.as_bytes())
            .unwrap()
    });
    crate::say(json!({"event": "syslogged"}));
}
