//! The real consumers of leakmon's outputs: Alertmanager (Debian
//! `prometheus-alertmanager`) receives a firing alert and its resolution;
//! Prometheus (Debian `prometheus`) scrapes `/metrics` and answers the fd
//! count of the watched process, and fires the shipped rules
//! (packaging/leakmon-rules.yml) on a refused hook and lost records. A token
//! and a password sent over plain HTTP reach none of them, nor any other
//! output. Also: `leakmon alerts`, and SIGHUP.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    alerts::{FAST_RULES, Watched},
    daemon::Daemon,
    require_root,
    servers::{Peer, Server, free_port, http_get},
    workload::Workload,
};

/// A server process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(program: &str, args: &[String], log: &Path) -> Running {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (cargo xtask setup installs it)"));
    Running(child)
}

/// Polls `check` every 200 ms until it gives a value.
fn await_value<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// A Prometheus scraping `metrics_addr` every second as job `leakmon`, with
/// `global` (YAML lines indented two spaces) added to its global section; its address.
fn start_prometheus(dir: &Path, metrics_addr: &str, global: &str) -> (Running, String) {
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "global:\n  scrape_interval: 1s\n{global}scrape_configs:\n  - job_name: leakmon\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let prometheus = start(
        "/usr/bin/prometheus",
        &[
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
            format!("--web.listen-address={prom_addr}"),
        ],
        &dir.join("prometheus.log"),
    );
    (prometheus, prom_addr)
}

