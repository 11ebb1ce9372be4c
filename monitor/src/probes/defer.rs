//! Shipping the fd creations the probes hold back (monitor-ebpf's `defer`
//! module): before every drain, each CPU whose slot is full runs the flush
//! program (`BPF_PROG_TEST_RUN` pinned to that CPU), so a drain sees every
//! creation made before it began.

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun},
};
use monitor_common::{DeferredOpen, FLUSH_BUSY, NO_FD, maps, programs};
use serde::Serialize;
use tracing::warn;

/// Runs of the flush on a CPU whose slot a probe is changing (that takes
/// well under a microsecond, so a second run nearly always finds it free).
const BUSY_RETRIES: u32 = 100;
/// How long after a close's probe its fd may still be in the table: the
/// close syscall takes a microsecond from its probe to removing the fd, and
/// this bounds how long a forgotten marker keeps a scan from judging the fd.
pub const CLOSE_IN_FLIGHT_NS: u64 = 1_000_000_000;

/// What the flushes did (`leakmon status`, `kernel.held_back`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlushCounters {
    /// A CPU's held-back creation shipped on user space's request.
    pub flushes: u64,
    /// Flush runs that found a probe using the slot, and were run again.
    pub busy: u64,
    /// Flushes that could not run (CPU gone offline, bpf() error): the
    /// creation is shipped by that CPU's next record or found by reconciliation.
    pub failed: u64,
}

pub struct Deferral {
    slots: PerCpuArray<MapData, DeferredOpen>,
    pub counters: FlushCounters,
}

impl Deferral {
    /// Loads the flush program and runs it once pinned to a CPU: a kernel
    /// that cannot (test runs of raw tracepoints on a given CPU are 5.10+)
    /// must not have creations held back.
    pub fn load(ebpf: &mut Ebpf) -> anyhow::Result<Deferral> {
        if super::hooks::refused_for_tests()
            .iter()
            .any(|p| p == programs::FLUSH_DEFERRED)
        {
            bail!("refused by {} (a test fault switch)", super::hooks::REFUSE_ENV);
        }
        let program: &mut RawTracePoint = ebpf
            .program_mut(programs::FLUSH_DEFERRED)
            .with_context(|| format!("no program {} in the object", programs::FLUSH_DEFERRED))?
            .try_into()?;
        program.load().context("the verifier refused the flush program")?;
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = u32::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0);
        let options = RawTracePointRunOptions {
            cpu: Some(cpu),
            ..RawTracePointRunOptions::new()
        };
        program
            .test_run(options)
            .context("BPF_PROG_TEST_RUN of a raw tracepoint on one CPU")?;
        let map = ebpf
            .take_map(maps::DEFERRED)
            .with_context(|| format!("the eBPF object has no map {}", maps::DEFERRED))?;
        Ok(Deferral {
            slots: PerCpuArray::try_from(map)?,
            counters: FlushCounters::default(),
        })
    }

    /// Ships every CPU's held-back creation.
    pub fn flush(&mut self, ebpf: &Ebpf) {
        let slots = match self.slots.get(&0, 0) {
            Ok(slots) => slots,
            Err(e) => return self.failed(&format!("reading {}: {e}", maps::DEFERRED)),
        };
        let Some(program) = ebpf
            .program(programs::FLUSH_DEFERRED)
            .and_then(|p| <&RawTracePoint>::try_from(p).ok())
        else {
            return self.failed("the flush program is gone");
        };
        for (cpu, slot) in slots.iter().enumerate() {
            if slot.full != 0 {
                self.flush_cpu(program, cpu as u32);
            }
        }
    }

    /// `(tgid, fd)` of the fds whose records the probes have not shipped:
    /// creations held back now, and closes cancelled against one less than
    /// [`CLOSE_IN_FLIGHT_NS`] before `now_ns` whose thread has not held a
    /// creation since (the fd may still be in the table). A scan that lists
    /// them cannot tell whether they are still open; their records can.
    pub fn in_flight(&self, now_ns: u64) -> Vec<(u32, u32)> {
        let slots = match self.slots.get(&0, 0) {
            Ok(slots) => slots,
            Err(e) => {
                warn!(error = %e, "reading {}: a scan may judge fds still in flight", maps::DEFERRED);
                return Vec::new();
            }
        };
        let mut fds = Vec::new();
        for slot in slots.iter() {
            if slot.full != 0 {
                let held = &slot.event;
                let pair = [held.fd, held.fd2];
                fds.extend(
                    pair.into_iter()
                        .filter(|&fd| fd != NO_FD)
                        .map(|fd| (held.header.tgid, fd)),
                );
            }
            let close = &slot.cancelled;
            if close.tgid != 0 && now_ns.saturating_sub(close.ts_ns) < CLOSE_IN_FLIGHT_NS {
                fds.push((close.tgid, close.fd));
            }
        }
        fds
    }

    fn flush_cpu(&mut self, program: &RawTracePoint, cpu: u32) {
        let options = || RawTracePointRunOptions {
            cpu: Some(cpu),
            ..RawTracePointRunOptions::new()
        };
        for _ in 0..BUSY_RETRIES {
            match program.test_run(options()) {
                Ok(run) if run.return_value == FLUSH_BUSY => self.counters.busy += 1,
                Ok(_) => {
                    self.counters.flushes += 1;
                    return;
                }
                Err(e) => return self.failed(&format!("on CPU {cpu}: {e}")),
            }
        }
        self.failed(&format!("CPU {cpu}'s slot stayed busy"));
    }

    fn failed(&mut self, why: &str) {
        self.counters.failed += 1;
        if self.counters.failed <= 10 {
            warn!(
                why,
                "could not ship a held-back fd creation: the next reconciliation will"
            );
        }
    }
}
