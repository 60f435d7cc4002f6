//! Signing an image: read every layer as a stream, resolve and sign the selected files, build one
//! new layer, then push blobs first, manifests next and the index last.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rayon::prelude::*;
use serde_json::{Value, json};

use crate::config::new_config;
use crate::error::Error;
use crate::layer_append::{self, Entry};
use crate::manifest::{self, Descriptor, Doc, DocKind};
use crate::presign::{Failure, Presigner};
use crate::push::{Prepared, push_blobs};
use crate::read::{LayerCtx, read_layer, read_small_blob, spool_paths};
use crate::request::{AuditHook, Event, Events, SignImage, SignedFile, SignedImage};
use crate::spool::Spool;
use crate::store::Store;
use crate::tree::{Kind, Tree};

/// Signs the selected files of `req.from` and pushes the result to `req.to`.
///
/// Nothing is pushed until every platform image has been read and signed; then blobs go first,
/// each manifest after its blobs, and an index last, so no tag ever points at a missing blob or at
/// an unsigned image.
pub async fn sign_image(req: &SignImage, events: Events) -> Result<SignedImage, Error> {
    req.selection.validate()?;
    if req.to.digest().is_some() {
        return Err(Error::Reference { reference: req.to.to_string(), reason: "the destination needs a tag (the signed image gets a new digest)".into() });
    }
    let work = match &req.work_dir {
        Some(d) => tempfile::Builder::new().prefix("kforge-sign-image-").tempdir_in(d),
        None => tempfile::Builder::new().prefix("kforge-sign-image-").tempdir(),
    }
    .map_err(Error::io(req.work_dir.clone().unwrap_or_else(std::env::temp_dir), "create a work directory in"))?;

    let src = Store::open(&req.from, &req.registries, false).await?;
    let dst = Store::open(&req.to, &req.registries, true).await?;
    let name = req.from.to_string();
    let (bytes, _digest) = src.manifest(req.from.digest().or(req.from.tag())).await?;
    let top = Doc::parse(&bytes, &name)?;

    let mut uploaded = 0;
    let (final_bytes, media_type, signed) = match top.kind {
        DocKind::Image => {
            let p = prepare(req, &src, &dst, &top, &name, &name, work.path(), &events).await?;
            uploaded += push_blobs(&src, &dst, &p, &events).await?;
            (p.manifest, p.media_type, p.signed)
        }
        DocKind::Index => {
            let mut index = top.json.clone();
            let entries = index.get("manifests").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut kept = Vec::new();
            let mut prepared = Vec::new();
            for entry in entries {
                if manifest::annotation(&entry, "vnd.docker.reference.type") == Some("attestation-manifest") {
                    tracing::warn!(image = %name, "dropping an attestation manifest: it describes the unsigned image");
                    continue;
                }
                let d = Descriptor::from_json(&entry, &name, "index entry")?;
                let platform = platform_of(&entry);
                let (child, _) = src.manifest(Some(&d.digest)).await?;
                let actual = crate::digest::of(&child);
                if actual != d.digest {
                    return Err(Error::DigestMismatch { what: format!("{name} manifest for {platform}"), expected: d.digest, actual });
                }
                let doc = Doc::parse(&child, &name)?;
                if doc.kind != DocKind::Image {
                    return Err(Error::UnsupportedMediaType {
                        image: format!("{name} ({platform})"),
                        media_type: format!("{} nested in an index", doc.media_type),
                    });
                }
                let label = format!("{name} [{platform}]");
                prepared.push(prepare(req, &src, &dst, &doc, &label, &platform, work.path(), &events).await?);
                kept.push(entry);
            }
            if prepared.is_empty() {
                return Err(Error::Malformed { image: name, what: "index", reason: "no image manifests".into() });
            }
            let mut signed = Vec::new();
            for (entry, p) in kept.iter_mut().zip(&prepared) {
                uploaded += push_blobs(&src, &dst, p, &events).await?;
                let digest = dst.put_manifest(&p.manifest, &p.media_type, None).await?;
                uploaded += p.manifest.len() as u64;
                events(Event::Manifest { digest: digest.clone(), tag: None });
                entry["digest"] = json!(digest);
                entry["size"] = json!(p.manifest.len());
                entry["mediaType"] = json!(p.media_type);
                signed.extend(p.signed.iter().cloned());
            }
            index["manifests"] = Value::Array(kept);
            (Bytes::from(serde_json::to_vec(&index).map_err(|e| Error::Task(e.to_string()))?), top.media_type.clone(), signed)
        }
    };
    let tag = req.to.tag();
    let digest = dst.put_manifest(&final_bytes, &media_type, tag).await?;
    uploaded += final_bytes.len() as u64;
    events(Event::Manifest { digest: digest.clone(), tag: tag.map(str::to_string) });
    Ok(SignedImage { digest, media_type, signed, uploaded })
}

fn platform_of(entry: &Value) -> String {
    let p = entry.get("platform");
    let field = |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_str).unwrap_or("");
    let mut s = format!("{}/{}", field("os"), field("architecture"));
    if !field("variant").is_empty() {
        s = format!("{s}/{}", field("variant"));
    }
    if s == "/" { "unknown platform".into() } else { s }
}

