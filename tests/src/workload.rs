//! Spawning the test workload under a chosen process name.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;

pub struct Workload {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    pub pid: u32,
}

impl Workload {
    /// Runs `leakmon-workload ARGS` through a symlink named `comm` in `dir`,
    /// so that its comm (and argv[0] basename) is `comm`.
    pub fn spawn(dir: &Path, comm: &str, args: &[&str]) -> Workload {
        Workload::spawn_bin(
            &crate::binary("leakmon-workload", "LEAKMON_WORKLOAD_BIN"),
            dir,
            comm,
            args,
        )
    }

    /// As [`Workload::spawn`], with a given workload binary. Its temporary
    /// files go to `dir` too, which the test removes.
    pub fn spawn_bin(bin: &Path, dir: &Path, comm: &str, args: &[&str]) -> Workload {
        let link = dir.join(comm);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(bin, &link).unwrap();
        let mut command = Command::new(&link);
        command.args(args).env("TMPDIR", dir).stderr(Stdio::inherit());
        Workload::start(command)
    }

    /// Starts any program that speaks the workload's line protocol (JSON
    /// events on stdout, commands on stdin).
    pub fn start(mut command: Command) -> Workload {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take().unwrap();
        let pid = child.id();
        Workload {
            child,
            stdin,
            lines,
            pid,
        }
    }

    /// Waits for the next JSON line whose "event" is `event`.
    pub fn expect(&mut self, event: &str) -> Value {
        self.expect_within(event, Duration::from_secs(60))
    }

    /// As [`Workload::expect`], with a deadline; an `error` event fails at once,
    /// and other events before it are skipped.
    pub fn expect_within(&mut self, event: &str, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("workload {} did not say {event:?} within {timeout:?}", self.pid));
            let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if value["event"] == event {
                return value;
            }
            assert!(value["event"] != "error", "workload {} failed: {line}", self.pid);
            // Captured, so shown only if the test fails: a line skipped here
            // that a later expect wanted is then plain to see.
            println!("workload {} said {line} while {event:?} was awaited", self.pid);
        }
    }

    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Reaps the workload after it exits on its own.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Tells the workload to exit and reaps it.
    pub fn exit(mut self) {
        self.send("exit");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "workload exited with {status}");
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process the workload forked: killed when the test ends, even by a
/// failed assertion (it would otherwise hold the test's stdout open).
pub struct ForkedChild(pub u32);

impl ForkedChild {
    pub fn kill(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Drop for ForkedChild {
    fn drop(&mut self) {
        self.kill();
    }
}
