//! Loading the kernel probes and talking to their maps.

pub mod btf;
mod defer;
mod floor;
mod gc;
pub mod hooks;
mod links;
pub mod lockdown;
mod sockfds;
pub mod tls;
pub mod tracefs;
mod watched;

use std::time::Instant;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use monitor_common::{
    EventKind, KernelConfig, SockOffsets, SockOwner, StreamState, TaskOffsets, Tuple, config_flags, counter,
    maps, watch_flags,
};
use serde::Serialize;
use tracing::{debug, error, info, warn};

pub use defer::CLOSE_IN_FLIGHT_NS;
pub use floor::{Floor, load_floor};
pub use hooks::HookStatus;

use crate::ledger::Comm;

/// The compiled probes (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakmon-probes"));

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ring_buffer_bytes: u32,
    pub kernel: KernelConfig,
}

/// Counters the probes keep in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounters {
    /// Records that found the ring buffer full, by event kind.
    pub lost: std::collections::BTreeMap<String, u64>,
    pub lost_total: u64,
    /// pipe/socketpair results the probes could not read from user memory
    /// (the fds exist; reconciliation names them).
    pub results_unreadable: u64,
    pub wakeups: u64,
    /// Execs that woke the reader at once: of processes still watched after
    /// them (a watched child that runs something else waits for the drain).
    pub exec_wakeups: u64,
    /// fds closed on the CPU that created them before their creation was
    /// shipped: neither record was (see `DEFER_OPENS`).
    pub short_lived_fds: u64,
    /// Bytes written to log streams the probes did not ship: past the
    /// per-CPU budget, or past 8 KiB of one write.
    pub log_bytes_skipped: u64,
    /// TCP sockets or socket fds the probes could not track (their map was
    /// full): states, owners or HTTP calls of those go unseen.
    pub tracking_full: u64,
    /// The flushes of held-back creations, when they are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_back: Option<defer::FlushCounters>,
}

pub struct Probes {
    /// Owns the programs and the TLS uprobes' links.
    ebpf: Ebpf,
    /// The tracepoints' links: dropping [`Probes`] detaches them and the
    /// uprobes side by side (links.rs).
    links: links::Links,
    sock_fds: HashMap<MapData, u64, StreamState>,
    pub tls: tls::Tls,
    watched_pids: watched::WatchedPids,
    comms: HashMap<MapData, Comm, u32>,
    config: Array<MapData, KernelConfig>,
    /// What CONFIG holds now.
    kernel: KernelConfig,
    counters: PerCpuArray<MapData, u64>,
    /// Present when fd creations are held back (`probes.hold_back_fds`).
    deferral: Option<defer::Deferral>,
    socks: HashMap<MapData, u64, SockOwner>,
    tuples: HashMap<MapData, Tuple, SockOwner>,
    /// Map entries user space cannot account for yet (gc.rs).
    suspects: MapSuspects,
    /// Socket fds user space seeded into SOCK_FDS, with their inodes, and
    /// those it refused (gc.rs).
    seeded_socket_fds: std::collections::HashMap<u64, u64>,
    refused_socket_fds: gc::Refused<u64>,
    /// Log streams user space marked in SOCK_FDS: key -> the fd's birth.
    log_streams: std::collections::HashMap<u64, u64>,
    /// Where a connect() makes a log stream in the kernel (sockfds.rs).
    syslog: sockfds::SyslogMarks,
    /// When `collect_socket_fds` last walked SOCK_FDS.
    sock_fds_walked: Option<Instant>,
    pub hooks: Vec<HookStatus>,
    pub tracefs_mounted_by_us: bool,
    /// Why the probes cannot walk from an fd to its socket, if they cannot
    /// (then socket states come from sock_diag reconciliation only).
    pub socket_walk_missing: Option<String>,
    /// The snapshot iterator, shared with the control socket (fditer.rs).
    pub fd_iter: Option<std::sync::Arc<crate::fditer::Program>>,
}

#[derive(Default)]
struct MapSuspects {
    sock_fds: gc::Suspects<u64>,
    socks: gc::Suspects<u64>,
    tuples: gc::Suspects<Tuple>,
}

