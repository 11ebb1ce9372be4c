//! Project tasks that build.rs cannot do: installing the toolchain pieces and
//! packages, running the whole test suite as CI does, the demo, benchmarks.

mod bench;
mod demo;
mod setup;
mod test;
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
    /// Setup, then run the benchmarks and write docs/benchmarks.md.
    Bench {
        /// Repetitions of each measurement (min/median/max are reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Operations per loop run.
        #[arg(long, default_value_t = 200_000)]
        ops: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test { filter } => test::run(filter.as_deref()),
        Task::Demo { seconds } => demo::run(seconds),
        Task::Bench { runs, ops } => bench::run(runs, ops),
    }
}
