//! Socket tables from netlink sock_diag: one dump per protocol gives every
//! socket of the network namespace with its inode, which is how an fd's
//! `socket:[N]` is joined to its addresses and state. Much cheaper than
//! parsing /proc/net/*, and what `ss` does.

use std::{
    borrow::Cow,
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto, socket,
};
use serde::{Deserialize, Serialize};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HEADER: usize = 16;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const AF_UNIX: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

pub use monitor_common::TCP_LISTEN;

/// The state number of a [`tcp_state_name`].
pub fn tcp_state_number(name: &str) -> Option<u8> {
    (1..=12).find(|n| tcp_state_name(*n) == name)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Unix,
}

/// One socket as sock_diag (or /proc/PID/net) reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    pub protocol: Protocol,
    pub inode: u64,
    /// TCP state name; for UDP "UNCONN"/"ESTABLISHED"; unix: "LISTEN"/"ESTABLISHED"/"UNCONN".
    /// Borrowed (the names are constants): a snapshot holds one per socket.
    pub state: Cow<'static, str>,
    /// `ip:port`, or the unix path ("" when unnamed).
    pub local: String,
    /// `ip:port`, or for unix "peer inode N" when the kernel gives it.
    pub remote: String,
    /// Unix only: stream, dgram or seqpacket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_inode: Option<u64>,
}

/// All sockets of the namespace by inode.
#[derive(Debug, Default)]
pub struct SocketTable {
    pub by_inode: HashMap<u64, SocketInfo>,
}

impl SocketTable {
    /// Dumps TCP and UDP (v4 and v6) and unix sockets.
    pub fn dump() -> io::Result<SocketTable> {
        let mut table = SocketTable::default();
        let sock = open()?;
        for family in [AF_INET, AF_INET6] {
            for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
                dump_inet(&sock, family, protocol, &mut table, &|_| true)?;
            }
        }
        dump_unix(&sock, &mut table)?;
        Ok(table)
    }

    /// Dumps the TCP sockets (v4 and v6) whose inode `keep` accepts. The
    /// daemon's table is then as large as what it watches, not as the host:
    /// 10k sockets of other processes cost it 4.6 MiB of heap otherwise.
    pub fn dump_tcp(keep: impl Fn(u64) -> bool) -> io::Result<SocketTable> {
        let mut table = SocketTable::default();
        let sock = open()?;
        for family in [AF_INET, AF_INET6] {
            dump_inet(&sock, family, IPPROTO_TCP, &mut table, &keep)?;
        }
        Ok(table)
    }

    /// Dumps unix sockets only.
    pub fn dump_unix() -> io::Result<SocketTable> {
        let mut table = SocketTable::default();
        dump_unix(&open()?, &mut table)?;
        Ok(table)
    }
}

fn open() -> io::Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    bind(sock.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    Ok(sock)
}

fn request(sock: &OwnedFd, payload: &[u8]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(NLMSG_HEADER + payload.len());
    msg.extend_from_slice(&((NLMSG_HEADER + payload.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    msg.extend_from_slice(payload);
    sendto(sock.as_raw_fd(), &msg, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
    Ok(())
}

/// Reads dump replies until NLMSG_DONE, handing each message body to `each`.
fn read_dump(sock: &OwnedFd, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut at = 0;
        while at + NLMSG_HEADER <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4")) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2"));
            if len < NLMSG_HEADER || at + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed netlink message",
                ));
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4"));
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => each(&buf[at + NLMSG_HEADER..at + len]),
            }
            at += (len + 3) & !3;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

fn dump_inet(
    sock: &OwnedFd,
    family: u8,
    protocol: u8,
    table: &mut SocketTable,
    keep: &dyn Fn(u64) -> bool,
) -> io::Result<()> {
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then a
    // zeroed inet_diag_sockid (48 bytes) to match everything.
    let mut req = vec![family, protocol, 0, 0];
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.resize(56, 0);
    request(sock, &req)?;
    read_dump(sock, |body| {
        if let Some(info) = parse_inet(body, protocol)
            && keep(info.inode)
        {
            table.by_inode.insert(info.inode, info);
        }
    })
}

