//! `mix THREADS MS [ADDR]`: after a `go` line, THREADS threads for MS ms each
//! make a random mix of fd creations and closes (files, pipes, dups,
//! eventfds, sockets; `mix-wide` also copies received by SCM_RIGHTS, dup3 onto numbers
//! in use and close_range over runs of them; with ADDR, TCP connections to
//! it too, one every 2 ms per thread, the last 16 kept; some closed at once,
//! some kept a while, some closed by another thread). Each also starts a
//! thread every 5 ms that opens a file and ends, and at a third and two
//! thirds of the run forks a child that keeps what it inherited until the
//! workload exits (the second one after an exec, which closes the
//! close-on-exec fds) and starts a named thread that lives on. Then they
//! stop with what they keep open and say `mixed` with the children's pids.
//! Fd numbers are reused all the time, across threads and CPUs: the ledgers
//! must end equal to /proc however the records interleave, are held back or
//! lost.

use std::{
    collections::{BTreeSet, VecDeque},
    ffi::CString,
    io::{IoSlice, IoSliceMut},
    net::TcpStream,
    os::fd::{AsRawFd, IntoRawFd, OwnedFd},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg,
    socketpair,
};
use serde_json::json;

use super::{loops::close, raw};

/// Fds a thread keeps at most before it closes one of them.
const KEEP: usize = 32;
const CONNECT_EVERY: Duration = Duration::from_millis(2);
const CONNECTIONS: usize = 16;
const THREAD_EVERY: Duration = Duration::from_millis(5);
/// Each thread places dup3 copies at numbers of its own block of this many,
/// below the soft RLIMIT_NOFILE (at most 8192), where no other thread's fd
/// is: a dup3 there replaces what the thread placed before.
const BLOCK: i32 = 64;
/// Above the numbers the other fds take: the files the short-lived threads
/// hand over pile up to a few thousand.
const LOWEST_BLOCK: i32 = 3072;

/// xorshift64: enough randomness for a mix, and no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the churning threads share.
struct Shared {
    /// Fds any thread may close: a close on another thread (and CPU) than
    /// the creation's.
    handed_over: Arc<Mutex<Vec<i32>>>,
    children: Mutex<Vec<i32>>,
    /// A pipe whose write end only this process holds: a child waits for
    /// its end of file, which comes when the workload exits.
    hold: [i32; 2],
    /// The number above the highest block.
    blocks_end: i32,
    /// Whether the SCM_RIGHTS, dup3 and close_range arms and the exec run.
    wide: bool,
    /// What an exec'ing child runs: this binary (argv[0], the test's
    /// symlink, so the comm stays) serving its stdin.
    exec_argv: [CString; 2],
}

