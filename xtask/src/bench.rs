//! `cargo xtask bench`: side-by-side measurements in one run, written to
//! docs/benchmarks.md. Every number is a ratio against a baseline measured
//! in the same run, interleaved, because these machines are noisy.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use tests::{daemon::Daemon, workload::Workload};

use crate::util::{cargo, exec, root_dir, step};

pub struct Bins {
    pub leakmon: PathBuf,
    pub workload: PathBuf,
}

impl Bins {
    pub fn release() -> Bins {
        let dir = root_dir().join("target").join("release");
        Bins {
            leakmon: dir.join("leakmon"),
            workload: dir.join("leakmon-workload"),
        }
    }
}

/// What runs beside the loop under measurement.
#[derive(Clone, Copy, PartialEq)]
pub enum Setting {
    NoDaemon,
    /// A do-nothing program on every tracepoint leakmon uses.
    Floor,
    /// A do-nothing program on raw sys_enter/sys_exit (the alternative design's floor).
    RawFloor,
    /// leakmon running, watching no process at all.
    Idle,
    /// leakmon running, watching some other process.
    Unwatched,
    /// leakmon watching the loop with `probes.hold_back_fds = false`: every
    /// fd event shipped, as before the probes held creations back.
    WatchedShipEach,
    /// leakmon running and watching the loop.
    Watched,
}

impl Setting {
    const ALL: [Setting; 6] = [
        Setting::NoDaemon,
        Setting::RawFloor,
        Setting::Floor,
        Setting::Unwatched,
        Setting::WatchedShipEach,
        Setting::Watched,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Setting::NoDaemon => "no daemon",
            Setting::Floor => "floor (no-op programs, same hooks)",
            Setting::RawFloor => "raw floor (no-op on raw sys_enter/sys_exit)",
            Setting::Idle => "leakmon, watching nothing",
            Setting::Unwatched => "leakmon, loop not watched",
            Setting::WatchedShipEach => "leakmon, loop watched, every fd event shipped",
            Setting::Watched => "leakmon, loop watched",
        }
    }
}

/// Something running beside the loop: the daemon or the floor process.
pub enum Beside {
    Nothing,
    Floor(std::process::Child),
    Daemon(Daemon),
}

impl Beside {
    pub fn start(setting: Setting, bins: &Bins, dir: &Path) -> anyhow::Result<Beside> {
        Ok(match setting {
            Setting::NoDaemon => Beside::Nothing,
            Setting::Floor | Setting::RawFloor => {
                let mut child = Command::new(&bins.leakmon)
                    .arg("bench-floor")
                    .args((setting == Setting::RawFloor).then_some("--raw"))
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("starting the floor")?;
                // It says so once attached.
                let mut line = String::new();
                std::io::BufRead::read_line(
                    &mut std::io::BufReader::new(child.stderr.take().unwrap()),
                    &mut line,
                )?;
                Beside::Floor(child)
            }
            Setting::Idle => Beside::Daemon(Daemon::start_bin(
                &bins.leakmon,
                dir,
                &["--match-comm", "lmw-none-such"],
            )),
            Setting::Unwatched => Beside::Daemon(Daemon::start_bin(
                &bins.leakmon,
                dir,
                &["--match-comm", "lmw-nobody"],
            )),
            Setting::WatchedShipEach => Beside::Daemon(Daemon::start_bin_with_config(
                &bins.leakmon,
                dir,
                "[probes]\nhold_back_fds = false\n",
                &["--match-comm", "lmw-bench"],
            )),
            Setting::Watched => Beside::Daemon(Daemon::start_bin(
                &bins.leakmon,
                dir,
                &["--match-comm", "lmw-bench"],
            )),
        })
    }

    pub fn stop(self) {
        match self {
            Beside::Nothing => {}
            Beside::Floor(mut child) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let _ = child.wait();
            }
            Beside::Daemon(daemon) => {
                daemon.stop();
            }
        }
    }
}

