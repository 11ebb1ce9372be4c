//! Socket commands: connect (blocking, non-blocking, with a short SYN
//! timeout), close, share a socket by dup, fork and SCM_RIGHTS, and churn.

use std::{
    io::{IoSlice, IoSliceMut},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{
        AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrLike,
        SockaddrStorage, connect, getsockopt, recvmsg, sendmsg, socket, socketpair, sockopt,
    },
};
use serde_json::json;

fn tcp_socket(addr: &SocketAddr) -> OwnedFd {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap()
}

/// `connect ADDR [plain|nonblock|askagain|syncnt1|fastopen|migrate|dupfirst|forkfirst|forkmoved]`:
/// reports the fd and how it went. `askagain` connects without blocking,
/// calls connect() again at once (EALREADY while the handshake is under way,
/// reported in `extra.again`) and once the socket is writable, as eventlet
/// does (0 or EISCONN: connected; else the attempt's error); like `syncnt1`
/// it gives up a dropped SYN after one retry. `fastopen` sends a byte with
/// sendto(MSG_FASTOPEN) instead of calling connect(); `migrate` makes the
/// socket on one CPU and connects it from another (the creation, held back
/// on the first CPU, reaches the daemon after the connect's records), and
/// reports `{"cpus": 1}` instead where there is only one. `dupfirst` dups the socket before it connects and
/// connects the dup (reported in `extra.dup`), `dupmoved` does that from
/// another CPU (the dup and the connect overtake the creation); `forkfirst` forks a child
/// that holds the socket before it connects (`extra.child`); `forkmoved`
/// does that from another CPU than the socket's, as `migrate` does (the
/// fork's record overtakes the held-back creation).
pub fn connect_to(addr: &str, how: &str) {
    let addr: SocketAddr = addr.parse().expect("ip:port");
    let mut connect_cpu = None;
    if matches!(how, "migrate" | "forkmoved" | "dupmoved") {
        let cpus = crate::held::allowed_cpus();
        if cpus.len() < 2 {
            crate::say(json!({"event": "connected", "cpus": cpus.len()}));
            return;
        }
        crate::held::pin_to(cpus[0]);
        connect_cpu = Some(cpus[1]);
    }
    let original = tcp_socket(&addr);
    if let Some(cpu) = connect_cpu {
        crate::held::pin_to(cpu);
    }
    let mut extra = json!({});
    let dup = matches!(how, "dupfirst" | "dupmoved").then(|| nix::unistd::dup(&original).unwrap());
    if let Some(dup) = &dup {
        extra["dup"] = dup.as_raw_fd().into();
    }
    if how == "forkfirst" || how == "forkmoved" {
        extra["child"] = fork_idle_holder().into();
    }
    let sock = dup.as_ref().unwrap_or(&original);
    if how == "syncnt1" || how == "askagain" {
        // One SYN retry: a dropped SYN times out after ~3 s instead of ~2 min.
        let one: libc::c_int = 1;
        // SAFETY: `one` is a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_SYNCNT,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "TCP_SYNCNT");
    }
    let nonblocking = how == "nonblock" || how == "askagain";
    if nonblocking {
        nix::fcntl::fcntl(sock, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
    }
    let target = SockaddrStorage::from(addr);
    let mut result = if how == "fastopen" {
        fast_open(sock, &target)
    } else {
        connect(sock.as_raw_fd(), &target)
    };
    if how == "askagain" && result == Err(nix::errno::Errno::EINPROGRESS) {
        let again = connect(sock.as_raw_fd(), &target);
        extra["again"] = again.err().map_or(0, |e| e as i32).into();
    }
    if nonblocking && result == Err(nix::errno::Errno::EINPROGRESS) {
        let mut fds = [PollFd::new(sock_borrow(sock), PollFlags::POLLOUT)];
        poll(&mut fds, PollTimeout::from(10_000u16)).unwrap();
        result = if how == "askagain" {
            match connect(sock.as_raw_fd(), &target) {
                Err(nix::errno::Errno::EISCONN) => Ok(()),
                other => other,
            }
        } else {
            match getsockopt(sock, sockopt::SocketError).unwrap() {
                0 => Ok(()),
                errno => Err(nix::errno::Errno::from_raw(errno)),
            }
        };
    }
    let errno = result.err().map_or(0, |e| e as i32);
    let fd = original.into_raw_fd();
    let _ = dup.map(IntoRawFd::into_raw_fd);
    crate::say(json!({"event": "connected", "fd": fd, "errno": errno, "extra": extra}));
}

/// TCP Fast Open: the SYN leaves from this sendto, no connect() is made.
fn fast_open(sock: &OwnedFd, target: &SockaddrStorage) -> nix::Result<()> {
    // SAFETY: a live one-byte buffer and an address of the length passed.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            b"x".as_ptr().cast(),
            1,
            libc::MSG_FASTOPEN,
            target.as_ptr(),
            target.len(),
        )
    };
    nix::errno::Errno::result(sent).map(drop)
}

