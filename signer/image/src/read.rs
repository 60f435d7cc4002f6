//! Reading an image's layers as streams: the tree of files the layers build, the selected files
//! spooled and pre-signed as they pass, and small blobs (configs) read whole.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::Arc;

use bytes::Bytes;

use crate::digest::HashingReader;
use crate::error::Error;
use crate::manifest::Descriptor;
use crate::presign::Presigner;
use crate::select::Selection;
use crate::spool::Spool;
use crate::store::Store;
use crate::tree::{self, Kind, LayerChanges, Node, Tree, Whiteout};

pub(crate) async fn read_small_blob(src: &Store, d: &Descriptor, image: &str) -> Result<Bytes, Error> {
    use tokio::io::AsyncReadExt;
    if d.size > 16 << 20 {
        return Err(Error::Malformed { image: image.into(), what: "config", reason: format!("{} bytes is too large for a config", d.size) });
    }
    let mut buf = Vec::with_capacity(d.size as usize);
    src.blob(&d.digest)
        .await?
        .take(d.size + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|cause| Error::Stream { what: format!("{image} config {}", d.digest), cause })?;
    let actual = crate::digest::of(&buf);
    if actual != d.digest {
        return Err(Error::DigestMismatch { what: format!("{image} config"), expected: d.digest.clone(), actual });
    }
    Ok(Bytes::from(buf))
}

pub(crate) struct LayerCtx {
    pub digest: String,
    pub selection: Selection,
    pub spool: Arc<Spool>,
    pub presign: Arc<Presigner>,
}

/// Copies everything read into a file as well.
struct Tee<R> {
    inner: R,
    copy: Option<io::BufWriter<File>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(copy) = &mut self.copy {
            copy.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Decompresses a layer stream (gzip, zstd or plain tar, told apart by their first bytes).
pub(crate) fn decoder<'a>(buf: &'a mut BufReader<impl Read>, layer: &str) -> Result<Box<dyn Read + 'a>, Error> {
    let io_err = |e: io::Error| Error::Layer { layer: layer.to_string(), reason: format!("cannot read: {e}") };
    let head = buf.fill_buf().map_err(io_err)?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buf))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buf).map_err(io_err)?)
    } else {
        Box::new(buf)
    })
}

/// Keeps the content of the regular files at exactly `wanted` paths in one layer.
pub(crate) fn spool_paths(reader: impl Read, wanted: &HashSet<String>, spool: &Spool, layer: &str) -> Result<Vec<(String, usize)>, Error> {
    let layer_err = |reason: String| Error::Layer { layer: layer.to_string(), reason };
    let mut buf = BufReader::with_capacity(1 << 20, reader);
    let mut hits = Vec::new();
    let mut archive = tar::Archive::new(decoder(&mut buf, layer)?);
    for entry in archive.entries().map_err(|e| layer_err(format!("cannot read: {e}")))? {
        let mut entry = entry.map_err(|e| layer_err(format!("corrupt tar stream: {e}")))?;
        if !matches!(entry.header().entry_type(), tar::EntryType::Regular | tar::EntryType::Continuous) {
            continue;
        }
        let raw = entry.path().map_err(|e| layer_err(format!("bad entry name: {e}")))?.to_string_lossy().into_owned();
        let Ok(path) = tree::normalize(&raw) else { continue };
        if wanted.contains(&path) {
            let size = entry.size();
            let id = spool.add_reader(&mut entry, size).map_err(|e| layer_err(format!("{path}: cannot keep content: {e}")))?;
            hits.push((path, id));
        }
    }
    Ok(hits)
}

/// Streams one layer: hashes it, keeps a copy if asked, applies its entries to the tree and spools
/// the content of files that may be signed.
pub(crate) fn read_layer(reader: impl Read, tee: Option<File>, ctx: &LayerCtx, mut tree: Tree) -> Result<(Tree, String, u64), Error> {
    let layer_err = |reason: String| Error::Layer { layer: ctx.digest.clone(), reason };
    let io_err = |e: io::Error| layer_err(format!("cannot read: {e}"));
    let tee = Tee { inner: reader, copy: tee.map(|f| io::BufWriter::with_capacity(1 << 20, f)) };
    let mut buf = BufReader::with_capacity(1 << 20, HashingReader::new(tee));
    let mut changes = LayerChanges::default();
    {
        let mut archive = tar::Archive::new(decoder(&mut buf, &ctx.digest)?);
        for entry in archive.entries().map_err(io_err)? {
            let mut entry = entry.map_err(|e| layer_err(format!("corrupt tar stream: {e}")))?;
            let raw_path = entry.path().map_err(|e| layer_err(format!("bad entry name: {e}")))?.to_string_lossy().into_owned();
            let path = tree::normalize(&raw_path).map_err(|r| layer_err(format!("unsafe entry: {r}")))?;
            if let Some(w) = tree::whiteout(&path) {
                match w {
                    Whiteout::Deleted(p) => changes.deleted.push(p),
                    Whiteout::Opaque(d) => changes.opaque.push(d),
                }
                continue;
            }
            let h = entry.header();
            let meta =
                |kind| Node { kind, mode: h.mode().unwrap_or(0o644), uid: h.uid().unwrap_or(0), gid: h.gid().unwrap_or(0), mtime: h.mtime().unwrap_or(0) };
            let node = match h.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = h.size().unwrap_or(0);
                    let node_meta = meta(Kind::File { spool: None, size });
                    let spool = if ctx.selection.wants(&path) {
                        let id = ctx.spool.add_reader(&mut entry, size).map_err(|e| layer_err(format!("{path}: cannot read content: {e}")))?;
                        ctx.presign.start(id);
                        Some(id)
                    } else {
                        None
                    };
                    Node { kind: Kind::File { spool, size }, ..node_meta }
                }
                tar::EntryType::Directory => meta(Kind::Dir),
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| layer_err(format!("{path}: bad link: {e}")))?
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    meta(Kind::Symlink(target))
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(|e| layer_err(format!("{path}: bad link: {e}")))?
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let target = tree::normalize(&target).map_err(|r| layer_err(format!("unsafe hard link {path}: {r}")))?;
                    let linked = changes.entries.iter().rev().find(|(p, _)| *p == target).map(|(_, n)| n.clone()).or_else(|| tree.get(&target).cloned());
                    match linked {
                        Some(n) => n,
                        None => return Err(layer_err(format!("hard link {path} points to {target}, which does not exist"))),
                    }
                }
                _ => meta(Kind::Other),
            };
            changes.entries.push((path, node));
        }
    }
    // Read what follows the tar's end marker so the digest covers the whole blob.
    io::copy(&mut buf, &mut io::sink()).map_err(io_err)?;
    let (tee, digest, size) = buf.into_inner().finish().map_err(io_err)?;
    if let Some(mut copy) = tee.copy {
        copy.flush().map_err(|e| layer_err(format!("cannot keep a copy for the upload: {e}")))?;
    }
    tree.apply(changes);
    Ok((tree, digest, size))
}
