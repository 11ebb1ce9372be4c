//! The limits a process can run into, read from /proc, its cgroup and
//! nova.conf by the engine (the detectors only compare).

use std::{
    fs,
    path::{Path, PathBuf},
};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// RLIMIT_NOFILE soft; `None` when unlimited or unreadable.
    pub nofile: Option<u64>,
    /// RLIMIT_NPROC soft (counts the threads of the process's user).
    pub nproc: Option<u64>,
    /// The cgroup's pids.max and pids.current (v2), when limited.
    pub pids_max: Option<u64>,
    pub pids_current: Option<u64>,
    pub cgroup: Option<String>,
    /// kernel.threads-max and the threads running system-wide.
    pub threads_max: Option<u64>,
    pub threads_total: Option<u64>,
    /// `[ironic]api_max_retries` from the process's nova.conf, and where.
    pub api_max_retries: Option<(u32, String)>,
    /// Its pid namespace and container (read with the limits, for alerts).
    pub placement: crate::container::Placement,
}

impl Limits {
    /// Reads everything it can; what is unreadable stays `None`.
    pub fn read(pid: u32, cmdline: &[String]) -> Limits {
        let mut limits = Limits {
            api_max_retries: nova_api_max_retries(cmdline),
            placement: crate::container::Placement::of(pid),
            ..Limits::default()
        };
        limits.refresh(pid);
        limits
    }

    /// Re-reads what changes while a process runs. Its nova.conf (read by
    /// nova at start only) and its namespaces are kept from [`Limits::read`].
    pub fn refresh(&mut self, pid: u32) {
        if let Ok(process) = procfs::process::Process::new(pid as i32)
            && let Ok(l) = process.limits()
        {
            use procfs::process::LimitValue::Value;
            self.nofile = match l.max_open_files.soft_limit {
                Value(v) => Some(v),
                _ => None,
            };
            self.nproc = match l.max_processes.soft_limit {
                Value(v) => Some(v),
                _ => None,
            };
        }
        // A process can be moved to another cgroup: no stale limit survives.
        (self.pids_max, self.pids_current, self.cgroup) = match pids_cgroup(pid) {
            Some((cgroup, dir)) => (
                read_number(&dir.join("pids.max")),
                read_number(&dir.join("pids.current")),
                Some(cgroup),
            ),
            None => (None, None, None),
        };
        self.threads_max = read_number(Path::new("/proc/sys/kernel/threads-max"));
        self.threads_total = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| threads_in_loadavg(&s));
    }
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The cgroup that holds the process's pids limit and its directory: the
/// v1 `pids` controller's when mounted (hybrid hosts), else the v2 one's.
/// Only the process's own cgroup is read, not its ancestors'.
fn pids_cgroup(pid: u32) -> Option<(String, PathBuf)> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let relative = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "pids") {
            return Some((path.to_string(), Path::new("/sys/fs/cgroup/pids").join(relative)));
        }
        if controllers.is_empty() {
            v2 = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .iter()
                .map(|root| Path::new(root).join(relative))
                .find(|dir| dir.join("pids.max").exists())
                .map(|dir| (path.to_string(), dir));
        }
    }
    v2
}

/// `0.00 0.01 0.05 1/123 4567`: 123 scheduling entities exist.
fn threads_in_loadavg(text: &str) -> Option<u64> {
    text.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok()
}

/// The config files of a command line, in the order oslo.config reads them.
fn config_files(cmdline: &[String]) -> Vec<String> {
    let mut files = Vec::new();
    let mut args = cmdline.iter();
    while let Some(arg) = args.next() {
        if arg == "--config-file" {
            files.extend(args.next().cloned());
        } else if let Some(file) = arg.strip_prefix("--config-file=") {
            files.push(file.to_string());
        }
    }
    files
}

fn nova_api_max_retries(cmdline: &[String]) -> Option<(u32, String)> {
    let mut found = None;
    for file in config_files(cmdline) {
        if let Ok(text) = fs::read_to_string(&file)
            && let Some(value) = ini_value(&text, "ironic", "api_max_retries")
        {
            found = Some((value.parse().ok()?, file));
        }
    }
    found
}

/// The last `key = value` of `[section]` in an ini file (oslo.config style).
pub fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    let mut value = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            value = Some(v.trim().to_string());
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_values_come_from_their_section() {
        let text = "[DEFAULT]\napi_max_retries = 1\n[ironic]\n# api_max_retries = 2\napi_max_retries = 7\n";
        assert_eq!(ini_value(text, "ironic", "api_max_retries").as_deref(), Some("7"));
        assert_eq!(ini_value(text, "glance", "api_max_retries"), None);
    }

    #[test]
    fn config_files_in_both_spellings() {
        let argv: Vec<String> = [
            "python3",
            "nova-compute",
            "--config-file",
            "/a",
            "--config-file=/b",
        ]
        .map(String::from)
        .into();
        assert_eq!(config_files(&argv), ["/a", "/b"]);
    }

    #[test]
    fn loadavg_names_the_thread_count() {
        assert_eq!(threads_in_loadavg("0.00 0.01 0.05 1/123 4567\n"), Some(123));
        assert_eq!(threads_in_loadavg("garbage"), None);
    }

    #[test]
    fn limits_of_this_process_are_readable() {
        let limits = Limits::read(std::process::id(), &[]);
        assert!(limits.threads_max.is_some() && limits.threads_total.is_some());
    }
}
