//! Ring-buffer record -> event. Pure: no I/O, no state; every malformed
//! record is an error the caller counts, never a panic.

use std::mem::size_of;

use monitor_common::{
    CMSG_CAPTURE, ConnectEvent, DATA_CAPTURE, DataEvent, EventHeader, EventKind, FdEvent, RecvFdsEvent,
    SockEvent, TaskEvent, Tuple,
};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than an event header")]
    NoHeader { got: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("{kind:?} record truncated: {got} of {need} bytes")]
    Truncated {
        kind: EventKind,
        got: usize,
        need: usize,
    },
    #[error("record claims {captured} captured bytes, more than fit")]
    BadCapture { captured: u32 },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Task(EventKind, TaskEvent),
    Fd(EventKind, FdEvent),
    /// Header, the kernel's msg_controllen, and the bytes captured of it.
    Received(EventHeader, u32, &'a [u8]),
    Sock(EventKind, SockEvent),
    Connect(ConnectEvent),
    /// A message start on a watched TCP socket, and the bytes captured of it.
    Data(DataMeta, &'a [u8]),
}

/// A [`monitor_common::DataEvent`] without its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataMeta {
    pub header: EventHeader,
    pub ssl: u64,
    pub fd: u32,
    pub flags: u32,
    pub len: u32,
}

/// Little helper reading native-endian integers at fixed offsets of a
/// record whose length has already been checked.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.0[at..at + 4].try_into().expect("length checked"))
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.0[at..at + 8].try_into().expect("length checked"))
    }
    fn comm(&self, at: usize) -> [u8; 16] {
        self.0[at..at + 16].try_into().expect("length checked")
    }
    fn u16(&self, at: usize) -> u16 {
        u16::from_ne_bytes(self.0[at..at + 2].try_into().expect("length checked"))
    }
    fn tuple(&self, at: usize) -> Tuple {
        Tuple {
            family: self.u16(at),
            sport: self.u16(at + 2),
            dport: self.u16(at + 4),
            _pad: 0,
            saddr: self.comm(at + 8),
            daddr: self.comm(at + 24),
        }
    }
    fn header(&self) -> EventHeader {
        EventHeader {
            kind: self.u32(0),
            syscall: self.u32(4),
            tgid: self.u32(8),
            tid: self.u32(12),
            ts_ns: self.u64(16),
        }
    }
}

const HEADER: usize = size_of::<EventHeader>();

pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    if record.len() < HEADER {
        return Err(DecodeError::NoHeader { got: record.len() });
    }
    let fields = Fields(record);
    let kind = EventKind::try_from(fields.u32(0)).map_err(DecodeError::UnknownKind)?;
    let need = match kind {
        EventKind::Exec | EventKind::TaskNew | EventKind::TaskExit | EventKind::TaskRename => {
            size_of::<TaskEvent>()
        }
        EventKind::FdOpen
        | EventKind::FdOpenLate
        | EventKind::FdClose
        | EventKind::FdCloseRange
        | EventKind::FdFailed => size_of::<FdEvent>(),
        EventKind::FdReceived => size_of::<RecvFdsEvent>(),
        EventKind::SockState | EventKind::SockError => size_of::<SockEvent>(),
        EventKind::Connect => size_of::<ConnectEvent>(),
        EventKind::Data => size_of::<DataEvent>(),
    };
    if record.len() < need {
        return Err(DecodeError::Truncated {
            kind,
            got: record.len(),
            need,
        });
    }
    let header = fields.header();
    Ok(match kind {
        EventKind::Exec | EventKind::TaskNew | EventKind::TaskExit | EventKind::TaskRename => Event::Task(
            kind,
            TaskEvent {
                header,
                pid: fields.u32(HEADER),
                flags: fields.u32(HEADER + 4),
                comm: fields.comm(HEADER + 8),
            },
        ),
        EventKind::FdOpen
        | EventKind::FdOpenLate
        | EventKind::FdClose
        | EventKind::FdCloseRange
        | EventKind::FdFailed => Event::Fd(
            kind,
            FdEvent {
                header,
                fd: fields.u32(HEADER),
                fd2: fields.u32(HEADER + 4),
                source_fd: fields.u32(HEADER + 8),
                detail: fields.u32(HEADER + 12),
                inode: fields.u64(HEADER + 16),
            },
        ),
        EventKind::SockState | EventKind::SockError => Event::Sock(
            kind,
            SockEvent {
                header,
                inode: fields.u64(HEADER),
                skaddr: fields.u64(HEADER + 8),
                fd: fields.u32(HEADER + 16),
                error: fields.u32(HEADER + 20) as i32,
                oldstate: record[HEADER + 24],
                newstate: record[HEADER + 25],
                _pad: [0; 6],
                tuple: fields.tuple(HEADER + 32),
                born_ns: fields.u64(HEADER + 72),
                born_detail: fields.u32(HEADER + 80),
                _pad2: 0,
            },
        ),
        EventKind::Connect => Event::Connect(ConnectEvent {
            header,
            fd: fields.u32(HEADER),
            ret: fields.u32(HEADER + 4) as i32,
            family: fields.u16(HEADER + 8),
            port: fields.u16(HEADER + 10),
            _pad: 0,
            addr: fields.comm(HEADER + 16),
        }),
        EventKind::Data => {
            let captured = fields.u32(HEADER + 20);
            if captured as usize > DATA_CAPTURE {
                return Err(DecodeError::BadCapture { captured });
            }
            let meta = DataMeta {
                header,
                ssl: fields.u64(HEADER),
                fd: fields.u32(HEADER + 8),
                flags: fields.u32(HEADER + 12),
                len: fields.u32(HEADER + 16),
            };
            let start = HEADER + 24;
            Event::Data(meta, &record[start..start + captured as usize])
        }
        EventKind::FdReceived => {
            let control_len = fields.u32(HEADER);
            let captured = fields.u32(HEADER + 4);
            if captured as usize > CMSG_CAPTURE {
                return Err(DecodeError::BadCapture { captured });
            }
            let start = HEADER + 8;
            Event::Received(header, control_len, &record[start..start + captured as usize])
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use monitor_common::NO_FD;

    use super::*;

    /// Serialises a wire struct the way the kernel lays it out.
    pub(crate) fn bytes_of_fd(event: &FdEvent) -> Vec<u8> {
        let h = &event.header;
        let mut out = Vec::new();
        for v in [h.kind, h.syscall, h.tgid, h.tid] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.extend_from_slice(&h.ts_ns.to_ne_bytes());
        for v in [event.fd, event.fd2, event.source_fd, event.detail] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.extend_from_slice(&event.inode.to_ne_bytes());
        out
    }

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            syscall: 257,
            tgid: 10,
            tid: 11,
            ts_ns: 12345,
        }
    }

    #[test]
    fn decodes_an_fd_event_field_by_field() {
        for kind in [EventKind::FdOpen, EventKind::FdOpenLate] {
            let event = FdEvent {
                header: header(kind),
                fd: 7,
                fd2: NO_FD,
                source_fd: 3,
                detail: 99,
                inode: 1 << 40,
            };
            let bytes = bytes_of_fd(&event);
            assert_eq!(decode(&bytes), Ok(Event::Fd(kind, event)));
        }
    }

    #[test]
    fn truncated_records_are_errors() {
        let bytes = bytes_of_fd(&FdEvent {
            header: header(EventKind::FdClose),
            ..Default::default()
        });
        assert_eq!(decode(&bytes[..10]), Err(DecodeError::NoHeader { got: 10 }));
        assert_eq!(
            decode(&bytes[..30]),
            Err(DecodeError::Truncated {
                kind: EventKind::FdClose,
                got: 30,
                need: 48
            })
        );
    }

    #[test]
    fn unknown_kinds_are_errors_not_transmutes() {
        let mut bytes = bytes_of_fd(&FdEvent::default());
        bytes[..4].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(77)));
        bytes[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(0)));
    }

    #[test]
    fn task_events_carry_comm() {
        let mut bytes = bytes_of_fd(&FdEvent {
            header: header(EventKind::TaskNew),
            fd: 4242,
            fd2: 1,
            ..Default::default()
        });
        bytes.truncate(HEADER + 8);
        bytes.extend_from_slice(b"nova-compute\0\0\0\0");
        let Ok(Event::Task(EventKind::TaskNew, task)) = decode(&bytes) else {
            panic!("not a task event");
        };
        assert_eq!((task.pid, task.flags), (4242, 1));
        assert_eq!(&task.comm[..12], b"nova-compute");
    }

    #[test]
    fn socket_events_decode_field_by_field() {
        let tuple = Tuple {
            family: 2,
            sport: 40000,
            dport: 6385,
            _pad: 0,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let mut bytes = bytes_of_fd(&FdEvent {
            header: header(EventKind::SockState),
            ..Default::default()
        });
        bytes.truncate(HEADER);
        bytes.extend_from_slice(&77u64.to_ne_bytes()); // inode
        bytes.extend_from_slice(&0xffff_8880_0000_1000u64.to_ne_bytes()); // skaddr
        bytes.extend_from_slice(&9u32.to_ne_bytes()); // fd
        bytes.extend_from_slice(&(-111i32).to_ne_bytes()); // error
        bytes.extend_from_slice(&[1, 8, 0, 0, 0, 0, 0, 0]); // ESTABLISHED -> CLOSE_WAIT
        for v in [tuple.family, tuple.sport, tuple.dport, 0] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        bytes.extend_from_slice(&tuple.saddr);
        bytes.extend_from_slice(&tuple.daddr);
        bytes.extend_from_slice(&1234u64.to_ne_bytes()); // born_ns
        bytes.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0]); // born_detail, pad
        let Ok(Event::Sock(EventKind::SockState, sock)) = decode(&bytes) else {
            panic!("not a socket event: {:?}", decode(&bytes));
        };
        assert_eq!((sock.inode, sock.fd, sock.error), (77, 9, -111));
        assert_eq!((sock.oldstate, sock.newstate), (1, 8));
        assert_eq!(sock.tuple, tuple);
        assert_eq!((sock.born_ns, sock.born_detail), (1234, 5));
        assert!(matches!(decode(&bytes[..60]), Err(DecodeError::Truncated { .. })));

        let mut bytes = bytes_of_fd(&FdEvent {
            header: header(EventKind::Connect),
            ..Default::default()
        });
        bytes.truncate(HEADER);
        bytes.extend_from_slice(&4u32.to_ne_bytes());
        bytes.extend_from_slice(&(-115i32).to_ne_bytes());
        bytes.extend_from_slice(&2u16.to_ne_bytes());
        bytes.extend_from_slice(&6385u16.to_ne_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&tuple.daddr);
        let Ok(Event::Connect(connect)) = decode(&bytes) else {
            panic!("not a connect event");
        };
        assert_eq!(
            (connect.fd, connect.ret, connect.port, connect.addr[..4].to_vec()),
            (4, -115, 6385, tuple.daddr[..4].to_vec())
        );
    }

    #[test]
    fn received_control_is_bounded_by_what_was_captured() {
        let mut bytes = bytes_of_fd(&FdEvent {
            header: header(EventKind::FdReceived),
            ..Default::default()
        });
        bytes.truncate(HEADER);
        bytes.extend_from_slice(&24u32.to_ne_bytes());
        bytes.extend_from_slice(&20u32.to_ne_bytes());
        bytes.resize(HEADER + 8 + CMSG_CAPTURE, 0xab);
        let Ok(Event::Received(_, 24, control)) = decode(&bytes) else {
            panic!("not a received event");
        };
        assert_eq!(control.len(), 20);

        bytes[HEADER + 4..HEADER + 8].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::BadCapture { captured: 1000 }));
    }
}