fn json_get(addr: &str, path: &str) -> Option<Value> {
    let (status, body) = http_get(addr, path)?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

#[test]
fn alertmanager_receives_the_alert_and_its_resolution() {
    if !require_root("alertmanager_receives_the_alert_and_its_resolution") {
        return;
    }
    let dir = tests::scratch_dir("sink-am");
    std::fs::write(
        dir.join("am.yml"),
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let am_addr = format!("127.0.0.1:{}", free_port());
    let _am = start(
        "/usr/bin/prometheus-alertmanager",
        &[
            format!("--config.file={}", dir.join("am.yml").display()),
            format!("--storage.path={}", dir.join("am-data").display()),
            format!("--web.listen-address={am_addr}"),
            "--cluster.listen-address=".to_string(),
        ],
        &dir.join("alertmanager.log"),
    );
    await_value("Alertmanager ready", Duration::from_secs(30), || {
        http_get(&am_addr, "/-/ready").filter(|(s, _)| *s == 200)
    });
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "{FAST_RULES}\n[alerts]\nalertmanager_url = \"http://{am_addr}\"\nmetrics_listen = \"{metrics_addr}\"\n"
    )
    .replace("[alerts]\nstdout = false\nresend_interval_s = 3600\n", "");
    let server = Server::start(Peer::Answer(200));
    let mut w = Watched::start("sink-am-daemon", "lm-am", &config, &["serve"]);
    // A token in the headers and a password in the body, over plain HTTP.
    w.workload.send(&format!(
        "http {} POST /v1/nodes token {{\"auth\":{{\"password\":\"{PASSWORD}\"}}}}",
        server.addr
    ));
    w.workload.expect("answered");
    let pid = w.pid.to_string();
    let ours = |alerts: &Value| -> Option<Value> {
        alerts
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "plaintext_token" && a["labels"]["pid"] == pid.as_str())
            .cloned()
    };
    let received = await_value("the alert in Alertmanager", Duration::from_secs(30), || {
        ours(&json_get(&am_addr, "/api/v2/alerts")?)
    });
    assert_eq!(received["status"]["state"], "active", "{received:#}");
    assert_eq!(received["labels"]["severity"], "critical");
    assert!(
        received["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("clear text")
    );
    assert!(!received.to_string().contains(tests::FAKE_TOKEN));
    no_sink_holds_a_secret(&w, &am_addr, &metrics_addr);
    // quiet_s = 3: the alert resolves, and Alertmanager drops it from the active list.
    w.await_alert("plaintext_token", "resolved", Duration::from_secs(30));
    await_value("the resolution in Alertmanager", Duration::from_secs(30), || {
        let alerts = json_get(&am_addr, "/api/v2/alerts")?;
        ours(&alerts).is_none().then_some(())
    });
}

const PASSWORD: &str = "FAKE-PASSWORD-leakmon-test-not-a-credential";

/// Every output at once: Alertmanager's alerts, the alerts file, the
/// daemon's log, /metrics, and status, ledger, calls and snapshot answers.
fn no_sink_holds_a_secret(w: &Watched, am_addr: &str, metrics_addr: &str) {
    let pid = w.pid;
    let snapshot = tests::snapshot_json(pid, &w.daemon.socket);
    let outputs = [
        ("Alertmanager", http_get(am_addr, "/api/v2/alerts").unwrap().1),
        ("/metrics", http_get(metrics_addr, "/metrics").unwrap().1),
        (
            "alerts file",
            std::fs::read_to_string(w.dir.join("alerts.ndjson")).unwrap(),
        ),
        ("daemon log", w.daemon.log_text()),
        ("status", w.daemon.status().to_string()),
        ("ledger", w.daemon.ledger(pid).to_string()),
        (
            "calls",
            w.daemon
                .request(serde_json::json!({"request": "calls", "pid": pid}))
                .to_string(),
        ),
        ("snapshot", snapshot.to_string()),
    ];
    let calls = &outputs[6].1;
    assert!(
        calls.contains("POST") && calls.contains("/v1/nodes"),
        "the call was captured: {calls}"
    );
    for (sink, text) in &outputs {
        assert!(!text.is_empty(), "{sink} is empty");
        for secret in [tests::FAKE_TOKEN, PASSWORD] {
            assert!(!text.contains(secret), "{sink} holds a secret");
        }
    }
}

#[test]
fn prometheus_scrapes_the_fd_count_of_the_watched_process() {
    if !require_root("prometheus_scrapes_the_fd_count_of_the_watched_process") {
        return;
    }
    let dir = tests::scratch_dir("sink-prom");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let config = format!("{FAST_RULES}\n").replace(
        "[alerts]\n",
        &format!("[alerts]\nmetrics_listen = \"{metrics_addr}\"\n"),
    );
    let w = Watched::start(
        "sink-prom-daemon",
        "lm-prom",
        &config,
        &["bulk", "20", "2", "0", "0", "0"],
    );
    let (_prometheus, prom_addr) = start_prometheus(&dir, &metrics_addr, "");
    let truth = std::fs::read_dir(format!("/proc/{}/fd", w.pid)).unwrap().count();
    let query = format!(
        "/api/v1/query?query=sum(process_unix_file_descriptor_count%7Bpid%3D%22{}%22%7D)",
        w.pid
    );
    let value = await_value("the fd count in Prometheus", Duration::from_secs(60), || {
        let answer = json_get(&prom_addr, &query)?;
        let sample = answer["data"]["result"].as_array()?.first()?.clone();
        sample["value"][1].as_str()?.parse::<f64>().ok()
    });
    assert_eq!(
        value as usize, truth,
        "Prometheus says {value}, /proc says {truth}"
    );
    let (status, text) = http_get(&metrics_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    for family in [
        "process_thread_count",
        "process_anon_memory_bytes",
        "leakmon_alerts_firing",
        "leakmon_ring_events_lost_total",
        "leakmon_tracking_full_total",
        "leakmon_hooks_attached",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing from /metrics"
        );
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let build = format!(
        "leakmon_build_info{{version=\"{}\",kernel=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION"),
        kernel.trim()
    );
    assert!(text.contains(&build), "no {build} in /metrics");
    // The workload is idle: its heap as /proc/PID/statm gives it now is what was sampled.
    let statm = std::fs::read_to_string(format!("/proc/{}/statm", w.pid)).unwrap();
    let pages: Vec<u64> = statm.split_whitespace().map(|n| n.parse().unwrap()).collect();
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .unwrap()
        .unwrap() as u64;
    let anon = ((pages[1] - pages[2]) * page) as f64;
    let exported: f64 = text
        .lines()
        .find(|l| l.starts_with(&format!("process_anon_memory_bytes{{pid=\"{}\"", w.pid)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("a memory sample of the workload");
    assert!(
        (exported - anon).abs() <= anon / 4.0,
        "/metrics says {exported} bytes, /proc {anon}"
    );
    assert_eq!(http_get(&metrics_addr, "/other").unwrap().0, 404);
}

#[test]
fn prometheus_fires_the_shipped_rules_on_a_refused_hook_lost_records_and_unread_log_text() {
    if !require_root("prometheus_fires_the_shipped_rules_on_a_refused_hook_lost_records_and_unread_log_text")
    {
        return;
    }
    let dir = tests::scratch_dir("sink-rules");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    // A ring buffer far too small (as in overflow.rs), a hook the test
    // fault switch refuses as a kernel would, and a log scan budget of 1 KiB/s.
    let config = format!(
        "[probes]\nring_buffer_bytes = 4096\nwakeup_bytes = 4095\ndrain_interval_ms = 10000\n\
         [rules.secret_in_log]\nscan_bytes_per_s = 1024\n\
         [alerts]\nmetrics_listen = \"{metrics_addr}\"\n"
    );
    let daemon = Daemon::start_with_config_and_env(
        &dir,
        &config,
        &["--match-comm", "lmw-promflood"],
        &[("LEAKMON_TEST_REFUSE_HOOKS", "sock_error_report")],
    );
    let mut workload = Workload::spawn(&dir, "lmw-promflood", &["flood", "10000"]);
    workload.expect("started");
    daemon.sync();
    let rules_file = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/leakmon-rules.yml");
    let global = format!("  evaluation_interval: 1s\nrule_files: ['{rules_file}']\n");
    let (_prometheus, prom_addr) = start_prometheus(&dir, &metrics_addr, &global);

    // Every shipped rule loads and evaluates in the real server.
    let rules = await_value("the shipped rules evaluated", Duration::from_secs(60), || {
        let answer = json_get(&prom_addr, "/api/v1/rules")?;
        let rules = answer["data"]["groups"].as_array()?.first()?["rules"]
            .as_array()?
            .clone();
        (!rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")).then_some(rules)
    });
    let shipped = std::fs::read_to_string(rules_file)
        .unwrap()
        .matches("- alert:")
        .count();
    assert_eq!(rules.len(), shipped, "{rules:#?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule:#}");
    }
    // Scraped before the flood and the log, with nothing lost or jumped
    // over: both are increases.
    for (what, query) in [
        ("records lost", "leakmon_ring_events_lost_total"),
        (
            "log text skipped",
            "leakmon_log_scan_bytes_total{result=\"skipped\"}",
        ),
    ] {
        await_value(
            &format!("a scrape with no {what}"),
            Duration::from_secs(60),
            || {
                let answer = json_get(&prom_addr, &format!("/api/v1/query?query={query}"))?;
                let sample = answer["data"]["result"].as_array()?.first()?.clone();
                (sample["value"][1] == "0").then_some(())
            },
        );
    }
    workload.send("go");
    workload.expect("ready");
    // Then the process writes its log at 10 KB/s, ten times the budget.
    let log = dir.join("worker.log");
    workload.send(&format!("drip log 10 6000 {}", log.display()));

    let firing = ["LeakmonLogScanBehind", "LeakmonRecordsLost"];
    let alerts = await_value(&format!("{firing:?} firing"), Duration::from_secs(60), || {
        let answer = json_get(&prom_addr, "/api/v1/alerts")?;
        let alerts = answer["data"]["alerts"].as_array()?.clone();
        firing
            .iter()
            .all(|name| {
                alerts
                    .iter()
                    .any(|a| a["labels"]["alertname"] == *name && a["state"] == "firing")
            })
            .then_some(alerts)
    });
    let names: BTreeSet<&str> = alerts
        .iter()
        .filter_map(|a| a["labels"]["alertname"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["LeakmonHookMissing", "LeakmonLogScanBehind", "LeakmonRecordsLost"]),
        "only what is wrong fires or waits: {alerts:#?}"
    );
    let hook = alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == "LeakmonHookMissing")
        .unwrap();
    assert_eq!(hook["state"], "firing");
    assert_eq!(hook["labels"]["program"], "sock_error_report");
    let status = daemon.status();
    assert!(
        status["kernel"]["lost_total"].as_u64().unwrap() > 0,
        "the daemon counted no loss"
    );
    assert!(
        status["engine"]["log_bytes_skipped"].as_u64().unwrap() > 0,
        "{status:#}"
    );
    // The budget caps what was read: the first look starts at the file's end.
    let scanned = status["engine"]["log_bytes_scanned"].as_u64().unwrap();
    let seconds = status["uptime_s"].as_f64().unwrap().ceil() as u64 + 1;
    assert!(scanned <= 1024 * seconds, "{scanned} bytes read in {seconds} s");
    let log_text = daemon.log_text();
    assert_eq!(
        log_text.matches("jumped over unread").count(),
        1,
        "logged once: {log_text}"
    );
}

#[test]
fn alerts_cli_lists_what_fires_and_sighup_rejects_a_bad_config() {
    if !require_root("alerts_cli_lists_what_fires_and_sighup_rejects_a_bad_config") {
        return;
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut w = Watched::start("sink-cli", "lm-cli", FAST_RULES, &["serve"]);
    let config_path = w.dir.join("leakmon.toml");
    // A bad file at reload: rejected, the running rules stay (connect_failures min_count 3).
    std::fs::write(&config_path, "[rules.connect_failures]\nmin_count = \"many\"\n").unwrap();
    let hup = |pid: u32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap()
    };
    hup(w.daemon.pid());
    await_value("the rejection in the log", Duration::from_secs(10), || {
        w.daemon
            .log_text()
            .contains("config reload rejected")
            .then_some(())
    });
    assert!(w.daemon.log_text().contains("min_count"), "the bad key is named");
    for _ in 0..3 {
        w.workload.send(&format!("connect {addr}"));
        w.workload.expect("connected");
    }
    w.await_alert("connect_failures", "firing", Duration::from_secs(30));
    let out = tests::leakmon(&["alerts", "--json"], Some(&w.daemon.socket));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "connect_failures" && a["process"]["pid"] == w.pid),
        "{listed:#}"
    );
    let table = tests::leakmon(&["alerts"], Some(&w.daemon.socket));
    assert!(String::from_utf8_lossy(&table.stdout).contains("connect_failures"));
    // Log rotation: the file is moved away, SIGHUP opens a new one.
    std::fs::rename(w.dir.join("alerts.ndjson"), w.dir.join("alerts.ndjson.1")).unwrap();
    hup(w.daemon.pid());
    w.await_alert("connect_failures", "resolved", Duration::from_secs(30));
}
