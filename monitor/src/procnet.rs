//! /proc/PID/net/{tcp,tcp6,udp,udp6}: the fallback socket table for sockets
//! sock_diag cannot see (a process in another network namespace, or a host
//! where the diag modules cannot be loaded), since /proc/PID/net shows the
//! namespace of that process.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::sockdiag::{Protocol, SocketInfo, SocketTable, tcp_state_name};

impl SocketTable {
    pub fn from_proc_net(pid: u32) -> SocketTable {
        let mut table = SocketTable::default();
        for (file, protocol) in [
            ("tcp", Protocol::Tcp),
            ("tcp6", Protocol::Tcp),
            ("udp", Protocol::Udp),
            ("udp6", Protocol::Udp),
        ] {
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
                continue;
            };
            for info in text.lines().skip(1).filter_map(|line| parse_line(line, protocol)) {
                table.by_inode.insert(info.inode, info);
            }
        }
        table
    }

    /// Adds the TCP sockets of `wanted` (inode -> owner) this table lacks,
    /// from /proc/PID/net of a process that holds each (`holder`; the owner
    /// may be gone): each network namespace is read once, and the daemon's
    /// own only when sock_diag could not be asked (`diag_listed_own` false),
    /// since otherwise sock_diag listed all of it.
    pub fn add_from_proc_net(
        &mut self,
        wanted: &HashMap<u64, u32>,
        diag_listed_own: bool,
        holder: impl Fn(u64) -> Option<u32>,
    ) {
        let own = network_namespace("self");
        let mut read: HashSet<String> = HashSet::new();
        let missing: Vec<u64> = (wanted.keys())
            .filter(|inode| !self.by_inode.contains_key(inode))
            .copied()
            .collect();
        for inode in missing {
            if self.by_inode.contains_key(&inode) {
                continue;
            }
            // The owner first: looking a holder up walks every watched fd.
            let owner = wanted[&inode];
            let found = network_namespace(&owner.to_string())
                .map(|ns| (owner, ns))
                .or_else(|| {
                    let pid = holder(inode)?;
                    Some((pid, network_namespace(&pid.to_string())?))
                });
            let Some((pid, namespace)) = found else { continue };
            if (diag_listed_own && Some(&namespace) == own.as_ref()) || !read.insert(namespace) {
                continue;
            }
            for (inode, info) in SocketTable::from_proc_net(pid).by_inode {
                if info.protocol == Protocol::Tcp && wanted.contains_key(&inode) {
                    self.by_inode.entry(inode).or_insert(info);
                }
            }
        }
    }
}

/// `net:[4026531840]` for `/proc/WHO/ns/net` (WHO a pid or `self`).
fn network_namespace(who: &str) -> Option<String> {
    let link = fs::read_link(format!("/proc/{who}/ns/net")).ok()?;
    Some(link.to_string_lossy().into_owned())
}

fn parse_line(line: &str, protocol: Protocol) -> Option<SocketInfo> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 {
        return None;
    }
    let local = parse_addr(fields[1])?;
    let remote = parse_addr(fields[2])?;
    let state = u8::from_str_radix(fields[3], 16).ok()?;
    let inode = fields[9].parse().ok()?;
    let state = match protocol {
        Protocol::Tcp => tcp_state_name(state),
        _ if state == 1 => "ESTABLISHED",
        _ => "UNCONN",
    };
    Some(SocketInfo {
        protocol,
        inode,
        state: state.into(),
        local: local.to_string(),
        remote: remote.to_string(),
        unix_type: None,
        peer_inode: None,
    })
}

/// `0100007F:1F90` (IPv4, host byte order words) or 32 hex digits for IPv6.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_lines() {
        let line = "   0: 0100007F:18F1 0100007F:A2C4 08 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1";
        let info = parse_line(line, Protocol::Tcp).unwrap();
        assert_eq!(info.local, "127.0.0.1:6385");
        assert_eq!(info.remote, "127.0.0.1:41668");
        assert_eq!((info.state.as_ref(), info.inode), ("CLOSE_WAIT", 4242));
        let v6 = parse_addr("00000000000000000000000001000000:0050").unwrap();
        assert_eq!(v6.to_string(), "[::1]:80");
        assert!(parse_line("garbage", Protocol::Tcp).is_none());
        assert!(parse_addr("zz:1").is_none());
    }

    #[test]
    fn own_namespace_table_is_readable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let table = SocketTable::from_proc_net(std::process::id());
        let port = listener.local_addr().unwrap().to_string();
        assert!(
            table
                .by_inode
                .values()
                .any(|s| s.local == port && s.state == "LISTEN")
        );
    }

    /// The inode of a socket of this process, from its fd's link.
    fn inode_of(socket: &impl std::os::fd::AsRawFd) -> u64 {
        let link = fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).unwrap();
        crate::proc::link_inode(&link.to_string_lossy()).unwrap()
    }

    #[test]
    fn sockets_sock_diag_did_not_list_are_added_from_a_holder() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let (client_inode, listener_inode) = (inode_of(&client), inode_of(&listener));
        let me = std::process::id();
        let wanted = HashMap::from([(client_inode, me), (listener_inode, me)]);
        // sock_diag listed this namespace: nothing more is read for it.
        let mut table = SocketTable::default();
        table.add_from_proc_net(&wanted, true, |_| Some(me));
        assert!(table.by_inode.is_empty());
        // It could not be asked: only what is wanted, from /proc/self/net.
        table.add_from_proc_net(&wanted, false, |_| Some(me));
        assert_eq!(table.by_inode.len(), 2, "{:?}", table.by_inode);
        assert_eq!(table.by_inode[&client_inode].state, "ESTABLISHED");
        drop(accepted);
        let mut table = SocketTable::default();
        table.add_from_proc_net(&wanted, false, |_| Some(me));
        assert_eq!(table.by_inode[&client_inode].state, "CLOSE_WAIT");
        assert_eq!(table.by_inode[&listener_inode].state, "LISTEN");
        // Its owner gone: read from a holder; none left: left out.
        let gone = HashMap::from([(client_inode, u32::MAX)]);
        let mut table = SocketTable::default();
        table.add_from_proc_net(&gone, false, |_| Some(me));
        assert_eq!(table.by_inode[&client_inode].state, "CLOSE_WAIT");
        let mut table = SocketTable::default();
        table.add_from_proc_net(&gone, false, |_| None);
        assert!(table.by_inode.is_empty());
    }
}
