//! Project tasks that build.rs cannot do: installing the toolchain pieces and
//! packages, running the whole test suite as CI does, the demo, benchmarks.

mod bench;
mod bench_calls;
mod demo;
mod setup;
mod test;
mod testbed;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what leakmon needs to build and test (idempotent; root for packages).
    Setup,
    /// Setup, then format and lint checks, unit tests and the root integration tests.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// Setup, then watch a bundled leaky `nova-compute` and show the ledger fill.
    Demo {
        /// Stop after this many seconds (Ctrl-C stops earlier).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// A real Ironic with fake-hardware nodes and the nova-compute harness,
    /// for trying leakmon by hand (until Ctrl-C).
    Testbed {
        /// Loopback address to serve Ironic on (port 6385).
        #[arg(long, default_value = "127.0.0.1")]
        ip: String,
        /// Serve HTTPS with the test bed's own CA.
        #[arg(long)]
        tls: bool,
        /// Nodes to enroll.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
    },
    /// Setup, then run the benchmarks and write docs/benchmarks.md.
    Bench {
        /// Repetitions of each measurement (min/median/max are reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Operations per loop run.
        #[arg(long, default_value_t = 200_000)]
        ops: u64,
        /// Run one section only and print it (docs/benchmarks.md is not written).
        #[arg(long, value_parser = ["loops", "snapshot", "sockets", "calls"])]
        only: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test { filter } => test::run(filter.as_deref()),
        Task::Demo { seconds } => demo::run(seconds),
        Task::Testbed { ip, tls, nodes } => testbed::run(&ip, tls, nodes),
        Task::Bench { runs, ops, only } => bench::run(runs, ops, only.as_deref()),
    }
}
