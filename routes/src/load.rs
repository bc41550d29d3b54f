//! From config text to a validated [`Config`], with every error placed at
//! `file:line: key`.

use crate::config::Config;
use crate::diag::{Diagnostic, Diagnostics, KeyPath, Seg};
use crate::raw::RawConfig;
use crate::validate::Problem;
use std::path::Path;

/// Expands `${VAR}`s using `env`, parses and validates `text` read from
/// `file`. Relative paths in the config resolve against the file's directory.
pub fn load(
    file: &str,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, Diagnostics> {
    load_checked(file, text, env, &|_| Vec::new())
}

/// Like [`load`], then runs `extra` on the valid config (checks that need
/// I/O, done by the caller) and places its problems at their lines too.
pub fn load_checked(
    file: &str,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
    extra: &dyn Fn(&Config) -> Vec<Problem>,
) -> Result<Config, Diagnostics> {
    load_with_warnings(file, text, env, extra, &|_| Vec::new()).map(|(c, _)| c)
}

/// Like [`load_checked`], and also runs `warn` on the valid config: its
/// problems do not make the config invalid and come back, placed at their
/// lines, beside it.
pub fn load_with_warnings(
    file: &str,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
    extra: &dyn Fn(&Config) -> Vec<Problem>,
    warn: &dyn Fn(&Config) -> Vec<Problem>,
) -> Result<(Config, Diagnostics), Diagnostics> {
    let diag = |line, key: String, message: String| Diagnostic {
        file: file.to_string(),
        line,
        key,
        message,
    };
    let text = crate::env::expand(text, env).map_err(|unset| {
        Diagnostics(
            unset
                .into_iter()
                .map(|u| {
                    diag(
                        u.line,
                        String::new(),
                        format!("environment variable {} is not set (use ${{{}:-default}} for a default)", u.name, u.name),
                    )
                })
                .collect(),
        )
    })?;
    load_expanded(file, &text, extra, warn)
}

/// The text written for an unset variable by [`load_with_stand_ins`]: valid
/// where a secret goes (a token of at least 16 printable characters), and
/// self-explaining in an error about any other value.
pub fn stand_in(name: &str) -> String {
    format!("({name} is not set)")
}

/// Like [`load_with_warnings`], for `duotone check` where the environment of
/// the proxy is not at hand: an unset variable without a default is a
/// warning, and the file is checked with [`stand_in`] in its place.
pub fn load_with_stand_ins(
    file: &str,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
    extra: &dyn Fn(&Config) -> Vec<Problem>,
    warn: &dyn Fn(&Config) -> Vec<Problem>,
) -> Result<(Config, Diagnostics), Diagnostics> {
    let (text, unset) = crate::env::expand_with_stand_ins(text, env, stand_in);
    let unset: Vec<Diagnostic> = unset
        .into_iter()
        .map(|u| Diagnostic {
            file: file.to_string(),
            line: u.line,
            key: String::new(),
            message: format!(
                "environment variable {} is not set here: checked with a stand-in; \
                 `duotone run` needs it (or ${{{}:-default}})",
                u.name, u.name
            ),
        })
        .collect();
    match load_expanded(file, &text, extra, warn) {
        Ok((c, Diagnostics(mut warnings))) => {
            let mut all = unset;
            all.append(&mut warnings);
            Ok((c, Diagnostics(all)))
        }
        // The errors say what is wrong; the unset variables are printed with
        // them, as they may be the cause.
        Err(Diagnostics(mut errors)) => {
            let mut all = unset;
            all.append(&mut errors);
            Err(Diagnostics(all))
        }
    }
}

/// Parses and validates text whose variables are already expanded.
fn load_expanded(
    file: &str,
    text: &str,
    extra: &dyn Fn(&Config) -> Vec<Problem>,
    warn: &dyn Fn(&Config) -> Vec<Problem>,
) -> Result<(Config, Diagnostics), Diagnostics> {
    let diag = |line, key: String, message: String| Diagnostic {
        file: file.to_string(),
        line,
        key,
        message,
    };
    let text = text.to_string();
    let doc = text.parse::<toml_edit::ImDocument<String>>().map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start)).unwrap_or(0);
        Diagnostics(vec![diag(line, String::new(), first_line(e.message()))])
    })?;
    let raw: RawConfig = toml::from_str(&text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let key = key_at(&doc, offset).unwrap_or_default();
        Diagnostics(vec![diag(
            line_of(&text, offset),
            key,
            first_line(e.message()),
        )])
    })?;
    let base = Path::new(file).parent().unwrap_or(Path::new("."));
    let checked = crate::validate::validate(&raw, base).and_then(|c| {
        let more = extra(&c);
        if more.is_empty() {
            Ok(c)
        } else {
            Err(more)
        }
    });
    let place = |problems: Vec<Problem>| {
        let mut list: Vec<Diagnostic> = problems
            .into_iter()
            .map(|(path, msg)| {
                let line = span_of(&doc, &path).map(|o| line_of(&text, o)).unwrap_or(0);
                diag(line, path.to_string(), msg)
            })
            .collect();
        list.sort_by_key(|d| d.line);
        Diagnostics(list)
    };
    match checked {
        Ok(c) => {
            let warnings = place(warn(&c));
            Ok((c, warnings))
        }
        Err(problems) => Err(place(problems)),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Byte offset where `path` is written (its key, or the nearest ancestor found).
fn span_of(doc: &toml_edit::ImDocument<String>, path: &KeyPath) -> Option<usize> {
    use toml_edit::{Item, Value};
    enum Node<'a> {
        Item(&'a Item),
        Table(&'a toml_edit::Table),
        Value(&'a Value),
    }
    let mut node = Node::Table(doc.as_table());
    let mut best: Option<usize> = None;
    for seg in &path.0 {
        let next = match (seg, node) {
            (Seg::Key(k), Node::Table(t)) | (Seg::Key(k), Node::Item(Item::Table(t))) => {
                if let Some(s) = t.key(k).and_then(|key| key.span()) {
                    best = Some(s.start);
                }
                t.get(k).map(Node::Item)
            }
            (Seg::Key(k), Node::Item(Item::Value(Value::InlineTable(t))))
            | (Seg::Key(k), Node::Value(Value::InlineTable(t))) => {
                if let Some(s) = t.key(k).and_then(|key| key.span()) {
                    best = Some(s.start);
                }
                t.get(k).map(Node::Value)
            }
            (Seg::Index(i), Node::Item(Item::ArrayOfTables(a))) => a.get(*i).map(|t| {
                if let Some(s) = t.span() {
                    best = Some(s.start);
                }
                Node::Table(t)
            }),
            (Seg::Index(i), Node::Item(Item::Value(Value::Array(a))))
            | (Seg::Index(i), Node::Value(Value::Array(a))) => a.get(*i).map(|v| {
                if let Some(s) = v.span() {
                    best = Some(s.start);
                }
                Node::Value(v)
            }),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    best
}

/// Dotted key path of the deepest item whose span contains `offset`.
fn key_at(doc: &toml_edit::ImDocument<String>, offset: usize) -> Option<String> {
    fn walk(t: &toml_edit::Table, path: &KeyPath, offset: usize, out: &mut Option<KeyPath>) {
        for (k, item) in t.iter() {
            let here = path.key(k);
            let key_span = t.key(k).and_then(|key| key.span());
            let hit = |s: Option<std::ops::Range<usize>>| s.is_some_and(|s| s.contains(&offset));
            match item {
                toml_edit::Item::Table(sub) => walk(sub, &here, offset, out),
                toml_edit::Item::ArrayOfTables(a) => {
                    for (i, sub) in a.iter().enumerate() {
                        walk(sub, &here.index(i), offset, out);
                    }
                }
                toml_edit::Item::Value(v) => {
                    if hit(key_span) || hit(v.span()) {
                        *out = Some(here);
                    }
                }
                toml_edit::Item::None => {}
            }
        }
    }
    let mut out = None;
    walk(doc.as_table(), &KeyPath::default(), offset, &mut out);
    out.map(|p| p.to_string())
}
