//! The docs stay true: README.md and docs/*.md, checked against the real binary.
//!
//! - Every ```yaml block is checked. A whole config (a top-level `listen:` line) must pass
//!   `hydrus check --config`. A fragment says what it is in an HTML comment on the line before
//!   its fence, and is embedded in a minimal config and checked the same way:
//!
//!   | marker | the block is | checked as |
//!   |---|---|---|
//!   | `<!-- check: config -->` (optional) | a whole config | itself |
//!   | `<!-- check: filter -->` | entries of a route's `filters:` list (`- hydrus: ...`) | the `filters:` of a catch-all route |
//!   | `<!-- check: route -->` | entries of the `routes:` list | the `routes:` of a config |
//!   | `<!-- check: cluster -->` | entries of the `clusters:` map (`NAME: {endpoints: ...}`) | the clusters of a config routing to the first |
//!   | `<!-- check: top -->` | top-level fields (`limits:`, `tls:`, ...) | added to a minimal config |
//!   | `<!-- check: ktable -->` | a k-table | `hydrus_filters::KTable::parse` |
//!   | `<!-- check: none REASON -->` | something not checkable (say why) | not checked |
//!
//!   Clusters a fragment names (`cluster:`, e2e `groups:`) are declared for it. Relative table
//!   paths need not exist (`check` warns; warnings pass), errors fail. A yaml block that is
//!   neither whole nor marked fails the test, so no example goes unchecked.
//! - Every relative link resolves to a file, and an `#anchor` to a heading of that file
//!   (GitHub's slugs).
//! - README.md stays under 20 KB, links to every page of docs/, and every page starts with its
//!   title and a sentence on what a reader comes to it for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const README_LIMIT: usize = 20 * 1024;

/// README.md and every docs/*.md, by path relative to the repository, with their text.
fn pages() -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(Path::new(ROOT).join(&n)).unwrap();
            (n, text)
        })
        .collect()
}

/// A fenced code block: where it starts (1-based line of the fence), its info string, the
/// marker comment on the line before the fence (if any), and its text.
#[derive(Debug)]
struct Block {
    line: usize,
    info: String,
    marker: Option<String>,
    body: String,
}

fn blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            let indent = lines[i].len() - trimmed.len();
            let marker = i
                .checked_sub(1)
                .map(|p| lines[p].trim())
                .and_then(|l| l.strip_prefix("<!-- check:"))
                .and_then(|l| l.strip_suffix("-->"))
                .map(|m| m.trim().to_string());
            let start = i;
            let mut body = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                let l = lines[i];
                body.push_str(l.get(indent.min(l.len() - l.trim_start().len())..).unwrap());
                body.push('\n');
                i += 1;
            }
            out.push(Block {
                line: start + 1,
                info: info.trim().to_string(),
                marker,
                body,
            });
        }
        i += 1;
    }
    out
}

/// Whether a block is a whole config: a `listen:` field at the top level.
fn is_whole(body: &str) -> bool {
    body.lines().any(|l| l.starts_with("listen:"))
}

/// The text indented by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Clusters a fragment names: `cluster:` values and e2e `groups:`.
fn named_clusters(v: &serde_norway::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_norway::Value::Mapping(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    (Some("cluster"), serde_norway::Value::String(s)) => {
                        out.insert(s.clone());
                    }
                    (Some("groups"), serde_norway::Value::Sequence(s)) => {
                        out.extend(s.iter().filter_map(|g| g.as_str().map(String::from)));
                    }
                    _ => named_clusters(v, out),
                }
            }
        }
        serde_norway::Value::Sequence(s) => s.iter().for_each(|v| named_clusters(v, out)),
        _ => {}
    }
}

fn clusters_section(names: &BTreeSet<String>) -> String {
    let mut s = String::from("clusters:\n");
    for n in names {
        s.push_str(&format!("  {n}:\n    endpoints: [\"127.0.0.1:9\"]\n"));
    }
    s
}

