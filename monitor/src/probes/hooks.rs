//! Which program goes on which tracepoint, and what is lost without it.
//! Nothing here is fatal: a hook that cannot attach is reported (log, status,
//! metrics) and reconciliation with /proc covers what it would have seen.

use monitor_common::syscalls;
use serde::Serialize;

#[derive(Clone, Debug)]
pub struct Hook {
    pub program: &'static str,
    /// `btf` for a BTF tracepoint (the program is loaded for `event` alone).
    pub category: &'static str,
    pub event: String,
    /// Without it leakmon loses a capability (not just precision).
    pub essential: bool,
}

/// Test fault switch: programs (comma-separated) the daemon acts as if the
/// kernel had refused (and `fd_iter_pid_scope`: the snapshot iterator's
/// scoping to one process, see `probes::FD_ITER_PID_SCOPE`; `sock_diag`: the
/// daemon's sock_diag dumps, `probes::SOCK_DIAG`), so the suite
/// can prove that a hook which fails to attach degrades the daemon instead
/// of stopping it (one kernel here has every hook). Named loudly so that
/// nobody sets it by accident.
pub const REFUSE_ENV: &str = "LEAKMON_TEST_REFUSE_HOOKS";

pub fn refused_for_tests() -> Vec<String> {
    std::env::var(REFUSE_ENV)
        .map(|list| {
            list.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The category of BTF tracepoints in the hook table.
pub const BTF: &str = "btf";

#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub program: &'static str,
    pub tracepoint: String,
    pub essential: bool,
    pub attached: bool,
    /// Attached in a way the operator should know of (the snapshot iterator
    /// host-wide on kernels before 6.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn hook(program: &'static str, category: &'static str, event: impl Into<String>, essential: bool) -> Hook {
    Hook {
        program,
        category,
        event: event.into(),
        essential,
    }
}

/// The whole table.
pub fn all() -> Vec<Hook> {
    let mut hooks = vec![
        hook("sched_process_exec", "sched", "sched_process_exec", true),
        hook("task_newtask", "task", "task_newtask", true),
        hook("sched_process_exit", "sched", "sched_process_exit", true),
        hook("task_rename", "task", "task_rename", false),
        hook("close_enter", "syscalls", "sys_enter_close", true),
        hook("close_range_enter", "syscalls", "sys_enter_close_range", false),
        hook("sock_set_state", BTF, "inet_sock_set_state", true),
        hook("sock_error_report", BTF, "inet_sk_error_report", false),
        hook("sock_destroy", BTF, "tcp_destroy_sock", true),
        // The plain-HTTP capture (TLS comes from uprobes attached per process).
        hook("data_write", "syscalls", "sys_enter_write", false),
        hook("data_write", "syscalls", "sys_enter_sendto", false),
        hook("data_writev", "syscalls", "sys_enter_writev", false),
        hook("data_writev", "syscalls", "sys_enter_sendmsg", false),
        hook("data_read_exit", "syscalls", "sys_exit_read", false),
        hook("data_read_exit", "syscalls", "sys_exit_recvfrom", false),
        hook("data_read_exit", "syscalls", "sys_exit_readv", false),
    ];
    for (_, name) in syscalls::RETURNS_FD {
        hooks.push(hook("fd_exit", "syscalls", format!("sys_exit_{name}"), true));
    }
    for (_, name) in syscalls::RETURNS_FD_OPTIONAL {
        hooks.push(hook("fd_exit", "syscalls", format!("sys_exit_{name}"), false));
    }
    for (_, name) in syscalls::ARGS_AT_EXIT {
        hooks.push(hook("args_exit", "syscalls", format!("sys_exit_{name}"), true));
    }
    // connect(): a failure's endpoint and errno (its arguments from the saved registers).
    hooks.push(hook("connect_exit", "syscalls", "sys_exit_connect", true));
    // getsockopt(SO_ERROR): a connect's error its owner read before the socket probes could.
    hooks.push(hook("sockopt_exit", "syscalls", "sys_exit_getsockopt", false));
    // listen(): a listening socket's owner (without it, sock_diag finds it).
    hooks.push(hook("listen_enter", "syscalls", "sys_enter_listen", false));
    hooks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fd_syscall_of_the_brief_is_hooked() {
        let events: Vec<String> = all().into_iter().map(|h| h.event).collect();
        for name in [
            "open",
            "openat",
            "openat2",
            "creat",
            "open_by_handle_at",
            "socket",
            "socketpair",
            "accept",
            "accept4",
            "dup",
            "dup2",
            "dup3",
            "fcntl",
            "pipe",
            "pipe2",
            "eventfd",
            "eventfd2",
            "epoll_create",
            "epoll_create1",
            "timerfd_create",
            "signalfd",
            "signalfd4",
            "inotify_init",
            "inotify_init1",
            "fanotify_init",
            "memfd_create",
            "pidfd_open",
            "pidfd_getfd",
            "userfaultfd",
            "perf_event_open",
            "io_uring_setup",
            "bpf",
            "recvmsg",
        ] {
            assert!(
                events.contains(&format!("sys_exit_{name}")),
                "{name} is not hooked"
            );
        }
        assert!(events.contains(&"sys_enter_close".to_string()));
        assert!(events.contains(&"sys_enter_close_range".to_string()));
    }

    #[test]
    fn no_tracepoint_is_hooked_twice() {
        let mut events: Vec<String> = all()
            .into_iter()
            .map(|h| format!("{}/{}", h.category, h.event))
            .collect();
        let n = events.len();
        events.sort();
        events.dedup();
        assert_eq!(events.len(), n);
    }
}
