//! `${VAR}` and `${VAR:-default}` expansion of the config text.

/// An unset variable without a default, with the 1-based line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unset {
    /// Line of the reference.
    pub line: usize,
    /// The variable's name.
    pub name: String,
}

/// Expands variables in `text` using `lookup`. Lines whose first non-blank
/// character is `#` are left alone. `$${` writes a literal `${`.
/// Returns the expanded text or every unset variable.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<Unset>> {
    let (out, missing) = expand_with(text, lookup, |_| None);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// Like [`expand`], but writes `stand_in(name)` for every unset variable
/// without a default instead of failing, and returns those variables beside
/// the text. `duotone check` uses it: a secret such as the admin token is
/// often not set where a config is checked (CI, `docker run … check`).
pub fn expand_with_stand_ins(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
    stand_in: impl Fn(&str) -> String,
) -> (String, Vec<Unset>) {
    expand_with(text, lookup, |name| Some(stand_in(name)))
}

/// The expansion: `missing(name)` gives the text for an unset variable
/// without a default (`None`: leave it out and report it).
fn expand_with(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
    missing_text: impl Fn(&str) -> Option<String>,
) -> (String, Vec<Unset>) {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find("${") {
            if rest[..pos].ends_with('$') {
                out.push_str(&rest[..pos - 1]);
                out.push_str("${");
                rest = &rest[pos + 2..];
                continue;
            }
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[pos..]);
                rest = "";
                break;
            };
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match lookup(name).filter(|v| !v.is_empty() || default.is_none()) {
                Some(v) => out.push_str(&v),
                None => match default {
                    Some(d) => out.push_str(d),
                    None => {
                        if let Some(t) = missing_text(name) {
                            out.push_str(&t);
                        }
                        missing.push(Unset {
                            line: n + 1,
                            name: name.to_string(),
                        })
                    }
                },
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    (out, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_and_default() {
        let t = "a = \"${TOKEN}\"\nb = \"${PORT:-8080}\"\nc = \"${EMPTY:-x}\"\nd = \"${EMPTY}\"\n";
        assert_eq!(
            expand(t, env).unwrap(),
            "a = \"s3cret\"\nb = \"8080\"\nc = \"x\"\nd = \"\"\n"
        );
    }

    #[test]
    fn reports_every_unset_with_line() {
        let t = "a = 1\nb = \"${NOPE}\"\n# c = \"${IGNORED}\"\nd = \"${ALSO_NOPE}\"";
        let err = expand(t, env).unwrap_err();
        assert_eq!(
            err,
            vec![
                Unset {
                    line: 2,
                    name: "NOPE".into()
                },
                Unset {
                    line: 4,
                    name: "ALSO_NOPE".into()
                }
            ]
        );
    }

    #[test]
    fn stand_ins_only_for_unset_without_default() {
        let t = "a = \"${NOPE}\"\nb = \"${NOPE:-d}\"\nc = \"${TOKEN}\"\n";
        let (out, unset) = expand_with_stand_ins(t, env, |n| format!("<{n}>"));
        assert_eq!(out, "a = \"<NOPE>\"\nb = \"d\"\nc = \"s3cret\"\n");
        assert_eq!(
            unset,
            vec![Unset {
                line: 1,
                name: "NOPE".into()
            }]
        );
    }

    #[test]
    fn escapes_and_unterminated() {
        assert_eq!(
            expand("x = \"$${TOKEN}\"", env).unwrap(),
            "x = \"${TOKEN}\""
        );
        assert_eq!(expand("x = \"${TOKEN\"", env).unwrap(), "x = \"${TOKEN\"");
    }
}
