//! The fast snapshot path: a BPF `task_file` iterator (monitor-ebpf/src/fditer.rs)
//! lists a process's fds with their link targets and socket states in one
//! read loop, where /proc costs a `readlink` and a `stat` per fd.
//!
//! The daemon loads the program once (it needs the kernel's BTF, which takes
//! tens of milliseconds to parse) and, on a root client's `fd_iter` request,
//! creates an iterator scoped to one pid and passes its fd over the control
//! socket. A kernel before 6.1 cannot scope a task iterator: there the
//! iterator walks every process's fds and the program keeps those of the pid
//! the daemon registered for the requesting client (its reader). Without a
//! daemon the snapshot reads /proc, with the same result.

use std::{
    io::{self, Read as _},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::Mutex,
};

use anyhow::Context as _;
use aya::{
    EbpfLoader,
    maps::{HashMap, MapData},
    programs::Iter,
};
use monitor_common::{FD_ITER_HOST_WIDE, FD_ITER_READERS, FdIterRecord, SockOffsets, Tuple};

/// The compiled iterator (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakmon-fditer"));

const PROGRAM: &str = "fd_iter";

/// UAPI numbers (linux/bpf.h): bpf_cmd and bpf_attach_type values.
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// The loaded iterator program.
pub struct Program {
    prog: OwnedFd,
    /// Host-wide mode (kernels before 6.1): reader tgid -> the tgid it reads.
    readers: Option<Mutex<HashMap<MapData, u32, u32>>>,
}

impl Program {
    /// Loads the iterator with the struct offsets found in the kernel's BTF:
    /// scoped to one process where the kernel can, else host-wide (also when
    /// `host_wide` asks for it: a test switch, since this host's kernel can).
    pub fn load(offsets: &SockOffsets, btf: &aya::Btf, host_wide: bool) -> anyhow::Result<Program> {
        anyhow::ensure!(!OBJECT.is_empty(), "built without kernel probes (AYA_BUILD_SKIP)");
        let own = std::process::id();
        if !host_wide {
            let program = Program::load_mode(offsets, btf, false)?;
            // Scoping a task iterator to one process is Linux 6.1's: before
            // it the kernel refuses the link's pid (E2BIG: a field it does
            // not know).
            match program.open_scoped(own) {
                Ok(_) => return Ok(program),
                Err(e) if e.raw_os_error() == Some(libc::E2BIG) => {}
                Err(e) => return Err(e).context("opening a test iterator over the daemon's own fds"),
            }
        }
        let program = Program::load_mode(offsets, btf, true)?;
        program
            .open_for(own, own)
            .context("opening a host-wide test iterator over the daemon's own fds")?;
        Ok(program)
    }

    fn load_mode(offsets: &SockOffsets, btf: &aya::Btf, host_wide: bool) -> anyhow::Result<Program> {
        let mut ebpf = EbpfLoader::new()
            .override_global(SockOffsets::GLOBAL, offsets, true)
            .override_global(FD_ITER_HOST_WIDE, &u32::from(host_wide), true)
            .load(OBJECT)
            .context("loading the fd iterator object")?;
        let program: &mut Iter = ebpf
            .program_mut(PROGRAM)
            .context("no fd_iter program in the object")?
            .try_into()?;
        program
            .load("task_file", btf)
            .map_err(|e| anyhow::anyhow!("the verifier refused fd_iter: {:#}", anyhow::Error::from(e)))?;
        // The program stays loaded as long as this fd: the object can go.
        let prog = program.fd()?.as_fd().try_clone_to_owned()?;
        let readers = if host_wide {
            let map = ebpf
                .take_map(FD_ITER_READERS)
                .context("no FD_ITER_READERS map in the iterator object")?;
            Some(Mutex::new(HashMap::try_from(map)?))
        } else {
            None
        };
        Ok(Program { prog, readers })
    }

    /// Whether the iterator walks every process (the kernel cannot scope it).
    pub fn host_wide(&self) -> bool {
        self.readers.is_some()
    }

