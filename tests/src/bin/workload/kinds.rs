//! Every fd kind leakmon knows, created through the syscalls it hooks, plus
//! closes, dup2 over an open fd, close_range, SCM_RIGHTS, threads that are
//! joined and threads that leak. Reports what it expects the ledger to hold.

use std::{
    collections::BTreeMap,
    io::IoSlice,
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd, RawFd},
    sync::mpsc,
    thread,
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl, open, openat},
    sys::{
        eventfd::{EfdFlags, EventFd},
        socket::{
            AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockProtocol, SockType,
            recvmsg, sendmsg, socket, socketpair,
        },
        stat::Mode,
    },
    unistd::{dup, pipe2},
};
use serde_json::json;

use crate::raw;

#[derive(Clone)]
pub struct Expect {
    pub kind: &'static str,
    pub syscall: &'static str,
    pub tid: u32,
}

/// What the workload believes is open, fd by fd.
#[derive(Default)]
pub struct Manifest(pub BTreeMap<i32, Expect>);

impl Manifest {
    pub fn add(&mut self, fd: impl Into<RawFd>, kind: &'static str, syscall: &'static str) {
        self.0.insert(
            fd.into(),
            Expect {
                kind,
                syscall,
                tid: raw::gettid(),
            },
        );
    }

    pub fn to_json(&self) -> serde_json::Value {
        self.0
            .iter()
            .map(|(fd, e)| json!({"fd": fd, "kind": e.kind, "syscall": e.syscall, "tid": e.tid}))
            .collect()
    }
}

/// Keeps an fd open for good (these fds leak on purpose) and returns its number.
fn keep<T: AsRawFd>(owned: T) -> RawFd {
    let fd = owned.as_raw_fd();
    std::mem::forget(owned);
    fd
}

