//! Reading /proc: processes, their fds, threads and limits.
//!
//! A process can exit, and an fd can close, between any two reads: every
//! function here returns what it could read plus what it could not, never
//! a panic, and never gives up on the rest because one entry vanished.

use std::{ffi::CString, fs, io, os::unix::ffi::OsStrExt};

use thiserror::Error;

use crate::fdkind::{self, FdKind, FileType};

#[derive(Debug, Error)]
pub enum ProcError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    // `cause`, not `source`: said once in the message, not again in a chain.
    #[error("cannot read /proc/{pid}/{what}: {cause}")]
    Unreadable {
        pid: u32,
        what: &'static str,
        cause: io::Error,
    },
}

fn unreadable(pid: u32, what: &'static str) -> impl FnOnce(io::Error) -> ProcError {
    move |cause| {
        if cause.kind() == io::ErrorKind::NotFound {
            ProcError::NoSuchProcess(pid)
        } else {
            ProcError::Unreadable { pid, what, cause }
        }
    }
}

/// Nanoseconds per clock tick of /proc start times.
fn ns_per_tick() -> u64 {
    1_000_000_000 / procfs::ticks_per_second().max(1)
}

/// Identity and names of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
    /// Start time, CLOCK_BOOTTIME ns (distinguishes a reused pid).
    pub start_ns: u64,
}

pub fn process_info(pid: u32) -> Result<ProcessInfo, ProcError> {
    let process = procfs::process::Process::new(pid as i32).map_err(|_| ProcError::NoSuchProcess(pid))?;
    let stat = process.stat().map_err(|e| proc_err(pid, "stat", e))?;
    // A zombie or kernel thread has an empty cmdline: that is not an error.
    let cmdline = process.cmdline().unwrap_or_default();
    Ok(ProcessInfo {
        pid,
        ppid: stat.ppid as u32,
        comm: stat.comm,
        cmdline,
        start_ns: stat.starttime * ns_per_tick(),
    })
}

/// The process (thread group) thread `tid` belongs to; a process's own id
/// gives itself. /proc answers for a thread's id too, so without this a
/// tid (from `top -H`, or an alert's evidence) would pass for a process.
pub fn process_of(tid: u32) -> Result<u32, ProcError> {
    let status = procfs::process::Process::new(tid as i32)
        .and_then(|process| process.status())
        .map_err(|e| proc_err(tid, "status", e))?;
    Ok(status.tgid as u32)
}

fn proc_err(pid: u32, what: &'static str, error: procfs::ProcError) -> ProcError {
    match error {
        procfs::ProcError::NotFound(_) => ProcError::NoSuchProcess(pid),
        other => ProcError::Unreadable {
            pid,
            what,
            cause: io::Error::other(other.to_string()),
        },
    }
}

/// Whether the whole process has exited: no /proc entry, or a zombie (or
/// dead) leader with no thread left. A leader that exited while other
/// threads run is a zombie too, but with threads.
pub fn has_exited(pid: u32) -> bool {
    let Ok(process) = procfs::process::Process::new(pid as i32) else {
        return true;
    };
    match process.stat() {
        Ok(stat) => matches!(stat.state, 'Z' | 'X') && stat.num_threads <= 1,
        Err(_) => true,
    }
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// One entry of /proc/PID/fd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdLink {
    pub fd: u32,
    pub target: String,
}

/// An open /proc/PID/fd directory: entries are read relative to it
/// (readlinkat/fstatat), which saves a path walk of /proc/PID/fd per fd.
pub struct FdDir {
    pid: u32,
    dir: nix::dir::Dir,
}

impl FdDir {
    pub fn open(pid: u32) -> Result<FdDir, ProcError> {
        let path = format!("/proc/{pid}/fd");
        let dir = nix::dir::Dir::open(
            path.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| unreadable(pid, "fd")(io::Error::from(e)))?;
        Ok(FdDir { pid, dir })
    }

