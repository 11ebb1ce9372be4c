//! The CLI's end of the control socket (blocking: one request, one answer).

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;

use super::protocol::{Request, Response};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no leakmon daemon is running on {0} (start one with `leakmon run`)")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the control socket is root-only")]
    PermissionDenied(PathBuf),
    #[error("talking to the daemon on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the daemon says: {0}")]
    Daemon(String),
}

/// Sends one request and returns the answer's data.
pub fn request(path: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning(path.into()),
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.into()),
        _ => ClientError::Io {
            path: path.into(),
            source: e,
        },
    })?;
    let io_err = |source| ClientError::Io {
        path: path.into(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io_err)?;
    let mut line = serde_json::to_vec(request).expect("requests always encode");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io_err)?;
    let response: Response =
        serde_json::from_str(&answer).map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
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
