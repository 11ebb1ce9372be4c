//! fds the probes hold back in the kernel (monitor-ebpf's `defer`): short-lived
//! ones that never reach the daemon, and a creation another CPU's close overtakes.

use std::{
    os::fd::IntoRawFd,
    sync::{Mutex, mpsc},
    thread,
};

use nix::{sched::CpuSet, unistd::Pid};
use serde_json::json;

use super::{loops::close, raw::gettid, say};

fn open_null() -> i32 {
    std::fs::File::open("/dev/null").unwrap().into_raw_fd()
}

fn pipe2() -> [i32; 2] {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two ints into the array it is given.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    fds
}

/// `rounds` of open+close, pipe2+close+close and dup+close, then a pipe of
/// which only the write end is kept and, last, a kept file (which stays
/// held back: nothing follows it).
pub fn short_lived(rounds: usize) {
    for _ in 0..rounds {
        close(open_null());
        let [r, w] = pipe2();
        close(r);
        close(w);
        // SAFETY: dup of stdin, closed at once.
        close(unsafe { libc::dup(0) });
    }
    let [read_fd, write_fd] = pipe2();
    close(read_fd);
    let file_fd = open_null();
    say(
        json!({"event": "short-lived", "read_fd": read_fd, "write_fd": write_fd,
               "file_fd": file_fd, "tid": gettid()}),
    );
}

pub fn pin_to(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(Pid::from_raw(0), &set).unwrap();
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    let allowed = nix::sched::sched_getaffinity(Pid::from_raw(0)).unwrap();
    (0..CpuSet::count())
        .filter(|c| allowed.is_set(*c).unwrap_or(false))
        .collect()
}

/// The threads of an `overtaken` round, between its two commands.
struct Round {
    go: mpsc::Sender<()>,
    opened: mpsc::Receiver<(i32, u32)>,
    threads: [thread::JoinHandle<()>; 2],
}

static ROUND: Mutex<Option<Round>> = Mutex::new(None);

/// `overtaken-ready`: a thread pinned to one CPU that will open a file and
/// wait, and a thread pinned to another that will close it. Both exist
/// before the open: a thread's creation is a record from its creator's CPU,
/// which would ship the held-back open early (so would the daemon's drain
/// that the creation wakes: the test syncs before `overtaken-go`). Needs two
/// CPUs (`{"cpus": 1}` otherwise).
pub fn overtaken_ready() {
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        say(json!({"event": "overtaken-ready", "cpus": cpus.len()}));
        return;
    }
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (opened_tx, opened_rx) = mpsc::channel::<(i32, u32)>();
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let (fd_tx, fd_rx) = mpsc::channel::<i32>();
    let (a, b) = (cpus[0], cpus[1]);
    let opener = thread::spawn(move || {
        pin_to(a);
        go_rx.recv().unwrap();
        let fd = open_null();
        fd_tx.send(fd).unwrap();
        // Stays alive (and off its CPU's slot) until the close is done;
        // its exit then ships the held-back open after the close.
        closed_rx.recv().unwrap();
        opened_tx.send((fd, gettid())).unwrap();
    });
    let closer = thread::spawn(move || {
        pin_to(b);
        close(fd_rx.recv().unwrap());
        closed_tx.send(()).unwrap();
    });
    *ROUND.lock().unwrap() = Some(Round {
        go: go_tx,
        opened: opened_rx,
        threads: [opener, closer],
    });
    say(json!({"event": "overtaken-ready", "cpus": cpus.len()}));
}

/// `overtaken-go`: the open on one CPU and its close on the other.
pub fn overtaken_go() {
    let round = ROUND.lock().unwrap().take().expect("overtaken-ready first");
    round.go.send(()).unwrap();
    let (fd, tid) = round.opened.recv().unwrap();
    for thread in round.threads {
        thread.join().unwrap();
    }
    say(json!({"event": "overtaken", "fd": fd, "opener_tid": tid}));
}
