//! A process's open fds. Every insert and removal goes through here so that
//! the count of fds holding each socket stays right whatever path closed
//! them (close, close_range, dup2 over, exec, reconciliation).

use super::{FdEntry, FdId};
use crate::fastmap::FastMap;

#[derive(Clone, Debug, Default)]
pub struct FdTable {
    fds: FastMap<u32, FdEntry>,
    /// socket inode -> how many of this process's fds hold it.
    socket_refs: FastMap<u64, u32>,
}

impl FdTable {
    pub fn get(&self, fd: &u32) -> Option<&FdEntry> {
        self.fds.get(fd)
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &FdEntry)> {
        self.fds.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &u32> {
        self.fds.keys()
    }

    pub fn values(&self) -> impl Iterator<Item = &FdEntry> {
        self.fds.values()
    }

    /// Whether `id` is still open, as that incarnation, with no socket inode.
    pub fn is_unbound(&self, id: FdId) -> bool {
        self.fds
            .get(&id.fd)
            .is_some_and(|e| e.birth.ts_ns == id.born_ns && e.inode == 0)
    }

    /// Whether any fd of this process holds the socket.
    pub fn holds_socket(&self, inode: u64) -> bool {
        self.socket_refs.contains_key(&inode)
    }

    fn hold(&mut self, entry: &FdEntry) {
        if entry.inode != 0 {
            *self.socket_refs.entry(entry.inode).or_default() += 1;
        }
    }

    /// Returns the socket inode this entry's removal let go of entirely.
    fn let_go(&mut self, entry: &FdEntry) -> Option<u64> {
        if entry.inode == 0 {
            return None;
        }
        let refs = self.socket_refs.get_mut(&entry.inode)?;
        *refs -= 1;
        if *refs == 0 {
            self.socket_refs.remove(&entry.inode);
            return Some(entry.inode);
        }
        None
    }

    /// Inserts or replaces; returns the replaced entry and a socket inode
    /// the replacement let go of.
    pub fn insert(&mut self, fd: u32, entry: FdEntry) -> (Option<FdEntry>, Option<u64>) {
        self.hold(&entry);
        let old = self.fds.insert(fd, entry);
        let released = old.as_ref().and_then(|old| self.let_go(old));
        (old, released)
    }

    pub fn remove(&mut self, fd: &u32) -> (Option<FdEntry>, Option<u64>) {
        let old = self.fds.remove(fd);
        let released = old.as_ref().and_then(|old| self.let_go(old));
        (old, released)
    }

    /// Keeps the fds `keep` says yes to; returns the socket inodes let go of.
    pub fn retain(&mut self, mut keep: impl FnMut(&u32, &FdEntry) -> bool) -> Vec<u64> {
        let doomed: Vec<u32> = self
            .fds
            .iter()
            .filter(|(fd, e)| !keep(fd, e))
            .map(|(fd, _)| *fd)
            .collect();
        doomed.iter().filter_map(|fd| self.remove(fd).1).collect()
    }

    pub fn get_mut(&mut self, fd: &u32) -> Option<FdEntryMut<'_>> {
        let entry = self.fds.get_mut(fd)?;
        Some(FdEntryMut {
            entry,
            socket_refs: &mut self.socket_refs,
        })
    }

    /// Every socket inode this process holds.
    pub fn sockets(&self) -> impl Iterator<Item = u64> + '_ {
        self.socket_refs.keys().copied()
    }
}

/// A mutable fd entry whose socket inode can be learned (from /proc) while
/// the counts stay right.
pub struct FdEntryMut<'a> {
    pub entry: &'a mut FdEntry,
    socket_refs: &'a mut FastMap<u64, u32>,
}

impl FdEntryMut<'_> {
    /// Records the socket inode /proc shows for this fd.
    pub fn set_inode(&mut self, inode: u64) {
        if self.entry.inode == inode {
            return;
        }
        if self.entry.inode != 0
            && let Some(refs) = self.socket_refs.get_mut(&self.entry.inode)
        {
            *refs -= 1;
            if *refs == 0 {
                self.socket_refs.remove(&self.entry.inode);
            }
        }
        self.entry.inode = inode;
        if inode != 0 {
            *self.socket_refs.entry(inode).or_default() += 1;
        }
    }

    /// Binds the fd to the TCP socket its connect() or listen() named.
    pub fn bind_tcp(&mut self, inode: u64) {
        self.entry.kind = crate::fdkind::FdKind::SocketTcp;
        self.entry.provisional = false;
        self.set_inode(inode);
    }
}

impl std::ops::Index<&u32> for FdTable {
    type Output = FdEntry;

    fn index(&self, fd: &u32) -> &FdEntry {
        &self.fds[fd]
    }
}

impl FromIterator<(u32, FdEntry)> for FdTable {
    fn from_iter<I: IntoIterator<Item = (u32, FdEntry)>>(iter: I) -> Self {
        let mut table = FdTable::default();
        for (fd, entry) in iter {
            table.insert(fd, entry);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::{NO_FD, NO_SYSCALL};

    use super::*;
    use crate::{
        fdkind::FdKind,
        ledger::{Birth, Origin},
    };

    fn socket(inode: u64) -> FdEntry {
        FdEntry {
            kind: FdKind::SocketTcp,
            provisional: false,
            birth: Birth {
                ts_ns: 0,
                tid: 0,
                thread: [0; 16],
                syscall: NO_SYSCALL,
                origin: Origin::Syscall,
                call: None,
            },
            source_fd: NO_FD,
            inode,
        }
    }

    #[test]
    fn a_socket_is_let_go_with_its_last_fd() {
        let mut table = FdTable::default();
        table.insert(3, socket(77));
        table.insert(4, socket(77)); // a dup
        assert_eq!(table.remove(&3).1, None);
        assert!(table.holds_socket(77));
        assert_eq!(table.remove(&4).1, Some(77));
        assert!(!table.holds_socket(77));
    }

    #[test]
    fn replacing_and_retaining_let_go_too() {
        let mut table = FdTable::default();
        table.insert(3, socket(77));
        let (old, released) = table.insert(3, socket(88));
        assert_eq!((old.map(|o| o.inode), released), (Some(77), Some(77)));
        table.insert(5, socket(99));
        assert_eq!(table.retain(|fd, _| *fd == 3), vec![99]);
        let mut entry = table.get_mut(&3).unwrap();
        entry.set_inode(11);
        assert!(table.holds_socket(11) && !table.holds_socket(88));
        assert_eq!(table.sockets().collect::<Vec<_>>(), [11]);
    }
}
