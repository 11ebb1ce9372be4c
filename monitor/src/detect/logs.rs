//! `secret_in_log`: an auth token written to a log. nova's own logging
//! hashes or masks tokens (keystoneauth's `{SHA256}`, oslo's `***`); a raw
//! one in a log means a code path that logs headers or request objects,
//! and everyone who can read the log can act as the service. The lines come
//! from `crate::logscan`, which keeps where they are, never their text: a
//! file and a byte offset, or the systemd journal and a time.

use serde_json::json;

use super::{Finding, Input, Rule, Severity};
use crate::logscan::journal::JOURNAL;

const NS: u64 = 1_000_000_000;

pub fn secret_in_log(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.secret_in_log;
    let since = input.now_ns.saturating_sub(rule.quiet_s * NS);
    let mut findings = Vec::new();
    for (path, seen) in &input.history.log_secrets {
        if seen.last_ns < since {
            continue;
        }
        // A journal entry has no byte offset: its time is in `last`.
        let in_journal = path == JOURNAL;
        let summary = if in_journal {
            format!(
                "{} wrote an auth token to the systemd journal ({} entries)",
                input.who(),
                seen.lines
            )
        } else {
            format!(
                "{} wrote an auth token to {path} ({} lines, the last at byte {})",
                input.who(),
                seen.lines,
                seen.last_offset
            )
        };
        findings.push(Finding {
            rule: Rule::SecretInLog,
            key: path.clone(),
            severity: Severity::Critical,
            summary,
            evidence: json!({
                "file": path,
                "kinds": seen.kinds,
                "lines": seen.lines,
                "first": crate::time::rfc3339_of_boot(seen.first_ns),
                "last": crate::time::rfc3339_of_boot(seen.last_ns),
                "last_offset": (!in_journal).then_some(seen.last_offset),
                "quiet_s": rule.quiet_s,
            }),
            endpoint: None,
        });
    }
    findings
}
