//! `memory_leak`: a process's heap that keeps growing. nova-ironic.md's
//! pattern 5 (`[ironic]collect_timing`: keystoneauth keeps a record per
//! request forever) and any cache or object graph that is never freed look
//! the same from outside: resident anonymous memory whose floor rises in
//! every quarter of a long window. The growth per API request the process
//! sent in that window says whether it scales with its calls.

use serde_json::json;

use super::{Finding, Input, Rule, Severity, span, trend};

const NS: u64 = 1_000_000_000;
const MIB: f64 = 1024.0 * 1024.0;

pub fn memory_leak(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.memory_leak;
    let (window, now) = (rule.window_s * NS, input.now_ns);
    let samples: Vec<_> = input
        .history
        .memory
        .iter()
        .filter(|s| now.saturating_sub(s.ts_ns) <= window)
        .collect();
    let series: Vec<(u64, f64)> = samples.iter().map(|s| (s.ts_ns, s.anon_bytes as f64)).collect();
    // Every quarter's floor well above the one before (a sixth of the
    // threshold; steady growth at the threshold rises by a third): growth
    // still under way. A start-up step rises once, and the plateau after it
    // creeps by kilobytes; collections that free a burst raise peaks only.
    let Some(floors) = trend::quarter_floors(&series, window, now) else {
        return Vec::new();
    };
    let min_growth = f64::from(rule.min_growth_mib) * MIB;
    let growth = floors[3] - floors[0];
    if growth < min_growth || !floors.windows(2).all(|w| w[1] - w[0] >= min_growth / 6.0) {
        return Vec::new();
    }
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Vec::new();
    };
    // Rates: the change from the window's first sample to its last.
    let requests = last.requests.saturating_sub(first.requests);
    let grown = last.anon_bytes.saturating_sub(first.anon_bytes) as f64;
    let hours = last.ts_ns.saturating_sub(first.ts_ns).max(1) as f64 / (3600.0 * NS as f64);
    let per_request = (requests > 0).then(|| grown / requests as f64 / 1024.0);
    let per_call_text = per_request
        .map(|kib| format!(", {kib:.1} KiB per API request over {requests}"))
        .unwrap_or_default();
    vec![Finding {
        rule: Rule::MemoryLeak,
        key: "memory".to_string(),
        severity: Severity::Warning,
        summary: format!(
            "{} is leaking memory: its resident heap grew {:.0} MiB in {} (now {:.0} MiB){per_call_text}",
            input.who(),
            growth / MIB,
            span(rule.window_s),
            last.anon_bytes as f64 / MIB,
        ),
        evidence: json!({
            "anon_mib": round(last.anon_bytes as f64 / MIB),
            "growth_mib": round(growth / MIB),
            "window_s": rule.window_s,
            "min_growth_mib": rule.min_growth_mib,
            "quarter_floors_mib": floors.map(|f| round(f / MIB)),
            "mib_per_hour": round(grown / MIB / hours),
            "api_requests": requests,
            "kib_per_request": per_request.map(round),
        }),
        endpoint: None,
    }]
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::{History, Limits, Rules, history::MemorySample},
        labels::Labels,
        ledger::Ledger,
    };

    const PID: u32 = 500;
    const MIB_U: u64 = 1024 * 1024;
    const HOUR: u64 = 3600;

    /// One hour of samples a minute apart from `anon_mib(minute)`, with one
    /// API request a second; the findings at the end.
    fn run(anon_mib: impl Fn(u64) -> u64) -> Vec<Finding> {
        run_bytes(|minute| anon_mib(minute) * MIB_U)
    }

    fn run_bytes(anon_bytes: impl Fn(u64) -> u64) -> Vec<Finding> {
        let mut history = History::default();
        let every = MemorySample::every_ns(Rules::default().memory_leak.window_s);
        let start = 100 * NS;
        let mut now = start;
        while now <= start + HOUR * NS {
            let minute = (now - start) / (60 * NS);
            let sample = MemorySample {
                ts_ns: now,
                anon_bytes: anon_bytes(minute),
                requests: (now - start) / NS,
            };
            history.push_memory(sample, (HOUR + 60) * NS);
            now += every;
        }
        evaluate(&history, now - every)
    }

    /// The rule at its defaults on `history` at `now_ns`.
    fn evaluate(history: &History, now_ns: u64) -> Vec<Finding> {
        let ledger = Ledger::watching(PID);
        memory_leak(&Input {
            ledger: &ledger,
            process: &ledger.processes[&PID],
            history,
            limits: &Limits::default(),
            labels: &Labels::new(&Default::default()).unwrap(),
            rules: &Rules::default(),
            now_ns,
        })
    }

    #[test]
    fn a_heap_that_keeps_growing_fires_with_its_growth_per_request() {
        // 150 MiB at start, +3 MiB a minute: 180 MiB in the hour.
        let findings = run(|minute| 150 + 3 * minute);
        assert_eq!(findings.len(), 1, "{findings:?}");
        let evidence = &findings[0].evidence;
        // Floors: minute 0 (150) in the first quarter, minute 45 (285) in the last.
        assert_eq!(
            evidence["quarter_floors_mib"],
            json!([150.0, 195.0, 240.0, 285.0])
        );
        assert_eq!(evidence["growth_mib"], 135.0);
        assert_eq!(evidence["anon_mib"], 330.0);
        assert_eq!(evidence["api_requests"], 3600);
        assert_eq!(evidence["mib_per_hour"], 180.0);
        // 180 MiB over 3600 requests.
        assert_eq!(evidence["kib_per_request"], 51.2);
        let summary = &findings[0].summary;
        assert!(
            summary.contains("grew 135 MiB in 60m (now 330 MiB), 51.2 KiB per API request over 3600"),
            "{summary}"
        );
    }

    #[test]
    fn start_up_growth_then_a_plateau_does_not_fire() {
        // +200 MiB over the first 20 minutes (imports, caches), then flat.
        assert!(run(|minute| 100 + 10 * minute.min(20)).is_empty());
    }

    #[test]
    fn a_step_then_a_creeping_plateau_does_not_fire() {
        // +300 MiB in the first quarter, then 100 KiB a minute: every floor
        // higher than the last, but by nothing like a leak's pace.
        let step = |minute: u64| if minute < 10 { 100 * MIB_U } else { 400 * MIB_U };
        assert!(run_bytes(step).is_empty());
        assert!(run_bytes(|minute| step(minute) + minute * 100 * 1024).is_empty());
    }

    #[test]
    fn a_sawtooth_of_collections_does_not_fire() {
        // Grows 40 MiB in 10 minutes, then the collector frees it: peaks, not floors.
        assert!(run(|minute| 200 + 4 * (minute % 10)).is_empty());
    }

    #[test]
    fn slow_growth_below_the_threshold_does_not_fire() {
        // +1 MiB a minute: 59 MiB in the hour, under 128.
        assert!(run(|minute| 200 + minute).is_empty());
    }

    #[test]
    fn a_process_watched_for_less_than_the_window_does_not_fire() {
        let mut history = History::default();
        for minute in 0..30 {
            let sample = MemorySample {
                ts_ns: minute * 60 * NS,
                anon_bytes: (100 + 20 * minute) * MIB_U,
                requests: 0,
            };
            history.push_memory(sample, (HOUR + 60) * NS);
        }
        let findings = evaluate(&history, 29 * 60 * NS);
        assert!(findings.is_empty(), "half an hour of history covers no hour");
    }

    #[test]
    fn samples_are_sparse_for_long_windows() {
        assert_eq!(MemorySample::every_ns(3600), 60 * NS);
        assert_eq!(MemorySample::every_ns(8), NS);
        assert_eq!(MemorySample::every_ns(24 * 3600), 60 * NS);
    }
}
