//! The real-OpenStack test bed (testbed.md): a standalone Ironic over HTTP
//! or HTTPS on a loopback address of its own, fake-hardware nodes, and the
//! `nova-compute` harness that drives the real nova Ironic driver against it.
//! Everything started here is stopped by PID when its handle drops.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::Deserialize;
use serde_json::Value;

use crate::workload::Workload;

/// How long Ironic or the harness may take to start serving. Their Python
/// imports alone take ~4 s here, and 10-20× that in the 6.1 VM under software
/// emulation (`cargo xtask vm`), where 60 s was too short; only a hung start
/// waits this out (a process that exits fails at once).
const PYTHON_START: Duration = Duration::from_secs(180);

/// The installed test bed: venvs, TLS material and schema templates.
pub struct Testbed {
    pub cache: PathBuf,
    scripts: PathBuf,
}

impl Testbed {
    /// Installs what is missing (tests/testbed/install.sh: idempotent,
    /// serialised between parallel tests) and returns the installation.
    pub fn install() -> Testbed {
        let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testbed");
        let cache = std::env::var_os("LEAKMON_TESTBED_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
                workspace.join(".cache/testbed")
            });
        let status = Command::new("bash")
            .arg(scripts.join("install.sh"))
            .arg(&cache)
            .status()
            .expect("run tests/testbed/install.sh");
        assert!(
            status.success(),
            "installing the test bed failed ({status}); see above"
        );
        Testbed { cache, scripts }
    }

    fn python(&self, venv: &str) -> PathBuf {
        self.cache.join(venv).join("bin/python3")
    }

    /// `tests/testbed/SCRIPT ARGS` run by the nova venv's Python (the
    /// CPython and OpenSSL nova-compute runs on).
    pub fn nova_python(&self, script: &str, args: &[&str]) -> Command {
        let mut command = Command::new(self.python("nova"));
        command.arg(self.scripts.join(script)).args(args);
        command
    }

    /// A config template from tests/testbed with `@KEY@` placeholders filled.
    fn render(&self, template: &str, values: &[(&str, &str)]) -> String {
        let mut text = std::fs::read_to_string(self.scripts.join(template)).expect("read template");
        for (key, value) in values {
            text = text.replace(&format!("@{key}@"), value);
        }
        text
    }

    /// Runs `ironic_ctl.py` against `ironic`; returns its JSON answer.
    fn ironic_ctl(&self, ironic: &Ironic, args: &[&str]) -> Value {
        let mut command = Command::new(self.python("nova"));
        command.arg(self.scripts.join("ironic_ctl.py")).arg(&ironic.url);
        if let Some(ca) = &ironic.cacert {
            command.arg("--cacert").arg(ca);
        }
        let out = command.args(args).output().expect("run ironic_ctl.py");
        assert!(
            out.status.success(),
            "ironic_ctl {args:?} failed: {}\nIronic log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            ironic.log_tail()
        );
        serde_json::from_slice(&out.stdout).expect("ironic_ctl JSON")
    }
}

/// A standalone Ironic (conductor with embedded API) serving `url`.
pub struct Ironic {
    child: Child,
    pub url: String,
    /// The CA that signed the server certificate, when serving HTTPS.
    pub cacert: Option<PathBuf>,
    dir: PathBuf,
}

impl Ironic {
    /// Starts Ironic on `ip`:6385 with a fresh copy of the schema, over HTTPS
    /// when `tls`, and waits until `GET /v1/` answers. Each test uses its own
    /// loopback address (127.0.0.2, .3, ...) so tests can run in parallel.
    pub fn start(bed: &Testbed, dir: &Path, ip: &str, tls: bool) -> Ironic {
        Ironic::start_with_delays(bed, dir, ip, tls, 3, 1)
    }