/// struct inet_diag_msg: family, state, timer, retrans, sockid (sport/dport
/// big-endian, src/dst 16 bytes each, if, cookie), expires, rqueue, wqueue,
/// uid, inode.
fn parse_inet(body: &[u8], protocol: u8) -> Option<SocketInfo> {
    if body.len() < 72 {
        return None;
    }
    let inode = u32::from_ne_bytes(body[68..72].try_into().ok()?) as u64;
    Some(inet_info(
        InetSocket {
            family: body[0],
            protocol,
            state: body[1],
            local: (
                body[8..24].try_into().ok()?,
                u16::from_be_bytes([body[4], body[5]]),
            ),
            remote: (
                body[24..40].try_into().ok()?,
                u16::from_be_bytes([body[6], body[7]]),
            ),
        },
        inode,
    ))
}

/// A TCP or UDP socket as the kernel keeps it: addresses in the first 4
/// bytes for IPv4, ports in host order.
pub struct InetSocket {
    pub family: u8,
    pub protocol: u8,
    pub state: u8,
    pub local: ([u8; 16], u16),
    pub remote: ([u8; 16], u16),
}

/// The socket as sock_diag would report it (names as `ss` shows them).
pub fn inet_info(socket: InetSocket, inode: u64) -> SocketInfo {
    let family = socket.family;
    let addr = |bytes: [u8; 16]| -> IpAddr {
        if family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
    };
    let (src, sport) = (addr(socket.local.0), socket.local.1);
    let (dst, dport) = (addr(socket.remote.0), socket.remote.1);
    let (protocol, state) = if socket.protocol == IPPROTO_TCP {
        (Protocol::Tcp, tcp_state_name(socket.state))
    } else {
        let state = if socket.state == 1 {
            "ESTABLISHED"
        } else {
            "UNCONN"
        };
        (Protocol::Udp, state)
    };
    SocketInfo {
        protocol,
        inode,
        state: state.into(),
        local: endpoint_text(src, sport),
        remote: endpoint_text(dst, dport),
        unix_type: None,
        peer_inode: None,
    }
}

/// `ip:port` exactly as `SocketAddr` displays it. IPv4 is written by hand:
/// the formatting machinery cost more than the rest of a socket's snapshot.
fn endpoint_text(ip: IpAddr, port: u16) -> String {
    let IpAddr::V4(v4) = ip else {
        return SocketAddr::new(ip, port).to_string();
    };
    let mut text = String::with_capacity("255.255.255.255:65535".len());
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        push_decimal(&mut text, octet.into());
    }
    text.push(':');
    push_decimal(&mut text, port.into());
    text
}

fn push_decimal(text: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    text.extend(digits[start..].iter().map(|&d| d as char));
}

fn dump_unix(sock: &OwnedFd, table: &mut SocketTable) -> io::Result<()> {
    // struct unix_diag_req: family, protocol, pad, states, ino, show, cookie.
    let mut req = vec![AF_UNIX, 0, 0, 0];
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    req.extend_from_slice(&[0u8; 8]);
    request(sock, &req)?;
    read_dump(sock, |body| {
        if let Some(info) = parse_unix(body) {
            table.by_inode.insert(info.inode, info);
        }
    })
}

