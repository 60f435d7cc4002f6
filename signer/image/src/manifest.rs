//! Manifests, indexes and configs, kept as JSON values so that every field the image had survives.

use serde_json::Value;

use crate::error::Error;

/// OCI image manifest.
pub(crate) const MANIFEST_OCI: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub(crate) const INDEX_OCI: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest v2 schema 2.
pub(crate) const MANIFEST_DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub(crate) const LIST_DOCKER: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Every manifest type kforge reads; registries need all four in `Accept`.
pub(crate) const ACCEPTED: [&str; 4] = [MANIFEST_OCI, INDEX_OCI, MANIFEST_DOCKER, LIST_DOCKER];
/// Layer type for an OCI image.
pub(crate) const LAYER_OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Layer type for a Docker image.
pub(crate) const LAYER_DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What a manifest document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DocKind {
    Image,
    Index,
}

/// A parsed manifest or index.
#[derive(Debug, Clone)]
pub(crate) struct Doc {
    pub json: Value,
    pub media_type: String,
    pub kind: DocKind,
}

impl Doc {
    /// Parses and classifies a manifest or index.
    pub fn parse(bytes: &[u8], image: &str) -> Result<Doc, Error> {
        let json: Value = serde_json::from_slice(bytes).map_err(|e| Error::Malformed { image: image.into(), what: "manifest", reason: e.to_string() })?;
        let declared = json.get("mediaType").and_then(Value::as_str).map(str::to_string);
        let media_type = match declared {
            Some(m) => m,
            // OCI allows omitting mediaType; tell them apart by shape.
            None if json.get("manifests").is_some() => INDEX_OCI.to_string(),
            None if json.get("layers").is_some() => MANIFEST_OCI.to_string(),
            None => return Err(Error::UnsupportedMediaType { image: image.into(), media_type: "(none)".into() }),
        };
        let kind = match media_type.as_str() {
            MANIFEST_OCI | MANIFEST_DOCKER => DocKind::Image,
            INDEX_OCI | LIST_DOCKER => DocKind::Index,
            other => return Err(Error::UnsupportedMediaType { image: image.into(), media_type: other.into() }),
        };
        Ok(Doc { json, media_type, kind })
    }

    /// The layer media type matching this manifest's family.
    pub fn new_layer_media_type(&self) -> &'static str {
        if self.media_type == MANIFEST_DOCKER { LAYER_DOCKER_GZIP } else { LAYER_OCI_GZIP }
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    pub fn from_json(v: &Value, image: &str, what: &'static str) -> Result<Descriptor, Error> {
        let bad = |reason: &str| Error::Malformed { image: image.into(), what, reason: reason.into() };
        let digest = v.get("digest").and_then(Value::as_str).ok_or_else(|| bad("descriptor without digest"))?;
        if !crate::digest::is_sha256(digest) {
            return Err(bad(&format!("unsupported digest {digest:?} (sha256 only)")));
        }
        Ok(Descriptor {
            media_type: v.get("mediaType").and_then(Value::as_str).unwrap_or_default().to_string(),
            digest: digest.to_string(),
            size: v.get("size").and_then(Value::as_u64).ok_or_else(|| bad("descriptor without size"))?,
        })
    }
}

/// An annotation of a descriptor or manifest.
pub(crate) fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get("annotations")?.get(key)?.as_str()
}

/// The config and layer descriptors of an image manifest.
pub(crate) fn image_parts(doc: &Doc, image: &str) -> Result<(Descriptor, Vec<Descriptor>), Error> {
    let config = doc.json.get("config").ok_or_else(|| Error::Malformed { image: image.into(), what: "manifest", reason: "no config".into() })?;
    let config = Descriptor::from_json(config, image, "manifest config")?;
    let layers = doc
        .json
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Malformed { image: image.into(), what: "manifest", reason: "no layers array".into() })?
        .iter()
        .map(|l| Descriptor::from_json(l, image, "manifest layer"))
        .collect::<Result<Vec<_>, _>>()?;
    for l in &layers {
        if !is_layer(&l.media_type) {
            return Err(Error::UnsupportedMediaType { image: image.into(), media_type: l.media_type.clone() });
        }
    }
    Ok((config, layers))
}

/// Layer media types whose content is a tar stream (plain, gzip or zstd).
fn is_layer(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_documents_and_refuses_others() {
        let d = Doc::parse(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#, "i")
            .expect("docker");
        assert_eq!((d.kind, d.new_layer_media_type()), (DocKind::Image, LAYER_DOCKER_GZIP));
        let d = Doc::parse(br#"{"schemaVersion":2,"manifests":[]}"#, "i").expect("oci index");
        assert_eq!((d.kind, d.media_type.as_str()), (DocKind::Index, INDEX_OCI));
        let e =
            Doc::parse(br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#, "img").expect_err("v1").to_string();
        assert!(e.starts_with("img: unsupported manifest media type"), "{e}");
    }
}
