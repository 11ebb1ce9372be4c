//! /proc/PID/net/{tcp,tcp6,udp,udp6}: the fallback socket table for sockets
//! sock_diag cannot see (a process in another network namespace), since
//! /proc/PID/net shows the namespace of that process.

use std::{
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
}