const HEAD: &str = "listen: 127.0.0.1:8080\nadmin:\n  listen: 127.0.0.1:9901\n";

/// The config a fragment of `kind` is checked in, or why it cannot be built.
fn embed(kind: &str, body: &str) -> Result<String, String> {
    let value: serde_norway::Value =
        serde_norway::from_str(body).map_err(|e| format!("not YAML: {e}"))?;
    let mut clusters = BTreeSet::new();
    named_clusters(&value, &mut clusters);
    match kind {
        "filter" => {
            if !value.is_sequence() {
                return Err("a filter fragment is a list of `- KIND: {...}` entries".into());
            }
            clusters.insert("docs-default".into());
            Ok(format!(
                "{HEAD}{}routes:\n  - name: docs\n    cluster: docs-default\n    filters:\n{}\n",
                clusters_section(&clusters),
                indent(body, 6)
            ))
        }
        "route" => {
            if !value.is_sequence() {
                return Err("a route fragment is a list of `- name: ...` entries".into());
            }
            Ok(format!(
                "{HEAD}{}routes:\n{}\n",
                clusters_section(&clusters),
                indent(body, 2)
            ))
        }
        "cluster" => {
            let first = value
                .as_mapping()
                .and_then(|m| m.keys().next())
                .and_then(|k| k.as_str())
                .ok_or("a cluster fragment is a map of `NAME: {endpoints: ...}` entries")?
                .to_string();
            Ok(format!(
                "{HEAD}clusters:\n{}\nroutes:\n  - name: docs\n    cluster: {first}\n",
                indent(body, 2)
            ))
        }
        "top" => {
            if !value.is_mapping() {
                return Err("a top fragment is a map of top-level fields".into());
            }
            clusters.insert("docs-default".into());
            Ok(format!(
                "{HEAD}{}routes:\n  - name: docs\n    cluster: docs-default\n{body}",
                clusters_section(&clusters),
            ))
        }
        other => Err(format!("unknown kind `{other}`")),
    }
}

/// `hydrus check` on a config, in a directory of its own; Err with its output when it fails.
/// Its `FILE:LINE:` places name `at`: for a whole config, the page and its line there (the block
/// starts after `fence`); for a fragment, the config it was embedded in, printed after.
fn check(config: &str, at: &str, fence: Option<usize>) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hydrus.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hydrus"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("OK:") {
        return Ok(());
    }
    let said = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let prefix = format!("{}:", path.display());
    let mut placed = String::new();
    for l in said.lines() {
        let line = match (l.find(&prefix), fence) {
            (Some(i), Some(fence)) => {
                let rest = &l[i + prefix.len()..];
                let digits = rest.chars().take_while(char::is_ascii_digit).count();
                match rest[..digits].parse::<usize>() {
                    Ok(n) => format!("{}{at}:{}{}", &l[..i], fence + n, &rest[digits..]),
                    Err(_) => l.replace(&prefix, &format!("{at}:")),
                }
            }
            _ => l.replace(&prefix, "(embedded config):"),
        };
        placed.push_str(&line);
        placed.push('\n');
    }
    if fence.is_none() {
        placed.push_str(&format!("--- the embedded config:\n{config}"));
    }
    Err(placed)
}

/// What is wrong with one yaml block of page `page`, if anything; `None` for other languages.
fn check_block(page: &str, b: &Block) -> Option<Result<(), String>> {
    if !matches!(b.info.as_str(), "yaml" | "yml") {
        return b
            .marker
            .as_ref()
            .map(|_| Err(format!("a check marker before a ```{} block", b.info)));
    }
    let marker = b.marker.as_deref();
    let (kind, rest) = match marker {
        Some(m) => m.split_once(' ').unwrap_or((m, "")),
        None if is_whole(&b.body) => ("config", ""),
        None => {
            return Some(Err(
                "a yaml fragment without a marker: put `<!-- check: KIND -->` on the line \
                 before its fence (filter, route, cluster, top, ktable, config, or \
                 `none REASON`; see tests/docs.rs)"
                    .into(),
            ))
        }
    };
    Some(match kind {
        "none" if rest.trim().is_empty() => Err("`check: none` needs a reason".into()),
        "none" => Ok(()),
        "config" if !is_whole(&b.body) => {
            Err("marked config but has no top-level `listen:`".into())
        }
        "config" => check(&b.body, page, Some(b.line)),
        "ktable" => hydrus_filters::KTable::parse(&b.body)
            .map(|_| ())
            .map_err(|e| format!("k-table: {e}")),
        kind => embed(kind, &b.body).and_then(|c| check(&c, page, None)),
    })
}

