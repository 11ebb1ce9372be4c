//! OpenSSL uprobes, per watched process: found in /proc/PID/maps, attached
//! with the process as their scope (the kernel then plants the breakpoints
//! in that process's memory only, so other processes that map the same
//! libssl pay nothing), detached when it goes.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{UProbe, uprobe::UProbeLinkId, uprobe::UProbeScope},
};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::links::Links;

/// (symbol, entry program); every symbol also gets the return program.
const SYMBOLS: [(&str, &str); 4] = [
    ("SSL_write", "ssl_write"),
    ("SSL_write_ex", "ssl_write_ex"),
    ("SSL_read", "ssl_read"),
    ("SSL_read_ex", "ssl_read_ex"),
];
const RETURN_PROGRAM: &str = "ssl_return";
/// (symbol, program) without a return probe: a new connection's handshake
/// starts its stream afresh (the SSL object may reuse a freed one's address).
const HANDSHAKE: (&str, &str) = ("SSL_do_handshake", "ssl_handshake");

/// The libssl files a process maps (paths as the process sees them).
pub fn libssl_of(pid: u32) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| {
            path.rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with("libssl.so"))
        })
        .map(PathBuf::from)
        .collect();
    found.sort();
    found.dedup();
    found
}

#[derive(Clone, Debug, Serialize)]
pub struct TlsAttachment {
    pub pid: u32,
    pub library: PathBuf,
    pub symbols: Vec<&'static str>,
}

/// The uprobes attached for one process.
struct Attached {
    library: PathBuf,
    symbols: Vec<&'static str>,
    links: Vec<(&'static str, UProbeLinkId)>,
}

#[derive(Default)]
pub struct Tls {
    loaded: bool,
    attached: HashMap<u32, Attached>,
    /// Attachments made and removed, for status (to show there are no duplicates).
    pub attach_count: u64,
    pub detach_count: u64,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}

impl Tls {
    fn load(&mut self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        if !self.loaded {
            for name in SYMBOLS
                .iter()
                .map(|(_, p)| *p)
                .chain([RETURN_PROGRAM, HANDSHAKE.1])
            {
                program(ebpf, name)?
                    .load()
                    .with_context(|| format!("the verifier refused {name}"))?;
            }
            self.loaded = true;
        }
        Ok(())
    }

    pub fn is_attached(&self, pid: u32) -> bool {
        self.attached.contains_key(&pid)
    }

    /// Attaches to the libssl `pid` maps, once. Returns whether it did.
    pub fn attach(&mut self, ebpf: &mut Ebpf, pid: u32) -> anyhow::Result<bool> {
        if self.attached.contains_key(&pid) {
            return Ok(false);
        }
        let Some(library) = libssl_of(pid).into_iter().next() else {
            return Ok(false);
        };
        self.load(ebpf)?;
        let started = std::time::Instant::now();
        // Through the process's root: the library of a container, not ours.
        let target =
            Path::new(&format!("/proc/{pid}/root")).join(library.strip_prefix("/").unwrap_or(&library));
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0")?);
        let mut links = Vec::new();
        let mut symbols = Vec::new();
        for (symbol, entry) in SYMBOLS {
            // OpenSSL before 1.1.1 has no _ex functions: a symbol may be missing.
            let entry_link = match program(ebpf, entry)?.attach(symbol, &target, scope) {
                Ok(link) => link,
                Err(e) => {
                    debug!(pid, symbol, error = %e, "uprobe not attached");
                    continue;
                }
            };
            match program(ebpf, RETURN_PROGRAM)?.attach(symbol, &target, scope) {
                Ok(return_link) => {
                    links.push((entry, entry_link));
                    links.push((RETURN_PROGRAM, return_link));
                    symbols.push(symbol);
                }
                Err(e) => {
                    debug!(pid, symbol, error = %e, "uretprobe not attached");
                    let _ = program(ebpf, entry)?.detach(entry_link);
                }
            }
        }
        if symbols.is_empty() {
            warn!(pid, library = %library.display(), "no SSL read/write symbol could be probed: HTTPS calls will not be seen");
            return Ok(false);
        }
        let (symbol, name) = HANDSHAKE;
        match program(ebpf, name)?.attach(symbol, &target, scope) {
            Ok(link) => {
                links.push((name, link));
                symbols.push(symbol);
            }
            Err(e) => {
                warn!(pid, symbol, error = %e, "not attached: after a connection is dropped unanswered, the next one's first call may be missed")
            }
        }
        info!(pid, library = %library.display(), ?symbols, took_ms = started.elapsed().as_millis() as u64, "TLS plaintext probes attached");
        self.attach_count += 1;
        self.attached.insert(
            pid,
            Attached {
                library,
                symbols,
                links,
            },
        );
        Ok(true)
    }

    /// Detaches `pid`'s uprobes. Unregistering a uprobe waits for RCU
    /// grace periods (about 100 ms each here: 0.8 s for eight one after
    /// another, a process has nine; links.rs drops them side by side). It runs on a
    /// thread of its own: the engine goes on draining the ring buffer
    /// meanwhile instead of losing events.
    pub fn detach(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let Some(mut owned) = self.take_links(ebpf, pid) else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("tls-detach".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                owned.detach();
                debug!(
                    pid,
                    took_ms = started.elapsed().as_millis() as u64,
                    "TLS probes detached"
                );
            });
        if let Err(e) = spawned {
            warn!(pid, error = %e, "no thread for the TLS detach: detached inline, events may be lost meanwhile");
        }
    }

    /// Moves every process's uprobe links into `links` (at shutdown).
    pub fn take_all_links(&mut self, ebpf: &mut Ebpf, links: &mut Links) {
        for pid in self.pids() {
            if let Some(mut owned) = self.take_links(ebpf, pid) {
                links.append(&mut owned);
            }
        }
    }

    /// Takes `pid`'s links out of their programs and forgets the attachment.
    fn take_links(&mut self, ebpf: &mut Ebpf, pid: u32) -> Option<Links> {
        let attached = self.attached.remove(&pid)?;
        let mut owned = Links::default();
        for (name, link) in attached.links {
            match program(ebpf, name).and_then(|p| Ok(p.take_link(link)?)) {
                Ok(link) => owned.push_uprobe(link),
                Err(e) => debug!(pid, program = name, error = %e, "uprobe link already gone"),
            }
        }
        self.detach_count += 1;
        Some(owned)
    }

    /// Pids with probes attached.
    pub fn pids(&self) -> Vec<u32> {
        self.attached.keys().copied().collect()
    }

    pub fn attachments(&self) -> Vec<TlsAttachment> {
        let mut list: Vec<TlsAttachment> = self
            .attached
            .iter()
            .map(|(pid, a)| TlsAttachment {
                pid: *pid,
                library: a.library.clone(),
                symbols: a.symbols.clone(),
            })
            .collect();
        list.sort_by_key(|a| a.pid);
        list
    }
}
