//! `cargo xtask vm`: the root integration suite on a second kernel, the way
//! aya runs its VM tests. Debian's own kernel package (default: Debian 12's
//! `linux-image-amd64`, Linux 6.1) boots under qemu with KVM; the guest's root
//! is this host's filesystem, shared read-only over 9p under a tmpfs overlay,
//! so the same binaries, test bed and packages run there unchanged. It
//! reports which hooks load on each kernel and writes docs/kernels.md.

mod cpio;
mod kernel;
mod report;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util::{cargo, cargo_test_root, exec, root_dir, step};

/// Debian packages the VM run needs besides the test suite's (curl fetches
/// the pinned Ubuntu kernel).
const PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "curl", "zstd", "xz-utils"];

/// The guest's PID 1 after the switch to the shared root.
const GUEST_SCRIPT: &str = include_str!("guest.sh");

/// On the guest's command line: guest.sh hands PID 1 to systemd.
const SYSTEMD_INIT: &str = "leakmon.init=systemd";

/// Modules the initramfs loads, in dependency order: virtio-pci, 9p over
/// virtio, overlayfs, and the socket-diag handlers (a host's kernel loads
/// them at the first sock_diag request through modprobe, which the guest
/// has none of for its kernel: without them the daemon reads socket states
/// from /proc/PID/net, its fallback, not the path hosts take). Debian builds
/// them as modules; any absent from a kernel package is skipped (it may be
/// built in).
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "overlay",
    "sock_diag",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "unix_diag",
];

pub struct Options<'a> {
    pub kernel_package: &'a str,
    pub filter: Option<&'a str>,
    pub memory_mib: u32,
    pub timeout: Duration,
    /// `kvm`, `tcg` (software emulation), or None to choose.
    pub accel: Option<&'a str>,
    /// Kernel parameters added to the guest's command line
    /// (`lockdown=integrity`): a run with them has its own report section.
    pub append: Option<&'a str>,
}

impl Options<'static> {
    /// What `cargo xtask test` runs besides the suite on this host's kernel,
    /// about two minutes each: the ledger and socket tests (every fd hook,
    /// the exec and overflow paths, TCP states) on Debian 12's 6.1, on
    /// Ubuntu 22.04's first 5.15 (whose verifier refuses code that 6.x
    /// verifiers accept), and on Ubuntu 24.04's first 6.8, the kernel most
    /// new OpenStack compute hosts start on, in the lockdown Secure Boot
    /// puts it in (integrity); then 6.8 in lockdown=confidentiality, where
    /// the daemon must refuse to start and say why (a boot and one test).
    /// 5.15 runs the snapshot tests too: its iterator walks every process
    /// (only 6.1 can scope one to a process), a path no other kernel takes.
    /// Last, 6.1 boots with systemd as PID 1 for the packaged unit's test.
    pub fn smokes() -> Vec<Self> {
        let smoke = |kernel_package, append| Options {
            kernel_package,
            filter: Some(SMOKE),
            memory_mib: 6144,
            timeout: Duration::from_secs(15 * 60),
            accel: None,
            append,
        };
        vec![
            smoke("linux-image-amd64", None),
            Options {
                filter: Some(SMOKE_5_15),
                ..smoke("ubuntu-22.04", None)
            },
            smoke("ubuntu-24.04", Some("lockdown=integrity")),
            Options {
                filter: Some("operations::confidentiality_lockdown"),
                ..smoke("ubuntu-24.04", Some("lockdown=confidentiality"))
            },
            Options {
                filter: Some("systemd::"),
                ..smoke("linux-image-amd64", Some(SYSTEMD_INIT))
            },
        ]
    }
}

/// What CI runs on other kernels: the fd ledger and the sockets (struct
/// offsets from each kernel's BTF), and two HTTPS capture tests: the
/// OpenSSL uprobes load only once a process with libssl is watched, so only
/// such a test shows that a kernel's verifier takes them.
const SMOKE: &str = "ledger sockets:: calls_early::calls_on_a_tls calls_early::a_call_retried";
const SMOKE_5_15: &str =
    "ledger sockets:: snapshot:: calls_early::calls_on_a_tls calls_early::a_call_retried";

