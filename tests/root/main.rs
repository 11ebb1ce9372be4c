//! Root integration tests: the real probes on this kernel, real processes.
//! One test binary (like aya's integration tests); each test starts its own
//! daemon watching its own workload name, so tests can run side by side.

mod alerts;
mod calls;
mod calls_early;
mod calls_live;
mod churn;
mod discovery;
mod ledger;
mod operations;
mod overflow;
mod scenarios;
mod secrets;
mod sinks;
mod snapshot;
mod sockets;
mod systemd;
