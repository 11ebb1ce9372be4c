//! Reading the daemon's NDJSON alerts in tests.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{ScratchDir, daemon::Daemon, scratch_dir, workload::Workload};

/// Short windows and thresholds so that each rule fires within seconds.
pub const FAST_RULES: &str = r#"
[alerts]
stdout = false
resend_interval_s = 3600
[rules]
pool_size = 3
[rules.fd_leak]
window_s = 8
min_growth = 10
[rules.thread_leak]
window_s = 8
min_growth = 10
[rules.memory_leak]
window_s = 8
min_growth_mib = 16
[rules.socket_close_wait_leak]
min_age_s = 1
window_s = 8
[rules.emfile]
hold_s = 3
[rules.ironic_call_hung]
threshold_s = 2
[rules.ironic_conflict_storm]
window_s = 10
min_count = 3
[rules.connect_failures]
window_s = 5
min_count = 3
[rules.plaintext_token]
quiet_s = 3
"#;

pub struct Watched {
    pub daemon: Daemon,
    pub workload: Workload,
    pub pid: u32,
    /// Last: removed once the daemon and the workload have stopped.
    pub dir: ScratchDir,
}

impl Watched {
    /// A daemon with `config` (TOML) watching `comm`, writing alerts to a
    /// file, and the workload run under that name with `args`.
    pub fn start(test: &str, comm: &str, config: &str, args: &[&str]) -> Watched {
        Self::launch(test, comm, config, args, None::<fn(&mut Workload)>)
    }

    /// Like `start`, but the workload starts first and `before` drives it
    /// before the daemon starts: leakmon (re)started on a busy host.
    pub fn start_after(
        test: &str,
        comm: &str,
        config: &str,
        args: &[&str],
        before: impl FnOnce(&mut Workload),
    ) -> Watched {
        Self::launch(test, comm, config, args, Some(before))
    }

    /// The daemon starts before the workload unless there is a `before`.
    fn launch(
        test: &str,
        comm: &str,
        config: &str,
        args: &[&str],
        before: Option<impl FnOnce(&mut Workload)>,
    ) -> Watched {
        let dir = scratch_dir(test);
        let first = before.is_none().then(|| Self::daemon(&dir, comm, config));
        let mut workload = Workload::spawn(&dir, comm, args);
        let pid = workload.expect("ready")["pid"].as_u64().unwrap() as u32;
        if let Some(drive) = before {
            drive(&mut workload);
        }
        let daemon = first.unwrap_or_else(|| Self::daemon(&dir, comm, config));
        daemon.sync();
        Watched {
            dir,
            daemon,
            workload,
            pid,
        }
    }

    fn daemon(dir: &Path, comm: &str, config: &str) -> Daemon {
        let alerts = dir.join("alerts.ndjson");
        Daemon::start_with_config(
            dir,
            config,
            &["--match-comm", comm, "--alerts-file", alerts.to_str().unwrap()],
        )
    }

    pub fn alerts(&self) -> Vec<Value> {
        alerts_in(&self.dir.join("alerts.ndjson"))
    }

    /// Waits for an alert line of `rule` with `status` for the workload.
    pub fn await_alert(&self, rule: &str, status: &str, timeout: Duration) -> Value {
        await_alert_in(
            &self.dir.join("alerts.ndjson"),
            self.pid,
            rule,
            status,
            timeout,
            || format!("daemon log:\n{}", self.daemon.log_text()),
        )
    }

    /// Asserts that no alert of `rule` fires for `duration` (a must-not-fire case).
    pub fn assert_silent(&self, rule: &str, duration: Duration) {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            let fired: Vec<Value> = self
                .alerts()
                .into_iter()
                .filter(|a| a["rule"] == rule && a["process"]["pid"] == self.pid)
                .collect();
            assert!(fired.is_empty(), "{rule} fired: {fired:#?}");
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Waits until the NDJSON file at `path` has a `status` line of `rule` for
/// `pid`; on timeout, fails with the alerts and `context()`.
pub fn await_alert_in(
    path: &Path,
    pid: u32,
    rule: &str,
    status: &str,
    timeout: Duration,
    context: impl Fn() -> String,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let found = alerts_in(path)
            .into_iter()
            .find(|a| a["rule"] == rule && a["status"] == status && a["process"]["pid"] == pid);
        if let Some(alert) = found {
            return alert;
        }
        assert!(
            Instant::now() < deadline,
            "no {status} {rule} alert within {timeout:?}; alerts: {:#?}\n{}",
            alerts_in(path),
            context()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

pub fn alerts_in(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad NDJSON line {line:?}: {e}")))
        .collect()
}

/// A pids cgroup (v1 controller, else v2) with a limit, removed on drop.
pub struct PidsCgroup {
    dir: PathBuf,
}

impl PidsCgroup {
    pub fn create(name: &str, max: u32) -> Option<PidsCgroup> {
        let roots = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"];
        for root in roots {
            let dir = Path::new(root).join(format!("{name}-{}", std::process::id()));
            if std::fs::create_dir_all(&dir).is_err() {
                continue;
            }
            if std::fs::write(dir.join("pids.max"), max.to_string()).is_ok() {
                return Some(PidsCgroup { dir });
            }
            let _ = std::fs::remove_dir(&dir);
        }
        None
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // Move whatever is left back to the parent, then remove the group.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs"))
            && let Some(parent) = self.dir.parent()
        {
            for pid in procs.lines() {
                let _ = std::fs::write(parent.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
