//! Copies of TCP socket fds that the ledger holds with no inode yet.
//!
//! The probes do not walk socket(), so a TCP socket's fd learns its inode
//! only when connect() or listen() moves the socket out of CLOSE, and only
//! the fd that call named. A dup made before then holds the same socket.
//! This remembers such copies so that the bind reaches all of them, whichever
//! one connects. Without it, closing the fd that connected would drop a
//! socket that its copy still holds, until the next reconciliation.
//!
//! An fd is named together with its birth time. A copy of an fd number that
//! has since been closed and reused is then never taken for a copy of the
//! new fd.

/// One incarnation of an fd: its number and when it was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdId {
    pub fd: u32,
    pub born_ns: u64,
}

/// Pairs kept per process. When the list is full, pairs whose fds are all
/// gone are dropped first, then the oldest. A dropped copy still learns its
/// inode at the next reconciliation with /proc.
const KEPT: usize = 64;

/// (copy, original) pairs, oldest first.
#[derive(Clone, Debug, Default)]
pub struct UnboundCopies {
    pairs: Vec<(FdId, FdId)>,
}

impl UnboundCopies {
    /// Records that `copy` was duplicated from `original`. `live` says
    /// whether an fd is still open with no inode.
    pub fn note(&mut self, copy: FdId, original: FdId, live: impl Fn(FdId) -> bool) {
        if self.pairs.len() >= KEPT {
            self.pairs.retain(|(a, b)| live(*a) || live(*b));
        }
        if self.pairs.len() >= KEPT {
            self.pairs.remove(0);
        }
        self.pairs.push((copy, original));
    }

    /// Takes out every fd that shares `bound`'s socket through a chain of
    /// copies in either direction, `bound` excluded. The result can include
    /// fds that are closed by now: the caller checks each one.
    pub fn take_group(&mut self, bound: FdId) -> Vec<FdId> {
        if self.pairs.is_empty() {
            return Vec::new();
        }
        let mut group = vec![bound];
        loop {
            let before = group.len();
            for (copy, original) in &self.pairs {
                match (group.contains(copy), group.contains(original)) {
                    (true, false) => group.push(*original),
                    (false, true) => group.push(*copy),
                    _ => {}
                }
            }
            if group.len() == before {
                break;
            }
        }
        self.pairs
            .retain(|(copy, original)| !group.contains(copy) && !group.contains(original));
        group.remove(0);
        group
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(fd: u32, born_ns: u64) -> FdId {
        FdId { fd, born_ns }
    }

    #[test]
    fn a_chain_of_copies_is_one_group_from_either_end() {
        let mut copies = UnboundCopies::default();
        copies.note(id(4, 20), id(3, 10), |_| true);
        copies.note(id(5, 30), id(4, 20), |_| true);
        copies.note(id(9, 40), id(8, 5), |_| true); // another socket
        let mut group = copies.take_group(id(5, 30));
        group.sort_by_key(|f| f.fd);
        assert_eq!(group, vec![id(3, 10), id(4, 20)]);
        assert_eq!(copies.len(), 1, "the other socket's pair stays");
        assert_eq!(copies.take_group(id(8, 5)), vec![id(9, 40)]);
    }

    #[test]
    fn a_reused_fd_number_is_not_the_original() {
        let mut copies = UnboundCopies::default();
        copies.note(id(4, 20), id(3, 10), |_| true);
        // fd 3 was closed and is a new socket now (born at 50).
        assert!(copies.take_group(id(3, 50)).is_empty());
        assert_eq!(copies.take_group(id(3, 10)), vec![id(4, 20)]);
    }

    #[test]
    fn a_full_list_drops_dead_pairs_first_then_the_oldest() {
        let mut copies = UnboundCopies::default();
        for n in 0..KEPT as u64 {
            copies.note(id(100, n), id(99, n), |_| true);
        }
        // Every pair but the first is dead: they go, the live one stays.
        copies.note(id(7, 1000), id(6, 1000), |f| f.born_ns == 0);
        assert_eq!(copies.len(), 2);
        assert_eq!(copies.take_group(id(99, 0)), vec![id(100, 0)]);
        for n in 0..KEPT as u64 {
            copies.note(id(200, n), id(199, n), |_| true);
        }
        assert!(
            copies.take_group(id(6, 1000)).is_empty(),
            "all live: the oldest went"
        );
        assert_eq!(copies.len(), KEPT);
    }
}
