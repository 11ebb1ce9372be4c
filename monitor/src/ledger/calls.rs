//! Data records of the HTTP capture, turned into API calls of the process,
//! and the calls attached to the sockets and threads they concern.

use monitor_common::{NO_FD, data_flags};

use super::{Ledger, Process, sockets::remote_of};
use crate::{
    calls::{Origin, StreamKey},
    engine::decode::DataMeta,
};

impl Ledger {
    pub(super) fn data(&mut self, meta: &DataMeta, bytes: &[u8]) {
        let h = &meta.header;
        let Some(process) = self.processes.get_mut(&h.tgid) else {
            self.counters.data_unplaced += 1;
            return;
        };
        if meta.flags & data_flags::LOG != 0 {
            // Written to a log stream: scanned for secrets, no HTTP call.
            // Marked by the probes at its connect(): the record says to which path.
            if meta.flags & data_flags::SYSLOG != 0 {
                let index = (meta.flags >> data_flags::SYSLOG_PATH_SHIFT) as usize;
                if let Some(path) = self.syslog_paths.get(index) {
                    let born = process.fds.get(&meta.fd).map_or(0, |entry| entry.birth.ts_ns);
                    (process.log_streams).connected_to_syslog(meta.fd, born, path);
                }
            }
            (process.log_streams).write(meta.fd, meta.ssl, meta.len, bytes);
            return;
        }
        let tls = meta.flags & data_flags::TLS != 0;
        let fd = (meta.fd != NO_FD).then_some(meta.fd);
        if let (true, Some(fd)) = (tls, fd) {
            process.ssl_fds.insert(meta.ssl, fd);
        }
        let key = if tls {
            StreamKey::Ssl(meta.ssl)
        } else {
            StreamKey::Fd(meta.fd)
        };
        if meta.flags & data_flags::READ != 0 {
            process.calls.read(key, bytes, h.ts_ns);
            return;
        }
        let inode = fd.and_then(|fd| process.fds.get(&fd)).map_or(0, |e| e.inode);
        let socket = self.sockets.get_mut(&inode);
        let origin = Origin {
            tid: h.tid,
            fd,
            inode,
            tls,
            endpoint: socket.as_ref().and_then(|s| s.tuple.as_ref()).map(remote_of),
            ts_ns: h.ts_ns,
        };
        let continuation = meta.flags & data_flags::CONTINUATION != 0;
        let started = process.calls.written(key, bytes, continuation, origin);
        let Some(last) = started.last().copied() else {
            return;
        };
        if let Some(socket) = socket {
            socket.first_call.get_or_insert(started[0]);
            socket.last_call = Some(last);
        }
        if let Some(thread) = process.threads.get_mut(&h.tid) {
            thread.first_call.get_or_insert(started[0]);
        }
    }
}

impl Process {
    /// An fd went away: calls still waiting on its streams get no answer.
    pub(super) fn streams_end(&mut self, fd: u32, ts_ns: u64) {
        for key in self.calls.keys_on_fd(fd, &self.ssl_fds) {
            self.calls.closed(key, ts_ns);
        }
        self.ssl_fds.retain(|_, f| *f != fd);
    }
}
