//! The benchmarks' floor: a do-nothing program on every hook leakmon uses.

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader, programs::TracePoint};
use monitor_common::TaskOffsets;

use super::{OBJECT, hooks, links, tracefs};

/// The do-nothing programs of the benchmarks' floor, attached while it lives.
pub struct Floor {
    _ebpf: Ebpf,
    _links: links::Links,
}

/// Attaches the do-nothing program to every tracepoint leakmon hooks (the
/// benchmarks' floor). The returned object must be kept alive.
pub fn load_floor(raw: bool) -> anyhow::Result<Floor> {
    anyhow::ensure!(
        !OBJECT.is_empty(),
        "this leakmon binary was built without its kernel probes"
    );
    tracefs::ensure_mounted()?;
    let offsets = tracefs::task_offsets()?;
    let mut ebpf = EbpfLoader::new()
        .override_global(TaskOffsets::GLOBAL, &offsets, true)
        .load(OBJECT)?;
    let mut links = links::Links::default();
    if raw {
        let program: &mut aya::programs::RawTracePoint = ebpf
            .program_mut("noop_raw")
            .context("no noop_raw program")?
            .try_into()?;
        program.load()?;
        for tracepoint in ["sys_enter", "sys_exit"] {
            let link = program.attach(tracepoint)?;
            links.push_tracepoint(program.take_link(link)?, "raw_syscalls", tracepoint);
        }
        return Ok(Floor {
            _ebpf: ebpf,
            _links: links,
        });
    }
    let program: &mut TracePoint = ebpf.program_mut("noop").context("no noop program")?.try_into()?;
    program.load()?;
    for hook in hooks::all() {
        if tracefs::event_exists(hook.category, &hook.event) {
            let link = program.attach(hook.category, &hook.event)?;
            links.push_tracepoint(program.take_link(link)?, hook.category, &hook.event);
        }
    }
    let btf = aya::Btf::from_sys_fs()?;
    for hook in hooks::all().into_iter().filter(|h| h.category == hooks::BTF) {
        let name = format!("noop_{}", hook.program);
        let program: &mut aya::programs::BtfTracePoint = ebpf
            .program_mut(&name)
            .with_context(|| format!("no {name} program"))?
            .try_into()?;
        program.load(&hook.event, &btf)?;
        let link = program.attach()?;
        links.push_tracepoint(program.take_link(link)?, hook.category, &hook.event);
    }
    Ok(Floor {
        _ebpf: ebpf,
        _links: links,
    })
}
