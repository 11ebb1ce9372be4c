//! A `leakmon run` under test.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The test's directory when the daemon owns it: removed after the daemon stops.
    scratch: Option<crate::ScratchDir>,
}

impl Daemon {
    /// Starts the daemon with `args` (plus a private control socket) and
    /// waits until it answers on its socket.
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
        Daemon::start_bin(&crate::binary("leakmon", "LEAKMON_BIN"), dir, args)
    }

    /// Takes the test's directory (its socket and log are there), to remove
    /// it once the daemon has stopped.
    pub fn owning(mut self, dir: crate::ScratchDir) -> Daemon {
        self.scratch = Some(dir);
        self
    }

    /// As [`Daemon::start`], with extra environment (e.g. RUST_LOG).
    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::launch(&crate::binary("leakmon", "LEAKMON_BIN"), dir, args, env)
    }

    /// As [`Daemon::start`], with a given leakmon binary (benchmarks use release builds).
    pub fn start_bin(bin: &Path, dir: &Path, args: &[&str]) -> Daemon {
        Daemon::launch(bin, dir, args, &[])
    }

    /// A daemon (of `bin`) watching nothing whose snapshot iterator walks
    /// every process, as it must on kernels before 6.1 (there this is any
    /// daemon): the test fault switch refuses the scoping to one process.
    pub fn start_host_wide_iterator(bin: &Path, dir: &Path) -> Daemon {
        std::fs::create_dir_all(dir).expect("create the daemon's directory");
        let env = [("LEAKMON_TEST_REFUSE_HOOKS", "fd_iter_pid_scope")];
        Daemon::launch(bin, dir, &["--match-comm", "lmw-none-such"], &env)
    }

    /// As [`Daemon::start`], with `config` (TOML) written to `dir`/leakmon.toml
    /// and passed as `--config` (tests that reload it rewrite that file).
    pub fn start_with_config(dir: &Path, config: &str, args: &[&str]) -> Daemon {
        Daemon::start_bin_with_config(&crate::binary("leakmon", "LEAKMON_BIN"), dir, config, args)
    }

    /// As [`Daemon::start_with_config`], with a given leakmon binary.
    pub fn start_bin_with_config(bin: &Path, dir: &Path, config: &str, args: &[&str]) -> Daemon {
        Daemon::launch_with_config(bin, dir, config, args, &[])
    }

    /// As [`Daemon::start_with_config`], with extra environment.
    pub fn start_with_config_and_env(
        dir: &Path,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let bin = crate::binary("leakmon", "LEAKMON_BIN");
        Daemon::launch_with_config(&bin, dir, config, args, env)
    }

    fn launch_with_config(
        bin: &Path,
        dir: &Path,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let path = dir.join("leakmon.toml");
        std::fs::write(&path, config).expect("write the daemon's config");
        let path = path.to_str().expect("a UTF-8 scratch path");
        let args: Vec<&str> = ["--config", path].iter().chain(args).copied().collect();
        Daemon::launch(bin, dir, &args, env)
    }

    fn launch(bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let socket = dir.join("leakmon.sock");
        let log = dir.join("daemon.log");
        let child = Command::new(bin)
            .arg("run")
            .args(args)
            .arg("--control-socket")
            .arg(&socket)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("spawn leakmon run");
        let mut daemon = Daemon {
            child,
            socket,
            log,
            scratch: None,
        };
        // Generous: loading the probes under the test VMs' single-threaded
        // emulation, beside other tests' daemons, has taken over 30 s.
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(status) = daemon.child.try_wait().expect("wait") {
                panic!(
                    "daemon exited with {status} before answering:\n{}",
                    daemon.log_text()
                );
            }
            if daemon.socket.exists() && daemon.try_request(&json!({"request": "sync"})).is_ok() {
                return daemon;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not answer within 120 s:\n{}", daemon.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_request(&self, request: &Value) -> Result<Value, String> {
        let stream = UnixStream::connect(&self.socket).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut line = serde_json::to_vec(request).unwrap();
        line.push(b'\n');
        (&stream).write_all(&line).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(&stream)
            .read_line(&mut answer)
            .map_err(|e| e.to_string())?;
        let answer: Value = serde_json::from_str(&answer).map_err(|e| format!("{e}: {answer}"))?;
        if answer["ok"] == Value::Bool(true) {
            Ok(answer["data"].clone())
        } else {
            Err(answer["error"].as_str().unwrap_or("?").to_string())
        }
    }

    pub fn request(&self, request: Value) -> Value {
        self.try_request(&request)
            .unwrap_or_else(|e| panic!("request {request} failed: {e}\n{}", self.log_text()))
    }

    /// Applies every event already in the ring buffer.
    pub fn sync(&self) {
        self.request(json!({"request": "sync"}));
    }

    pub fn ledger(&self, pid: u32) -> Value {
        self.request(json!({"request": "ledger", "pid": pid}))
    }

    pub fn try_ledger(&self, pid: u32) -> Result<Value, String> {
        self.try_request(&json!({"request": "ledger", "pid": pid}))
    }

    pub fn status(&self) -> Value {
        self.request(json!({"request": "status"}))
    }

    /// The status entry of the hook of `program` (the first, for a program
    /// on several tracepoints).
    pub fn hook(&self, program: &str) -> Value {
        let status = self.status();
        let hooks = status["hooks"].as_array().expect("a hooks list in status");
        hooks
            .iter()
            .find(|h| h["program"] == program)
            .unwrap_or_else(|| panic!("no hook of {program} in status"))
            .clone()
    }

    /// Polls `check` on the daemon's status until it holds (an awaited
    /// condition with a deadline, not a sleep).
    pub fn await_status(&self, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status: {status:#}\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The ledger of `pid` once it holds exactly the fds /proc holds (by
    /// number), after a `sync` each time; fails after `timeout`.
    pub fn await_ledger_is_proc(&self, pid: u32, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            // Read each time: the process may still be changing (an exec).
            let proc: Vec<u64> = crate::truth::proc_fds(pid).keys().map(|fd| *fd as u64).collect();
            self.sync();
            let ledger = self.ledger(pid);
            let held: Vec<u64> = ledger["fds"]
                .as_array()
                .expect("fds")
                .iter()
                .map(|f| f["fd"].as_u64().unwrap())
                .collect();
            if held == proc {
                return ledger;
            }
            let missing: Vec<&u64> = proc.iter().filter(|fd| !held.contains(fd)).collect();
            let extra: Vec<&u64> = held.iter().filter(|fd| !proc.contains(fd)).collect();
            if Instant::now() >= deadline {
                let says = format!("pid={pid}");
                let log = self.log_text();
                let lines: Vec<&str> = log.lines().filter(|l| l.contains(&says)).collect();
                let process = [("comm", &ledger["comm"]), ("reason", &ledger["reason"])];
                panic!(
                    "the ledger of {pid} ({process:?}, /proc cmdline {:?}) still differs from /proc \
                     after {timeout:?}: missing {missing:?}, extra {extra:?}; its log lines:\n{lines:#?}",
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the probes' fast check says `pid` is watched: its byte in
    /// this daemon's WATCHED_PIDS map (found among the daemon's fds), read
    /// with bpftool.
    pub fn watched_byte(&self, pid: u32) -> bool {
        let id = self.map_id("WATCHED_PIDS");
        let key = (pid / 8).to_le_bytes().map(|b| b.to_string());
        let out = Command::new("bpftool")
            .args(["map", "lookup", "id", &id.to_string(), "key"])
            .args(&key)
            .arg("-j")
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "bpftool map lookup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let entry: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        entry["value"][(pid % 8) as usize] != "0x00"
    }

    /// How many entries this daemon's map `name` holds (bpftool).
    pub fn map_len(&self, name: &str) -> usize {
        let out = Command::new("bpftool")
            .args(["map", "dump", "id", &self.map_id(name).to_string(), "-j"])
            .output()
            .expect("bpftool");
        let entries: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        entries.as_array().map_or(0, Vec::len)
    }

    /// The id of this daemon's map `name`.
    fn map_id(&self, name: &str) -> u32 {
        let fdinfo = format!("/proc/{}/fdinfo", self.pid());
        let ids: std::collections::BTreeSet<u32> = std::fs::read_dir(&fdinfo)
            .expect("the daemon's fdinfo")
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("map_id:")?.trim().parse().ok())
            })
            .collect();
        ids.into_iter()
            .find(|id| {
                let out = Command::new("bpftool")
                    .args(["map", "show", "id", &id.to_string(), "-j"])
                    .output()
                    .expect("bpftool");
                serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|m| m["name"] == name)
            })
            .unwrap_or_else(|| panic!("the daemon holds no map {name}"))
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}
