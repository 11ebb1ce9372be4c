//! Rules on a process's own resources: fds and threads that leak or run
//! into their limits.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Finding, Input, Rule, Severity, span, trend};
use crate::{
    fdkind::FdKind,
    ledger::{
        comm_str,
        view::{BirthView, ThreadView, syscall_name},
    },
    time,
};

const NS: u64 = 1_000_000_000;
/// Sample resources shown per alert.
pub const SAMPLES: usize = 10;

/// Who made something: the key evidence groups by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Site {
    what: String,
    tid: u32,
    thread: String,
    call: Option<String>,
}

#[derive(Default)]
struct SiteCount {
    count: u64,
    oldest_ns: u64,
    newest_ns: u64,
}

fn grouped(sites: impl Iterator<Item = (Site, u64)>, now_ns: u64) -> (Vec<Value>, Option<Site>) {
    let mut groups: BTreeMap<Site, SiteCount> = BTreeMap::new();
    for (site, born_ns) in sites {
        let g = groups.entry(site).or_default();
        g.count += 1;
        g.oldest_ns = if g.oldest_ns == 0 {
            born_ns
        } else {
            g.oldest_ns.min(born_ns)
        };
        g.newest_ns = g.newest_ns.max(born_ns);
    }
    let mut groups: Vec<(Site, SiteCount)> = groups.into_iter().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.1.count));
    let top = groups.first().map(|(site, _)| site.clone());
    let values = groups
        .iter()
        .take(SAMPLES)
        .map(|(site, g)| {
            json!({
                "created_by": site.what,
                "tid": site.tid,
                "thread": site.thread,
                "call_kind": site.call,
                "count": g.count,
                "oldest_age_s": time::age_s(g.oldest_ns, now_ns),
                "newest_age_s": time::age_s(g.newest_ns, now_ns),
            })
        })
        .collect();
    (values, top)
}

/// `, most created by openat in thread 4711 (nova-compute) during node_list calls`.
fn most_from(top: &Option<Site>, count: u64) -> String {
    let Some(site) = top else { return String::new() };
    let during = site
        .call
        .as_ref()
        .map(|c| format!(" during {c} calls"))
        .unwrap_or_default();
    format!(
        "; {count} created by {} in thread {} ({}){during}",
        site.what, site.tid, site.thread
    )
}

pub fn fd_leak(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.fd_leak;
    let (window, now) = (rule.window_s * NS, input.now_ns);
    let Some(latest) = input.history.latest() else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    for (&kind, &count) in &latest.fds_by_kind {
        let series = input.history.series(window, now, |s| {
            f64::from(s.fds_by_kind.get(&kind).copied().unwrap_or(0))
        });
        let Some(rise) = trend::steady_rise(&series, window, now) else {
            continue;
        };
        if rise < f64::from(rule.min_growth) {
            continue;
        }
        findings.push(fd_leak_finding(input, kind, count, rise));
    }
    findings
}

fn fd_leak_finding(input: &Input<'_>, kind: FdKind, count: u32, rise: f64) -> Finding {
    let rule = &input.rules.fd_leak;
    let (process, now) = (input.process, input.now_ns);
    let since = now.saturating_sub(rule.window_s * NS);
    let mut young: Vec<(&u32, &crate::ledger::FdEntry)> = process
        .fds
        .iter()
        .filter(|(_, e)| e.kind == kind && e.birth.ts_ns >= since)
        .collect();
    young.sort_by_key(|(fd, e)| (e.birth.ts_ns, **fd));
    let calls = &process.calls;
    let sites = young.iter().map(|(_, e)| {
        let site = Site {
            what: syscall_name(e.birth.syscall),
            tid: e.birth.tid,
            thread: comm_str(&e.birth.thread),
            call: e.birth.call.map(|c| c.kind.name().to_string()),
        };
        (site, e.birth.ts_ns)
    });
    let (by_site, top) = grouped(sites, now);
    let top_count = by_site.first().map_or(0, |g| g["count"].as_u64().unwrap_or(0));
    let samples: Vec<Value> = young
        .iter()
        .take(SAMPLES)
        .map(|(fd, e)| json!({ "fd": fd, "birth": BirthView::of(&e.birth, now, calls) }))
        .collect();
    Finding {
        rule: Rule::FdLeak,
        key: kind.name().to_string(),
        severity: Severity::Warning,
        summary: format!(
            "{} is leaking {} fds: {} more held than {} ago (now {count}){}",
            input.who(),
            kind.name(),
            rise as u64,
            span(rule.window_s),
            most_from(&top, top_count)
        ),
        evidence: json!({
            "kind": kind.name(),
            "open": count,
            "growth": rise as u64,
            "window_s": rule.window_s,
            "min_growth": rule.min_growth,
            "outstanding": young.len(),
            "by_site": by_site,
            "samples": samples,
        }),
        endpoint: None,
    }
}

