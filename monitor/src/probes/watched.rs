//! The probes' watched bytes (`monitor_common::maps::WATCHED_PIDS`): one
//! byte per pid, mapped into the daemon so that it stores single bytes as
//! the probes do. A map update would write a whole 8-byte element and could
//! undo a probe's store to a neighbouring pid's byte.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU8, Ordering},
};

use anyhow::Context as _;
use aya::maps::{Map, MapData};
use monitor_common::watch_flags::BYTE_WATCHED;

/// The largest pid_max Linux allows (PID_MAX_LIMIT on 64-bit).
const PID_MAX_LIMIT: usize = 4 << 20;

/// Map elements (of 8 pids each) for this host's pid_max.
pub fn elements() -> u32 {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .unwrap_or(PID_MAX_LIMIT)
        .min(PID_MAX_LIMIT);
    pid_max.div_ceil(8) as u32
}

pub struct WatchedPids {
    bytes: NonNull<u8>,
    len: usize,
    // Keeps the map alive as long as the mapping.
    _map: MapData,
}

// SAFETY: the mapping is shared memory owned by this value; every access is
// a single-byte volatile store or atomic update through `&mut self`.
unsafe impl Send for WatchedPids {}

impl WatchedPids {
    pub fn map(map: Map) -> anyhow::Result<WatchedPids> {
        let Map::Array(data) = map else {
            anyhow::bail!("map WATCHED_PIDS is not an array");
        };
        let len = data.info()?.max_entries() as usize * 8;
        // SAFETY: a shared mapping of the map's values, which the kernel
        // allows for an array created with BPF_F_MMAPABLE; `len` is within them.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping WATCHED_PIDS");
        }
        let bytes = NonNull::new(ptr.cast::<u8>()).context("mmap returned null")?;
        Ok(WatchedPids {
            bytes,
            len,
            _map: data,
        })
    }

    /// Stores `pid`'s byte; false if it has none (a pid above the map:
    /// pid_max raised since the start), and then its WATCHED entry counts.
    pub fn set(&mut self, pid: u32, byte: u8) -> bool {
        let at = pid as usize;
        if at >= self.len {
            return false;
        }
        // SAFETY: within the mapping; a one-byte store, as the probes make.
        unsafe { std::ptr::write_volatile(self.bytes.as_ptr().add(at), byte) };
        true
    }

    /// Sets or clears `bits` in the byte of `pid` if it is watched, in one
    /// atomic update: a probe storing the byte at the same moment (an exec,
    /// an exit) is never undone (the bits may go with it instead). False if
    /// the pid has no byte or is not watched.
    pub fn update_bits(&mut self, pid: u32, bits: u8, on: bool) -> bool {
        let at = pid as usize;
        if at >= self.len {
            return false;
        }
        // SAFETY: within the mapping, which lives as long as `self`; the
        // probes load and store the byte whole, which cannot tear this update.
        let byte = unsafe { AtomicU8::from_ptr(self.bytes.as_ptr().add(at)) };
        byte.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| with_bits(old, bits, on))
            .is_ok()
    }
}

impl Drop for WatchedPids {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.bytes.as_ptr().cast(), self.len) };
    }
}

/// A watched byte with `bits` set or cleared; None if the byte is not a
/// watched pid's (setting a bit must not make an unwatched pid watched).
fn with_bits(byte: u8, bits: u8, on: bool) -> Option<u8> {
    (byte & BYTE_WATCHED != 0).then_some(if on { byte | bits } else { byte & !bits })
}

#[cfg(test)]
mod tests {
    use monitor_common::watch_flags::{self, MATCHED, SCANNING};

    use super::with_bits;

    #[test]
    fn bits_change_only_in_a_watched_byte() {
        let watched = watch_flags::byte(MATCHED);
        let scanning = with_bits(watched, SCANNING as u8, true).unwrap();
        assert_eq!(scanning, watched | SCANNING as u8);
        assert_eq!(with_bits(scanning, SCANNING as u8, false), Some(watched));
        // The kernel unwatched it meanwhile (an exec, an exit): it stays so.
        assert_eq!(with_bits(0, SCANNING as u8, true), None);
        assert_eq!(with_bits(0, SCANNING as u8, false), None);
    }
}
