//! The probes' links, detached side by side.
//!
//! Detaching a tracepoint or a uprobe waits for RCU grace periods (80-110 ms
//! each on this VM kind), and aya detaches an object's links one after
//! another: the daemon took 4.8 s to stop, 56 of those waits in a row.
//! Waits that run at the same time share their grace periods, so each link
//! is dropped on a thread of its own.

/// Links taken out of their programs (aya detaches a link when it drops).
#[derive(Default)]
pub struct Links(Vec<Box<dyn Send>>);

impl Links {
    pub fn push(&mut self, link: impl Send + 'static) {
        self.0.push(Box::new(link));
    }

    /// Moves `other`'s links into these.
    pub fn append(&mut self, other: &mut Links) {
        self.0.append(&mut other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Detaches every link, side by side; returns once all are detached.
    pub fn detach(&mut self) {
        std::thread::scope(|scope| {
            for link in self.0.drain(..) {
                // A thread that cannot start drops its closure, and with it
                // the link, here: that one is detached in line.
                let _ = std::thread::Builder::new()
                    .name("detach".into())
                    .spawn_scoped(scope, move || drop(link));
            }
        });
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
            Arc,
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
            links.push(Waits {
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
}
