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

/// `leakmon snapshot --json --pid P` through each control socket of
/// `daemons` (their iterators), the same through /proc (no daemon), and
/// `other`: interleaved, `runs` times each, in that order.
fn snapshot_against(
    bins: &Bins,
    daemons: &[&Daemon],
    pid: &str,
    other: &[&str],
    runs: usize,
) -> anyhow::Result<Vec<Stats>> {
    let mut controls: Vec<&str> = daemons
        .iter()
        .map(|d| d.socket.to_str().expect("UTF-8 path"))
        .collect();
    controls.push("/nonexistent");
    let mut samples = vec![Vec::new(); controls.len() + 1];
    for _ in 0..runs {
        for (i, control) in controls.iter().enumerate() {
            let args = ["snapshot", "--json", "--pid", pid, "--control-socket", control];
            samples[i].push(time_command(Command::new(&bins.leakmon).args(args))?);
        }
        samples[controls.len()].push(time_command(Command::new(other[0]).args(&other[1..]))?);
    }
    Ok(samples.iter().map(|s| stats(s)).collect())
}

/// Open fds of every process on the host (what a host-wide iterator walks).
fn host_fds() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_dir(e.path().join("fd")).ok())
        .map(Iterator::count)
        .sum()
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
    let host_wide = Daemon::start_host_wide_iterator(&bins.leakmon, &dir.join("host-wide"));
    // This VM's hard RLIMIT_NOFILE is 20000 and root lacks CAP_SYS_RESOURCE:
    // 19.4k fds is the largest process possible here.
    let mut rows = Vec::new();
    let (mut beside, mut beside_fds) = (Vec::new(), (0, 0));
    for size in [9_700, 19_400] {
        let args = bulk_args(size);
        let mut bulk = vec!["bulk"];
        bulk.extend(args.iter().map(String::as_str));
        let mut workload = Workload::spawn_bin(&bins.workload, dir, "lmw-bulk", &bulk);
        let pid = workload.expect("ready")["pid"].as_u64().unwrap().to_string();
        let (fds, on_host) = (fd_count(&pid)?, host_fds());
        let lsof = ["lsof", "-nP", "-w", "-p", &pid];
        let times = snapshot_against(bins, &[&daemon, &host_wide], &pid, &lsof, runs)?;
        if size == 19_400 {
            // A small process beside the large one: what a host-wide walk
            // pays for the fds of other processes.
            let mut small = Command::new("sleep").arg("600").spawn()?;
            let small_pid = small.id().to_string();
            let lsof = ["lsof", "-nP", "-w", "-p", &small_pid];
            beside = snapshot_against(bins, &[&daemon, &host_wide], &small_pid, &lsof, runs)?;
            beside_fds = (fd_count(&small_pid)?, host_fds());
            small.kill()?;
            small.wait()?;
        }
        workload.send("exit");
        rows.push((fds, on_host, times));
    }
    writeln!(out, "## Snapshot vs lsof\n")?;
    writeln!(
        out,
        "Wall time of the whole command in ms, median of {runs} interleaved runs (min–max), for processes \
         of mixed fds (files, directories, pipes, 1 in 10 TCP, 1 in 14 unix sockets). *Iterator*: a daemon \
         runs, so the snapshot reads the fd table through its BPF `task_file` iterator, scoped to the \
         process; *host-wide*: the same iterator as on kernels before 6.1, which cannot scope it: it walks \
         every fd on the host (the *host fds* column) and keeps the process's; */proc*: no daemon, a \
         `readlink` per fd and sock_diag. 19.4k fds is the largest process this VM allows (hard \
         RLIMIT_NOFILE 20000, no CAP_SYS_RESOURCE), so the 100k-fd figure is extrapolated from the \
         per-fd cost between the two sizes.\n"
    )?;
    writeln!(
        out,
        "| fds | host fds | leakmon, iterator | leakmon, host-wide | leakmon, /proc | `lsof -nP -p P` | \
         lsof ÷ iterator | lsof ÷ host-wide | lsof ÷ /proc |"
    )?;
    writeln!(out, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")?;
    for (fds, on_host, times) in &rows {
        let [iter, host_wide, proc, lsof] = &times[..] else {
            unreachable!("four timings")
        };
        writeln!(
            out,
            "| {fds} | {on_host} | {} | {} | {} | {} | **{:.1}×** | {:.1}× | {:.1}× |",
            ms(iter),
            ms(host_wide),
            ms(proc),
            ms(lsof),
            lsof.median / iter.median,
            lsof.median / host_wide.median,
            lsof.median / proc.median
        )?;
    }
    let ((small, _, small_times), (large, _, large_times)) = (&rows[0], &rows[1]);
    let per_fd =
        |i: usize| (large_times[i].median - small_times[i].median) * 1000.0 / (*large - *small) as f64;
    let (iter_us, lsof_us) = (per_fd(0), per_fd(3));
    let at_100k = |i: usize, per: f64| large_times[i].median + per * (100_000 - *large) as f64 / 1000.0;
    writeln!(
        out,
        "\nPer additional fd: iterator **{iter_us:.2} µs**, host-wide {:.2} µs, lsof {lsof_us:.2} µs. \
         Extrapolated to 100k fds: iterator {:.0} ms, lsof {:.0} ms, **{:.1}×**.\n",
        per_fd(1),
        at_100k(0, iter_us),
        at_100k(3, lsof_us),
        at_100k(3, lsof_us) / at_100k(0, iter_us)
    )?;
    let (fds, on_host) = beside_fds;
    let per_other_fd = (beside[1].median - beside[0].median) * 1e6 / (on_host - fds) as f64;
    writeln!(
        out,
        "A {fds}-fd process beside the {large}-fd one ({on_host} fds on the host): iterator {}, host-wide \
         {}, /proc {} ms: a host-wide walk pays **{per_other_fd:.0} ns per fd of another process**.\n",
        ms(&beside[0]),
        ms(&beside[1]),
        ms(&beside[2])
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
            snapshot_against(bins, &[&daemon], &pid, &["ss", "-tanp"], runs)?,
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
