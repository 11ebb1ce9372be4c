//! The probes' watched bytes (`monitor_common::maps::WATCHED_PIDS`): one
//! byte per pid, mapped into the daemon so that it stores single bytes as
//! the probes do. A map update would write a whole 8-byte element and could
//! undo a probe's store to a neighbouring pid's byte. The map has a byte for
//! every pid Linux can make (4 MiB of kernel memory, what a host at
//! systemd's pid_max of 4194304 needs anyway), so every watched pid takes
//! the one path; the daemon maps only the bytes up to pid_max (the kernel
//! puts a mapping's every page in its RSS) and maps more if pid_max grows.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU8, Ordering},
};

use anyhow::Context as _;
use aya::maps::{Map, MapData};
use monitor_common::watch_flags::BYTE_WATCHED;
use tracing::{info, warn};

pub struct WatchedPids {
    bytes: NonNull<u8>,
    /// Bytes mapped: those of pids below it.
    len: usize,
    /// Bytes in the map: PID_MAX_LIMIT.
    capacity: usize,
    // Keeps the map alive as long as the mapping.
    map: MapData,
}

// SAFETY: the mapping is shared memory owned by this value; every access is
// a single-byte volatile store or atomic update through `&mut self`.
unsafe impl Send for WatchedPids {}

impl WatchedPids {
    pub fn map(map: Map) -> anyhow::Result<WatchedPids> {
        let Map::Array(data) = map else {
            anyhow::bail!("map WATCHED_PIDS is not an array");
        };
        let capacity = data.info()?.max_entries() as usize * 8;
        let len = mapped_len(pid_max(), capacity);
        let bytes = mmap(&data, len)?;
        Ok(WatchedPids {
            bytes,
            len,
            capacity,
            map: data,
        })
    }

    /// `pid`'s byte, mapped first if pid_max grew past the mapping since the
    /// start; None beyond the map (no process has that pid) or if it cannot
    /// be mapped (said once per attempt: the pid stays unwatched).
    fn byte(&mut self, pid: u32) -> Option<*mut u8> {
        let at = pid as usize;
        if at >= self.len {
            if at >= self.capacity {
                return None;
            }
            let len = mapped_len(pid_max().max(at + 1), self.capacity);
            match mmap(&self.map, len) {
                Ok(bytes) => {
                    info!(pid, mapped = len, "pid_max grew: mapped more watched bytes");
                    // SAFETY: the old mapping, made in `mmap`, unmapped once;
                    // nothing borrows it (`&mut self`).
                    unsafe { libc::munmap(self.bytes.as_ptr().cast(), self.len) };
                    (self.bytes, self.len) = (bytes, len);
                }
                Err(e) => {
                    warn!(pid, error = %format!("{e:#}"), "cannot map this pid's watched byte: not watched");
                    return None;
                }
            }
        }
        // SAFETY: `at` is within the mapping.
        Some(unsafe { self.bytes.as_ptr().add(at) })
    }

    /// Stores `pid`'s byte; false if it has none (see [`WatchedPids::byte`]).
    pub fn set(&mut self, pid: u32, byte: u8) -> bool {
        let Some(at) = self.byte(pid) else {
            return false;
        };
        // SAFETY: a mapped byte; a one-byte store, as the probes make.
        unsafe { std::ptr::write_volatile(at, byte) };
        true
    }

    /// Sets or clears `bits` in the byte of `pid` if it is watched, in one
    /// atomic update: a probe storing the byte at the same moment (an exec,
    /// an exit) is never undone (the bits may go with it instead). False if
    /// the pid has no byte or is not watched.
    pub fn update_bits(&mut self, pid: u32, bits: u8, on: bool) -> bool {
        let Some(at) = self.byte(pid) else {
            return false;
        };
        // SAFETY: a mapped byte, which lives as long as `self`; the probes
        // load and store the byte whole, which cannot tear this update.
        let byte = unsafe { AtomicU8::from_ptr(at) };
        byte.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| with_bits(old, bits, on))
            .is_ok()
    }
}

impl Drop for WatchedPids {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `mmap`, unmapped once.
        unsafe { libc::munmap(self.bytes.as_ptr().cast(), self.len) };
    }
}

/// The host's pid_max now (the most the map holds if it cannot be read).
fn pid_max() -> usize {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(usize::MAX)
}

/// Bytes to map for pids below `pids`: whole pages, at most the map.
fn mapped_len(pids: usize, capacity: usize) -> usize {
    pids.min(capacity).next_multiple_of(4096).min(capacity)
}

/// A shared mapping of the map's first `len` bytes, which the kernel allows
/// for an array created with BPF_F_MMAPABLE.
fn mmap(map: &MapData, len: usize) -> anyhow::Result<NonNull<u8>> {
    // SAFETY: a new mapping of `len` bytes of the map's values (within them:
    // callers cap `len` at the map's size); nothing else is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).context("mapping WATCHED_PIDS");
    }
    NonNull::new(ptr.cast::<u8>()).context("mmap returned null")
}

/// A watched byte with `bits` set or cleared; None if the byte is not a
/// watched pid's (setting a bit must not make an unwatched pid watched).
fn with_bits(byte: u8, bits: u8, on: bool) -> Option<u8> {
    (byte & BYTE_WATCHED != 0).then_some(if on { byte | bits } else { byte & !bits })
}

#[cfg(test)]
mod tests {
    use monitor_common::watch_flags::{self, MATCHED, SCANNING};

    use super::{mapped_len, with_bits};

    #[test]
    fn the_mapping_covers_pid_max_in_whole_pages_within_the_map() {
        let capacity = 4 << 20;
        assert_eq!(mapped_len(32768, capacity), 32768);
        assert_eq!(mapped_len(32769, capacity), 36864);
        assert_eq!(mapped_len(4 << 20, capacity), capacity);
        // pid_max unreadable: all of it.
        assert_eq!(mapped_len(usize::MAX, capacity), capacity);
    }

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
