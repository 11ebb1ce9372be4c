//! Alerts: the lifecycle that turns findings into firing and resolved
//! alerts (deduplicated by rule, process and key; re-sent while firing),
//! the NDJSON schema, and the sinks.

pub mod alertmanager;
pub mod sinks;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::{
    detect::{Finding, Rule, Severity},
    time,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Firing,
    Resolved,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub name: String,
    /// Secrets (passwords, tokens) in arguments are redacted.
    pub cmdline: Vec<String>,
    /// Its pid namespace and container, when it runs in one.
    #[serde(default, flatten)]
    pub placement: crate::container::Placement,
}

/// One line of the NDJSON output: the alert contract (README, "Alerts").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// When this line was emitted (RFC 3339).
    pub time: String,
    pub rule: Rule,
    pub status: Status,
    pub severity: Severity,
    pub host: String,
    pub process: ProcessRef,
    /// What in the process: an fd kind, an endpoint, a call, a loop.
    pub key: String,
    pub summary: String,
    /// When the condition was first seen.
    pub starts_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    pub evidence: serde_json::Value,
    pub labels: BTreeMap<String, String>,
}

impl Alert {
    /// The identity Alertmanager and the lifecycle deduplicate on.
    pub fn identity(&self) -> (Rule, u32, String) {
        (self.rule, self.process.pid, self.key.clone())
    }
}

struct Active {
    alert: Alert,
    last_sent_ns: u64,
}

/// Alerts currently firing, and what changed since the last evaluation.
pub struct Book {
    host: String,
    resend_ns: u64,
    active: HashMap<(Rule, u32, String), Active>,
    pub fired_total: BTreeMap<Rule, u64>,
}

impl Book {
    pub fn new(host: String, resend_interval_s: u64) -> Book {
        Book {
            host,
            resend_ns: resend_interval_s * 1_000_000_000,
            active: HashMap::new(),
            fired_total: BTreeMap::new(),
        }
    }

    pub fn set_resend_interval(&mut self, resend_interval_s: u64) {
        self.resend_ns = resend_interval_s * 1_000_000_000;
    }

    /// Takes one process's findings of this evaluation; returns the alerts
    /// to emit: new ones, re-sends that are due, and resolutions.
    pub fn update(&mut self, process: &ProcessRef, findings: Vec<Finding>, now_ns: u64) -> Vec<Alert> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for finding in findings {
            let id = (finding.rule, process.pid, finding.key.clone());
            seen.push(id.clone());
            match self.active.get_mut(&id) {
                Some(active) => {
                    let starts_at = active.alert.starts_at.clone();
                    let escalated = finding.severity != active.alert.severity;
                    active.alert = alert_of(&self.host, process, finding, starts_at);
                    if escalated || now_ns.saturating_sub(active.last_sent_ns) >= self.resend_ns {
                        active.last_sent_ns = now_ns;
                        out.push(active.alert.clone());
                    }
                }
                None => {
                    *self.fired_total.entry(finding.rule).or_default() += 1;
                    let alert = alert_of(
                        &self.host,
                        process,
                        finding,
                        time::rfc3339(std::time::SystemTime::now()),
                    );
                    out.push(alert.clone());
                    self.active.insert(
                        id,
                        Active {
                            alert,
                            last_sent_ns: now_ns,
                        },
                    );
                }
            }
        }
        let gone: Vec<_> = self
            .active
            .keys()
            .filter(|id| id.1 == process.pid && !seen.contains(id))
            .cloned()
            .collect();
        for id in gone {
            out.extend(self.resolve(&id));
        }
        out
    }

    /// A process is no longer watched: everything it had resolves.
    pub fn process_gone(&mut self, pid: u32) -> Vec<Alert> {
        let ids: Vec<_> = self.active.keys().filter(|id| id.1 == pid).cloned().collect();
        ids.iter().filter_map(|id| self.resolve(id)).collect()
    }

    /// The pids that have firing alerts.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.active.keys().map(|id| id.1).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    pub fn firing(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self.active.values().map(|a| a.alert.clone()).collect();
        alerts.sort_by(|a, b| (&a.starts_at, a.rule, &a.key).cmp(&(&b.starts_at, b.rule, &b.key)));
        alerts
    }

    pub fn firing_by_rule(&self) -> BTreeMap<Rule, u64> {
        let mut counts = BTreeMap::new();
        for id in self.active.keys() {
            *counts.entry(id.0).or_default() += 1;
        }
        counts
    }

    fn resolve(&mut self, id: &(Rule, u32, String)) -> Option<Alert> {
        let mut alert = self.active.remove(id)?.alert;
        let now = time::rfc3339(std::time::SystemTime::now());
        alert.status = Status::Resolved;
        alert.time = now.clone();
        alert.ends_at = Some(now);
        Some(alert)
    }
}

