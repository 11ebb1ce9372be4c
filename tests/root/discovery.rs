//! Which processes are watched: found at exec by comm or by command line,
//! their forked children, and not the children that exec something else.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{daemon::Daemon, require_root, scratch_dir, workload::Workload};

#[test]
fn interpreter_form_is_found_by_argv_and_forked_children_follow() {
    if !require_root("interpreter_form_is_found_by_argv_and_forked_children_follow") {
        return;
    }
    let dir = scratch_dir("argv");
    let daemon = Daemon::start(&dir, &["--match-comm", "lmw-argv.py"]);
    // `python3 /path/lmw-argv.py`: comm is python3, argv[1]'s basename matches.
    let script = dir.join("lmw-argv.py");
    std::fs::write(
        &script,
        r#"import os, subprocess, sys, time
print(os.getpid(), flush=True)
sys.stdin.readline()
f = open("/etc/hostname")
child = subprocess.Popen(["sleep", "60"])
forked = os.fork()
if forked == 0:
    time.sleep(60)
    os._exit(0)
print(f.fileno(), child.pid, forked, flush=True)
sys.stdin.readline()
"#,
    )
    .unwrap();
    let mut python = std::process::Command::new("python3")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufRead::lines(std::io::BufReader::new(python.stdout.take().unwrap()));
    let pid: u32 = out.next().unwrap().unwrap().trim().parse().unwrap();
    daemon.await_status(
        "the interpreter process to be watched",
        Duration::from_secs(10),
        |s| s["processes"].as_array().unwrap().iter().any(|p| p["pid"] == pid),
    );
    let ledger = daemon.ledger(pid);
    assert_eq!(ledger["reason"], json!({"by": "name", "value": "lmw-argv.py"}));
    // The probes' first check: a byte per pid, set by user space here.
    assert!(daemon.watched_byte(pid), "user space marked the pid it chose");
    assert!(!daemon.watched_byte(std::process::id()), "an unwatched pid");

    let mut stdin = python.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
    let line = out.next().unwrap().unwrap();
    let nums: Vec<u32> = line.split_whitespace().map(|n| n.parse().unwrap()).collect();
    let (fd, exec_child, fork_child) = (nums[0], nums[1], nums[2]);
    daemon.sync();
    let ledger = daemon.ledger(pid);
    let file = ledger["fds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fd"] == fd)
        .unwrap();
    assert_eq!(file["birth"]["syscall"], "openat");
    assert_eq!(file["birth"]["origin"], "syscall");

    // Awaited, not read once after the sync: Popen returns before the child
    // reaches the exec tracepoint. The kernel releases a vfork parent and
    // closes the close-on-exec error pipe (Popen's sign of success) in
    // begin_new_exec, while load_elf_binary still maps the new image;
    // sched_process_exec fires only after that returns. A preempted child
    // (parallel root tests on two cores) can therefore ship its exec after
    // the sync, and was seen in the ledger then with its pre-exec fds. A child
    // that stays watched still fails here.
    daemon.await_status(
        "the child that exec'd sleep to be no longer watched",
        Duration::from_secs(10),
        |s| {
            !s["processes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["pid"] == exec_child)
        },
    );
    let err = daemon.try_ledger(exec_child).unwrap_err();
    assert!(
        err.contains("not watched"),
        "a child that exec'd sleep is not the watched program: {err}"
    );
    assert!(
        !daemon.watched_byte(exec_child),
        "the probes cleared the exec'd child's byte"
    );
    let child = daemon.ledger(fork_child);
    assert_eq!(child["reason"], json!({"by": "parent", "value": pid}));
    assert!(
        daemon.watched_byte(fork_child),
        "the probes marked the forked child"
    );
    assert!(
        child["fds"].as_array().unwrap().iter().any(|f| f["fd"] == fd),
        "inherits the parent's fds"
    );

    // Killing the forked child forgets it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fork_child as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    daemon.await_status("the forked child to be forgotten", Duration::from_secs(10), |s| {
        !s["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == fork_child)
    });
    assert!(
        !daemon.watched_byte(fork_child),
        "the probes cleared an exited child's byte"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(exec_child as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    std::io::Write::write_all(&mut stdin, b"done\n").unwrap();
    python.wait().unwrap();
}

#[test]
fn children_that_exec_something_else_are_dropped_without_waking_the_daemon() {
    if !require_root("children_that_exec_something_else_are_dropped_without_waking_the_daemon") {
        return;
    }
    let dir = scratch_dir("forkexec");
    let daemon = Daemon::start(&dir, &["--match-comm", "lmw-spawner"]);
    // 21 fork+exec of /bin/true (one warm-up) after `go`.
    let mut spawner = Workload::spawn(&dir, "lmw-spawner", &["loop", "exec", "20"]);
    spawner.expect("started");
    let pid = spawner.pid;
    daemon.await_status("the spawner to be watched", Duration::from_secs(10), |s| {
        s["processes"].as_array().unwrap().iter().any(|p| p["pid"] == pid)
    });
    let counter = |status: &Value, group: &str, name: &str| status[group][name].as_u64().unwrap();
    let before = daemon.status();
    assert_eq!(
        counter(&before, "kernel", "exec_wakeups"),
        1,
        "the spawner's own exec, matched by the kernel, wakes the daemon"
    );

    spawner.send("go");
    spawner.expect("done");
    assert!(spawner.wait().success());
    // Every child exec'd, exited and was reaped before the spawner exited:
    // all their records are in the ring.
    daemon.sync();
    let after = daemon.status();
    assert_eq!(
        after["processes"],
        json!([]),
        "the children and then the spawner are gone"
    );
    let delta = |group, name| counter(&after, group, name) - counter(&before, group, name);
    assert_eq!(
        delta("ledger", "processes_watched"),
        21,
        "each child followed from its fork"
    );
    assert_eq!(
        delta("ledger", "processes_forgotten"),
        22,
        "each child at its exec, then the spawner"
    );
    assert_eq!(
        delta("kernel", "exec_wakeups"),
        0,
        "a child running something else is unwatched in the kernel: its exec waits for the drain"
    );
}

fn watched_pids(status: &Value) -> Vec<u64> {
    let mut pids: Vec<u64> = status["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    pids.sort();
    pids
}

#[test]
fn beyond_max_processes_a_match_is_refused_once_and_watched_when_room_frees() {
    if !require_root("beyond_max_processes_a_match_is_refused_once_and_watched_when_room_frees") {
        return;
    }
    let dir = scratch_dir("max-processes");
    let daemon = Daemon::start_with_config(
        &dir,
        "[discovery]\nmax_processes = 2\n[probes]\nreconcile_interval_s = 1\n",
        &["--match-comm", "lmw-cap"],
    );
    let mut workloads: Vec<Workload> = (0..3)
        .map(|_| {
            let mut workload = Workload::spawn(&dir, "lmw-cap", &["serve"]);
            workload.expect("ready");
            workload
        })
        .collect();
    let pids: Vec<u64> = workloads.iter().map(|w| w.pid as u64).collect();
    let refused = |s: &Value| s["ledger"]["processes_refused"].as_u64().unwrap_or(0);
    let status = daemon.await_status("two watched, one refused", Duration::from_secs(10), |s| {
        watched_pids(s).len() == 2 && refused(s) == 1
    });
    let watched = watched_pids(&status);
    assert_eq!(watched, pids[..2], "the first two to exec are watched");
    // Rediscovery finds the third again and again: refused once, logged once.
    let passes = status["engine"]["discovery_passes"].as_u64().unwrap();
    let status = daemon.await_status("two more discovery passes", Duration::from_secs(10), |s| {
        s["engine"]["discovery_passes"].as_u64().unwrap() >= passes + 2
    });
    assert_eq!(refused(&status), 1, "{}", status["ledger"]);
    assert_eq!(watched_pids(&status), watched);
    let log = daemon.log_text();
    assert_eq!(
        log.matches("not watched: leakmon follows 2 processes").count(),
        1,
        "{log}"
    );
    // Room frees: the next pass watches it.
    workloads.remove(0).exit();
    let status = daemon.await_status("the refused one watched", Duration::from_secs(10), |s| {
        watched_pids(s) == pids[1..]
    });
    assert_eq!(refused(&status), 1);
    assert!(daemon.stop().success());
}

#[test]
fn a_pid_that_does_not_exist_is_reported_and_the_daemon_runs_on() {
    if !require_root("a_pid_that_does_not_exist_is_reported_and_the_daemon_runs_on") {
        return;
    }
    let dir = scratch_dir("nopid");
    let daemon = Daemon::start(&dir, &["--pid", "4194300"]);
    assert!(daemon.status()["processes"].as_array().unwrap().is_empty());
    assert!(
        daemon.log_text().contains("no process with this pid"),
        "{}",
        daemon.log_text()
    );
    // Asked about it, the daemon says there is no such process (not "not watched").
    for request in ["ledger", "calls"] {
        let answer =
            daemon.try_request(&serde_json::json!({"request": request, "pid": 4194300, "recent": 1}));
        assert_eq!(
            answer,
            Err("no process with pid 4194300".to_string()),
            "{request}"
        );
    }
    assert_eq!(
        daemon.try_request(&serde_json::json!({"request": "ledger", "pid": 1})),
        Err("pid 1 is not watched by this daemon".to_string())
    );
    assert!(daemon.stop().success());
}

#[test]
fn the_control_socket_refuses_non_root_clients() {
    if !require_root("the_control_socket_refuses_non_root_clients") {
        return;
    }
    let dir = scratch_dir("nonroot");
    let daemon = Daemon::start(&dir, &["--match-comm", "lmw-nobody"]);
    // The directory must be traversable for the refusal to come from the socket itself.
    let traversable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&dir, traversable).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tests::binary("leakmon", "LEAKMON_BIN"))
        .args(["status", "--control-socket"])
        .arg(&daemon.socket)
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("root-only"), "{stderr}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&daemon.socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // Without the daemon's help a non-root snapshot of init's fds is a
    // one-line error naming what it could not read, the reason said once.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tests::binary("leakmon", "LEAKMON_BIN"))
        .args(["snapshot", "--pid", "1", "--control-socket"])
        .arg(&daemon.socket)
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "leakmon: cannot read /proc/1/fd: Permission denied (os error 13)"
    );
}

