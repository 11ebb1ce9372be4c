//! leakmon: an eBPF resource-leak monitor for nova-compute.

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;

use monitor::{
    alerts, alerts_cmd, calls_cmd,
    cli::{Cli, Command, RunArgs},
    config::{Config, LogFormat},
    control::{client, protocol::Request},
    doctor, engine, labels, probes, proc, snapshot, status_cmd,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("leakmon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The process a `--pid` names: a thread's id stands for its process (the
/// fd table and the ledger are the process's), and stderr says so. An id
/// /proc does not know is left for the command to report.
fn process_of(pid: u32) -> u32 {
    match proc::process_of(pid) {
        Ok(tgid) if tgid != pid => {
            eprintln!("leakmon: {pid} is a thread of process {tgid}: showing the process");
            tgid
        }
        _ => pid,
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Snapshot(args) => {
            let config = Config::load(args.config.as_deref())?;
            let labels = labels::Labels::new(&config.endpoints).map_err(anyhow::Error::msg)?;
            let snapshots = match (args.target.pid, &args.target.match_comm) {
                (Some(pid), _) => vec![snapshot::take(process_of(pid), &args.control_socket, &labels)?],
                (None, Some(name)) => {
                    let pids = snapshot::pids_named(name);
                    let (snapshots, gone) = snapshot::take_matching(&pids, &args.control_socket, &labels)?;
                    for pid in gone {
                        eprintln!("leakmon: process {pid} ({name}) exited before its snapshot");
                    }
                    anyhow::ensure!(!snapshots.is_empty(), "no process matches {name}");
                    snapshots
                }
                (None, None) => unreachable!("clap requires a target"),
            };
            // Streamed: a large process's snapshot is megabytes of JSON.
            let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            if args.json && args.target.pid.is_some() {
                snapshot::write_pretty_json(&mut out, &snapshots[0])?;
                writeln!(out)?;
            } else if args.json {
                snapshot::write_pretty_json(&mut out, &snapshots)?;
                writeln!(out)?;
            } else {
                let tables: Vec<String> = snapshots.iter().map(snapshot::render_table).collect();
                write!(out, "{}", tables.join("\n"))?;
            }
            out.flush()?;
            // The process ends here: freeing a large snapshot's hundred
            // thousand small allocations one by one would only cost time.
            std::mem::forget(snapshots);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ledger(args) => {
            let pid = process_of(args.pid);
            let data = client::request(&args.control_socket, &Request::Ledger { pid })?;
            println!("{}", serde_json::to_string_pretty(&data)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchFloor { raw, hold_text } => {
            let _probes = probes::load_floor(raw, hold_text)?;
            let signals = nix::sys::signal::SigSet::from_iter([
                nix::sys::signal::Signal::SIGTERM,
                nix::sys::signal::Signal::SIGINT,
            ]);
            signals.thread_block()?;
            eprintln!("floor attached; waiting for SIGTERM");
            signals.wait()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Calls(args) => {
            let request = Request::Calls {
                pid: process_of(args.pid),
                recent: args.recent,
            };
            let data = client::request(&args.control_socket, &request)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&data)?);
            } else {
                print!("{}", calls_cmd::render(&serde_json::from_value(data)?));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(args) => {
            let checks = doctor::run(args.config.as_deref());
            if args.json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                print!("{}", doctor::render(&checks));
            }
            let failed = checks.iter().any(|c| c.verdict == doctor::Verdict::Fail);
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Alerts(args) => {
            let data = client::request(&args.control_socket, &Request::Alerts)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&data)?);
            } else {
                print!(
                    "{}",
                    alerts_cmd::render(&serde_json::from_value::<Vec<alerts::Alert>>(data)?)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let data = client::request(&args.control_socket, &Request::Status)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&data)?);
            } else {
                print!("{}", status_cmd::render(&data));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The config file with the command line's overrides on top.
fn effective_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if !args.match_comm.is_empty() || !args.match_cmdline.is_empty() || !args.pid.is_empty() {
        config.discovery.names = args.match_comm.clone();
        config.discovery.cmdline_regex = args.match_cmdline.clone();
        config.discovery.pids = args.pid.clone();
    }
    if let Some(path) = &args.control_socket {
        config.daemon.control_socket = path.clone();
    }
    if let Some(format) = args.log_format {
        config.daemon.log_format = format;
    }
    if let Some(bytes) = args.ring_buffer_bytes {
        config.probes.ring_buffer_bytes = bytes;
    }
    if let Some(path) = &args.alerts_file {
        config.alerts.file = Some(path.clone());
    }
    if args.no_stdout_alerts {
        config.alerts.stdout = false;
    }
    if let Some(url) = &args.alertmanager {
        config.alerts.alertmanager_url = Some(url.clone());
    }
    if let Some(addr) = args.metrics_listen {
        config.alerts.metrics_listen = Some(addr);
    }
    config.validate()?;
    Ok(config)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = effective_config(&args)?;
    init_logging(config.daemon.log_format);
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("the daemon loads eBPF programs: run it as root");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(engine::run(config, Box::new(move || effective_config(&args))))?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
