//! The daemon's core: one task owns the ring buffer reader, the ledger and
//! the probes' maps, so events are applied in ring-buffer order without locks
//! or a second queue (the ring buffer is the bounded queue, and the kernel
//! counts what does not fit in it).

mod alerting;
pub mod cmsg;
pub mod decode;
mod follow;
mod logstreams;
mod metrics;
mod status;
#[cfg(test)]
pub(crate) use status::example_json as example_status_json;

use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use monitor_common::{KernelConfig, config_flags};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{MissedTickBehavior, interval},
};
use tracing::{info, warn};

use crate::{
    config::Config,
    control::{self, protocol::Request, server::Incoming},
    discovery::Matcher,
    ledger::{FollowUp, Ledger},
    probes::{Probes, Settings},
    sdnotify::Notifier,
    time,
};

/// How long a connect that went to CLOSE waits for the kernel's error report
/// before it counts as abandoned by the application.
const CONNECT_VERDICT_GRACE_NS: u64 = 1_000_000_000;

/// Counters of the user-space pipeline.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EngineCounters {
    pub records: u64,
    pub decode_errors: u64,
    pub drains: u64,
    /// Drains that stopped at [`DRAIN_BUDGET`] with records left.
    pub drains_cut_short: u64,
    pub reconcile_after_loss: u64,
    /// The kernel's loss total as of the last reconciliation after a loss:
    /// when it equals `lost_total`, every loss so far has been repaired.
    pub lost_reconciled: u64,
    /// Scans of /proc for matching processes not yet watched.
    pub discovery_passes: u64,
    /// New log text read for secrets (`secret_in_log`), and jumped over
    /// beyond `rules.secret_in_log.scan_bytes_per_s`.
    pub log_bytes_scanned: u64,
    pub log_bytes_skipped: u64,
    /// Lines with a secret written to a process's log streams past 1024 in
    /// one second: not counted in the alert's `lines`.
    pub log_lines_uncounted: u64,
    /// Unix sock_diag dumps made to tell which sockets are log streams (at
    /// most one a second; sockets the probes' connect marks settle need none).
    pub log_stream_dumps: u64,
}

pub struct Engine {
    pub ledger: Ledger,
    probes: Probes,
    matcher: Matcher,
    config: Config,
    pub counters: EngineCounters,
    started_ns: u64,
    /// Processes to reconcile at the next housekeeping tick.
    reconcile_soon: std::collections::HashSet<u32>,
    /// Processes to reconcile again once a time (boot ns) has passed: see
    /// `Engine::reconcile`.
    rechecks: Vec<(u32, u64)>,
    /// The last sock_diag dump failed (logged once until it works again).
    sock_diag_failing: bool,
    /// The probes' `log_bytes_skipped` as of the last housekeeping.
    kernel_log_bytes_skipped: u64,
    /// The probes' socket-tracking maps were found full (logged once; each
    /// socket they missed is counted in `kernel.tracking_full`).
    tracking_full_logged: bool,
    /// Processes whose SCANNED bit is set, with when their scan's flush ran
    /// (boot ns): see `settle_scans`.
    scanned: Vec<(u32, u64)>,
    /// Leaders seen exiting whose process may live on, since when (boot ns).
    maybe_gone: std::collections::HashMap<u32, u64>,
    /// Matching processes not watched because the ledger was full, by (pid,
    /// start time): counted and logged once, not at every rediscovery.
    refused: std::collections::HashSet<(u32, u64)>,
    labels: crate::labels::Labels,
    alerting: alerting::Alerting,
}

pub fn kernel_config(config: &Config, matcher: &Matcher) -> KernelConfig {
    let mut flags = 0;
    if matcher.needs_every_exec() {
        flags |= config_flags::SHIP_ALL_EXECS;
    }
    if config.probes.hold_back_fds {
        flags |= config_flags::DEFER_OPENS;
    }
    KernelConfig {
        flags,
        wakeup_bytes: config.probes.wakeup_bytes,
        log_bytes_per_cpu_s: log_bytes_per_cpu_s(&config.rules),
        _pad: 0,
    }
}

