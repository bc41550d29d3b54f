//! SNI matching: exact host, then `*.wildcard` (one label), then `*`.

use std::collections::HashMap;

/// Lower-cases a host name and strips one trailing dot.
pub fn normalize_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Maps host names to the index of the spec that serves them.
///
/// Lookup order: exact name, then a `*.parent` wildcard covering exactly one
/// extra label, then a `*` catch-all. When several specs list one host, the
/// first wins.
#[derive(Debug, Default, Clone)]
pub struct HostIndex {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
    catch_all: Option<usize>,
}

impl HostIndex {
    /// Builds the index from the host lists of the specs, in order.
    pub fn new<'a, I, H>(hosts_per_spec: I) -> Self
    where
        I: IntoIterator<Item = H>,
        H: IntoIterator<Item = &'a String>,
    {
        let mut index = HostIndex::default();
        for (i, hosts) in hosts_per_spec.into_iter().enumerate() {
            for host in hosts {
                let host = normalize_host(host);
                if host == "*" {
                    index.catch_all.get_or_insert(i);
                } else if let Some(parent) = host.strip_prefix("*.") {
                    index.wildcard.entry(parent.to_string()).or_insert(i);
                } else {
                    index.exact.entry(host).or_insert(i);
                }
            }
        }
        index
    }

    /// The spec serving `sni`, if any (`None` SNI only matches a catch-all).
    pub fn lookup(&self, sni: Option<&str>) -> Option<usize> {
        let Some(sni) = sni else {
            return self.catch_all;
        };
        let sni = normalize_host(sni);
        if let Some(i) = self.exact.get(&sni) {
            return Some(*i);
        }
        if let Some((_, parent)) = sni.split_once('.') {
            if let Some(i) = self.wildcard.get(parent) {
                return Some(*i);
            }
        }
        self.catch_all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(specs: &[&[&str]]) -> HostIndex {
        let owned: Vec<Vec<String>> = specs
            .iter()
            .map(|hs| hs.iter().map(|h| h.to_string()).collect())
            .collect();
        HostIndex::new(owned.iter())
    }

    #[test]
    fn exact_beats_wildcard() {
        let idx = index(&[&["*.example.com"], &["api.example.com"]]);
        assert_eq!(idx.lookup(Some("api.example.com")), Some(1));
        assert_eq!(idx.lookup(Some("www.example.com")), Some(0));
    }

    #[test]
    fn wildcard_covers_one_label_only() {
        let idx = index(&[&["*.example.com"]]);
        assert_eq!(idx.lookup(Some("a.example.com")), Some(0));
        assert_eq!(idx.lookup(Some("example.com")), None);
        assert_eq!(idx.lookup(Some("a.b.example.com")), None);
        assert_eq!(idx.lookup(Some("aexample.com")), None);
    }

    #[test]
    fn case_and_trailing_dot_are_ignored() {
        let idx = index(&[&["Example.COM."]]);
        assert_eq!(idx.lookup(Some("example.com")), Some(0));
        assert_eq!(idx.lookup(Some("EXAMPLE.com.")), Some(0));
    }

    #[test]
    fn unknown_and_missing_sni() {
        let idx = index(&[&["example.com"]]);
        assert_eq!(idx.lookup(Some("other.org")), None);
        assert_eq!(idx.lookup(None), None);
        assert_eq!(idx.lookup(Some("")), None);
    }

    #[test]
    fn catch_all_is_last_resort() {
        let idx = index(&[&["example.com"], &["*"]]);
        assert_eq!(idx.lookup(Some("example.com")), Some(0));
        assert_eq!(idx.lookup(Some("other.org")), Some(1));
        assert_eq!(idx.lookup(None), Some(1));
    }

    #[test]
    fn first_spec_wins_on_duplicates() {
        let idx = index(&[&["a.com", "*.b.com"], &["a.com", "*.b.com"]]);
        assert_eq!(idx.lookup(Some("a.com")), Some(0));
        assert_eq!(idx.lookup(Some("x.b.com")), Some(0));
    }
}
