//! docs/kernels.md: per guest kernel, `leakmon doctor` on this host and in
//! the VM side by side, and how the root suite ended on that kernel.

use std::fmt::Write as _;

use anyhow::Context as _;
use serde_json::Value;

use super::{GuestRun, Options};
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

const INTRO: &str = "# Kernels\n\n\
Written by `cargo xtask vm` (as root): it boots a kernel under qemu (KVM, or software emulation \
where this host's KVM cannot boot it) on this host's root filesystem shared read-only, runs \
`leakmon doctor` and the root integration suite there, and compares with `leakmon doctor` here. \
`--kernel-package` takes a Debian kernel package (default `linux-image-amd64`, Debian 12's 6.1) \
or `ubuntu-22.04` / `ubuntu-24.04` (the first kernel of that Ubuntu release, 5.15 / 6.8, pinned by \
SHA-256); `--append` adds kernel parameters (`lockdown=integrity`). Each run rewrites the section of \
its package and parameters and keeps the others.\n";

/// docs/kernels.md with this run's section put in place of the one for the
/// same package and kernel parameters (or added), the other sections kept: a metapackage that now
/// resolves to a newer kernel replaces its older section.
pub fn markdown(existing: &str, asked: &Options, host_json: &str, guest: &GuestRun) -> String {
    let package = asked.kernel_package;
    let key = match asked.append {
        Some(append) => format!("(`{package}`, `{append}`)"),
        None => format!("(`{package}`)"),
    };
    let heading = format!("## Linux {} {key}", guest.release);
    let mut sections: Vec<String> = existing
        .split("\n## ")
        .skip(1)
        .map(|s| format!("## {}", s.trim_end()))
        .collect();
    let this = section(&heading, asked, host_json, guest);
    match sections
        .iter_mut()
        .find(|s| s.lines().next().is_some_and(|first| first.ends_with(&key)))
    {
        Some(old) => *old = this,
        None => sections.push(this),
    }
    let mut out = INTRO.to_string();
    for section in sections {
        let _ = write!(out, "\n{}\n", section.trim_end());
    }
    out
}

