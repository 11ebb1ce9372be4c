//! The packaged unit (packaging/leakmon.service) under a real systemd, as
//! `cargo xtask install` puts it on a compute host: its sandbox and
//! capabilities let the daemon load its probes and watch nova-compute,
//! `Type=notify` works, the journal is read for secrets, the watchdog
//! restarts a hung daemon, and reload and stop are clean.
//! It installs into / and needs systemd as PID 1, so it runs only in the
//! VM booted for it (`leakmon.init=systemd`, see `cargo xtask vm`).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{require_root, scratch_dir, target_dir, workload::Workload};

const BOOTED_FOR_IT: &str = "leakmon.init=systemd";

fn systemctl(args: &[&str]) -> std::process::Output {
    Command::new("systemctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("systemctl {args:?}: {e}"))
}

fn succeeds(args: &[&str]) {
    let out = systemctl(args);
    assert!(
        out.status.success(),
        "systemctl {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        journal()
    );
}

/// One property of the leakmon unit (`systemctl show -p NAME --value`).
fn property(name: &str) -> String {
    let out = systemctl(&["show", "leakmon", "-p", name, "--value"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn journal() -> String {
    let out = Command::new("journalctl")
        .args(["-u", "leakmon", "-o", "cat", "--no-pager"])
        .output()
        .expect("journalctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The installed CLI at the unit's default control socket.
fn cli(args: &[&str]) -> Value {
    let out = Command::new("/usr/local/bin/leakmon")
        .args(args)
        .output()
        .expect("the installed leakmon");
    assert!(
        out.status.success(),
        "leakmon {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn await_true(what: &str, timeout: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\n{}",
            journal()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_packaged_unit_runs_under_systemd_whose_watchdog_restarts_a_hung_daemon() {
    let test = "the_packaged_unit_runs_under_systemd_whose_watchdog_restarts_a_hung_daemon";
    if !require_root(test) {
        return;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !cmdline.split_whitespace().any(|word| word == BOOTED_FOR_IT) {
        eprintln!(
            "skipping {test}: it installs leakmon into / and needs systemd as PID 1; `cargo xtask \
             test` runs it in a VM booted with {BOOTED_FOR_IT}"
        );
        return;
    }
    let install = Command::new(target_dir().join("xtask"))
        .args(["install", "--binary"])
        .arg(target_dir().join("leakmon"))
        .status()
        .expect("xtask install");
    assert!(install.success());

    // Type=notify: start returns once the daemon said READY=1.
    succeeds(&["start", "leakmon"]);
    assert_eq!(property("ActiveState"), "active");
    let main_pid = property("MainPID");
    let status = cli(&["status", "--json"]);
    assert_eq!(
        status["hooks_attached"], status["hooks_total"],
        "under the unit's sandbox: {:#}",
        status["hooks"]
    );

    // The default config watches nova-compute: the fds it opens are born
    // from their syscalls in the snapshot.
    let dir = scratch_dir("systemd-unit");
    let mut nova = Workload::spawn(&dir, "nova-compute", &["serve"]);
    nova.expect("ready");
    let pid = nova.pid;
    await_true("nova-compute watched", Duration::from_secs(30), || {
        let status = cli(&["status", "--json"]);
        (status["processes"].as_array().unwrap().iter()).any(|p| p["pid"] == pid)
    });
    nova.send("drip files 10 5");
    nova.expect_within("dripped", Duration::from_secs(30));
    let snapshot = cli(&["snapshot", "--json", "--pid", &pid.to_string()]);
    let opened = (snapshot["fds"].as_array().unwrap().iter())
        .filter(|fd| fd["birth"]["origin"] == "syscall" && fd["birth"]["syscall"] == "openat")
        .count();
    assert!(opened >= 5, "{snapshot:#}");

    // Its stdout as a journal stream with a token in a line: the daemon in
    // its sandbox follows the journal (journalctl) and flags it.
    nova.send("journal stream X-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential");
    nova.expect("journaled");
    let alerts = "/var/log/leakmon/alerts.ndjson";
    await_true("secret_in_log for the journal", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(alerts).unwrap_or_default();
        (text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok()))
        .any(|alert| {
            alert["rule"] == "secret_in_log" && alert["process"]["pid"] == pid && alert["key"] == "journal"
        })
    });
    let alerts_text = std::fs::read_to_string(alerts).unwrap();
    assert!(
        !(alerts_text + &journal()).contains(tests::FAKE_TOKEN),
        "the token value leaked"
    );

    // The watchdog hears from the engine's loop; the status line is set.
    await_true("a WATCHDOG=1", Duration::from_secs(40), || {
        property("WatchdogTimestampMonotonic") != "0"
    });
    assert!(!property("StatusText").is_empty());

    // Reload (SIGHUP) keeps the same process running.
    succeeds(&["reload", "leakmon"]);
    await_true("the reload logged", Duration::from_secs(30), || {
        journal().contains("config reloaded")
    });
    assert_eq!(
        (property("ActiveState"), property("MainPID")),
        ("active".into(), main_pid.clone())
    );

    // A hung engine loop (the daemon stopped): no watchdog ping for 30 s,
    // so systemd aborts it and Restart=on-failure starts another, which
    // watches nova-compute again, its fds older than it.
    let stopped = Command::new("kill").args(["-STOP", &main_pid]).status().unwrap();
    assert!(stopped.success());
    await_true("the watchdog's restart", Duration::from_secs(90), || {
        property("NRestarts") == "1" && property("ActiveState") == "active"
    });
    assert_ne!(property("MainPID"), main_pid);
    assert!(journal().contains("Watchdog timeout"), "{}", journal());
    await_true("nova-compute watched again", Duration::from_secs(30), || {
        let status = cli(&["status", "--json"]);
        (status["processes"].as_array().unwrap().iter()).any(|p| p["pid"] == pid)
    });
    let snapshot = cli(&["snapshot", "--json", "--pid", &pid.to_string()]);
    let before_start = (snapshot["fds"].as_array().unwrap().iter())
        .filter(|fd| fd["birth"]["origin"] == "before_start")
        .count();
    assert!(before_start >= 5, "{snapshot:#}");

    succeeds(&["stop", "leakmon"]);
    assert_eq!(property("Result"), "success");
    assert!(journal().contains("probes detached"), "{}", journal());
    let warnings: Vec<String> = (journal().lines())
        .filter(|line| line.contains(" WARN "))
        .map(str::to_string)
        .collect();
    eprintln!("{test}: the daemon's warnings: {warnings:#?}");
    let security = Command::new("systemd-analyze")
        .args(["security", "leakmon", "--no-pager"])
        .output()
        .expect("systemd-analyze");
    let verdict = String::from_utf8_lossy(&security.stdout);
    eprintln!("{test}: {}", verdict.lines().last().unwrap_or(""));
    nova.send("exit");
}
