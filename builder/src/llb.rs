//! A small LLB writer: the build inputs kforge hands to the Dockerfile frontend (the Dockerfile and
//! the context files) as file operations on scratch, marshalled into a `pb.Definition`.
//!
//! BuildKit identifies an op by the SHA-256 of its marshalled bytes; the last op of a definition is
//! the terminal op, whose only input is the result. Timestamps are fixed (the Unix epoch) so that the
//! same inputs always give the same digests, and BuildKit's cache recognises them.

use std::collections::BTreeSet;

use kforge_proto::buildkit::pb;
use prost::Message;
use sha2::{Digest, Sha256};

/// A file placed into a build input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InputFile {
    /// Relative path inside the input (`src/main.c`).
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Content.
    pub data: Vec<u8>,
}

impl InputFile {
    /// A regular file with mode 0644.
    pub fn new(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        InputFile { path: path.into(), mode: 0o644, data: data.into() }
    }
}

/// `sha256:<hex>` of a marshalled op.
fn op_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Normalises a relative path (no leading `/`, no `.`/`..`, no empty parts); `None` if it escapes.
pub fn clean_path(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A definition holding `files` (directories created as needed); no files give scratch.
/// Paths must already be clean (see [`clean_path`]).
pub fn files_definition(files: &[InputFile]) -> pb::Definition {
    let mut dirs = BTreeSet::new();
    for f in files {
        let mut parent = f.path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            dirs.insert(p.to_string());
            parent = p;
        }
    }
    let mut actions = Vec::new();
    // Each action works on the result of the previous one; only the last is an output.
    let mut push = |action: pb::file_action::Action| {
        let input = actions.len() as i64 - 1;
        actions.push(pb::FileAction { input, secondary_input: -1, output: -1, action: Some(action) });
    };
    // BTreeSet order puts a parent before its children.
    for dir in &dirs {
        push(pb::file_action::Action::Mkdir(pb::FileActionMkDir { path: format!("/{dir}"), mode: 0o755, make_parents: true, owner: None, timestamp: 0 }));
    }
    for f in files {
        push(pb::file_action::Action::Mkfile(pb::FileActionMkFile {
            path: format!("/{}", f.path),
            mode: (f.mode & 0o7777) as i32,
            data: f.data.clone(),
            owner: None,
            timestamp: 0,
        }));
    }
    let mut ops = Vec::new();
    let mut metadata = std::collections::HashMap::new();
    if files.is_empty() {
        // An empty directory. Scratch would be the empty definition, but BuildKit 0.8 (Docker 20.10)
        // panics on an empty frontend input, so the root is "created" instead (mkdir -p /).
        push(pb::file_action::Action::Mkdir(pb::FileActionMkDir { path: "/".into(), mode: 0o755, make_parents: true, owner: None, timestamp: 0 }));
    }
    let Some(last) = actions.last_mut() else { unreachable!("at least one action") };
    let terminal_input = {
        last.output = 0;
        let op = pb::Op { inputs: vec![], op: Some(pb::op::Op::File(pb::FileOp { actions })), platform: None, constraints: None };
        let bytes = op.encode_to_vec();
        let digest = op_digest(&bytes);
        let caps = [("file.base".to_string(), true)].into_iter().collect();
        metadata.insert(digest.clone(), pb::OpMetadata { caps, ..Default::default() });
        ops.push(bytes);
        vec![pb::Input { digest, index: 0 }]
    };
    let terminal = pb::Op { inputs: terminal_input, ..Default::default() }.encode_to_vec();
    metadata.insert(op_digest(&terminal), pb::OpMetadata::default());
    ops.push(terminal);
    pb::Definition { def: ops, metadata, source: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(def: &pb::Definition) -> Vec<pb::Op> {
        def.def.iter().map(|b| pb::Op::decode(b.as_slice()).expect("op decodes")).collect()
    }

    #[test]
    fn every_op_has_metadata_and_the_terminal_points_at_the_file_op() {
        let def = files_definition(&[InputFile::new("Dockerfile", "FROM scratch\n")]);
        assert_eq!(def.def.len(), 2);
        for bytes in &def.def {
            assert!(def.metadata.contains_key(&op_digest(bytes)), "metadata for every op");
        }
        let ops = decode(&def);
        assert_eq!(ops[1].inputs, vec![pb::Input { digest: op_digest(&def.def[0]), index: 0 }]);
        assert!(ops[1].op.is_none(), "terminal op has no operation");
        let Some(pb::op::Op::File(file)) = &ops[0].op else { panic!("first op is a file op") };
        assert_eq!(file.actions.len(), 1);
        assert_eq!((file.actions[0].input, file.actions[0].output), (-1, 0));
    }

    #[test]
    fn directories_come_first_and_actions_chain() {
        let def = files_definition(&[InputFile::new("a/b/c.c", "x"), InputFile::new("a/Makefile", "y"), InputFile::new("top", "z")]);
        let ops = decode(&def);
        let Some(pb::op::Op::File(file)) = &ops[0].op else { panic!("file op") };
        let paths: Vec<_> = file
            .actions
            .iter()
            .map(|a| match &a.action {
                Some(pb::file_action::Action::Mkdir(d)) => format!("d{}", d.path),
                Some(pb::file_action::Action::Mkfile(f)) => format!("f{}", f.path),
                None => "?".into(),
            })
            .collect();
        assert_eq!(paths, ["d/a", "d/a/b", "f/a/b/c.c", "f/a/Makefile", "f/top"]);
        for (i, a) in file.actions.iter().enumerate() {
            assert_eq!(a.input, i as i64 - 1);
            assert_eq!(a.output, if i + 1 == file.actions.len() { 0 } else { -1 });
        }
    }

    #[test]
    fn same_files_same_digests() {
        let a = files_definition(&[InputFile::new("Dockerfile", "FROM x\n")]);
        let b = files_definition(&[InputFile::new("Dockerfile", "FROM x\n")]);
        let c = files_definition(&[InputFile::new("Dockerfile", "FROM y\n")]);
        assert_eq!(a.def, b.def);
        assert_ne!(a.def, c.def);
    }

    #[test]
    fn no_files_is_an_empty_directory() {
        let def = files_definition(&[]);
        assert_eq!(def.def.len(), 2, "a file op and the terminal op, never an empty definition");
        let Some(pb::op::Op::File(file)) = &decode(&def)[0].op else { panic!("file op") };
        assert!(matches!(&file.actions[..], [pb::FileAction { input: -1, output: 0, action: Some(pb::file_action::Action::Mkdir(d)), .. }] if d.path == "/"));
    }

    #[test]
    fn paths_are_cleaned_and_escapes_refused() {
        assert_eq!(clean_path("./src//x.c").as_deref(), Some("src/x.c"));
        assert_eq!(clean_path("/abs/y").as_deref(), Some("abs/y"));
        assert_eq!(clean_path("../etc/passwd"), None);
        assert_eq!(clean_path("a/../../b"), None);
        assert_eq!(clean_path("."), None);
    }
}