/// Reads, resolves and signs one platform image; pushes nothing.
#[allow(clippy::too_many_arguments)]
async fn prepare(req: &SignImage, src: &Store, dst: &Store, doc: &Doc, name: &str, platform: &str, work: &Path, events: &Events) -> Result<Prepared, Error> {
    let (config_desc, layers) = manifest::image_parts(doc, name)?;
    events(Event::Image { platform: platform.to_string(), layers: layers.len() });
    let config = read_small_blob(src, &config_desc, name).await?;
    let spool = Arc::new(Spool::new(work)?);
    let presign = Presigner::new(req.signer.clone(), spool.clone(), req.audit.is_some());

    let mut tree = Tree::default();
    let mut copies = Vec::new();
    for layer in &layers {
        let present = dst.has_blob(&layer.digest).await?;
        let tee = if present {
            None
        } else {
            Some(tempfile::Builder::new().prefix("blob-").tempfile_in(work).map_err(Error::io(work, "create a temporary file in"))?)
        };
        let reader = src.blob(&layer.digest).await?;
        let bridge = tokio_util::io::SyncIoBridge::new(reader);
        let tee_file = tee.as_ref().map(|t| t.reopen()).transpose().map_err(Error::io(work, "open a temporary file"))?;
        let ctx = LayerCtx { digest: layer.digest.clone(), selection: req.selection.clone(), spool: spool.clone(), presign: presign.clone() };
        let (t, digest, size) = tokio::task::spawn_blocking(move || read_layer(bridge, tee_file, &ctx, tree)).await??;
        tree = t;
        if digest != layer.digest || size != layer.size {
            return Err(Error::DigestMismatch {
                what: format!("{name} layer {} ({} bytes declared, {size} read)", layer.digest, layer.size),
                expected: layer.digest.clone(),
                actual: digest,
            });
        }
        events(Event::Layer { digest: layer.digest.clone(), size });
        copies.push((layer.clone(), tee));
    }

    let mut selected = req.selection.select(&tree, name)?;
    let missing: HashSet<String> = selected.iter().filter(|s| matches!(s.node.kind, Kind::File { spool: None, .. })).map(|s| s.path.clone()).collect();
    if !missing.is_empty() {
        // Reached through links to places not kept on the first pass: read the layers once more
        // for exactly those files (the last layer holding a file has its final content).
        let mut found: HashMap<String, usize> = HashMap::new();
        for layer in &layers {
            let bridge = tokio_util::io::SyncIoBridge::new(src.blob(&layer.digest).await?);
            let (wanted, sp, digest) = (missing.clone(), spool.clone(), layer.digest.clone());
            let hits = tokio::task::spawn_blocking(move || spool_paths(bridge, &wanted, &sp, &digest)).await??;
            found.extend(hits);
        }
        for s in &mut selected {
            if let Kind::File { spool: spool_id @ None, .. } = &mut s.node.kind {
                *spool_id = found.get(&s.path).copied();
            }
        }
    }
    let image = name.to_string();
    let ev = events.clone();
    let audit = req.audit.clone();
    let ps = presign.clone();
    let mut entries = tokio::task::spawn_blocking(move || sign_selected(&ps, &selected, &image, &ev, audit.as_ref())).await??;
    let signed: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
    let (layer_dir, sp) = (work.to_path_buf(), spool.clone());
    let level = req.gzip_level;
    let layer = tokio::task::spawn_blocking(move || layer_append::build(&mut entries, &sp, &layer_dir, level)).await??;
    drop(spool);

    let subject = req.signer.key().certificate().subject();
    let config = new_config(&config, &layer, signed.len(), &subject, req.signer.hash().name(), name, &req.labels)?;
    let config_digest = crate::digest::of(&config);
    let mut m = doc.json.clone();
    m["config"]["digest"] = json!(config_digest);
    m["config"]["size"] = json!(config.len());
    let layers_json = m.get_mut("layers").and_then(Value::as_array_mut).ok_or_else(|| Error::Malformed {
        image: name.into(),
        what: "manifest",
        reason: "no layers array".into(),
    })?;
    layers_json.push(json!({"mediaType": doc.new_layer_media_type(), "digest": layer.digest, "size": layer.size}));
    let manifest = Bytes::from(serde_json::to_vec(&m).map_err(|e| Error::Task(e.to_string()))?);
    Ok(Prepared { copies, layer, config, manifest, media_type: doc.media_type.clone(), signed })
}

/// Collects the signatures of the selected files (signing any not started yet), audits them and
/// reports them, in parallel.
fn sign_selected(
    presign: &Presigner,
    selected: &[crate::select::Selected],
    image: &str,
    events: &Events,
    audit: Option<&AuditHook>,
) -> Result<Vec<Entry>, Error> {
    selected
        .par_iter()
        .map(|s| {
            let Kind::File { spool: Some(id), .. } = s.node.kind else {
                return Err(Error::Escape {
                    path: s.path.clone(),
                    reason: format!("{image}: no layer holds this file's content (a hard link to a file outside the layer?)"),
                });
            };
            let signed = presign.take(id).map_err(|f| match f {
                Failure::Signer(error) => Error::Sign { image: image.into(), path: s.path.clone(), error: Box::new(error) },
                Failure::Spool(cause) => Error::Stream { what: format!("{image}: {} kept on disk", s.path), cause },
            })?;
            if let (Some(hook), Some((sha256_in, sha256_out))) = (audit, &signed.digests) {
                let record = SignedFile {
                    image: image.to_string(),
                    path: s.path.clone(),
                    module_name: signed.module_name.clone(),
                    vermagic: signed.vermagic.clone(),
                    sha256_in: sha256_in.clone(),
                    sha256_out: sha256_out.clone(),
                };
                hook(&record).map_err(|reason| Error::Audit { path: s.path.clone(), reason })?;
            }
            events(Event::Signed { path: s.path.clone() });
            Ok(Entry { path: s.path.clone(), node: s.node.clone(), content: signed.content })
        })
        .collect()
}
