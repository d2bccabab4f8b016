//! The crate's dependency rule, checked on its sources: modules depend downwards only
//! (`app` → `server` → `reload`, `sources` → `protocol` → `core` → `metrics`), the pure precedence
//! rules name nothing but definitions and rows, and no two modules depend on each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, lowest first; modules of one rank may not name each other.
const RANKS: &[(&str, u8)] = &[
    ("metrics", 0),
    ("core", 1),
    ("protocol", 2),
    ("reload", 3),
    ("sources", 3),
    ("server", 4),
    ("app", 5),
];

fn rank(top: &str) -> u8 {
    RANKS
        .iter()
        .find(|(m, _)| *m == top)
        .map(|(_, r)| *r)
        .unwrap_or_else(|| panic!("module {top} has no layer in tests/layers.rs"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file, e.g. `core/engine/mod.rs` → `["core", "engine"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// Every `crate::a::b…` and `super::…` path a file names, resolved to a module path. Comment lines
/// are skipped.
fn references(module: &[String], is_mod_rs: bool, text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::").or_else(|| rest.find("super::")) {
            let path: String = rest[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            rest = &rest[i + path.len().max(1)..];
            let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            // `super` of a file module is its parent; a mod.rs file is its directory's module.
            let mut base: Vec<String> = module.to_vec();
            if !is_mod_rs {
                base.pop();
            }
            let mut resolved = Vec::new();
            let mut segs = segs.into_iter().peekable();
            match segs.peek() {
                Some(&"crate") => {
                    segs.next();
                }
                Some(&"super") => {
                    segs.next();
                    while segs.peek() == Some(&"super") {
                        segs.next();
                        base.pop();
                    }
                    resolved = base;
                }
                _ => continue,
            }
            resolved.extend(
                segs.take_while(|s| s.chars().next().is_some_and(char::is_lowercase))
                    .map(str::to_owned),
            );
            if !resolved.is_empty() {
                out.push(resolved);
            }
        }
    }
    out
}

struct Graph {
    /// (from node, to node) → a file that makes the edge.
    edges: BTreeMap<(String, String), String>,
}

/// Nodes are modules two levels deep (`core::engine`, `app::config`, `metrics`).
fn node(path: &[String]) -> String {
    path.iter().take(2).cloned().collect::<Vec<_>>().join("::")
}

fn graph() -> Graph {
    let src =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if module.is_empty() {
            continue; // lib.rs and main.rs sit above every layer
        }
        let is_mod_rs = file.file_name().is_some_and(|n| n == "mod.rs");
        let text = std::fs::read_to_string(&file).expect("read source");
        let from = node(&module);
        for target in references(&module, is_mod_rs, &text) {
            let to = node(&target);
            if to != from && !from.starts_with(&format!("{to}::")) {
                edges
                    .entry((from.clone(), to))
                    .or_insert_with(|| file.display().to_string());
            }
        }
    }
    Graph { edges }
}

fn top(node: &str) -> &str {
    node.split("::").next().unwrap_or(node)
}

#[test]
fn modules_depend_only_on_lower_layers() {
    let g = graph();
    assert!(
        g.edges.len() > 20,
        "the scan found too few dependencies to be reading the sources"
    );
    let upward: Vec<String> = g
        .edges
        .iter()
        .filter(|((from, to), _)| top(from) != top(to) && rank(top(from)) <= rank(top(to)))
        .map(|((from, to), file)| format!("{from} → {to} ({file})"))
        .collect();
    assert!(
        upward.is_empty(),
        "dependencies against the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_precedence_rules_name_only_definitions_and_rows() {
    let g = graph();
    let named: BTreeSet<&str> = g
        .edges
        .keys()
        .filter(|(from, _)| from == "core::decide")
        .map(|(_, to)| to.as_str())
        .collect();
    let allowed: BTreeSet<&str> = ["core::descriptor", "core::source"].into();
    assert!(named.is_subset(&allowed), "core::decide names {named:?}");
    let text = std::fs::read_to_string(
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("src/core/decide.rs"),
    )
    .expect("read decide.rs");
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect();
    for word in [
        "async",
        "Instant",
        "SystemTime",
        "tokio",
        "prometheus",
        "Metrics",
    ] {
        assert!(!code.contains(word), "core::decide uses {word}");
    }
}

#[test]
fn no_two_modules_depend_on_each_other() {
    let g = graph();
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in g.edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // Depth-first search for a back edge.
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, bool>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(true) => return None,
            Some(false) => {
                let at = stack.iter().position(|s| *s == n).unwrap_or(0);
                let mut cycle: Vec<String> = stack[at..].iter().map(|s| (*s).to_owned()).collect();
                cycle.push(n.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        state.insert(n, false);
        stack.push(n);
        for m in next.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, next, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n, true);
        None
    }
    let mut state = BTreeMap::new();
    for n in next.keys() {
        if let Some(cycle) = visit(n, &next, &mut state, &mut Vec::new()) {
            panic!("dependency cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_scan_sees_a_known_dependency_and_resolves_super() {
    let module = vec!["core".to_owned(), "cache".to_owned()];
    let refs = references(
        &module,
        false,
        "use super::clock::Clock;\nuse crate::metrics::Metrics;",
    );
    assert_eq!(
        refs,
        vec![
            vec!["core".to_owned(), "clock".to_owned()],
            vec!["metrics".to_owned(), "Metrics".to_owned()][..1].to_vec(),
        ]
    );
    let g = graph();
    assert!(
        g.edges
            .contains_key(&("core::engine".to_owned(), "core::registry".to_owned()))
    );
}
