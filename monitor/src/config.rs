//! The configuration file (TOML). Unknown keys and bad values are errors that
//! name the key; nothing silently falls back to a default.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use regex::Regex;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const DEFAULT_PATH: &str = "/etc/leakmon/leakmon.toml";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/leakmon/leakmon.sock";

#[derive(Debug, Error)]
pub enum ConfigError {
    // `cause`, not `source`: the message says it once, so an error chain
    // (`{:#}`) does not repeat it.
    #[error("cannot read config file {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub discovery: Discovery,
    pub daemon: Daemon,
    pub probes: Probes,
    /// `"host:port" = "label"` (host an IP address or `*`), on top of the
    /// default labels by port (ironic-api 6385, keystone 5000/35357, ...).
    pub endpoints: BTreeMap<String, String>,
    pub alerts: Alerts,
    /// Detector thresholds (`crate::detect::config`).
    pub rules: crate::detect::Rules,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Alerts {
    /// NDJSON alerts on stdout.
    pub stdout: bool,
    /// NDJSON alerts appended to this file too (reopened on SIGHUP).
    pub file: Option<PathBuf>,
    /// Alertmanager base URL (`http://host:9093`).
    pub alertmanager_url: Option<String>,
    /// How often Alertmanager gets firing alerts again (keep it below its resolve_timeout, 5 min).
    pub alertmanager_resend_s: u64,
    /// How often a firing alert is repeated on the NDJSON sinks.
    pub resend_interval_s: u64,
    /// Where Prometheus `/metrics` is served (`127.0.0.1:9477`); off when absent.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The `host` of alerts [default: the hostname].
    pub host: Option<String>,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            stdout: true,
            file: None,
            alertmanager_url: None,
            alertmanager_resend_s: 60,
            resend_interval_s: 3600,
            metrics_listen: None,
            host: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Discovery {
    /// Watch processes whose comm, or argv[0]/argv[1] basename, is one of these.
    pub names: Vec<String>,
    /// Watch processes whose command line (arguments joined by spaces) matches.
    pub cmdline_regex: Vec<String>,
    /// Watch these pids whatever they run.
    pub pids: Vec<u32>,
    /// The most processes watched at once (matches and their children):
    /// bounds what a fork storm in a watched process costs the daemon.
    pub max_processes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Daemon {
    pub control_socket: PathBuf,
    /// `text` or `json` log lines on stderr.
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Probes {
    /// Ring buffer size: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Wake the reader once this many bytes wait (0: on every event).
    pub wakeup_bytes: u32,
    /// How often the reader drains the ring buffer without a wakeup.
    pub drain_interval_ms: u64,
    /// How often every watched process is reconciled with /proc.
    pub reconcile_interval_s: u64,
    /// Hold each fd creation back in the kernel (one per CPU) so that an fd
    /// closed again at once costs no records.
    pub hold_back_fds: bool,
}

/// The largest pid_max Linux allows: more processes than that cannot exist.
const PID_MAX_LIMIT: usize = 4 << 20;

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            names: vec!["nova-compute".to_string()],
            cmdline_regex: Vec::new(),
            pids: Vec::new(),
            max_processes: crate::ledger::DEFAULT_MAX_PROCESSES,
        }
    }
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            log_format: LogFormat::Text,
        }
    }
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            ring_buffer_bytes: 8 << 20,
            wakeup_bytes: 1 << 20,
            drain_interval_ms: 100,
            reconcile_interval_s: 60,
            hold_back_fds: true,
        }
    }
}

