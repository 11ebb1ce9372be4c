//! The daemon's end of the control socket.

use std::{
    fs,
    io::{self, IoSlice},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::PermissionsExt,
    },
    path::Path,
    sync::Arc,
};

use anyhow::{Context as _, bail};
use nix::sys::{
    socket::{ControlMessage, MsgFlags, sendmsg},
    stat::{Mode, umask},
};
use tokio::{
    io::Interest,
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{debug, warn};

use super::protocol::{Request, Response};
use crate::fditer::Program;

/// A request from a client and where its answer goes.
pub struct Incoming {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// What the control socket serves without the engine.
#[derive(Clone)]
pub struct Direct {
    pub fd_iter: Option<Arc<Program>>,
}

pub fn spawn(
    path: &Path,
    requests: mpsc::Sender<Incoming>,
    direct: Direct,
) -> anyhow::Result<JoinHandle<()>> {
    prepare(path)?;
    // Created 0600 from the start: no window in which others could connect.
    let old = umask(Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    umask(old);
    let listener = listener.with_context(|| format!("binding the control socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(accept_loop(listener, requests, direct)))
}

/// Creates the parent directory (0700) and clears a stale socket, but never
/// takes the socket of a daemon that still answers.
pub fn prepare(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another leakmon daemon answers on {}; stop it or pass --control-socket",
                path.display()
            );
        }
        fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    Ok(())
}

pub fn remove_socket(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "could not remove the control socket");
    }
}

async fn accept_loop(listener: UnixListener, requests: mpsc::Sender<Incoming>, direct: Direct) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, requests.clone(), direct.clone()));
            }
            Err(e) => warn!(error = %e, "control socket accept failed"),
        }
    }
}

async fn serve(stream: UnixStream, requests: mpsc::Sender<Incoming>, direct: Direct) {
    let cred = stream.peer_cred().ok();
    let root = cred.is_some_and(|cred| cred.uid() == 0);
    // The client's process reads the iterators it is handed.
    let reader = cred.and_then(|cred| cred.pid()).map(|pid| pid as u32);
    let (read, mut write) = stream.into_split();
    if !root {
        let refusal = Response::error("permission denied: the leakmon control socket answers root only");
        let _ = write_line(&mut write, &refusal).await;
        return;
    }
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = if line.len() > MAX_LINE {
            Response::error(format!("request longer than {MAX_LINE} bytes"))
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(Request::FdIter { pid }) => match open_fd_iter(&direct, pid, reader) {
                    Ok(iter) => {
                        if send_with_fd(write.as_ref(), &Response::ok(serde_json::Value::Null), &iter)
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    Err(e) => Response::error(e),
                },
                Ok(request) => ask_engine(&requests, request).await,
                Err(e) => Response::error(format!("malformed request: {e}")),
            }
        };
        if write_line(&mut write, &response).await.is_err() {
            return;
        }
    }
    debug!("control client left");
}

async fn ask_engine(requests: &mpsc::Sender<Incoming>, request: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    if requests.send(Incoming { request, reply }).await.is_err() {
        return Response::error("the daemon is shutting down");
    }
    answer
        .await
        .unwrap_or_else(|_| Response::error("the daemon dropped the request"))
}

async fn write_line(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

fn open_fd_iter(direct: &Direct, pid: u32, reader: Option<u32>) -> Result<OwnedFd, String> {
    let program = direct
        .fd_iter
        .as_ref()
        .ok_or("this daemon has no fd iterator (see `leakmon status` hooks)")?;
    let reader = reader.ok_or("the kernel did not say which process the client is")?;
    program.open_for(pid, reader).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) | Some(libc::ENOENT) => format!("no process with pid {pid}"),
        _ => format!("fd iterator for pid {pid}: {e}"),
    })
}

/// Writes a response line with `fd` attached (SCM_RIGHTS on its first byte).
async fn send_with_fd(stream: &UnixStream, response: &Response, fd: &OwnedFd) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    let fds = [fd.as_raw_fd()];
    let sent = loop {
        stream.writable().await?;
        let attempt = stream.try_io(Interest::WRITABLE, || {
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[IoSlice::new(&line)],
                &cmsg,
                MsgFlags::empty(),
                None,
            )
            .map_err(io::Error::from)
        });
        match attempt {
            Ok(sent) => break sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    // The fd went with the first byte; the rest of a short write is plain data.
    let mut rest = &line[sent..];
    while !rest.is_empty() {
        stream.writable().await?;
        match stream.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
