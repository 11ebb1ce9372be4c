//! Wire types of the HTTP capture: bytes a watched process moved through a
//! TCP socket (plain) or through OpenSSL (TLS), at the start of a message.

use crate::EventHeader;

/// Bytes of a message start a [`DataEvent`] carries: enough for a request
/// line and the headers nova sends, or a status line and Ironic's headers.
pub const DATA_CAPTURE: usize = 2048;

/// Data at the start of a message (or of a request body), plain or TLS.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataEvent {
    pub header: EventHeader,
    /// The SSL object for TLS data, else 0. In a [`data_flags::LOG`] record:
    /// where in the write its bytes start (a write is shipped in up to
    /// [`LOG_CHUNKS`] records).
    pub ssl: u64,
    /// The socket's fd, or `NO_FD` when the probes could not tell (TLS data
    /// served from OpenSSL's buffer before the connection was seen).
    pub fd: u32,
    /// [`data_flags`] bits.
    pub flags: u32,
    /// Bytes the call moved (a LOG record: those from its start on).
    pub len: u32,
    /// Bytes of them in `data` (at most [`DATA_CAPTURE`]).
    pub captured: u32,
    pub data: [u8; DATA_CAPTURE],
}

/// Bits of [`DataEvent::flags`].
pub mod data_flags {
    /// Read by the process (else written).
    pub const READ: u32 = 1 << 0;
    /// Plaintext taken at SSL_read/SSL_write.
    pub const TLS: u32 = 1 << 1;
    /// The second write of a message (a request body after its headers).
    pub const CONTINUATION: u32 = 1 << 2;
    /// Written to a log stream (see [`stream_flags::LOG`]): every write is
    /// shipped whole, up to `LOG_CHUNKS * DATA_CAPTURE` bytes.
    pub const LOG: u32 = 1 << 3;
    /// A LOG record of a stream the probes marked themselves, when the
    /// process connected it to a syslog path (see [`super::stream_flags::SYSLOG`]):
    /// bits from [`SYSLOG_PATH_SHIFT`] on hold that path's index.
    pub const SYSLOG: u32 = 1 << 4;
    pub const SYSLOG_PATH_SHIFT: u32 = 16;
}

/// Records a write to a log stream is shipped in, at most: 8 KiB, past a
/// long log line's headers. The rest is counted in `counter::LOG_BYTES_SKIPPED`.
pub const LOG_CHUNKS: usize = 4;

/// Per-stream state of the capture (SOCK_FDS, SSL_STATE values): which way
/// data last went, and how many writes the current message has had.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamState {
    /// [`stream_flags`] bits.
    pub flags: u32,
    /// `data_flags::READ` if the last data was read, else 0.
    pub last_dir: u32,
    pub writes: u32,
    /// TLS streams: the socket fd learned from a nested syscall.
    pub fd: u32,
}

/// Bits of [`StreamState::flags`].
pub mod stream_flags {
    /// The socket carries TLS: plaintext comes from the OpenSSL probes, the
    /// syscall probes leave its ciphertext alone.
    pub const TLS: u32 = 1 << 0;
    /// Not a TCP socket but where the process writes its log (stdout or
    /// stderr to a pipe or socket, a socket to a syslog daemon): user space
    /// marks it, and the probes ship what is written to it for the secret scan.
    pub const LOG: u32 = 1 << 1;
    /// A LOG stream the probes marked at the process's connect() to one of
    /// the syslog paths in `maps::SYSLOG_PATHS` (its index in `writes`), so
    /// that the first message is read too: user space finds streams once a
    /// second, and glibc's `syslog()` connects right before its first send.
    pub const SYSLOG: u32 = 1 << 2;
}

/// Bytes of a `sockaddr_un` (family and `sun_path`): the key of
/// `maps::SYSLOG_PATHS`, zero after the path.
pub const SOCKADDR_UN_LEN: usize = 110;

/// The `maps::SYSLOG_PATHS` key of a filesystem path: `AF_UNIX` and the
/// path, zero-padded; None for a path too long for a unix socket address.
pub fn syslog_key(path: &[u8]) -> Option<[u8; SOCKADDR_UN_LEN]> {
    if path.is_empty() || path.len() >= SOCKADDR_UN_LEN - 2 || path.contains(&0) {
        return None;
    }
    let mut key = [0u8; SOCKADDR_UN_LEN];
    key[..2].copy_from_slice(&1u16.to_ne_bytes());
    key[2..2 + path.len()].copy_from_slice(path);
    Some(key)
}

/// An SSL call in flight on a thread (TLS_CALLS), kept from the uprobe to
/// the uretprobe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCall {
    pub ssl: u64,
    pub buf: u64,
    /// SSL_*_ex: where the byte count is written; else 0.
    pub count_ptr: u64,
    /// `data_flags::READ` for reads, else 0.
    pub dir: u32,
    /// The socket fd its nested syscall used, or `NO_FD`.
    pub fd: u32,
}

const _: () = assert!(core::mem::size_of::<DataEvent>() == 48 + DATA_CAPTURE);
const _: () = assert!(core::mem::size_of::<StreamState>() == 16);
const _: () = assert!(core::mem::size_of::<TlsCall>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)], Copy, integers only with explicit padding.
    unsafe impl aya::Pod for StreamState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TlsCall {}
}
