//! Thresholds of the detectors (`[rules]` in the config file). Every default
//! is argued in the README's configuration reference.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, invalid};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// Connections urllib3 keeps per host (nova's client: 10).
    pub pool_size: u32,
    pub fd_leak: FdLeak,
    pub socket_close_wait_leak: CloseWaitLeak,
    pub thread_leak: ThreadLeak,
    pub memory_leak: MemoryLeak,
    pub fd_exhaustion: Exhaustion,
    pub emfile: Emfile,
    pub thread_exhaustion: Exhaustion,
    pub ironic_call_hung: CallHung,
    pub ironic_poll_exhaustion: PollExhaustion,
    pub ironic_conflict_storm: RateRule,
    pub ironic_call_errors: RateRule,
    pub connection_pool_saturation: PoolSaturation,
    pub connect_failures: RateRule,
    pub plaintext_token: PlaintextToken,
    pub secret_in_log: SecretInLog,
}

/// A count that must rise steadily over a window (see `detect::trend`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FdLeak {
    pub enabled: bool,
    pub window_s: u64,
    /// Growth of one fd kind over the window that counts as a leak.
    pub min_growth: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThreadLeak {
    pub enabled: bool,
    /// A burst that falls back within a quarter of it never fires.
    pub window_s: u64,
    pub min_growth: u32,
}