/// CPU time a process has used so far, in ns: the sum of its threads'
/// schedstat run times (ns exact), else utime + stime from /proc/PID/stat,
/// whose clock ticks (10 ms) are too coarse for a short loop.
fn cpu_ns(pid: u32) -> f64 {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    // A thread gone between the listing and the read counts 0, rather than
    // switching this reading (but not the one it is compared with) to ticks.
    let run_ns: f64 = threads
        .filter_map(|t| {
            let schedstat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            schedstat.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum();
    if run_ns > 0.0 {
        return run_ns;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised comm: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1e9 / hz
}

/// One loop's cost: its ns per iteration and the daemon's CPU per iteration.
pub struct Sample {
    pub ns: f64,
    pub daemon_cpu_ns: Option<f64>,
}

/// Runs one loop beside `beside`; with the daemon watching it, only once
/// its TLS uprobes are in place.
pub fn run_loop(bins: &Bins, dir: &Path, beside: &Beside, kind: &str, ops: u64) -> Sample {
    let mut workload = Workload::spawn_bin(
        &bins.workload,
        dir,
        "lmw-bench",
        &["loop", kind, &ops.to_string()],
    );
    workload.expect("started");
    let daemon = match beside {
        Beside::Daemon(daemon) => Some(daemon),
        _ => None,
    };
    if let Some(daemon) = daemon {
        daemon.sync();
        let watched = daemon.status()["processes"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["pid"] == workload.pid));
        if kind.starts_with("tls:") && watched {
            await_tls(daemon, workload.pid);
        }
        if kind == "logline" && watched {
            await_stream(daemon, workload.pid);
        }
    }
    let cpu_before = daemon.map(|d| cpu_ns(d.pid()));
    workload.send("go");
    let done = workload.expect("done");
    // Everything the loop caused is decoded and applied before the CPU is read.
    let daemon_cpu_ns = daemon.zip(cpu_before).map(|(d, before)| {
        d.sync();
        (cpu_ns(d.pid()) - before) / (ops + ops / 20) as f64
    });
    workload.wait();
    Sample {
        ns: done["ns_per_op"].as_f64().unwrap(),
        daemon_cpu_ns,
    }
}

pub fn await_tls(daemon: &tests::daemon::Daemon, pid: u32) {
    daemon.await_status("TLS uprobes attached", Duration::from_secs(10), |status| {
        status["tls"]
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t["pid"] == pid))
    });
}

/// Waits until the daemon reads the loop's stderr pipe as a log stream.
fn await_stream(daemon: &tests::daemon::Daemon, pid: u32) {
    daemon.await_status("stderr read as a log stream", Duration::from_secs(10), |status| {
        (status["processes"].as_array().into_iter().flatten())
            .filter(|p| p["pid"] == pid)
            .flat_map(|p| p["log_streams"].as_array().into_iter().flatten())
            .any(|name| name.as_str().is_some_and(|n| n.starts_with("stderr (pipe:")))
    });
}

pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

pub fn stats(samples: &[f64]) -> Stats {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Stats {
        min: sorted[0],
        median: sorted[sorted.len() / 2],
        max: sorted[sorted.len() - 1],
    }
}

const LOOPS: [(&str, &str); 10] = [
    ("open", "open+close /dev/null"),
    ("socket", "socket+close (TCP)"),
    ("pipe2", "pipe2+close+close"),
    ("dup", "dup+close"),
    ("eventfd", "eventfd+close"),
    ("epoll", "epoll_create1+close"),
    ("thread", "thread create+join"),
    ("fork", "process fork+exit+wait"),
    ("exec", "process fork+exec /bin/true+wait"),
    ("tcp", "loopback TCP connect+close (server in another process)"),
];

/// The workload's loop argument for `kind` and its operations, from the
/// fd loops' count: a fork costs ~50 fd loop iterations, a connect ~10;
/// `tcp` is the loop argument that names the TCP server.
pub fn scaled_loop<'a>(kind: &'a str, ops: u64, tcp: &'a str) -> (&'a str, u64) {
    match kind {
        "thread" => (kind, ops / 20),
        "fork" => (kind, ops / 40),
        "exec" => (kind, ops / 200),
        "tcp" => (tcp, ops / 10),
        "getppid" => (kind, ops * 5),
        _ => (kind, ops),
    }
}