impl Config {
    /// Loads `path`; with no path, the default file if it exists, else defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default());
            }
            Err(cause) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    cause,
                });
            }
        };
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=PID_MAX_LIMIT).contains(&self.discovery.max_processes) {
            return Err(invalid(
                "discovery.max_processes",
                format!(
                    "must be 1 to {PID_MAX_LIMIT}, got {}",
                    self.discovery.max_processes
                ),
            ));
        }
        for regex in &self.discovery.cmdline_regex {
            Regex::new(regex).map_err(|e| invalid("discovery.cmdline_regex", e.to_string()))?;
        }
        if self
            .discovery
            .names
            .iter()
            .any(|n| n.is_empty() || n.contains('/'))
        {
            return Err(invalid(
                "discovery.names",
                "a name is a basename: not empty, no '/'",
            ));
        }
        if self.discovery.pids.contains(&0) {
            return Err(invalid("discovery.pids", "pid 0 is not a process"));
        }
        let p = &self.probes;
        if !p.ring_buffer_bytes.is_power_of_two() || p.ring_buffer_bytes < 4096 {
            return Err(invalid(
                "probes.ring_buffer_bytes",
                format!(
                    "must be a power of two of at least 4096, got {}",
                    p.ring_buffer_bytes
                ),
            ));
        }
        if p.wakeup_bytes >= p.ring_buffer_bytes {
            return Err(invalid(
                "probes.wakeup_bytes",
                format!("must be below probes.ring_buffer_bytes ({})", p.ring_buffer_bytes),
            ));
        }
        if !(1..=10_000).contains(&p.drain_interval_ms) {
            return Err(invalid("probes.drain_interval_ms", "must be 1..=10000"));
        }
        if p.reconcile_interval_s == 0 {
            return Err(invalid("probes.reconcile_interval_s", "must be at least 1"));
        }
        crate::labels::Labels::new(&self.endpoints).map_err(|e| invalid("endpoints", e))?;
        if let Some(url) = &self.alerts.alertmanager_url {
            crate::alerts::alertmanager::parse_url(url)
                .map_err(|e| invalid("alerts.alertmanager_url", e.to_string()))?;
        }
        if self.alerts.alertmanager_resend_s == 0 || self.alerts.resend_interval_s == 0 {
            return Err(invalid(
                "alerts.resend_interval_s",
                "resend_interval_s and alertmanager_resend_s must be at least 1",
            ));
        }
        if self
            .alerts
            .file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            return Err(invalid("alerts.file", "must not be empty"));
        }
        self.rules.validate()?;
        if self.daemon.control_socket.as_os_str().is_empty() {
            return Err(invalid("daemon.control_socket", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn keys_parse() {
        let config = Config::parse(
            r#"
            [discovery]
            names = ["nova-compute", "ironic"]
            cmdline_regex = ["nova-compute --config-file"]
            pids = [42]
            [daemon]
            control_socket = "/tmp/x.sock"
            log_format = "json"
            [probes]
            ring_buffer_bytes = 65536
            wakeup_bytes = 0
            drain_interval_ms = 10
            reconcile_interval_s = 5
            [endpoints]
            "192.0.2.10:6385" = "ironic-api"
            "*:8774" = "nova-api"
            [alerts]
            stdout = false
            file = "/var/log/leakmon/alerts.ndjson"
            alertmanager_url = "http://127.0.0.1:9093"
            metrics_listen = "127.0.0.1:9477"
            [rules]
            pool_size = 4
            [rules.socket_close_wait_leak]
            min_age_s = 5
            "#,
        )
        .unwrap();
        assert_eq!(config.discovery.pids, [42]);
        assert_eq!(config.daemon.log_format, LogFormat::Json);
        assert_eq!(config.probes.ring_buffer_bytes, 65536);
        assert_eq!(config.endpoints["*:8774"], "nova-api");
        assert_eq!(
            config.alerts.metrics_listen,
            Some("127.0.0.1:9477".parse().unwrap())
        );
        assert_eq!(config.rules.pool_size, 4);
        assert_eq!(config.rules.socket_close_wait_leak.min_age_s, 5);
        assert_eq!(
            config.rules.socket_close_wait_leak.window_s, 600,
            "unset keys keep defaults"
        );
    }

    fn error_of(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = error_of("[probes]\nring_bufer_bytes = 4096\n");
        assert!(err.contains("ring_bufer_bytes"), "{err}");
        let err = error_of("[dicovery]\n");
        assert!(err.contains("dicovery"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("[probes]\nring_buffer_bytes = 1000\n", "probes.ring_buffer_bytes"),
            (
                "[probes]\nring_buffer_bytes = 4096\nwakeup_bytes = 4096\n",
                "probes.wakeup_bytes",
            ),
            ("[probes]\ndrain_interval_ms = 0\n", "probes.drain_interval_ms"),
            (
                "[discovery]\ncmdline_regex = [\"(\"]\n",
                "discovery.cmdline_regex",
            ),
            ("[discovery]\nnames = [\"/usr/bin/x\"]\n", "discovery.names"),
            ("[discovery]\npids = [0]\n", "discovery.pids"),
            ("[discovery]\nmax_processes = 0\n", "discovery.max_processes"),
            ("[daemon]\nlog_format = \"xml\"\n", "log_format"),
            ("[probes]\nring_buffer_bytes = \"big\"\n", "ring_buffer_bytes"),
            ("[endpoints]\n\"ironic:6385\" = \"x\"\n", "endpoints"),
            (
                "[alerts]\nalertmanager_url = \"https://am\"\n",
                "alerts.alertmanager_url",
            ),
            ("[alerts]\nmetrics_listen = \"nowhere\"\n", "metrics_listen"),
            ("[rules]\npool_size = 0\n", "rules.pool_size"),
            (
                "[rules.secret_in_log]\nsyslog_paths = [\"dev/log\"]\n",
                "rules.secret_in_log.syslog_paths",
            ),
            ("[rules.fd_leak]\nwindow_s = 0\n", "rules.fd_leak.window_s"),
            (
                "[rules.fd_exhaustion]\nwarning_ratio = 1.5\n",
                "rules.fd_exhaustion",
            ),
            ("[rules.fd_leak]\nwindow = 5\n", "window"),
            ("[rules.nope]\n", "nope"),
        ];
        for (text, key) in cases {
            let err = error_of(text);
            assert!(err.contains(key), "{text:?} -> {err}");
        }
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_but_the_default_may_be_absent() {
        let err = Config::load(Some(Path::new("/nonexistent/leakmon.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/leakmon.toml"), "{err}");
        // As main prints it: the OS's reason once, not again as the chain's cause.
        let printed = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(
            printed.matches("No such file or directory").count(),
            1,
            "{printed}"
        );
    }
}