/// Resident anonymous memory that rises in every quarter of a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryLeak {
    pub enabled: bool,
    /// Long: a heap grows in steps for a while after start (imports, caches).
    pub window_s: u64,
    pub min_growth_mib: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloseWaitLeak {
    pub enabled: bool,
    /// A socket counts once it has been in CLOSE_WAIT this long (an idle
    /// pooled socket waits there for its next call).
    pub min_age_s: u64,
    /// Growth window of the CLOSE_WAIT count per endpoint.
    pub window_s: u64,
    pub min_growth: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Exhaustion {
    pub enabled: bool,
    pub warning_ratio: f64,
    pub critical_ratio: f64,
    /// Warn when the trend reaches the limit within this time (fds only).
    pub horizon_s: u64,
    /// The window the trend is fitted on (fds only).
    pub trend_window_s: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Emfile {
    pub enabled: bool,
    /// Stays firing this long after the last failure.
    pub hold_s: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallHung {
    pub enabled: bool,
    pub threshold_s: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollExhaustion {
    pub enabled: bool,
    /// `[ironic]api_max_retries` when nova.conf cannot be read.
    pub api_max_retries: u32,
    /// Fraction of the unprovision loop's polls (api_max_retries + 1) that fires.
    pub ratio: f64,
    /// Unbounded loops: how long each may run.
    pub deploy_max_s: u64,
    pub power_max_s: u64,
    pub rescue_max_s: u64,
    pub console_max_s: u64,
    pub provision_max_s: u64,
}

/// At least `min_count` events within `window_s`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateRule {
    pub enabled: bool,
    pub window_s: u64,
    pub min_count: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSaturation {
    pub enabled: bool,
    /// New connections to one endpoint within `window_s` that count as churn.
    pub max_connects: u32,
    pub window_s: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlaintextToken {
    pub enabled: bool,
    /// Resolves after this long without a token sent in clear.
    pub quiet_s: u64,
}

/// Auth tokens a watched process writes to the files it appends to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretInLog {
    pub enabled: bool,
    /// Resolves after this long without another such line.
    pub quiet_s: u64,
    /// At most this much new log text is read per second, all processes
    /// together; more is jumped over (counted): a log flood costs the
    /// daemon a bounded CPU and never holds up the ring buffer's drain.
    pub scan_bytes_per_s: u64,
    /// Also follow the systemd journal for the watched processes' entries
    /// (with `journalctl`, where journald runs).
    pub journal: bool,
    /// Also scan what the process writes to its log streams: stdout and
    /// stderr when they are pipes or sockets (a container runtime's or a
    /// supervisor's collector reads them), and sockets to a syslog daemon.
    pub streams: bool,
    /// Where syslog daemons listen: a unix socket connected to one of these
    /// is a log stream (journald's own sockets are read through `journal`).
    pub syslog_paths: Vec<String>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            pool_size: 10,
            fd_leak: FdLeak::default(),
            socket_close_wait_leak: CloseWaitLeak::default(),
            thread_leak: ThreadLeak::default(),
            memory_leak: MemoryLeak::default(),
            fd_exhaustion: Exhaustion::default(),
            emfile: Emfile::default(),
            thread_exhaustion: Exhaustion::default(),
            ironic_call_hung: CallHung::default(),
            ironic_poll_exhaustion: PollExhaustion::default(),
            ironic_conflict_storm: RateRule {
                enabled: true,
                window_s: 60,
                min_count: 5,
            },
            ironic_call_errors: RateRule {
                enabled: true,
                window_s: 300,
                min_count: 3,
            },
            connection_pool_saturation: PoolSaturation::default(),
            connect_failures: RateRule {
                enabled: true,
                window_s: 60,
                min_count: 3,
            },
            plaintext_token: PlaintextToken::default(),
            secret_in_log: SecretInLog::default(),
        }
    }
}

impl Default for FdLeak {
    fn default() -> Self {
        FdLeak {
            enabled: true,
            window_s: 600,
            min_growth: 50,
        }
    }
}

impl Default for ThreadLeak {
    fn default() -> Self {
        ThreadLeak {
            enabled: true,
            window_s: 600,
            min_growth: 20,
        }
    }
}

impl Default for MemoryLeak {
    fn default() -> Self {
        MemoryLeak {
            enabled: true,
            window_s: 3600,
            min_growth_mib: 128,
        }
    }
}

impl Default for CloseWaitLeak {
    fn default() -> Self {
        CloseWaitLeak {
            enabled: true,
            min_age_s: 30,
            window_s: 600,
            min_growth: 3,
        }
    }
}

impl Default for Exhaustion {
    fn default() -> Self {
        Exhaustion {
            enabled: true,
            warning_ratio: 0.8,
            critical_ratio: 0.95,
            horizon_s: 3600,
            trend_window_s: 600,
        }
    }
}

impl Default for Emfile {
    fn default() -> Self {
        Emfile {
            enabled: true,
            hold_s: 300,
        }
    }
}

impl Default for CallHung {
    fn default() -> Self {
        CallHung {
            enabled: true,
            threshold_s: 60,
        }
    }
}

impl Default for PollExhaustion {
    fn default() -> Self {
        PollExhaustion {
            enabled: true,
            api_max_retries: 60,
            ratio: 0.8,
            deploy_max_s: 7200,
            power_max_s: 900,
            rescue_max_s: 1800,
            console_max_s: 300,
            provision_max_s: 7200,
        }
    }
}

impl Default for RateRule {
    fn default() -> Self {
        RateRule {
            enabled: true,
            window_s: 60,
            min_count: 5,
        }
    }
}

impl Default for PoolSaturation {
    fn default() -> Self {
        PoolSaturation {
            enabled: true,
            max_connects: 120,
            window_s: 60,
        }
    }
}

impl Default for PlaintextToken {
    fn default() -> Self {
        PlaintextToken {
            enabled: true,
            quiet_s: 600,
        }
    }
}

impl Default for SecretInLog {
    fn default() -> Self {
        SecretInLog {
            enabled: true,
            quiet_s: 600,
            scan_bytes_per_s: 4 * 1024 * 1024,
            journal: true,
            streams: true,
            syslog_paths: vec!["/dev/log".into()],
        }
    }
}

fn positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(())
}

fn ratios(key: &'static str, e: &Exhaustion) -> Result<(), ConfigError> {
    let ok = |r: f64| r > 0.0 && r <= 1.0;
    if !ok(e.warning_ratio) || !ok(e.critical_ratio) || e.warning_ratio > e.critical_ratio {
        return Err(invalid(
            key,
            "warning_ratio and critical_ratio must be in (0, 1], warning <= critical",
        ));
    }
    Ok(())
}

impl Rules {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("rules.pool_size", self.pool_size.into())?;
        positive("rules.fd_leak.window_s", self.fd_leak.window_s)?;
        positive("rules.fd_leak.min_growth", self.fd_leak.min_growth.into())?;
        positive("rules.thread_leak.window_s", self.thread_leak.window_s)?;
        positive("rules.thread_leak.min_growth", self.thread_leak.min_growth.into())?;
        positive("rules.memory_leak.window_s", self.memory_leak.window_s)?;
        positive(
            "rules.memory_leak.min_growth_mib",
            self.memory_leak.min_growth_mib.into(),
        )?;
        let cw = &self.socket_close_wait_leak;
        positive("rules.socket_close_wait_leak.window_s", cw.window_s)?;
        positive("rules.socket_close_wait_leak.min_growth", cw.min_growth.into())?;
        ratios("rules.fd_exhaustion", &self.fd_exhaustion)?;
        ratios("rules.thread_exhaustion", &self.thread_exhaustion)?;
        positive(
            "rules.fd_exhaustion.trend_window_s",
            self.fd_exhaustion.trend_window_s,
        )?;
        positive(
            "rules.ironic_call_hung.threshold_s",
            self.ironic_call_hung.threshold_s,
        )?;
        let pe = &self.ironic_poll_exhaustion;
        if !(pe.ratio > 0.0 && pe.ratio <= 1.0) {
            return Err(invalid("rules.ironic_poll_exhaustion.ratio", "must be in (0, 1]"));
        }
        for (key, rate) in [
            ("rules.ironic_conflict_storm", &self.ironic_conflict_storm),
            ("rules.ironic_call_errors", &self.ironic_call_errors),
            ("rules.connect_failures", &self.connect_failures),
        ] {
            if rate.window_s == 0 || rate.min_count == 0 {
                return Err(invalid(key, "window_s and min_count must be at least 1"));
            }
        }
        positive(
            "rules.secret_in_log.scan_bytes_per_s",
            self.secret_in_log.scan_bytes_per_s,
        )?;
        if let Some(path) = (self.secret_in_log.syslog_paths.iter()).find(|p| !p.starts_with(['/', '@'])) {
            return Err(invalid(
                "rules.secret_in_log.syslog_paths",
                format!("{path:?} is not a socket path (absolute, or @ for an abstract name)"),
            ));
        }
        let ps = &self.connection_pool_saturation;
        positive("rules.connection_pool_saturation.window_s", ps.window_s)?;
        positive(
            "rules.connection_pool_saturation.max_connects",
            ps.max_connects.into(),
        )?;
        Ok(())
    }

    /// The longest window any rule looks back over in the per-second samples:
    /// how many to keep (memory has a sparser series of its own).
    pub fn longest_window_s(&self) -> u64 {
        [
            self.fd_leak.window_s,
            self.thread_leak.window_s,
            self.socket_close_wait_leak.window_s,
            self.fd_exhaustion.trend_window_s,
            self.connection_pool_saturation.window_s,
            self.connect_failures.window_s,
        ]
        .into_iter()
        .max()
        .unwrap_or(60)
    }
}