pub fn thread_leak(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.thread_leak;
    let (window, now) = (rule.window_s * NS, input.now_ns);
    let series = input.history.series(window, now, |s| f64::from(s.threads));
    let Some(rise) = trend::steady_rise(&series, window, now) else {
        return Vec::new();
    };
    if rise < f64::from(rule.min_growth) {
        return Vec::new();
    }
    let process = input.process;
    let since = now.saturating_sub(window);
    let mut young: Vec<(&u32, &crate::ledger::ThreadEntry)> = process
        .threads
        .iter()
        .filter(|(_, t)| t.start_ns >= since)
        .collect();
    young.sort_by_key(|(tid, t)| (t.start_ns, **tid));
    let sites = young.iter().map(|(_, t)| {
        let creator = t.creator.unwrap_or(0);
        let site = Site {
            what: "clone".to_string(),
            tid: creator,
            thread: comm_str(&process.thread_name(creator)),
            call: t.birth_call.or(t.first_call).map(|c| c.kind.name().to_string()),
        };
        (site, t.start_ns)
    });
    let (by_site, top) = grouped(sites, now);
    let top_count = by_site.first().map_or(0, |g| g["count"].as_u64().unwrap_or(0));
    let samples: Vec<ThreadView> = young
        .iter()
        .take(SAMPLES)
        .map(|(tid, t)| ThreadView::of(**tid, t, now, &process.calls))
        .collect();
    vec![Finding {
        rule: Rule::ThreadLeak,
        key: "threads".to_string(),
        severity: Severity::Warning,
        summary: format!(
            "{} is leaking threads: {} more than {} ago (now {}){}",
            input.who(),
            rise as u64,
            span(rule.window_s),
            process.threads.len(),
            most_from(&top, top_count)
        ),
        evidence: json!({
            "threads": process.threads.len(),
            "growth": rise as u64,
            "window_s": rule.window_s,
            "min_growth": rule.min_growth,
            "outstanding": young.len(),
            "by_site": by_site,
            "samples": samples,
        }),
        endpoint: None,
    }]
}

fn severity_of(ratio: f64, warning: f64, critical: f64) -> Option<Severity> {
    if ratio >= critical {
        Some(Severity::Critical)
    } else if ratio >= warning {
        Some(Severity::Warning)
    } else {
        None
    }
}

