//! The workload the root tests watch. Modes:
//!   kinds           every fd kind, closes, dups, SCM_RIGHTS, threads (see kinds.rs)
//!   bulk F P T C U  F files, P pipes, T TCP pairs, C CLOSE_WAIT sockets, U unix pairs
//!   flood N        after a `go` line: N eventfds at once plus N open/close pairs
//!   loop KIND N    after a `go` line: N iterations of a loop, ns per op: a
//!                  syscall, tcp:PORT, http:PORT or tls:CERT:KEY (loops.rs)
//!   tcp-server     accept and close connections forever (the tcp loop's peer)
//!   http-server    answer HTTP requests forever (the http loop's peer)
//!   tls-idle       map libssl, then serve (a process with TLS uprobes, idle)
//!   leak           a file, a CLOSE_WAIT socket each second, a stuck thread every fifth
//!   mix T MS [A]   after a `go` line: T threads of random fd churn for MS ms, with
//!                  TCP connections to A (mix.rs)
//!   serve          nothing but the commands below
//!   http-early A   connect to A at once, then serve (see http.rs)
//! It prints one JSON line per event on stdout and then obeys commands on
//! stdin: `exec [MS]` (after MS ms), `cloexec N` (N close-on-exec fds kept),
//! `emfile`, `unhooked`, `exit`, and for sockets `connect ADDR
//! [plain|nonblock|syncnt1|dupfirst|forkfirst|forkmoved]`, `close FD`, `share FD`, `churn N KEEP`, and
//! `http-call ADDR PATH` (resources born during an HTTP call, see http.rs);
//! `short-lived N`, `overtaken-ready` and `overtaken-go` (fds the probes hold
//! back, see held.rs);
//! `drip`, `free`, `burst`, `rlimit`, `http` and `poll` for the alert and sink tests (drip.rs).
//! `serve` ignores further arguments (e.g. `--config-file F` for nova.conf).

mod bulk;
mod drip;
mod held;
mod http;
mod journal;
mod kinds;
mod loops;
mod mix;
mod raw;
mod sockets;
mod syslog;
mod tls;

use std::{
    io::{BufRead, Write},
    os::{fd::IntoRawFd, unix::process::CommandExt},
};

use serde_json::json;

fn say(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}").unwrap();
    out.flush().unwrap();
}

/// Obeys commands until `exit` or end of input.
fn serve(commands: &mut impl Iterator<Item = String>) {
    let mut drip = drip::Drip::default();
    for command in commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        if let Some(&("drip" | "free" | "burst" | "rlimit" | "http" | "poll")) = words.first() {
            drip.command(&words);
            continue;
        }
        let number = |i: usize| words.get(i).and_then(|w| w.parse().ok()).unwrap_or(0);
        match words.first().copied().unwrap_or("") {
            "connect" => sockets::connect_to(
                words.get(1).copied().unwrap_or(""),
                words.get(2).copied().unwrap_or("plain"),
            ),
            "close" => sockets::close(number(1)),
            "share" => sockets::share(number(1)),
            "churn" => sockets::churn(number(1) as usize, number(2) as usize),
            "http-call" => http::call(
                words.get(1).copied().unwrap_or(""),
                words.get(2).copied().unwrap_or("/"),
            ),
            "http-send" => http::send(number(1), words.get(2).copied().unwrap_or("/")),
            "http-write" => http::write(number(1), words.get(2).copied().unwrap_or("/")),
            "http-read" => http::read(number(1)),
            "short-lived" => held::short_lived(number(1) as usize),
            "cloexec" => open_cloexec(number(1) as usize),
            "exec" => reexec(number(1) as u64),
            "overtaken-ready" => held::overtaken_ready(),
            "overtaken-go" => held::overtaken_go(),
            "syslog-open" => syslog::open(words.get(1).copied().unwrap_or("")),
            "syslog" => syslog::send(command.trim().split_once(' ').map_or("", |(_, text)| text)),
            "syslog-once" => {
                let rest = command.trim().splitn(3, ' ').collect::<Vec<_>>();
                syslog::once(
                    rest.get(1).copied().unwrap_or(""),
                    rest.get(2).copied().unwrap_or(""),
                )
            }
            // A line on stdout, which the test reads: a collector's pipe.
            "print" => say(json!({
                "event": "printed",
                "text": command.trim().split_once(' ').map_or("", |(_, text)| text),
            })),
            "stderr-to" => {
                let path = words.get(1).copied().unwrap_or("");
                let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                nix::unistd::dup2_stderr(&file).unwrap();
                say(json!({"event": "stderr-to"}))
            }
            "eprint" => {
                eprintln!("{}", command.trim().split_once(' ').map_or("", |(_, text)| text));
                say(json!({"event": "eprinted"}))
            }
            "journal" => {
                let text = command.trim().splitn(3, ' ').nth(2).unwrap_or("");
                journal::send(words.get(1).copied().unwrap_or(""), text)
            }
            _ => {}
        }
        match command.trim() {
            "exit" => std::process::exit(0),
            "emfile" => emfile(),
            "unhooked" => unhooked(),
            other
                if [
                    "connect",
                    "close",
                    "share",
                    "churn",
                    "http-call",
                    "http-send",
                    "http-write",
                    "http-read",
                    "short-lived",
                    "cloexec",
                    "overtaken-ready",
                    "overtaken-go",
                    "journal",
                    "syslog",
                    "print",
                    "stderr-to",
                    "eprint",
                ]
                .iter()
                .any(|c| other.starts_with(c)) => {}
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// Re-execs through argv[0] (the test's symlink, to keep the comm) after
/// `delay_ms`.
fn reexec(delay_ms: u64) -> ! {
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let argv0 = std::env::args().next().unwrap();
    let err = std::process::Command::new(&argv0).arg("after-exec").exec();
    panic!("exec {argv0}: {err}");
}

/// Opens `n` fds that an exec closes (std opens with O_CLOEXEC) and keeps them.
fn open_cloexec(n: usize) {
    let fds: Vec<i32> = (0..n)
        .map(|_| std::fs::File::open("/dev/null").unwrap().into_raw_fd())
        .collect();
    say(json!({"event": "cloexec", "fds": fds}));
}

/// Lowers RLIMIT_NOFILE to just above what is open and opens until EMFILE.
fn emfile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, open_now + 3, hard).unwrap();
    let mut opened = Vec::new();
    let errno = loop {
        match nix::fcntl::open(
            "/etc/hostname",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(fd) => opened.push(fd),
            Err(e) => break e,
        }
    };
    let failed_tid = raw::gettid();
    drop(opened);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    say(json!({"event": "emfile", "errno": errno as i32, "tid": failed_tid}));
}

