//! Calls, loops and call statistics as JSON (`leakmon calls`, and the call
//! references in births and sockets).

use serde::{Deserialize, Serialize};

use super::{Call, CallEnd, CallKind, CallLog, CallRef, ParseCounters, PollLoop, loops::LoopKind};
use crate::{labels::Labels, time};

/// A call in full, whitelisted fields only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallView {
    pub id: u64,
    pub kind: CallKind,
    pub method: String,
    pub path: String,
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub tls: bool,
    pub tid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<u32>,
    pub started: String,
    /// In flight: how long it has waited so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microversion: Option<String>,
    /// A token header was sent (never its value).
    pub token: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<CallEnd>,
}

impl CallView {
    pub fn of(call: &Call, labels: &Labels, now_ns: u64) -> Self {
        let response = call.response.as_ref();
        CallView {
            id: call.id,
            kind: call.kind,
            method: call.request.method.clone(),
            path: call.request.path.clone(),
            pattern: call.pattern.clone(),
            node: call.node.clone(),
            instance: call.instance.clone(),
            target: call.target.map(str::to_string),
            endpoint: call.endpoint.map(|e| e.to_string()),
            label: call.endpoint.and_then(|e| labels.label(&e)).map(str::to_string),
            tls: call.tls,
            tid: call.tid,
            fd: call.fd,
            started: time::rfc3339_of_boot(call.started_ns),
            age_s: call
                .finished_ns
                .is_none()
                .then(|| time::age_s(call.started_ns, now_ns)),
            latency_ms: call
                .finished_ns
                .map(|end| end.saturating_sub(call.started_ns) as f64 / 1e6),
            status: response.map(|r| r.status),
            request_id: response
                .and_then(|r| r.headers.request_id.clone())
                .or_else(|| call.request.headers.request_id.clone()),
            microversion: response
                .and_then(|r| r.headers.microversion.clone())
                .or_else(|| call.request.headers.microversion.clone()),
            token: call.request.token,
            end: call.end,
        }
    }
}

/// A call as a birth or a socket refers to it: its kind always, the rest
/// while the call is still in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallRefView {
    pub id: u64,
    pub kind: CallKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl CallRefView {
    pub fn of(reference: &CallRef, log: &CallLog) -> Self {
        let call = log.find(reference.id);
        CallRefView {
            id: reference.id,
            kind: reference.kind,
            pattern: call.map(|c| format!("{} {}", c.request.method, c.pattern)),
            node: call.and_then(|c| c.node.clone()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopView {
    pub kind: LoopKind,
    pub tid: u32,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The state change that started it.
    pub trigger: u64,
    pub polls: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<f64>,
    pub duration_s: f64,
    pub started: String,
    pub active: bool,
}

impl LoopView {
    fn of(poll: &PollLoop, active: bool) -> Self {
        LoopView {
            kind: poll.kind,
            tid: poll.tid,
            subject: poll.subject.clone(),
            node: poll.node.clone(),
            trigger: poll.trigger,
            polls: poll.polls,
            interval_s: poll.interval_ns().map(|ns| ns as f64 / 1e9),
            duration_s: poll.duration_ns() as f64 / 1e9,
            started: time::rfc3339_of_boot(poll.first_ns),
            active,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindStats {
    pub kind: CallKind,
    /// 0: no answer was seen (the connection closed, the call was dropped at
    /// the in-flight limit, or a later request showed its answer went unseen).
    pub status: u16,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
}

/// `leakmon calls`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallsView {
    pub pid: u32,
    pub in_flight: Vec<CallView>,
    /// Most recent last.
    pub recent: Vec<CallView>,
    pub loops: Vec<LoopView>,
    pub stats: Vec<KindStats>,
    pub parse: ParseCounters,
}

impl CallsView {
    pub fn of(pid: u32, log: &CallLog, labels: &Labels, now_ns: u64, recent: usize) -> Self {
        let skip = log.recent.len().saturating_sub(recent);
        let mut loops: Vec<LoopView> = log.loops.active.values().map(|l| LoopView::of(l, true)).collect();
        loops.extend(log.loops.done.iter().map(|l| LoopView::of(l, false)));
        loops.sort_by(|a, b| a.started.cmp(&b.started));
        CallsView {
            pid,
            in_flight: log.in_flight().map(|c| CallView::of(c, labels, now_ns)).collect(),
            recent: log
                .recent()
                .skip(skip)
                .map(|c| CallView::of(c, labels, now_ns))
                .collect(),
            loops,
            stats: log
                .stats
                .iter()
                .map(|((kind, status), s)| KindStats {
                    kind: *kind,
                    status: *status,
                    count: s.count,
                    latency_p50_ms: s.latency.quantile_ms(0.5),
                    latency_p99_ms: s.latency.quantile_ms(0.99),
                })
                .collect(),
            parse: log.parse.clone(),
        }
    }
}