#[test]
fn every_yaml_block_is_a_config_hydrus_check_accepts() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, text) in pages() {
        for b in blocks(&text) {
            match check_block(&name, &b) {
                None => {}
                Some(Ok(())) => checked += 1,
                Some(Err(e)) => failures.push(format!("{name}:{}: {e}", b.line)),
            }
        }
        // A marker must sit right above a fence.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.trim().starts_with("<!-- check:")
                && !lines
                    .get(i + 1)
                    .is_some_and(|n| n.trim_start().starts_with("```"))
            {
                failures.push(format!(
                    "{name}:{}: a check marker not followed by a code fence",
                    i + 1
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    assert!(checked >= 2, "only {checked} yaml blocks found");
}

#[test]
fn the_checks_catch_mistakes() {
    // The harness is not vacuous: `check` refuses an unknown field in each kind of fragment,
    // an unmarked fragment fails, and a bad k-table does not parse.
    let block = |marker: Option<&str>, body: &str| Block {
        line: 1,
        info: "yaml".into(),
        marker: marker.map(String::from),
        body: body.into(),
    };
    let bad = [
        block(Some("filter"), "- rollout: { percent: 10, colour: red }\n"),
        block(Some("filter"), "- hydrus:\n    default_strategy: s1\n"),
        block(
            Some("cluster"),
            "a:\n  endpoints: [\"127.0.0.1:9\"]\n  lb: random\n",
        ),
        block(
            Some("route"),
            "- name: r\n  cluster: c\n  match: { paht: /x }\n",
        ),
        block(Some("top"), "limits: { idle_timeout: soon }\n"),
        block(
            Some("ktable"),
            "window_secs: 21600\nscenarios: { default: [1, 2] }\n",
        ),
        block(Some("none"), "a: 1\n"),
        block(Some("unheard-of"), "a: 1\n"),
        block(None, "- rollout: { percent: 10 }\n"),
        block(
            None,
            "listen: 127.0.0.1:8080\nroutes: []\nclusters: {}\nbogus: 1\n",
        ),
    ];
    for b in &bad {
        assert!(
            matches!(check_block("test", b), Some(Err(_))),
            "passed: {:?} {}",
            b.marker,
            b.body
        );
    }
    let good = [
        block(Some("filter"), "- rollout: { percent: 10 }\n"),
        block(Some("cluster"), "a:\n  endpoints: [\"127.0.0.1:9\"]\n"),
        block(Some("route"), "- name: r\n  cluster: c\n"),
        block(Some("top"), "limits: { idle_timeout: 30s }\n"),
        block(Some("none a shell transcript"), "$ hydrus\n"),
    ];
    for b in &good {
        let r = check_block("test", b);
        assert!(matches!(r, Some(Ok(()))), "{:?}: {r:?}", b.marker);
    }
}

/// Headings of a markdown text, as GitHub's anchors: lowercase, punctuation removed (but `-`
/// and `_`), spaces to `-`; a repeated one gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for l in text.lines() {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let hashes = l.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !l[hashes..].starts_with(' ') {
            continue;
        }
        let slug: String = l[hashes..]
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut s = slug.clone();
        let mut n = 0;
        while out.contains(&s) {
            n += 1;
            s = format!("{slug}-{n}");
        }
        out.insert(s);
    }
    out
}