    /// An iterator over the fds of process `pid` (a thread-group id) for the
    /// process `reader` to read to the end for [`FdIterRecord`]s. Fails with
    /// ESRCH for no such process. Host-wide, a reader gets the pid of its
    /// latest request: it reads each iterator before asking for the next (as
    /// `snapshot --match-comm` does).
    pub fn open_for(&self, pid: u32, reader: u32) -> io::Result<OwnedFd> {
        // A thread's id is not a process's: the scoped link would walk no
        // fds for it (an empty table, not an error), the host-wide walk none.
        let is_process = procfs::process::Process::new(pid as i32)
            .and_then(|p| p.status())
            .is_ok_and(|status| status.tgid == pid as i32);
        if !is_process {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        let Some(readers) = &self.readers else {
            return self.open_scoped(pid);
        };
        let mut readers = readers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        forget_exited_readers(&mut readers);
        readers.insert(reader, pid, 0).map_err(io::Error::other)?;
        self.open_link(&[])
    }

    fn open_scoped(&self, pid: u32) -> io::Result<OwnedFd> {
        // union bpf_iter_link_info, task member: tid, pid, pid_fd (then padding).
        self.open_link(&[0, pid, 0, 0])
    }

    /// Creates a link with `link_info` (none: a host-wide walk) and an
    /// iterator on it.
    fn open_link(&self, link_info: &[u32]) -> io::Result<OwnedFd> {
        // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags,
        // then iter_info (pointer) and iter_info_len.
        let mut attr = [0u64; 16];
        attr[0] = self.prog.as_raw_fd() as u64;
        attr[1] = BPF_TRACE_ITER as u64;
        if !link_info.is_empty() {
            attr[2] = link_info.as_ptr() as u64;
            attr[3] = std::mem::size_of_val(link_info) as u64;
        }
        let link = bpf(BPF_LINK_CREATE, &mut attr)?;
        let mut attr = [0u64; 16];
        attr[0] = link.as_raw_fd() as u64;
        // The iterator holds its own reference to the link.
        bpf(BPF_ITER_CREATE, &mut attr)
    }
}

/// Removes the entries of readers that have exited: the map holds the
/// clients reading now (and those that read last and still run).
fn forget_exited_readers(readers: &mut HashMap<MapData, u32, u32>) {
    let exited: Vec<u32> = readers
        .keys()
        .filter_map(Result::ok)
        .filter(|reader| !std::path::Path::new(&format!("/proc/{reader}")).exists())
        .collect();
    for reader in exited {
        let _ = readers.remove(&reader);
    }
}

/// The bpf() syscall for commands that return a new fd.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded bpf_attr of 128 bytes that lives across
    // the call; pointers inside it (iter_info) point at live memory.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: for these commands a non-negative return is a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// One fd as the iterator saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFd {
    pub fd: u32,
    /// The inode's mode (`S_IFMT` bits give the file type).
    pub mode: u32,
    pub inode: u64,
    /// The link target as /proc shows it. `None` for a socket (its target
    /// is `socket:[inode]`, left to the reader) or when the kernel could not
    /// render it.
    pub target: Option<String>,
    /// Inline: a record lives only until the snapshot has built its entry.
    pub socket: Option<KernelSocket>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSocket {
    pub family: u16,
    pub protocol: u16,
    pub state: u8,
    /// AF_INET/AF_INET6 only.
    pub tuple: Option<Tuple>,
}

/// Reads an iterator to its end on a thread of its own and hands the records
/// to `consume` in batches as they arrive, so that the kernel's side of the
/// read (mostly cache misses on the sockets' cold memory) overlaps the
/// caller's work on the batches before. Fails on a read error or when the
/// output ends inside a record; `consume` may have seen some batches then.
pub fn read_overlapped(iter: OwnedFd, mut consume: impl FnMut(Vec<KernelFd>)) -> io::Result<()> {
    // A few chunks in flight: enough to keep the reader busy, bounded memory.
    let (chunks, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> io::Result<()> {
            let mut file = std::fs::File::from(iter);
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let n = file.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                chunk.truncate(n);
                if chunks.send(chunk).is_err() {
                    return Ok(());
                }
            }
        });
        let mut carried: Vec<u8> = Vec::new();
        let mut records = 0;
        for chunk in received {
            let bytes = if carried.is_empty() {
                chunk
            } else {
                carried.extend_from_slice(&chunk);
                std::mem::take(&mut carried)
            };
            let mut batch = Vec::with_capacity(bytes.len() / RECORD);
            let used = decode_into(&bytes, &mut batch);
            carried.extend_from_slice(&bytes[used..]);
            records += batch.len();
            consume(batch);
        }
        reader.join().expect("the iterator reader does not panic")?;
        if carried.is_empty() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the fd iterator's output ends inside record {records}"),
            ))
        }
    })
}

/// Bytes asked for per read: the kernel's iterator buffer is 8 pages, and a
/// read returns at most what it holds.
const CHUNK: usize = 32 * 1024;
const RECORD: usize = std::mem::size_of::<FdIterRecord>();

/// Decodes the iterator's output; a record cut short fails with its offset.
pub fn decode(bytes: &[u8]) -> Result<Vec<KernelFd>, usize> {
    let mut fds = Vec::new();
    let used = decode_into(bytes, &mut fds);
    if used < bytes.len() { Err(used) } else { Ok(fds) }
}