/// An fd the hooks cannot see: received by recvmmsg(2), which is not hooked.
fn unhooked() {
    use nix::sys::socket::{
        AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
    };
    let (a, b) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::empty()).unwrap();
    let fds = [0];
    let iov = [std::io::IoSlice::new(b"x")];
    sendmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&a),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: a zeroed mmsghdr is valid; its pointers are set to live buffers below.
    let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
    msg.msg_hdr.msg_iov = &mut iov;
    msg.msg_hdr.msg_iovlen = 1;
    msg.msg_hdr.msg_control = control.as_mut_ptr().cast();
    msg.msg_hdr.msg_controllen = size_of_val(&control);
    // SAFETY: `msg` points at `iov` and `control`, both alive for the call.
    let n = unsafe {
        libc::recvmmsg(
            std::os::fd::AsRawFd::as_raw_fd(&b),
            &mut msg,
            1,
            0,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(n, 1, "recvmmsg: {}", std::io::Error::last_os_error());
    // cmsghdr: len (8), level (4), type (4), then the fd.
    let fd = (control[2] & 0xffff_ffff) as i32;
    let (a, b) = (a.into_raw_fd(), b.into_raw_fd());
    say(json!({"event": "unhooked", "fd": fd, "pair": [a, b]}));
}

/// Thousands of fds need more than the usual soft limit of 1024.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let stdin = std::io::stdin();
    let mut commands = stdin.lock().lines().map_while(Result::ok);
    let number = |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    match args.get(1).map(String::as_str) {
        Some("kinds") => kinds::run(&mut commands),
        Some("after-exec") => {
            say(json!({"event": "execed", "pid": std::process::id()}));
            serve(&mut commands);
        }
        Some("bulk") => {
            raise_nofile();
            bulk::run(
                number(2, 0),
                number(3, 0),
                number(4, 0),
                number(5, 0),
                number(6, 0),
            );
            serve(&mut commands);
        }
        Some("serve") => {
            say(json!({"event": "ready", "pid": std::process::id()}));
            serve(&mut commands);
        }
        Some("flood") => {
            raise_nofile();
            // Flood only once the test knows the daemon watches us.
            say(json!({"event": "started", "pid": std::process::id()}));
            commands.next();
            bulk::flood(number(2, 10_000));
            serve(&mut commands);
        }
        Some("loop") => {
            let kind = args.get(2).map(String::as_str).unwrap_or("open");
            loops::bench(kind, number(3, 100_000) as u64, &mut commands);
        }
        Some(mode @ ("mix" | "mix-wide")) => mix::run(
            number(2, 4),
            number(3, 1000) as u64,
            args.get(4).cloned(),
            mode == "mix-wide",
            &mut commands,
        ),
        Some("leak") => loops::leak(),
        Some("paced") => loops::paced(&mut commands),
        Some("http-early") => {
            let fd = http::connect_early(args.get(2).map(String::as_str).unwrap_or(""));
            say(json!({"event": "ready", "pid": std::process::id(), "fd": fd}));
            serve(&mut commands);
        }
        Some("tcp-server") => loops::tcp_server(),
        Some("http-server") => loops::http_server(),
        Some("tls-idle") => {
            tls::idle();
            say(json!({"event": "ready", "pid": std::process::id()}));
            serve(&mut commands);
        }
        other => panic!("unknown mode {other:?}"),
    }
}
