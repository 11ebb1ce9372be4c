//! Which processes to watch.

use std::collections::HashSet;

use regex::Regex;

use crate::{
    config::Discovery,
    ledger::{Comm, WatchReason, comm_from},
    proc::{self, ProcessInfo},
};

/// The longest name the kernel keeps in comm (16 bytes with the NUL).
const COMM_LEN: usize = 15;

#[derive(Clone, Debug)]
pub struct Matcher {
    names: Vec<String>,
    cmdline: Vec<Regex>,
    pids: HashSet<u32>,
}

impl Matcher {
    /// Built from validated configuration (regexes compile).
    pub fn new(discovery: &Discovery) -> Result<Matcher, regex::Error> {
        Ok(Matcher {
            names: discovery.names.clone(),
            cmdline: discovery
                .cmdline_regex
                .iter()
                .map(|r| Regex::new(r))
                .collect::<Result<_, _>>()?,
            pids: discovery.pids.iter().copied().collect(),
        })
    }

    /// Why this process should be watched, if it should.
    pub fn matches(&self, info: &ProcessInfo) -> Option<WatchReason> {
        if self.pids.contains(&info.pid) {
            return Some(WatchReason::Pid);
        }
        if info.pid == std::process::id() {
            return None;
        }
        for name in &self.names {
            let comm_match = info.comm == *name
                || (name.len() > COMM_LEN
                    && name.as_bytes().starts_with(info.comm.as_bytes())
                    && info.comm.len() == COMM_LEN);
            if comm_match || proc::argv_basenames(&info.cmdline).any(|b| b == name) {
                return Some(WatchReason::Name(name.clone()));
            }
        }
        if !self.cmdline.is_empty() && !info.cmdline.is_empty() {
            let line = info.cmdline.join(" ");
            if let Some(regex) = self.cmdline.iter().find(|r| r.is_match(&line)) {
                return Some(WatchReason::Cmdline(regex.as_str().to_string()));
            }
        }
        None
    }

    /// comm values the kernel can match by itself at exec.
    pub fn kernel_comms(&self) -> Vec<Comm> {
        self.names.iter().map(|n| comm_from(n)).collect()
    }

    /// Command lines are only in user space: every exec must be shipped.
    pub fn needs_every_exec(&self) -> bool {
        !self.names.is_empty() || !self.cmdline.is_empty()
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.pids.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u32, comm: &str, cmdline: &[&str]) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid: 1,
            comm: comm.into(),
            cmdline: cmdline.iter().map(|s| s.to_string()).collect(),
            start_ns: 0,
        }
    }

    fn matcher(names: &[&str], regexes: &[&str], pids: &[u32]) -> Matcher {
        Matcher::new(&Discovery {
            names: names.iter().map(|s| s.to_string()).collect(),
            cmdline_regex: regexes.iter().map(|s| s.to_string()).collect(),
            pids: pids.to_vec(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn default_matches_shebang_and_interpreter_forms() {
        let m = matcher(&["nova-compute"], &[], &[]);
        let shebang = info(
            10,
            "nova-compute",
            &["/usr/bin/python3", "/usr/bin/nova-compute", "--config-file", "x"],
        );
        assert_eq!(
            m.matches(&shebang),
            Some(WatchReason::Name("nova-compute".into()))
        );
        let env_python = info(11, "python3", &["python3", "/usr/bin/nova-compute"]);
        assert!(m.matches(&env_python).is_some());
        let venv = info(
            12,
            "python3",
            &[
                "/var/lib/kolla/venv/bin/python3",
                "/var/lib/kolla/venv/bin/nova-compute",
            ],
        );
        assert!(m.matches(&venv).is_some());
    }

    #[test]
    fn children_running_something_else_do_not_match() {
        let m = matcher(&["nova-compute"], &[], &[]);
        assert_eq!(
            m.matches(&info(13, "genisoimage", &["genisoimage", "-o", "/tmp/cd"])),
            None
        );
        assert_eq!(
            m.matches(&info(14, "python3", &["python3", "-c", "nova-compute"])),
            None
        );
        assert_eq!(m.matches(&info(15, "nova-api", &["/usr/bin/nova-api"])), None);
    }

    #[test]
    fn long_names_match_the_truncated_comm() {
        let m = matcher(&["nova-compute-ironic"], &[], &[]);
        assert!(m.matches(&info(16, "nova-compute-ir", &[])).is_some());
        assert!(m.matches(&info(17, "nova-compute-xx", &[])).is_none());
        assert_eq!(&m.kernel_comms()[0][..16], b"nova-compute-ir\0");
    }

    #[test]
    fn regex_and_pid_matching() {
        let m = matcher(&[], &[r"--config-file /etc/nova/nova-compute\.conf"], &[99]);
        let p = info(
            20,
            "python3",
            &[
                "python3",
                "/opt/x",
                "--config-file",
                "/etc/nova/nova-compute.conf",
            ],
        );
        assert!(matches!(m.matches(&p), Some(WatchReason::Cmdline(_))));
        assert_eq!(m.matches(&info(99, "anything", &[])), Some(WatchReason::Pid));
        assert_eq!(m.matches(&info(21, "python3", &[])), None);
        assert!(m.needs_every_exec());
        assert!(!matcher(&[], &[], &[1]).needs_every_exec());
    }

    #[test]
    fn never_watches_itself() {
        let m = matcher(&["leakmon", "tests"], &[".*"], &[]);
        let me = crate::proc::process_info(std::process::id()).unwrap();
        assert_eq!(m.matches(&me), None);
    }
}
