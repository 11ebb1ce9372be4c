//! `cargo xtask compare`: the A/B an optimisation is judged by. One loop,
//! runs interleaved between no daemon, another leakmon binary watching the
//! loop (A) and this build's (B), so both meet the same host noise. With
//! `--programs`, the kernel's per-program run time says where B's time
//! went; the loop timings of such a run are inflated by those statistics
//! and say nothing about overhead.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use tests::workload::Workload;

use crate::{
    bench::{Beside, Bins, Setting, Stats, run_loop, scaled_loop, stats},
    util::{cargo, exec, step},
};

pub struct Options {
    /// The other leakmon binary (A), e.g. a release build of the commit before.
    pub against: PathBuf,
    /// A loop of the workload's `loop` command (open, socket, thread, fork, tcp, ...).
    pub kind: String,
    pub runs: usize,
    pub ops: u64,
    /// Turn on kernel.bpf_stats_enabled for the run and report per-program time.
    pub programs: bool,
}

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// (run time ns, runs) of every loaded BPF program, by id, and its name.
fn program_stats() -> HashMap<u64, (String, u64, u64)> {
    let listing = crate::util::output("bpftool", &["prog", "show", "-j"]).unwrap_or_default();
    let programs: Vec<serde_json::Value> = serde_json::from_str(&listing).unwrap_or_default();
    programs
        .iter()
        .filter_map(|p| {
            let number = |key: &str| p[key].as_u64().unwrap_or(0);
            Some((
                p["id"].as_u64()?,
                (
                    p["name"].as_str()?.to_string(),
                    number("run_time_ns"),
                    number("run_cnt"),
                ),
            ))
        })
        .collect()
}

/// One contender's samples across the runs.
#[derive(Default)]
struct Samples {
    ns: Vec<f64>,
    daemon_cpu_ns: Vec<f64>,
    /// program name -> (ns per program run, program runs per loop op), per run.
    programs: HashMap<String, Vec<(f64, f64)>>,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    crate::setup::run_all()?;
    anyhow::ensure!(
        crate::util::is_root(),
        "comparisons load eBPF programs: run as root"
    );
    anyhow::ensure!(
        o.against.is_file(),
        "--against {}: no such leakmon binary",
        o.against.display()
    );
    let stats_before = std::fs::read_to_string(STATS_SYSCTL).context("reading kernel.bpf_stats_enabled")?;
    anyhow::ensure!(
        o.programs || stats_before.trim() == "0",
        "kernel.bpf_stats_enabled=1 adds two clock reads to every BPF program run; \
         `sysctl -w kernel.bpf_stats_enabled=0`, or pass --programs to measure programs instead"
    );
    step("release build");
    exec(cargo().args(["build", "--release", "--bins"]))?;
    let this = Bins::release();
    let other = Bins {
        leakmon: o.against.clone(),
        workload: this.workload.clone(),
    };
    let dir = std::env::temp_dir().join(format!("leakmon-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    if o.programs {
        std::fs::write(STATS_SYSCTL, "1").context("turning on kernel.bpf_stats_enabled")?;
    }
    let result = interleave(o, &this, &other, &dir);
    if o.programs {
        let _ = std::fs::write(STATS_SYSCTL, stats_before.trim());
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(o, &result?);
    Ok(())
}

fn interleave(o: &Options, this: &Bins, other: &Bins, dir: &Path) -> anyhow::Result<[Samples; 3]> {
    // The TCP loop's server: its own process, never watched.
    let mut server =
        (o.kind == "tcp").then(|| Workload::spawn_bin(&this.workload, dir, "lmw-tcpsrv", &["tcp-server"]));
    let tcp = match &mut server {
        Some(server) => format!("tcp:{}", server.expect("ready")["port"]),
        None => String::new(),
    };
    let (kind, ops) = scaled_loop(&o.kind, o.ops, &tcp);
    step(&format!(
        "{kind} loop, {ops} ops: {} runs × (no daemon, A = {}, B = this build)",
        o.runs,
        o.against.display()
    ));
    let contenders = [
        (Setting::NoDaemon, this),
        (Setting::Watched, other),
        (Setting::Watched, this),
    ];
    let mut samples: [Samples; 3] = Default::default();
    for run in 0..o.runs {
        for (c, (setting, bins)) in contenders.iter().enumerate() {
            let programs = || {
                if o.programs {
                    program_stats()
                } else {
                    HashMap::new()
                }
            };
            let loaded: HashSet<u64> = programs().into_keys().collect();
            let beside = Beside::start(*setting, bins, dir)?;
            let before = programs();
            let sample = run_loop(bins, dir, &beside, kind, ops);
            let after = programs();
            beside.stop();
            println!(
                "    run {}/{}: {}: {:.0} ns/op",
                run + 1,
                o.runs,
                ["no daemon", "A", "B"][c],
                sample.ns
            );
            let s = &mut samples[c];
            s.ns.push(sample.ns);
            s.daemon_cpu_ns.extend(sample.daemon_cpu_ns);
            for (id, (name, time, count)) in after {
                let Some((_, time0, count0)) = before.get(&id).filter(|_| !loaded.contains(&id)) else {
                    continue;
                };
                if count > *count0 {
                    let runs = (count - count0) as f64;
                    let per_run = (time - time0) as f64 / runs;
                    s.programs
                        .entry(name)
                        .or_default()
                        // The loop's warm-up (a twentieth) runs them too.
                        .push((per_run, runs / (ops + ops / 20) as f64));
                }
            }
        }
    }
    Ok(samples)
}

fn report(o: &Options, samples: &[Samples; 3]) {
    let base = stats(&samples[0].ns);
    let cell = |s: &Stats| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max);
    println!("\nns per op, median of {} interleaved runs (min–max):", o.runs);
    println!("    no daemon      {}", cell(&base));
    for (c, label) in [(1, "A (--against)"), (2, "B (this build)")] {
        let st = stats(&samples[c].ns);
        let cpu = stats(&samples[c].daemon_cpu_ns).median;
        println!(
            "    {label:<14} {}  {:+.1} % over no daemon; daemon CPU {cpu:.0} ns/op",
            cell(&st),
            (st.median / base.median - 1.0) * 100.0
        );
    }
    let (a, b) = (stats(&samples[1].ns).median, stats(&samples[2].ns).median);
    println!(
        "    B against A: {:+.0} ns/op ({:+.1} %)",
        b - a,
        (b / a - 1.0) * 100.0
    );
    if o.programs {
        println!("\nper program, median over the runs: ns per program run × runs per op (A → B):");
        let mut names: Vec<&String> = samples[1]
            .programs
            .keys()
            .chain(samples[2].programs.keys())
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let per = |c: usize| {
                samples[c].programs.get(name).map_or("-".to_string(), |v| {
                    let ns: Vec<f64> = v.iter().map(|x| x.0).collect();
                    let runs: Vec<f64> = v.iter().map(|x| x.1).collect();
                    format!("{:.0} × {:.2}", stats(&ns).median, stats(&runs).median)
                })
            };
            println!("    {name:<24} {} → {}", per(1), per(2));
        }
    }
}
