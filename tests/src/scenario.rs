//! The end-to-end scenarios' fixture: a real Ironic, the real nova Ironic
//! driver in the `nova-compute` harness, and a daemon watching only that
//! harness with the rules' windows scaled down, writing NDJSON alerts.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    ScratchDir,
    alerts::{alerts_in, await_alert_in},
    daemon::Daemon,
    scratch_dir,
    testbed::{Ironic, NovaCompute, Testbed},
};

/// The defaults look back 10 minutes; the scenarios run for about one, so
/// every window is scaled down by the same ~15x and the thresholds with it.
/// The clean scenario runs under these same rules: they are not loosened.
pub const SCENARIO_RULES: &str = r#"
[alerts]
stdout = false
[rules.fd_leak]
window_s = 40
min_growth = 8
[rules.thread_leak]
window_s = 40
min_growth = 8
[rules.memory_leak]
window_s = 40
min_growth_mib = 8
[rules.socket_close_wait_leak]
min_age_s = 5
window_s = 40
[rules.fd_exhaustion]
trend_window_s = 40
[rules.ironic_call_hung]
threshold_s = 5
[rules.ironic_conflict_storm]
window_s = 60
min_count = 2
[rules.ironic_call_errors]
window_s = 20
[rules.plaintext_token]
quiet_s = 5
"#;

pub struct Options<'a> {
    pub tls: bool,
    pub nodes: usize,
    pub deploy_s: u32,
    pub power_s: u32,
    pub api_max_retries: u32,
    pub fake_token: Option<&'a str>,
    /// nova in eventlet mode ([`NovaCompute::start_eventlet`]; with the
    /// default token and retries).
    pub eventlet: bool,
    /// nova logs to syslog too (oslo.log's `use_syslog`: glibc's syslog()
    /// to /dev/log), besides its log file.
    pub syslog: bool,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            tls: false,
            nodes: 1,
            deploy_s: 3,
            power_s: 1,
            api_max_retries: 60,
            fake_token: None,
            eventlet: false,
            syslog: false,
        }
    }
}

pub struct Scenario {
    pub name: String,
    pub ironic: Ironic,
    pub nodes: Vec<String>,
    pub daemon: Daemon,
    pub nova: NovaCompute,
    fault_at: Option<Instant>,
    /// Last: removed once Ironic, the daemon and the harness have stopped.
    pub dir: ScratchDir,
}

impl Scenario {
    pub fn start(name: &str, ip: &str, options: Options<'_>) -> Scenario {
        let bed = Testbed::install();
        let dir = scratch_dir(name);
        let ironic =
            Ironic::start_with_delays(&bed, &dir, ip, options.tls, options.deploy_s, options.power_s);
        let nodes = ironic.enroll(&bed, options.nodes);
        let daemon = daemon_for_harness(&dir);
        if options.syslog {
            std::fs::create_dir_all(dir.join("nova")).unwrap();
            std::fs::write(dir.join("nova/override.conf"), "[DEFAULT]\nuse_syslog = True\n").unwrap();
        }
        let nova = if options.eventlet {
            assert!(options.fake_token.is_none() && options.api_max_retries == 60);
            NovaCompute::start_eventlet(&bed, &dir, &ironic)
        } else {
            NovaCompute::start_with(&bed, &dir, &ironic, options.fake_token, options.api_max_retries)
        };
        daemon.await_status("the harness watched", Duration::from_secs(30), |status| {
            let watched = status["processes"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["pid"] == nova.pid));
            let tls_ready = !options.tls
                || status["tls"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|a| a["pid"] == nova.pid));
            watched && tls_ready
        });
        Scenario {
            name: name.to_string(),
            dir,
            ironic,
            nodes,
            daemon,
            nova,
            fault_at: None,
        }
    }

    /// Marks the start of the fault: detection latency is measured from here.
    pub fn fault_starts(&mut self) {
        self.fault_at = Some(Instant::now());
    }

    pub fn alerts(&self) -> Vec<Value> {
        alerts_in(&self.dir.join("alerts.ndjson"))
    }

    /// Waits for `rule` to reach `status` for the harness; with `firing`,
    /// records the detection latency from [`Scenario::fault_starts`].
    pub fn await_alert(&self, rule: &str, status: &str, timeout: Duration) -> Value {
        let path = self.dir.join("alerts.ndjson");
        let alert = await_alert_in(&path, self.nova.pid, rule, status, timeout, || {
            format!("{}: daemon log:\n{}", self.name, self.daemon.log_text())
        });
        if status == "firing"
            && let Some(start) = self.fault_at
        {
            self.report(rule, start.elapsed());
        }
        alert
    }

    /// Appends `{scenario, rule, latency_s}` to $LEAKMON_SCENARIO_REPORT (the
    /// benchmark command collects them into docs/benchmarks.md).
    fn report(&self, rule: &str, latency: Duration) {
        eprintln!(
            "{}: {rule} detected {:.1} s after the fault started",
            self.name,
            latency.as_secs_f64()
        );
        if let Some(path) = std::env::var_os("LEAKMON_SCENARIO_REPORT") {
            let line = json!({"scenario": self.name, "rule": rule, "latency_s": latency.as_secs_f64()});
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            // One write per line: scenarios run in parallel, and `writeln!`
            // writes a JSON value in pieces that another test's line could
            // land between (seen: two socket scenarios' lines interleaved).
            file.write_all(format!("{line}\n").as_bytes()).unwrap();
        }
    }
}

/// A daemon with [`SCENARIO_RULES`] watching only the harness that lives in
/// `dir` (`dir`/nova/bin/nova-compute), its alerts in `dir`/alerts.ndjson.
pub fn daemon_for_harness(dir: &std::path::Path) -> Daemon {
    let harness = regex_escape(&dir.join("nova/bin/nova-compute").to_string_lossy());
    let alerts = dir.join("alerts.ndjson");
    Daemon::start_with_config(
        dir,
        SCENARIO_RULES,
        &[
            "--match-cmdline",
            &harness,
            "--alerts-file",
            &alerts.to_string_lossy(),
        ],
    )
}

pub fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}
