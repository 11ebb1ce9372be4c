//! `cargo xtask demo`: the daemon watching a bundled leaky `nova-compute`,
//! with the ledger filling up live.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{daemon::Daemon, workload::Workload};

use crate::util::{cargo, exec, step};

pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn catch_interrupt() -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { sigaction(Signal::SIGINT, &action) }?;
    Ok(())
}

fn summary(snapshot: &Value, elapsed: Duration) -> String {
    let mut kinds: Vec<(String, u64)> = snapshot["counts"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let close_wait = snapshot["fds"].as_array().map_or(0, |fds| {
        fds.iter()
            .filter(|f| f["socket"]["state"] == "CLOSE_WAIT")
            .count()
    });
    let oldest = snapshot["fds"]
        .as_array()
        .and_then(|fds| {
            fds.iter()
                .filter_map(|f| f["birth"]["age_s"].as_f64())
                .reduce(f64::max)
        })
        .unwrap_or(0.0);
    format!(
        "t={:>3}s  fds {:>3} [{}]  CLOSE_WAIT {close_wait}  threads {}  oldest fd {oldest:.0}s",
        elapsed.as_secs(),
        snapshot["fds"].as_array().map_or(0, Vec::len),
        kinds.join(", "),
        snapshot["threads"].as_array().map_or(0, Vec::len),
    )
}

/// The defaults watch 10-minute windows; the demo's leak is a minute old.
const DEMO_RULES: &str = "\
[alerts]
stdout = false
[rules.fd_leak]
window_s = 20
min_growth = 10
[rules.thread_leak]
window_s = 30
min_growth = 4
[rules.socket_close_wait_leak]
min_age_s = 5
window_s = 20
";

pub fn run(seconds: u64) -> anyhow::Result<()> {
    crate::setup::run_all()?;
    anyhow::ensure!(
        crate::util::is_root(),
        "the demo runs the daemon, which loads eBPF programs: run as root"
    );
    step("build");
    exec(cargo().args(["build", "--bins"]))?;
    catch_interrupt()?;
    let dir = std::env::temp_dir().join(format!("leakmon-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    step("starting `leakmon run` (watch processes named nova-compute; rule windows shortened for the demo)");
    let config = dir.join("leakmon.toml");
    std::fs::write(&config, DEMO_RULES)?;
    let alerts_file = dir.join("alerts.ndjson");
    let daemon = Daemon::start(
        &dir,
        &[
            "--config",
            &config.to_string_lossy(),
            "--alerts-file",
            &alerts_file.to_string_lossy(),
        ],
    );
    let mut alerts_shown = 0;
    step(
        "starting a bundled leaky `nova-compute`: a file and a CLOSE_WAIT socket each second, a stuck thread every 5 s",
    );
    let workload = Workload::spawn(&dir, "nova-compute", &["leak"]);
    let pid = workload.pid;
    let leakmon = tests::binary("leakmon", "LEAKMON_BIN");
    let started = Instant::now();
    println!(
        "    watching pid {pid} for {seconds}s (Ctrl-C stops); `leakmon snapshot --pid {pid}` every 3 s:\n"
    );
    while started.elapsed() < Duration::from_secs(seconds) && !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(3));
        let out = Command::new(&leakmon)
            .args([
                "snapshot",
                "--json",
                "--pid",
                &pid.to_string(),
                "--control-socket",
            ])
            .arg(&daemon.socket)
            .output()?;
        let snapshot: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        println!("    {}", summary(&snapshot, started.elapsed()));
        let alerts = tests::alerts::alerts_in(&alerts_file);
        for alert in alerts.iter().skip(alerts_shown) {
            println!(
                "    ALERT {} {} [{}]: {}",
                alert["status"].as_str().unwrap_or("?").to_uppercase(),
                alert["rule"].as_str().unwrap_or("?"),
                alert["severity"].as_str().unwrap_or("?"),
                alert["summary"].as_str().unwrap_or("?")
            );
        }
        alerts_shown = alerts.len();
    }
    step(&format!(
        "the full snapshot (`leakmon snapshot --pid {pid}`), first rows"
    ));
    let out = Command::new(&leakmon)
        .args(["snapshot", "--pid", &pid.to_string(), "--control-socket"])
        .arg(&daemon.socket)
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines().take(24) {
        println!("    {line}");
    }
    step("stopping the workload and the daemon");
    drop(workload);
    daemon.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
