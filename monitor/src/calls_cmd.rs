//! `leakmon calls` as text.

use std::fmt::Write as _;

use crate::{
    calls::view::{CallView, CallsView},
    table::table,
};

fn call_row(call: &CallView) -> Vec<String> {
    let took = match (call.latency_ms, call.age_s) {
        (Some(ms), _) => format!("{ms:.1}ms"),
        (None, Some(age)) => format!("{age:.1}s so far"),
        _ => "-".into(),
    };
    let status = call.status.map_or_else(|| "-".to_string(), |s| s.to_string());
    let wire = if call.tls { "https" } else { "http" };
    let target = call
        .target
        .as_deref()
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    vec![
        call.id.to_string(),
        call.tid.to_string(),
        format!("{}{target}", call.kind.name()),
        status,
        took,
        wire.into(),
        format!("{} {}", call.method, call.path),
    ]
}

pub fn render(view: &CallsView) -> String {
    let mut out = String::new();
    let total: u64 = view.stats.iter().map(|s| s.count).sum();
    let _ = writeln!(
        out,
        "PID {}: {} in flight, {} loops, {total} calls answered or ended (parse: {} requests, {} responses, {} not HTTP)",
        view.pid,
        view.in_flight.len(),
        view.loops.len(),
        view.parse.requests,
        view.parse.responses,
        view.parse.not_http
    );
    let header = ["ID", "THREAD", "KIND", "STATUS", "TOOK", "WIRE", "REQUEST"]
        .map(String::from)
        .to_vec();
    if !view.in_flight.is_empty() {
        let mut rows = vec![header.clone()];
        rows.extend(view.in_flight.iter().map(call_row));
        let _ = write!(out, "\nIN FLIGHT\n{}", table(&rows));
    }
    if !view.loops.is_empty() {
        let mut rows = vec![
            [
                "KIND", "THREAD", "SUBJECT", "NODE", "POLLS", "EVERY", "FOR", "STATE",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for l in &view.loops {
            rows.push(vec![
                format!("{:?}", l.kind).to_lowercase(),
                l.tid.to_string(),
                l.subject.clone(),
                l.node.clone().unwrap_or_else(|| "-".into()),
                l.polls.to_string(),
                l.interval_s.map_or_else(|| "-".into(), |s| format!("{s:.1}s")),
                format!("{:.0}s", l.duration_s),
                if l.active { "polling" } else { "done" }.into(),
            ]);
        }
        let _ = write!(out, "\nLOOPS\n{}", table(&rows));
    }
    let mut rows = vec![
        ["KIND", "STATUS", "COUNT", "P50", "P99"]
            .map(String::from)
            .to_vec(),
    ];
    for s in &view.stats {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("≤{v}ms"));
        rows.push(vec![
            s.kind.name().into(),
            if s.status == 0 {
                "none".into()
            } else {
                s.status.to_string()
            },
            s.count.to_string(),
            ms(s.latency_p50_ms),
            ms(s.latency_p99_ms),
        ]);
    }
    let _ = write!(out, "\nBY KIND\n{}", table(&rows));
    if !view.recent.is_empty() {
        let mut rows = vec![header];
        rows.extend(view.recent.iter().map(call_row));
        let _ = write!(out, "\nRECENT\n{}", table(&rows));
    }
    out
}
