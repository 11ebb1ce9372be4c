//! `cargo xtask fuzz`: the cargo-fuzz targets of monitor/fuzz (HTTP parser,
//! ring-buffer decoder, config loader), each for a time budget. The corpus
//! they grow is kept in the repository (monitor/fuzz/corpus).

use std::process::Command;

use crate::util::{exec, root_dir, step};

pub const TARGETS: [&str; 3] = ["http_parser", "event_decoder", "config_loader"];

/// Runs every target (or `only`) for `seconds` each; what it finds joins the
/// kept corpus, which the unit suite replays (`monitor::fuzzing`).
pub fn run(seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    crate::setup::cargo_fuzz()?;
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        step(&format!("fuzz {target} for {seconds}s"));
        let kept = root_dir().join("monitor/fuzz/corpus").join(target);
        std::fs::create_dir_all(&kept)?;
        exec(
            Command::new("cargo")
                .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
                .arg(root_dir().join("monitor/fuzz"))
                .arg(target)
                .arg(&kept)
                .args([
                    "--",
                    &format!("-max_total_time={seconds}"),
                    "-print_final_stats=1",
                ])
                // The parsers need no kernel object: skip building it under sanitizers.
                .env("AYA_BUILD_SKIP", "1"),
        )?;
    }
    Ok(())
}
