//! The README's CLI synopsis, configuration reference, rule table, alert
//! schema, snapshot and status references and metrics table against the
//! code: a flag, key, rule, default, alert, snapshot or status field,
//! counter or metric added, renamed or changed without its documentation
//! fails here.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use serde_json::Value;

use crate::{cli::Cli, config::Config, detect::Rules};

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The part of `text` from the heading `start` to the next heading of its
/// level or above (outside code blocks).
fn section<'a>(text: &'a str, start: &str) -> &'a str {
    let from = text
        .find(&format!("\n{start}\n"))
        .unwrap_or_else(|| panic!("no {start:?}"))
        + 1;
    let level = start.chars().take_while(|c| *c == '#').count();
    let mut in_code = false;
    let mut end = from + start.len() + 1;
    for line in text[end..].split_inclusive('\n') {
        in_code ^= line.starts_with("```");
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !in_code && (1..=level).contains(&hashes) && line[hashes..].starts_with(' ') {
            break;
        }
        end += line.len();
    }
    &text[from..end]
}

/// The cells of each table row in `text` that starts with a backticked name.
fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| line[2..].trim_end_matches(" |").split(" | ").collect())
        .collect()
}

/// The names a first cell lists: "`a`, `b`" gives a and b.
fn names(cell: &str) -> impl Iterator<Item = &str> {
    cell.split(", ").map(|name| name.trim_matches('`'))
}

/// The flags the `## CLI` synopsis gives each subcommand.
fn synopsis(readme: &str) -> BTreeMap<String, BTreeSet<String>> {
    let block = section(readme, "## CLI")
        .split("```")
        .nth(1)
        .expect("a code block");
    let mut by_command: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("leakmon ") {
            current = rest.split_whitespace().next().unwrap().to_string();
        }
        let flags = line
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter_map(|word| word.strip_prefix("--"))
            .map(str::to_string);
        by_command.entry(current.clone()).or_default().extend(flags);
    }
    by_command.remove("");
    by_command
}

#[test]
fn the_cli_synopsis_names_every_subcommand_and_flag() {
    let documented = synopsis(&readme());
    let actual: BTreeMap<String, BTreeSet<String>> = Cli::command()
        .get_subcommands()
        .filter(|command| !command.is_hide_set())
        .map(|command| {
            let flags = command
                .get_arguments()
                .filter(|arg| !arg.is_hide_set())
                .filter_map(|arg| arg.get_long())
                .map(str::to_string)
                .collect();
            (command.get_name().to_string(), flags)
        })
        .collect();
    assert_eq!(
        documented, actual,
        "README synopsis (left) against the CLI (right)"
    );
}

/// A default as the README's tables write it: TOML (`"text"`, `["a"]`,
/// `8388608`); none for a key that is unset by default.
fn as_toml(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(format!("{s:?}")),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().filter_map(as_toml).collect();
            Some(format!("[{}]", items.join(", ")))
        }
        Value::Object(map) if map.is_empty() => Some("{}".to_string()),
        other => Some(other.to_string()),
    }
}

#[test]
fn the_config_reference_has_every_key_with_its_default() {
    let readme = readme();
    // `| `key` | default | meaning |` rows.
    let rows: BTreeMap<&str, &str> = rows(section(&readme, "## Configuration"))
        .into_iter()
        .map(|cells| (cells[0].trim_matches('`'), cells[1]))
        .collect();
    let mut expected: BTreeMap<String, Option<String>> = BTreeMap::new();
    let defaults = serde_json::to_value(Config::default()).unwrap();
    for (group, value) in defaults.as_object().unwrap() {
        match group.as_str() {
            // Each rule's keys are in the rule table (the next test).
            "rules" => {
                expected.insert("rules.pool_size".into(), as_toml(&value["pool_size"]));
                expected.insert("rules.<rule>.*".into(), None);
            }
            "endpoints" => {
                expected.insert(group.clone(), as_toml(value));
            }
            _ => {
                for (key, default) in value.as_object().unwrap() {
                    expected.insert(format!("{group}.{key}"), as_toml(default));
                }
            }
        }
    }
    let documented: BTreeSet<&str> = rows.keys().copied().collect();
    let keys: BTreeSet<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(
        documented, keys,
        "README keys (left) against the config's (right)"
    );
    for (key, default) in &expected {
        if let Some(default) = default {
            assert_eq!(
                rows[key.as_str()],
                format!("`{default}`"),
                "the default of `{key}`"
            );
        }
    }
}