fn syscall_loops(bins: &Bins, dir: &Path, runs: usize, ops: u64, out: &mut String) -> anyhow::Result<()> {
    // The TCP loop's server: its own process, never watched.
    let mut server = Workload::spawn_bin(&bins.workload, dir, "lmw-tcpsrv", &["tcp-server"]);
    let tcp = format!("tcp:{}", server.expect("ready")["port"]);
    // samples[setting][loop] = ns/op of each run
    let mut samples = vec![vec![Vec::new(); LOOPS.len() + 1]; Setting::ALL.len()];
    for run in 0..runs {
        for (s, setting) in Setting::ALL.iter().enumerate() {
            println!("    run {}/{runs}: {}", run + 1, setting.label());
            let beside = Beside::start(*setting, bins, dir)?;
            for (l, (kind, _)) in LOOPS.iter().enumerate() {
                let (kind, ops) = scaled_loop(kind, ops, &tcp);
                samples[s][l].push(run_loop(bins, dir, &beside, kind, ops).ns);
            }
            let (getppid, ops) = scaled_loop("getppid", ops, &tcp);
            samples[s][LOOPS.len()].push(run_loop(bins, dir, &beside, getppid, ops).ns);
            beside.stop();
        }
    }
    writeln!(out, "## fd and thread loops\n")?;
    writeln!(
        out,
        "ns per operation, median of {runs} interleaved runs (min–max), and the ratio of medians to the \
         no-daemon baseline. *Floor* is a do-nothing eBPF program on exactly the tracepoints leakmon uses; \
         *raw floor* a do-nothing program on `raw_syscalls` sys_enter/sys_exit, the other possible design. \
         *Watched, each shipped*: the loop watched with `probes.hold_back_fds = false`, so every fd \
         creation and close is a ring-buffer record; *watched*: the default, where a creation waits \
         in a per-CPU slot and a close on the same CPU cancels both. The thread loop runs pinned to \
         one CPU (creating and joining a thread on another CPU wakes it each time, which under this \
         hypervisor spreads runs by ±20 %); the others run where the scheduler puts them.\n"
    )?;
    writeln!(
        out,
        "| loop | no daemon | raw floor | floor | not watched | watched, each shipped | watched | raw floor ratio | floor ratio | not watched ratio | each shipped ratio | watched ratio |"
    )?;
    writeln!(out, "|{}", " --- |".repeat(2 * Setting::ALL.len()))?;
    let names: Vec<&str> = LOOPS
        .iter()
        .map(|(_, n)| *n)
        .chain(["getppid (unrelated syscall)"])
        .collect();
    let mut baselines = Vec::new();
    for (l, name) in names.iter().enumerate() {
        let st: Vec<Stats> = (0..Setting::ALL.len()).map(|s| stats(&samples[s][l])).collect();
        let cell = |s: &Stats| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max);
        let ratio = |s: &Stats| format!("{:+.1} %", (s.median / st[0].median - 1.0) * 100.0);
        let cells: Vec<String> = st.iter().map(cell).collect();
        let ratios: Vec<String> = st[1..].iter().map(ratio).collect();
        writeln!(out, "| {name} | {} | {} |", cells.join(" | "), ratios.join(" | "))?;
        baselines.extend(st.into_iter().next());
    }
    let noise = noise(&baselines);
    let verdict = if noise > NOISY {
        println!("    warning: a noisy run ({noise:.1} % baseline noise): its ratios are not reliable");
        format!(" **This run is noisy (above {NOISY:.0} %): its ratios are not reliable.**")
    } else {
        String::new()
    };
    writeln!(
        out,
        "\nBaseline noise: the no-daemon runs' median lies {noise:.1} % above their fastest run \
         (median over the loops); a quiet run on this host reads about 2 %.{verdict}\n"
    )?;
    Ok(())
}

/// Above this baseline noise (percent) a run's ratios drown in it: on this
/// kind of host quiet runs read ~2 %, noisy ones 6-11 %.
const NOISY: f64 = 4.0;

/// How far each loop's median run lies above its fastest (percent), the
/// median over the loops: a host's noise pushes runs up, never down, and a
/// single slow run does not move it.
fn noise(baselines: &[Stats]) -> f64 {
    let above: Vec<f64> = baselines
        .iter()
        .map(|s| (s.median / s.min - 1.0) * 100.0)
        .collect();
    stats(&above).median
}

