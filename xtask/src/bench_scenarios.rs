//! Detection latency of the end-to-end scenarios (tests/root/scenarios.rs):
//! the real nova Ironic driver against a real Ironic, each fault injected
//! at a known instant, the first firing alert timed by the test.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::Value;

use crate::util::{cargo, cargo_test_root, exec, root_dir, step};

/// What bounds each rule's latency under the scenarios' scaled rules.
fn bound(rule: &str) -> &'static str {
    match rule {
        "socket_close_wait_leak" => {
            "Ironic's 10 s idle close + min_age_s 5 + 11 leaked sockets (pool 10) or the 40 s growth window"
        }
        "thread_leak" => "the floor of each quarter of the 40 s window rising, by 8 threads in all",
        "ironic_call_hung" => "threshold_s 5",
        "ironic_poll_exhaustion" => "80 % of api_max_retries + 1 = 6 polls, 1 s apart",
        "fd_exhaustion" => "5 samples of a still-rising trend (5 s)",
        "emfile" => "the leak reaching RLIMIT_NOFILE 200 (5 files/s)",
        "ironic_conflict_storm" => "the second 409 (min_count 2)",
        "ironic_call_errors" => "the third 500 (min_count 3) of a node-list refresh every second",
        "plaintext_token" => "the first request (evaluated every second)",
        "secret_in_log" => "the next read of the log (every second)",
        _ => "",
    }
}

/// Runs the scenarios (debug build, as the test suite does) and appends the table.
pub fn latency(out: &mut String) -> anyhow::Result<()> {
    exec(cargo().args(["build", "--bins"]))?;
    let report = std::env::temp_dir().join(format!("leakmon-scenarios-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&report);
    step("end-to-end scenarios on the real nova driver and a real Ironic (about 4 minutes)");
    exec(
        cargo_test_root()
            .args(["scenarios", "--", "--test-threads", "2"])
            .env("LEAKMON_SCENARIO_REPORT", &report)
            .env("LEAKMON_REQUIRE_ROOT", "1"),
    )?;
    let mut rows: BTreeMap<(String, String), f64> = BTreeMap::new();
    for line in std::fs::read_to_string(&report)?.lines() {
        let v: Value = serde_json::from_str(line)?;
        let key = (
            v["scenario"].as_str().unwrap_or("?").to_string(),
            v["rule"].as_str().unwrap_or("?").to_string(),
        );
        rows.entry(key)
            .or_insert(v["latency_s"].as_f64().unwrap_or(f64::NAN));
    }
    let _ = std::fs::remove_file(&report);
    writeln!(out, "## Detection latency: end-to-end scenarios\n")?;
    writeln!(
        out,
        "Fault start (the harness command that injects it) to the first firing alert, one run of \
         `cargo test -p tests --test root scenarios` (tests/root/scenarios.rs) under the scenarios' rules \
         (`tests/src/scenario.rs`: the default windows scaled down ~15×; with the defaults, leaks take their \
         10-minute windows). The clean scenario (110 s of spawn/power/reboot/destroy on two nodes, then an \
         idle pooled socket in CLOSE_WAIT, nova logging at debug level with keystoneauth's request lines, \
         their tokens hashed) raised no alert under the same rules.\n"
    )?;
    writeln!(
        out,
        "| scenario | rule | detected after | bounded by |\n| --- | --- | --- | --- |"
    )?;
    for ((scenario, rule), latency) in &rows {
        writeln!(
            out,
            "| {scenario} | `{rule}` | {latency:.1} s | {} |",
            bound(rule)
        )?;
    }
    writeln!(out)?;
    Ok(())
}

/// Replaces (or adds, before the notes) the scenarios section of docs/benchmarks.md.
pub fn update_docs(section: &str) -> anyhow::Result<()> {
    let path = root_dir().join("docs").join("benchmarks.md");
    let text = std::fs::read_to_string(&path)?;
    let heading = "## Detection latency: end-to-end scenarios";
    let updated = match text.find(heading) {
        Some(start) => {
            let rest = &text[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(text.len(), |i| start + heading.len() + i + 1);
            format!("{}{section}{}", &text[..start], &text[end..])
        }
        None => match text.find("## Where the time goes") {
            Some(notes) => format!("{}{section}{}", &text[..notes], &text[notes..]),
            None => format!("{text}\n{section}"),
        },
    };
    std::fs::write(&path, updated)?;
    Ok(())
}
