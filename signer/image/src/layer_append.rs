//! The one layer kforge adds: exactly the signed files, deterministic bytes.

use std::io::BufWriter;
use std::path::Path;

use crate::spool::Spool;

use crate::digest::HashingWriter;
use crate::error::Error;
use crate::tree::Node;

/// A signed file to put in the new layer.
pub(crate) struct Entry {
    /// Absolute path in the image.
    pub path: String,
    /// Mode, owner and mtime of the file it replaces.
    pub node: Node,
    /// The signed content's id in the spool.
    pub content: usize,
}

/// The new layer blob on disk and its digests.
pub(crate) struct NewLayer {
    pub file: tempfile::NamedTempFile,
    /// Digest of the gzip blob.
    pub digest: String,
    /// Digest of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: String,
    pub size: u64,
}

/// Writes a tar+gzip layer: entries sorted by path, the original modes, owners and mtimes, no
/// user or group names, gzip compressed on all cores without name or time in its header; the same
/// files give the same digest.
pub(crate) fn build(entries: &mut [Entry], spool: &Spool, dir: &Path, level: u32) -> Result<NewLayer, Error> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let file = tempfile::Builder::new().prefix("layer-").tempfile_in(dir).map_err(Error::io(dir, "create a temporary file in"))?;
    let out = file.reopen().map_err(Error::io(file.path(), "open"))?;
    let compressed = HashingWriter::new(BufWriter::with_capacity(1 << 20, out));
    let gz = crate::pgzip::ParallelGz::new(compressed, flate2::Compression::new(level.clamp(1, 9)));
    let mut tar = tar::Builder::new(HashingWriter::new(gz));
    tar.mode(tar::HeaderMode::Complete);
    for e in entries.iter() {
        let content = spool.read(e.content).map_err(|cause| Error::Stream { what: format!("signed {}", e.path), cause })?;
        let size = content.len() as u64;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        header.set_mode(e.node.mode & 0o7777);
        header.set_uid(e.node.uid);
        header.set_gid(e.node.gid);
        header.set_mtime(e.node.mtime);
        let name = e.path.trim_start_matches('/');
        tar.append_data(&mut header, name, &content[..]).map_err(|cause| Error::Stream { what: format!("adding {} to the new layer", e.path), cause })?;
    }
    let write_err = |cause| Error::Io { path: file.path().into(), op: "write the new layer", cause };
    let plain = tar.into_inner().map_err(write_err)?;
    let (gz, diff_id, _) = plain.finish();
    let compressed = gz.finish().map_err(write_err)?;
    let (buffered, digest, size) = compressed.finish();
    buffered.into_inner().map_err(|e| write_err(e.into_error()))?.sync_all().map_err(write_err)?;
    Ok(NewLayer { file, digest, diff_id, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Kind;

    #[test]
    fn same_files_give_the_same_digest_in_any_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(dir.path()).expect("spool");
        let mk = |_: &str, body: &str| spool.add(body.as_bytes()).expect("add");
        let node = Node { kind: Kind::File { spool: None, size: 0 }, mode: 0o644, uid: 0, gid: 0, mtime: 1_700_000_000 };
        let a = mk("a", "first");
        let b = mk("b", "second");
        let mut one = vec![
            Entry { path: "/opt/lib/modules/6.1/b.ko".into(), node: node.clone(), content: b },
            Entry { path: "/opt/lib/modules/6.1/a.ko".into(), node: node.clone(), content: a },
        ];
        let mut two = vec![
            Entry { path: "/opt/lib/modules/6.1/a.ko".into(), node: node.clone(), content: a },
            Entry { path: "/opt/lib/modules/6.1/b.ko".into(), node, content: b },
        ];
        let l1 = build(&mut one, &spool, dir.path(), 3).expect("layer");
        let l2 = build(&mut two, &spool, dir.path(), 3).expect("layer");
        assert_eq!((l1.digest.clone(), l1.diff_id.clone(), l1.size), (l2.digest, l2.diff_id, l2.size));
        assert_eq!(l1.size, std::fs::metadata(l1.file.path()).expect("stat").len());
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(l1.file.path()).expect("open")));
        let names: Vec<String> = archive.entries().expect("tar").map(|e| e.expect("entry").path().expect("path").display().to_string()).collect();
        assert_eq!(names, ["opt/lib/modules/6.1/a.ko", "opt/lib/modules/6.1/b.ko"]);
    }
}
