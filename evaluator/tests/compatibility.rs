//! Keeps docs/compatibility.md honest: every configuration key, command-line flag and environment
//! variable of pbflags v0.6 it lists is accepted by `serve` or named in its table of differences,
//! and every v0.6 metric is still exported.

#![allow(clippy::unwrap_used)]

use clap::{CommandFactory as _, Parser as _};
use pbflags_evaluator::app::config::ServeArgs;

#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

fn doc() -> String {
    let path = format!("{}/../docs/compatibility.md", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The table of differences.
fn table(doc: &str) -> &str {
    let start = doc.find("## What differs").expect("the table's section");
    let end = doc[start..].find("\n## ").map_or(doc.len(), |i| start + i);
    &doc[start..end]
}

/// The backquoted items of the paragraph that starts with `label`.
fn listed(doc: &str, label: &str) -> Vec<String> {
    let start = doc
        .find(&format!("\n{label}"))
        .unwrap_or_else(|| panic!("no {label:?} list"));
    let paragraph = doc[start + 1..].split("\n\n").next().unwrap_or("");
    let items: Vec<String> = paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!items.is_empty(), "{label:?} lists nothing");
    items
}

fn descriptors() -> String {
    format!(
        "{}/../proto/example/descriptors.pb",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A plausible value for a v0.6 key.
fn value_of(key: &str) -> &'static str {
    match key {
        "server" => "http://root.example:9201",
        "listen" => "127.0.0.1:0",
        "database" => "postgres://flags@db.example/flags",
        "admin" => ":9200",
        "env_name" | "env_color" => "staging",
        "cache.override_max_entries" => "5000",
        "cache.jitter_percent" => "10",
        "cache.fetch_timeout" => "\"250ms\"",
        _ => "\"45s\"",
    }
}

#[test]
fn every_v0_6_configuration_key_is_accepted() {
    let doc = doc();
    let keys = listed(&doc, "Configuration keys:");
    assert!(keys.len() >= 13, "{keys:?}");
    for key in keys {
        let mut yaml = format!("descriptors: {}\n", descriptors());
        // One mode: the key's own, else proxy mode.
        if key != "server" && key != "database" {
            yaml.push_str("server: http://root.example:9201\n");
        }
        if key != "descriptors" {
            match key.split_once('.') {
                Some((section, leaf)) => {
                    yaml.push_str(&format!("{section}:\n  {leaf}: {}\n", value_of(&key)));
                }
                None => yaml.push_str(&format!("{key}: {}\n", value_of(&key))),
            }
        }
        let args = Args::try_parse_from(["t"]).unwrap().serve;
        let config = args
            .resolve_with_file_text(&yaml)
            .unwrap_or_else(|e| panic!("v0.6 key {key} refused: {e}\n{yaml}"));
        if key == "admin" {
            assert_eq!(
                config.ignored_keys,
                [key.as_str()],
                "{key} is reported as ignored"
            );
            assert!(
                table(&doc).contains(&format!("`{key}`")),
                "{key} is in the table"
            );
        }
    }
}

#[test]
fn every_v0_6_flag_is_accepted_by_serve_or_listed() {
    let doc = doc();
    let command = Args::command();
    let longs: Vec<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .collect();
    let table = table(&doc);
    let mut missing = Vec::new();
    for flag in listed(&doc, "Command-line flags:") {
        let name = flag.trim_start_matches("--");
        if !longs.contains(&name) && !table.contains(&format!("`{flag}`")) {
            missing.push(flag);
        }
    }
    assert!(
        missing.is_empty(),
        "v0.6 flags neither accepted nor in the table: {missing:?}"
    );
    // And the listed ones that are accepted really parse.
    let argv = [
        "t",
        "--descriptors",
        "d.pb",
        "--server",
        "http://r:1",
        "--listen",
        ":9201",
    ];
    Args::try_parse_from(argv).unwrap();
}

#[test]
fn every_v0_6_environment_variable_is_read_or_listed() {
    let doc = doc();
    let command = Args::command();
    let envs: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let table = table(&doc);
    let mut missing = Vec::new();
    for var in listed(&doc, "Environment variables:") {
        if !envs.contains(&var) && !table.contains(&format!("`{var}`")) {
            missing.push(var);
        }
    }
    assert!(
        missing.is_empty(),
        "v0.6 variables neither read nor in the table: {missing:?}"
    );
}

#[test]
fn every_v0_6_metric_is_still_exported() {
    let doc = doc();
    let source = include_str!("../src/metrics/mod.rs");
    for metric in listed(&doc, "Metrics:") {
        assert!(
            source.contains(&format!("\"{metric}\"")),
            "v0.6 metric {metric} is not registered"
        );
    }
}
