//! Lines sent to the systemd journal the two ways a service's do: its
//! stdout as a journal stream (what systemd connects for `StandardOutput=journal`),
//! and a native entry (Python's `systemd.journal.JournalHandler`).

use std::{
    io::Write as _,
    os::unix::net::{UnixDatagram, UnixStream},
};

use serde_json::json;

pub fn send(how: &str, text: &str) {
    match how {
        "native" => {
            let entry = format!("SYSLOG_IDENTIFIER=lm-workload\nMESSAGE={text}\n");
            let socket = UnixDatagram::unbound().unwrap();
            socket
                .send_to(entry.as_bytes(), "/run/systemd/journal/socket")
                .unwrap();
        }
        "stream" => {
            let mut stream = UnixStream::connect("/run/systemd/journal/stdout").unwrap();
            // Identifier, unit, priority, level prefix, then forwarding to
            // syslog, kmsg and console: the header systemd itself writes.
            stream.write_all(b"lm-workload\n\n6\n0\n0\n0\n0\n").unwrap();
            stream.write_all(format!("{text}\n").as_bytes()).unwrap();
        }
        other => panic!("journal: unknown way {other:?}"),
    }
    crate::say(json!({"event": "journaled", "how": how}));
}
