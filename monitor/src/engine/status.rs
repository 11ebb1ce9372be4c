//! `leakmon status`: what the daemon watches, which hooks it has, and every
//! counter of loss and repair.

use serde::{Deserialize, Serialize};

use super::{Engine, EngineCounters};
use crate::{
    ledger::{LedgerCounters, WatchReason},
    probes::{HookStatus, KernelCounters},
    time,
};

#[derive(Serialize)]
pub struct StatusView<'a> {
    pub version: &'static str,
    pub daemon_pid: u32,
    pub started: String,
    pub uptime_s: f64,
    pub tracefs_mounted_by_daemon: bool,
    /// Why the probes cannot attribute socket state changes (then states come from sock_diag only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_walk_missing: Option<&'a str>,
    pub hooks_attached: usize,
    pub hooks_total: usize,
    pub hooks: &'a [HookStatus],
    /// OpenSSL probes per watched process (HTTPS capture).
    pub tls: Vec<crate::probes::tls::TlsAttachment>,
    pub tls_attached_total: u64,
    pub tls_detached_total: u64,
    pub processes: Vec<ProcessSummary>,
    pub ledger: &'a LedgerCounters,
    pub kernel: KernelCounters,
    pub engine: &'a EngineCounters,
    pub probes: &'a crate::config::Probes,
    /// Alerts firing now by rule, and what the sinks did.
    pub alerts_firing: std::collections::BTreeMap<crate::detect::Rule, u64>,
    /// The `journalctl` that `secret_in_log` follows the journal with.
    pub journal: crate::logscan::journal::JournalStatus,
    pub alert_sinks: &'a crate::alerts::sinks::SinkCounters,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<crate::alerts::alertmanager::Counters>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    pub reason: WatchReason,
    pub fds: usize,
    pub threads: usize,
    pub watched_since: String,
    /// The log streams `secret_in_log` reads (stdout or stderr to a pipe or
    /// socket, syslog sockets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_streams: Vec<String>,
    /// Its pid namespace and container, when it runs in one.
    #[serde(flatten)]
    pub placement: crate::container::Placement,
}

impl Engine {
    pub(super) fn status(&self) -> StatusView<'_> {
        let now = time::boot_ns();
        let mut processes: Vec<ProcessSummary> = self
            .ledger
            .processes
            .values()
            .map(|p| ProcessSummary {
                pid: p.pid,
                comm: p.comm.clone(),
                reason: p.reason.clone(),
                fds: p.fds.len(),
                threads: p.threads.len(),
                watched_since: time::rfc3339_of_boot(p.watched_since_ns),
                log_streams: p.log_streams.names(),
                placement: crate::container::Placement::of(p.pid),
            })
            .collect();
        processes.sort_by_key(|p| p.pid);
        StatusView {
            version: env!("CARGO_PKG_VERSION"),
            daemon_pid: std::process::id(),
            started: time::rfc3339_of_boot(self.started_ns),
            uptime_s: time::age_s(self.started_ns, now),
            tracefs_mounted_by_daemon: self.probes.tracefs_mounted_by_us,
            socket_walk_missing: self.probes.socket_walk_missing.as_deref(),
            hooks_attached: self.probes.hooks.iter().filter(|h| h.attached).count(),
            hooks_total: self.probes.hooks.len(),
            hooks: &self.probes.hooks,
            tls: self.probes.tls.attachments(),
            tls_attached_total: self.probes.tls.attach_count,
            tls_detached_total: self.probes.tls.detach_count,
            processes,
            ledger: &self.ledger.counters,
            kernel: self.probes.counters(),
            engine: &self.counters,
            probes: &self.config.probes,
            alerts_firing: self.alerting.book.firing_by_rule(),
            journal: self.alerting.journal.status(),
            alert_sinks: &self.alerting.sinks.counters,
            alertmanager: self.alerting.sinks.alertmanager_counters(),
        }
    }

    /// The line `systemctl status` shows (sdnotify.rs).
    pub(super) fn status_line(&self) -> String {
        let firing: u64 = self.alerting.book.firing_by_rule().values().sum();
        let attached = self.probes.hooks.iter().filter(|h| h.attached).count();
        format!(
            "processes watched: {}; alerts firing: {firing}; hooks attached: {attached}/{}; records lost: {}",
            self.ledger.processes.len(),
            self.probes.hooks.len(),
            self.probes.counters().lost_total
        )
    }
}

/// What a reconciliation run repaired, as the difference of two counter sets.
pub fn fixes_since(before: &LedgerCounters, after: &LedgerCounters) -> serde_json::Value {
    serde_json::json!({
        "fds_added": after.reconcile_fds_added - before.reconcile_fds_added,
        "fds_removed": after.reconcile_fds_removed - before.reconcile_fds_removed,
        "kinds_fixed": after.reconcile_kinds_fixed - before.reconcile_kinds_fixed,
        "threads_added": after.reconcile_threads_added - before.reconcile_threads_added,
        "threads_removed": after.reconcile_threads_removed - before.reconcile_threads_removed,
    })
}

/// A status with every optional part set, as JSON: the README test checks
/// that its reference names each field.
#[cfg(test)]
pub(crate) fn example_json() -> serde_json::Value {
    use crate::{alerts::alertmanager, container::Placement, detect::Rule, probes::tls::TlsAttachment};
    let hooks = [HookStatus {
        program: "p",
        tracepoint: "t".into(),
        essential: true,
        attached: false,
        mode: Some("m"),
        error: Some("e".into()),
    }];
    let kernel = KernelCounters {
        lost: [("FdOpen".to_string(), 1)].into(),
        held_back: Some(Default::default()),
        ..KernelCounters::default()
    };
    let status = StatusView {
        version: "v",
        daemon_pid: 1,
        started: "t".into(),
        uptime_s: 1.0,
        tracefs_mounted_by_daemon: false,
        socket_walk_missing: Some("no BTF"),
        hooks_attached: 0,
        hooks_total: 1,
        hooks: &hooks,
        tls: vec![TlsAttachment {
            pid: 1,
            library: "l".into(),
            symbols: vec!["SSL_write"],
        }],
        tls_attached_total: 1,
        tls_detached_total: 0,
        processes: vec![ProcessSummary {
            pid: 1,
            comm: "c".into(),
            reason: WatchReason::Parent(2),
            fds: 1,
            threads: 1,
            watched_since: "t".into(),
            log_streams: vec!["stdout (pipe:[7])".into()],
            placement: Placement {
                ns_pid: Some(1),
                container_id: Some("c".into()),
            },
        }],
        ledger: &LedgerCounters::default(),
        kernel,
        engine: &EngineCounters::default(),
        probes: &crate::config::Probes::default(),
        alerts_firing: [(Rule::FdLeak, 1)].into(),
        journal: Default::default(),
        alert_sinks: &crate::alerts::sinks::SinkCounters::default(),
        alertmanager: Some(alertmanager::Counters::default()),
    };
    serde_json::to_value(status).expect("serializable")
}
