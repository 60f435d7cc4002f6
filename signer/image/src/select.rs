//! Which files in an image to sign: KMM's `filesToSign` (absolute paths) and glob patterns, or by
//! default every module under `/opt/lib/modules`.

use std::fmt;

use kforge_signer::is_module_name;

use crate::error::Error;
use crate::tree::{Kind, Node, Tree};

/// Where KMM's module loader images keep their modules.
pub const DEFAULT_ROOT: &str = "/opt/lib/modules";

/// The files to sign.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selection {
    /// Every `*.ko`, `*.ko.xz`, `*.ko.zst`, `*.ko.gz` under `/opt/lib/modules`.
    #[default]
    Default,
    /// Absolute paths and glob patterns (`*`, `?`, `[…]`, `**`), e.g. `/opt/lib/modules/*/extra/*.ko`.
    Files(Vec<String>),
}

/// A file chosen for signing, at its real path (links resolved).
#[derive(Debug, Clone)]
pub(crate) struct Selected {
    pub path: String,
    pub node: Node,
}

impl Selection {
    /// Checks the patterns (absolute, valid globs).
    pub fn validate(&self) -> Result<(), Error> {
        if let Selection::Files(files) = self {
            if files.is_empty() {
                return Err(Error::NothingToSign { image: "(request)".into(), selection: "an empty file list".into() });
            }
            for f in files {
                if !f.starts_with('/') {
                    return Err(Error::Reference { reference: f.clone(), reason: "files to sign are absolute paths in the image".into() });
                }
                if is_glob(f) {
                    glob::Pattern::new(f).map_err(|e| Error::Reference { reference: f.clone(), reason: format!("bad glob pattern: {e}") })?;
                }
            }
        }
        Ok(())
    }

    /// Whether a path's content may be needed, so it is kept while the layers stream by.
    pub(crate) fn wants(&self, path: &str) -> bool {
        match self {
            Selection::Default => path.starts_with(DEFAULT_ROOT) && path.as_bytes().get(DEFAULT_ROOT.len()) == Some(&b'/') && is_module_name(path),
            Selection::Files(files) => files.iter().any(|f| {
                if is_glob(f) {
                    pattern_matches(f, path) || (is_module_name(path) && path.starts_with(literal_prefix(f)))
                } else {
                    f == path || (is_module_name(path) && path.starts_with(crate::tree::dirname(f)))
                }
            }),
        }
    }

    /// Picks the files from the final tree, resolving links inside the image root.
    pub(crate) fn select(&self, tree: &Tree, image: &str) -> Result<Vec<Selected>, Error> {
        let mut chosen: Vec<Selected> = Vec::new();
        let mut add = |real: String, node: &Node| {
            if !chosen.iter().any(|c| c.path == real) {
                chosen.push(Selected { path: real, node: node.clone() });
            }
        };
        match self {
            Selection::Default => {
                for (path, node) in tree.under(DEFAULT_ROOT) {
                    if matches!(node.kind, Kind::File { .. }) && is_module_name(path) {
                        add(path.clone(), node);
                    }
                }
                if chosen.is_empty() {
                    return Err(Error::NothingToSign { image: image.into(), selection: format!("*.ko, *.ko.xz, *.ko.zst or *.ko.gz under {DEFAULT_ROOT}") });
                }
            }
            Selection::Files(files) => {
                for f in files {
                    if is_glob(f) {
                        let matches: Vec<String> = tree
                            .iter()
                            .filter(|(p, n)| matches!(n.kind, Kind::File { .. } | Kind::Symlink(_)) && pattern_matches(f, p))
                            .map(|(p, _)| p.clone())
                            .collect();
                        let mut any = false;
                        for p in matches {
                            if let Some((real, node)) = tree.resolve(&p)?
                                && matches!(node.kind, Kind::File { .. })
                            {
                                add(real, node);
                                any = true;
                            }
                        }
                        if !any {
                            return Err(Error::NothingToSign { image: image.into(), selection: format!("the pattern {f}") });
                        }
                    } else {
                        match tree.resolve(f)? {
                            Some((real, node)) if matches!(node.kind, Kind::File { .. }) => add(real, node),
                            Some((real, _)) => return Err(Error::Escape { path: f.clone(), reason: format!("{real} is not a regular file") }),
                            None => return Err(Error::MissingFile { image: image.into(), path: f.clone() }),
                        }
                    }
                }
            }
        }
        chosen.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(chosen)
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selection::Default => write!(f, "every module under {DEFAULT_ROOT}"),
            Selection::Files(files) => f.write_str(&files.join(", ")),
        }
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn literal_prefix(pattern: &str) -> &str {
    let end = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    &pattern[..end]
}

fn pattern_matches(pattern: &str, path: &str) -> bool {
    let opts = glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };
    glob::Pattern::new(pattern).map(|p| p.matches_with(path, opts)).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::LayerChanges;

    fn tree(files: &[&str], links: &[(&str, &str)]) -> Tree {
        let mut t = Tree::default();
        let node = |kind| Node { kind, mode: 0o644, uid: 0, gid: 0, mtime: 0 };
        let mut changes = LayerChanges::default();
        for (i, f) in files.iter().enumerate() {
            changes.entries.push((f.to_string(), node(Kind::File { spool: Some(i), size: 1 })));
        }
        for (l, target) in links {
            changes.entries.push((l.to_string(), node(Kind::Symlink(target.to_string()))));
        }
        t.apply(changes);
        t
    }

    #[test]
    fn default_takes_modules_under_opt_lib_modules_only() {
        let t = tree(
            &["/opt/lib/modules/6.1/extra/a.ko", "/opt/lib/modules/6.1/b.ko.xz", "/opt/lib/modules/6.1/modules.dep", "/lib/modules/6.1/c.ko"],
            &[("/opt/lib/modules/6.1/alias.ko", "extra/a.ko")],
        );
        let got: Vec<String> = Selection::Default.select(&t, "img").expect("ok").into_iter().map(|s| s.path).collect();
        assert_eq!(got, ["/opt/lib/modules/6.1/b.ko.xz", "/opt/lib/modules/6.1/extra/a.ko"]);
        assert!(Selection::Default.wants("/opt/lib/modules/6.1/x.ko.zst"));
        assert!(!Selection::Default.wants("/opt/lib/modulesX/x.ko"));
        let err = Selection::Default.select(&tree(&["/lib/modules/6.1/c.ko"], &[]), "img").expect_err("none").to_string();
        assert!(err.contains("img: no file matches"), "{err}");
    }

    #[test]
    fn files_and_patterns_resolve_links_and_report_what_is_missing() {
        let t = tree(&["/opt/real/a.ko", "/opt/real/b.ko"], &[("/opt/lib", "/opt/real")]);
        let sel = Selection::Files(vec!["/opt/lib/a.ko".into(), "/opt/real/*.ko".into()]);
        let got: Vec<String> = sel.select(&t, "img").expect("ok").into_iter().map(|s| s.path).collect();
        assert_eq!(got, ["/opt/real/a.ko", "/opt/real/b.ko"]);
        let err = Selection::Files(vec!["/opt/lib/zz.ko".into()]).select(&t, "img").expect_err("missing").to_string();
        assert!(err.contains("/opt/lib/zz.ko does not exist in the image"), "{err}");
        let err = Selection::Files(vec!["/nowhere/*.ko".into()]).select(&t, "img").expect_err("none").to_string();
        assert!(err.contains("no file matches the pattern /nowhere/*.ko"), "{err}");
        assert!(Selection::Files(vec!["relative.ko".into()]).validate().is_err());
    }
}