/// The log streams' budget in the kernel: `scan_bytes_per_s` split between
/// the CPUs that ship them, and at least one whole write's records each (a
/// small budget on a large host would otherwise ship nothing at all).
fn log_bytes_per_cpu_s(rules: &crate::detect::config::Rules) -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u64;
    let one_write = (monitor_common::LOG_CHUNKS * monitor_common::DATA_CAPTURE) as u64;
    (rules.secret_in_log.scan_bytes_per_s / cpus).clamp(one_write, u32::MAX as u64) as u32
}

/// Reads the config file again (with the command line's overrides) on SIGHUP.
pub type Reload = Box<dyn Fn() -> anyhow::Result<Config>>;

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config, reload: Reload) -> anyhow::Result<()> {
    let matcher = Matcher::new(&config.discovery).context("discovery rules")?;
    // What can fail in a moment fails before the probes load (seconds to
    // attach, seconds to detach): another daemon on the socket, a metrics
    // address in use, an alerts file that cannot be opened.
    let socket_path = config.daemon.control_socket.clone();
    control::server::prepare(&socket_path)?;
    let labels = crate::labels::Labels::new(&config.endpoints).map_err(anyhow::Error::msg)?;
    let alerting = alerting::Alerting::new(&config)?;
    let (requests, mut incoming) = mpsc::channel::<Incoming>(64);
    if let Some(addr) = config.alerts.metrics_listen {
        crate::metrics_server::spawn(addr, requests.clone()).await?;
    }
    let settings = Settings {
        ring_buffer_bytes: config.probes.ring_buffer_bytes,
        kernel: kernel_config(&config, &matcher),
    };
    let (mut probes, ring) = Probes::load(&settings)?;
    // Loading parsed the kernel's BTF (tens of MiB of heap, all freed now):
    // hand those pages back instead of carrying them as RSS for the daemon's life.
    // SAFETY: malloc_trim only releases free heap memory; no preconditions.
    unsafe { libc::malloc_trim(0) };
    let attached = probes.hooks.iter().filter(|h| h.attached).count();
    info!(attached, total = probes.hooks.len(), "probes loaded");
    probes.set_comms(&matcher.kernel_comms())?;

    let mut engine = Engine {
        ledger: Ledger {
            max_processes: config.discovery.max_processes,
            ..Ledger::default()
        },
        probes,
        matcher,
        config: config.clone(),
        counters: EngineCounters::default(),
        started_ns: time::boot_ns(),
        reconcile_soon: Default::default(),
        rechecks: Vec::new(),
        sock_diag_failing: false,
        kernel_log_bytes_skipped: 0,
        tracking_full_logged: false,
        scanned: Vec::new(),
        maybe_gone: Default::default(),
        refused: Default::default(),
        labels,
        alerting,
    };
    // SAFETY: the AsyncFd owns the RingBuf, which owns the map fd, so the fd
    // stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .context("polling the ring buffer")?;
    engine.discover_all(ring.get_mut());

    let direct = control::server::Direct {
        fd_iter: engine.probes.fd_iter.clone(),
    };
    let _server = control::server::spawn(&socket_path, requests, direct)?;
    info!(socket = %socket_path.display(), watched = engine.ledger.processes.len(), "leakmon running");
    // Ready only now: the probes are attached, the processes already running
    // are watched, and the control socket answers.
    let mut systemd = Notifier::from_env();
    systemd.ready(|| engine.status_line());
    let watchdog_every = systemd.watchdog_every();
    // (A day when there is no watchdog: the branch is off then.)
    let mut watchdog_tick = interval(watchdog_every.unwrap_or(Duration::from_secs(86_400)));

    let mut drain_tick = interval(Duration::from_millis(config.probes.drain_interval_ms));
    let mut housekeeping = interval(Duration::from_secs(1));
    let mut reconcile_tick = interval(Duration::from_secs(config.probes.reconcile_interval_s));
    for tick in [&mut drain_tick, &mut housekeeping, &mut reconcile_tick] {
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    }
    reconcile_tick.reset();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                if engine.drain(guard.get_inner_mut()) {
                    guard.clear_ready();
                } else {
                    // Records are left and the ring stays ready: let the
                    // control socket's task read its requests first (one
                    // thread runs both, and tokio's budget would yield
                    // only after 128 drains).
                    drop(guard);
                    tokio::task::yield_now().await;
                }
            }
            _ = drain_tick.tick() => {
                engine.drain(ring.get_mut());
            }
            _ = housekeeping.tick() => {
                engine.housekeeping(ring.get_mut());
                systemd.status(|| engine.status_line());
            }
            // From this loop, so that a loop that hangs stops the pings.
            _ = watchdog_tick.tick(), if watchdog_every.is_some() => systemd.watchdog(),
            _ = reconcile_tick.tick() => {
                engine.discover_all(ring.get_mut());
                engine.reconcile_all(ring.get_mut());
            }
            Some(incoming) = incoming.recv() => {
                let response = engine.handle(ring.get_mut(), incoming.request);
                let _ = incoming.reply.send(response);
            }
            _ = sighup.recv() => {
                info!("SIGHUP: reopening the alerts file and reloading the config");
                systemd.reloading();
                engine.reload(&reload);
                systemd.ready(|| engine.status_line());
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!("stopping: detaching probes");
    systemd.stopping();
    control::server::remove_socket(&socket_path);
    Ok(())
}

