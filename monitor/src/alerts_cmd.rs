//! `leakmon alerts`: the alerts firing now, one line each, with the summary.

use crate::{alerts::Alert, table::table};

pub fn render(alerts: &[Alert]) -> String {
    if alerts.is_empty() {
        return "no alerts firing\n".to_string();
    }
    let mut rows = vec![
        ["SINCE", "SEVERITY", "RULE", "PID", "KEY", "SUMMARY"]
            .map(String::from)
            .to_vec(),
    ];
    for alert in alerts {
        rows.push(vec![
            alert.starts_at.clone(),
            alert.severity.name().to_string(),
            alert.rule.name().to_string(),
            alert.process.pid.to_string(),
            alert.key.clone(),
            alert.summary.clone(),
        ]);
    }
    table(&rows)
}
