//! Once a tick: sample every watched process, run the detectors, move the
//! alert lifecycle on and hand what changed to the sinks. Also the
//! configuration reload (SIGHUP).

use std::collections::HashMap;

use tracing::{debug, error, info, warn};

use super::{Engine, EngineCounters};
use crate::{
    alerts::{self, Alert, ProcessRef, sinks::Sinks},
    config::Config,
    detect::{
        self, History, Input, Limits, Rules,
        history::{MemorySample, Sample},
    },
    fdkind::FdKind,
    ledger::{Ledger, Process},
    logscan::{LogTails, Sighting, journal::Journal},
    proc, redact, time,
};

const NS: u64 = 1_000_000_000;
/// Limits change rarely (pids.current aside); they are re-read this often.
const LIMITS_EVERY_NS: u64 = 2 * NS;

/// What the detectors need besides the ledger.
pub struct Alerting {
    pub histories: detect::history::Histories,
    limits: HashMap<u32, (u64, Limits)>,
    logs: HashMap<u32, LogTails>,
    pub journal: Journal,
    pub book: alerts::Book,
    pub sinks: Sinks,
}

pub fn host_name(config: &Config) -> String {
    config.alerts.host.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string())
    })
}

impl Alerting {
    pub fn new(config: &Config) -> anyhow::Result<Alerting> {
        Ok(Alerting {
            histories: Default::default(),
            limits: HashMap::new(),
            logs: HashMap::new(),
            journal: Journal::default(),
            book: alerts::Book::new(host_name(config), config.alerts.resend_interval_s),
            sinks: Sinks::new(&config.alerts)?,
        })
    }
}

/// Adds a memory sample to `history` when one is due. A process whose
/// statm cannot be read (it is exiting) misses one: that only thins the
/// series, and the rule still needs a sample in every quarter.
fn sample_memory(history: &mut History, pid: u32, process: &Process, rules: &Rules, now: u64) {
    let window_s = rules.memory_leak.window_s;
    let every = MemorySample::every_ns(window_s);
    if !rules.memory_leak.enabled || !history.memory_due(now, every) {
        return;
    }
    match proc::anon_resident_bytes(pid) {
        Ok(anon_bytes) => {
            let sample = MemorySample {
                ts_ns: now,
                anon_bytes,
                requests: process.calls.parse.requests,
            };
            history.push_memory(sample, window_s * NS + 2 * every);
        }
        Err(e) => debug!(pid, error = %e, "no memory sample"),
    }
}

/// Reads what the process appended to its logs since the last tick (at most
/// `left` bytes, lowered by what it reads) and records the lines with a
/// secret in them.
fn scan_logs(
    tails: &mut LogTails,
    history: &mut History,
    process: &Process,
    rules: &Rules,
    now: u64,
    left: &mut u64,
    counters: &mut EngineCounters,
) {
    let rule = &rules.secret_in_log;
    if !rule.enabled {
        return;
    }
    let files = process
        .fds
        .iter()
        .filter(|(_, entry)| entry.kind == FdKind::File)
        .map(|(fd, entry)| (*fd, entry.birth.ts_ns));
    let scan = tails.scan(process.pid, files, left);
    count_log_bytes(counters, scan.bytes_scanned, scan.bytes_skipped);
    history.record_log_secrets(&scan.sightings, now, (rule.quiet_s + 10) * NS);
}

pub(super) fn count_log_bytes(counters: &mut EngineCounters, scanned: u64, skipped: u64) {
    counters.log_bytes_scanned += scanned;
    if skipped > 0 && counters.log_bytes_skipped == 0 {
        warn!(
            bytes = skipped,
            "logs grow faster than rules.secret_in_log.scan_bytes_per_s: text jumped over unread \
             (counted in status as engine.log_bytes_skipped; logged once)"
        );
    }
    counters.log_bytes_skipped += skipped;
}

/// The journal entries of the watched processes since the last tick, with a
/// secret in them, by pid.
fn scan_journal(
    journal: &mut Journal,
    pids: Vec<u32>,
    rules: &Rules,
    now: u64,
    counters: &mut EngineCounters,
) -> HashMap<u32, Vec<Sighting>> {
    let rule = &rules.secret_in_log;
    let pids = if rule.enabled && rule.journal {
        pids
    } else {
        Vec::new()
    };
    let found = journal.poll(&pids, now, rule.scan_bytes_per_s);
    count_log_bytes(counters, found.bytes_scanned, found.bytes_skipped);
    let mut by_pid: HashMap<u32, Vec<Sighting>> = HashMap::new();
    for (pid, sighting) in found.sightings {
        by_pid.entry(pid).or_default().push(sighting);
    }
    by_pid
}

/// What the processes wrote to their log streams since the last tick, with
/// a secret in it, by pid (scanned as the probes shipped it).
fn take_stream_sightings(ledger: &mut Ledger, counters: &mut EngineCounters) -> HashMap<u32, Vec<Sighting>> {
    let mut by_pid = HashMap::new();
    for (pid, process) in &mut ledger.processes {
        let (sightings, scanned, uncounted) = process.log_streams.take();
        counters.log_bytes_scanned += scanned;
        counters.log_lines_uncounted += uncounted;
        if !sightings.is_empty() {
            by_pid.insert(*pid, sightings);
        }
    }
    by_pid
}

