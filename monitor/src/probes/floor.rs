//! The benchmarks' floor: a do-nothing program on every hook leakmon uses.

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader, programs::TracePoint};
use monitor_common::TaskOffsets;

use super::{OBJECT, hooks, links, tracefs};

/// The do-nothing programs of the benchmarks' floor, attached while it lives.
pub struct Floor {
    _ebpf: Vec<Ebpf>,
    _links: links::Links,
}

/// Attaches the do-nothing program to every tracepoint leakmon hooks (the
/// benchmarks' floor). The returned object must be kept alive.
///
/// `hold_text` gives each BTF tracepoint a second do-nothing program, so
/// that the tracepoints stay enabled in a way no other program's attach or
/// detach changes kernel text for: a classic tracepoint's perf users share
/// one registration, but each BTF link is a function of its own, and a
/// tracepoint's static call is patched when it goes from one function to
/// two and back (the test VMs: see xtask/src/vm/guest.sh).
pub fn load_floor(raw: bool, hold_text: bool) -> anyhow::Result<Floor> {
    anyhow::ensure!(
        !OBJECT.is_empty(),
        "this leakmon binary was built without its kernel probes"
    );
    tracefs::ensure_mounted().context("mounting tracefs")?;
    let offsets = tracefs::task_offsets().context("reading the task tracepoints' formats in tracefs")?;
    let load = || {
        EbpfLoader::new()
            .override_global(TaskOffsets::GLOBAL, &offsets, true)
            .load(OBJECT)
    };
    let mut ebpf = load()?;
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
            _ebpf: vec![ebpf],
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
    attach_btf_noops(&mut ebpf, &btf, &mut links)?;
    let mut objects = vec![ebpf];
    if hold_text {
        // Another copy of the programs: before 6.10 the kernel refuses a
        // program's second link to one BTF tracepoint (EEXIST).
        let mut second = load()?;
        attach_btf_noops(&mut second, &btf, &mut links)?;
        objects.push(second);
    }
    Ok(Floor {
        _ebpf: objects,
        _links: links,
    })
}

/// Attaches `ebpf`'s do-nothing program of each BTF tracepoint leakmon hooks.
fn attach_btf_noops(ebpf: &mut Ebpf, btf: &aya::Btf, links: &mut links::Links) -> anyhow::Result<()> {
    for hook in hooks::all().into_iter().filter(|h| h.category == hooks::BTF) {
        let name = format!("noop_{}", hook.program);
        let program: &mut aya::programs::BtfTracePoint = ebpf
            .program_mut(&name)
            .with_context(|| format!("no {name} program"))?
            .try_into()?;
        program.load(&hook.event, btf)?;
        let link = program.attach()?;
        links.push_tracepoint(program.take_link(link)?, hook.category, &hook.event);
    }
    Ok(())
}
