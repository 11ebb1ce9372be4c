//! Clocks. The probes stamp events with CLOCK_BOOTTIME (comparable with
//! /proc start times); output shows wall-clock RFC 3339 times and ages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

fn read(clock: ClockId) -> u64 {
    let ts = clock_gettime(clock).expect("clock_gettime of a standard clock cannot fail");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Now, CLOCK_BOOTTIME ns.
pub fn boot_ns() -> u64 {
    read(ClockId::CLOCK_BOOTTIME)
}

/// The wall-clock time of a CLOCK_BOOTTIME instant.
pub fn wall_of(boot_ts_ns: u64) -> SystemTime {
    let wall_now = read(ClockId::CLOCK_REALTIME);
    let age = boot_ns().saturating_sub(boot_ts_ns);
    UNIX_EPOCH + Duration::from_nanos(wall_now.saturating_sub(age))
}

pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// RFC 3339 wall time of a CLOCK_BOOTTIME instant.
pub fn rfc3339_of_boot(boot_ts_ns: u64) -> String {
    rfc3339(wall_of(boot_ts_ns))
}

/// Seconds between a CLOCK_BOOTTIME instant and `now_ns`, to the millisecond.
pub fn age_s(boot_ts_ns: u64, now_ns: u64) -> f64 {
    (now_ns.saturating_sub(boot_ts_ns) / 1_000_000) as f64 / 1000.0
}

/// A short human age: 45s, 14m, 3h, 2d.
pub fn short_age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_rounded_and_never_negative() {
        assert_eq!(age_s(1_000_000_000, 3_500_000_000), 2.5);
        assert_eq!(age_s(5, 1), 0.0);
        assert_eq!(short_age(59.9), "59s");
        assert_eq!(short_age(840.0), "14m");
        assert_eq!(short_age(3.0 * 3600.0), "3h");
        assert_eq!(short_age(-1.0), "0s");
    }

    #[test]
    fn wall_time_of_now_is_now() {
        let wall = wall_of(boot_ns());
        let diff = SystemTime::now().duration_since(wall).unwrap_or_default();
        assert!(diff < Duration::from_secs(1));
    }
}