/// KVM unless this host's KVM is PVM (kvm_pvm, the nested-virtualisation
/// module of cloud VMs like this one): PVM runs only kernels built as PVM
/// guests, and a stock Debian kernel hangs right after decompressing.
fn accelerator(wanted: Option<&str>) -> anyhow::Result<&'static str> {
    match wanted {
        Some("kvm") => Ok("kvm"),
        Some("tcg") => Ok("tcg"),
        Some(other) => bail!("--accel {other}: use kvm or tcg"),
        None if Path::new("/sys/module/kvm_pvm").exists() => {
            println!(
                "    this host's KVM is PVM (kvm_pvm), which boots only PVM-built kernels: \
                 using software emulation (TCG)"
            );
            Ok("tcg")
        }
        None if Path::new("/dev/kvm").exists() => Ok("kvm"),
        None => {
            println!("    no /dev/kvm: using software emulation (TCG)");
            Ok("tcg")
        }
    }
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    crate::setup::packages(PACKAGES)?;
    let kernel = kernel::fetch(options.kernel_package)?;
    step("build (daemon, CLI, workloads, root test binary)");
    exec(cargo().args(["build", "--bins"]))?;
    let test_binary = root_test_binary()?;
    let accel = accelerator(options.accel)?;
    // Under emulation the guest holds the tracepoints for the whole suite
    // (guest.sh): daemons starting and stopping then patch no kernel text.
    let hold_text = accel == "tcg";
    step(&format!("initramfs for {}", kernel.release));
    let initramfs = write_initramfs(&kernel, &test_binary, options.filter, hold_text)?;
    step(&format!(
        "boot {} under qemu and run the root integration suite (output prefixed `vm|`)",
        kernel.release
    ));
    let mut guest = boot(&kernel, &initramfs, accel, options)?;
    if accel == "tcg" && guest.panic.is_some() {
        // Multi-threaded TCG has been seen (once in about a dozen 6.8 boots)
        // to run an int3 the kernel had already patched away (text_poke_bp,
        // when tracepoints attach or detach), a stale translation of
        // code another vCPU modified. One emulation thread cannot race so.
        // Since the guest holds the tracepoints (guest.sh) the tests patch
        // no text; the retry stays for what else may crash a guest.
        // Any panic gets the retry (a soft lockup of a vCPU starved by the
        // emulator panics too); a kernel that panics again fails the run.
        // The retry runs what had not passed: one emulation thread runs the
        // suite about three times slower.
        let first = guest.panic.take();
        let passed = std::mem::take(&mut guest.passed);
        let rest = not_passed(&test_binary, options.filter, &passed)?;
        println!(
            "    the guest kernel panicked under multi-threaded emulation after {}: booting \
             once more with one emulation thread (tcg,thread=single), which rules out \
             cross-vCPU code-patching races in the emulator, to run the other {}",
            report::tests_passed(passed.len()),
            rest.len()
        );
        // None left (it panicked after the last test): the whole selection again.
        let initramfs = if rest.is_empty() {
            initramfs
        } else {
            write_initramfs(
                &kernel,
                &test_binary,
                Some(&format!("--exact {}", rest.join(" "))),
                hold_text,
            )?
        };
        guest = boot(&kernel, &initramfs, "tcg,thread=single", options)?;
        guest.earlier_panic = first;
        guest.passed_before_retry = passed.len();
    }
    if guest.release.is_empty() {
        // The guest never said: name the section after the package's release.
        guest.release = kernel.release.clone();
    }
    step("doctor on this host, for the side-by-side report");
    let host_doctor = report::host_doctor()?;
    let path = root_dir().join("docs/kernels.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let markdown = report::markdown(&existing, options, &host_doctor, &guest);
    std::fs::write(&path, markdown)?;
    println!("    wrote {}", path.display());
    print!("{}", report::summary(&guest));
    match guest.exit {
        Some(0) => Ok(()),
        Some(code) => bail!("the root suite failed on {} (exit {code})", kernel.release),
        None => match &guest.panic {
            Some(panic) => bail!("the guest kernel panicked: {panic}"),
            None => bail!("the VM stopped before the suite reported its exit status"),
        },
    }
}

