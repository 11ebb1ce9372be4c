//! `leakmon status` as text.

use std::fmt::Write as _;

use serde_json::Value;

pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let _ = writeln!(
        out,
        "leakmon {} (pid {}) up {} since {}",
        s(&status["version"]),
        status["daemon_pid"],
        crate::time::short_age(status["uptime_s"].as_f64().unwrap_or_default()),
        s(&status["started"])
    );
    let _ = writeln!(
        out,
        "hooks: {} of {} attached",
        status["hooks_attached"], status["hooks_total"]
    );
    for hook in status["hooks"].as_array().into_iter().flatten() {
        let tracepoint = s(&hook["tracepoint"]);
        if hook["attached"] != Value::Bool(true) {
            let _ = writeln!(
                out,
                "  missing {tracepoint} ({}): {}",
                s(&hook["program"]),
                s(&hook["error"])
            );
        } else if let Some(mode) = hook["mode"].as_str() {
            let _ = writeln!(out, "  {}: {tracepoint} ({mode})", s(&hook["program"]));
        }
    }
    let processes = status["processes"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "watched processes: {}", processes.len());
    for p in &processes {
        let _ = writeln!(
            out,
            "  {:>7}  {:<16} fds {:<6} threads {:<4} since {}",
            // Numbers, not JSON values: those ignore the widths.
            p["pid"].as_u64().unwrap_or(0),
            s(&p["comm"]),
            p["fds"].as_u64().unwrap_or(0),
            p["threads"].as_u64().unwrap_or(0),
            s(&p["watched_since"])
        );
        for stream in p["log_streams"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "           log stream {}", s(stream));
        }
    }
    let tls = status["tls"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "TLS probes: {} process(es) (attached {} / detached {} since start)",
        tls.len(),
        status["tls_attached_total"],
        status["tls_detached_total"]
    );
    for t in &tls {
        let symbols: Vec<String> = t["symbols"].as_array().into_iter().flatten().map(s).collect();
        let _ = writeln!(
            out,
            "  {:>7}  {}  {}",
            t["pid"],
            s(&t["library"]),
            symbols.join(" ")
        );
    }
    let firing: Vec<String> = status["alerts_firing"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(rule, n)| format!("{rule} {n}"))
        .collect();
    let firing = if firing.is_empty() {
        "none".to_string()
    } else {
        firing.join(", ")
    };
    let _ = writeln!(out, "alerts firing: {firing}");
    for section in [
        "kernel",
        "engine",
        "ledger",
        "journal",
        "alert_sinks",
        "alertmanager",
    ] {
        if status[section].is_null() {
            continue;
        }
        let _ = writeln!(out, "{section}:");
        if let Some(map) = status[section].as_object() {
            for (key, value) in map {
                let _ = writeln!(out, "  {key}: {value}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn names_missing_hooks_and_hooks_attached_in_a_mode_of_their_own() {
        let status = json!({
            "version": "0.1.0",
            "daemon_pid": 42,
            "uptime_s": 236.431,
            "started": "2026-12-03T05:42:34.312Z",
            "hooks_attached": 2,
            "hooks_total": 3,
            "hooks": [
                {"program": "close_enter", "tracepoint": "syscalls/sys_enter_close", "attached": true},
                {"program": "sock_destroy", "tracepoint": "btf/tcp_destroy_sock", "attached": false,
                 "error": "refused"},
                {"program": "fd_iter", "attached": true, "tracepoint": "iter/task_file",
                 "mode": "host-wide: this kernel cannot scope it to one process"},
            ],
            "processes": [{"pid": 7, "comm": "nova-compute", "fds": 30, "threads": 4,
                           "watched_since": "t", "log_streams": ["stdout (pipe:[9])"]}],
        });
        let text = super::render(&status);
        assert!(text.starts_with("leakmon 0.1.0 (pid 42) up 3m since 2026-12-03T05:42:34.312Z\n"));
        assert!(text.contains("hooks: 2 of 3 attached\n"));
        assert!(text.contains("  missing btf/tcp_destroy_sock (sock_destroy): refused\n"));
        assert!(
            text.contains(
                "  fd_iter: iter/task_file (host-wide: this kernel cannot scope it to one process)\n"
            )
        );
        assert!(!text.contains("close_enter"));
        assert!(text.contains(
            "\n        7  nova-compute     fds 30     threads 4    since t\n           log stream stdout (pipe:[9])\n"
        ));
    }
}