#[test]
fn the_rule_table_gives_every_rule_its_keys_and_defaults() {
    let readme = readme();
    // The rule table comes before the section's subsections (the alert schema's own table).
    let table = section(&readme, "## Alerts").split("\n### ").next().unwrap();
    let rules = serde_json::to_value(Rules::default()).unwrap();
    let mut documented = 0;
    for (rule, keys) in rules.as_object().unwrap() {
        let Some(keys) = keys.as_object() else {
            continue; // pool_size: in the config reference
        };
        let row = table
            .lines()
            .find(|line| line.starts_with(&format!("| `{rule}` |")))
            .unwrap_or_else(|| panic!("the rule table has no row for `{rule}`"));
        documented += 1;
        for (key, default) in keys {
            if key == "enabled" {
                assert_eq!(
                    default,
                    &Value::Bool(true),
                    "README: every rule has `enabled = true`"
                );
                continue;
            }
            let name = format!("`{key}`");
            assert!(row.contains(&name), "`{rule}`: its key {name} is not in its row");
            // Where the row gives a default after the key, it is the code's.
            for (at, _) in row.match_indices(&name) {
                if let Some(shown) = row[at + name.len()..].strip_prefix(" (") {
                    // `(60; why)`: the default, then a reason.
                    let shown = shown.split([')', ';']).next().unwrap();
                    assert_eq!(shown, default.to_string(), "`{rule}.{key}`'s default");
                }
            }
        }
    }
    let rows = table.lines().filter(|line| line.starts_with("| `")).count();
    assert_eq!(
        rows, documented,
        "the rule table has a row for a rule the code lacks"
    );
}

#[test]
fn the_alert_schema_lists_every_field_an_alert_has() {
    use crate::{
        alerts::{Alert, ProcessRef, Status},
        container::Placement,
        detect::{Rule, Severity},
    };
    // Every optional part set, so that every field is written.
    let alert = Alert {
        time: "t".into(),
        rule: Rule::FdLeak,
        status: Status::Resolved,
        severity: Severity::Warning,
        host: "h".into(),
        process: ProcessRef {
            pid: 1,
            name: "n".into(),
            cmdline: vec![],
            placement: Placement {
                ns_pid: Some(1),
                container_id: Some("c".into()),
            },
        },
        key: "k".into(),
        summary: "s".into(),
        starts_at: "t".into(),
        ends_at: Some("t".into()),
        evidence: Value::Null,
        labels: BTreeMap::new(),
    };
    let json = serde_json::to_value(&alert).unwrap();
    let readme = readme();
    let schema = section(&readme, "### Alert schema (NDJSON, one alert per line)");
    // `| `a`, `b` | meaning |`: the fields named in each row's first cell.
    let rows = rows(schema);
    let documented: BTreeSet<&str> = rows.iter().flat_map(|cells| names(cells[0])).collect();
    let fields: BTreeSet<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        documented, fields,
        "the schema table (left) against an alert's fields (right)"
    );
    let process = rows.iter().find(|cells| cells[0] == "`process`").unwrap()[1];
    for key in json["process"].as_object().unwrap().keys() {
        assert!(
            process.contains(&format!("`{key}`")),
            "`process.{key}` is not described"
        );
    }
    let values = [
        serde_json::to_value(Status::Firing),
        serde_json::to_value(Status::Resolved),
        serde_json::to_value(Severity::Warning),
        serde_json::to_value(Severity::Critical),
    ];
    for value in values.map(Result::unwrap) {
        assert!(
            schema.contains(&format!("`{}`", value.as_str().unwrap())),
            "{value} undocumented"
        );
    }
}