fn file_fds(m: &mut Manifest) -> RawFd {
    let file = keep(open("/etc/hostname", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).unwrap());
    m.add(file, "file", "openat");
    let fd = raw::open("/etc/passwd", libc::O_RDONLY);
    m.add(fd, "file", "open");
    let dir = keep(
        openat(
            nix::fcntl::AT_FDCWD,
            "/tmp",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap(),
    );
    m.add(dir, "dir", "openat");
    let scratch = std::env::temp_dir().join(format!("leakmon-workload-{}", std::process::id()));
    let fd = raw::creat(scratch.to_str().unwrap());
    m.add(fd, "file", "creat");
    let fd = raw::openat2("/etc/hostname", libc::O_RDONLY as u64);
    m.add(fd, "file", "openat2");
    // A handle of the scratch file in the temp dir: the test VM's 9p root
    // has no file handles, its temp dir (a tmpfs) has.
    let tmp = keep(
        open(
            &std::env::temp_dir(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap(),
    );
    m.add(tmp, "dir", "openat");
    let fd = raw::open_by_handle(scratch.to_str().unwrap(), tmp);
    m.add(fd, "file", "open_by_handle_at");
    file
}

fn socket_fds(m: &mut Manifest) {
    let s = |family, kind, proto: Option<SockProtocol>| {
        keep(socket(family, kind, SockFlag::SOCK_CLOEXEC, proto).unwrap())
    };
    m.add(
        s(AddressFamily::Inet, SockType::Stream, None),
        "socket-tcp",
        "socket",
    );
    m.add(
        s(AddressFamily::Inet6, SockType::Datagram, None),
        "socket-udp",
        "socket",
    );
    m.add(
        s(AddressFamily::Unix, SockType::Stream, None),
        "socket-unix",
        "socket",
    );
    m.add(
        s(
            AddressFamily::Netlink,
            SockType::Raw,
            Some(SockProtocol::NetlinkRoute),
        ),
        "socket-netlink",
        "socket",
    );
    m.add(
        s(AddressFamily::Packet, SockType::Datagram, None),
        "socket-other",
        "socket",
    );
    let (a, b) = socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::empty()).unwrap();
    m.add(keep(a), "socket-unix", "socketpair");
    m.add(keep(b), "socket-unix", "socketpair");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client1 = TcpStream::connect(addr).unwrap();
    let client2 = TcpStream::connect(addr).unwrap();
    let l = listener.as_raw_fd();
    m.add(keep(listener), "socket-tcp", "socket");
    m.add(keep(client1), "socket-tcp", "socket");
    m.add(keep(client2), "socket-tcp", "socket");
    // accept(2) itself, then accept4(2).
    let a1 = raw::int_call(libc::SYS_accept, [l as _, 0, 0], "accept");
    m.add(a1, "socket-tcp", "accept");
    let a2 = raw::int_call(libc::SYS_accept4, [l as _, 0, 0], "accept4");
    m.add(a2, "socket-tcp", "accept4");
}

fn misc_fds(m: &mut Manifest) -> RawFd {
    let [r, w] = raw::pipe_old();
    m.add(r, "pipe", "pipe");
    m.add(w, "pipe", "pipe");
    let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    m.add(keep(r), "pipe", "pipe2");
    m.add(keep(w), "pipe", "pipe2");
    let victim = raw::int_call(libc::SYS_eventfd, [0, 0, 0], "eventfd");
    m.add(victim, "eventfd", "eventfd");
    m.add(
        keep(EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).unwrap()),
        "eventfd",
        "eventfd2",
    );
    m.add(
        raw::int_call(libc::SYS_epoll_create, [4, 0, 0], "epoll_create"),
        "epoll",
        "epoll_create",
    );
    m.add(
        raw::int_call(libc::SYS_epoll_create1, [0, 0, 0], "epoll_create1"),
        "epoll",
        "epoll_create1",
    );
    m.add(
        raw::int_call(
            libc::SYS_timerfd_create,
            [libc::CLOCK_MONOTONIC as _, 0, 0],
            "timerfd",
        ),
        "timerfd",
        "timerfd_create",
    );
    m.add(raw::signalfd_old(), "signalfd", "signalfd");
    let sigfd = nix::sys::signalfd::SignalFd::new(&nix::sys::signal::SigSet::empty()).unwrap();
    m.add(keep(sigfd), "signalfd", "signalfd4");
    m.add(
        raw::int_call(libc::SYS_inotify_init, [0, 0, 0], "inotify_init"),
        "inotify",
        "inotify_init",
    );
    m.add(
        raw::int_call(
            libc::SYS_inotify_init1,
            [libc::IN_CLOEXEC as _, 0, 0],
            "inotify_init1",
        ),
        "inotify",
        "inotify_init1",
    );
    let fan = raw::int_call(
        libc::SYS_fanotify_init,
        [libc::FAN_CLASS_NOTIF as _, libc::O_RDONLY as _, 0],
        "fanotify_init",
    );
    m.add(fan, "fanotify", "fanotify_init");
    let memfd = nix::sys::memfd::memfd_create(c"leak", nix::sys::memfd::MFdFlags::empty()).unwrap();
    m.add(keep(memfd), "memfd", "memfd_create");
    let pidfd = raw::int_call(
        libc::SYS_pidfd_open,
        [std::process::id() as _, 0, 0],
        "pidfd_open",
    );
    m.add(pidfd, "pidfd", "pidfd_open");
    m.add(
        raw::int_call(libc::SYS_userfaultfd, [libc::O_CLOEXEC as _, 0, 0], "userfaultfd"),
        "userfaultfd",
        "userfaultfd",
    );
    m.add(raw::perf_event_open(), "perf", "perf_event_open");
    m.add(raw::io_uring_setup(), "io_uring", "io_uring_setup");
    m.add(raw::bpf_map_create(), "bpf", "bpf");
    let _ = pidfd;
    victim
}

fn dup_fds(m: &mut Manifest, file: RawFd, victim: RawFd) {
    m.add(dup(unsafe_borrow(file)).map(keep).unwrap(), "file", "dup");
    // dup2 over the open eventfd: it is released and becomes a copy of the file.
    m.add(dup2(file, victim), "file", "dup2");
    m.add(
        raw::int_call(libc::SYS_dup3, [file as _, 200, libc::O_CLOEXEC as _], "dup3"),
        "file",
        "dup3",
    );
    m.add(
        fcntl(unsafe_borrow(file), FcntlArg::F_DUPFD(300)).unwrap(),
        "file",
        "fcntl",
    );
    m.add(
        fcntl(unsafe_borrow(file), FcntlArg::F_DUPFD_CLOEXEC(310)).unwrap(),
        "file",
        "fcntl",
    );
    let pidfd = raw::int_call(
        libc::SYS_pidfd_open,
        [std::process::id() as _, 0, 0],
        "pidfd_open",
    );
    m.add(pidfd, "pidfd", "pidfd_open");
    m.add(
        raw::int_call(libc::SYS_pidfd_getfd, [pidfd as _, file as _, 0], "pidfd_getfd"),
        "file",
        "pidfd_getfd",
    );
}

fn dup2(fd: RawFd, onto: RawFd) -> RawFd {
    raw::int_call(libc::SYS_dup2, [fd as _, onto as _, 0], "dup2")
}

/// A borrowed fd the caller keeps open for the duration of the call.
fn unsafe_borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: every fd passed here is one this workload opened and never closes.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn closes(m: &mut Manifest) {
    // Open five, close two by close(2), close three by close_range(2).
    let mut fds = Vec::new();
    for _ in 0..2 {
        fds.push(keep(
            open("/etc/hostname", OFlag::O_RDONLY, Mode::empty()).unwrap(),
        ));
    }
    for fd in fds {
        nix::unistd::close(fd).unwrap();
    }
    let file = keep(open("/etc/hostname", OFlag::O_RDONLY, Mode::empty()).unwrap());
    for target in 400..=402 {
        dup2(file, target);
    }
    raw::close_range(400, 402, 0);
    nix::unistd::close(file).unwrap();
    // CLOSE_RANGE_CLOEXEC closes nothing now (it only marks).
    let kept = raw::int_call(libc::SYS_dup3, [0, 410, 0], "dup3");
    m.add(kept, "file", "dup3");
    raw::close_range(410, 410, libc::CLOSE_RANGE_CLOEXEC);
    // stdin's kind: the test runs us with stdin a pipe.
    m.0.get_mut(&kept).unwrap().kind = "pipe";
}

/// Sends `fd` to ourselves over a unix socket pair; the copy arrives by SCM_RIGHTS.
fn scm_rights(m: &mut Manifest, fd: RawFd) {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let (a, b) = (keep(a), keep(b));
    m.add(a, "socket-unix", "socketpair");
    m.add(b, "socket-unix", "socketpair");
    let fds = [fd];
    sendmsg::<()>(
        a,
        &[IoSlice::new(b"x")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(b, &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
    for cmsg in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            for fd in received {
                m.add(fd, "file", "recvmsg");
            }
        }
    }
}

fn fd_maker_thread(m: &mut Manifest) -> u32 {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("fdmaker".into())
        .spawn(move || {
            let mut local = Manifest::default();
            local.add(
                keep(open("/etc/hostname", OFlag::O_RDONLY, Mode::empty()).unwrap()),
                "file",
                "openat",
            );
            local.add(keep(EventFd::new().unwrap()), "eventfd", "eventfd2");
            tx.send((raw::gettid(), local.0)).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
    let (tid, entries) = rx.recv().unwrap();
    m.0.extend(entries);
    tid
}

/// Threads that block forever: leaked on purpose.
fn leak_threads(n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| {
            let (tx, rx) = mpsc::channel();
            thread::Builder::new()
                .name(format!("leaker-{i}"))
                .spawn(move || {
                    tx.send(raw::gettid()).unwrap();
                    loop {
                        thread::park();
                    }
                })
                .unwrap();
            rx.recv().unwrap()
        })
        .collect()
}

pub fn run(commands: &mut impl Iterator<Item = String>) {
    let mut m = Manifest::default();
    for fd in 0..3 {
        m.0.insert(
            fd,
            Expect {
                kind: "inherited",
                syscall: "",
                tid: 0,
            },
        );
    }
    let file = file_fds(&mut m);
    socket_fds(&mut m);
    let victim = misc_fds(&mut m);
    dup_fds(&mut m, file, victim);
    closes(&mut m);
    scm_rights(&mut m, file);
    let maker = fd_maker_thread(&mut m);
    // Threads that come and go.
    for _ in 0..3 {
        thread::spawn(raw::gettid).join().unwrap();
    }
    let leaked = leak_threads(3);
    crate::say(json!({
        "event": "ready",
        "pid": std::process::id(),
        "fds": m.to_json(),
        "fdmaker_tid": maker,
        "leaked_tids": leaked,
    }));
    crate::serve(commands);
}
