//! Project tasks that build.rs cannot do: installing the toolchain pieces and
//! packages, running the whole test suite as CI does, the demo, benchmarks.

mod bench;
mod bench_calls;
mod bench_compare;
mod bench_delivery;
mod bench_scenarios;
mod bench_snapshot;
mod demo;
mod fuzz;
mod install;
mod prometheus_rules;
mod secrets;
mod setup;
mod test;
mod testbed;
mod util;
mod vm;

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
    /// Setup, then watch the real nova driver leak connections to a real Ironic, live.
    Demo {
        /// Stop after this many seconds (Ctrl-C stops earlier).
        #[arg(long, default_value_t = 120)]
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
        /// Run one section only and print it (docs/benchmarks.md is not written,
        /// except for `scenarios`, whose section is updated in place).
        #[arg(long, value_parser = ["loops", "snapshot", "sockets", "delivery", "calls", "scenarios"])]
        only: Option<String>,
    },
    /// A/B one loop: no daemon, another leakmon binary watching it (A) and
    /// this build's (B), interleaved; prints ratios (docs/benchmarks.md is
    /// not written).
    Compare {
        /// The other leakmon binary (A), e.g. a release build of an earlier commit.
        #[arg(long)]
        against: std::path::PathBuf,
        /// The loop: open, socket, pipe2, dup, eventfd, epoll, thread, fork, exec, tcp, getppid.
        #[arg(long = "loop", default_value = "open")]
        kind: String,
        /// Interleaved repetitions.
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Operations per fd loop run (other loops scale it as `bench` does).
        #[arg(long, default_value_t = 200_000)]
        ops: u64,
        /// Turn on kernel.bpf_stats_enabled for the run and print each program's time
        /// (the loop timings are then inflated: read them as attribution only).
        #[arg(long)]
        programs: bool,
    },
    /// Run the cargo-fuzz targets (HTTP parser, event decoder, config loader).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// One target only.
        #[arg(long, value_parser = fuzz::TARGETS)]
        target: Option<String>,
    },
    /// The root integration suite in a VM on a second kernel (a Debian or pinned
    /// Ubuntu kernel under qemu); writes its section of docs/kernels.md.
    Vm {
        /// Debian kernel package to boot (a metapackage resolves to its image), or
        /// `ubuntu-22.04` / `ubuntu-24.04` (Ubuntu's first kernel of that release,
        /// 5.15 / 6.8, pinned by SHA-256).
        #[arg(long, default_value = "linux-image-amd64")]
        kernel_package: String,
        /// Only run root tests whose name contains this.
        filter: Option<String>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 6144)]
        memory: u32,
        /// Give up (and kill the VM) after this many minutes.
        #[arg(long, default_value_t = 40)]
        timeout_minutes: u64,
        /// qemu accelerator: kvm or tcg [default: kvm, or tcg where KVM cannot boot a stock kernel].
        #[arg(long, value_parser = ["kvm", "tcg"])]
        accel: Option<String>,
        /// Kernel parameters for the guest, e.g. `lockdown=integrity` (the
        /// lockdown Secure Boot puts Ubuntu hosts in).
        #[arg(long)]
        append: Option<String>,
    },
    /// Build and install the daemon, its systemd unit and a default config (kept if present).
    Install {
        /// Install under this directory instead of / (for packaging).
        #[arg(long, default_value = "/")]
        root: std::path::PathBuf,
        /// Install this leakmon binary instead of building a release one.
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test { filter } => test::run(filter.as_deref()),
        Task::Demo { seconds } => demo::run(seconds),
        Task::Testbed { ip, tls, nodes } => testbed::run(&ip, tls, nodes),
        Task::Bench { runs, ops, only } => bench::run(runs, ops, only.as_deref()),
        Task::Install { root, binary } => install::run(&root, binary.as_deref()),
        Task::Vm {
            kernel_package,
            filter,
            memory,
            timeout_minutes,
            accel,
            append,
        } => setup::run_all().and_then(|()| {
            vm::run(&vm::Options {
                kernel_package: &kernel_package,
                filter: filter.as_deref(),
                memory_mib: memory,
                timeout: std::time::Duration::from_secs(timeout_minutes * 60),
                accel: accel.as_deref(),
                append: append.as_deref(),
            })
        }),
        Task::Compare {
            against,
            kind,
            runs,
            ops,
            programs,
        } => bench_compare::run(&bench_compare::Options {
            against,
            kind,
            runs,
            ops,
            programs,
        }),
        Task::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()),
    }
}
