//! Kernel lockdown, the LSM that Secure Boot turns on. `integrity` (what
//! Ubuntu sets on a Secure Boot host) leaves tracing and BPF's reads of
//! kernel memory alone; `confidentiality` disables both, and with them
//! every probe: the daemon says so instead of failing on an empty tracefs.

use std::io;

const PATH: &str = "/sys/kernel/security/lockdown";

/// Where systemd mounts securityfs; without it the mode cannot be read.
const SECURITYFS: &str = "/sys/kernel/security";

pub const CONFIDENTIALITY: &str = "kernel lockdown=confidentiality disables tracing and BPF reads of kernel \
     memory, which the probes need";

/// What to do about [`CONFIDENTIALITY`].
pub const FIX: &str = "boot with lockdown=integrity (what Secure Boot sets on Ubuntu) or none";

#[derive(Debug, PartialEq, Eq)]
pub enum Lockdown {
    /// The mode in effect: `none`, `integrity` or `confidentiality`.
    Mode(String),
    /// The kernel has no lockdown LSM (securityfs has no `lockdown`).
    Absent,
    /// securityfs is not mounted, or the file could not be read.
    Unknown(String),
}

impl Lockdown {
    pub fn read() -> Lockdown {
        match std::fs::read_to_string(PATH) {
            Ok(text) => parse(&text).map_or_else(
                || Lockdown::Unknown(format!("{PATH} reads {:?}", text.trim())),
                Lockdown::Mode,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound && securityfs_mounted() => Lockdown::Absent,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Lockdown::Unknown(format!("securityfs is not mounted at {SECURITYFS}"))
            }
            Err(e) => Lockdown::Unknown(format!("{PATH}: {e}")),
        }
    }

    pub fn is_confidentiality(&self) -> bool {
        matches!(self, Lockdown::Mode(mode) if mode == "confidentiality")
    }
}

/// The bracketed mode of `none integrity [confidentiality]`.
fn parse(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_string)
}

fn securityfs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split(' ');
            let (_, at, kind) = (fields.next(), fields.next(), fields.next());
            at == Some(SECURITYFS) && kind == Some("securityfs")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bracketed_word_is_the_mode() {
        assert_eq!(
            parse("[none] integrity confidentiality\n").as_deref(),
            Some("none")
        );
        assert_eq!(
            parse("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        let locked = Lockdown::Mode(parse("none integrity [confidentiality]").unwrap());
        assert!(locked.is_confidentiality());
        assert!(!Lockdown::Mode("integrity".into()).is_confidentiality());
        assert_eq!(parse("none integrity confidentiality"), None);
    }
}