    /// The fds and their link targets. fds that close while we read are
    /// skipped; other unreadable entries are reported in the second list.
    pub fn links(&mut self) -> (Vec<FdLink>, Vec<String>) {
        let names: Vec<u32> = self
            .dir
            .iter()
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str().ok()?.parse().ok())
            .collect();
        let mut fds = Vec::with_capacity(names.len());
        let mut problems = Vec::new();
        for fd in names {
            match nix::fcntl::readlinkat(&self.dir, fd.to_string().as_str()) {
                Ok(target) => fds.push(FdLink {
                    fd,
                    target: String::from_utf8_lossy(target.as_bytes()).into_owned(),
                }),
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => problems.push(format!("fd {fd}: {e}")),
            }
        }
        fds.sort_by_key(|link| link.fd);
        (fds, problems)
    }

    /// The link target of one fd, if it is still open.
    pub fn link(&self, fd: u32) -> Option<String> {
        let target = nix::fcntl::readlinkat(&self.dir, fd.to_string().as_str()).ok()?;
        Some(String::from_utf8_lossy(target.as_bytes()).into_owned())
    }

    /// Type of the object behind a path-like fd (follows the link).
    pub fn file_type(&self, fd: u32) -> Option<FileType> {
        use nix::sys::stat::SFlag;
        let stat =
            nix::sys::stat::fstatat(&self.dir, fd.to_string().as_str(), nix::fcntl::AtFlags::empty()).ok()?;
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        Some(match kind {
            SFlag::S_IFDIR => FileType::Directory,
            SFlag::S_IFREG => FileType::Regular,
            SFlag::S_IFIFO => FileType::Fifo,
            SFlag::S_IFSOCK => FileType::Socket,
            SFlag::S_IFCHR | SFlag::S_IFBLK => FileType::Device,
            _ => FileType::Other,
        })
    }

    /// The kind of an fd from what /proc shows, with the extra reads a
    /// target needs (stat for paths, the protocol xattr for sockets).
    pub fn resolve_kind(&self, fd: u32, target: &str) -> FdKind {
        let file_type = if target.starts_with('/') {
            self.file_type(fd)
        } else {
            None
        };
        let proto = if target.starts_with("socket:[") {
            fd_sock_proto(self.pid, fd)
        } else {
            None
        };
        fdkind::from_target(target, file_type, proto.as_deref())
    }
}

/// /proc/PID/fd: the fds and their link targets, and unreadable entries.
pub fn list_fds(pid: u32) -> Result<(Vec<FdLink>, Vec<String>), ProcError> {
    Ok(FdDir::open(pid)?.links())
}

/// The socket's protocol name (`system.sockprotoname` xattr of the fd link).
pub fn fd_sock_proto(pid: u32, fd: u32) -> Option<String> {
    let path = CString::new(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let name = c"system.sockprotoname";
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live across the call; the
    // kernel writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return None;
    }
    let bytes = &buf[..n as usize];
    let bytes = bytes.split(|b| *b == 0).next().unwrap_or(bytes);
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Inode number of a `socket:[N]` or `pipe:[N]` link target.
pub fn link_inode(target: &str) -> Option<u64> {
    let inner = target.split_once(":[")?.1.strip_suffix(']')?;
    inner.parse().ok()
}

/// One entry of /proc/PID/task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    pub tid: u32,
    pub name: String,
    /// One-letter scheduler state (R, S, D, Z, ...).
    pub state: char,
    pub start_ns: u64,
}

pub fn list_threads(pid: u32) -> Result<Vec<ThreadInfo>, ProcError> {
    let process = procfs::process::Process::new(pid as i32).map_err(|_| ProcError::NoSuchProcess(pid))?;
    let tasks = process.tasks().map_err(|e| proc_err(pid, "task", e))?;
    let tick = ns_per_tick();
    let mut threads: Vec<ThreadInfo> = tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            // A thread that exits between the listing and this read is skipped.
            let stat = task.stat().ok()?;
            Some(ThreadInfo {
                tid: task.tid as u32,
                name: stat.comm,
                state: stat.state,
                start_ns: stat.starttime * tick,
            })
        })
        .collect();
    threads.sort_by_key(|t| t.tid);
    Ok(threads)
}

