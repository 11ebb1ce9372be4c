//! tracefs: mounted by the daemon when missing (it is not mounted at boot on
//! these hosts), and the source of tracepoint field offsets.

use std::{collections::HashMap, fs, io, path::Path};

use monitor_common::TaskOffsets;
use nix::mount::{MsFlags, mount};
use tracing::info;

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracepoint events are visible; mounts tracefs if it must.
/// Returns whether this call mounted it.
pub fn ensure_mounted() -> io::Result<bool> {
    let mounted = ensure_mounted_with(
        || Path::new(TRACEFS).join("events").is_dir(),
        || {
            mount(
                Some("tracefs"),
                TRACEFS,
                Some("tracefs"),
                MsFlags::empty(),
                None::<&str>,
            )
        },
    )?;
    if mounted {
        info!(
            path = TRACEFS,
            "mounted tracefs (it was not mounted); classic tracepoints need it"
        );
    }
    Ok(mounted)
}

/// [`ensure_mounted`] with its two operations given. Another process (a
/// second daemon, `leakmon doctor`, an operator) may mount tracefs between
/// the check and our mount, which then fails (EBUSY: the same tracefs on
/// itself): what counts is whether the events are visible afterwards.
fn ensure_mounted_with(
    events_visible: impl Fn() -> bool,
    mount: impl FnOnce() -> nix::Result<()>,
) -> io::Result<bool> {
    if events_visible() {
        return Ok(false);
    }
    match mount() {
        Ok(()) => Ok(true),
        Err(_) if events_visible() => {
            info!(path = TRACEFS, "tracefs was mounted meanwhile by another process");
            Ok(false)
        }
        Err(e) => Err(io::Error::other(format!(
            "mount -t tracefs tracefs {TRACEFS}: {e}"
        ))),
    }
}

pub fn event_exists(category: &str, event: &str) -> bool {
    Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(event)
        .join("id")
        .exists()
}

/// Field name -> (offset, size) of a tracepoint's record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Format(HashMap<String, (u16, u16)>);

impl Format {
    pub fn read(category: &str, event: &str) -> io::Result<Format> {
        let path = Path::new(TRACEFS)
            .join("events")
            .join(category)
            .join(event)
            .join("format");
        Ok(Format::parse(&fs::read_to_string(path)?))
    }

    /// Parses lines like `field:char comm[16]; offset:8; size:16; signed:0;` (tab separated).
    pub fn parse(text: &str) -> Format {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d);
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.parse().ok();
                }
            }
            if let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) {
                let name = decl.rsplit(' ').next().unwrap_or(decl);
                let name = name.split('[').next().unwrap_or(name);
                fields.insert(name.to_string(), (offset, size));
            }
        }
        Format(fields)
    }

    pub fn offset(&self, field: &str) -> Option<u16> {
        self.0.get(field).map(|(offset, _)| *offset)
    }

    fn require(&self, event: &str, field: &str) -> io::Result<u16> {
        self.offset(field)
            .ok_or_else(|| io::Error::other(format!("{event} has no field `{field}`")))
    }
}

/// Offsets of the task tracepoints on this kernel.
pub fn task_offsets() -> io::Result<TaskOffsets> {
    let newtask = Format::read("task", "task_newtask")?;
    let exit = Format::read("sched", "sched_process_exit")?;
    let exec = Format::read("sched", "sched_process_exec")?;
    // task_rename is optional: its offsets stay 0 when the event is missing.
    let rename = Format::read("task", "task_rename").unwrap_or_default();
    Ok(TaskOffsets {
        newtask_pid: newtask.require("task_newtask", "pid")?,
        newtask_comm: newtask.require("task_newtask", "comm")?,
        newtask_clone_flags: newtask.require("task_newtask", "clone_flags")?,
        exit_pid: exit.require("sched_process_exit", "pid")?,
        exit_group_dead: exit.offset("group_dead").unwrap_or(0),
        rename_pid: rename.offset("pid").unwrap_or(0),
        rename_newcomm: rename.offset("newcomm").unwrap_or(0),
        exec_old_pid: exec.require("sched_process_exec", "old_pid")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_6_18: &str = "name: sched_process_exit
ID: 300
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;

print fmt: \"comm=%s pid=%d\", REC->comm, REC->pid
";

    #[test]
    fn parses_field_offsets() {
        let format = Format::parse(EXIT_6_18);
        assert_eq!(format.offset("comm"), Some(8));
        assert_eq!(format.offset("pid"), Some(24));
        assert_eq!(format.offset("group_dead"), Some(32));
        assert_eq!(format.offset("missing"), None);
        assert!(
            format
                .require("x", "missing")
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }

    #[test]
    fn a_mount_lost_to_another_process_still_counts_as_mounted() {
        use std::cell::Cell;
        let visible = Cell::new(false);
        let raced = || {
            // Another daemon mounted it after our check: ours fails.
            visible.set(true);
            Err(nix::errno::Errno::EBUSY)
        };
        assert!(!ensure_mounted_with(|| visible.get(), raced).unwrap());
        // Already there: no mount at all.
        assert!(!ensure_mounted_with(|| true, || panic!("mounted twice")).unwrap());
        // Ours: mounted.
        let mounted = Cell::new(false);
        let ours = || {
            mounted.set(true);
            Ok(())
        };
        assert!(ensure_mounted_with(|| mounted.get(), ours).unwrap());
        // A real failure is an error that names the mount.
        let err = ensure_mounted_with(|| false, || Err(nix::errno::Errno::EPERM)).unwrap_err();
        assert!(err.to_string().contains("mount -t tracefs"), "{err}");
    }

    #[test]
    fn data_loc_fields_parse_too() {
        let format = Format::parse("\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n");
        assert_eq!(format.offset("filename"), Some(8));
    }
}
