//! Clocks. The probes stamp events with CLOCK_BOOTTIME (comparable with
//! /proc start times); output shows wall-clock RFC 3339 times and ages.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::time::{ClockId, clock_gettime};

fn read(clock: ClockId) -> u64 {
    let ts = clock_gettime(clock).expect("clock_gettime of a standard clock cannot fail");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Now, CLOCK_BOOTTIME ns.
pub fn boot_ns() -> u64 {
    read(ClockId::CLOCK_BOOTTIME)
}

/// CLOCK_REALTIME minus CLOCK_BOOTTIME as last settled (`i64::MIN`: not yet).
static WALL_MINUS_BOOT_NS: AtomicI64 = AtomicI64::new(i64::MIN);

/// How far a fresh reading of that offset may stray before it replaces the
/// settled one: beyond it the wall clock was stepped (or slewed that far).
const OFFSET_STEP_NS: i64 = 100_000_000;

/// The offset from CLOCK_BOOTTIME to wall-clock ns. The two clocks cannot be
/// read at once, and the gap between the reads jitters (by milliseconds under
/// emulation), so a fresh offset for every rendering could show one instant
/// a millisecond apart; the settled one moves only with the wall clock.
fn wall_minus_boot_ns() -> i64 {
    let fresh = read(ClockId::CLOCK_REALTIME) as i64 - boot_ns() as i64;
    let settled = settle(WALL_MINUS_BOOT_NS.load(Ordering::Relaxed), fresh);
    WALL_MINUS_BOOT_NS.store(settled, Ordering::Relaxed);
    settled
}

/// The offset to use given the settled one (`i64::MIN`: none) and a fresh reading.
fn settle(settled: i64, fresh: i64) -> i64 {
    if settled != i64::MIN && (fresh - settled).abs() < OFFSET_STEP_NS {
        settled
    } else {
        fresh
    }
}

/// The wall-clock time of a CLOCK_BOOTTIME instant.
pub fn wall_of(boot_ts_ns: u64) -> SystemTime {
    let wall_ns = (boot_ts_ns as i64).saturating_add(wall_minus_boot_ns()).max(0);
    UNIX_EPOCH + Duration::from_nanos(wall_ns as u64)
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

    #[test]
    fn the_offset_ignores_read_jitter_but_follows_a_clock_step() {
        assert_eq!(settle(i64::MIN, 5_000), 5_000, "the first reading settles");
        assert_eq!(settle(5_000, 5_000 + 3_000_000), 5_000, "3 ms of jitter");
        assert_eq!(settle(5_000, 5_000 - 3_000_000), 5_000);
        let stepped = 5_000 + 2_000_000_000;
        assert_eq!(settle(5_000, stepped), stepped, "the wall clock was stepped 2 s");
    }

    #[test]
    fn one_instant_renders_the_same_every_time() {
        let instant = boot_ns();
        let first = rfc3339_of_boot(instant);
        for _ in 0..10_000 {
            assert_eq!(rfc3339_of_boot(instant), first);
        }
    }
}
