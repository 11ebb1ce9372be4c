//! Helpers for leakmon's integration tests: a daemon under test, workloads
//! with a line protocol, and ground truth read straight from /proc.

pub mod alerts;

/// The one token value the tests and benchmarks send: obviously fake, and
/// what every secret test looks for in every output to prove it is dropped.
#[macro_export]
macro_rules! fake_token {
    () => {
        "FAKE-TOKEN-leakmon-test-not-a-credential"
    };
}
pub const FAKE_TOKEN: &str = fake_token!();

pub mod daemon;
pub mod scenario;
pub mod servers;
pub mod testbed;
pub mod truth;
pub mod workload;

use std::path::{Path, PathBuf};

/// Root tests call this first. Without root they print why they skip; with
/// LEAKMON_REQUIRE_ROOT=1 (set by `cargo xtask test`, i.e. in CI) a skip is a failure.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("LEAKMON_REQUIRE_ROOT").is_none(),
        "{test}: needs root, and LEAKMON_REQUIRE_ROOT forbids skipping"
    );
    eprintln!("skipping {test}: needs root (load eBPF programs, read other processes' /proc)");
    false
}

/// Whether the running kernel is `major.minor` or later (from `uname -r`,
/// e.g. `5.15.0-25-generic`): for hooks a kernel gained in that release.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname().expect("uname");
    let release = release.release().to_string_lossy();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version >= (major, minor)
}

/// The workspace's target directory for the profile the tests were built with.
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join(profile());
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join(profile())
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// A binary of the workspace: `LEAKMON_BIN`-style override, else target/<profile>/<name>.
pub fn binary(name: &str, env_override: &str) -> PathBuf {
    let path = std::env::var_os(env_override)
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join(name));
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo build -p monitor -p tests --bins`, which `cargo xtask test` does)",
        path.display()
    );
    path
}

/// Runs the CLI, `leakmon ARGS`, followed by `--control-socket SOCKET` if
/// given (a socket nothing listens on makes it read /proc).
pub fn leakmon(args: &[&str], socket: Option<&Path>) -> std::process::Output {
    let mut command = std::process::Command::new(binary("leakmon", "LEAKMON_BIN"));
    command.args(args);
    if let Some(socket) = socket {
        command.arg("--control-socket").arg(socket);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("run leakmon {args:?}: {e}"))
}

/// `leakmon snapshot --json --pid PID` with the given daemon socket; it must succeed.
pub fn snapshot_json(pid: u32, socket: &Path) -> serde_json::Value {
    let out = leakmon(&["snapshot", "--json", "--pid", &pid.to_string()], Some(socket));
    assert!(
        out.status.success(),
        "snapshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("snapshot JSON")
}

/// The common start of a root test: a daemon watching processes named
/// `comm`, and the workload run under that name with `args`, ready and
/// already applied by the daemon.
pub fn watched_workload(
    test: &str,
    comm: &str,
    args: &[&str],
) -> (daemon::Daemon, workload::Workload, serde_json::Value) {
    watched_workload_with_env(test, comm, args, &[])
}

/// [`watched_workload`] with a daemon run with `env` added (a log level, a
/// test fault switch).
pub fn watched_workload_with_env(
    test: &str,
    comm: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (daemon::Daemon, workload::Workload, serde_json::Value) {
    let dir = scratch_dir(test);
    let daemon = daemon::Daemon::start_with_env(&dir, &["--match-comm", comm], env);
    let mut workload = workload::Workload::spawn(&dir, comm, args);
    let ready = workload.expect("ready");
    daemon.sync();
    (daemon.owning(dir), workload, ready)
}

/// A fresh directory under the temp dir for one test: [`ScratchDir`].
pub fn scratch_dir(test: &str) -> ScratchDir {
    let dir = std::env::temp_dir().join(format!("leakmon-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    ScratchDir(dir)
}

/// A test's directory (daemon log, control socket, testbed state), removed
/// when it drops, unless the test is failing: then its logs are the
/// diagnosis, and the path is printed. Whatever runs in it must stop first:
/// a struct holding one declares it last (fields drop in order).
pub struct ScratchDir(PathBuf);

impl std::ops::Deref for ScratchDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for diagnosis", self.0.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}
