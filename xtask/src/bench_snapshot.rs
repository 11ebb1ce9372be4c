//! Snapshot benchmarks: `leakmon snapshot` through the daemon's BPF iterator
//! and through /proc, against `lsof -p` and `ss -tanp`, side by side.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use tests::{daemon::Daemon, workload::Workload};

use crate::bench::{Bins, Stats, stats};

fn time_command(cmd: &mut Command) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    anyhow::ensure!(status.success(), "{cmd:?} failed");
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

fn ms(s: &Stats) -> String {
    format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max)
}

/// `leakmon snapshot --json --pid P` with the daemon's iterator, the same
/// through /proc (no daemon), and `other`: interleaved, `runs` times each.
fn snapshot_against(
    bins: &Bins,
    daemon: &Daemon,
    pid: &str,
    other: &[&str],
    runs: usize,
) -> anyhow::Result<[Stats; 3]> {
    let mut samples: [Vec<f64>; 3] = Default::default();
    let socket = daemon.socket.to_str().expect("UTF-8 path");
    for _ in 0..runs {
        for (i, control) in [socket, "/nonexistent"].into_iter().enumerate() {
            let args = ["snapshot", "--json", "--pid", pid, "--control-socket", control];
            samples[i].push(time_command(Command::new(&bins.leakmon).args(args))?);
        }
        samples[2].push(time_command(Command::new(other[0]).args(&other[1..]))?);
    }
    Ok(samples.map(|s| stats(&s)))
}

fn fd_count(pid: &str) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The workload's `bulk` arguments for about `fds` mixed fds: files and
/// directories, pipes, TCP pairs (1/10), unix pairs (1/28).
fn bulk_args(fds: usize) -> [String; 5] {
    let tcp_pairs = fds / 20;
    let unix_pairs = fds / 28;
    let pipes = fds / 8;
    let files = fds - 2 * (tcp_pairs + unix_pairs + pipes);
    [files, pipes, tcp_pairs, 0, unix_pairs].map(|n| n.to_string())
}

pub fn vs_lsof(bins: &Bins, dir: &Path, runs: usize, out: &mut String) -> anyhow::Result<()> {
    let daemon = Daemon::start_bin(&bins.leakmon, dir, &["--match-comm", "lmw-none-such"]);
    // This VM's hard RLIMIT_NOFILE is 20000 and root lacks CAP_SYS_RESOURCE:
    // 19.4k fds is the largest process possible here.
    let mut rows = Vec::new();
    for size in [9_700, 19_400] {
        let args = bulk_args(size);
        let mut bulk = vec!["bulk"];
        bulk.extend(args.iter().map(String::as_str));
        let mut workload = Workload::spawn_bin(&bins.workload, dir, "lmw-bulk", &bulk);
        let pid = workload.expect("ready")["pid"].as_u64().unwrap().to_string();
        let fds = fd_count(&pid)?;
        let times = snapshot_against(bins, &daemon, &pid, &["lsof", "-nP", "-w", "-p", &pid], runs)?;
        workload.send("exit");
        rows.push((fds, times));
    }
    writeln!(out, "## Snapshot vs lsof\n")?;
    writeln!(
        out,
        "Wall time of the whole command in ms, median of {runs} interleaved runs (min–max), for processes \
         of mixed fds (files, directories, pipes, 1 in 10 TCP, 1 in 14 unix sockets). *Iterator*: a daemon \
         runs, so the snapshot reads the fd table through its BPF `task_file` iterator; */proc*: no daemon, \
         a `readlink` per fd and sock_diag. 19.4k fds is the largest process this VM allows (hard \
         RLIMIT_NOFILE 20000, no CAP_SYS_RESOURCE), so the 100k-fd figure is extrapolated from the \
         per-fd cost between the two sizes.\n"
    )?;
    writeln!(
        out,
        "| fds | leakmon, iterator | leakmon, /proc | `lsof -nP -p P` | lsof ÷ iterator | lsof ÷ /proc |"
    )?;
    writeln!(out, "| --- | --- | --- | --- | --- | --- |")?;
    for (fds, [iter, proc, lsof]) in &rows {
        writeln!(
            out,
            "| {fds} | {} | {} | {} | **{:.1}×** | {:.1}× |",
            ms(iter),
            ms(proc),
            ms(lsof),
            lsof.median / iter.median,
            lsof.median / proc.median
        )?;
    }
    let ((small, [si, _, sl]), (large, [li, _, ll])) = (&rows[0], &rows[1]);
    let per_fd = |a: f64, b: f64| (b - a) * 1000.0 / (*large - *small) as f64;
    let (iter_us, lsof_us) = (per_fd(si.median, li.median), per_fd(sl.median, ll.median));
    let at_100k = |fixed: f64, per: f64, fixed_at: usize| fixed + per * (100_000 - fixed_at) as f64 / 1000.0;
    writeln!(
        out,
        "\nPer additional fd: iterator **{iter_us:.2} µs**, lsof {lsof_us:.2} µs. Extrapolated to 100k fds: \
         iterator {:.0} ms, lsof {:.0} ms, **{:.1}×**.\n",
        at_100k(li.median, iter_us, *large),
        at_100k(ll.median, lsof_us, *large),
        at_100k(ll.median, lsof_us, *large) / at_100k(li.median, iter_us, *large)
    )?;
    Ok(())
}

pub fn vs_ss(bins: &Bins, dir: &Path, runs: usize, out: &mut String) -> anyhow::Result<()> {
    let daemon = Daemon::start_bin(&bins.leakmon, dir, &["--match-comm", "lmw-none-such"]);
    // Two sizes: the difference is the cost of a socket, without the
    // command's fixed start (process, daemon request, small /proc reads).
    let mut rows = Vec::new();
    for pairs in ["2500", "5000"] {
        let mut workload = Workload::spawn_bin(
            &bins.workload,
            dir,
            "lmw-socks",
            &["bulk", "0", "0", pairs, "0", "0"],
        );
        let pid = workload.expect("ready")["pid"].as_u64().unwrap().to_string();
        let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))?
            .filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            })
            .count();
        rows.push((
            sockets,
            snapshot_against(bins, &daemon, &pid, &["ss", "-tanp"], runs)?,
        ));
        workload.send("exit");
        workload.wait();
    }
    let ((small, small_times), (large, times)) = (&rows[0], &rows[1]);
    writeln!(
        out,
        "## Socket snapshot: {small} and {large} TCP sockets in one process\n"
    )?;
    writeln!(
        out,
        "Wall time of the whole command at {large} sockets, median of {runs} (min–max); *per socket*: \
         that time divided by the sockets (so it includes process start and JSON output); *per \
         additional socket*: the difference of the medians at {large} and {small} sockets over the \
         difference in sockets (the fixed start left out).\n"
    )?;
    writeln!(
        out,
        "| command | ms | µs per socket | µs per additional socket |\n| --- | --- | --- | --- |"
    )?;
    let labels = [
        "`leakmon snapshot --json --pid P`, iterator (fds, states, endpoints)",
        "`leakmon snapshot --json --pid P`, /proc and sock_diag",
        "`ss -tanp` (every TCP socket on the host, with owners)",
    ];
    for ((label, s), before) in labels.into_iter().zip(times).zip(small_times) {
        let per_additional = (s.median - before.median) * 1000.0 / (large - small) as f64;
        writeln!(
            out,
            "| {label} | {} | {:.2} | {per_additional:.2} |",
            ms(s),
            s.median * 1000.0 / *large as f64
        )?;
    }
    writeln!(out)?;
    Ok(())
}