pub fn fd_exhaustion(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.fd_exhaustion;
    let Some(limit) = input.limits.nofile.filter(|l| *l > 0) else {
        return Vec::new();
    };
    let open = input.process.fds.len() as u64;
    let ratio = open as f64 / limit as f64;
    let window = rule.trend_window_s * NS;
    let series = input.history.series(window, input.now_ns, |s| f64::from(s.fds));
    // A trend needs some history (5 samples over at least 5 s; the window
    // shrinks to what there is) and growth still under way.
    let covered = series.first().map_or(0, |first| input.now_ns - first.0);
    let rising =
        series.len() >= 5 && covered >= 5 * NS && trend::still_rising(&series, covered, input.now_ns);
    let slope = rising.then(|| trend::slope_per_s(&series)).flatten();
    let eta_s = slope
        .filter(|s| *s > 0.0)
        .map(|s| (limit.saturating_sub(open)) as f64 / s);
    let severity = severity_of(ratio, rule.warning_ratio, rule.critical_ratio).or_else(|| {
        eta_s
            .filter(|eta| *eta <= rule.horizon_s as f64)
            .map(|_| Severity::Warning)
    });
    let Some(severity) = severity else {
        return Vec::new();
    };
    let projection = match eta_s {
        Some(eta) => format!(
            "; at the current trend the limit is reached in {}",
            span(eta as u64)
        ),
        None => String::new(),
    };
    vec![Finding {
        rule: Rule::FdExhaustion,
        key: "nofile".to_string(),
        severity,
        summary: format!(
            "{} holds {open} fds, {:.0}% of its RLIMIT_NOFILE {limit}{projection}",
            input.who(),
            ratio * 100.0
        ),
        evidence: json!({
            "open": open,
            "limit": limit,
            "ratio": ratio,
            "warning_ratio": rule.warning_ratio,
            "critical_ratio": rule.critical_ratio,
            "trend_per_min": slope.map(|s| s * 60.0),
            "projected_exhaustion_s": eta_s,
            "projected_exhaustion_at": eta_s.map(|eta| time::rfc3339(
                std::time::SystemTime::now() + std::time::Duration::from_secs_f64(eta))),
            "by_kind": input.process.counts().into_iter()
                .map(|(k, n)| (k.name(), n)).collect::<BTreeMap<_, _>>(),
        }),
        endpoint: None,
    }]
}

pub fn emfile(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.emfile;
    let process = input.process;
    let since = input.now_ns.saturating_sub(rule.hold_s * NS);
    let recent: Vec<_> = process.failures.iter().filter(|f| f.ts_ns >= since).collect();
    let Some(last) = recent.last() else {
        return Vec::new();
    };
    let name = |errno: u32| if errno == 23 { "ENFILE" } else { "EMFILE" };
    let failures: Vec<Value> = recent
        .iter()
        .rev()
        .take(SAMPLES)
        .map(|f| {
            json!({
                "time": time::rfc3339_of_boot(f.ts_ns),
                "tid": f.tid,
                "thread": comm_str(&process.thread_name(f.tid)),
                "syscall": syscall_name(f.syscall),
                "error": name(f.errno),
            })
        })
        .collect();
    vec![Finding {
        rule: Rule::Emfile,
        key: "emfile".to_string(),
        severity: Severity::Critical,
        summary: format!(
            "{} could not create fds: {} from {} in thread {} ({} failures in the last {})",
            input.who(),
            name(last.errno),
            syscall_name(last.syscall),
            last.tid,
            recent.len(),
            span(rule.hold_s)
        ),
        evidence: json!({
            "failures": recent.len(),
            "failures_total": process.failures_total,
            "open": process.fds.len(),
            "limit": input.limits.nofile,
            "recent": failures,
        }),
        endpoint: None,
    }]
}

pub fn thread_exhaustion(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.thread_exhaustion;
    let limits = input.limits;
    let threads = input.process.threads.len() as u64;
    let candidates = [
        ("pids.max", limits.pids_current, limits.pids_max),
        ("RLIMIT_NPROC", Some(threads), limits.nproc),
        ("threads-max", limits.threads_total, limits.threads_max),
    ];
    let mut findings = Vec::new();
    for (limit_name, used, limit) in candidates {
        let (Some(used), Some(limit)) = (used, limit.filter(|l| *l > 0)) else {
            continue;
        };
        let ratio = used as f64 / limit as f64;
        let Some(severity) = severity_of(ratio, rule.warning_ratio, rule.critical_ratio) else {
            continue;
        };
        findings.push(Finding {
            rule: Rule::ThreadExhaustion,
            key: limit_name.to_string(),
            severity,
            summary: format!(
                "{} is near its thread limit: {used} of {limit_name} {limit} ({:.0}%), {threads} threads of its own",
                input.who(),
                ratio * 100.0
            ),
            evidence: json!({
                "limit_name": limit_name,
                "used": used,
                "limit": limit,
                "ratio": ratio,
                "threads": threads,
                "cgroup": limits.cgroup,
            }),
            endpoint: None,
        });
    }
    findings
}