/// Link targets of a markdown text (`[text](target)` and images), outside code blocks and
/// code spans, with the line each is on.
fn links(text: &str) -> Vec<(usize, String)> {
    // Blank out fenced blocks, keeping line numbers.
    let mut prose = String::new();
    let mut fenced = false;
    for l in text.lines() {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            prose.push_str(l);
        }
        prose.push('\n');
    }
    // Blank out code spans (a run of backticks up to the next run of the same length).
    let bytes = prose.as_bytes();
    let mut clean = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'`' {
            let run = bytes[i..].iter().take_while(|&&c| c == b'`').count();
            let fence = &prose[i..i + run];
            if let Some(end) = prose[i + run..].find(fence) {
                let span = &prose[i..i + run + end + run];
                clean.extend(span.bytes().map(|c| if c == b'\n' { b'\n' } else { b' ' }));
                i += run + end + run;
                continue;
            }
        }
        clean.push(bytes[i]);
        i += 1;
    }
    let clean = String::from_utf8_lossy(&clean).into_owned();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = clean[from..].find("](") {
        let start = from + at + 2;
        let end = clean[start..]
            .find(|c: char| c == ')' || c.is_whitespace())
            .map_or(clean.len(), |e| start + e);
        let line = clean[..start].matches('\n').count() + 1;
        out.push((line, clean[start..end].to_string()));
        from = end;
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let mut failures = Vec::new();
    let mut seen = 0;
    for (name, text) in pages() {
        let dir = Path::new(ROOT).join(&name).parent().unwrap().to_path_buf();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            seen += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file: PathBuf = if path.is_empty() {
                Path::new(ROOT).join(&name)
            } else {
                dir.join(path)
            };
            if !file.exists() {
                failures.push(format!("{name}:{line}: {target}: no such file"));
                continue;
            }
            if let Some(a) = anchor {
                let heads = if file.extension().is_some_and(|e| e == "md") {
                    anchors(&std::fs::read_to_string(&file).unwrap())
                } else {
                    BTreeSet::new()
                };
                if !heads.contains(a) {
                    failures.push(format!(
                        "{name}:{line}: {target}: no heading with anchor #{a} (there are {heads:?})"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(seen > 20, "only {seen} relative links found");
}

#[test]
fn anchors_follow_githubs_slugs() {
    let a = anchors("# Hedging: Kwiken's reissues under a budget\n## gRPC, HTTP/2 and TLS\n```\n# not a heading\n```\n### `rollout`\n## Speed\n## Speed\n");
    let want: BTreeSet<String> = [
        "hedging-kwikens-reissues-under-a-budget",
        "grpc-http2-and-tls",
        "rollout",
        "speed",
        "speed-1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(a, want);
    let l =
        links("see [a](x.md#y) and `[b](not-a-link)`\n```\n[c](nor-this)\n```\n![d](img.svg)\n");
    assert_eq!(
        l,
        vec![(1, "x.md#y".to_string()), (5, "img.svg".to_string())]
    );
}

#[test]
fn the_readme_is_a_ten_minute_read_and_leads_to_every_page() {
    let pages = pages();
    let readme = &pages[0].1;
    assert!(
        readme.len() < README_LIMIT,
        "README.md is {} bytes, over {README_LIMIT}: move detail to a page of docs/",
        readme.len()
    );
    let linked: BTreeSet<String> = links(readme).into_iter().map(|(_, t)| t).collect();
    for (name, text) in &pages[1..] {
        assert!(
            linked
                .iter()
                .any(|t| t == name || t.starts_with(&format!("{name}#"))),
            "README.md does not link to {name}"
        );
        // Each page opens with its title, then a sentence on what a reader comes to it for.
        let mut lines = text.lines();
        assert!(
            lines.next().is_some_and(|l| l.starts_with("# ")),
            "{name} does not start with a title"
        );
        assert!(
            lines.next().is_some_and(|l| l.is_empty())
                && lines
                    .next()
                    .is_some_and(|l| !l.is_empty() && !l.starts_with(['#', '`', '|', '<'])),
            "{name}: the title is not followed by a sentence on what the page is for"
        );
    }
}
