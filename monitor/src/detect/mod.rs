//! Detectors: pure functions of (ledger, history, limits, config, time)
//! that say what is wrong with a watched process right now. The alert
//! lifecycle (`crate::alerts`) turns their findings into firing and
//! resolved alerts.

mod calls;
pub mod config;
pub mod history;
pub mod limits;
mod logs;
mod memory;
mod network;
mod resources;
#[cfg(test)]
mod tests;
pub mod trend;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use self::{config::Rules, history::History, limits::Limits};
use crate::{labels::Labels, ledger::Ledger, ledger::Process};

/// The rule names are part of the output contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    FdLeak,
    SocketCloseWaitLeak,
    ThreadLeak,
    MemoryLeak,
    FdExhaustion,
    Emfile,
    ThreadExhaustion,
    IronicCallHung,
    IronicPollExhaustion,
    IronicConflictStorm,
    IronicCallErrors,
    ConnectionPoolSaturation,
    ConnectFailures,
    PlaintextToken,
    SecretInLog,
}

impl Rule {
    pub const ALL: [Rule; 15] = [
        Rule::FdLeak,
        Rule::SocketCloseWaitLeak,
        Rule::ThreadLeak,
        Rule::MemoryLeak,
        Rule::FdExhaustion,
        Rule::Emfile,
        Rule::ThreadExhaustion,
        Rule::IronicCallHung,
        Rule::IronicPollExhaustion,
        Rule::IronicConflictStorm,
        Rule::IronicCallErrors,
        Rule::ConnectionPoolSaturation,
        Rule::ConnectFailures,
        Rule::PlaintextToken,
        Rule::SecretInLog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::FdLeak => "fd_leak",
            Rule::SocketCloseWaitLeak => "socket_close_wait_leak",
            Rule::ThreadLeak => "thread_leak",
            Rule::MemoryLeak => "memory_leak",
            Rule::FdExhaustion => "fd_exhaustion",
            Rule::Emfile => "emfile",
            Rule::ThreadExhaustion => "thread_exhaustion",
            Rule::IronicCallHung => "ironic_call_hung",
            Rule::IronicPollExhaustion => "ironic_poll_exhaustion",
            Rule::IronicConflictStorm => "ironic_conflict_storm",
            Rule::IronicCallErrors => "ironic_call_errors",
            Rule::ConnectionPoolSaturation => "connection_pool_saturation",
            Rule::ConnectFailures => "connect_failures",
            Rule::PlaintextToken => "plaintext_token",
            Rule::SecretInLog => "secret_in_log",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One thing wrong with one process. (rule, key) identifies it while it lasts.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub rule: Rule,
    /// What within the process: an fd kind, an endpoint, a call, a loop.
    pub key: String,
    pub severity: Severity,
    /// One sentence a human acts on.
    pub summary: String,
    pub evidence: serde_json::Value,
    /// The endpoint's label (or address), for the alert's labels.
    pub endpoint: Option<String>,
}

/// Everything a detector may look at.
pub struct Input<'a> {
    pub ledger: &'a Ledger,
    pub process: &'a Process,
    pub history: &'a History,
    pub limits: &'a Limits,
    pub labels: &'a Labels,
    pub rules: &'a Rules,
    pub now_ns: u64,
}

impl Input<'_> {
    /// `nova-compute (pid 4711)`.
    pub fn who(&self) -> String {
        format!("{} (pid {})", self.process.comm, self.process.pid)
    }

    /// `ironic-api 127.0.0.1:6385`, or the address alone.
    pub fn endpoint_name(&self, remote: &SocketAddr) -> String {
        match self.labels.label(remote) {
            Some(label) => format!("{label} {remote}"),
            None => remote.to_string(),
        }
    }

    /// The low-cardinality name of an endpoint: its label, else its address.
    pub fn endpoint_label(&self, remote: &SocketAddr) -> String {
        self.labels
            .label(remote)
            .map_or_else(|| remote.to_string(), str::to_string)
    }
}

/// Every enabled rule over one process.
pub fn evaluate(input: &Input<'_>) -> Vec<Finding> {
    let rules = input.rules;
    let mut findings = Vec::new();
    if rules.fd_leak.enabled {
        findings.extend(resources::fd_leak(input));
    }
    if rules.thread_leak.enabled {
        findings.extend(resources::thread_leak(input));
    }
    if rules.memory_leak.enabled {
        findings.extend(memory::memory_leak(input));
    }
    if rules.fd_exhaustion.enabled {
        findings.extend(resources::fd_exhaustion(input));
    }
    if rules.emfile.enabled {
        findings.extend(resources::emfile(input));
    }
    if rules.thread_exhaustion.enabled {
        findings.extend(resources::thread_exhaustion(input));
    }
    if rules.socket_close_wait_leak.enabled {
        findings.extend(network::close_wait_leak(input));
    }
    if rules.connection_pool_saturation.enabled {
        findings.extend(network::pool_saturation(input));
    }
    if rules.connect_failures.enabled {
        findings.extend(network::connect_failures(input));
    }
    if rules.plaintext_token.enabled {
        findings.extend(network::plaintext_token(input));
    }
    if rules.secret_in_log.enabled {
        findings.extend(logs::secret_in_log(input));
    }
    if rules.ironic_call_hung.enabled {
        findings.extend(calls::call_hung(input));
    }
    if rules.ironic_poll_exhaustion.enabled {
        findings.extend(calls::poll_exhaustion(input));
    }
    if rules.ironic_conflict_storm.enabled {
        findings.extend(calls::conflict_storm(input));
    }
    if rules.ironic_call_errors.enabled {
        findings.extend(calls::call_errors(input));
    }
    findings
}

/// Human durations for summaries: `45s`, `12m`, `3h`.
pub fn span(seconds: u64) -> String {
    crate::time::short_age(seconds as f64)
}