/// Records one drain applies at most (a `sync` request drains until the
/// ring is empty). Watched processes making records faster than the daemon
/// applies them keep the ring from emptying, and a drain that waited for
/// that would hold off requests, housekeeping and alerts: a `status` went
/// unanswered for a minute beside a dup loop with `hold_back_fds = false`
/// (debug build, which applies ~400,000 records a second; a release build
/// ~10 million, docs/benchmarks.md "Delivery", so 65,536 take it ~6 ms).
const DRAIN_BUDGET: u64 = 1 << 16;

/// Records a drain applies between checks for a scan hold that has passed:
/// a drain that outlasts one ends it, or a loop whose closes ship while it
/// lasts could keep the drain going to its budget (seconds under emulation,
/// where 4,096 records still took ~200 ms). A check without a scan pending
/// reads no clock.
const SETTLE_CHECK_EVERY: u64 = 256;

impl Engine {
    /// Applies the records waiting in the ring buffer, up to [`DRAIN_BUDGET`];
    /// false if it stopped there with records left.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) -> bool {
        self.drain_up_to(ring, DRAIN_BUDGET)
    }

    fn drain_up_to(&mut self, ring: &mut RingBuf<MapData>, budget: u64) -> bool {
        self.counters.drains += 1;
        self.probes.flush_held_back();
        self.settle_scans();
        let mut follow_ups = Vec::new();
        for applied in 0..budget {
            if applied % SETTLE_CHECK_EVERY == SETTLE_CHECK_EVERY - 1 && self.a_scan_hold_passed() {
                self.probes.flush_held_back();
                self.settle_scans();
            }
            let Some(record) = ring.next() else {
                return true;
            };
            self.counters.records += 1;
            match decode::decode(&record) {
                Ok(event) => match self.ledger.apply(&event) {
                    FollowUp::None => {}
                    other => follow_ups.push(other),
                },
                Err(e) => {
                    self.counters.decode_errors += 1;
                    if self.counters.decode_errors <= 10 {
                        warn!(error = %e, "dropped a malformed ring-buffer record");
                    }
                }
            }
            // Exec decisions read /proc: take them in order, before later
            // events of the same process are applied.
            if !follow_ups.is_empty() {
                drop(record);
                for follow_up in follow_ups.drain(..) {
                    self.follow_up(follow_up);
                }
            }
        }
        self.counters.drains_cut_short += 1;
        false
    }

    /// Once a second: notice lost events, name provisional fds, and confirm exits.
    fn housekeeping(&mut self, ring: &mut RingBuf<MapData>) {
        self.drain(ring);
        let kernel = self.probes.counters();
        if kernel.tracking_full > 0 && !self.tracking_full_logged {
            self.tracking_full_logged = true;
            warn!(
                untracked = kernel.tracking_full,
                "the probes' socket maps are full: TCP sockets of watched processes go untracked \
                 (counted in kernel.tracking_full): their states wait for the periodic reconciliation, \
                 their HTTP calls go unseen"
            );
        }
        let lost = kernel.lost_total;
        if lost > self.counters.lost_reconciled {
            warn!(
                lost = lost - self.counters.lost_reconciled,
                "ring buffer was full: events lost; reconciling every watched process with /proc"
            );
            self.counters.lost_reconciled = lost;
            self.counters.reconcile_after_loss += 1;
            self.reconcile_all(ring);
        } else if !self.reconcile_soon.is_empty() {
            // Not those gone since (a forked child that exec'd or exited).
            let pids: Vec<u32> = (self.reconcile_soon.drain())
                .filter(|pid| self.ledger.processes.contains_key(pid))
                .collect();
            if !pids.is_empty() {
                self.reconcile(ring, &pids);
            }
        }
        self.recheck_due(ring);
        self.confirm_exits();
        self.resolve_provisional(ring);
        self.ledger
            .settle_connects(time::boot_ns(), CONNECT_VERDICT_GRACE_NS);
        self.follow_calls();
        self.follow_log_streams();
        let skipped = kernel
            .log_bytes_skipped
            .saturating_sub(self.kernel_log_bytes_skipped);
        self.kernel_log_bytes_skipped = kernel.log_bytes_skipped;
        alerting::count_log_bytes(&mut self.counters, 0, skipped);
        self.detect();
    }

    fn handle(&mut self, ring: &mut RingBuf<MapData>, request: Request) -> control::protocol::Response {
        use control::protocol::Response;
        let budget = match request {
            Request::Sync => {
                // Settled, too: closes of a process scanned a moment ago
                // cancel held-back creations again (tests and benchmarks
                // count on that; they alone send `sync`).
                self.drain_until_scans_settled(ring);
                u64::MAX
            }
            _ => DRAIN_BUDGET,
        };
        self.drain_up_to(ring, budget);
        self.confirm_exits();
        match request {
            Request::Sync => Response::ok(serde_json::json!({ "records": self.counters.records })),
            Request::Status => Response::data(&self.status()),
            Request::Ledger { pid } => {
                self.resolve_provisional(ring);
                match self.ledger.processes.get(&pid) {
                    Some(process) => Response::data(&crate::ledger::view::ProcessView::of(
                        &self.ledger,
                        process,
                        &self.labels,
                        time::boot_ns(),
                    )),
                    None => not_watched(pid),
                }
            }
            Request::Calls { pid, recent } => match self.ledger.processes.get(&pid) {
                Some(process) => Response::data(&crate::calls::view::CallsView::of(
                    pid,
                    &process.calls,
                    &self.labels,
                    time::boot_ns(),
                    recent,
                )),
                None => not_watched(pid),
            },
            Request::Alerts => Response::data(&self.alerting.book.firing()),
            // Served by the control socket itself (it passes an fd).
            Request::FdIter { .. } => Response::error("fd_iter is answered by the control socket"),
            Request::Metrics => Response::ok(serde_json::Value::String(self.metrics())),
            Request::Reconcile => {
                let before = self.ledger.counters.clone();
                self.reconcile_all(ring);
                Response::data(&status::fixes_since(&before, &self.ledger.counters))
            }
        }
    }
}

/// The answer for a pid without a ledger: no such process, or one this
/// daemon does not watch.
fn not_watched(pid: u32) -> control::protocol::Response {
    use control::protocol::Response;
    if std::path::Path::new(&format!("/proc/{pid}")).exists() {
        Response::error(format!("pid {pid} is not watched by this daemon"))
    } else {
        Response::error(format!("no process with pid {pid}"))
    }
}
