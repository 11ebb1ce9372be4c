//! Prometheus text exposition of the daemon's state. Names follow the
//! OpenTelemetry semantic conventions where one exists
//! (`process_unix_file_descriptor_count`, `process_thread_count`); label
//! sets are bounded: endpoints appear by label (unlabelled ones as
//! `other`), calls by kind and status.

use std::{collections::BTreeMap, fmt::Write as _};

use monitor_common::TCP_CLOSE;

use super::Engine;
use crate::{
    calls::loops::LoopKind,
    detect::Rule,
    ledger::sockets::{Histogram, LATENCY_BUCKETS_MS, remote_of},
    sockdiag::tcp_state_name,
    time,
};

/// Builds one exposition: HELP and TYPE once per family, then its samples.
#[derive(Default)]
struct Exposition {
    families: BTreeMap<&'static str, (&'static str, &'static str, Vec<String>)>,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Exposition {
    fn add(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        pairs: &[(&str, &str)],
        value: f64,
    ) {
        let family = self.families.entry(name).or_insert((kind, help, Vec::new()));
        family.2.push(format!("{name}{} {value}", labels(pairs)));
    }

    fn histogram(&mut self, name: &'static str, help: &'static str, pairs: &[(&str, &str)], h: &Histogram) {
        let family = self
            .families
            .entry(name)
            .or_insert(("histogram", help, Vec::new()));
        let mut cumulative = 0;
        for (i, bound_ms) in LATENCY_BUCKETS_MS.iter().enumerate() {
            cumulative += h.buckets.get(i).copied().unwrap_or(0);
            let le = format!("{}", bound_ms / 1000.0);
            let mut with_le = pairs.to_vec();
            with_le.push(("le", &le));
            family
                .2
                .push(format!("{name}_bucket{} {cumulative}", labels(&with_le)));
        }
        let mut with_inf = pairs.to_vec();
        with_inf.push(("le", "+Inf"));
        family
            .2
            .push(format!("{name}_bucket{} {}", labels(&with_inf), h.count));
        family
            .2
            .push(format!("{name}_sum{} {}", labels(pairs), h.sum_ms / 1000.0));
        family
            .2
            .push(format!("{name}_count{} {}", labels(pairs), h.count));
    }

    fn render(self) -> String {
        let mut out = String::new();
        for (name, (kind, help, samples)) in self.families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for sample in samples {
                out.push_str(&sample);
                out.push('\n');
            }
        }
        out
    }
}