impl Engine {
    pub(super) fn detect(&mut self) {
        let now = time::boot_ns();
        let keep_ns = (self.config.rules.longest_window_s() + 10) * NS;
        let alerting = &mut self.alerting;
        let mut out: Vec<Alert> = Vec::new();
        // The engine reads logs between drains: a bounded amount per tick.
        let mut log_bytes_left = self.config.rules.secret_in_log.scan_bytes_per_s;
        let mut pids: Vec<u32> = self.ledger.processes.keys().copied().collect();
        pids.sort_unstable();
        let rules = &self.config.rules;
        let mut journal = scan_journal(&mut alerting.journal, pids, rules, now, &mut self.counters);
        let mut streamed = take_stream_sightings(&mut self.ledger, &mut self.counters);
        for (pid, process) in &self.ledger.processes {
            let history = alerting.histories.entry(*pid).or_default();
            history.push(Sample::of(&self.ledger, process, now), keep_ns);
            sample_memory(history, *pid, process, &self.config.rules, now);
            let tails = alerting.logs.entry(*pid).or_default();
            scan_logs(
                tails,
                history,
                process,
                &self.config.rules,
                now,
                &mut log_bytes_left,
                &mut self.counters,
            );
            for sightings in [journal.remove(pid), streamed.remove(pid)].into_iter().flatten() {
                history.record_log_secrets(&sightings, now, (rules.secret_in_log.quiet_s + 10) * NS);
            }
            let limits = alerting
                .limits
                .entry(*pid)
                .or_insert_with(|| (now, Limits::read(*pid, &process.cmdline)));
            if now.saturating_sub(limits.0) >= LIMITS_EVERY_NS {
                limits.0 = now;
                limits.1.refresh(*pid);
            }
            let input = Input {
                ledger: &self.ledger,
                process,
                history,
                limits: &limits.1,
                labels: &self.labels,
                rules: &self.config.rules,
                now_ns: now,
            };
            let findings = detect::evaluate(&input);
            let who = ProcessRef {
                pid: *pid,
                name: process.comm.clone(),
                cmdline: redact::cmdline(&process.cmdline),
                placement: limits.1.placement.clone(),
            };
            out.extend(alerting.book.update(&who, findings, now));
        }
        for pid in alerting.book.pids() {
            if !self.ledger.processes.contains_key(&pid) {
                out.extend(alerting.book.process_gone(pid));
            }
        }
        let watched = &self.ledger.processes;
        alerting.histories.retain(|pid, _| watched.contains_key(pid));
        alerting.limits.retain(|pid, _| watched.contains_key(pid));
        alerting.logs.retain(|pid, _| watched.contains_key(pid));
        for alert in &out {
            info!(
                rule = alert.rule.name(),
                status = ?alert.status,
                pid = alert.process.pid,
                key = %alert.key,
                summary = %alert.summary,
                "alert"
            );
        }
        alerting.sinks.emit(&out);
    }

    /// SIGHUP: reopen the alerts file; take the new config if it is valid.
    pub(super) fn reload(&mut self, load: &dyn Fn() -> anyhow::Result<Config>) {
        self.alerting.sinks.reopen();
        let new = match load() {
            Ok(new) => new,
            Err(e) => {
                error!(error = %format!("{e:#}"), "config reload rejected; the running config stays");
                return;
            }
        };
        let labels = match crate::labels::Labels::new(&new.endpoints) {
            Ok(labels) => labels,
            Err(e) => {
                error!(error = %e, "config reload rejected; the running config stays");
                return;
            }
        };
        let old = &self.config;
        for (section, changed) in [
            ("discovery", old.discovery != new.discovery),
            ("probes", old.probes != new.probes),
            ("daemon", old.daemon != new.daemon),
            (
                "alerts.metrics_listen",
                old.alerts.metrics_listen != new.alerts.metrics_listen,
            ),
        ] {
            if changed {
                warn!(
                    section,
                    "changed in the config file: takes effect at the next restart"
                );
            }
        }
        let sinks_changed = (old.alerts.stdout, &old.alerts.file, &old.alerts.alertmanager_url)
            != (new.alerts.stdout, &new.alerts.file, &new.alerts.alertmanager_url);
        if sinks_changed {
            match Sinks::new(&new.alerts) {
                Ok(mut sinks) => {
                    // The new sinks learn what is firing.
                    sinks.emit(&self.alerting.book.firing());
                    self.alerting.sinks = sinks;
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), "config reload rejected: new alert sinks failed; the running config stays");
                    return;
                }
            }
        }
        self.alerting
            .book
            .set_resend_interval(new.alerts.resend_interval_s);
        self.labels = labels;
        // Only what takes effect now; the rest waits for a restart (logged above).
        let metrics_listen = self.config.alerts.metrics_listen;
        self.probes.set_log_budget(super::log_bytes_per_cpu_s(&new.rules));
        self.config.rules = new.rules;
        self.config.endpoints = new.endpoints;
        self.config.alerts = crate::config::Alerts {
            metrics_listen,
            ..new.alerts
        };
        info!("config reloaded: rules, endpoints and alert sinks");
    }
}
