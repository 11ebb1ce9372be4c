//! The probes' links, detached side by side where that is safe.
//!
//! Detaching a tracepoint or a uprobe waits for RCU grace periods (80-110 ms
//! each on this VM kind), and aya detaches an object's links one after
//! another: the daemon took 4.8 s to stop, 56 of those waits in a row.
//! Waits that run at the same time share their grace periods, so links are
//! dropped on a thread each. The kernel still makes part of each wait under
//! its `event_mutex`, one link at a time.
//!
//! Not all of them, though. Detaching a tracepoint's last program turns its
//! static key off, which patches kernel text through int3 breakpoints. In a
//! 6.8 guest under QEMU's TCG, a detach thread returning from a syscall
//! through `syscall_exit_work` while another one's detach patched it hit such
//! a breakpoint and crashed the guest (real CPUs honour the kernel's
//! cross-CPU sync; TCG at times does not). So the links whose detach may
//! patch text go last, one at a time on the calling thread, once the other
//! threads are gone: every tracepoint's but the per-syscall events' (those
//! sit on the two `raw_syscalls` tracepoints, whose keys turn off only when
//! their last event goes: one `sys_enter_*` and one `sys_exit_*` link wait
//! for the second pass).

/// Links taken out of their programs (aya detaches a link when it drops).
#[derive(Default)]
pub struct Links {
    /// Detached side by side, first: none of these patches kernel text.
    side_by_side: Vec<Box<dyn Send>>,
    /// Detached one at a time, once the others are.
    in_turn: Vec<Box<dyn Send>>,
    /// Whether a `sys_enter_*` / `sys_exit_*` link is in `in_turn`.
    kept_enter: bool,
    kept_exit: bool,
}

impl Links {
    /// A uprobe's link (its detach patches the process's text, not the kernel's).
    pub fn push_uprobe(&mut self, link: impl Send + 'static) {
        self.side_by_side.push(Box::new(link));
    }

    /// The link of tracepoint `category`/`event` (see the module comment).
    pub fn push_tracepoint(&mut self, link: impl Send + 'static, category: &str, event: &str) {
        let link: Box<dyn Send> = Box::new(link);
        let kept = match category {
            "syscalls" if event.starts_with("sys_enter_") => &mut self.kept_enter,
            "syscalls" if event.starts_with("sys_exit_") => &mut self.kept_exit,
            _ => return self.in_turn.push(link),
        };
        if *kept {
            self.side_by_side.push(link);
        } else {
            *kept = true;
            self.in_turn.push(link);
        }
    }

    /// Moves `other`'s links into these.
    pub fn append(&mut self, other: &mut Links) {
        self.side_by_side.append(&mut other.side_by_side);
        self.in_turn.append(&mut other.in_turn);
    }

    pub fn len(&self) -> usize {
        self.side_by_side.len() + self.in_turn.len()
    }

    /// Detaches every link; returns once all are detached.
    pub fn detach(&mut self) {
        std::thread::scope(|scope| {
            for link in self.side_by_side.drain(..) {
                // A thread that cannot start drops its closure, and with it
                // the link, here: that one is detached in line.
                let _ = std::thread::Builder::new()
                    .name("detach".into())
                    .spawn_scoped(scope, move || drop(link));
            }
        });
        // Those threads are gone: none returns from a syscall while these
        // patch the kernel.
        self.in_turn.drain(..).for_each(drop);
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering::SeqCst},
        },
        time::{Duration, Instant},
    };

    use super::Links;

    const LINKS: usize = 4;

    /// Stands for a link whose detach waits: it waits until every other one
    /// has begun to drop too, which happens only if they drop side by side
    /// (one after another, each gives up after a second and counts a miss).
    struct Waits {
        dropping: Arc<AtomicUsize>,
        missed: Arc<AtomicUsize>,
    }

    impl Drop for Waits {
        fn drop(&mut self) {
            self.dropping.fetch_add(1, SeqCst);
            let deadline = Instant::now() + Duration::from_secs(1);
            while self.dropping.load(SeqCst) < LINKS {
                if Instant::now() > deadline {
                    self.missed.fetch_add(1, SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn links_are_detached_side_by_side_and_all_before_detach_returns() {
        let (dropping, missed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut links = Links::default();
        for _ in 0..LINKS {
            links.push_uprobe(Waits {
                dropping: dropping.clone(),
                missed: missed.clone(),
            });
        }
        links.detach();
        assert_eq!(links.len(), 0);
        assert_eq!(
            dropping.load(SeqCst),
            LINKS,
            "every link dropped before detach returned"
        );
        assert_eq!(missed.load(SeqCst), 0, "the links were dropped one after another");
    }

    /// Stands for a link: says when it drops.
    struct Named(&'static str, Arc<Mutex<Vec<&'static str>>>);

    impl Drop for Named {
        fn drop(&mut self) {
            self.1.lock().unwrap().push(self.0);
        }
    }

    #[test]
    fn links_that_may_patch_kernel_text_go_last_one_at_a_time() {
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let mut links = Links::default();
        for (name, category, event) in [
            ("first enter", "syscalls", "sys_enter_close"),
            ("enter", "syscalls", "sys_enter_write"),
            ("first exit", "syscalls", "sys_exit_openat"),
            ("exit", "syscalls", "sys_exit_dup"),
            ("sched", "sched", "sched_process_exit"),
            ("btf", "btf", "inet_sock_set_state"),
        ] {
            links.push_tracepoint(Named(name, dropped.clone()), category, event);
        }
        links.push_uprobe(Named("uprobe", dropped.clone()));
        links.detach();
        let mut dropped = dropped.lock().unwrap().clone();
        let in_turn = dropped.split_off(3);
        dropped.sort();
        assert_eq!(dropped, ["enter", "exit", "uprobe"], "side by side, first");
        assert_eq!(in_turn, ["first enter", "first exit", "sched", "btf"]);
    }
}
