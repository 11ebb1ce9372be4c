//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{DEFAULT_CONTROL_SOCKET, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "leakmon",
    version,
    about = "eBPF resource-leak monitor for nova-compute: fds, sockets and threads, with their births"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (root): load the probes, watch matching processes.
    Run(RunArgs),
    /// Show a process's open fds, sockets and threads (birth records when the daemon runs).
    Snapshot(SnapshotArgs),
    /// Show the daemon's ledger for a watched process, as the daemon holds it.
    Ledger(LedgerArgs),
    /// Show a watched process's API calls: in flight, recent, poll loops, counts and latencies by kind.
    Calls(CallsArgs),
    /// Show the alerts firing now.
    Alerts(AlertsArgs),
    /// Check this host: kernel, BTF, tracefs, each hook (loaded for real), config, libssl.
    Doctor(DoctorArgs),
    /// Show what the daemon watches, which hooks are attached, and its counters.
    Status(StatusArgs),
    /// Benchmark floor: attach a do-nothing program to leakmon's tracepoints until SIGTERM.
    #[command(hide = true)]
    BenchFloor {
        /// Raw sys_enter/sys_exit instead of the per-syscall tracepoints.
        #[arg(long)]
        raw: bool,
        /// Hold the tracepoints so that other programs attaching and detaching patch no
        /// kernel text (the BTF ones get two links): the test VMs under emulation.
        #[arg(long, conflicts_with = "raw")]
        hold_text: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file [default: /etc/leakmon/leakmon.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Watch processes whose comm or argv[0]/argv[1] basename is NAME (repeatable).
    /// Any match flag replaces the configured discovery rules.
    #[arg(long, value_name = "NAME")]
    pub match_comm: Vec<String>,
    /// Watch processes whose command line matches REGEX (repeatable).
    #[arg(long, value_name = "REGEX")]
    pub match_cmdline: Vec<String>,
    /// Watch this process whatever it runs (repeatable; a process id, not a thread's).
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Control socket path [default: from the config, else /run/leakmon/leakmon.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Log line format on stderr [default: from the config, else text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Ring buffer size in bytes (power of two) [default: from the config, else 8 MiB].
    #[arg(long, value_name = "BYTES")]
    pub ring_buffer_bytes: Option<u32>,
    /// Append NDJSON alerts to FILE (reopened on SIGHUP) [default: from the config].
    #[arg(long, value_name = "FILE")]
    pub alerts_file: Option<PathBuf>,
    /// Do not print NDJSON alerts on stdout.
    #[arg(long)]
    pub no_stdout_alerts: bool,
    /// Send alerts to Alertmanager at URL (http://host:port) [default: from the config].
    #[arg(long, value_name = "URL")]
    pub alertmanager: Option<String>,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9477) [default: from the config, else off].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false, id = "target")]
pub struct Target {
    /// The process to show (a thread's id shows its process).
    #[arg(long, value_name = "PID", group = "target")]
    pub pid: Option<u32>,
    /// Every process whose comm or argv[0]/argv[1] basename is NAME.
    #[arg(long, value_name = "NAME", group = "target")]
    pub match_comm: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub target: Target,
    /// JSON instead of a table (an object for --pid, an array for --match-comm).
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Configuration file, for endpoint labels [default: /etc/leakmon/leakmon.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// The watched process (a thread's id stands for its process).
    #[arg(long, value_name = "PID")]
    pub pid: u32,
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct CallsArgs {
    /// The watched process (a thread's id stands for its process).
    #[arg(long, value_name = "PID")]
    pub pid: u32,
    /// How many of the most recent calls to list.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub recent: usize,
    /// JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Configuration file to check [default: /etc/leakmon/leakmon.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// JSON instead of a report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// JSON (an array of alerts, the NDJSON schema) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Cli, Command};

    #[test]
    fn hold_text_goes_with_the_floor_not_the_raw_floor() {
        let parsed = Cli::try_parse_from(["leakmon", "bench-floor", "--hold-text"]).unwrap();
        assert!(matches!(
            parsed.command,
            Command::BenchFloor {
                raw: false,
                hold_text: true
            }
        ));
        // The raw floor has no BTF tracepoints to hold: said, not ignored.
        let both = Cli::try_parse_from(["leakmon", "bench-floor", "--raw", "--hold-text"]);
        assert!(both.is_err());
    }
}
