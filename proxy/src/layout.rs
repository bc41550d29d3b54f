//! The module graph of this crate has no cycle: a module never imports,
//! directly or through others, a module that imports it. Read from the
//! sources (`crate::…` and `super::…` paths outside comments and test
//! modules), so a new cycle fails here with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its module path (`lane::h2`).
fn modules(root: &Path, dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            modules(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path).with_extension("");
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
            out.insert(parts.join("::"), path);
        }
    }
}

/// The source without comments and without `#[cfg(test)]` items at the end.
fn code(src: &str) -> String {
    let src = src.split("#[cfg(test)]").next().unwrap_or("");
    src.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths after each `prefix` in `code` (`a::b::C`, or each item of a
/// `{…}` group, joined to what precedes it).
fn paths(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches(':');
        if rest[end..].starts_with('{') && rest[..end].ends_with("::") {
            let group = &rest[end + 1..rest[end..].find('}').map_or(rest.len(), |j| end + j)];
            for item in group.split(',') {
                let item = item.split_whitespace().next().unwrap_or("");
                let item = item.trim_start_matches("self").trim_start_matches("::");
                out.push(if item.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}::{item}")
                });
            }
        } else {
            out.push(path.to_string());
        }
    }
    out
}

/// The longest module named by a prefix of `path`.
fn resolve(path: &[&str], mods: &BTreeMap<String, PathBuf>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| mods.contains_key(m))
}

#[test]
fn modules_import_each_other_without_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut mods = BTreeMap::new();
    modules(&root, &root, &mut mods);
    assert!(mods.len() > 20, "found only {} modules", mods.len());
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, file) in &mods {
        let src = std::fs::read_to_string(file).unwrap_or_default();
        let code = code(&src);
        let me: Vec<&str> = name.split("::").filter(|s| !s.is_empty()).collect();
        let is_mod_rs = file.ends_with("mod.rs");
        let mut deps = BTreeSet::new();
        for p in paths(&code, "crate::") {
            let segs: Vec<&str> = p.split("::").collect();
            deps.extend(resolve(&segs, &mods));
        }
        for p in paths(&code, "super::") {
            let mut segs: Vec<&str> = p.split("::").collect();
            let mut base = me.clone();
            if !is_mod_rs {
                base.pop();
            }
            base.pop();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                base.pop();
            }
            base.extend(segs);
            deps.extend(resolve(&base, &mods));
        }
        deps.remove(name);
        deps.remove("");
        graph.insert(name.clone(), deps);
    }
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        stack.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle in proxy/src: {}", cycle.join(" → "));
        }
    }
}
