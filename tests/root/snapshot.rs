//! `leakmon snapshot` against lsof and ss on a process with thousands of fds.

use std::{collections::BTreeMap, process::Command};

use serde_json::Value;
use tests::{binary, require_root, scratch_dir, truth, watched_workload, workload::Workload};

fn snapshot(pid: u32, socket: &std::path::Path) -> Value {
    let out = Command::new(binary("leakmon", "LEAKMON_BIN"))
        .args([
            "snapshot",
            "--json",
            "--pid",
            &pid.to_string(),
            "--control-socket",
        ])
        .arg(socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn snapshot_agrees_with_lsof_and_ss() {
    if !require_root("snapshot_agrees_with_lsof_and_ss") {
        return;
    }
    let dir = scratch_dir("snapshot");
    let mut workload = Workload::spawn(&dir, "lmw-bulk", &["bulk", "1500", "300", "300", "200", "200"]);
    let ready = workload.expect("ready");
    let pid = workload.pid;
    let snap = snapshot(pid, &dir.join("no-daemon.sock"));
    assert_eq!(snap["daemon"], false);

    let lsof = truth::lsof_kinds(pid);
    let mut lsof_counts: BTreeMap<String, u64> = BTreeMap::new();
    for kind in lsof.values() {
        *lsof_counts.entry(kind.clone()).or_default() += 1;
    }
    let counts: BTreeMap<String, u64> = snap["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(counts, lsof_counts);
    assert!(snap["fds"].as_array().unwrap().len() > 3000);

    let ss = truth::ss_tcp_states(pid);
    let tcp: BTreeMap<u64, &Value> = snap["fds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "socket-tcp")
        .map(|f| (f["fd"].as_u64().unwrap(), f))
        .collect();
    assert_eq!(tcp.len(), ss.len());
    for (fd, state) in &ss {
        assert_eq!(tcp[&(*fd as u64)]["socket"]["state"], state.as_str(), "fd {fd}");
    }
    for fd in ready["close_wait_fds"].as_array().unwrap() {
        assert_eq!(tcp[&fd.as_u64().unwrap()]["socket"]["state"], "CLOSE_WAIT");
    }
    workload.send("exit");
}

#[test]
fn snapshot_with_daemon_has_births_and_unknown_pid_is_clear() {
    if !require_root("snapshot_with_daemon_has_births_and_unknown_pid_is_clear") {
        return;
    }
    let (daemon, mut workload, _) = watched_workload("snapshot-births", "lmw-births", &["kinds"]);
    let snap = snapshot(workload.pid, &daemon.socket);
    assert_eq!(snap["daemon"], true);
    for fd in snap["fds"].as_array().unwrap() {
        assert!(fd["birth"]["time"].is_string(), "no birth for {fd}");
    }
    assert!(
        snap["threads"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["creator_tid"] == workload.pid)
    );

    let out = Command::new(binary("leakmon", "LEAKMON_BIN"))
        .args(["snapshot", "--pid", "4194300"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process with pid 4194300"));
    workload.send("exit");
}
