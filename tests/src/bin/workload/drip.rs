//! Commands for the alert tests: resources that leak at a steady pace, and
//! requests that carry a token or wait for an answer.
//!   drip files|threads MS N   one more every MS ms, N times, in the background
//!   drip memory MS N MIB      MIB MiB more heap (written, so resident) every MS ms, N times
//!   drip log MS N PATH        a 100-byte line appended to PATH (opened O_APPEND, as
//!                             a log handler does) every MS ms, N times
//!   free files|threads|memory close the dripped files / end the dripped threads / free the heap
//!   burst N MS                N threads that exit after MS ms
//!   rlimit N                  RLIMIT_NOFILE soft limit to N
//!   http ADDR METHOD PATH [token|-] [BODY]
//!                             one request on a new connection, in a thread of
//!                             its own (it may wait forever); then closes it
//!   poll ADDR PATH N MS       N GETs from one thread, MS ms apart (a wait loop)

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::fd::{FromRawFd, IntoRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use serde_json::json;

#[derive(Default)]
pub struct Drip {
    files: Arc<Mutex<Vec<i32>>>,
    stop_threads: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    memory: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Drip {
    pub fn command(&mut self, words: &[&str]) {
        let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
        match (words[0], words.get(1).copied().unwrap_or("")) {
            ("drip", "files") => {
                let files = self.files.clone();
                let (ms, n) = (number(2), number(3));
                thread::spawn(move || {
                    for _ in 0..n {
                        let fd = std::fs::File::open("/dev/null").map(IntoRawFd::into_raw_fd);
                        match fd {
                            Ok(fd) => files.lock().unwrap().push(fd),
                            Err(e) => crate::say(json!({"event": "open-failed", "error": e.to_string()})),
                        }
                        thread::sleep(Duration::from_millis(ms));
                    }
                    crate::say(json!({"event": "dripped", "what": "files"}));
                });
            }
            ("drip", "threads") => {
                let stop = self.stop_threads.clone();
                let (ms, n) = (number(2), number(3));
                for _ in 0..n {
                    let stop = stop.clone();
                    self.threads.push(thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            thread::park_timeout(Duration::from_millis(50));
                        }
                    }));
                    thread::sleep(Duration::from_millis(ms));
                }
                crate::say(json!({"event": "dripped", "what": "threads"}));
            }
            ("drip", "log") => {
                let (ms, n) = (number(2), number(3));
                let path = words[4].to_string();
                thread::spawn(move || {
                    let mut log = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&path)
                        .expect("the log");
                    for line in 0..n {
                        writeln!(log, "{line:0>99}").expect("a log line");
                        thread::sleep(Duration::from_millis(ms));
                    }
                    crate::say(json!({"event": "dripped", "what": "log"}));
                });
            }
            ("drip", "memory") => {
                let memory = self.memory.clone();
                let (ms, n, mib) = (number(2), number(3), number(4) as usize);
                thread::spawn(move || {
                    for _ in 0..n {
                        // Large blocks are mmap'ed: freed, they leave the process at once.
                        memory.lock().unwrap().push(vec![1u8; mib << 20]);
                        thread::sleep(Duration::from_millis(ms));
                    }
                    crate::say(json!({"event": "dripped", "what": "memory"}));
                });
            }
            ("free", "memory") => {
                self.memory.lock().unwrap().clear();
                crate::say(json!({"event": "freed", "what": "memory"}));
            }
            ("free", "files") => {
                for fd in self.files.lock().unwrap().drain(..) {
                    // SAFETY: the fd was opened above and is closed once, here.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
                crate::say(json!({"event": "freed", "what": "files"}));
            }
            ("free", "threads") => {
                self.stop_threads.store(true, Ordering::Relaxed);
                for handle in self.threads.drain(..) {
                    handle.join().unwrap();
                }
                self.stop_threads.store(false, Ordering::Relaxed);
                crate::say(json!({"event": "freed", "what": "threads"}));
            }
            ("burst", _) => {
                let (n, ms) = (number(1), number(2));
                let handles: Vec<_> = (0..n)
                    .map(|_| thread::spawn(move || thread::sleep(Duration::from_millis(ms))))
                    .collect();
                thread::spawn(move || {
                    for handle in handles {
                        handle.join().unwrap();
                    }
                    crate::say(json!({"event": "burst-done"}));
                });
            }
            ("rlimit", _) => {
                use nix::sys::resource::{Resource, getrlimit, setrlimit};
                let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
                setrlimit(Resource::RLIMIT_NOFILE, number(1), hard).unwrap();
                crate::say(json!({"event": "rlimit", "soft": number(1)}));
            }
            ("http", addr) => {
                let (addr, method, path) = (addr.to_string(), words[2].to_string(), words[3].to_string());
                let token = words.get(4) == Some(&"token");
                let body = words.get(5).unwrap_or(&"").to_string();
                thread::spawn(move || request(&addr, &method, &path, token, &body));
            }
            ("poll", addr) => {
                let (addr, path) = (addr.to_string(), words[2].to_string());
                let (n, ms) = (number(3), number(4));
                thread::spawn(move || {
                    for _ in 0..n {
                        request(&addr, "GET", &path, false, "");
                        thread::sleep(Duration::from_millis(ms));
                    }
                    crate::say(json!({"event": "polled"}));
                });
            }
            _ => panic!("unknown command {words:?}"),
        }
    }
}

fn request(addr: &str, method: &str, path: &str, token: bool, body: &str) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    // The tests' fake token: the secret tests look for it in every output.
    let auth = if token {
        "X-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential\r\n".to_string()
    } else {
        String::new()
    };
    let length = body.len();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {length}\r\n\r\n{body}");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = [0u8; 4096];
    let read = stream.read(&mut response).unwrap_or(0);
    let head = String::from_utf8_lossy(&response[..read]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    crate::say(json!({"event": "answered", "status": status}));
}