impl Drop for Probes {
    /// Detaches every probe before the daemon exits, side by side (one
    /// after another took seconds: links.rs).
    fn drop(&mut self) {
        let started = Instant::now();
        self.tls.take_all_links(&mut self.ebpf, &mut self.links);
        let count = self.links.len();
        self.links.detach();
        info!(
            links = count,
            took_ms = started.elapsed().as_millis() as u64,
            "probes detached"
        );
    }
}

impl Probes {
    /// Loads the object, sets offsets and config, and attaches every hook
    /// the kernel has. Returns the probes and the ring buffer to read.
    pub fn load(settings: &Settings) -> anyhow::Result<(Probes, RingBuf<MapData>)> {
        if OBJECT.is_empty() {
            bail!(
                "this leakmon binary was built without its kernel probes (AYA_BUILD_SKIP); \
                 build it with nightly rust-src and bpf-linker installed (`cargo xtask setup`)"
            );
        }
        // Checked first: under it tracefs mounts, empty, and nothing else says why.
        if lockdown::Lockdown::read().is_confidentiality() {
            bail!("{}: {}", lockdown::CONFIDENTIALITY, lockdown::FIX);
        }
        let tracefs_mounted_by_us = tracefs::ensure_mounted().context("tracefs is needed for tracepoints")?;
        let offsets = tracefs::task_offsets().context("reading task tracepoint formats")?;
        if offsets.exit_group_dead == 0 {
            warn!("sched_process_exit has no group_dead field: process exits are confirmed through /proc");
        }
        let (sock_offsets, socket_walk_missing) = match btf::Btf::load().and_then(|b| Ok(b.sock_offsets()?)) {
            Ok(found) => (found, None),
            Err(e) => {
                warn!(error = %e, "no BTF offsets for the fd -> socket walk: socket states from sock_diag only");
                (SockOffsets::default(), Some(format!("{e:#}")))
            }
        };
        let mut loader = EbpfLoader::new();
        if let Some(entries) = tracking_entries_for_tests() {
            loader
                .map_max_entries(maps::SOCKS, entries)
                .map_max_entries(maps::SOCK_FDS, entries);
        }
        let mut ebpf = loader
            .map_max_entries(maps::EVENTS, settings.ring_buffer_bytes)
            .override_global(TaskOffsets::GLOBAL, &offsets, true)
            .override_global(SockOffsets::GLOBAL, &sock_offsets, true)
            .load(OBJECT)
            .context("loading the eBPF object (is this root with CAP_BPF and CAP_PERFMON?)")?;

        // Every map handle stays open as long as the programs: programs are
        // loaded below, and a closed map fd would fail their load.
        let mut config: Array<MapData, KernelConfig> = take(&mut ebpf, maps::CONFIG)?;
        let mut kernel = settings.kernel;
        let deferral = defer::Deferral::load(&mut ebpf);
        if let Err(e) = &deferral {
            warn!(error = %format!("{e:#}"), "fd creations are shipped one by one (no held-back slot)");
            kernel.flags &= !config_flags::DEFER_OPENS;
        }
        config
            .set(0, kernel, 0)
            .context("writing the probe configuration")?;
        // BTF tracepoints need the kernel's BTF, and their programs the offsets found in it.
        let btf = socket_walk_missing
            .is_none()
            .then(aya::Btf::from_sys_fs)
            .and_then(Result::ok);
        let mut links = links::Links::default();
        let mut hooks = attach_all(&mut ebpf, btf.as_ref(), &mut links);
        let fd_iter = load_fd_iter(&sock_offsets, btf.as_ref());
        let host_wide = fd_iter.as_ref().is_ok_and(|program| program.host_wide());
        hooks.push(HookStatus {
            program: "fd_iter",
            tracepoint: "iter/task_file".into(),
            essential: false,
            attached: fd_iter.is_ok(),
            mode: host_wide.then_some("host-wide: this kernel cannot scope it to one process"),
            error: fd_iter.as_ref().err().map(|e| format!("{e:#}")),
        });
        hooks.push(HookStatus {
            program: monitor_common::programs::FLUSH_DEFERRED,
            tracepoint: "test_run/each CPU".into(),
            essential: false,
            attached: deferral.is_ok(),
            mode: None,
            error: deferral.as_ref().err().map(|e| format!("{e:#}")),
        });
        let deferral = deferral
            .ok()
            .filter(|_| kernel.flags & config_flags::DEFER_OPENS != 0);
        let ring = take(&mut ebpf, maps::EVENTS)?;
        let probes = Probes {
            watched_pids: watched::WatchedPids::map(
                ebpf.take_map(maps::WATCHED_PIDS)
                    .context("the eBPF object has no map WATCHED_PIDS")?,
            )?,
            comms: take(&mut ebpf, maps::WATCH_COMMS)?,
            counters: take(&mut ebpf, maps::COUNTERS)?,
            socks: take(&mut ebpf, maps::SOCKS)?,
            tuples: take(&mut ebpf, maps::TUPLES)?,
            sock_fds: take(&mut ebpf, maps::SOCK_FDS)?,
            tls: tls::Tls::default(),
            suspects: MapSuspects::default(),
            seeded_socket_fds: Default::default(),
            refused_socket_fds: gc::Refused::default(),
            log_streams: Default::default(),
            syslog: sockfds::SyslogMarks::new(take(&mut ebpf, maps::SYSLOG_PATHS)?),
            sock_fds_walked: None,
            deferral,
            config,
            kernel,
            ebpf,
            links,
            hooks,
            tracefs_mounted_by_us,
            socket_walk_missing,
            fd_iter: fd_iter.ok().map(std::sync::Arc::new),
        };
        Ok((probes, ring))
    }

