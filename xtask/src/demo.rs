//! `cargo xtask demo`: a real Ironic, the real nova Ironic driver in the
//! `nova-compute` harness with one injected connection leak, and the
//! daemon watching it: the live snapshot and the alerts as they fire.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    scenario::daemon_for_harness,
    testbed::{Ironic, NovaCompute, Testbed},
};

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

/// Ironic's loopback address for the demo (the tests use 127.0.0.2-14).
const DEMO_IP: &str = "127.0.0.30";

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
    let bed = Testbed::install();

    step(&format!(
        "a real Ironic 39 on {DEMO_IP}:6385 (standalone, fake hardware), one node (about 15 s)"
    ));
    let ironic = Ironic::start(&bed, &dir, DEMO_IP, false);
    let nodes = ironic.enroll(&bed, 1);
    println!("    node {} available", nodes[0]);

    step("`leakmon run` watching this demo's nova-compute (rule windows scaled from minutes to seconds)");
    let alerts_file = dir.join("alerts.ndjson");
    let daemon = daemon_for_harness(&dir);

    step("nova-compute: the real nova Ironic driver, with one injected leak");
    let mut nova = NovaCompute::start(&bed, &dir, &ironic, None);
    nova.run("refresh-every 5", "refreshing");
    nova.run("leak-connections-every 2", "leaking");
    let pid = nova.pid;
    println!(
        "    pid {pid} lists the nodes every 5 s (nova's periodic task) and, every 2 s, through a new\n    \
         openstacksdk connection that it never closes: each leaves a socket that Ironic closes when idle\n    \
         and that then waits in CLOSE_WAIT forever."
    );
    let leakmon = tests::binary("leakmon", "LEAKMON_BIN");
    let started = Instant::now();
    println!(
        "\n    live, every 3 s, for {seconds}s (Ctrl-C stops): `leakmon snapshot --pid {pid}`, and alerts as they come\n"
    );
    let mut alerts_shown = 0;
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
                "  ! ALERT {} {} [{}]: {}",
                alert["status"].as_str().unwrap_or("?").to_uppercase(),
                alert["rule"].as_str().unwrap_or("?"),
                alert["severity"].as_str().unwrap_or("?"),
                alert["summary"].as_str().unwrap_or("?")
            );
        }
        alerts_shown = alerts.len();
    }
    step(&format!("`leakmon alerts` and `leakmon calls --pid {pid}`"));
    for args in [
        vec!["alerts".to_string()],
        vec![
            "calls".to_string(),
            "--pid".to_string(),
            pid.to_string(),
            "--recent".to_string(),
            "5".to_string(),
        ],
    ] {
        let out = Command::new(&leakmon)
            .args(&args)
            .arg("--control-socket")
            .arg(&daemon.socket)
            .output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines().take(24) {
            println!("    {line}");
        }
        println!();
    }
    step("stopping nova-compute, the daemon and Ironic");
    drop(nova);
    daemon.stop();
    drop(ironic);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
