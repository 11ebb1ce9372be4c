//! Rules on the Ironic calls: hung calls, wait loops near exhaustion,
//! storms of conflicts, server errors.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Finding, Input, Rule, Severity, resources::SAMPLES, span};
use crate::{
    calls::{Call, CallEnd, CallKind, PollLoop, loops::LoopKind},
    ledger::comm_str,
    time,
};

const NS: u64 = 1_000_000_000;

/// A call to Ironic: to an endpoint labelled ironic-api, or of a kind only
/// Ironic serves (keystone's token calls are `unknown`).
fn is_ironic(input: &Input<'_>, call: &Call) -> bool {
    let labelled = call
        .endpoint
        .and_then(|e| input.labels.label(&e))
        .is_some_and(|l| l == "ironic-api");
    labelled || !matches!(call.kind, CallKind::Unknown | CallKind::VersionDiscovery)
}

fn endpoint_of(input: &Input<'_>, call: &Call) -> (String, Option<String>) {
    match call.endpoint {
        Some(e) => (input.endpoint_name(&e), Some(input.endpoint_label(&e))),
        None => ("Ironic".to_string(), None),
    }
}

pub fn call_hung(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.ironic_call_hung;
    let now = input.now_ns;
    let mut findings = Vec::new();
    for call in input.process.calls.in_flight() {
        let age_ns = now.saturating_sub(call.started_ns);
        if age_ns < rule.threshold_s * NS || !is_ironic(input, call) {
            continue;
        }
        let (endpoint, label) = endpoint_of(input, call);
        let node = call
            .node
            .as_ref()
            .map(|n| format!(" for node {n}"))
            .unwrap_or_default();
        findings.push(Finding {
            rule: Rule::IronicCallHung,
            key: format!("call-{}", call.id),
            severity: Severity::Warning,
            summary: format!(
                "{} has waited {} for {} to answer {} {}{node} (thread {}, no HTTP timeout)",
                input.who(),
                span(age_ns / NS),
                endpoint,
                call.request.method,
                call.pattern,
                call.tid
            ),
            evidence: json!({
                "call_id": call.id,
                "kind": call.kind,
                "method": call.request.method,
                "pattern": call.pattern,
                "node": call.node,
                "instance": call.instance,
                "tid": call.tid,
                "thread": comm_str(&input.process.thread_name(call.tid)),
                "fd": call.fd,
                "tls": call.tls,
                "endpoint": call.endpoint.map(|e| e.to_string()),
                "started": time::rfc3339_of_boot(call.started_ns),
                "age_s": time::age_s(call.started_ns, now),
                "threshold_s": rule.threshold_s,
            }),
            endpoint: label,
        });
    }
    findings
}

/// The most a loop of this kind may run (unbounded loops), in seconds.
fn max_s(input: &Input<'_>, kind: LoopKind) -> Option<u64> {
    let rule = &input.rules.ironic_poll_exhaustion;
    match kind {
        LoopKind::Unprovision => None,
        LoopKind::Deploy => Some(rule.deploy_max_s),
        LoopKind::Power => Some(rule.power_max_s),
        LoopKind::Rescue => Some(rule.rescue_max_s),
        LoopKind::Console => Some(rule.console_max_s),
        LoopKind::Provision => Some(rule.provision_max_s),
    }
}

pub fn poll_exhaustion(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.ironic_poll_exhaustion;
    let (retries, source) = match &input.limits.api_max_retries {
        Some((n, file)) => (*n, file.clone()),
        None => (rule.api_max_retries, "leakmon config".to_string()),
    };
    let max_polls = retries + 1;
    let fire_at = (f64::from(max_polls) * rule.ratio).ceil() as u32;
    let mut findings = Vec::new();
    for running in input.process.calls.loops.active.values() {
        let duration_s = running.duration_ns() / NS;
        let why = match max_s(input, running.kind) {
            None if running.polls >= fire_at => format!(
                "{} of its {max_polls} polls ([ironic]api_max_retries = {retries}); nova gives up after the last",
                running.polls
            ),
            Some(max) if duration_s >= max => format!(
                "it has polled for {} ({} polls), longer than the {} allowed for it",
                span(duration_s),
                running.polls,
                span(max)
            ),
            _ => continue,
        };
        findings.push(loop_finding(input, running, why, max_polls, &source));
    }
    findings
}

fn loop_finding(input: &Input<'_>, running: &PollLoop, why: String, max_polls: u32, source: &str) -> Finding {
    let kind = serde_json::to_value(running.kind).unwrap_or_default();
    let kind_name = kind.as_str().unwrap_or("loop").to_string();
    let node = running.node.as_deref().unwrap_or(&running.subject);
    Finding {
        rule: Rule::IronicPollExhaustion,
        key: format!("{}-{}", running.tid, running.subject),
        severity: if running.kind == LoopKind::Unprovision && running.polls >= max_polls {
            Severity::Critical
        } else {
            Severity::Warning
        },
        summary: format!(
            "{}'s {kind_name} wait loop on node {node} (thread {}) is near exhaustion: {why}",
            input.who(),
            running.tid
        ),
        evidence: json!({
            "loop": kind_name,
            "node": running.node,
            "subject": running.subject,
            "tid": running.tid,
            "polls": running.polls,
            "max_polls": (running.kind == LoopKind::Unprovision).then_some(max_polls),
            "api_max_retries_from": source,
            "interval_s": running.interval_ns().map(|ns| ns as f64 / 1e9),
            "duration_s": running.duration_ns() as f64 / 1e9,
            "started": time::rfc3339_of_boot(running.first_ns),
            "trigger_call_id": running.trigger,
        }),
        endpoint: None,
    }
}

