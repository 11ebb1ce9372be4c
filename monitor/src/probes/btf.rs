//! Just enough of a BTF reader to find struct member offsets in the
//! kernel's own type information (/sys/kernel/btf/vmlinux). The probes are
//! written in Rust, which cannot emit CO-RE relocations (platform.md), so
//! user space looks offsets up here and hands them to the probes.

use std::collections::HashMap;

use monitor_common::SockOffsets;
use thiserror::Error;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (bad magic or header)")]
    BadHeader,
    #[error("BTF type section is truncated at byte {0}")]
    Truncated(usize),
    #[error("BTF kind {0} is unknown to this reader")]
    UnknownKind(u32),
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {0} has no member {1}")]
    NoMember(String, String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug)]
struct Composite {
    members: Vec<Member>,
}

/// Structs and unions of a BTF blob, by type id, with the string section.
pub struct Btf {
    strings: Vec<u8>,
    composites: HashMap<u32, Composite>,
    by_name: HashMap<String, u32>,
    /// type id -> the type it refers to (typedef/const/volatile ...), to see
    /// through to anonymous structs.
    refs: HashMap<u32, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or(BtfError::Truncated(at))
}

impl Btf {
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::BadHeader)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::BadHeader)?
            .to_vec();
        let mut btf = Btf {
            strings,
            composites: HashMap::new(),
            by_name: HashMap::new(),
            refs: HashMap::new(),
        };
        let mut at = 0;
        let mut id = 1;
        while at < types.len() {
            let name = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let size_or_type = u32_at(types, at + 8)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let kind_flag = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for m in 0..vlen {
                        let base = at + m * 12;
                        let offset = u32_at(types, base + 8)?;
                        members.push(Member {
                            name: u32_at(types, base)?,
                            type_id: u32_at(types, base + 4)?,
                            bit_offset: if kind_flag { offset & 0x00ff_ffff } else { offset },
                        });
                    }
                    btf.composites.insert(id, Composite { members });
                    if name != 0 && kind == KIND_STRUCT {
                        btf.by_name.entry(btf.string(name)).or_insert(id);
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                // typedef, volatile, const, restrict, type tag: see through them.
                8..=11 | 18 => {
                    btf.refs.insert(id, size_or_type);
                    0
                }
                // pointer, forward declaration, function, float.
                2 | 7 | 12 | 16 => 0,
                other => return Err(BtfError::UnknownKind(other)),
            };
            at += extra;
            if at > types.len() {
                return Err(BtfError::Truncated(at));
            }
            id += 1;
        }
        Ok(btf)
    }

    pub fn load() -> anyhow::Result<Btf> {
        let data = std::fs::read(VMLINUX)?;
        Ok(Btf::parse(&data)?)
    }

    fn string(&self, offset: u32) -> String {
        let tail = self.strings.get(offset as usize..).unwrap_or_default();
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        String::from_utf8_lossy(&tail[..end]).into_owned()
    }

    /// The composite a type id is, seeing through typedefs and qualifiers.
    fn composite(&self, mut id: u32) -> Option<&Composite> {
        for _ in 0..16 {
            if let Some(c) = self.composites.get(&id) {
                return Some(c);
            }
            id = *self.refs.get(&id)?;
        }
        None
    }

    /// Bit offset of `member` in composite `id`, looking inside anonymous
    /// structs and unions (where the kernel keeps many members).
    fn find(&self, id: u32, member: &str) -> Option<u32> {
        let composite = self.composite(id)?;
        for m in &composite.members {
            if m.name != 0 {
                if self.string(m.name) == member {
                    return Some(m.bit_offset);
                }
            } else if let Some(inner) = self.find(m.type_id, member) {
                return Some(m.bit_offset + inner);
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name`.
    pub fn offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        let bits = self
            .find(id, member)
            .ok_or_else(|| BtfError::NoMember(name.into(), member.into()))?;
        Ok(bits / 8)
    }

    /// What the fd -> socket walk of the probes needs.
    pub fn sock_offsets(&self) -> Result<SockOffsets, BtfError> {
        // struct sock starts with struct sock_common __sk_common.
        let common_at = self.offset("sock", "__sk_common")?;
        let common = |member: &str| Ok::<u32, BtfError>(common_at + self.offset("sock_common", member)?);
        Ok(SockOffsets {
            task_files: self.offset("task_struct", "files")?,
            files_fdt: self.offset("files_struct", "fdt")?,
            fdt_fd: self.offset("fdtable", "fd")?,
            file_private_data: self.offset("file", "private_data")?,
            file_f_inode: self.offset("file", "f_inode")?,
            inode_i_ino: self.offset("inode", "i_ino")?,
            socket_sk: self.offset("socket", "sk")?,
            sock_family: common("skc_family")?,
            sock_state: common("skc_state")?,
            sock_protocol: self.offset("sock", "sk_protocol")?,
            sock_err: self.offset("sock", "sk_err")?,
            skc_daddr: common("skc_daddr")?,
            skc_rcv_saddr: common("skc_rcv_saddr")?,
            skc_dport: common("skc_dport")?,
            skc_num: common("skc_num")?,
            skc_v6_daddr: common("skc_v6_daddr")?,
            skc_v6_rcv_saddr: common("skc_v6_rcv_saddr")?,
            file_f_path: self.offset("file", "f_path")?,
            inode_i_mode: self.offset("inode", "i_mode")?,
            sock_sk_socket: self.offset("sock", "sk_socket")?,
            socket_file: self.offset("socket", "file")?,
            task_tgid: self.offset("task_struct", "tgid")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Btf::parse(b"nope").err(), Some(BtfError::BadHeader));
        let mut header = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        header.extend_from_slice(&[0, 0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Btf::parse(&header).err(), Some(BtfError::BadHeader));
    }

    /// The running kernel's BTF: the offsets the probes need exist and
    /// are plausible (a file's private_data lies inside struct file, ...).
    #[test]
    fn finds_the_walk_offsets_in_this_kernels_btf() {
        let Ok(btf) = Btf::load() else {
            eprintln!("skipping: {VMLINUX} is not readable here");
            return;
        };
        let offsets = btf.sock_offsets().unwrap();
        assert!(offsets.known());
        assert!(
            offsets.task_files > 1000,
            "files is deep in task_struct: {offsets:?}"
        );
        assert_eq!(offsets.fdt_fd, 8, "fdtable: max_fds then fd: {offsets:?}");
        assert!(offsets.socket_sk < 64 && offsets.sock_family < 32, "{offsets:?}");
        // sock_common begins with the address pair and the port pair.
        assert_eq!((offsets.skc_daddr, offsets.skc_rcv_saddr), (0, 4), "{offsets:?}");
        assert_eq!((offsets.skc_dport, offsets.skc_num), (12, 14), "{offsets:?}");
        assert!(matches!(
            btf.offset("task_struct", "no_such_member"),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.offset("no_such_struct", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }
}