fn section(heading: &str, asked: &Options, host_json: &str, guest: &GuestRun) -> String {
    let host = checks(host_json);
    let vm = checks(&guest.doctor);
    let mut out = String::new();
    let _ = writeln!(out, "{heading}\n");
    let suite = match guest.exit {
        Some(0) => "passed".to_string(),
        Some(code) => format!("failed (exit {code})"),
        None => "did not finish".to_string(),
    };
    // A filter may be test-binary options (`--skip scenarios::`), which the
    // command line takes after `--`.
    let options = asked.filter.is_some_and(|f| f.starts_with('-'));
    let which = match asked.filter {
        None => "the whole root integration suite".to_string(),
        Some(f) if options => format!("the root integration suite with `{f}`"),
        Some(f) => format!("the root integration tests matching `{f}`"),
    };
    let mut command = String::from("cargo xtask vm");
    if let Some(filter) = asked.filter.filter(|_| !options) {
        let _ = write!(command, " {filter:?}");
    }
    let _ = write!(command, " --kernel-package {}", asked.kernel_package);
    if let Some(append) = asked.append {
        let _ = write!(command, " --append {append:?}");
    }
    if let Some(filter) = asked.filter.filter(|_| options) {
        let _ = write!(command, " -- {filter:?}");
    }
    let _ = writeln!(
        out,
        "Last run (`{command}`): {which}: **{suite}**, `{}` ({:.0} s including boot, qemu accel={}).\n",
        guest.result,
        guest.elapsed.as_secs_f64(),
        guest.accel
    );
    if let Some(hold) = &guest.hold_text {
        let _ = writeln!(
            out,
            "Tracepoints held by do-nothing programs for the whole suite (emulation: see \
             xtask/src/vm/guest.sh): {hold}.\n"
        );
    }
    if let Some(panic) = &guest.panic {
        let _ = writeln!(out, "The guest kernel panicked: `{panic}`.\n");
    }
    if let Some(panic) = &guest.earlier_panic {
        let _ = writeln!(
            out,
            "A first boot under multi-threaded emulation panicked (`{panic}`) after {}; this is \
             the second, with one emulation thread, which ran the others.\n",
            tests_passed(guest.passed_before_retry)
        );
    }
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

/// "1 test passed", "17 tests passed".
pub fn tests_passed(count: usize) -> String {
    let noun = if count == 1 { "test" } else { "tests" };
    format!("{count} {noun} passed")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(release: &str) -> GuestRun {
        GuestRun {
            release: release.into(),
            exit: Some(0),
            result: "test result: ok.".into(),
            ..GuestRun::default()
        }
    }

    fn asked(
        package: &'static str,
        filter: Option<&'static str>,
        append: Option<&'static str>,
    ) -> Options<'static> {
        Options {
            kernel_package: package,
            filter,
            append,
            ..Options::smokes()[0]
        }
    }

    #[test]
    fn a_run_replaces_its_packages_section_and_keeps_the_others() {
        let debian = asked("linux-image-amd64", None, None);
        let first = markdown("", &debian, "[]", &run("6.1.0-55-amd64"));
        let ubuntu = asked("ubuntu-22.04", Some("ledger"), None);
        let both = markdown(&first, &ubuntu, "[]", &run("5.15.0-25-generic"));
        assert!(both.starts_with(INTRO));
        assert_eq!(both.matches("\n## Linux ").count(), 2);
        let mut failed = run("6.1.0-56-amd64");
        failed.exit = Some(101);
        let again = markdown(&both, &debian, "[]", &failed);
        assert_eq!(again.matches("\n## Linux ").count(), 2);
        assert!(
            !again.contains("6.1.0-55"),
            "the package's older kernel is replaced"
        );
        let debian = &again[again.find("## Linux 6.1").unwrap()..again.find("## Linux 5.15").unwrap()];
        assert!(debian.contains("**failed (exit 101)**") && !debian.contains("**passed**"));
        // 5.15's section is untouched, and stays after 6.1's.
        let ubuntu = &again[again.find("## Linux 5.15").unwrap()..];
        assert!(ubuntu.contains("cargo xtask vm \"ledger\" --kernel-package ubuntu-22.04`"));
        assert!(ubuntu.contains("**passed**"));
    }

    #[test]
    fn a_filter_of_test_options_is_written_after_a_double_dash() {
        let skip = asked("ubuntu-22.04", Some("--skip scenarios::"), None);
        let report = markdown("", &skip, "[]", &run("5.15.0-25-generic"));
        assert!(report.contains(
            "(`cargo xtask vm --kernel-package ubuntu-22.04 -- \"--skip scenarios::\"`): \
             the root integration suite with `--skip scenarios::`"
        ));
    }

    #[test]
    fn kernel_parameters_make_a_section_of_their_own() {
        let plain = asked("ubuntu-24.04", None, None);
        let locked = asked("ubuntu-24.04", None, Some("lockdown=integrity"));
        let first = markdown("", &plain, "[]", &run("6.8.0-31-generic"));
        let both = markdown(&first, &locked, "[]", &run("6.8.0-31-generic"));
        assert_eq!(both.matches("\n## Linux 6.8.0-31-generic").count(), 2);
        assert!(both.contains("## Linux 6.8.0-31-generic (`ubuntu-24.04`, `lockdown=integrity`)"));
        assert!(both.contains("--kernel-package ubuntu-24.04 --append \"lockdown=integrity\"`"));
        let again = markdown(&both, &locked, "[]", &run("6.8.0-31-generic"));
        assert_eq!(again, both);
    }

    #[test]
    fn a_panic_and_a_retry_after_one_are_reported() {
        let debian = asked("linux-image-amd64", None, None);
        let line = "Kernel panic - not syncing: Fatal exception in interrupt";
        let mut panicked = run("6.1.0-56-amd64");
        panicked.exit = None;
        panicked.panic = Some(line.to_string());
        let text = markdown("", &debian, "[]", &panicked);
        assert!(text.contains(&format!("The guest kernel panicked: `{line}`.")));
        let mut retried = run("6.1.0-56-amd64");
        retried.earlier_panic = Some(line.to_string());
        retried.passed_before_retry = 17;
        let text = markdown("", &debian, "[]", &retried);
        assert!(text.contains(&format!(
            "A first boot under multi-threaded emulation panicked (`{line}`) after 17 tests passed"
        )));
        assert!(!text.contains("The guest kernel panicked"));
        retried.passed_before_retry = 1;
        assert!(markdown("", &debian, "[]", &retried).contains(") after 1 test passed; this is"));
    }

    #[test]
    fn a_file_without_sections_keeps_only_the_new_one() {
        let old = "# Kernels\n\nLast run: something.\n\n| check | a | b |\n";
        let new = markdown(
            old,
            &asked("linux-image-amd64", None, None),
            "[]",
            &run("6.1.0-56-amd64"),
        );
        assert!(!new.contains("something"));
        assert!(new.contains("## Linux 6.1.0-56-amd64"));
    }
}
