//! systemd's service notifications (sd_notify(3)), sent only when systemd
//! asks for them by setting `NOTIFY_SOCKET`. The unit is `Type=notify`: it
//! counts as started once the daemon says `READY=1`, after the probes are
//! attached and the processes already running are watched, so a unit
//! ordered after it (nova-compute) starts watched, with every fd's birth
//! recorded. `WATCHDOG=1`, sent from the engine's own loop, lets systemd
//! restart a daemon whose loop has hung (`WatchdogSec=`); `STATUS=` is the
//! line `systemctl status` shows.

use std::{
    ffi::OsStr,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
    time::Duration,
};

use nix::time::{ClockId, clock_gettime};
use tracing::warn;

/// Sends nothing when systemd did not ask (no `NOTIFY_SOCKET`).
#[derive(Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    last_status: String,
    /// A send failed and was logged: later failures are not.
    failing: bool,
}

impl Notifier {
    /// The notifier systemd asked for; a silent one when it did not (not
    /// started by systemd with `Type=notify`) or gave an address this daemon
    /// cannot use (logged).
    pub fn from_env() -> Notifier {
        let Some(address) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        let var = |name| std::env::var(name).ok();
        let made = parse_address(&address).and_then(|addr| {
            let watchdog = watchdog_timeout(
                var("WATCHDOG_USEC").as_deref(),
                var("WATCHDOG_PID").as_deref(),
                std::process::id(),
            )?;
            Ok(Notifier {
                target: Some((sender()?, addr)),
                watchdog,
                ..Notifier::default()
            })
        });
        made.unwrap_or_else(|e| {
            warn!("systemd notifications off: {e}");
            Notifier::default()
        })
    }

    /// How often to send `WATCHDOG=1`: half the timeout, as sd_watchdog_enabled(3) advises.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    /// Start-up (or a reload) is done; `status` is only called when systemd listens.
    pub fn ready(&mut self, status: impl FnOnce() -> String) {
        if self.target.is_some() {
            let status = status();
            self.send(&format!("READY=1\nSTATUS={status}"));
            self.last_status = status;
        }
    }

    /// A config reload begins; [`Notifier::ready`] ends it.
    pub fn reloading(&mut self) {
        let now_us = clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
            ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000
        });
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={now_us}"));
    }

    pub fn stopping(&mut self) {
        self.send("STOPPING=1\nSTATUS=stopping: detaching probes");
    }

    pub fn watchdog(&mut self) {
        self.send("WATCHDOG=1");
    }

    /// Sends the status if it differs from the last one sent.
    pub fn status(&mut self, status: impl FnOnce() -> String) {
        if self.target.is_none() {
            return;
        }
        let status = status();
        if status != self.last_status {
            self.send(&format!("STATUS={status}"));
            self.last_status = status;
        }
    }

    fn send(&mut self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        match socket.send_to_addr(message.as_bytes(), addr) {
            Ok(_) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET); the daemon runs on");
            }
            Err(_) => {}
        }
    }
}