fn alert_of(host: &str, process: &ProcessRef, finding: Finding, starts_at: String) -> Alert {
    let mut labels = BTreeMap::from([
        ("alertname".to_string(), finding.rule.name().to_string()),
        ("severity".to_string(), finding.severity.name().to_string()),
        ("host".to_string(), host.to_string()),
        ("process".to_string(), process.name.clone()),
    ]);
    if let Some(endpoint) = finding.endpoint {
        labels.insert("endpoint".to_string(), endpoint);
    }
    Alert {
        time: time::rfc3339(std::time::SystemTime::now()),
        rule: finding.rule,
        status: Status::Firing,
        severity: finding.severity,
        host: host.to_string(),
        process: process.clone(),
        key: finding.key,
        summary: finding.summary,
        starts_at,
        ends_at: None,
        evidence: finding.evidence,
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn finding(rule: Rule, key: &str) -> Finding {
        Finding {
            rule,
            key: key.to_string(),
            severity: Severity::Warning,
            summary: "s".to_string(),
            evidence: serde_json::json!({}),
            endpoint: Some("ironic-api".to_string()),
        }
    }

    fn process(pid: u32) -> ProcessRef {
        ProcessRef {
            pid,
            name: "nova-compute".to_string(),
            cmdline: vec![],
            placement: Default::default(),
        }
    }

    #[test]
    fn an_alert_fires_once_is_resent_when_due_and_resolves() {
        let mut book = Book::new("h".to_string(), 60);
        let p = process(7);
        let out = book.update(&p, vec![finding(Rule::FdLeak, "file")], 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Firing);
        assert_eq!(out[0].labels["endpoint"], "ironic-api");
        assert!(
            book.update(&p, vec![finding(Rule::FdLeak, "file")], 30 * S)
                .is_empty()
        );
        let mut worse = finding(Rule::FdLeak, "file");
        worse.severity = Severity::Critical;
        assert_eq!(
            book.update(&p, vec![worse], 31 * S).len(),
            1,
            "a change of severity is sent at once"
        );
        assert!(book.update(&p, vec![finding(Rule::FdLeak, "file")], 32 * S).len() == 1);
        let resent = book.update(&p, vec![finding(Rule::FdLeak, "file")], 92 * S);
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].starts_at, out[0].starts_at, "a re-send keeps its start");
        let resolved = book.update(&p, vec![], 93 * S);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].status, Status::Resolved);
        assert!(resolved[0].ends_at.is_some());
        assert!(book.firing().is_empty());
        assert_eq!(book.fired_total[&Rule::FdLeak], 1);
    }

    #[test]
    fn keys_and_processes_are_separate_alerts() {
        let mut book = Book::new("h".to_string(), 60);
        let out = book.update(
            &process(1),
            vec![finding(Rule::FdLeak, "file"), finding(Rule::FdLeak, "pipe")],
            0,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(
            book.update(&process(2), vec![finding(Rule::FdLeak, "file")], 0)
                .len(),
            1
        );
        // Process 1's evaluation does not resolve process 2's alert.
        assert!(
            book.update(
                &process(1),
                vec![finding(Rule::FdLeak, "file"), finding(Rule::FdLeak, "pipe")],
                S
            )
            .is_empty()
        );
        assert_eq!(book.firing().len(), 3);
    }

    #[test]
    fn an_exited_process_resolves_everything_it_had() {
        let mut book = Book::new("h".to_string(), 60);
        book.update(
            &process(1),
            vec![
                finding(Rule::Emfile, "emfile"),
                finding(Rule::ThreadLeak, "threads"),
            ],
            0,
        );
        let out = book.process_gone(1);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|a| a.status == Status::Resolved));
        assert!(book.pids().is_empty());
    }
}
