//! The house rules that keep the code navigable, checked on the sources: no module of `src/`,
//! `filters/src`, `solve/src`, `upstream/src`, `discovery/src` or `otel/src` imports one that imports it back (a child using its parent's
//! items, or a parent its child's, aside), the proxy crate stays under 10,000 lines, and the
//! proxy's own dependencies include none of what only the offline half needs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// A file's module path within its crate (`edge/conns/h2.rs` -> `edge::conns::h2`).
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without its comments and its `#[cfg(test)] mod tests { ... }`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::a::b` and `super::...` paths a file names, resolved to module paths.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let path: String = code[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
            let mut base: Vec<String> = if parts.first() == Some(&"crate") {
                parts.remove(0);
                Vec::new()
            } else {
                module.to_vec()
            };
            while parts.first() == Some(&"super") {
                parts.remove(0);
                base.pop();
            }
            base.extend(parts.iter().map(|p| p.to_string()));
            out.push(base);
        }
    }
    out
}

/// The import cycles among the modules of one crate's source tree, at the level where two
/// modules are siblings.
fn cycles(root: &Path) -> Vec<BTreeSet<String>> {
    let files = sources(root);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(root, f)).collect();
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in &files {
        let m = module_of(root, f);
        if m.last().is_some_and(|l| l == "tests") {
            continue;
        }
        let text = code(&std::fs::read_to_string(f).unwrap());
        for mut target in references(&m, &text) {
            while !target.is_empty() && !modules.contains(&target) {
                target.pop();
            }
            let related = target.is_empty() || m.starts_with(&target) || target.starts_with(&m);
            if related {
                continue;
            }
            // Compare them where they are siblings.
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            let (a, b) = (m[..=common].to_vec(), target[..=common].to_vec());
            graph.entry(a).or_default().insert(b);
        }
    }
    // Strongly connected components of more than one module (Tarjan's, iteratively small).
    let nodes: Vec<Vec<String>> = graph.keys().cloned().collect();
    let reach = |from: &Vec<String>| -> BTreeSet<Vec<String>> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for next in graph.get(&n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&Vec<String>, BTreeSet<Vec<String>>> =
        nodes.iter().map(|n| (n, reach(n))).collect();
    let mut found: Vec<BTreeSet<String>> = Vec::new();
    for n in &nodes {
        let cycle: BTreeSet<String> = reachable[n]
            .iter()
            .filter(|m| *m != n && reachable.get(m).is_some_and(|r| r.contains(n)))
            .chain([n])
            .map(|m| m.join("::"))
            .collect();
        if cycle.len() > 1 && !found.contains(&cycle) {
            found.push(cycle);
        }
    }
    found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    for dir in [
        "src",
        "filters/src",
        "solve/src",
        "upstream/src",
        "discovery/src",
        "otel/src",
    ] {
        let c = cycles(&Path::new(ROOT).join(dir));
        assert!(c.is_empty(), "import cycles in {dir}: {c:?}");
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(
        dir.path().join("b.rs"),
        "use super::a::A; // back\npub struct B;\n",
    )
    .unwrap();
    assert_eq!(cycles(dir.path()).len(), 1);
    std::fs::write(
        dir.path().join("b.rs"),
        "// use super::a::A;\npub struct B;\n",
    )
    .unwrap();
    assert!(cycles(dir.path()).is_empty());
}

#[test]
fn the_proxy_crate_stays_under_10000_lines() {
    let lines: usize = sources(&Path::new(ROOT).join("src"))
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap().lines().count())
        .sum();
    assert!(lines < 10_000, "src/ has {lines} lines");
}

#[test]
fn the_proxy_depends_on_none_of_what_only_the_solver_needs() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "hydrus",
            "--edges",
            "normal",
            "--prune",
            "hydrus-solve",
            "--offline",
        ])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && tree.contains("pingora"), "{tree}");
    for solver_only in ["rayon", "plotters", "pathfinding", "indicatif"] {
        assert!(
            !tree
                .lines()
                .any(|l| l.contains(&format!(" {solver_only} v"))),
            "{solver_only} in the proxy's dependencies:\n{tree}"
        );
    }
}