fn machine() -> String {
    let kernel = crate::util::output("uname", &["-r"]).unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("unknown CPU");
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    format!("Linux {}, {model}, {cores} cores", kernel.trim())
}

pub fn run(runs: usize, ops: u64, only: Option<&str>) -> anyhow::Result<()> {
    crate::setup::run_all()?;
    anyhow::ensure!(
        crate::util::is_root(),
        "benchmarks load eBPF programs: run as root"
    );
    // Per-run statistics add two clock reads to every probe and to the floor
    // program alike: they would inflate every overhead measured here.
    anyhow::ensure!(
        !std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1"),
        "kernel.bpf_stats_enabled=1 adds two clock reads to every BPF program run; \
         `sysctl -w kernel.bpf_stats_enabled=0` before benchmarking"
    );
    step("release build");
    exec(cargo().args(["build", "--release", "--bins"]))?;
    let bins = Bins::release();
    let dir = std::env::temp_dir().join(format!("leakmon-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let mut out = String::new();
    writeln!(out, "# Benchmarks\n")?;
    writeln!(
        out,
        "Reproduce with `cargo xtask bench` (as root; `--runs N --ops N` to change the sample)."
    )?;
    writeln!(
        out,
        "Machine: {}. Written by the last run of that command.\n",
        machine()
    )?;
    let wanted = |section: &str| only.is_none_or(|o| o == section);
    if wanted("loops") {
        step(&format!("fd and thread loops: {runs} runs × 5 settings"));
        syscall_loops(&bins, &dir, runs, ops, &mut out)?;
    }
    if wanted("snapshot") {
        step("snapshot of 9.7k- and 19.4k-fd processes vs lsof");
        crate::bench_snapshot::vs_lsof(&bins, &dir, runs, &mut out)?;
    }
    if wanted("sockets") {
        step("socket snapshot of 10k TCP sockets vs ss -tanp");
        crate::bench_snapshot::vs_ss(&bins, &dir, runs, &mut out)?;
    }
    if wanted("delivery") {
        crate::bench_delivery::run(&bins, &dir, 60.0, &mut out)?;
    }
    if wanted("calls") {
        step(&format!(
            "call capture: TLS rounds and HTTP requests, {runs} runs × 3 settings"
        ));
        crate::bench_calls::capture(&bins, &dir, runs, &mut out)?;
    }
    if wanted("scenarios") {
        let mut section = String::new();
        crate::bench_scenarios::latency(&mut section)?;
        if only.is_some() {
            // Minutes of real OpenStack: its table is kept, not just printed.
            crate::bench_scenarios::update_docs(&section)?;
            println!("(scenarios: their section of docs/benchmarks.md updated)");
        }
        out.push_str(&section);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if only.is_some() {
        // The scenarios section was written above; the others are printed only.
        if only == Some("scenarios") {
            println!("\n{out}");
        } else {
            println!("\n{out}\n(one section: docs/benchmarks.md left as it was)");
        }
        return Ok(());
    }
    out.push_str(include_str!("bench_notes.md"));

    let path = root_dir().join("docs").join("benchmarks.md");
    std::fs::write(&path, &out)?;
    println!("\n{out}\nwritten to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod noise_tests {
    use super::*;

    #[test]
    fn one_slow_run_is_not_noise_but_slow_medians_are() {
        // 7ad710c's quiet run: open, TCP and thread rows.
        let quiet = [
            stats(&[2705.0, 2771.0, 2844.0, 2760.0, 2790.0]),
            stats(&[30447.0, 30655.0, 31204.0, 30600.0, 30700.0]),
            stats(&[41885.0, 45118.0, 51810.0, 44000.0, 46000.0]),
        ];
        assert!(noise(&quiet) < NOISY, "{}", noise(&quiet));
        // A noisy day: the same rows with their medians well above the fastest run.
        let noisy = [
            stats(&[2755.0, 2966.0, 3407.0, 2900.0, 3000.0]),
            stats(&[31375.0, 33977.0, 35793.0, 33000.0, 34500.0]),
            stats(&[47240.0, 54317.0, 61384.0, 52000.0, 56000.0]),
        ];
        assert!(noise(&noisy) > NOISY, "{}", noise(&noisy));
    }
}
