//! Alertmanager API v2 sink: a thread that POSTs `/api/v2/alerts`, re-sends
//! firing alerts periodically (Alertmanager resolves alerts that are not
//! re-sent within its resolve_timeout), sends resolutions with `endsAt`,
//! and retries with backoff. The queue from the engine is bounded; what
//! does not fit is dropped and counted, never blocking the engine.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

use super::{Alert, Status};
use crate::detect::Rule;

const QUEUE: usize = 1024;
/// Alerts waiting for a successful POST at most. Beyond it the first in
/// (rule, pid, key) order are dropped and counted: a firing one goes again
/// with the next re-send, a dropped resolution takes effect when
/// Alertmanager's resolve_timeout runs out.
const MAX_PENDING: usize = 4096;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub posts_ok: u64,
    pub posts_failed: u64,
    pub alerts_posted: u64,
    /// Dropped because the queue or the pending set was full.
    pub dropped: u64,
}

#[derive(Default)]
struct Shared {
    posts_ok: AtomicU64,
    posts_failed: AtomicU64,
    alerts_posted: AtomicU64,
    dropped: AtomicU64,
}

pub struct Handle {
    queue: SyncSender<Alert>,
    shared: Arc<Shared>,
}

impl Handle {
    pub fn send(&self, alert: Alert) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.queue.try_send(alert) {
            self.shared.dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn counters(&self) -> Counters {
        Counters {
            posts_ok: self.shared.posts_ok.load(Relaxed),
            posts_failed: self.shared.posts_failed.load(Relaxed),
            alerts_posted: self.shared.alerts_posted.load(Relaxed),
            dropped: self.shared.dropped.load(Relaxed),
        }
    }
}

/// `http://host:port[/prefix]`, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub authority: String,
    pub prefix: String,
}

pub fn parse_url(url: &str) -> anyhow::Result<Target> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("only http:// URLs are supported (put a TLS proxy in front for https), got {url:?}");
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains('@') {
        bail!("expected http://host:port[/prefix], got {url:?}");
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        authority,
        prefix: match path.trim_end_matches('/') {
            "" => String::new(),
            path => format!("/{path}"),
        },
    })
}

pub fn spawn(url: &str, resend_s: u64) -> anyhow::Result<Handle> {
    let target = parse_url(url)?;
    let (queue, rx) = sync_channel(QUEUE);
    let shared = Arc::new(Shared::default());
    let worker = Worker {
        target,
        resend: Duration::from_secs(resend_s),
        shared: shared.clone(),
        firing: BTreeMap::new(),
        pending: BTreeMap::new(),
    };
    std::thread::Builder::new()
        .name("alertmanager".to_string())
        .spawn(move || worker.run(rx))
        .context("starting the Alertmanager sender")?;
    info!(url, "sending alerts to Alertmanager");
    Ok(Handle { queue, shared })
}

type Identity = (Rule, u32, String);

struct Worker {
    target: Target,
    resend: Duration,
    shared: Arc<Shared>,
    firing: BTreeMap<Identity, Alert>,
    pending: BTreeMap<Identity, Alert>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Alert>) {
        let mut backoff = Duration::ZERO;
        let mut next_try = Instant::now();
        let mut last_sent = Instant::now();
        loop {
            let now = Instant::now();
            let wait = if self.pending.is_empty() {
                self.resend.saturating_sub(now - last_sent)
            } else {
                next_try.saturating_duration_since(now)
            };
            match rx.recv_timeout(wait) {
                Ok(alert) => {
                    self.take(alert);
                    while let Ok(alert) = rx.try_recv() {
                        self.take(alert);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.pending.is_empty() && last_sent.elapsed() >= self.resend {
                self.pending = self.firing.clone();
                last_sent = Instant::now();
            }
            if self.pending.is_empty() || Instant::now() < next_try {
                continue;
            }
            let batch: Vec<&Alert> = self.pending.values().collect();
            match post(&self.target, &batch) {
                Ok(()) => {
                    self.shared.posts_ok.fetch_add(1, Relaxed);
                    self.shared.alerts_posted.fetch_add(batch.len() as u64, Relaxed);
                    self.pending.clear();
                    backoff = Duration::ZERO;
                    last_sent = Instant::now();
                }
                Err(e) => {
                    let failures = self.shared.posts_failed.fetch_add(1, Relaxed) + 1;
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                    next_try = Instant::now() + backoff;
                    if failures.is_power_of_two() {
                        warn!(error = %e, failures, retry_in_s = backoff.as_secs(), "Alertmanager POST failed");
                    }
                }
            }
        }
    }

    fn take(&mut self, alert: Alert) {
        let id = alert.identity();
        match alert.status {
            Status::Firing => {
                self.firing.insert(id.clone(), alert.clone());
            }
            Status::Resolved => {
                self.firing.remove(&id);
            }
        }
        self.pending.insert(id, alert);
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_first();
            self.shared.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// The API v2 form of an alert. `pid` and `key` join the labels so that
/// Alertmanager keeps alerts of different processes and keys apart.
pub fn am_alert(alert: &Alert) -> serde_json::Value {
    let mut labels = alert.labels.clone();
    labels.insert("pid".to_string(), alert.process.pid.to_string());
    labels.insert("key".to_string(), alert.key.clone());
    let mut value = json!({
        "labels": labels,
        "annotations": {
            "summary": alert.summary,
            "evidence": alert.evidence.to_string(),
        },
        "startsAt": alert.starts_at,
        "generatorURL": format!("http://{}/leakmon/{}/{}", alert.host, alert.rule.name(), alert.process.pid),
    });
    if let Some(ends_at) = &alert.ends_at {
        value["endsAt"] = json!(ends_at);
    }
    value
}

fn post(target: &Target, alerts: &[&Alert]) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&alerts.iter().map(|a| am_alert(a)).collect::<Vec<_>>())?;
    let address = target
        .authority
        .to_socket_addrs()?
        .next()
        .context("the Alertmanager host has no address")?;
    let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = format!(
        "POST {}/api/v2/alerts HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: leakmon/{}\r\n\r\n",
        target.prefix,
        target.authority,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer)?;
    let status_line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    let status_line = String::from_utf8_lossy(status_line);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with('2') {
        bail!("Alertmanager answered {:?}", status_line.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_with_an_optional_prefix() {
        let t = parse_url("http://127.0.0.1:9093").unwrap();
        assert_eq!((t.authority.as_str(), t.prefix.as_str()), ("127.0.0.1:9093", ""));
        let t = parse_url("http://am.example/alertmanager/").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.prefix.as_str()),
            ("am.example:80", "/alertmanager")
        );
        assert!(parse_url("https://am:9093").is_err());
        assert!(parse_url("http://user:pw@am:9093").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