/// RLIMIT_NOFILE (soft, hard) of any process; `None` means unlimited.
pub fn nofile_limits(pid: u32) -> Result<(Option<u64>, Option<u64>), ProcError> {
    use procfs::process::LimitValue;
    let process = procfs::process::Process::new(pid as i32).map_err(|_| ProcError::NoSuchProcess(pid))?;
    let limits = process.limits().map_err(|e| proc_err(pid, "limits", e))?;
    let finite = |v: LimitValue| match v {
        LimitValue::Value(v) => Some(v),
        LimitValue::Unlimited => None,
    };
    let nofile = limits.max_open_files;
    Ok((finite(nofile.soft_limit), finite(nofile.hard_limit)))
}

/// The basename of argv[0] and argv[1] (a script run as `python3 /usr/bin/x`).
pub fn argv_basenames(cmdline: &[String]) -> impl Iterator<Item = &str> {
    cmdline
        .iter()
        .take(2)
        .map(|arg| arg.rsplit('/').next().unwrap_or(arg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_inodes_parse() {
        assert_eq!(link_inode("socket:[12345]"), Some(12345));
        assert_eq!(link_inode("pipe:[7]"), Some(7));
        assert_eq!(link_inode("/etc/passwd"), None);
        assert_eq!(link_inode("socket:[oops]"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        let info = process_info(me).unwrap();
        assert_eq!(info.pid, me);
        assert!(info.start_ns > 0);
        let (fds, problems) = list_fds(me).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(fds.iter().any(|l| l.fd == 0));
        assert!(!list_threads(me).unwrap().is_empty());
        assert!(nofile_limits(me).unwrap().0.is_some());
    }

    #[test]
    fn unknown_pid_is_a_clear_error() {
        // pid_max is at most 2^22: this pid cannot exist.
        let pid = 1 << 23;
        assert!(matches!(process_info(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
        assert!(matches!(list_fds(pid), Err(ProcError::NoSuchProcess(_))));
        let err = list_threads(pid).unwrap_err().to_string();
        assert!(err.contains("no process"), "{err}");
    }

    #[test]
    fn argv_basenames_cover_shebang_and_interpreter() {
        let shebang = vec![
            "/usr/bin/python3".to_string(),
            "/usr/bin/nova-compute".to_string(),
        ];
        assert_eq!(
            argv_basenames(&shebang).collect::<Vec<_>>(),
            ["python3", "nova-compute"]
        );
        let direct = vec!["nova-compute".to_string()];
        assert_eq!(argv_basenames(&direct).collect::<Vec<_>>(), ["nova-compute"]);
    }
}

/// A process's resident memory, from /proc/PID/statm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub resident_bytes: u64,
    /// Resident minus shared (file-backed and shmem) pages: its heap and
    /// stacks, without page cache that comes and goes with file reads.
    pub anon_bytes: u64,
}

pub fn memory(pid: u32) -> Result<Memory, ProcError> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).map_err(unreadable(pid, "statm"))?;
    memory_of_statm(&statm).ok_or_else(|| ProcError::Unreadable {
        pid,
        what: "statm",
        cause: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected content {statm:?}"),
        ),
    })
}

/// Resident anonymous memory of a process (see [`Memory::anon_bytes`]).
pub fn anon_resident_bytes(pid: u32) -> Result<u64, ProcError> {
    Ok(memory(pid)?.anon_bytes)
}

fn memory_of_statm(statm: &str) -> Option<Memory> {
    let mut pages = statm.split_whitespace().skip(1).map(|n| n.parse::<u64>().ok());
    let (resident, shared) = (pages.next()??, pages.next()??);
    let page = procfs::page_size();
    Some(Memory {
        resident_bytes: resident * page,
        anon_bytes: resident.saturating_sub(shared) * page,
    })
}

#[cfg(test)]
mod statm_tests {
    use super::*;

    #[test]
    fn anon_memory_is_resident_minus_shared_pages() {
        let page = procfs::page_size();
        let memory = memory_of_statm("5000 1200 200 10 0 900 0\n").unwrap();
        assert_eq!(
            (memory.resident_bytes, memory.anon_bytes),
            (1200 * page, 1000 * page)
        );
        assert_eq!(memory_of_statm("5000 100"), None, "cut short");
        assert_eq!(memory_of_statm("5000 x 200"), None);
        let own = anon_resident_bytes(std::process::id()).unwrap();
        assert!(own > 0, "this test's own heap");
        assert!(matches!(
            anon_resident_bytes(u32::MAX),
            Err(ProcError::NoSuchProcess(_))
        ));
    }
}
