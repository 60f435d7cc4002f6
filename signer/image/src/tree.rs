//! The file tree an image's layers produce, resolved as a container runtime would: later layers
//! win, `.wh.` whiteouts delete, `.wh..wh..opq` hides a directory's lower contents, and links
//! resolve inside the image root only.

use std::collections::BTreeMap;

use crate::error::Error;

/// Metadata kept for every path in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    /// A regular file; `spool` is set when its content was kept for signing.
    File {
        spool: Option<usize>,
        size: u64,
    },
    Symlink(String),
    Other,
}

/// One layer's changes, applied all at once so that its whiteouts only affect lower layers.
#[derive(Debug, Default)]
pub(crate) struct LayerChanges {
    pub deleted: Vec<String>,
    pub opaque: Vec<String>,
    pub entries: Vec<(String, Node)>,
}

/// Absolute, normalised paths (`/a/b`) to nodes.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// Normalises a tar entry name to `/a/b`; `..` anywhere is refused.
pub(crate) fn normalize(name: &str) -> Result<String, String> {
    let mut out = String::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("entry {name:?} contains '..'")),
            p => {
                out.push('/');
                out.push_str(p);
            }
        }
    }
    Ok(if out.is_empty() { "/".into() } else { out })
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    dir == "/" || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

impl Tree {
    /// Applies one layer on top of the tree.
    pub fn apply(&mut self, changes: LayerChanges) {
        for dir in &changes.opaque {
            self.remove_below(dir);
        }
        for path in &changes.deleted {
            self.nodes.remove(path);
            self.remove_below(path);
        }
        for (path, node) in changes.entries {
            if node.kind != Kind::Dir {
                self.remove_below(&path);
            }
            self.nodes.insert(path, node);
        }
    }

    fn remove_below(&mut self, dir: &str) {
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        let doomed: Vec<String> = self.nodes.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// The node at exactly `path` (no link resolution).
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Every path and node, sorted by path.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// Every path under `dir`.
    pub fn under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        self.nodes.iter().filter(move |(k, _)| is_under(k, dir))
    }

    /// Resolves symlinks in every component of `path`, inside the image root. Returns the real
    /// path and its node, `Ok(None)` if it does not exist, or an error if a link leaves the root.
    pub fn resolve(&self, path: &str) -> Result<Option<(String, &Node)>, Error> {
        let mut pending: Vec<String> = path.split('/').filter(|p| !p.is_empty()).map(str::to_string).rev().collect();
        let mut current: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "." => continue,
                ".." => {
                    if current.pop().is_none() {
                        return Err(Error::Escape { path: path.into(), reason: "resolves above the image root through '..'".into() });
                    }
                    continue;
                }
                _ => {}
            }
            current.push(part);
            let here = format!("/{}", current.join("/"));
            // A component without an entry of its own is a directory implied by entries below it.
            let Some(node) = self.nodes.get(&here) else { continue };
            if let Kind::Symlink(target) = &node.kind {
                hops += 1;
                if hops > 40 {
                    return Err(Error::Escape { path: path.into(), reason: "too many levels of symbolic links".into() });
                }
                current.pop();
                if target.starts_with('/') {
                    current.clear();
                }
                let link = here.clone();
                let mut depth = current.len();
                for p in target.split('/').filter(|p| !p.is_empty() && *p != ".") {
                    if p == ".." {
                        depth = depth
                            .checked_sub(1)
                            .ok_or_else(|| Error::Escape { path: path.into(), reason: format!("symlink {link} -> {target} points outside the image root") })?;
                    } else {
                        depth += 1;
                    }
                }
                pending.extend(target.split('/').filter(|p| !p.is_empty()).map(str::to_string).rev());
            }
        }
        let real = format!("/{}", current.join("/"));
        Ok(self.nodes.get(&real).map(|n| (real.clone(), n)))
    }
}

/// Splits a whiteout entry: `dir/.wh.name` → `Deleted(dir/name)`, `dir/.wh..wh..opq` → `Opaque(dir)`.
pub(crate) enum Whiteout {
    Deleted(String),
    Opaque(String),
}

pub(crate) fn whiteout(path: &str) -> Option<Whiteout> {
    let (dir, name) = path.rsplit_once('/')?;
    let dir = if dir.is_empty() { "/" } else { dir };
    if name == ".wh..wh..opq" {
        return Some(Whiteout::Opaque(dir.to_string()));
    }
    let target = name.strip_prefix(".wh.")?;
    Some(Whiteout::Deleted(if dir == "/" { format!("/{target}") } else { format!("{dir}/{target}") }))
}

