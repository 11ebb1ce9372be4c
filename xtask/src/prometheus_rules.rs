//! The Prometheus alerting rules shipped for leakmon's own health
//! (packaging/leakmon-rules.yml), checked by the real `promtool` on their
//! synthetic timelines (packaging/leakmon-rules.test.yml) and against the
//! README's table of them.

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, process::Command};

    const PROMTOOL: &str = "/usr/bin/promtool";
    const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

    #[test]
    fn the_readme_lists_every_shipped_rule_and_the_metrics_it_reads() {
        let rules = std::fs::read_to_string(format!("{ROOT}/packaging/leakmon-rules.yml")).unwrap();
        let shipped: BTreeSet<String> = rules
            .lines()
            .filter_map(|line| line.trim().strip_prefix("- alert: "))
            .map(str::to_string)
            .collect();
        // Rows of the README's table: "| `LeakmonDown` | ...".
        let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
        let listed: BTreeSet<String> = readme
            .lines()
            .filter_map(|line| line.strip_prefix("| `Leakmon")?.split_once('`'))
            .map(|(rest, _)| format!("Leakmon{rest}"))
            .collect();
        assert!(!shipped.is_empty());
        assert_eq!(
            shipped, listed,
            "the README's rule table against packaging/leakmon-rules.yml"
        );
        // A misspelt metric would make its rule silently never fire: each one
        // read is in the README's metrics table (readme_tests hold that to the code).
        let metrics = rules
            .lines()
            .filter_map(|line| line.trim().strip_prefix("expr: "))
            .flat_map(|expr| expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .filter(|word| word.starts_with("leakmon_"));
        for metric in metrics {
            assert!(
                readme.contains(&format!("`{metric}`")),
                "{metric} is not a documented metric"
            );
        }
    }

    #[test]
    fn the_shipped_rules_fire_when_and_only_when_their_trouble_lasts() {
        if !std::path::Path::new(PROMTOOL).exists() {
            // CI sets LEAKMON_REQUIRE_ROOT and has run `cargo xtask setup`,
            // which installs Debian's prometheus (and its promtool).
            assert!(
                std::env::var_os("LEAKMON_REQUIRE_ROOT").is_none(),
                "{PROMTOOL} is missing: `cargo xtask setup` installs it"
            );
            println!("skipped: {PROMTOOL} is missing (`cargo xtask setup` installs it)");
            return;
        }
        let packaging = format!("{ROOT}/packaging");
        for args in [
            ["check", "rules", "leakmon-rules.yml"],
            ["test", "rules", "leakmon-rules.test.yml"],
        ] {
            let out = Command::new(PROMTOOL)
                .args(args)
                .current_dir(&packaging)
                .output()
                .expect("run promtool");
            assert!(
                out.status.success(),
                "promtool {}:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
