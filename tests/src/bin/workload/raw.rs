//! Syscalls with no libc/nix wrapper of their own (or whose wrapper uses a
//! newer syscall than the one under test), called by number.

use std::ffi::CString;

fn check(ret: libc::c_long, what: &str) -> i32 {
    if ret < 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
    ret as i32
}

fn path(p: &str) -> CString {
    CString::new(p).expect("no NUL")
}

pub fn open(p: &str, flags: i32) -> i32 {
    let p = path(p);
    // SAFETY: a valid NUL-terminated path; open takes no other pointers.
    check(
        unsafe { libc::syscall(libc::SYS_open, p.as_ptr(), flags, 0o600) },
        "open",
    )
}

pub fn creat(p: &str) -> i32 {
    let p = path(p);
    // SAFETY: as for open.
    check(
        unsafe { libc::syscall(libc::SYS_creat, p.as_ptr(), 0o600) },
        "creat",
    )
}

pub fn openat2(p: &str, flags: u64) -> i32 {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags,
        mode: 0,
        resolve: 0,
    };
    let p = path(p);
    // SAFETY: `how` is a live struct open_how of the size passed.
    check(
        unsafe {
            libc::syscall(
                libc::SYS_openat2,
                libc::AT_FDCWD,
                p.as_ptr(),
                &how,
                size_of::<OpenHow>(),
            )
        },
        "openat2",
    )
}

/// name_to_handle_at + open_by_handle_at on `p`, mounted under `mount_fd`.
pub fn open_by_handle(p: &str, mount_fd: i32) -> i32 {
    // struct file_handle with room for the handle bytes.
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let mut handle = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0i32;
    let p = path(p);
    // SAFETY: `handle` has room for `bytes` handle bytes; mount_id is a live int.
    check(
        unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                libc::AT_FDCWD,
                p.as_ptr(),
                &mut handle,
                &mut mount_id,
                0,
            )
        },
        "name_to_handle_at",
    );
    // SAFETY: the handle filled in just above.
    check(
        unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount_fd, &mut handle, libc::O_RDONLY) },
        "open_by_handle_at",
    )
}

/// Calls a syscall that takes only integer arguments and returns an fd.
pub fn int_call(nr: libc::c_long, args: [libc::c_long; 3], what: &str) -> i32 {
    // SAFETY: only integer arguments (the fourth is 0 for accept4's flags):
    // the kernel reads no memory of ours.
    check(unsafe { libc::syscall(nr, args[0], args[1], args[2], 0) }, what)
}

/// pipe(2) and socketpair(2) write two fds into an int[2].
pub fn pipe_old() -> [i32; 2] {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is an int[2] the kernel writes.
    check(unsafe { libc::syscall(libc::SYS_pipe, fds.as_mut_ptr()) }, "pipe");
    fds
}

pub fn signalfd_old() -> i32 {
    // SAFETY: an empty sigset_t filled by sigemptyset/sigaddset.
    let mask = unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGUSR2);
        mask
    };
    // SAFETY: `mask` is live; size 8 is the kernel's sigset size.
    check(
        unsafe { libc::syscall(libc::SYS_signalfd, -1, &mask, 8) },
        "signalfd",
    )
}

pub fn perf_event_open() -> i32 {
    // struct perf_event_attr (136 bytes): type and size share the first
    // word, config the second; bit 0 of the flags word is `disabled`.
    const PERF_TYPE_SOFTWARE: u64 = 1;
    const SIZE: u64 = 136;
    let mut attr = [0u64; 17];
    attr[0] = PERF_TYPE_SOFTWARE | SIZE << 32;
    attr[1] = 0; // PERF_COUNT_SW_CPU_CLOCK
    attr[5] = 1;
    // SAFETY: `attr` is a live perf_event_attr of the size it declares.
    check(
        unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) },
        "perf_event_open",
    )
}

pub fn io_uring_setup() -> i32 {
    // struct io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: `params` is a live, zeroed io_uring_params the kernel fills.
    check(
        unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) },
        "io_uring_setup",
    )
}

pub fn bpf_map_create() -> i32 {
    // union bpf_attr for BPF_MAP_CREATE: type, key size, value size, max entries.
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 8;
    attr[3] = 1;
    // SAFETY: `attr` is a live bpf_attr of the size passed.
    check(
        unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), 128) },
        "bpf",
    )
}

pub fn close_range(first: u32, last: u32, flags: u32) {
    int_call(
        libc::SYS_close_range,
        [first as _, last as _, flags as _],
        "close_range",
    );
}

pub fn gettid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}
