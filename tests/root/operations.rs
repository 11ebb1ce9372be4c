//! Operations: `leakmon doctor`, a nova-compute in its own pid namespace
//! (kolla's container), a host where tracefs is not mounted, one in kernel
//! lockdown, a daemon that cannot start, and one that systemd supervises.

use std::{
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tests::{daemon::Daemon, require_root, scratch_dir, workload::Workload};

#[test]
fn doctor_loads_every_hook_and_names_a_bad_config_key() {
    if !require_root("doctor_loads_every_hook_and_names_a_bad_config_key") {
        return;
    }
    let out = tests::leakmon(&["doctor", "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let verdict = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["verdict"].as_str().unwrap().to_string())
    };
    for name in [
        "config",
        "privileges",
        "kernel",
        "btf",
        "sock_diag",
        "tracefs",
        "bpf",
    ] {
        assert_eq!(verdict(name).as_deref(), Some("ok"), "{name}: {checks:#?}");
    }
    assert!(checks.iter().all(|c| c["verdict"] != "fail"), "{checks:#?}");

    let dir = scratch_dir("doctor");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[rules.fd_leak]\nwindow_s = 0\n").unwrap();
    let out = tests::leakmon(&["doctor", "--config", bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("FAIL") && report.contains("rules.fd_leak.window_s"),
        "{report}"
    );
}

#[test]
fn a_process_in_its_own_pid_namespace_is_tracked_by_host_pid() {
    if !require_root("a_process_in_its_own_pid_namespace_is_tracked_by_host_pid") {
        return;
    }
    let dir = scratch_dir("pidns");
    let daemon = Daemon::start(&dir, &["--match-comm", "lm-pidns"]);
    let link = dir.join("lm-pidns");
    std::os::unix::fs::symlink(tests::binary("leakmon-workload", "LEAKMON_WORKLOAD_BIN"), &link).unwrap();
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(&link)
        .args(["bulk", "10", "0", "0", "0", "0"]);
    let mut workload = Workload::start(command);
    let ready = workload.expect_within("ready", Duration::from_secs(30));
    assert_eq!(
        ready["pid"], 1,
        "the workload sees itself as pid 1 of its namespace"
    );
    let status = daemon.await_status("the namespaced process watched", Duration::from_secs(10), |s| {
        s["processes"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["comm"] == "lm-pidns"))
    });
    let process = status["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["comm"] == "lm-pidns")
        .unwrap()
        .clone();
    let host_pid = process["pid"].as_u64().unwrap() as u32;
    assert_ne!(host_pid, 1);
    assert_eq!(process["ns_pid"], 1, "{process:#}");
    daemon.sync();
    let ledger = daemon.ledger(host_pid);
    let in_proc = std::fs::read_dir(format!("/proc/{host_pid}/fd")).unwrap().count();
    assert_eq!(ledger["fds"].as_array().unwrap().len(), in_proc, "{ledger:#}");
    let snapshot = tests::snapshot_json(host_pid, &daemon.socket);
    assert_eq!(snapshot["ns_pid"], 1);
}

#[test]
fn without_tracefs_mounted_the_daemon_mounts_it_and_runs() {
    if !require_root("without_tracefs_mounted_the_daemon_mounts_it_and_runs") {
        return;
    }
    let dir = scratch_dir("no-tracefs");
    // The daemon in a private mount namespace where tracefs is unmounted:
    // the host's mounts (and the other tests' daemons) are untouched.
    let wrapper = dir.join("leakmon-without-tracefs");
    let leakmon = tests::binary("leakmon", "LEAKMON_BIN");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c \
             'umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
             test -d /sys/kernel/tracing/events && exit 97; exec \"$0\" \"$@\"' {} \"$@\"\n",
            leakmon.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start_bin(&wrapper, &dir, &["--match-comm", "lm-notracefs"]);
    let status = daemon.status();
    assert_eq!(status["tracefs_mounted_by_daemon"], true, "{status:#}");
    assert!(daemon.log_text().contains("mounted tracefs"));
    let mut workload = Workload::spawn(&dir, "lm-notracefs", &["bulk", "5", "1", "0", "0", "0"]);
    let pid = workload.expect("ready")["pid"].as_u64().unwrap() as u32;
    daemon.sync();
    let ledger = daemon.ledger(pid);
    let in_proc = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert_eq!(ledger["fds"].as_array().unwrap().len(), in_proc);
}

#[test]
fn tells_systemd_it_is_ready_once_watching_then_pings_the_watchdog() {
    if !require_root("tells_systemd_it_is_ready_once_watching_then_pings_the_watchdog") {
        return;
    }
    // systemd cannot manage a unit here (PID 1 is not systemd, and a user
    // manager exits at start), so the test plays its side of sd_notify(3):
    // the datagram socket systemd names in NOTIFY_SOCKET.
    let dir = scratch_dir("sd-notify");
    let mut workload = Workload::spawn(&dir, "lm-sdnotify", &["bulk", "5", "1", "0", "0", "0"]);
    workload.expect("ready");
    let address = dir.join("notify");
    let systemd = UnixDatagram::bind(&address).unwrap();
    let daemon = Daemon::start_with_env(
        &dir,
        &["--match-comm", "lm-sdnotify"],
        &[
            ("NOTIFY_SOCKET", address.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let next = |within: Duration| {
        systemd.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 512];
        let n = systemd.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // The daemon answered on its control socket, so READY=1 was sent already.
    let ready = next(Duration::from_millis(1));
    assert!(
        ready.starts_with("READY=1\nSTATUS=processes watched: 1;"),
        "ready only once the running workload is watched: {ready}"
    );
    // A 1 s watchdog: a ping every 0.5 s.
    let mut pings = 0;
    while pings < 3 {
        match next(Duration::from_secs(5)) {
            ping if ping == "WATCHDOG=1" => pings += 1,
            other => assert!(other.starts_with("STATUS="), "{other}"),
        }
    }

    let daemon_pid = nix::unistd::Pid::from_raw(daemon.pid() as i32);
    nix::sys::signal::kill(daemon_pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let reload: Vec<String> = std::iter::from_fn(|| Some(next(Duration::from_secs(10))))
        .filter(|m| m != "WATCHDOG=1" && !m.starts_with("STATUS="))
        .take(2)
        .collect();
    assert!(
        reload[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reload:?}"
    );
    assert!(reload[1].starts_with("READY=1\n"), "{reload:?}");

    assert!(daemon.stop().success());
    systemd.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let mut last = String::new();
    while let Ok(n) = systemd.recv(&mut buf) {
        last = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    assert!(
        last.starts_with("STOPPING=1\n"),
        "the last word is STOPPING=1: {last}"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    // systemd-analyze parses the unit as systemd would (capability names,
    // sandboxing options, ExecStart); it needs no running systemd.
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipping the_systemd_unit_verifies: no systemd-analyze on this host");
        return;
    };
    assert!(version.status.success());
    let dir = scratch_dir("unit");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/leakmon.service"
    ))
    .unwrap();
    let leakmon = tests::binary("leakmon", "LEAKMON_BIN");
    let unit = unit.replace("/usr/local/bin/leakmon", &leakmon.to_string_lossy());
    let path = dir.join("leakmon.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
}

#[test]
fn a_daemon_started_beside_a_process_that_holds_much_raises_no_false_leak() {
    if !require_root("a_daemon_started_beside_a_process_that_holds_much_raises_no_false_leak") {
        return;
    }
    // A daemon restart: nova-compute already holds 300 files, pipes and unix sockets.
    let dir = scratch_dir("late-daemon");
    let mut workload = Workload::spawn(&dir, "lm-late", &["bulk", "300", "5", "0", "0", "5"]);
    let pid = workload.expect("ready")["pid"].as_u64().unwrap() as u32;
    let alerts = dir.join("alerts.ndjson");
    let daemon = Daemon::start_with_config(
        &dir,
        tests::alerts::FAST_RULES,
        &[
            "--match-comm",
            "lm-late",
            "--alerts-file",
            &alerts.to_string_lossy(),
        ],
    );
    daemon.sync();
    let ledger = daemon.ledger(pid);
    let fds = ledger["fds"].as_array().unwrap();
    assert!(fds.len() > 300);
    assert!(
        fds.iter().all(|fd| fd["birth"]["origin"] == "before_start"),
        "what was open before the daemon is born before_start"
    );
    // Two windows of the fast rules: a history that starts full is no growth.
    std::thread::sleep(Duration::from_secs(16));
    let raised = tests::alerts::alerts_in(&alerts);
    assert!(
        raised.iter().all(|a| a["process"]["pid"] != pid),
        "false alerts: {raised:#?}"
    );
}

#[test]
fn a_hook_that_fails_to_attach_degrades_the_daemon_and_is_reported() {
    if !require_root("a_hook_that_fails_to_attach_degrades_the_daemon_and_is_reported") {
        return;
    }
    let dir = scratch_dir("refused-hook");
    // The test fault switch: the daemon acts as if the kernel refused these.
    let refused = [
        ("close_enter", "syscalls/sys_enter_close"),
        ("sock_error_report", "btf/inet_sk_error_report"),
    ];
    let daemon = Daemon::start_with_env(
        &dir,
        &["--match-comm", "lm-refused"],
        &[("LEAKMON_TEST_REFUSE_HOOKS", "close_enter,sock_error_report")],
    );
    for (program, tracepoint) in refused {
        let hook = daemon.hook(program);
        assert_eq!(hook["attached"], false, "{hook}");
        assert!(
            hook["error"]
                .as_str()
                .unwrap()
                .contains("LEAKMON_TEST_REFUSE_HOOKS"),
            "{hook}"
        );
        let metric = format!("leakmon_hook_attached{{program=\"{program}\",tracepoint=\"{tracepoint}\"}} 0");
        let metrics = daemon.request(serde_json::json!({"request": "metrics"}));
        assert!(metrics.as_str().unwrap().contains(&metric), "no {metric}");
    }
    let status = daemon.status();
    assert_eq!(
        status["hooks_attached"].as_u64().unwrap() + 2,
        status["hooks_total"].as_u64().unwrap()
    );
    assert!(
        daemon.log_text().contains("hook not attached"),
        "{}",
        daemon.log_text()
    );

    // Without close_enter the ledger misses closes; reconciliation repairs it.
    let mut workload = Workload::spawn(&dir, "lm-refused", &["bulk", "30", "0", "0", "0", "0"]);
    let pid = workload.expect("ready")["pid"].as_u64().unwrap() as u32;
    // The first sight's scan has listed every fd before any is closed (an fd
    // the workload inherited, such as a /dev/null of the harness, is known from it alone).
    daemon.sync();
    let null_fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == "/dev/null"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .take(4)
        .collect();
    for fd in &null_fds {
        workload.send(&format!("close {fd}"));
        workload.expect("closed");
    }
    daemon.sync();
    let ledger_fds = |daemon: &Daemon| -> Vec<u64> {
        let mut fds: Vec<u64> = daemon.ledger(pid)["fds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["fd"].as_u64().unwrap())
            .collect();
        fds.sort();
        fds
    };
    let held = ledger_fds(&daemon);
    for fd in &null_fds {
        assert!(
            held.contains(&fd.parse().unwrap()),
            "close of fd {fd} was seen without its hook"
        );
    }
    daemon.request(serde_json::json!({"request": "reconcile"}));
    let mut in_proc: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    in_proc.sort();
    assert_eq!(
        ledger_fds(&daemon),
        in_proc,
        "reconciliation repairs what the missing hook did not see"
    );
    workload.send("exit");
}

/// Under kernel lockdown=confidentiality tracing is off and BPF may not read
/// kernel memory: the daemon stops at once and names the lockdown, doctor
/// fails that check, and a snapshot still reads /proc. `cargo xtask test`
/// runs this in a VM booted so (xtask/src/vm); on other kernels it skips.
#[test]
fn confidentiality_lockdown_stops_the_daemon_and_says_why() {
    let test = "confidentiality_lockdown_stops_the_daemon_and_says_why";
    if !require_root(test) {
        return;
    }
    let mode = std::fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
    if !mode.contains("[confidentiality]") {
        eprintln!(
            "skipping {test}: this kernel is not in lockdown=confidentiality (`cargo xtask test` \
             runs it in a VM booted so)"
        );
        return;
    }
    let dir = scratch_dir("lockdown");
    let leakmon = tests::binary("leakmon", "LEAKMON_BIN");
    let socket = dir.join("leakmon.sock");
    let mut daemon = Command::new(&leakmon)
        .arg("run")
        .arg("--control-socket")
        .arg(&socket)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            daemon.kill().unwrap();
            panic!("the daemon still runs under lockdown=confidentiality after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().unwrap(), &mut log).unwrap();
    assert!(!status.success(), "{log}");
    assert!(log.contains("lockdown=confidentiality"), "{log}");

    let out = tests::leakmon(&["doctor", "--json"], None);
    assert_eq!(out.status.code(), Some(1));
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let lockdown = checks.iter().find(|c| c["name"] == "lockdown").unwrap();
    assert_eq!(lockdown["verdict"], "fail", "{checks:#?}");
    let bpf = checks.iter().find(|c| c["name"] == "bpf").unwrap();
    assert!(
        bpf["verdict"] == "fail" && bpf["detail"].as_str().unwrap().contains("lockdown"),
        "{checks:#?}"
    );

    let snapshot = tests::snapshot_json(std::process::id(), &socket);
    assert_eq!(snapshot["fd_source"], "proc", "{snapshot:#}");
    assert!(!snapshot["fds"].as_array().unwrap().is_empty(), "{snapshot:#}");
}

/// What can fail at once fails before the probes load (which takes seconds
/// to attach and seconds to detach): a second daemon on a socket that
/// answers, a metrics address in use, an alerts file that cannot be
/// opened. Each is a one-line error, and the running daemon is untouched.
#[test]
fn a_daemon_that_cannot_start_says_why_before_loading_probes() {
    if !require_root("a_daemon_that_cannot_start_says_why_before_loading_probes") {
        return;
    }
    let dir = scratch_dir("cannot-start");
    let daemon = Daemon::start(&dir, &["--match-comm", "lmw-none-such"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let spare = dir.join("spare.sock");
    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec![daemon.socket.to_str().unwrap()],
            "another leakmon daemon answers on",
        ),
        (
            vec![spare.to_str().unwrap(), "--metrics-listen", &taken],
            "Address already in use",
        ),
        (
            vec![
                spare.to_str().unwrap(),
                "--alerts-file",
                "/nonexistent/leakmon/alerts.ndjson",
            ],
            "opening the alerts file /nonexistent/leakmon/alerts.ndjson",
        ),
    ];
    for (args, why) in cases {
        let out = Command::new(tests::binary("leakmon", "LEAKMON_BIN"))
            .args(["run", "--match-comm", "lmw-none-such", "--control-socket"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(why), "{why}: {stderr}");
        assert!(
            !stderr.contains("probes loaded"),
            "loaded the probes first: {stderr}"
        );
        assert!(!spare.exists(), "left a control socket behind");
    }
    daemon.sync();
}
