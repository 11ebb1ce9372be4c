//! The CLI's end of the control socket (blocking: one request, one answer).

use std::{
    io::{self, BufRead, BufReader, IoSliceMut, Write},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use thiserror::Error;

use super::protocol::{Request, Response};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no leakmon daemon is running on {0} (start one with `leakmon run`)")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the control socket is root-only")]
    PermissionDenied(PathBuf),
    // `cause`, not `source`: said once in the message, not again in a chain.
    #[error("talking to the daemon on {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("the daemon says: {0}")]
    Daemon(String),
}

/// Sends one request and returns the answer's data.
pub fn request(path: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let stream = send(path, request)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(io_error(path))?;
    decode(path, &answer)
}

/// Asks the daemon for an iterator over the fds of `pid` (fditer.rs) and
/// receives its fd with the answer.
pub fn fd_iter(path: &Path, pid: u32) -> Result<OwnedFd, ClientError> {
    let stream = send(path, &Request::FdIter { pid })?;
    let io_err = io_error(path);
    let mut answer = Vec::new();
    let mut received = None;
    while !answer.ends_with(b"\n") {
        let mut buf = [0u8; 4096];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let message = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| io_err(e.into()))?;
        for cmsg in message.cmsgs().map_err(|e| io_err(e.into()))? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: SCM_RIGHTS installed this fd in our table for us to own.
                    received = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let n = message.bytes;
        if n == 0 {
            return Err(io_err(io::ErrorKind::UnexpectedEof.into()));
        }
        answer.extend_from_slice(&buf[..n]);
    }
    decode(path, &String::from_utf8_lossy(&answer))?;
    received.ok_or_else(|| {
        io_err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no fd came with the answer",
        ))
    })
}

/// Wraps an I/O error with the socket's path.
fn io_error(path: &Path) -> impl Fn(io::Error) -> ClientError + Copy + '_ {
    move |cause| ClientError::Io {
        path: path.into(),
        cause,
    }
}

fn send(path: &Path, request: &Request) -> Result<UnixStream, ClientError> {
    let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning(path.into()),
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.into()),
        _ => ClientError::Io {
            path: path.into(),
            cause: e,
        },
    })?;
    let io_err = io_error(path);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io_err)?;
    let mut line = serde_json::to_vec(request).expect("requests always encode");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;
    Ok(stream)
}

fn decode(path: &Path, answer: &str) -> Result<serde_json::Value, ClientError> {
    let io_err = io_error(path);
    let response: Response =
        serde_json::from_str(answer).map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    match response {
        Response { ok: true, data, .. } => Ok(data.unwrap_or(serde_json::Value::Null)),
        Response { error, .. } => {
            let message = error.unwrap_or_else(|| "unknown error".into());
            if message.starts_with("permission denied") {
                Err(ClientError::PermissionDenied(path.into()))
            } else {
                Err(ClientError::Daemon(message))
            }
        }
    }
}