    /// Ships the fd creations the probes hold back: call before draining.
    pub fn flush_held_back(&mut self) {
        if let Some(deferral) = &mut self.deferral {
            deferral.flush(&self.ebpf);
        }
    }

    /// `(tgid, fd)` of fds whose records are still in the probes
    /// ([`defer::Deferral::in_flight`]); none when nothing is held back.
    pub fn fds_in_flight(&self, now_ns: u64) -> Vec<(u32, u32)> {
        (self.deferral.as_ref()).map_or_else(Vec::new, |deferral| deferral.in_flight(now_ns))
    }

    /// Adds `pid` to the in-kernel watched set (its byte).
    pub fn watch(&mut self, pid: u32, flags: u32) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.watched_pids.set(pid, watch_flags::byte(flags)),
            "pid {pid} has no watched byte (beyond the pids Linux makes, or not mapped: see the warning)"
        );
        Ok(())
    }

    /// Sets or clears `bits` of `pid`'s byte: [`watch_flags::SCANNING`]
    /// while its /proc is read (set before the read, cleared after the next
    /// [`Probes::flush_held_back`]: a creation held back before the read
    /// could otherwise be cancelled by a close after it, and the fd the scan
    /// listed would stay in the ledger until the next reconciliation), and
    /// [`watch_flags::SCANNED`] from then until a later flush (for creations
    /// the scan listed before their probe held them). A close whose probe
    /// read the byte just before it was set may still have its fd listed for
    /// the microsecond until the close removes it: the scan leaves that fd
    /// to the records ([`Probes::fds_in_flight`]). Left open: such a close
    /// preempted before it removes the fd while another close on its CPU
    /// cancels (the slot remembers one).
    pub fn set_scan_bits(&mut self, pid: u32, bits: u32, on: bool) {
        self.watched_pids.update_bits(pid, bits as u8, on);
    }

    pub fn unwatch(&mut self, pid: u32) {
        self.watched_pids.set(pid, 0);
    }

    pub fn set_comms(&mut self, comms: &[Comm]) -> anyhow::Result<()> {
        let old: Vec<Comm> = self.comms.keys().filter_map(Result::ok).collect();
        for comm in old {
            let _ = self.comms.remove(&comm);
        }
        for comm in comms {
            self.comms.insert(*comm, 1, 0).context("setting watched names")?;
        }
        Ok(())
    }

    /// Lets the probes recognise a connection opened before they could see
    /// its creation (by its addresses, at its next state change).
    pub fn seed_tuple(&mut self, tuple: Tuple, owner: SockOwner) {
        if let Err(e) = self.tuples.insert(tuple, owner, 0) {
            debug!(error = %e, "TUPLES is full");
        }
        self.set_flag(config_flags::TUPLES_SEEDED, true);
    }

    /// Attaches the OpenSSL probes to a watched process, if it maps libssl.
    pub fn attach_tls(&mut self, pid: u32) -> bool {
        match self.tls.attach(&mut self.ebpf, pid) {
            Ok(attached) => attached,
            Err(e) => {
                warn!(pid, error = %format!("{e:#}"), "TLS probes not attached: HTTPS calls will not be seen");
                false
            }
        }
    }

    pub fn detach_tls(&mut self, pid: u32) {
        self.tls.detach(&mut self.ebpf, pid);
    }

    /// Turns a KernelConfig flag on or off (the probes read it on every event).
    fn set_flag(&mut self, flag: u32, on: bool) {
        let flags = if on {
            self.kernel.flags | flag
        } else {
            self.kernel.flags & !flag
        };
        if flags != self.kernel.flags {
            self.kernel.flags = flags;
            self.write_config();
        }
    }

    fn write_config(&mut self) {
        if let Err(e) = self.config.set(0, self.kernel, 0) {
            warn!(error = %e, "cannot update the probe configuration");
        }
    }

    /// Drops kernel socket entries whose inode `held` says no watched fd
    /// holds: a TCP socket whose destruction was not seen, a seeded
    /// connection that ended before its next state change. Returns how many went.
    pub fn collect_sockets(&mut self, held: impl Fn(u64) -> bool) -> usize {
        let now = Instant::now();
        let collected = drop_unheld(&mut self.socks, &mut self.suspects.socks, &held, now)
            + drop_unheld(&mut self.tuples, &mut self.suspects.tuples, &held, now);
        // Entries the probes matched left TUPLES on their own.
        let seeded = self.tuples.keys().next().is_some();
        self.set_flag(config_flags::TUPLES_SEEDED, seeded);
        collected
    }

    pub fn counters(&self) -> KernelCounters {
        let read = |slot: u32| -> u64 {
            self.counters
                .get(&slot, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        let mut counters = KernelCounters::default();
        for kind in EventKind::ALL {
            let lost = read(counter::LOST_BASE + kind as u32);
            if lost > 0 {
                counters.lost.insert(format!("{kind:?}"), lost);
            }
            counters.lost_total += lost;
        }
        counters.results_unreadable = read(counter::RESULT_UNREADABLE);
        counters.wakeups = read(counter::WAKEUPS);
        counters.exec_wakeups = read(counter::EXEC_WAKEUPS);
        counters.short_lived_fds = read(counter::SHORT_LIVED);
        counters.tracking_full = read(counter::TRACKING_FULL) + self.refused_socket_fds.total;
        counters.log_bytes_skipped = read(counter::LOG_BYTES_SKIPPED);
        counters.held_back = self.deferral.as_ref().map(|d| d.counters.clone());
        counters
    }
}

/// bpf_map_update_elem's flag: only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Like `LEAKMON_TEST_REFUSE_HOOKS` (hooks.rs), a fault switch for tests
/// only: room for this many sockets in the maps that track them, so that a
/// test can fill them.
const TRACKING_ENTRIES_ENV: &str = "LEAKMON_TEST_TRACKING_ENTRIES";

fn tracking_entries_for_tests() -> Option<u32> {
    std::env::var(TRACKING_ENTRIES_ENV).ok()?.parse().ok()
}

/// Removes the entries of `map` whose socket no watched fd holds.
fn drop_unheld<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut HashMap<MapData, K, SockOwner>,
    suspects: &mut gc::Suspects<K>,
    held: &impl Fn(u64) -> bool,
    now: Instant,
) -> usize {
    let unheld = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, owner)| !held(owner.inode))
        .map(|(key, _)| key);
    let stale = suspects.confirm(unheld, now);
    for key in &stale {
        let _ = map.remove(key);
    }
    stale.len()
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

