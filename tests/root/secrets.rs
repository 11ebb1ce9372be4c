//! Secrets: an auth token sent over plain HTTP, or written where others
//! keep it (the systemd journal, a collector's pipe, syslog), fires on a
//! real watched process, and its value is in no alert or log.

use std::{
    os::unix::fs::OpenOptionsExt as _,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    alerts::{FAST_RULES, Watched, alerts_in, await_alert_in},
    require_root,
    servers::{Journald, Peer, Rsyslog, Server},
    workload::Workload,
};

const FIRE: Duration = Duration::from_secs(30);

#[test]
fn a_token_over_plain_http_fires_and_its_value_is_nowhere() {
    if !require_root("a_token_over_plain_http_fires_and_its_value_is_nowhere") {
        return;
    }
    let server = Server::start(Peer::Answer(200));
    let mut w = Watched::start("alert-token", "lm-token", FAST_RULES, &["serve"]);
    w.workload
        .send(&format!("http {} GET /v1/nodes token", server.addr));
    w.workload.expect("answered");
    let alert = w.await_alert("plaintext_token", "firing", FIRE);
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["evidence"]["requests"], 1);
    w.await_alert("plaintext_token", "resolved", FIRE);
    let everything = std::fs::read_to_string(w.dir.join("alerts.ndjson")).unwrap() + &w.daemon.log_text();
    assert!(!everything.contains(tests::FAKE_TOKEN), "the token value leaked");
}

#[test]
fn a_token_sent_to_the_journal_fires_and_its_value_is_nowhere() {
    if !require_root("a_token_sent_to_the_journal_fires_and_its_value_is_nowhere") {
        return;
    }
    let journald = match Journald::ensure() {
        Ok(journald) => journald,
        Err(why) => {
            println!("skipped a_token_sent_to_the_journal_fires_and_its_value_is_nowhere: {why}");
            return;
        }
    };
    // Unique to this run: the journal keeps earlier runs' entries.
    let since_epoch = std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos();
    let marker = format!("run-{}-{since_epoch}", std::process::id());
    let line =
        format!("request {marker} headers {{'X-Auth-Token': 'FAKE-TOKEN-leakmon-test-not-a-credential'}}");
    let config = format!("{FAST_RULES}[rules.secret_in_log]\nquiet_s = 3\n");
    // An entry from before the daemon started (in the journal before it) is not read.
    let mut w = Watched::start_after("alert-journal", "lm-journal", &config, &["serve"], |early| {
        early.send(&format!("journal native {line}"));
        early.expect("journaled");
        journald.await_entry(early.pid, &marker);
    });
    w.workload.send(&format!("journal native {line}"));
    w.workload.expect("journaled");
    // A service's stdout: a journal stream, from a process watched later.
    let mut stdout = Workload::spawn(&w.dir, "lm-journal", &["serve"]);
    let stdout_pid = stdout.expect("ready")["pid"].as_u64().unwrap() as u32;
    w.daemon.sync();
    stdout.send(&format!("journal stream {line}"));
    stdout.expect("journaled");
    let alerts = w.dir.join("alerts.ndjson");
    let log = || format!("daemon log:\n{}", w.daemon.log_text());
    for (pid, how) in [(w.pid, "native"), (stdout_pid, "stream")] {
        let alert = await_alert_in(&alerts, pid, "secret_in_log", "firing", FIRE, log);
        let evidence = &alert["evidence"];
        assert_eq!(alert["key"], "journal", "{how}");
        assert_eq!(evidence["lines"], 1, "{how}: one entry since the daemon started");
        assert_eq!(evidence["kinds"], json!(["auth_header"]), "{how}");
        assert_eq!(evidence["last_offset"], Value::Null, "{how}");
        await_alert_in(&alerts, pid, "secret_in_log", "resolved", FIRE, log);
    }
    let journal = &w.daemon.status()["journal"];
    assert_eq!(
        (journal["following"].as_bool(), journal["pids"].as_u64()),
        (Some(true), Some(2))
    );
    let everything = std::fs::read_to_string(&alerts).unwrap() + &w.daemon.log_text();
    assert!(!everything.contains(tests::FAKE_TOKEN), "the token value leaked");
    stdout.exit();
}