    /// As [`Ironic::start`], with the fake hardware's deploy (and tear-down)
    /// and power delays in seconds.
    pub fn start_with_delays(
        bed: &Testbed,
        dir: &Path,
        ip: &str,
        tls: bool,
        deploy_s: u32,
        power_s: u32,
    ) -> Ironic {
        let dir = dir.join("ironic");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(bed.cache.join("db/ironic.db"), dir.join("ironic.db")).expect("copy schema");
        let tls_dir = bed.cache.join("tls");
        let tls_options = if tls {
            format!(
                "enable_ssl_api = true\ncert_file = {}\nkey_file = {}",
                tls_dir.join("server.pem").display(),
                tls_dir.join("server.key").display()
            )
        } else {
            String::new()
        };
        let conf = bed
            .render(
                "ironic.conf.in",
                &[("DIR", &dir.to_string_lossy()), ("IP", ip), ("TLS", &tls_options)],
            )
            .replace("deploy_delay = 3", &format!("deploy_delay = {deploy_s}"))
            .replace("power_delay = 1", &format!("power_delay = {power_s}"));
        std::fs::write(dir.join("ironic.conf"), conf).unwrap();
        let mut command = Command::new(bed.cache.join("ironic/bin/ironic"));
        command
            .arg("--config-file")
            .arg(dir.join("ironic.conf"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            // Its own group, so that the worker it forks can be stopped too.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to
        // SIGTERM this child if the test thread that started it goes away.
        unsafe {
            command
                .pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from));
        }
        let child = command.spawn().expect("start ironic");
        let scheme = if tls { "https" } else { "http" };
        let mut ironic = Ironic {
            child,
            url: format!("{scheme}://{ip}:6385"),
            cacert: tls.then(|| tls_dir.join("ca.pem")),
            dir,
        };
        ironic.await_serving(bed, ip);
        ironic
    }