/// The host's pid_max, raised for a test and put back when it drops.
struct RaisedPidMax(String);

const PID_MAX: &str = "/proc/sys/kernel/pid_max";

impl Drop for RaisedPidMax {
    fn drop(&mut self) {
        let _ = std::fs::write(PID_MAX, &self.0);
    }
}

/// pid_max raised after the daemon started (it maps the watched bytes of
/// the pids below pid_max at start): a process with a pid above the old
/// pid_max is watched like any other, its first scan included.
#[test]
fn a_pid_above_the_pid_max_at_start_is_watched() {
    let test = "a_pid_above_the_pid_max_at_start_is_watched";
    if !require_root(test) {
        return;
    }
    let before = std::fs::read_to_string(PID_MAX).unwrap();
    let old_max: u32 = before.trim().parse().unwrap();
    if old_max > 2 << 20 {
        eprintln!("{test}: skipped: pid_max is {old_max} already, too near Linux's limit to raise");
        return;
    }
    let dir = scratch_dir("pid-max");
    let daemon = Daemon::start(&dir, &["--match-comm", "lm-highpid"]);
    let _restore = RaisedPidMax(before);
    std::fs::write(PID_MAX, (old_max * 2).to_string()).unwrap();
    // The next pids are above the old pid_max (forks of parallel tests only
    // push them higher).
    std::fs::write("/proc/sys/kernel/ns_last_pid", (old_max + 100).to_string()).unwrap();
    let mut workload = Workload::spawn(&dir, "lm-highpid", &["bulk", "5", "1", "0", "0", "0"]);
    let pid = workload.expect("ready")["pid"].as_u64().unwrap();
    assert!(
        pid > old_max as u64,
        "pid {pid} is not above the old pid_max {old_max}"
    );
    daemon.await_status("the high pid watched", Duration::from_secs(10), |s| {
        watched_pids(s).contains(&pid)
    });
    daemon.sync();
    let ledger = daemon.ledger(pid as u32);
    let in_proc = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert_eq!(ledger["fds"].as_array().unwrap().len(), in_proc, "{ledger:#}");
    assert!(
        daemon.log_text().contains("pid_max grew"),
        "{}",
        daemon.log_text()
    );
}