/// The guest kernel's command line. Warnings print with their stack
/// (loglevel 5), and a CPU stuck in the kernel ends the run at once, its
/// stack on the console, instead of at the timeout (softlockup_panic, then
/// panic=-1 and qemu's -no-reboot).
fn command_line(append: Option<&str>) -> String {
    let base = "console=ttyS0 panic=-1 loglevel=5 softlockup_panic=1";
    match append {
        Some(extra) => format!("{base} {extra}"),
        None => base.to_string(),
    }
}

/// The tests `filter` selects in `test_binary` (libtest's `--list`) that are
/// not among `passed`.
fn not_passed(test_binary: &Path, filter: Option<&str>, passed: &[String]) -> anyhow::Result<Vec<String>> {
    let out = Command::new(test_binary)
        .arg("--list")
        .args(filter.unwrap_or("").split_whitespace())
        .output()
        .context("listing the root tests")?;
    anyhow::ensure!(out.status.success(), "listing the root tests failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .filter(|name| !passed.iter().any(|p| p == name))
        .map(str::to_string)
        .collect())
}

/// The `tests/root` test executable, built (not run) by cargo.
fn root_test_binary() -> anyhow::Result<PathBuf> {
    let out = cargo_test_root()
        .current_dir(root_dir())
        .args(["--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("building the root test binary")?;
    anyhow::ensure!(out.status.success(), "building the root test binary failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "root")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo named no executable for tests/root")
}

/// busybox, the modules and an init that mounts the host's root (9p,
/// read-only) under a tmpfs overlay and switches to it.
fn write_initramfs(
    kernel: &kernel::Kernel,
    test_binary: &Path,
    filter: Option<&str>,
    hold_text: bool,
) -> anyhow::Result<PathBuf> {
    let mut archive = cpio::Archive::default();
    for dir in [
        "bin", "dev", "proc", "sys", "lower", "upper", "newroot", "modules",
    ] {
        archive.dir(dir);
    }
    archive.char_device("dev/console", 5, 1);
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    archive.file("bin/busybox", 0o755, &busybox);
    let mut loaded = Vec::new();
    for module in MODULES {
        if let Some(path) = kernel.modules.get(*module) {
            archive.file(&format!("modules/{module}.ko"), 0o644, &std::fs::read(path)?);
            loaded.push(*module);
        }
    }
    archive.file("guest.sh", 0o755, GUEST_SCRIPT.as_bytes());
    let repo = root_dir();
    let args = [
        repo.to_str().context("UTF-8 repository path")?,
        test_binary.to_str().context("UTF-8 test path")?,
        filter.unwrap_or(""),
        if hold_text { "hold-text" } else { "" },
    ];
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "")))
        .collect();
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t sysfs sysfs /sys\n\
         for pass in 1 2 3; do for m in {modules}; do\n\
           [ -e /sys/module/$m ] || insmod /modules/$m.ko 2>/dev/null\n\
         done; done\n\
         for m in {modules}; do [ -e /sys/module/$m ] || echo \"init: module $m did not load\"; done\n\
         mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower \
           || {{ echo 'init: cannot mount the host root over 9p'; poweroff -f; }}\n\
         mount -t tmpfs -o size=75% tmpfs /upper\n\
         mkdir -p /upper/data /upper/work\n\
         mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot \
           || {{ echo 'init: cannot mount the overlay'; poweroff -f; }}\n\
         cp /guest.sh /newroot/leakmon-vm-guest.sh\n\
         umount /dev /sys /proc\n\
         exec switch_root /newroot /bin/bash /leakmon-vm-guest.sh {args}\n",
        modules = loaded.join(" "),
        args = quoted.join(" "),
    );
    archive.file("init", 0o755, init.as_bytes());
    let path = kernel.dir.join("initramfs.cpio");
    std::fs::write(&path, archive.finish())?;
    println!(
        "    {} ({} modules: {})",
        path.display(),
        loaded.len(),
        loaded.join(" ")
    );
    Ok(path)
}