impl Engine {
    pub(super) fn metrics(&self) -> String {
        let mut x = Exposition::default();
        let now = time::boot_ns();
        for process in self.ledger.processes.values() {
            let pid = process.pid.to_string();
            let who = [("pid", pid.as_str()), ("process", process.comm.as_str())];
            let mut oldest: BTreeMap<&str, u64> = BTreeMap::new();
            for entry in process.fds.values() {
                let born = oldest.entry(entry.kind.name()).or_insert(entry.birth.ts_ns);
                *born = (*born).min(entry.birth.ts_ns);
            }
            for (kind, n) in process.counts() {
                let l = [who[0], who[1], ("kind", kind.name())];
                x.add(
                    "process_unix_file_descriptor_count",
                    "gauge",
                    "Open fds of a watched process, by kind.",
                    &l,
                    n as f64,
                );
            }
            for (kind, born) in oldest {
                let l = [who[0], who[1], ("kind", kind)];
                x.add(
                    "leakmon_oldest_fd_age_seconds",
                    "gauge",
                    "Age of the oldest open fd of each kind.",
                    &l,
                    time::age_s(born, now),
                );
            }
            x.add(
                "process_thread_count",
                "gauge",
                "Threads of a watched process.",
                &who,
                process.threads.len() as f64,
            );
            let history = self.alerting.histories.get(&process.pid);
            if let Some(memory) = history.and_then(|h| h.memory.back()) {
                x.add(
                    "process_anon_memory_bytes",
                    "gauge",
                    "Resident anonymous memory of a watched process, as memory_leak last sampled it.",
                    &who,
                    memory.anon_bytes as f64,
                );
            }
            let mut sockets: BTreeMap<(String, &str), u64> = BTreeMap::new();
            for inode in process.fds.sockets() {
                let Some(socket) = self.ledger.sockets.get(&inode) else {
                    continue;
                };
                let (Some(tuple), Some(state)) = (&socket.tuple, socket.state) else {
                    continue;
                };
                if state == TCP_CLOSE {
                    continue;
                }
                let endpoint = self
                    .labels
                    .label(&remote_of(tuple))
                    .unwrap_or("other")
                    .to_string();
                *sockets.entry((endpoint, tcp_state_name(state))).or_default() += 1;
            }
            for ((endpoint, state), n) in sockets {
                let l = [who[0], who[1], ("endpoint", endpoint.as_str()), ("state", state)];
                x.add(
                    "leakmon_tcp_sockets",
                    "gauge",
                    "TCP sockets of a watched process by endpoint label and state.",
                    &l,
                    n as f64,
                );
            }
            let mut connects: BTreeMap<(&str, &str), u64> = BTreeMap::new();
            for (remote, stats) in &process.endpoints {
                let endpoint = self.labels.label(remote).unwrap_or("other");
                for (outcome, n) in [
                    ("established", stats.established),
                    ("refused", stats.refused),
                    ("timeout", stats.timeouts),
                    ("error", stats.errors),
                ] {
                    *connects.entry((endpoint, outcome)).or_default() += n;
                }
            }
            for ((endpoint, outcome), n) in connects {
                let l = [who[0], who[1], ("endpoint", endpoint), ("outcome", outcome)];
                x.add(
                    "leakmon_connects_total",
                    "counter",
                    "Outcomes of TCP connects by endpoint label.",
                    &l,
                    n as f64,
                );
            }
            let calls = &process.calls;
            let mut by_kind: BTreeMap<&str, Histogram> = BTreeMap::new();
            for ((kind, status), stats) in &calls.stats {
                let status = if *status == 0 {
                    "none".to_string()
                } else {
                    status.to_string()
                };
                let l = [who[0], who[1], ("kind", kind.name()), ("status", status.as_str())];
                x.add(
                    "leakmon_ironic_calls_total",
                    "counter",
                    "API calls by kind and HTTP status (none: no answer).",
                    &l,
                    stats.count as f64,
                );
                by_kind.entry(kind.name()).or_default().merge(&stats.latency);
            }
            for (kind, h) in &by_kind {
                let l = [who[0], who[1], ("kind", *kind)];
                x.histogram(
                    "leakmon_ironic_call_duration_seconds",
                    "Latency of answered API calls by kind.",
                    &l,
                    h,
                );
            }
            x.add(
                "leakmon_ironic_calls_in_flight",
                "gauge",
                "API calls waiting for an answer.",
                &who,
                calls.in_flight().count() as f64,
            );
            let mut loops: BTreeMap<LoopKind, u64> = BTreeMap::new();
            for running in calls.loops.active.values() {
                *loops.entry(running.kind).or_default() += 1;
            }
            for (kind, n) in loops {
                let name = serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let l = [who[0], who[1], ("loop", name.as_str())];
                x.add(
                    "leakmon_poll_loops_active",
                    "gauge",
                    "nova wait loops polling now, by kind.",
                    &l,
                    n as f64,
                );
            }
        }
        self.daemon_metrics(&mut x);
        x.render()
    }