/// Decodes whole records into `fds`; returns the bytes they took.
fn decode_into(bytes: &[u8], fds: &mut Vec<KernelFd>) -> usize {
    let mut at = 0;
    while let Some(record) = bytes.get(at..at + RECORD) {
        let u32_at = |i: usize| u32::from_ne_bytes(record[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_ne_bytes(record[i..i + 2].try_into().expect("2 bytes"));
        let target_len = u32_at(16) as usize;
        let Some(target) = bytes.get(at + RECORD..at + RECORD + target_len) else {
            break;
        };
        let (family, protocol, state) = (u16_at(20), u16_at(22), record[24]);
        let tuple = Tuple {
            family: u16_at(32),
            sport: u16_at(34),
            dport: u16_at(36),
            _pad: 0,
            saddr: record[40..56].try_into().expect("16 bytes"),
            daddr: record[56..72].try_into().expect("16 bytes"),
        };
        fds.push(KernelFd {
            fd: u32_at(0),
            mode: u32_at(4),
            inode: u64::from_ne_bytes(record[8..16].try_into().expect("8 bytes")),
            target: (target_len > 0).then(|| String::from_utf8_lossy(target).into_owned()),
            socket: (family != 0).then_some(KernelSocket {
                family,
                protocol,
                state,
                tuple: (tuple.family != 0).then_some(tuple),
            }),
        });
        at += RECORD + target_len;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fd: u32, mode: u32, target: &str, family: u16) -> Vec<u8> {
        let mut bytes = vec![0u8; RECORD];
        bytes[0..4].copy_from_slice(&fd.to_ne_bytes());
        bytes[4..8].copy_from_slice(&mode.to_ne_bytes());
        bytes[8..16].copy_from_slice(&77u64.to_ne_bytes());
        bytes[16..20].copy_from_slice(&(target.len() as u32).to_ne_bytes());
        bytes[20..22].copy_from_slice(&family.to_ne_bytes());
        bytes[22..24].copy_from_slice(&6u16.to_ne_bytes());
        bytes[24] = 8;
        bytes[32..34].copy_from_slice(&family.to_ne_bytes());
        bytes[34..36].copy_from_slice(&40112u16.to_ne_bytes());
        bytes[36..38].copy_from_slice(&6385u16.to_ne_bytes());
        bytes.extend_from_slice(target.as_bytes());
        bytes
    }

    #[test]
    fn decodes_records_with_targets() {
        let mut bytes = record(3, 0o100644, "/etc/hosts", 0);
        bytes.extend(record(4, 0o140777, "", 2));
        bytes.extend(record(5, 0o100644, "", 0));
        let fds = decode(&bytes).unwrap();
        assert_eq!(fds.len(), 3);
        assert_eq!(fds[0].target.as_deref(), Some("/etc/hosts"));
        assert!(fds[0].socket.is_none());
        assert_eq!(
            fds[1].target, None,
            "a socket's is `socket:[inode]`, left to the reader"
        );
        let socket = fds[1].socket.as_ref().unwrap();
        assert_eq!((socket.family, socket.protocol, socket.state), (2, 6, 8));
        let tuple = socket.tuple.unwrap();
        assert_eq!((tuple.sport, tuple.dport), (40112, 6385));
        assert_eq!(fds[2].target, None, "0 bytes: the kernel could not render it");
    }

    /// The iterator's output through a pipe, written in pieces that cut
    /// records apart, as reads of the kernel's buffer can.
    fn read_in_pieces(bytes: Vec<u8>, piece: usize) -> (io::Result<()>, Vec<KernelFd>) {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let feeder = std::thread::spawn(move || {
            for part in bytes.chunks(piece) {
                std::io::Write::write_all(&mut writer, part).unwrap();
            }
        });
        let mut fds = Vec::new();
        let result = read_overlapped(OwnedFd::from(reader), |batch| fds.extend(batch));
        feeder.join().unwrap();
        (result, fds)
    }

    #[test]
    fn records_cut_between_reads_are_joined_in_order() {
        let mut bytes = Vec::new();
        for fd in 0..3000 {
            let target = if fd % 3 == 0 {
                String::new()
            } else {
                format!("/var/lib/nova/{fd}")
            };
            bytes.extend(record(fd, 0o100644, &target, if fd % 3 == 0 { 2 } else { 0 }));
        }
        for piece in [7, 100, 4096, 1 << 20] {
            let (result, fds) = read_in_pieces(bytes.clone(), piece);
            result.unwrap();
            assert_eq!(fds.len(), 3000, "pieces of {piece}");
            assert!(fds.iter().enumerate().all(|(i, f)| f.fd == i as u32), "in order");
            assert_eq!(fds[4].target.as_deref(), Some("/var/lib/nova/4"));
            assert!(fds[3].socket.is_some());
        }
    }

    #[test]
    fn output_ending_inside_a_record_is_an_error_naming_it() {
        let mut bytes = record(3, 0o100644, "/etc/hosts", 0);
        bytes.extend(record(4, 0o100644, "/etc/passwd", 0));
        bytes.truncate(bytes.len() - 3);
        let (result, fds) = read_in_pieces(bytes, 5);
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("inside record 1"), "{err}");
        assert_eq!(fds.len(), 1, "the whole record before it was delivered");
    }

    #[test]
    fn a_truncated_record_is_an_error_with_its_offset() {
        let mut bytes = record(3, 0o100644, "/etc/hosts", 0);
        let first = bytes.len();
        bytes.extend(record(4, 0o100644, "/etc/passwd", 0));
        assert_eq!(decode(&bytes[..bytes.len() - 3]), Err(first));
        assert_eq!(decode(&bytes[..first + 10]), Err(first));
        assert_eq!(decode(&[]), Ok(vec![]));
    }
}