/// What the guest printed between its markers.
#[derive(Default)]
pub struct GuestRun {
    pub release: String,
    pub doctor: String,
    pub exit: Option<i32>,
    /// libtest's `test result: ...` line.
    pub result: String,
    pub elapsed: Duration,
    /// qemu's `-accel` argument.
    pub accel: String,
    /// The guest kernel's `Kernel panic - not syncing: ...` line.
    pub panic: Option<String>,
    /// The panic of the multi-threaded boot this run repeated.
    pub earlier_panic: Option<String>,
    /// The tests that printed `... ok`.
    pub passed: Vec<String>,
    /// Whether the guest held the tracepoints (guest.sh), as it said.
    pub hold_text: Option<String>,
    /// How many tests the boot this run repeated passed (this one ran the others).
    pub passed_before_retry: usize,
}

fn boot(
    kernel: &kernel::Kernel,
    initramfs: &Path,
    accel: &str,
    options: &Options,
) -> anyhow::Result<GuestRun> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cpu = if accel == "kvm" { "host" } else { "max" };
    // `accel` is qemu's -accel argument: kvm, tcg or tcg,thread=single.
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-nodefaults",
            "-no-reboot",
        ])
        .args(["-smp", &cpus.to_string(), "-m", &options.memory_mib.to_string()])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &command_line(options.append)])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut run = GuestRun::default();
    let mut in_doctor = false;
    loop {
        let left = options.timeout.saturating_sub(started.elapsed());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line.trim_end_matches('\r').to_string(),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                bail!("the VM ran past {} s: killed", options.timeout.as_secs());
            }
        };
        println!("    vm| {line}");
        if let Some(release) = line.strip_prefix("LEAKMON_VM_KERNEL=") {
            run.release = release.to_string();
        } else if line == "LEAKMON_VM_DOCTOR_BEGIN" {
            in_doctor = true;
        } else if line == "LEAKMON_VM_DOCTOR_END" {
            in_doctor = false;
        } else if in_doctor {
            run.doctor.push_str(&line);
            run.doctor.push('\n');
        } else if let Some(at) = line.find("test result: ") {
            run.result = strip_ansi(&line[at..]);
        } else if let Some(name) = passed_test(&line) {
            run.passed.push(name);
        } else if let Some(at) = line.find("Kernel panic - not syncing") {
            run.panic = Some(line[at..].to_string());
        } else if let Some(hold) = line.strip_prefix("LEAKMON_VM_HOLD=") {
            run.hold_text = Some(hold.to_string());
        } else if let Some(code) = line.strip_prefix("LEAKMON_VM_EXIT=") {
            run.exit = code.trim().parse().ok();
        }
    }
    child.wait()?;
    run.elapsed = started.elapsed();
    run.accel = accel.to_string();
    Ok(run)
}

/// NAME from libtest's `test NAME ... ok`.
fn passed_test(line: &str) -> Option<String> {
    let line = strip_ansi(line);
    let name = line.strip_prefix("test ")?.strip_suffix(" ... ok")?;
    Some(name.to_string())
}

/// libtest colours its verdicts on a terminal-like console: escape
/// sequences, and the shift-in (0x0f) terminfo's sgr0 ends with.
fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::passed_test;

    #[test]
    fn a_passed_test_is_read_from_its_coloured_line() {
        assert_eq!(
            passed_test("test ledger::emfile_is_recorded ... \u{1b}[32mok\u{1b}[m\u{f}").as_deref(),
            Some("ledger::emfile_is_recorded")
        );
        assert_eq!(passed_test("test ledger::a ... FAILED"), None);
        assert_eq!(
            passed_test("test ledger::a has been running for over 60 seconds"),
            None
        );
        assert_eq!(passed_test("test result: ok. 3 passed"), None);
    }
}
