//! leakmon as a library: everything the `leakmon` binary runs, also built
//! for the fuzz targets (monitor/fuzz) that drive the parsers directly.

// The probes read x86_64 syscall numbers and saved registers (monitor-common's
// `syscalls`, monitor-ebpf's regs.rs), and the decoder x86_64 `struct cmsghdr`:
// elsewhere they would misattribute silently, so the build says so instead.
#[cfg(not(target_arch = "x86_64"))]
compile_error!("leakmon supports x86_64 hosts only: its probes read x86_64 syscall numbers and registers");

pub mod alerts;
pub mod alerts_cmd;
pub mod bounded;
pub mod calls;
pub mod calls_cmd;
pub mod cli;
pub mod config;
pub mod container;
pub mod control;
pub mod detect;
pub mod discovery;
pub mod doctor;
pub mod engine;
pub mod fastmap;
pub mod fditer;
pub mod fdkind;
pub mod fuzzing;
pub mod http;
pub mod labels;
pub mod ledger;
pub mod logscan;
pub mod metrics_server;
pub mod probes;
pub mod proc;
pub mod procnet;
#[cfg(test)]
mod readme_tests;
pub mod redact;
pub mod sdnotify;
pub mod snapshot;
pub mod sockdiag;
pub mod status_cmd;
pub mod table;
pub mod time;
