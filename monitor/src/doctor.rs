//! `leakmon doctor`: what works on this host, what degrades, and how to fix
//! it. It loads the real probes (and unloads them) rather than guessing
//! from kernel versions.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{
    config::Config,
    discovery::Matcher,
    probes::{self, Probes, Settings},
    proc,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Degraded,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
        fix: fix.map(str::to_string),
    }
}

/// Every check, in the order an operator would fix them.
pub fn run(config_path: Option<&Path>) -> Vec<Check> {
    let mut checks = Vec::new();
    let config = match Config::load(config_path) {
        Ok(config) => {
            let source = config_path.map_or("defaults or /etc/leakmon/leakmon.toml".into(), |p| {
                p.display().to_string()
            });
            checks.push(check("config", Verdict::Ok, format!("valid ({source})"), None));
            Some(config)
        }
        Err(e) => {
            let fix = match e {
                crate::config::ConfigError::Read { .. } => {
                    "create the file, or name an existing one with --config"
                }
                _ => "fix the named key; every key is in the README's configuration reference",
            };
            checks.push(check("config", Verdict::Fail, e.to_string(), Some(fix)));
            None
        }
    };
    let root = nix::unistd::geteuid().is_root();
    checks.push(if root {
        check("privileges", Verdict::Ok, "running as root", None)
    } else {
        check(
            "privileges",
            Verdict::Fail,
            "not root: the daemon loads eBPF programs and reads other processes' /proc",
            // `run` refuses any other uid; the unit bounds root's capabilities instead.
            Some("run as root (the systemd unit runs it as root with only the capabilities it needs)"),
        )
    });
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    checks.push(check("kernel", Verdict::Ok, format!("Linux {release}"), None));
    checks.push(lockdown());
    checks.push(btf());
    checks.push(bpf_stats());
    checks.push(sock_diag());
    if root {
        checks.extend(hooks());
    }
    if let Some(config) = &config {
        checks.extend(journal(config));
        checks.extend(syslog(config));
        checks.extend(watched_now(config));
    }
    checks
}

/// Whether `secret_in_log` can follow the systemd journal here.
fn journal(config: &Config) -> Option<Check> {
    let rule = &config.rules.secret_in_log;
    if !(rule.enabled && rule.journal) {
        return None;
    }
    if !crate::logscan::journal::journald_listens() {
        let detail = "no systemd-journald listens: secret_in_log reads log files only";
        return Some(check("journal", Verdict::Ok, detail, None));
    }
    let version = std::process::Command::new("journalctl").arg("--version").output();
    Some(match version {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout);
            let first = version.lines().next().unwrap_or("").trim().to_string();
            let detail = format!("secret_in_log follows the systemd journal with journalctl ({first})");
            check("journal", Verdict::Ok, detail, None)
        }
        _ => check(
            "journal",
            Verdict::Degraded,
            "journald listens but journalctl does not run: what processes send to the journal is not read",
            Some("install journalctl (Debian: systemd), or set rules.secret_in_log.journal = false"),
        ),
    })
}

/// Who listens at the syslog paths `secret_in_log` reads sockets to.
fn syslog(config: &Config) -> Option<Check> {
    let rule = &config.rules.secret_in_log;
    if !(rule.enabled && rule.streams) || rule.syslog_paths.is_empty() {
        return None;
    }
    let listens = |path: &str| {
        crate::logscan::datagram_listens(path) || std::os::unix::net::UnixStream::connect(path).is_ok()
    };
    let each: Vec<String> = (rule.syslog_paths.iter())
        .map(|path| {
            if crate::logscan::streams::is_journald_path(path) {
                format!("{path} is journald's (read through the journal)")
            } else if listens(path) {
                format!("a syslog daemon listens at {path}: read as log streams")
            } else {
                format!("nothing listens at {path}")
            }
        })
        .collect();
    Some(check("syslog", Verdict::Ok, each.join("; "), None))
}

fn lockdown() -> Check {
    use probes::lockdown::{CONFIDENTIALITY, FIX, Lockdown};
    match Lockdown::read() {
        mode if mode.is_confidentiality() => check("lockdown", Verdict::Fail, CONFIDENTIALITY, Some(FIX)),
        Lockdown::Mode(mode) => check(
            "lockdown",
            Verdict::Ok,
            format!("lockdown={mode}: tracing and BPF reads of kernel memory allowed"),
            None,
        ),
        Lockdown::Absent => check("lockdown", Verdict::Ok, "no lockdown LSM", None),
        Lockdown::Unknown(why) => check(
            "lockdown",
            Verdict::Ok,
            format!("not known ({why}); the bpf check below loads the probes for real"),
            None,
        ),
    }
}

fn btf() -> Check {
    match probes::btf::Btf::load().and_then(|b| Ok(b.sock_offsets()?)) {
        Ok(_) => check(
            "btf",
            Verdict::Ok,
            "/sys/kernel/btf/vmlinux has the socket offsets",
            None,
        ),
        Err(e) => check(
            "btf",
            Verdict::Degraded,
            format!("{e:#}: socket states come from sock_diag only, BTF tracepoints are off"),
            Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        ),
    }
}