    fn daemon_metrics(&self, x: &mut Exposition) {
        // Which build runs on which kernel, host by host (the usual `_build_info` join target).
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        x.add(
            "leakmon_build_info",
            "gauge",
            "1, labelled with the daemon's version and the kernel release it runs on.",
            &[("version", env!("CARGO_PKG_VERSION")), ("kernel", kernel.trim())],
            1.0,
        );
        let firing = self.alerting.book.firing_by_rule();
        for rule in Rule::ALL {
            let l = [("rule", rule.name())];
            x.add(
                "leakmon_alerts_firing",
                "gauge",
                "Alerts firing now, by rule.",
                &l,
                firing.get(&rule).copied().unwrap_or(0) as f64,
            );
            let fired = self.alerting.book.fired_total.get(&rule).copied().unwrap_or(0);
            x.add(
                "leakmon_alerts_fired_total",
                "counter",
                "Alerts that started firing, by rule.",
                &l,
                fired as f64,
            );
        }
        x.add(
            "leakmon_watched_processes",
            "gauge",
            "Processes the daemon watches.",
            &[],
            self.ledger.processes.len() as f64,
        );
        for hook in &self.probes.hooks {
            x.add(
                "leakmon_hook_attached",
                "gauge",
                "1 when the kernel hook is attached, 0 when it could not be (see `leakmon status`).",
                &[("program", hook.program), ("tracepoint", &hook.tracepoint)],
                if hook.attached { 1.0 } else { 0.0 },
            );
        }
        let attached = self.probes.hooks.iter().filter(|h| h.attached).count();
        x.add(
            "leakmon_hooks_attached",
            "gauge",
            "Kernel hooks attached.",
            &[],
            attached as f64,
        );
        x.add(
            "leakmon_hooks",
            "gauge",
            "Kernel hooks leakmon has.",
            &[],
            self.probes.hooks.len() as f64,
        );
        let kernel = self.probes.counters();
        x.add(
            "leakmon_ring_events_lost_total",
            "counter",
            "Records the ring buffer had no room for.",
            &[],
            kernel.lost_total as f64,
        );
        x.add(
            "leakmon_short_lived_fds_total",
            "counter",
            "fds closed while the kernel still held their creation back: neither was shipped.",
            &[],
            kernel.short_lived_fds as f64,
        );
        x.add(
            "leakmon_tracking_full_total",
            "counter",
            "TCP sockets or socket fds the probes could not track: their kernel map was full.",
            &[],
            kernel.tracking_full as f64,
        );
        x.add(
            "leakmon_ring_records_total",
            "counter",
            "Records read from the ring buffer.",
            &[],
            self.counters.records as f64,
        );
        x.add(
            "leakmon_decode_errors_total",
            "counter",
            "Malformed ring-buffer records dropped.",
            &[],
            self.counters.decode_errors as f64,
        );
        for (result, bytes) in [
            ("scanned", self.counters.log_bytes_scanned),
            ("skipped", self.counters.log_bytes_skipped),
        ] {
            x.add(
                "leakmon_log_scan_bytes_total",
                "counter",
                "New log text read for secret_in_log, and jumped over beyond its scan_bytes_per_s.",
                &[("result", result)],
                bytes as f64,
            );
        }
        x.add(
            "leakmon_reconcile_after_loss_total",
            "counter",
            "Reconciliations forced by lost events.",
            &[],
            self.counters.reconcile_after_loss as f64,
        );
        let c = &self.ledger.counters;
        for (what, n) in [
            ("fds_added", c.reconcile_fds_added),
            ("fds_removed", c.reconcile_fds_removed),
            ("kinds_fixed", c.reconcile_kinds_fixed),
            ("threads_added", c.reconcile_threads_added),
            ("threads_removed", c.reconcile_threads_removed),
            ("socket_states", c.socket_states_fixed),
        ] {
            x.add(
                "leakmon_reconcile_fixes_total",
                "counter",
                "Ledger repairs from /proc and sock_diag.",
                &[("what", what)],
                n as f64,
            );
        }
        let in_flight_dropped: u64 = self
            .ledger
            .processes
            .values()
            .map(|p| p.calls.parse.in_flight_dropped)
            .sum();
        for (what, n) in [
            ("endpoints", c.endpoints_evicted),
            ("calls_in_flight", in_flight_dropped),
            ("watched_processes", c.processes_refused),
        ] {
            x.add(
                "leakmon_evictions_total",
                "counter",
                "Entries dropped at a hard cap (per-process endpoints and calls in flight; processes \
                 beyond discovery.max_processes).",
                &[("what", what)],
                n as f64,
            );
        }
        let sinks = &self.alerting.sinks;
        x.add(
            "leakmon_alerts_emitted_total",
            "counter",
            "Alert lines emitted (firing, re-sent, resolved).",
            &[],
            sinks.counters.alerts_emitted as f64,
        );
        x.add(
            "leakmon_alert_write_errors_total",
            "counter",
            "NDJSON alert lines that could not be written.",
            &[],
            sinks.counters.ndjson_write_errors as f64,
        );
        if let Some(am) = sinks.alertmanager_counters() {
            x.add(
                "leakmon_alertmanager_posts_total",
                "counter",
                "POSTs to Alertmanager.",
                &[("result", "ok")],
                am.posts_ok as f64,
            );
            x.add(
                "leakmon_alertmanager_posts_total",
                "counter",
                "POSTs to Alertmanager.",
                &[("result", "failed")],
                am.posts_failed as f64,
            );
            x.add(
                "leakmon_alertmanager_dropped_total",
                "counter",
                "Alerts dropped before reaching Alertmanager.",
                &[],
                am.dropped as f64,
            );
        }
        if let Some((rss, cpu_s)) = own_usage() {
            x.add(
                "process_resident_memory_bytes",
                "gauge",
                "The daemon's resident memory.",
                &[],
                rss as f64,
            );
            x.add(
                "process_cpu_seconds_total",
                "counter",
                "The daemon's user and system CPU time.",
                &[],
                cpu_s,
            );
        }
    }
}

fn own_usage() -> Option<(u64, f64)> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let tick = procfs::ticks_per_second() as f64;
    let rss = stat.rss * procfs::page_size();
    Some((rss, (stat.utime + stat.stime) as f64 / tick))
}
