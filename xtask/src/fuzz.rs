//! `cargo xtask fuzz`: the cargo-fuzz targets of monitor/fuzz (HTTP parser,
//! ring-buffer decoder, config loader), each for a time budget. The corpus
//! they grow is kept in the repository (monitor/fuzz/corpus).

use std::process::Command;

use crate::util::{exec, root_dir, step};

pub const TARGETS: [&str; 3] = ["http_parser", "event_decoder", "config_loader"];

/// Runs every target (or `only`) for `seconds` each. The run writes what it
/// finds to a scratch corpus (it keeps every input that reached a new feature
/// on its way: thousands in minutes, most redundant), then only the inputs
/// that add coverage to the kept corpus join it (libFuzzer's merge), so the
/// repository changes when coverage grows. The unit suite replays the kept
/// corpus (`monitor::fuzzing`).
pub fn run(seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    crate::setup::cargo_fuzz()?;
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        step(&format!("fuzz {target} for {seconds}s"));
        let kept = root_dir().join("monitor/fuzz/corpus").join(target);
        let scratch = root_dir().join("target/fuzz-scratch").join(target);
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)?;
        std::fs::create_dir_all(&kept)?;
        // New inputs go to the first directory; both are read.
        exec(cargo_fuzz("run", target).arg(&scratch).arg(&kept).args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-print_final_stats=1",
        ]))?;
        let before = inputs_in(&kept)?;
        step(&format!("keep the {target} inputs that add coverage"));
        exec(
            cargo_fuzz("run", target)
                .arg(&kept)
                .arg(&scratch)
                .args(["--", "-merge=1"]),
        )?;
        println!(
            "{target}: {} found, {} kept (of {before} before)",
            inputs_in(&scratch)?,
            inputs_in(&kept)? - before
        );
        std::fs::remove_dir_all(&scratch)?;
    }
    Ok(())
}

/// `cargo fuzz SUBCOMMAND` on one target of monitor/fuzz.
fn cargo_fuzz(subcommand: &str, target: &str) -> Command {
    let mut command = Command::new("cargo");
    command
        .args(["+nightly", "fuzz", subcommand, "--fuzz-dir"])
        .arg(root_dir().join("monitor/fuzz"))
        .arg(target)
        // The parsers need no kernel object: skip building it under sanitizers.
        .env("AYA_BUILD_SKIP", "1");
    command
}

fn inputs_in(dir: &std::path::Path) -> std::io::Result<usize> {
    Ok(std::fs::read_dir(dir)?.count())
}