fn attach_all(ebpf: &mut Ebpf, btf: Option<&aya::Btf>, links: &mut links::Links) -> Vec<HookStatus> {
    let mut statuses = Vec::new();
    // program -> Ok, or why the verifier refused it (reported on each of its hooks).
    let mut loaded: std::collections::HashMap<&'static str, Result<(), String>> = Default::default();
    let refused = hooks::refused_for_tests();
    for hook in hooks::all() {
        let tracepoint = format!("{}/{}", hook.category, hook.event);
        let result = if refused.iter().any(|r| r == hook.program) {
            Err(anyhow::anyhow!(
                "refused by {} (a test fault switch)",
                hooks::REFUSE_ENV
            ))
        } else if hook.category == hooks::BTF {
            attach_btf(ebpf, &hook, btf, links)
        } else {
            attach_one(ebpf, &hook, &mut loaded, links)
        };
        match &result {
            Ok(()) => debug!(program = hook.program, %tracepoint, "attached"),
            Err(e) if hook.essential => {
                error!(program = hook.program, %tracepoint, error = %e, "hook not attached; reconciliation with /proc will cover it")
            }
            Err(e) => {
                warn!(program = hook.program, %tracepoint, error = %e, "optional hook not attached")
            }
        }
        statuses.push(HookStatus {
            program: hook.program,
            tracepoint,
            essential: hook.essential,
            attached: result.is_ok(),
            mode: None,
            error: result.err().map(|e| format!("{e:#}")),
        });
    }
    statuses
}

