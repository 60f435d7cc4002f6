//! Explicit kernel → DTK image mappings, from the configuration or a ConfigMap.
//!
//! Regexps are unanchored and use RE2 syntax (the `regex` crate), as KMM's kernelMappings do. Within one
//! source literals are tried before regexps, each in their given order; the first match wins.

use std::collections::BTreeMap;

use regex::Regex;

use crate::config::{ConfigMapRef, MappingConfig};
use crate::error::{Error, Result};

/// The ConfigMap key holding `REGEXP IMAGE` lines.
pub const REGEXPS_KEY: &str = "regexps";

#[derive(Debug, Clone)]
enum Matcher {
    Literal(String),
    Regexp(Regex),
}

/// One mapping and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// "configuration entry 2 (literal \"6.1.0-56-amd64\")".
    pub origin: String,
    matcher: Matcher,
    /// The image, KMM variables not yet expanded.
    pub image: String,
}

/// Mappings of one source, literals first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mappings {
    entries: Vec<Entry>,
}

fn compile(regexp: &str, mapping: &str) -> Result<Regex> {
    Regex::new(regexp).map_err(|source| Error::Regexp { mapping: mapping.to_string(), regexp: regexp.to_string(), source })
}

impl Mappings {
    fn new(mut entries: Vec<Entry>) -> Self {
        // Stable: literals keep their order, then regexps keep theirs.
        entries.sort_by_key(|e| matches!(e.matcher, Matcher::Regexp(_)));
        Mappings { entries }
    }

    /// The `[[dtk.mappings]]` of the configuration.
    pub fn from_config(list: &[MappingConfig]) -> Result<Self> {
        let mut entries = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let at = format!("configuration entry {}", i + 1);
            if m.image.trim().is_empty() {
                return Err(Error::Mapping { mapping: at, reason: "image is empty".into() });
            }
            let matcher = match (m.literal.as_deref(), m.regexp.as_deref()) {
                (Some(l), None) if !l.is_empty() => Matcher::Literal(l.to_string()),
                (None, Some(r)) if !r.is_empty() => Matcher::Regexp(compile(r, &at)?),
                _ => return Err(Error::Mapping { mapping: at, reason: "needs exactly one of a non-empty literal and a non-empty regexp".into() }),
            };
            let origin = match &matcher {
                Matcher::Literal(l) => format!("{at} (literal {l:?})"),
                Matcher::Regexp(r) => format!("{at} (regexp {:?})", r.as_str()),
            };
            entries.push(Entry { origin, matcher, image: m.image.trim().to_string() });
        }
        Ok(Self::new(entries))
    }

    /// A ConfigMap's data: every key but `regexps` is a kernel literal whose value is the image;
    /// `regexps` holds lines `REGEXP IMAGE` (blank lines and lines starting with `#` are skipped).
    pub fn from_configmap(cm: &ConfigMapRef, data: &BTreeMap<String, String>) -> Result<Self> {
        let mut entries = Vec::new();
        for (key, image) in data.iter().filter(|(k, _)| *k != REGEXPS_KEY) {
            let origin = format!("ConfigMap {cm} key {key:?}");
            if image.trim().is_empty() {
                return Err(Error::Mapping { mapping: origin, reason: "image is empty".into() });
            }
            entries.push(Entry { origin, matcher: Matcher::Literal(key.clone()), image: image.trim().to_string() });
        }
        if let Some(lines) = data.get(REGEXPS_KEY) {
            for (n, line) in lines.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let at = format!("ConfigMap {cm} key {REGEXPS_KEY} line {}", n + 1);
                let fields: Vec<&str> = line.split_whitespace().collect();
                let [regexp, image] = fields[..] else {
                    return Err(Error::Mapping { mapping: at, reason: format!("expected `REGEXP IMAGE`, got {line:?}") });
                };
                let matcher = Matcher::Regexp(compile(regexp, &at)?);
                entries.push(Entry { origin: format!("{at} (regexp {regexp:?})"), matcher, image: image.to_string() });
            }
        }
        Ok(Self::new(entries))
    }

    /// The first mapping for `kernel`.
    pub fn find(&self, kernel: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| match &e.matcher {
            Matcher::Literal(l) => l == kernel,
            Matcher::Regexp(r) => r.is_match(kernel),
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(literal: Option<&str>, regexp: Option<&str>, image: &str) -> MappingConfig {
        MappingConfig { literal: literal.map(Into::into), regexp: regexp.map(Into::into), image: image.into() }
    }

    #[test]
    fn literals_win_over_earlier_regexps_and_regexps_are_unanchored() {
        let m = Mappings::from_config(&[cfg(None, Some(r"\.el8\."), "r/el8:1"), cfg(Some("4.18.0-305.el8.x86_64"), None, "r/lit:1")]).expect("valid");
        assert_eq!(m.find("4.18.0-305.el8.x86_64").expect("match").image, "r/lit:1");
        assert_eq!(m.find("4.18.0-372.el8.x86_64").expect("match").image, "r/el8:1");
        assert!(m.find("6.1.0-56-amd64").is_none());
    }

    #[test]
    fn config_entries_need_exactly_one_matcher_and_a_valid_regexp() {
        for bad in [cfg(None, None, "i"), cfg(Some("a"), Some("b"), "i"), cfg(Some(""), None, "i"), cfg(Some("a"), None, " ")] {
            assert!(matches!(Mappings::from_config(std::slice::from_ref(&bad)), Err(Error::Mapping { .. })), "{bad:?}");
        }
        let e = Mappings::from_config(&[cfg(None, Some("("), "i")]).expect_err("bad regexp");
        assert!(matches!(&e, Error::Regexp { mapping, .. } if mapping == "configuration entry 1"), "{e}");
    }

    #[test]
    fn configmap_literals_then_regexp_lines() {
        let cm = ConfigMapRef { namespace: "kforge".into(), name: "dtk".into() };
        let data = BTreeMap::from([
            ("6.1.0-56-amd64".to_string(), "r/dtk:lit\n".to_string()),
            (REGEXPS_KEY.to_string(), "# comment\n\n^6\\.1\\.  r/dtk:${KERNEL_XYZ}\n-rt$ r/dtk-rt:1\n".to_string()),
        ]);
        let m = Mappings::from_configmap(&cm, &data).expect("valid");
        assert_eq!(m.len(), 3);
        let lit = m.find("6.1.0-56-amd64").expect("literal");
        assert_eq!((lit.image.as_str(), lit.origin.as_str()), ("r/dtk:lit", "ConfigMap kforge/dtk key \"6.1.0-56-amd64\""));
        let re = m.find("6.1.0-57-amd64").expect("regexp");
        assert_eq!(re.image, "r/dtk:${KERNEL_XYZ}");
        assert!(re.origin.contains("line 3"), "{}", re.origin);
        assert_eq!(m.find("5.10.0-1-rt").expect("rt").image, "r/dtk-rt:1");
        let bad = BTreeMap::from([(REGEXPS_KEY.to_string(), "onlyregexp\n".to_string())]);
        let e = Mappings::from_configmap(&cm, &bad).expect_err("one field");
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