/// `wide` (mode `mix-wide`): with the arms for SCM_RIGHTS, dup3 and
/// close_range, and the exec'ing children.
pub fn run(
    threads: usize,
    ms: u64,
    server: Option<String>,
    wide: bool,
    commands: &mut impl Iterator<Item = String>,
) {
    super::say(json!({"event": "started", "pid": std::process::id()}));
    commands.next();
    let mut hold = [0i32; 2];
    // SAFETY: pipe2 writes two ints into the array it is given.
    assert_eq!(unsafe { libc::pipe2(hold.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    super::raise_nofile();
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let blocks_end = soft.min(8192) as i32;
    assert!(
        blocks_end - BLOCK * threads as i32 >= LOWEST_BLOCK,
        "RLIMIT_NOFILE {soft}: no room for the blocks"
    );
    let argv0 = std::env::args().next().unwrap();
    let shared = Arc::new(Shared {
        handed_over: Arc::default(),
        children: Mutex::default(),
        hold,
        blocks_end,
        wide,
        exec_argv: [CString::new(argv0).unwrap(), CString::new("serve").unwrap()],
    });
    let handles: Vec<_> = (0..threads)
        .map(|seed| {
            let (shared, server) = (shared.clone(), server.clone());
            thread::spawn(move || churn(seed as u64 + 1, Duration::from_millis(ms), server, &shared))
        })
        .collect();
    let mut kept: Vec<i32> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    kept.extend(shared.handed_over.lock().unwrap().iter());
    kept.sort_unstable();
    let children = shared.children.lock().unwrap().clone();
    super::say(json!({"event": "mixed", "kept": kept, "children": children}));
    super::serve(commands);
}

/// Forks a child that keeps every fd it inherited (but the hold pipe's
/// write end) until the workload exits. With `exec`, it keeps them through
/// an exec of this binary, which serves the hold pipe (its stdin, stdout
/// /dev/null): the close-on-exec ones close.
fn fork_keeping(shared: &Shared, exec: bool) {
    let [read_end, write_end] = shared.hold;
    let argv = [
        shared.exec_argv[0].as_ptr(),
        shared.exec_argv[1].as_ptr(),
        std::ptr::null(),
    ];
    // SAFETY: the child of this multi-threaded process calls only
    // async-signal-safe functions (close, read, dup2, open, execv, _exit)
    // on memory allocated before the fork.
    match unsafe { libc::fork() } {
        0 => unsafe {
            libc::close(write_end);
            if exec {
                libc::dup2(read_end, 0);
                libc::dup2(
                    libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC),
                    1,
                );
                libc::execv(argv[0], argv.as_ptr());
            }
            let mut byte = 0u8;
            libc::read(read_end, (&raw mut byte).cast(), 1);
            libc::_exit(0)
        },
        child => {
            assert!(child > 0, "fork: {}", std::io::Error::last_os_error());
            shared.children.lock().unwrap().push(child);
        }
    }
}

fn churn(seed: u64, how_long: Duration, server: Option<String>, shared: &Shared) -> Vec<i32> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut kept: Vec<i32> = Vec::new();
    // Connections live longer than the other fds (the last CONNECTIONS
    // made), so that the run ends with some in every state.
    let mut connections: VecDeque<i32> = VecDeque::new();
    let started = Instant::now();
    let mut last_connect = started;
    let mut last_thread = started;
    let mut short_lived = Vec::new();
    let mut forks = 0;
    let block = shared.blocks_end - BLOCK * seed as i32;
    let mut placed = BTreeSet::new();
    let pair = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    while started.elapsed() < how_long {
        // At a third and two thirds of the run, amid the other threads' churn;
        // and a thread that lives on, named.
        if forks < 2 && started.elapsed() > how_long * (forks + 1) / 3 {
            fork_keeping(shared, shared.wide && forks == 1);
            forks += 1;
            let sleeper = thread::Builder::new().name(format!("mix-sleeper-{seed}-{forks}"));
            sleeper
                .spawn(|| {
                    loop {
                        thread::park()
                    }
                })
                .unwrap();
        }
        // A thread every THREAD_EVERY that opens a file, hands it over, ends.
        if last_thread.elapsed() >= THREAD_EVERY {
            last_thread = Instant::now();
            let handed_over = shared.handed_over.clone();
            short_lived.push(thread::spawn(move || {
                // SAFETY: a plain syscall.
                let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                handed_over.lock().unwrap().push(fd);
            }));
        }
        // At most one connection per CONNECT_EVERY: ephemeral ports stay in
        // TIME_WAIT for a minute. A quarter are dup'ed as well.
        if let Some(server) = server
            .as_deref()
            .filter(|_| last_connect.elapsed() >= CONNECT_EVERY)
        {
            last_connect = Instant::now();
            let fd = TcpStream::connect(server).expect("connect").into_raw_fd();
            if rng.below(4) == 0 {
                // SAFETY: a plain syscall on an fd this thread owns.
                kept.push(unsafe { libc::dup(fd) });
            }
            connections.push_back(fd);
            if connections.len() > CONNECTIONS {
                close(connections.pop_front().unwrap());
            }
        }
        let new = match rng.below(if shared.wide { 11 } else { 8 }) {
            // SAFETY (all arms): plain syscalls on fds this thread owns.
            0 | 1 => unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) },
            2 => {
                let mut fds = [0i32; 2];
                unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
                kept.push(fds[0]);
                fds[1]
            }
            3 => match kept.last() {
                Some(&fd) => unsafe { libc::dup(fd) },
                None => continue,
            },
            4 => unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) },
            8 => match kept.last() {
                Some(&fd) => pass_to_self(&pair, fd),
                None => continue,
            },
            9 => {
                if let Some(&fd) = kept.last() {
                    let target = block + rng.below(BLOCK as u64) as i32;
                    raw::int_call(
                        libc::SYS_dup3,
                        [fd, target, libc::O_CLOEXEC].map(Into::into),
                        "dup3",
                    );
                    placed.insert(target);
                }
                continue;
            }
            10 => {
                // A run of the block, gaps and all.
                let first = block + rng.below(BLOCK as u64) as i32;
                let last = (first + rng.below(8) as i32).min(block + BLOCK - 1);
                raw::close_range(first as u32, last as u32, 0);
                placed.retain(|fd| !(first..=last).contains(fd));
                continue;
            }
            5 => unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
            6 => {
                // Hand over the newest (its creation likely still held back
                // on this CPU), or close one another thread handed over.
                let mut handed_over = shared.handed_over.lock().unwrap();
                if rng.below(2) == 0 && !kept.is_empty() {
                    handed_over.extend(kept.pop());
                } else if let Some(fd) = handed_over.pop() {
                    close(fd);
                }
                continue;
            }
            _ => {
                if !kept.is_empty() {
                    close(kept.swap_remove(rng.below(kept.len() as u64) as usize));
                }
                continue;
            }
        };
        assert!(new >= 0, "{}", std::io::Error::last_os_error());
        // Half are closed at once (short-lived), half kept for a while.
        if rng.below(2) == 0 {
            close(new);
        } else {
            kept.push(new);
        }
        while kept.len() > KEEP {
            close(kept.swap_remove(rng.below(kept.len() as u64) as usize));
        }
    }
    for thread in short_lived {
        thread.join().unwrap();
    }
    kept.extend(connections);
    kept.extend(placed);
    kept.extend([pair.0, pair.1].map(IntoRawFd::into_raw_fd));
    kept
}

/// A copy of `fd` received by SCM_RIGHTS over `pair`, close-on-exec.
fn pass_to_self(pair: &(OwnedFd, OwnedFd), fd: i32) -> i32 {
    let sent = [fd];
    let rights = [ControlMessage::ScmRights(&sent)];
    sendmsg::<()>(
        pair.0.as_raw_fd(),
        &[IoSlice::new(b"x")],
        &rights,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([i32; 1]);
    let message = recvmsg::<()>(
        pair.1.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .unwrap();
    match message.cmsgs().unwrap().next() {
        Some(ControlMessageOwned::ScmRights(received)) => received[0],
        other => panic!("no fd received: {other:?}"),
    }
}