/// The name [`hooks::REFUSE_ENV`] takes for the kernel's scoping of the
/// snapshot iterator to one process: refused, the iterator is host-wide as
/// on kernels before 6.1.
pub const FD_ITER_PID_SCOPE: &str = "fd_iter_pid_scope";

/// The name [`hooks::REFUSE_ENV`] takes for the daemon's sock_diag dumps:
/// refused, they fail as on a host that cannot load tcp_diag.
pub const SOCK_DIAG: &str = "sock_diag";

/// The snapshot iterator: without it `leakmon snapshot` reads /proc (slower, same result).
fn load_fd_iter(offsets: &SockOffsets, btf: Option<&aya::Btf>) -> anyhow::Result<crate::fditer::Program> {
    let Some(btf) = btf else {
        bail!("needs the kernel's BTF and the file offsets in it, which could not be read");
    };
    let host_wide = hooks::refused_for_tests().iter().any(|p| p == FD_ITER_PID_SCOPE);
    let program = crate::fditer::Program::load(offsets, btf, host_wide);
    match &program {
        Ok(program) if program.host_wide() => {
            info!("snapshot iterator loaded host-wide (Linux 6.1 and later scope it to one process)")
        }
        Ok(_) => debug!("snapshot iterator loaded"),
        Err(e) => warn!(error = %format!("{e:#}"), "snapshot iterator not loaded: snapshots read /proc"),
    }
    program
}

/// A BTF tracepoint: its program is loaded for that one tracepoint.
fn attach_btf(
    ebpf: &mut Ebpf,
    hook: &hooks::Hook,
    btf: Option<&aya::Btf>,
    links: &mut links::Links,
) -> anyhow::Result<()> {
    let Some(btf) = btf else {
        bail!("needs the kernel's BTF and the socket offsets in it, which could not be read");
    };
    let program: &mut aya::programs::BtfTracePoint = ebpf
        .program_mut(hook.program)
        .with_context(|| format!("no program {} in the object", hook.program))?
        .try_into()?;
    program.load(&hook.event, btf).map_err(|e| {
        anyhow::anyhow!(
            "the verifier refused {}: {:#}",
            hook.program,
            anyhow::Error::from(e)
        )
    })?;
    let link = program.attach()?;
    links.push_tracepoint(program.take_link(link)?, hook.category, &hook.event);
    Ok(())
}

fn attach_one(
    ebpf: &mut Ebpf,
    hook: &hooks::Hook,
    loaded: &mut std::collections::HashMap<&'static str, Result<(), String>>,
    links: &mut links::Links,
) -> anyhow::Result<()> {
    if !tracefs::event_exists(hook.category, &hook.event) {
        bail!("this kernel has no tracepoint {}/{}", hook.category, hook.event);
    }
    let program: &mut TracePoint = ebpf
        .program_mut(hook.program)
        .with_context(|| format!("no program {} in the object", hook.program))?
        .try_into()?;
    let load = loaded.entry(hook.program).or_insert_with(|| {
        program.load().map_err(|e| {
            format!(
                "the verifier refused {}: {:#}",
                hook.program,
                anyhow::Error::from(e)
            )
        })
    });
    if let Err(e) = load {
        bail!("{e}");
    }
    let link = program.attach(hook.category, &hook.event)?;
    links.push_tracepoint(program.take_link(link)?, hook.category, &hook.event);
    Ok(())
}
