//! Ground truth, read without leakmon: /proc directly, `lsof`, `ss`.

use std::{collections::BTreeMap, process::Command};

/// fd -> link target, from /proc/PID/fd.
pub fn proc_fds(pid: u32) -> BTreeMap<u32, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// tid -> comm, from /proc/PID/task.
pub fn proc_threads(pid: u32) -> BTreeMap<u32, String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read /proc/PID/task")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let tid = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((tid, comm.trim_end().to_string()))
        })
        .collect()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed (cargo xtask setup installs it): {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// fd -> leakmon kind, as lsof names it (`lsof -F ftPn`), mapped to leakmon's kinds.
pub fn lsof_kinds(pid: u32) -> BTreeMap<u32, String> {
    let text = run("lsof", &["-nP", "-w", "-p", &pid.to_string(), "-F", "ftPn"]);
    let mut kinds = BTreeMap::new();
    let (mut fd, mut kind, mut proto) = (None::<u32>, String::new(), String::new());
    let mut flush = |fd: Option<u32>, kind: &str, proto: &str, name: &str| {
        if let Some(fd) = fd {
            kinds.insert(fd, lsof_kind(kind, proto, name));
        }
    };
    for line in text.lines() {
        let (tag, value) = line.split_at(1.min(line.len()));
        match tag {
            "f" => {
                fd = value.parse().ok();
                kind.clear();
                proto.clear();
            }
            "t" => kind = value.to_string(),
            "P" => proto = value.to_string(),
            "n" => {
                flush(fd, &kind, &proto, value);
                fd = None;
            }
            _ => {}
        }
    }
    kinds
}

fn lsof_kind(kind: &str, proto: &str, name: &str) -> String {
    // lsof names anonymous inodes "[eventfd:2]", "[pidfd:42]", "inotify", "bpf-map".
    let anon = |name: &str| match name
        .trim_matches(|c| c == '[' || c == ']')
        .split(':')
        .next()
        .unwrap_or("")
    {
        "eventfd" => "eventfd",
        "eventpoll" => "epoll",
        "timerfd" => "timerfd",
        "signalfd" => "signalfd",
        "inotify" => "inotify",
        "fanotify" => "fanotify",
        "pidfd" => "pidfd",
        "io_uring" => "io_uring",
        "perf_event" => "perf",
        "userfaultfd" => "userfaultfd",
        n if n.starts_with("bpf") => "bpf",
        _ => "other",
    };
    match kind {
        "REG" if name.starts_with("/memfd:") => "memfd",
        "REG" | "CHR" | "BLK" => "file",
        "DIR" => "dir",
        "FIFO" => "pipe",
        "IPv4" | "IPv6" => match proto {
            "TCP" => "socket-tcp",
            "UDP" => "socket-udp",
            _ => "socket-other",
        },
        "unix" => "socket-unix",
        "netlink" => "socket-netlink",
        // A socket lsof cannot place: it names the protocol ("protocol: TCP").
        "sock" => match name.strip_prefix("protocol: ").unwrap_or("") {
            "TCP" | "TCPv6" => "socket-tcp",
            "UDP" | "UDPv6" => "socket-udp",
            "UNIX" | "UNIX-STREAM" => "socket-unix",
            "NETLINK" => "socket-netlink",
            _ => "socket-other",
        },
        "pack" => "socket-other",
        "a_inode" => anon(name),
        _ if name.starts_with("pidfd:") => "pidfd",
        _ => "other",
    }
    .to_string()
}

/// fd -> TCP state of the process's TCP sockets, from `ss -tanp`, with
/// ss's state names turned into the kernel's (ESTAB -> ESTABLISHED).
pub fn ss_tcp_states(pid: u32) -> BTreeMap<u32, String> {
    let text = run("ss", &["-tanpH"]);
    let mut states = BTreeMap::new();
    let needle = format!("pid={pid},fd=");
    for line in text.lines() {
        let Some(state) = line.split_whitespace().next() else {
            continue;
        };
        let mut rest = line;
        while let Some(at) = rest.find(&needle) {
            rest = &rest[at + needle.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(fd) = digits.parse() {
                states.insert(fd, kernel_state(state));
            }
        }
    }
    states
}

fn kernel_state(ss: &str) -> String {
    match ss {
        "ESTAB" => "ESTABLISHED",
        "SYN-SENT" => "SYN_SENT",
        "SYN-RECV" => "SYN_RECV",
        "FIN-WAIT-1" => "FIN_WAIT1",
        "FIN-WAIT-2" => "FIN_WAIT2",
        "TIME-WAIT" => "TIME_WAIT",
        "UNCONN" => "CLOSE",
        "CLOSE-WAIT" => "CLOSE_WAIT",
        "LAST-ACK" => "LAST_ACK",
        other => other,
    }
    .to_string()
}