/// The socket notifications leave by. Non-blocking: a manager that does not
/// read its queue must not stop the engine; a message that cannot go now is
/// dropped (statuses and pings are sent again).
fn sender() -> Result<UnixDatagram, String> {
    let socket = UnixDatagram::unbound().map_err(|e| format!("a datagram socket: {e}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("a non-blocking datagram socket: {e}"))?;
    Ok(socket)
}

/// `NOTIFY_SOCKET`: a path, or `@name` for an abstract socket.
fn parse_address(value: &OsStr) -> Result<SocketAddr, String> {
    let bytes = value.as_bytes();
    let made = match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(value),
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        _ => {
            return Err(format!(
                "NOTIFY_SOCKET={}: neither a path nor an abstract socket (@name)",
                value.to_string_lossy()
            ));
        }
    };
    made.map_err(|e| format!("NOTIFY_SOCKET={}: {e}", value.to_string_lossy()))
}

/// The watchdog timeout systemd set (`WATCHDOG_USEC`), if it is meant for
/// this process: `WATCHDOG_PID`, when set, names the process it is for (a
/// wrapper that exec'd something else passes it on).
fn watchdog_timeout(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    let usec: u64 = usec
        .parse()
        .ok()
        .filter(|&usec| usec > 0)
        .ok_or_else(|| format!("WATCHDOG_USEC={usec}: not a positive number of microseconds"))?;
    match pid.map(str::parse::<u32>) {
        None => Ok(Some(Duration::from_micros(usec))),
        Some(Ok(pid)) if pid == own_pid => Ok(Some(Duration::from_micros(usec))),
        Some(Ok(_)) => Ok(None),
        Some(Err(_)) => Err(format!("WATCHDOG_PID={}: not a pid", pid.unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_a_path_or_an_abstract_name() {
        let path = parse_address(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abstract_name = parse_address(OsStr::new("@sd-notify-1")).unwrap();
        assert_eq!(abstract_name.as_abstract_name(), Some(&b"sd-notify-1"[..]));
        let vsock = parse_address(OsStr::new("vsock:2:1234")).unwrap_err();
        assert!(vsock.contains("neither a path"), "{vsock}");
    }

    #[test]
    fn the_watchdog_is_armed_only_for_this_process() {
        let second = Some(Duration::from_secs(1));
        assert_eq!(watchdog_timeout(Some("1000000"), None, 7), Ok(second));
        assert_eq!(watchdog_timeout(Some("1000000"), Some("7"), 7), Ok(second));
        assert_eq!(watchdog_timeout(Some("1000000"), Some("8"), 7), Ok(None));
        assert_eq!(watchdog_timeout(None, Some("7"), 7), Ok(None));
        assert!(watchdog_timeout(Some("0"), None, 7).is_err());
        assert!(watchdog_timeout(Some("soon"), None, 7).is_err());
        assert!(watchdog_timeout(Some("1000000"), Some("me"), 7).is_err());
    }

    #[test]
    fn a_socket_that_is_gone_fails_quietly_after_one_warning() {
        let gone = std::env::temp_dir().join(format!("leakmon-sdnotify-gone-{}", std::process::id()));
        let mut notifier = Notifier {
            target: Some((sender().unwrap(), parse_address(gone.as_os_str()).unwrap())),
            ..Notifier::default()
        };
        notifier.watchdog();
        assert!(notifier.failing);
        notifier.ready(|| "still running".into());
        assert_eq!(notifier.last_status, "still running", "the daemon carries on");
    }

    #[test]
    fn a_manager_that_does_not_read_never_blocks_the_daemon() {
        let path = std::env::temp_dir().join(format!("leakmon-sdnotify-full-{}", std::process::id()));
        let _deaf = UnixDatagram::bind(&path).unwrap();
        let mut notifier = Notifier {
            target: Some((sender().unwrap(), parse_address(path.as_os_str()).unwrap())),
            ..Notifier::default()
        };
        // More than any receive queue takes (net.unix.max_dgram_qlen, 512 by default).
        for _ in 0..100_000 {
            notifier.watchdog();
        }
        std::fs::remove_file(&path).unwrap();
        assert!(notifier.failing, "a full queue is reported, not waited on");
    }

    #[test]
    fn messages_reach_the_socket_and_an_unchanged_status_is_not_repeated() {
        let dir = std::env::temp_dir().join(format!("leakmon-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_nonblocking(true).unwrap();
        let mut silent = Notifier::default();
        silent.ready(|| unreachable!("no status is made when systemd does not listen"));
        let mut notifier = Notifier {
            target: Some((sender().unwrap(), parse_address(path.as_os_str()).unwrap())),
            ..Notifier::default()
        };
        notifier.ready(|| "watching 1 process".into());
        notifier.status(|| "watching 1 process".into());
        notifier.status(|| "watching 2 processes".into());
        notifier.watchdog();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = receiver.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            [
                "READY=1\nSTATUS=watching 1 process",
                "STATUS=watching 2 processes",
                "WATCHDOG=1"
            ]
        );
    }
}
