//! docs/kernels.md: `leakmon doctor` on this host and in the VM, side by
//! side, and how the root suite ended on the VM's kernel.

use std::fmt::Write as _;

use anyhow::Context as _;
use serde_json::Value;

use super::GuestRun;
use crate::util::root_dir;

/// `leakmon doctor --json` here (the binary the VM also ran).
pub fn host_doctor() -> anyhow::Result<String> {
    let leakmon = root_dir().join("target/debug/leakmon");
    let out = std::process::Command::new(&leakmon)
        .args(["doctor", "--json"])
        .output()
        .with_context(|| format!("running {} doctor", leakmon.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// (name, verdict, detail) of each check; hooks that fail are one row each.
fn checks(doctor_json: &str) -> Vec<(String, String, String)> {
    let Ok(Value::Array(checks)) = serde_json::from_str::<Value>(doctor_json) else {
        return vec![(
            "doctor".into(),
            "fail".into(),
            "no JSON report (see the log above)".into(),
        )];
    };
    checks
        .iter()
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (text("name"), text("verdict"), text("detail"))
        })
        .collect()
}

fn release_of(checks: &[(String, String, String)]) -> String {
    checks
        .iter()
        .find(|(name, ..)| name == "kernel")
        .map_or("?".into(), |(.., detail)| detail.clone())
}

pub fn markdown(host_json: &str, guest: &GuestRun, filter: Option<&str>) -> String {
    let host = checks(host_json);
    let vm = checks(&guest.doctor);
    let mut out = String::new();
    let _ = writeln!(out, "# Kernels\n");
    let _ = writeln!(
        out,
        "Written by `cargo xtask vm` (as root): it boots Debian's kernel package (default \
         `linux-image-amd64`, Debian 12's 6.1) under qemu (KVM, or software emulation where this host's KVM cannot boot it), on this host's root filesystem \
         shared read-only, runs `leakmon doctor` and the whole root integration suite there, and \
         compares with `leakmon doctor` here. `--kernel-package` picks another Debian kernel.\n"
    );
    let suite = match guest.exit {
        Some(0) => "passed".to_string(),
        Some(code) => format!("failed (exit {code})"),
        None => "did not finish".to_string(),
    };
    let which = filter.map_or("the whole root integration suite".to_string(), |f| {
        format!("the root integration tests matching `{f}` (`cargo xtask vm {f:?}`)")
    });
    let _ = writeln!(
        out,
        "Last run: {which} on {}: **{suite}**, `{}` ({:.0} s including boot, qemu accel={}).\n",
        guest.release,
        guest.result,
        guest.elapsed.as_secs_f64(),
        guest.accel
    );
    let _ = writeln!(
        out,
        "| check | {} | {} (VM) |",
        release_of(&host),
        release_of(&vm)
    );
    let _ = writeln!(out, "| --- | --- | --- |");
    let mut names: Vec<&str> = host.iter().chain(&vm).map(|(n, ..)| n.as_str()).collect();
    names.dedup();
    let mut seen = std::collections::HashSet::new();
    for name in names.into_iter().filter(|n| seen.insert(*n)) {
        let cell = |checks: &[(String, String, String)]| {
            let rows: Vec<String> = checks
                .iter()
                .filter(|(n, ..)| n == name)
                .map(|(_, verdict, detail)| format!("{verdict}: {}", detail.replace('|', "\\|")))
                .collect();
            if rows.is_empty() {
                "—".to_string()
            } else {
                rows.join("<br>")
            }
        };
        let _ = writeln!(out, "| {name} | {} | {} |", cell(&host), cell(&vm));
    }
    out
}

pub fn summary(guest: &GuestRun) -> String {
    let hooks = checks(&guest.doctor)
        .into_iter()
        .filter(|(name, ..)| name == "bpf" || name == "hook")
        .map(|(_, verdict, detail)| format!("    {verdict}: {detail}\n"))
        .collect::<String>();
    format!(
        "\n{}: suite exit {:?} after {:.0} s\n{hooks}",
        guest.release,
        guest.exit,
        guest.elapsed.as_secs_f64()
    )
}