#[test]
fn the_metrics_table_lists_every_metric_served() {
    // Every metric name is a string literal in the exposition code.
    let source = include_str!("engine/metrics.rs");
    let served: BTreeSet<&str> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| {
            (literal.starts_with("leakmon_") || literal.starts_with("process_"))
                && literal.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    assert!(served.len() > 20, "found only {served:?}");
    let readme = readme();
    let table = section(&readme, "### Prometheus metrics");
    let documented: BTreeSet<&str> = rows(table).iter().flat_map(|cells| names(cells[0])).collect();
    assert_eq!(
        documented, served,
        "the metrics table (left) against the code (right)"
    );
}

#[test]
fn the_status_reference_names_every_field_and_counter() {
    let status = crate::engine::example_status_json();
    let readme = readme();
    let reference = section(&readme, "### Status");
    let rows = rows(reference);
    let documented: BTreeSet<&str> = rows.iter().flat_map(|cells| names(cells[0])).collect();
    // Top-level fields, and each counter as `section.name` (`kernel.held_back.flushes`).
    let mut fields = BTreeSet::new();
    for (key, value) in status.as_object().unwrap() {
        fields.insert(key.clone());
        if ["kernel", "engine", "ledger", "alert_sinks", "alertmanager"].contains(&key.as_str()) {
            for (name, counter) in value.as_object().unwrap() {
                match counter.as_object() {
                    Some(nested) if name != "lost" => {
                        fields.extend(nested.keys().map(|inner| format!("{key}.{name}.{inner}")));
                    }
                    _ => {
                        fields.insert(format!("{key}.{name}"));
                    }
                }
            }
        }
    }
    let fields: BTreeSet<&str> = fields.iter().map(String::as_str).collect();
    assert_eq!(
        documented, fields,
        "the status reference (left) against a status's fields (right)"
    );
    // The fields of each hook, TLS attachment and process, in its row.
    for list in ["hooks", "tls", "processes"] {
        let row = rows
            .iter()
            .find(|cells| names(cells[0]).any(|name| name == list))
            .unwrap();
        for key in status[list][0].as_object().unwrap().keys() {
            assert!(
                row[1].contains(&format!("`{key}`")),
                "`{list}[].{key}` is not described"
            );
        }
    }
}

/// Every key path of `value` (`fds[].socket.state`). Call references and
/// maps keyed by data (fd kinds, state names) end a path.
fn key_paths(value: &Value, path: &str, paths: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let opaque = ["counts", "states"].contains(&key.as_str()) || key.ends_with("call");
                if !opaque {
                    key_paths(inner, &at, paths);
                }
                paths.insert(at);
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| key_paths(item, &format!("{path}[]"), paths)),
        _ => {}
    }
}

/// The rows of a reference table by full name (`threads[].tid`, `.name` gives
/// `threads[].tid` and `threads[].name`), each with its meaning cell.
fn named_rows<'a>(rows: &[Vec<&'a str>]) -> BTreeMap<String, &'a str> {
    let mut named = BTreeMap::new();
    for cells in rows {
        let mut parent = "";
        for name in names(cells[0]) {
            let full = match name.strip_prefix('.') {
                Some(relative) => format!("{parent}.{relative}"),
                None => {
                    parent = name.rsplit_once('.').map_or("", |(head, _)| head);
                    name.to_string()
                }
            };
            named.insert(full, cells[1]);
        }
    }
    named
}

#[test]
fn the_snapshot_reference_describes_every_field() {
    let mut paths = BTreeSet::new();
    key_paths(
        &serde_json::to_value(crate::snapshot::example::snapshot()).unwrap(),
        "",
        &mut paths,
    );
    let readme = readme();
    let reference = section(&readme, "### Snapshot JSON");
    let named = named_rows(&rows(reference));
    let mut undescribed = Vec::new();
    for path in &paths {
        // Named in the first column, or a part of what is (`fds` of `fds[].fd`).
        let under =
            |name: &String| name.starts_with(&format!("{path}.")) || name.starts_with(&format!("{path}[]"));
        if named.contains_key(path) || named.keys().any(under) {
            continue;
        }
        // Else the nearest named parent's meaning lists it.
        let leaf = path.rsplit('.').next().unwrap();
        let parent = named
            .iter()
            .filter(|(name, _)| path.starts_with(&format!("{name}.")))
            .max_by_key(|(name, _)| name.len());
        if !parent.is_some_and(|(_, meaning)| meaning.contains(&format!("`{leaf}`"))) {
            undescribed.push(path.as_str());
        }
    }
    assert!(
        undescribed.is_empty(),
        "not in the snapshot reference: {undescribed:?}"
    );
    // A call reference's fields, in the paragraph that describes them.
    let call = serde_json::to_value(&crate::snapshot::example::snapshot().threads[0].birth_call).unwrap();
    let keys: Vec<&String> = call.as_object().unwrap().keys().collect();
    let listed = format!("`{{{}}}`", ["id", "kind", "pattern", "node"].join(", "));
    assert!(
        reference.contains(&format!("is {listed}")),
        "the call reference paragraph"
    );
    for key in keys {
        assert!(listed.contains(key.as_str()), "call reference field `{key}`");
    }
}