/// struct unix_diag_msg (family, type, state, pad, ino, cookie) + attributes.
fn parse_unix(body: &[u8]) -> Option<SocketInfo> {
    if body.len() < 16 {
        return None;
    }
    let unix_type = match body[1] {
        1 => "stream",
        2 => "dgram",
        5 => "seqpacket",
        _ => "other",
    };
    let state = match body[2] {
        1 => "ESTABLISHED",
        10 => "LISTEN",
        _ => "UNCONN",
    };
    let inode = u32::from_ne_bytes(body[4..8].try_into().ok()?) as u64;
    let mut path = String::new();
    let mut peer = None;
    let mut at = 16;
    while at + 4 <= body.len() {
        let len = u16::from_ne_bytes([body[at], body[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([body[at + 2], body[at + 3]]);
        if len < 4 || at + len > body.len() {
            break;
        }
        let value = &body[at + 4..at + len];
        match kind {
            UNIX_DIAG_NAME => path = unix_path(value),
            UNIX_DIAG_PEER if value.len() >= 4 => {
                peer = Some(u32::from_ne_bytes(value[..4].try_into().ok()?) as u64);
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Some(SocketInfo {
        protocol: Protocol::Unix,
        inode,
        state: state.into(),
        local: path,
        remote: peer.map(|p| format!("peer inode {p}")).unwrap_or_default(),
        unix_type: Some(unix_type.to_string()),
        peer_inode: peer,
    })
}

/// Abstract names start with NUL; shown with a leading '@' like ss does.
fn unix_path(raw: &[u8]) -> String {
    match raw.split_first() {
        Some((0, rest)) => format!(
            "@{}",
            String::from_utf8_lossy(rest.split(|b| *b == 0).next().unwrap_or(rest))
        ),
        _ => String::from_utf8_lossy(raw.split(|b| *b == 0).next().unwrap_or(raw)).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::{fd::AsRawFd as _, unix::net::UnixListener},
    };

    use super::*;

    fn inode_of(fd: i32) -> u64 {
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        crate::proc::link_inode(target.to_str().unwrap()).unwrap()
    }

    #[test]
    fn endpoint_text_is_what_socket_addr_displays() {
        for (ip, port) in [
            ("0.0.0.0", 0),
            ("127.0.0.1", 6385),
            ("10.20.255.9", 65535),
            ("255.255.255.255", 9),
            ("::1", 5672),
            ("fe80::1:2", 80),
            ("::ffff:192.0.2.10", 443),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(endpoint_text(ip, port), SocketAddr::new(ip, port).to_string());
        }
    }

    #[test]
    fn finds_own_tcp_and_unix_sockets_with_state() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("leakmon-sockdiag-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let unix = UnixListener::bind(&dir).unwrap();

        let table = SocketTable::dump().unwrap();
        let listen = &table.by_inode[&inode_of(listener.as_raw_fd())];
        assert_eq!(
            (listen.protocol, listen.state.as_ref()),
            (Protocol::Tcp, "LISTEN")
        );
        let conn = &table.by_inode[&inode_of(client.as_raw_fd())];
        assert_eq!(conn.state, "ESTABLISHED");
        assert_eq!(conn.remote, listener.local_addr().unwrap().to_string());
        let unix_info = &table.by_inode[&inode_of(unix.as_raw_fd())];
        assert_eq!(
            (unix_info.state.as_ref(), unix_info.local.as_str()),
            ("LISTEN", dir.to_str().unwrap())
        );
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn a_tcp_dump_keeps_only_the_inodes_asked_for() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (wanted, other) = (inode_of(client.as_raw_fd()), inode_of(listener.as_raw_fd()));
        let table = SocketTable::dump_tcp(|inode| inode == wanted).unwrap();
        assert_eq!(table.by_inode.keys().collect::<Vec<_>>(), [&wanted]);
        assert_eq!(table.by_inode[&wanted].state, "ESTABLISHED");
        assert!(SocketTable::dump().unwrap().by_inode.contains_key(&other));
    }

    #[test]
    fn short_or_garbled_messages_are_skipped() {
        assert_eq!(parse_inet(&[0; 10], IPPROTO_TCP), None);
        assert_eq!(parse_unix(&[1, 2]), None);
        let mut body = vec![AF_UNIX, 1, 1, 0, 5, 0, 0, 0];
        body.resize(16, 0);
        body.extend_from_slice(&[200, 0, 0, 0]); // attribute longer than the body
        let info = parse_unix(&body).unwrap();
        assert_eq!((info.inode, info.local.as_str()), (5, ""));
        assert_eq!(unix_path(b"\0abstract\0"), "@abstract");
    }
}
