//! Where a process lives: its pid in its own pid namespace (kolla's
//! `nova_compute_ironic` runs in one) and the container id its cgroup path
//! carries (docker, containerd, CRI-O, podman).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The pid inside the process's own pid namespace, when it differs from the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    /// The 64-hex container id in its cgroup path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

impl Placement {
    /// Reads /proc/PID/status and /proc/PID/cgroup; what is unreadable stays `None`.
    pub fn of(pid: u32) -> Placement {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        Placement {
            ns_pid: innermost_pid(&status).filter(|ns| *ns != pid),
            container_id: container_id(&cgroup),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ns_pid.is_none() && self.container_id.is_none()
    }

    /// `pid 1 in its pid namespace, container 3f4e1d0c9b8a`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(ns_pid) = self.ns_pid {
            parts.push(format!("pid {ns_pid} in its pid namespace"));
        }
        if let Some(id) = &self.container_id {
            parts.push(format!("container {}", &id[..12]));
        }
        parts.join(", ")
    }
}

/// `NSpid:\t4711\t1`: the last is the pid in the innermost namespace.
fn innermost_pid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The first 64-hex-digit path component (or part of one: `docker-<id>.scope`).
fn container_id(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').find_map(|part| {
            part.split(['-', '.', ':'])
                .find(|word| word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_string)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e";

    #[test]
    fn the_innermost_pid_is_the_last() {
        assert_eq!(innermost_pid("Name:\tx\nNSpid:\t4711\t1\n"), Some(1));
        assert_eq!(innermost_pid("Name:\tx\nNSpid:\t4711\n"), Some(4711));
        assert_eq!(innermost_pid("garbage"), None);
    }

    #[test]
    fn container_ids_come_from_any_runtime_path() {
        for path in [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("12:pids:/docker/{ID}"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("0::/machine.slice/libpod-{ID}.scope/container"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(container_id("0::/user.slice/session-1.scope\n"), None);
    }
}