/// A sample call of a rule on Ironic's answers, with what finds it in
/// Ironic's log (its request id).
fn answered_call(call: &Call) -> Value {
    json!({
        "call_id": call.id,
        "method": call.request.method,
        "pattern": call.pattern,
        "node": call.node,
        "status": call.response.as_ref().map(|r| r.status),
        "request_id": call.response.as_ref().and_then(|r| r.headers.request_id.clone()),
        "tid": call.tid,
        "time": time::rfc3339_of_boot(call.started_ns),
    })
}

pub fn conflict_storm(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.ironic_conflict_storm;
    let since = input.now_ns.saturating_sub(rule.window_s * NS);
    let mut by_key: BTreeMap<String, Vec<&Call>> = BTreeMap::new();
    for call in input.process.calls.recent().rev() {
        if call.started_ns < since {
            break;
        }
        let status = call.response.as_ref().map_or(0, |r| r.status);
        if !matches!(status, 409 | 503) || !is_ironic(input, call) {
            continue;
        }
        let key = match (&call.node, call.endpoint) {
            (Some(node), _) => format!("node {node}"),
            (None, Some(e)) => format!("endpoint {e}"),
            (None, None) => "Ironic".to_string(),
        };
        by_key.entry(key).or_default().push(call);
    }
    let mut findings = Vec::new();
    for (key, calls) in by_key {
        if calls.len() < rule.min_count as usize {
            continue;
        }
        let conflicts = calls
            .iter()
            .filter(|c| c.response.as_ref().is_some_and(|r| r.status == 409));
        let n409 = conflicts.count();
        let (_, label) = endpoint_of(input, calls[0]);
        let samples: Vec<Value> = calls.iter().take(SAMPLES).map(|c| answered_call(c)).collect();
        findings.push(Finding {
            rule: Rule::IronicConflictStorm,
            key: key.clone(),
            severity: Severity::Warning,
            summary: format!(
                "Ironic refused {} calls from {} on {key} in the last {} ({n409} × 409 Conflict, {} × 503)",
                calls.len(),
                input.who(),
                span(rule.window_s),
                calls.len() - n409
            ),
            evidence: json!({
                "on": key,
                "answers": calls.len(),
                "conflicts_409": n409,
                "unavailable_503": calls.len() - n409,
                "window_s": rule.window_s,
                "min_count": rule.min_count,
                "calls": samples,
            }),
            endpoint: label,
        });
    }
    findings
}

const UNANSWERED: &str = "unanswered";

/// A call Ironic failed: a server error (503, no free conductor, is the
/// conflict storm's), or its connection closed before any answer.
fn failed(call: &Call) -> bool {
    let status = call.response.as_ref().map_or(0, |r| r.status);
    (status >= 500 && status != 503) || call.end == Some(CallEnd::ConnectionClosed)
}

/// `ironic_call_errors`: Ironic failing nova's calls. nova catches them
/// broadly (a periodic task logs and carries on, a wait loop retries), so
/// nothing else may say that Ironic is failing; the request ids in the
/// evidence find the traceback in Ironic's log.
pub fn call_errors(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.ironic_call_errors;
    let since = input.now_ns.saturating_sub(rule.window_s * NS);
    let mut by_endpoint: BTreeMap<Option<std::net::SocketAddr>, Vec<&Call>> = BTreeMap::new();
    for call in input.process.calls.recent().rev() {
        if call.started_ns < since {
            break;
        }
        if failed(call) && is_ironic(input, call) {
            by_endpoint.entry(call.endpoint).or_default().push(call);
        }
    }
    let mut findings = Vec::new();
    for (endpoint, calls) in by_endpoint {
        if calls.len() < rule.min_count as usize {
            continue;
        }
        let (name, label) = endpoint_of(input, calls[0]);
        let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
        for call in &calls {
            let status = call
                .response
                .as_ref()
                .map_or(UNANSWERED.to_string(), |r| r.status.to_string());
            *statuses.entry(status).or_default() += 1;
        }
        let counts: Vec<String> = statuses
            .iter()
            .map(|(s, n)| {
                if s == UNANSWERED {
                    format!("{n} {s}")
                } else {
                    format!("{n} × {s}")
                }
            })
            .collect();
        let samples: Vec<Value> = calls.iter().take(SAMPLES).map(|c| answered_call(c)).collect();
        findings.push(Finding {
            rule: Rule::IronicCallErrors,
            key: endpoint.map_or_else(|| "unknown".to_string(), |e| e.to_string()),
            severity: Severity::Warning,
            summary: format!(
                "Ironic at {name} failed {} calls from {} in the last {} ({})",
                calls.len(),
                input.who(),
                span(rule.window_s),
                counts.join(", ")
            ),
            evidence: json!({
                "endpoint": endpoint.map(|e| e.to_string()),
                "label": label,
                "failed": calls.len(),
                "statuses": statuses,
                "window_s": rule.window_s,
                "min_count": rule.min_count,
                "calls": samples,
            }),
            endpoint: label,
        });
    }
    findings
}
