//! Benchmarks of the call capture: SSL_write_ex/SSL_read_ex through the
//! OpenSSL uprobes, and plain HTTP requests through the data tracepoints;
//! and of the log streams' capture (lines written to a stderr pipe).

use std::{fmt::Write as _, path::Path};

use tests::{testbed::Testbed, workload::Workload};

use crate::bench::{Beside, Bins, Sample, Setting, Stats, await_tls, run_loop, stats};

const SETTINGS: [Setting; 4] = [
    Setting::NoDaemon,
    Setting::Idle,
    Setting::Unwatched,
    Setting::Watched,
];

pub fn capture(bins: &Bins, dir: &Path, runs: usize, out: &mut String) -> anyhow::Result<()> {
    let tls_dir = Testbed::install().cache.join("tls");
    let tls = format!(
        "tls:{}:{}",
        tls_dir.join("server.pem").display(),
        tls_dir.join("server.key").display()
    );
    let mut server = Workload::spawn_bin(&bins.workload, dir, "lmw-httpsrv", &["http-server"]);
    let http = format!("http:{}", server.expect("ready")["port"]);
    // Watched in the "not watched" setting: it maps the same libssl, so the
    // daemon has uprobes on that file while the measured process runs.
    let mut idle = Workload::spawn_bin(&bins.workload, dir, "lmw-nobody", &["tls-idle"]);
    let idle_pid = idle.expect("ready")["pid"].as_u64().unwrap() as u32;
    // A log stream's budget is 1,024 records per CPU per second (the
    // default 4 MiB on 2 CPUs): 900 writes and their warm-up fit, 200k do not.
    let loops = [
        (tls.as_str(), 100_000u64),
        (http.as_str(), 50_000),
        ("logline", 900),
        ("logline", 200_000),
    ];
    let mut skipped_within_budget = 0;
    let mut samples: Vec<Vec<Vec<Sample>>> = (0..SETTINGS.len())
        .map(|_| (0..loops.len()).map(|_| Vec::new()).collect())
        .collect();
    for run in 0..runs {
        for (s, setting) in SETTINGS.iter().enumerate() {
            println!("    run {}/{runs}: {}", run + 1, setting.label());
            let beside = Beside::start(*setting, bins, dir)?;
            if let (Setting::Unwatched, Beside::Daemon(daemon)) = (setting, &beside) {
                await_tls(daemon, idle_pid);
            }
            for (l, (kind, ops)) in loops.iter().enumerate() {
                let skipped = || match &beside {
                    Beside::Daemon(daemon) => daemon.status()["kernel"]["log_bytes_skipped"]
                        .as_u64()
                        .unwrap_or(0),
                    _ => 0,
                };
                let before = skipped();
                samples[s][l].push(run_loop(bins, dir, &beside, kind, *ops));
                if l == 2 {
                    skipped_within_budget += skipped() - before;
                }
            }
            beside.stop();
        }
    }
    idle.send("exit");
    drop(server);
    report(&samples, runs, skipped_within_budget, out)
}

fn report(samples: &[Vec<Vec<Sample>>], runs: usize, skipped: u64, out: &mut String) -> anyhow::Result<()> {
    let latency = |s: usize, l: usize| stats(&samples[s][l].iter().map(|x| x.ns).collect::<Vec<_>>());
    let daemon_cpu = |s: usize, l: usize| {
        let cpu: Vec<f64> = samples[s][l].iter().filter_map(|x| x.daemon_cpu_ns).collect();
        stats(&cpu).median
    };
    writeln!(
        out,
        "## Call capture: HTTPS through OpenSSL uprobes, plain HTTP; log streams\n"
    )?;
    writeln!(
        out,
        "ns per iteration, median of {runs} interleaved runs (min–max); *added* is against no daemon. \
         *TLS round*: in one thread, a client `SSL_write_ex` of a nova-sized request, the server's \
         `SSL_read_ex`, its `SSL_write_ex` of the response and the client's `SSL_read_ex` (4 SSL calls, \
         all probed when watched), on loopback TCP through the system libssl. *HTTP request*: one \
         keep-alive request/response with an HTTP server in another process, both pinned to one CPU so \
         that the round trip is two context switches, not idle-state exits. Settings: the daemon \
         *watching nothing*; *not watched*: the daemon watches an idle process that maps the same libssl \
         (so the uprobes exist, scoped to that process), not the loop; *watched*: the loop is watched. \
         *Daemon CPU* is the daemon's user+system time per iteration, read from /proc after a sync. \
         *Log line*: a 171-byte nova-compute debug line written to stderr, a pipe a thread of the loop \
         drains (a collector's); watched, the daemon reads it as a log stream, and every write is a \
         ring-buffer record scanned for tokens, up to the stream budget (1,024 records per CPU per \
         second at the default `scan_bytes_per_s` on this 2-CPU machine), past which the probes only \
         count it.\n"
    )?;
    writeln!(
        out,
        "| loop | no daemon | watching nothing | not watched | watched | not watched added | watched added | daemon CPU, watched |"
    )?;
    writeln!(out, "|{}", " --- |".repeat(8))?;
    let names = [
        "TLS round (4 SSL calls)",
        "plain HTTP request + response",
        "log line, within the stream budget (900 writes)",
        "log line, past the stream budget (200k writes)",
    ];
    for (l, name) in names.iter().enumerate() {
        let st: Vec<Stats> = (0..SETTINGS.len()).map(|s| latency(s, l)).collect();
        let cell = |s: &Stats| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max);
        let added = |s: &Stats| {
            format!(
                "{:+.0} ns ({:+.1} %)",
                s.median - st[0].median,
                (s.median / st[0].median - 1.0) * 100.0
            )
        };
        let cells: Vec<String> = st.iter().map(cell).collect();
        writeln!(
            out,
            "| {name} | {} | {} | {} | {:.0} ns |",
            cells.join(" | "),
            added(&st[2]),
            added(&st[3]),
            daemon_cpu(3, l)
        )?;
    }
    let tls = |s: usize| latency(s, 0).median;
    let idle = latency(1, 0);
    writeln!(
        out,
        "\nPer watched SSL call: **{:+.2} µs** of latency (a quarter of the round's added time). For a \
         process that is not watched, the uprobes of another process add **{:+.0} ns** per round (not \
         watched vs watching nothing), against a run-to-run spread of {:.0} ns in the watching-nothing \
         runs (target: no measurable change). Per plain-HTTP request captured: **{:+.1} µs** of latency \
         and **{:.1} µs** of daemon CPU. Per log line written to a watched stream: **{:+.1} µs** of \
         latency and **{:.1} µs** of daemon CPU when shipped; **{:+.0} ns** past the budget (the probes \
         count it and ship nothing). Bytes skipped in the within-budget runs: {skipped} (0: each of \
         their writes was shipped).\n",
        (tls(3) - tls(0)) / 4.0 / 1000.0,
        tls(2) - tls(1),
        idle.max - idle.min,
        (latency(3, 1).median - latency(0, 1).median) / 1000.0,
        daemon_cpu(3, 1) / 1000.0,
        (latency(3, 2).median - latency(0, 2).median) / 1000.0,
        daemon_cpu(3, 2) / 1000.0,
        latency(3, 3).median - latency(0, 3).median,
    )?;
    Ok(())
}
