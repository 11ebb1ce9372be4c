//! Telling a leak from a busy process. A leak raises the floor: the lowest
//! count in each quarter of the window never falls and the last quarter's
//! floor sits well above the first's. Work that comes and goes (a burst of
//! loop threads, a batch of connections) raises peaks, not floors, as long
//! as it falls back within a quarter of the window.

/// The floors of the window's four quarters, when the series covers it.
pub fn quarter_floors(series: &[(u64, f64)], window_ns: u64, now_ns: u64) -> Option<[f64; 4]> {
    let start = now_ns.checked_sub(window_ns)?;
    // The series must reach back to the window's start (within a tick or two).
    let first = series.first()?.0;
    if first > start + window_ns / 20 + 2_000_000_000 {
        return None;
    }
    let quarter = (window_ns / 4).max(1);
    let mut floors = [f64::INFINITY; 4];
    for (ts, value) in series {
        let i = (ts.saturating_sub(start) / quarter).min(3) as usize;
        floors[i] = floors[i].min(*value);
    }
    if floors.iter().any(|f| f.is_infinite()) {
        return None;
    }
    Some(floors)
}

/// How far the floor rose over the window, if it rose steadily.
pub fn steady_rise(series: &[(u64, f64)], window_ns: u64, now_ns: u64) -> Option<f64> {
    let floors = quarter_floors(series, window_ns, now_ns)?;
    let steady = floors.windows(2).all(|w| w[1] >= w[0]);
    steady.then(|| floors[3] - floors[0])
}

/// Whether the floor rose in every quarter: growth still under way, not a
/// step (a start-up, a batch) followed by a plateau.
pub fn still_rising(series: &[(u64, f64)], window_ns: u64, now_ns: u64) -> bool {
    quarter_floors(series, window_ns, now_ns).is_some_and(|f| f.windows(2).all(|w| w[1] > w[0]))
}

/// Least-squares slope in units per second.
pub fn slope_per_s(series: &[(u64, f64)]) -> Option<f64> {
    if series.len() < 2 {
        return None;
    }
    let t0 = series[0].0;
    let n = series.len() as f64;
    let xs: Vec<f64> = series.iter().map(|(t, _)| (t - t0) as f64 / 1e9).collect();
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = series.iter().map(|(_, y)| y).sum::<f64>() / n;
    let mut num = 0.0;
    let mut den = 0.0;
    for (x, (_, y)) in xs.iter().zip(series) {
        num += (x - mean_x) * (y - mean_y);
        den += (x - mean_x) * (x - mean_x);
    }
    (den > 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn series(values: impl IntoIterator<Item = f64>) -> Vec<(u64, f64)> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as u64 * S, v))
            .collect()
    }

    #[test]
    fn a_steady_leak_raises_every_floor() {
        let s = series((0..=100).map(|i| 10.0 + i as f64 / 2.0));
        assert_eq!(steady_rise(&s, 100 * S, 100 * S), Some(37.5));
    }

    #[test]
    fn bursts_that_fall_back_raise_no_floor() {
        // Every 10 s, 30 extra for 5 s (loop threads waiting for the GC).
        let s = series((0..=100).map(|i| if i % 10 < 5 { 40.0 } else { 10.0 }));
        assert_eq!(steady_rise(&s, 100 * S, 100 * S), Some(0.0));
    }

    #[test]
    fn a_leak_that_stopped_and_was_cleaned_up_is_not_steady() {
        let s = series((0..=100).map(|i| if i < 75 { i as f64 } else { 0.0 }));
        assert_eq!(steady_rise(&s, 100 * S, 100 * S), None);
    }

    #[test]
    fn a_short_history_decides_nothing() {
        let s = series((0..=30).map(|i| i as f64));
        assert_eq!(steady_rise(&s, 100 * S, 30 * S), None);
    }

    #[test]
    fn a_step_then_a_plateau_is_not_still_rising() {
        let step = series((0..=100).map(|i| if i < 10 { 0.0 } else { 500.0 }));
        assert!(!still_rising(&step, 100 * S, 100 * S));
        let leak = series((0..=100).map(|i| i as f64));
        assert!(still_rising(&leak, 100 * S, 100 * S));
    }

    #[test]
    fn slope_is_per_second() {
        let s = series((0..10).map(|i| 3.0 * i as f64));
        assert!((slope_per_s(&s).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(slope_per_s(&s[..1]), None);
    }
}
