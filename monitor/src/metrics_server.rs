//! The Prometheus endpoint: `GET /metrics` on the configured address,
//! answered from the engine (the only owner of the state), everything else
//! 404. One request per connection; bounded request size and time.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    time::timeout,
};
use tracing::{debug, info, warn};

use crate::control::{protocol::Request, server::Incoming};

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn spawn(addr: SocketAddr, engine: mpsc::Sender<Incoming>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener on {addr}"))?;
    if !addr.ip().is_loopback() {
        warn!(%addr, "metrics are served beyond loopback: they name processes and endpoints of this host");
    }
    info!(%addr, "serving Prometheus metrics on /metrics");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, engine.clone()));
                }
                Err(e) => warn!(error = %e, "metrics accept failed"),
            }
        }
    });
    Ok(())
}

async fn serve(mut stream: TcpStream, engine: mpsc::Sender<Incoming>) {
    let mut request = Vec::new();
    let read = timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        debug!("metrics request incomplete or too slow");
        return;
    }
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) =
        if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
            match render(&engine).await {
                Some(text) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
                None => (
                    "503 Service Unavailable",
                    "text/plain",
                    "engine busy\n".to_string(),
                ),
            }
        } else {
            (
                "404 Not Found",
                "text/plain",
                "leakmon serves /metrics only\n".to_string(),
            )
        };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
}

async fn render(engine: &mpsc::Sender<Incoming>) -> Option<String> {
    let (reply, answer) = oneshot::channel();
    engine
        .send(Incoming {
            request: Request::Metrics,
            reply,
        })
        .await
        .ok()?;
    let response = timeout(REQUEST_TIMEOUT, answer).await.ok()?.ok()?;
    response.data?.as_str().map(str::to_string)
}