/// A child that holds every fd of this process and waits to be killed.
fn fork_idle_holder() -> i32 {
    // SAFETY: as in `share`: the child only pauses.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => loop {
            nix::unistd::pause();
        },
        nix::unistd::ForkResult::Parent { child } => child.as_raw(),
    }
}

fn sock_borrow(sock: &OwnedFd) -> std::os::fd::BorrowedFd<'_> {
    std::os::fd::AsFd::as_fd(sock)
}

pub fn close(fd: RawFd) {
    nix::unistd::close(fd).unwrap();
    crate::say(json!({"event": "closed", "fd": fd}));
}

/// `share FD`: a dup of FD here, and a forked child that holds FD, its dup
/// and a third copy received over a unix socket pair (SCM_RIGHTS).
pub fn share(fd: RawFd) {
    let (parent_end, child_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    // SAFETY: fd is open (the test made it) and stays open.
    let dup = nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
        .unwrap()
        .into_raw_fd();
    // SAFETY: the workload is single-threaded here apart from idle helper
    // threads; the child only calls async-signal-safe syscalls through nix
    // and writes one line before it waits to be killed.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let mut byte = [0u8; 1];
            let mut iov = [IoSliceMut::new(&mut byte)];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let msg = recvmsg::<()>(
                child_end.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )
            .unwrap();
            let received: Vec<RawFd> = msg
                .cmsgs()
                .unwrap()
                .flat_map(|c| match c {
                    ControlMessageOwned::ScmRights(fds) => fds,
                    _ => vec![],
                })
                .collect();
            crate::say(json!({"event": "received", "pid": std::process::id(), "fd": received[0]}));
            // The parent says "shared" only after this byte, so the test
            // reads the two lines in one order.
            nix::unistd::write(&child_end, b"y").unwrap();
            loop {
                nix::unistd::pause();
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let fds = [fd];
            sendmsg::<()>(
                parent_end.as_raw_fd(),
                &[IoSlice::new(b"x")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            let mut ack = [0u8; 1];
            nix::unistd::read(&parent_end, &mut ack).unwrap();
            let _ = (parent_end.into_raw_fd(), child_end.into_raw_fd());
            crate::say(json!({"event": "shared", "dup": dup, "child": child.as_raw()}));
        }
    }
}

/// `churn N KEEP`: N connect/accept/close cycles through a local listener,
/// then KEEP connections left open (both ends). Every other client closes
/// with a reset (SO_LINGER 0), the others with a FIN.
pub fn churn(cycles: usize, keep: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    for cycle in 0..cycles {
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        if cycle % 2 == 1 {
            crate::loops::reset_on_close(&client);
        }
        drop(client);
        drop(server);
    }
    let mut kept = Vec::new();
    for _ in 0..keep {
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        kept.push(client.into_raw_fd());
        kept.push(server.into_raw_fd());
    }
    let listener = listener.into_raw_fd();
    crate::say(json!({"event": "churned", "kept": kept, "listener": listener}));
}