/// `kernel.bpf_stats_enabled=1` (left on by `bpftool prog profile` or a
/// tuning session) makes every BPF program run read the clock twice: a tax
/// on each syscall of every process while leakmon's probes are attached.
fn bpf_stats() -> Check {
    match std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").map(|v| v.trim().to_string()) {
        Ok(v) if v == "1" => check(
            "bpf_stats",
            Verdict::Degraded,
            "kernel.bpf_stats_enabled=1: every probe run also reads the clock twice",
            Some("sysctl -w kernel.bpf_stats_enabled=0 unless you are profiling BPF programs"),
        ),
        Ok(_) => check("bpf_stats", Verdict::Ok, "off (no per-run clock reads)", None),
        Err(_) => check("bpf_stats", Verdict::Ok, "no kernel.bpf_stats_enabled knob", None),
    }
}

/// Whether netlink sock_diag answers for TCP (tcp_diag loaded or loadable).
fn sock_diag() -> Check {
    match crate::sockdiag::SocketTable::dump_tcp(|_| false) {
        Ok(_) => check(
            "sock_diag",
            Verdict::Ok,
            "TCP socket states from netlink sock_diag",
            None,
        ),
        Err(e) => check(
            "sock_diag",
            Verdict::Degraded,
            format!(
                "sock_diag: {e}: socket states are reconciled from /proc/PID/net instead \
                 (a text read of every TCP socket in the namespace)"
            ),
            Some("modprobe tcp_diag (kernel.modules_disabled=1 keeps it from loading on demand)"),
        ),
    }
}

/// Loads the probes for real (a small ring buffer), reports each hook.
fn hooks() -> Vec<Check> {
    let settings = Settings {
        ring_buffer_bytes: 64 * 1024,
        kernel: Default::default(),
    };
    let (probes, _ring) = match Probes::load(&settings) {
        Ok(loaded) => loaded,
        Err(e) => {
            return vec![check(
                "bpf",
                Verdict::Fail,
                format!("{e:#}"),
                Some("needs bpf(), BPF ring buffers and tracepoints (Linux >= 5.8 with BTF)"),
            )];
        }
    };
    let mut checks = vec![check(
        "tracefs",
        Verdict::Ok,
        if probes.tracefs_mounted_by_us {
            format!(
                "was not mounted: mounted at {} (the daemon does the same)",
                probes::tracefs::TRACEFS
            )
        } else {
            format!("mounted at {}", probes::tracefs::TRACEFS)
        },
        None,
    )];
    let missing: Vec<_> = probes.hooks.iter().filter(|h| !h.attached).collect();
    let attached = probes.hooks.len() - missing.len();
    checks.push(check(
        "bpf",
        Verdict::Ok,
        format!("probes load; {attached} of {} hooks attach", probes.hooks.len()),
        None,
    ));
    for hook in missing {
        let verdict = if hook.essential {
            Verdict::Fail
        } else {
            Verdict::Degraded
        };
        let error = hook.error.clone().unwrap_or_default();
        let fix = if hook.program == "fd_iter" {
            "snapshots read /proc instead: the same result, slower"
        } else {
            "what it sees is repaired by /proc reconciliation, later; see README \"How it works\""
        };
        checks.push(check(
            "hook",
            verdict,
            format!("{} ({}) does not attach: {error}", hook.tracepoint, hook.program),
            Some(fix),
        ));
    }
    checks
}

/// The processes the configured discovery would watch now, and their libssl.
fn watched_now(config: &Config) -> Vec<Check> {
    let Ok(matcher) = Matcher::new(&config.discovery) else {
        return Vec::new();
    };
    let matching: Vec<proc::ProcessInfo> = proc::all_pids()
        .into_iter()
        .filter(|pid| *pid != std::process::id())
        .filter_map(|pid| proc::process_info(pid).ok())
        .filter(|info| matcher.matches(info).is_some())
        .collect();
    if matching.is_empty() {
        return vec![check(
            "discovery",
            Verdict::Ok,
            "no matching process runs now: each is picked up when it starts",
            None,
        )];
    }
    let mut checks = Vec::new();
    let mut detail = String::new();
    for info in &matching {
        let _ = write!(detail, "{} ({}) ", info.pid, info.comm);
    }
    checks.push(check(
        "discovery",
        Verdict::Ok,
        format!("would watch {}", detail.trim_end()),
        None,
    ));
    for info in &matching {
        let libs = probes::tls::libssl_of(info.pid);
        checks.push(match libs.first() {
            Some(lib) => check(
                "libssl",
                Verdict::Ok,
                format!("pid {}: {}", info.pid, lib.display()),
                None,
            ),
            None => check(
                "libssl",
                Verdict::Degraded,
                format!(
                    "pid {} maps no libssl yet: HTTPS is captured once it does",
                    info.pid
                ),
                None,
            ),
        });
    }
    checks
}

pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let verdict = match c.verdict {
            Verdict::Ok => "ok",
            Verdict::Degraded => "DEGRADED",
            Verdict::Fail => "FAIL",
        };
        let _ = writeln!(out, "{verdict:<9} {:<11} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "{:<21} fix: {fix}", "");
        }
    }
    out
}