/// The directory containing a normalised path.
pub(crate) fn dirname(path: &str) -> &str {
    parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(spool: usize) -> Node {
        Node { kind: Kind::File { spool: Some(spool), size: 1 }, mode: 0o644, uid: 0, gid: 0, mtime: 0 }
    }
    fn dir() -> Node {
        Node { kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, mtime: 0 }
    }
    fn link(t: &str) -> Node {
        Node { kind: Kind::Symlink(t.into()), mode: 0o777, uid: 0, gid: 0, mtime: 0 }
    }
    fn layer(entries: Vec<(&str, Node)>, deleted: &[&str], opaque: &[&str]) -> LayerChanges {
        LayerChanges {
            deleted: deleted.iter().map(|s| s.to_string()).collect(),
            opaque: opaque.iter().map(|s| s.to_string()).collect(),
            entries: entries.into_iter().map(|(p, n)| (p.to_string(), n)).collect(),
        }
    }

    #[test]
    fn last_layer_wins_and_whiteouts_delete_lower_files_only() {
        let mut t = Tree::default();
        t.apply(layer(vec![("/m", dir()), ("/m/a.ko", file(1)), ("/m/b.ko", file(2)), ("/m/c.ko", file(3))], &[], &[]));
        // The same layer that deletes b.ko may not delete its own new file with that name.
        t.apply(layer(vec![("/m/a.ko", file(4)), ("/m/b.ko", file(5))], &["/m/b.ko", "/m/c.ko"], &[]));
        assert_eq!(t.get("/m/a.ko"), Some(&file(4)));
        assert_eq!(t.get("/m/b.ko"), Some(&file(5)));
        assert_eq!(t.get("/m/c.ko"), None);
    }

    #[test]
    fn opaque_directories_hide_everything_below_from_lower_layers() {
        let mut t = Tree::default();
        t.apply(layer(vec![("/m", dir()), ("/m/x/a.ko", file(1)), ("/mm/b.ko", file(2))], &[], &[]));
        t.apply(layer(vec![("/m/new.ko", file(3))], &[], &["/m"]));
        assert_eq!(t.get("/m/x/a.ko"), None);
        assert_eq!(t.get("/m"), Some(&dir()), "the directory itself stays");
        assert!(t.get("/mm/b.ko").is_some(), "a sibling with a common prefix is untouched");
        assert!(t.get("/m/new.ko").is_some());
    }

    #[test]
    fn links_resolve_inside_the_root_and_escapes_are_errors() {
        let mut t = Tree::default();
        t.apply(layer(
            vec![
                ("/opt", dir()),
                ("/opt/real", dir()),
                ("/opt/real/a.ko", file(1)),
                ("/opt/lib", link("real")),
                ("/opt/abs.ko", link("/opt/real/a.ko")),
                ("/opt/up.ko", link("../../../../etc/x.ko")),
            ],
            &[],
            &[],
        ));
        assert_eq!(t.resolve("/opt/lib/a.ko").expect("ok").map(|(p, _)| p), Some("/opt/real/a.ko".into()));
        assert_eq!(t.resolve("/opt/abs.ko").expect("ok").map(|(p, _)| p), Some("/opt/real/a.ko".into()));
        assert!(t.resolve("/opt/missing.ko").expect("ok").is_none());
        let e = t.resolve("/opt/up.ko").expect_err("escapes").to_string();
        assert!(e.contains("points outside the image root"), "{e}");
        t.apply(layer(vec![("/loop", link("/loop"))], &[], &[]));
        assert!(t.resolve("/loop/x").is_err());
    }

    #[test]
    fn names_with_dotdot_are_refused_and_whiteouts_parse() {
        assert_eq!(normalize("./opt//lib/").expect("ok"), "/opt/lib");
        assert!(normalize("opt/../../etc/passwd").is_err());
        assert!(matches!(whiteout("/m/.wh.a.ko"), Some(Whiteout::Deleted(p)) if p == "/m/a.ko"));
        assert!(matches!(whiteout("/m/.wh..wh..opq"), Some(Whiteout::Opaque(p)) if p == "/m"));
        assert!(matches!(whiteout("/.wh.top"), Some(Whiteout::Deleted(p)) if p == "/top"));
        assert!(whiteout("/m/a.ko").is_none());
    }
}