    /// Until the API port accepts (failing at once if Ironic exits), then
    /// until `GET /v1/` answers (within [`PYTHON_START`]).
    fn await_serving(&mut self, bed: &Testbed, ip: &str) {
        let deadline = Instant::now() + PYTHON_START;
        let address = std::net::SocketAddr::new(ip.parse().expect("loopback ip"), 6385);
        while std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err() {
            let stderr = || std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!(
                    "Ironic exited ({status}) before serving:\n{}\n{}",
                    stderr(),
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "Ironic not listening on {address} after {PYTHON_START:?}:\n{}\n{}",
                    stderr(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        bed.ironic_ctl(self, &["wait", "30"]);
    }

    /// Enrolls `count` fake-hardware nodes and brings them to `available`
    /// (about 8 s each); returns their uuids.
    pub fn enroll(&self, bed: &Testbed, count: usize) -> Vec<String> {
        let answer = bed.ironic_ctl(self, &["enroll", &count.to_string()]);
        serde_json::from_value(answer["nodes"].clone()).expect("node uuids")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Renames one of Ironic's database tables (`nodes`), so that every
    /// query of it fails inside Ironic (HTTP 500), or back (`nodes_broken`).
    pub fn rename_table(&self, from: &str, to: &str) {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 db = sqlite3.connect(sys.argv[1], timeout=30)\n\
                 db.execute(f'ALTER TABLE {sys.argv[2]} RENAME TO {sys.argv[3]}')\n\
                 db.commit()",
            ])
            .arg(self.dir.join("ironic.db"))
            .args([from, to])
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "renaming {from}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("ironic.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Ironic {
    fn drop(&mut self) {
        // SIGTERM to the master stops its worker too (about 4 s); past 15 s
        // the whole group is killed.
        let group = Pid::from_raw(-(self.child.id() as i32));
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                let _ = kill(group, Signal::SIGKILL);
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// One request the harness sent, from urllib3's own log: the ground truth.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct LoggedRequest {
    pub scheme: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub thread: u32,
}

/// The `nova-compute` harness (tests/testbed/nova_compute.py), running the
/// real nova Ironic driver; comm `nova-compute` as in production.
pub struct NovaCompute {
    pub process: Workload,
    pub pid: u32,
    pub request_log: PathBuf,
}

impl NovaCompute {
    /// Writes the harness (a script named `nova-compute`), its nova.conf and
    /// databases into `dir`/nova, kept across restarts; returns the command
    /// that runs it, its stderr going to nova/stderr.log.
    pub fn command(bed: &Testbed, dir: &Path, ironic: &Ironic) -> Command {
        NovaCompute::command_with_retries(bed, dir, ironic, 60)
    }

    /// As [`NovaCompute::command`], with `[ironic]api_max_retries`.
    pub fn command_with_retries(bed: &Testbed, dir: &Path, ironic: &Ironic, api_max_retries: u32) -> Command {
        let dir = dir.join("nova");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        for db in ["nova.db", "nova_api.db"] {
            if !dir.join(db).exists() {
                std::fs::copy(bed.cache.join("db").join(db), dir.join(db)).expect("copy schema");
            }
        }
        let cafile = ironic
            .cacert
            .as_ref()
            .map(|ca| format!("cafile = {}", ca.display()))
            .unwrap_or_default();
        let conf = bed
            .render(
                "nova.conf.in",
                &[
                    ("DIR", &dir.to_string_lossy()),
                    ("URL", &ironic.url),
                    ("CAFILE", &cafile),
                ],
            )
            .replace(
                "api_max_retries = 60",
                &format!("api_max_retries = {api_max_retries}"),
            );
        std::fs::write(dir.join("nova.conf"), conf).unwrap();
        // A script literally named nova-compute, run through its shebang.
        let script = dir.join("bin/nova-compute");
        let body = std::fs::read_to_string(bed.scripts.join("nova_compute.py")).unwrap();
        std::fs::write(&script, format!("#!{}\n{body}", bed.python("nova").display())).unwrap();
        set_executable(&script);
        let mut command = Command::new(&script);
        command
            // nova's switch of concurrency mode: native threads unless asked
            // otherwise ([`NovaCompute::start_eventlet`]), whatever the environment.
            .env("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")
            .arg("--config-file")
            .arg(dir.join("nova.conf"));
        // A test's overrides (oslo.config: a later file wins).
        let overrides = dir.join("override.conf");
        if overrides.exists() {
            command.arg("--config-file").arg(overrides);
        }
        command
            .arg("--request-log")
            .arg(dir.join("requests.jsonl"))
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(dir.join("stderr.log"))
                    .unwrap(),
            );
        command
    }

    /// Starts the harness against `ironic` (see [`NovaCompute::command`]) and
    /// waits until it is ready.
    pub fn start(bed: &Testbed, dir: &Path, ironic: &Ironic, fake_token: Option<&str>) -> NovaCompute {
        NovaCompute::start_with(bed, dir, ironic, fake_token, 60)
    }

    /// As [`NovaCompute::start`], with `[ironic]api_max_retries`.
    pub fn start_with(
        bed: &Testbed,
        dir: &Path,
        ironic: &Ironic,
        fake_token: Option<&str>,
        api_max_retries: u32,
    ) -> NovaCompute {
        let mut command = NovaCompute::command_with_retries(bed, dir, ironic, api_max_retries);
        if let Some(token) = fake_token {
            command.arg("--fake-token").arg(token);
        }
        NovaCompute::spawn(command, dir)
    }

    /// As [`NovaCompute::start`], in nova's eventlet mode: green threads on
    /// one OS thread, non-blocking sockets. Deprecated on master but
    /// selectable, and what releases before native threading run.
    pub fn start_eventlet(bed: &Testbed, dir: &Path, ironic: &Ironic) -> NovaCompute {
        let mut command = NovaCompute::command_with_retries(bed, dir, ironic, 60);
        // Any value but 1, true or yes monkey-patches.
        command.env("OS_NOVA_DISABLE_EVENTLET_PATCHING", "0");
        NovaCompute::spawn(command, dir)
    }

    fn spawn(command: Command, dir: &Path) -> NovaCompute {
        let request_log = dir.join("nova/requests.jsonl");
        let mut process = Workload::start(command);
        let ready = process.expect_within("ready", PYTHON_START);
        let pid = ready["pid"].as_u64().expect("pid") as u32;
        NovaCompute {
            process,
            pid,
            request_log,
        }
    }

    /// Sends one harness command and waits for its answer (`event`).
    pub fn run(&mut self, command: &str, event: &str) -> Value {
        self.process.send(command);
        self.process.expect_within(event, Duration::from_secs(120))
    }

    /// Every request logged so far, in the order they completed.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        std::fs::read_to_string(&self.request_log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    /// Kills the harness at once (as a crash or `systemctl kill` would).
    pub fn kill(self) {
        drop(self.process);
    }

    pub fn exit(self) {
        self.process.exit();
    }
}

fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
