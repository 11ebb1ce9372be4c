//! Process and thread lifecycle: exec (discovery), new tasks, exits, renames.

use aya_ebpf::{
    helpers::bpf_get_current_comm, macros::tracepoint, maps::ring_buf::RingBufEntry,
    programs::TracePointContext,
};
use monitor_common::{EventKind, NO_SYSCALL, TaskEvent, config_flags, counter, task_flags, watch_flags};

use crate::{
    emit::{current, header, reserve, submit, submit_now},
    maps::{
        TLS_CALLS, WATCH_COMMS, config, count, forget, is_watched, task_offsets, unwatch, watch, watch_state,
    },
};

const CLONE_THREAD: u64 = 0x0001_0000;

/// Ships a task event; `wake` (an exec, counted) wakes the reader at once.
/// Anything else waits for the drain timer or `wakeup_bytes`: a forced wakeup
/// is an interrupt and a wakeup of the reader, ~15-25 µs under this hypervisor.
fn ship(kind: EventKind, pid: u32, flags: u32, comm: [u8; 16], wake: bool) {
    let entry: Option<RingBufEntry<TaskEvent>> = reserve(kind);
    if let Some(mut entry) = entry {
        entry.write(TaskEvent {
            header: header(kind, NO_SYSCALL),
            pid,
            flags,
            comm,
        });
        if wake {
            count(counter::EXEC_WAKEUPS);
            submit_now(entry)
        } else {
            submit(entry)
        }
    }
}

fn read_comm(ctx: &TracePointContext, offset: u16) -> [u8; 16] {
    // SAFETY: the offset comes from the tracepoint's format file.
    unsafe { ctx.read_at::<[u8; 16]>(offset as usize) }.unwrap_or([0; 16])
}

/// sched/sched_process_exec: watches processes whose new comm matches, drops
/// inherited children that exec something else, and ships the exec when user
/// space wants it (command-line matching) or the process is or was watched.
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let before = watch_state(tgid);
    let was_watched = before != 0;
    let comm_matches = WATCH_COMMS.get_ptr(comm).is_some();

    let now_watched = if before & (watch_flags::PINNED | watch_flags::MATCHED) != 0 {
        // User space decides for processes it chose (it has the command line).
        true
    } else if comm_matches {
        watch(tgid, watch_flags::MATCHED)
    } else {
        if was_watched {
            unwatch(tgid);
        }
        false
    };

    let ship_all = config().flags & config_flags::SHIP_ALL_EXECS != 0;
    if ship_all || was_watched || now_watched {
        let mut flags = 0;
        if was_watched {
            flags |= task_flags::WAS_WATCHED;
        }
        if now_watched {
            flags |= task_flags::WATCHED_NOW;
        }
        // SAFETY: offset from the format file.
        let old_pid: u32 =
            unsafe { ctx.read_at::<i32>(task_offsets().exec_old_pid as usize) }.unwrap_or(tid as i32) as u32;
        // A process still watched (user space chose it, or its new comm
        // matches) changed what it runs: user space decides at once
        // (uprobes to attach, a watch to end). Any other exec waits for the
        // next drain (100 ms by default): one shipped only for command-line
        // matching (otherwise every exec on the host would pay for a wakeup;
        // the first scan finds what the process opened in the meantime), and
        // a child that inherited the watch and runs something else now, which
        // is unwatched above (otherwise a watched process's every fork+exec
        // would pay for it).
        let wake = now_watched;
        ship(EventKind::Exec, old_pid, flags, comm, wake);
    }
    0
}

/// task/task_newtask (runs in the parent): threads and child processes of
/// watched processes. Children inherit the watch until they exec.
#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let (tgid, _) = current();
    if !is_watched(tgid) {
        return 0;
    }
    let offsets = task_offsets();
    // SAFETY: offsets from the format file.
    let (pid, clone_flags) = unsafe {
        (
            ctx.read_at::<i32>(offsets.newtask_pid as usize),
            ctx.read_at::<u64>(offsets.newtask_clone_flags as usize),
        )
    };
    let (Ok(pid), Ok(clone_flags)) = (pid, clone_flags) else {
        return 0;
    };
    let pid = pid as u32;
    let is_thread = clone_flags & CLONE_THREAD != 0;
    if !is_thread {
        watch(pid, watch_flags::INHERITED);
    }
    let flags = if is_thread { task_flags::THREAD } else { 0 };
    ship(
        EventKind::TaskNew,
        pid,
        flags,
        read_comm(&ctx, offsets.newtask_comm),
        false,
    );
    0
}

/// sched/sched_process_exit: a thread of a watched process exits; the last
/// one takes the process out of the watched set.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current();
    if !is_watched(tgid) {
        return 0;
    }
    // A thread killed inside a hooked syscall never reaches its sys_exit.
    let thread = ((tgid as u64) << 32) | tid as u64;
    forget(&TLS_CALLS, thread);
    let offsets = task_offsets();
    // Without the field, user space decides from its thread list whether
    // this exit may be the process's last.
    let flags = if offsets.exit_group_dead == 0 {
        task_flags::GROUP_DEAD_UNKNOWN
    } else {
        // SAFETY: offset from the format file.
        match unsafe { ctx.read_at::<u8>(offsets.exit_group_dead as usize) } {
            Ok(0) => 0,
            Ok(_) => task_flags::GROUP_DEAD,
            Err(_) => task_flags::GROUP_DEAD_UNKNOWN,
        }
    };
    if flags & task_flags::GROUP_DEAD != 0 {
        unwatch(tgid);
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ship(EventKind::TaskExit, tid, flags, comm, false);
    0
}

/// task/task_rename: a thread of a watched process set its name.
#[tracepoint]
pub fn task_rename(ctx: TracePointContext) -> u32 {
    let (tgid, _) = current();
    if !is_watched(tgid) {
        return 0;
    }
    let offsets = task_offsets();
    // SAFETY: offset from the format file.
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(offsets.rename_pid as usize) }) else {
        return 0;
    };
    ship(
        EventKind::TaskRename,
        pid as u32,
        0,
        read_comm(&ctx, offsets.rename_newcomm),
        false,
    );
    0
}