#[test]
fn a_token_written_to_a_collectors_pipe_fifo_or_syslog_fires_for_the_writer() {
    let name = "a_token_written_to_a_collectors_pipe_fifo_or_syslog_fires_for_the_writer";
    let Some(bed) = syslog_bed(name, "alert-streams-rsyslog") else {
        return;
    };
    let (rsyslog, socket, config) = (&bed.rsyslog, &bed.socket, &bed.config);
    // The workload's stdout is a pipe this test reads, as a container
    // runtime's shim or supervisord read a service's; its stderr a FIFO
    // the test holds open for reading.
    let mut w = Watched::start("alert-streams", "lm-streams", config, &["serve"]);
    let fifo = w.dir.join("stderr.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    w.workload.send(&format!("stderr-to {}", fifo.display()));
    w.workload.expect("stderr-to");
    w.workload.send(&format!("syslog-open {socket}"));
    w.workload.expect("syslog-open");
    let stderr_name = format!("stderr ({})", fifo.display());
    let stdout_name = format!("stdout (pipe:[{}])", pipe_inode(w.pid, 1));
    let syslog_name = format!("syslog ({socket})");
    let streams = || {
        let status = w.daemon.status();
        let process = status["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == w.pid);
        process.map(|p| p["log_streams"].clone()).unwrap_or_default()
    };
    let marked = || streams() == json!([stderr_name, stdout_name, syslog_name]);
    let deadline = Instant::now() + FIRE;
    while !marked() {
        assert!(Instant::now() < deadline, "streams {} after {FIRE:?}", streams());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The syslog socket was made and connected after the probes began
    // marking connects: telling it took no unix sock_diag dump.
    assert_eq!(w.daemon.status()["engine"]["log_stream_dumps"], 0);
    let line = "GET /v1/nodes headers {'X-Auth-Token': 'FAKE-TOKEN-leakmon-test-not-a-credential'}";
    w.workload.send(&format!("print {line}"));
    w.workload.expect("printed");
    w.workload.send(&format!("eprint {line}"));
    w.workload.expect("eprinted");
    w.workload.send(&format!("syslog {line}"));
    w.workload.expect("syslogged");
    rsyslog.await_line("GET /v1/nodes headers");
    let alerts = w.dir.join("alerts.ndjson");
    let firing = || -> Vec<Value> {
        let mut found: Vec<Value> = (alerts_in(&alerts).into_iter())
            .filter(|a| a["rule"] == "secret_in_log" && a["status"] == "firing")
            .collect();
        found.sort_by_key(|a| a["key"].as_str().map(String::from));
        found.dedup_by(|a, b| a["key"] == b["key"]);
        found
    };
    let deadline = Instant::now() + FIRE;
    while firing().len() < 3 {
        let log = w.daemon.log_text();
        assert!(
            Instant::now() < deadline,
            "alerts {:#?}\ndaemon log:\n{log}",
            firing()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (alert, key) in firing().iter().zip([&stderr_name, &stdout_name, &syslog_name]) {
        assert_eq!(
            (&alert["key"], &alert["process"]["pid"]),
            (&json!(key), &json!(w.pid))
        );
        assert_eq!(alert["evidence"]["lines"], 1, "{alert}");
        assert_eq!(alert["evidence"]["kinds"], json!(["auth_header"]), "{alert}");
        assert!(alert["evidence"]["last_offset"].is_u64(), "{alert}");
    }
    // A write longer than the 8 KiB shipped of one: the rest is counted.
    w.workload.send(&format!("print {}", "x".repeat(9000)));
    w.workload.expect("printed");
    let skipped = w.daemon.status()["kernel"]["log_bytes_skipped"].as_u64().unwrap();
    assert!((9000 - 8192..9100 - 8192).contains(&skipped), "{skipped}");
    let everything = std::fs::read_to_string(&alerts).unwrap() + &w.daemon.log_text();
    assert!(!everything.contains(tests::FAKE_TOKEN), "the token value leaked");
    // doctor says who listens at each syslog path.
    let doctor_config = w.dir.join("doctor.toml");
    let paths = format!("[rules.secret_in_log]\nsyslog_paths = [\"{socket}\", \"/nonexistent/log\"]\n");
    std::fs::write(&doctor_config, paths).unwrap();
    let out = tests::leakmon(
        &["doctor", "--json", "--config", doctor_config.to_str().unwrap()],
        None,
    );
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let syslog = checks
        .iter()
        .find(|c| c["name"] == "syslog")
        .expect("a syslog row");
    assert_eq!(
        syslog["detail"],
        format!(
            "a syslog daemon listens at {socket}: read as log streams; nothing listens at /nonexistent/log"
        )
    );
}

#[test]
fn a_token_in_the_only_message_of_a_new_syslog_connection_fires() {
    let name = "a_token_in_the_only_message_of_a_new_syslog_connection_fires";
    let Some(bed) = syslog_bed(name, "alert-syslog-once-rsyslog") else {
        return;
    };
    let (rsyslog, socket, config) = (&bed.rsyslog, &bed.socket, &bed.config);
    let mut w = Watched::start("alert-syslog-once", "lm-syslog-once", config, &["serve"]);
    // The socket is connected, used and closed within microseconds: only
    // the probes' mark at connect can have its message read.
    let line = "GET /v1/nodes headers {'X-Auth-Token': 'FAKE-TOKEN-leakmon-test-not-a-credential'}";
    w.workload.send(&format!("syslog-once {socket} {line}"));
    w.workload.expect("syslogged-once");
    rsyslog.await_line("GET /v1/nodes headers");
    let log = || w.daemon.log_text();
    let alert = await_alert_in(
        &w.dir.join("alerts.ndjson"),
        w.pid,
        "secret_in_log",
        "firing",
        FIRE,
        log,
    );
    assert_eq!(alert["key"], format!("syslog ({socket})"), "{alert}");
    assert_eq!(alert["evidence"]["lines"], 1, "{alert}");
    let everything = std::fs::read_to_string(w.dir.join("alerts.ndjson")).unwrap() + &w.daemon.log_text();
    assert!(!everything.contains(tests::FAKE_TOKEN), "the token value leaked");
}

/// A real rsyslogd on a socket of the test's, in a directory of its own,
/// and daemon rules that read syslog streams to that socket.
struct SyslogBed {
    rsyslog: Rsyslog,
    socket: String,
    config: String,
    _dir: tests::ScratchDir,
}

/// None, saying why, where the test cannot run.
fn syslog_bed(name: &str, scratch: &str) -> Option<SyslogBed> {
    if !require_root(name) {
        return None;
    }
    let dir = tests::scratch_dir(scratch);
    let rsyslog = Rsyslog::start(&dir)
        .map_err(|why| println!("skipped {name}: {why}"))
        .ok()?;
    let socket = rsyslog.socket.display().to_string();
    let config = format!("{FAST_RULES}[rules.secret_in_log]\nquiet_s = 3\nsyslog_paths = [\"{socket}\"]\n");
    Some(SyslogBed {
        rsyslog,
        socket,
        config,
        _dir: dir,
    })
}

/// The inode of the pipe `fd` of `pid` is.
fn pipe_inode(pid: u32, fd: u32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    let link = link.to_string_lossy();
    link.strip_prefix("pipe:[")
        .and_then(|l| l.strip_suffix(']'))
        .unwrap()
        .parse()
        .unwrap()
}
