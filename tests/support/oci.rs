//! The tests' own OCI image writer: layers from files (whiteouts, links, hostile names included),
//! configs, manifests (OCI or Docker media types), indexes, in an OCI image layout directory.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One entry of a layer.
#[derive(Debug, Clone)]
pub enum Item {
    File {
        path: String,
        content: Vec<u8>,
        mode: u32,
    },
    Dir(String),
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    /// `.wh.<name>`: deletes `path` from lower layers.
    Whiteout(String),
    /// `.wh..wh..opq` in `dir`: hides the directory's lower contents.
    Opaque(String),
    /// A regular-file entry whose name is written verbatim (for hostile names such as `../x`).
    RawName {
        name: String,
        content: Vec<u8>,
    },
}

/// A file item with mode 0644.
pub fn file(path: &str, content: Vec<u8>) -> Item {
    Item::File { path: path.into(), content, mode: 0o644 }
}

/// An image: layers bottom first, manifest family, platform.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<Vec<Item>>,
    pub docker: bool,
    pub os: String,
    pub arch: String,
}

impl Image {
    pub fn oci(layers: Vec<Vec<Item>>) -> Image {
        Image { layers, docker: false, os: "linux".into(), arch: "amd64".into() }
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).expect("blobs dir");
    std::fs::write(dir.join(&digest[7..]), bytes).expect("write blob");
    digest
}

fn layer_tar(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match item {
            Item::File { path, content, mode } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(content.len() as u64);
                b.append_data(&mut h, path.trim_start_matches('/'), &content[..]).expect("file entry");
            }
            Item::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("{}/", path.trim_start_matches('/')), &[][..]).expect("dir entry");
            }
            Item::Symlink { path, target } | Item::Hardlink { path, target } => {
                h.set_entry_type(if matches!(item, Item::Symlink { .. }) { tar::EntryType::Symlink } else { tar::EntryType::Link });
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path.trim_start_matches('/'), target.trim_start_matches(if matches!(item, Item::Hardlink { .. }) { "/" } else { "" }))
                    .expect("link entry");
            }
            Item::Whiteout(path) => {
                let (dir, name) = path.rsplit_once('/').expect("absolute path");
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, format!("{}/.wh.{name}", dir.trim_start_matches('/')), &[][..]).expect("whiteout");
            }
            Item::Opaque(dir) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, format!("{}/.wh..wh..opq", dir.trim_start_matches('/')), &[][..]).expect("opaque");
            }
            Item::RawName { name, content } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(content.len() as u64);
                let raw = &mut h.as_old_mut().name;
                raw[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, &content[..]).expect("raw entry");
            }
        }
    }
    b.into_inner().expect("tar")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// Writes the image's blobs and returns (manifest bytes, media type).
fn image_blobs(layout: &Path, image: &Image) -> (Vec<u8>, &'static str) {
    let (manifest_type, config_type, layer_type) = if image.docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip")
    };
    let mut diff_ids = vec![];
    let mut layers = vec![];
    for items in &image.layers {
        let tar = layer_tar(items);
        diff_ids.push(sha256(&tar));
        let gz = gzip(&tar);
        layers.push(json!({"mediaType": layer_type, "digest": put_blob(layout, &gz), "size": gz.len()}));
    }
    let config = json!({
        "architecture": image.arch, "os": image.os,
        "config": {"Cmd": ["sleep", "infinity"], "Labels": {"made-by": "kforge tests"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": image.layers.iter().map(|_| json!({"created_by": "kforge test writer"})).collect::<Vec<_>>(),
    });
    let config = serde_json::to_vec(&config).expect("json");
    let manifest = json!({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": put_blob(layout, &config), "size": config.len()},
        "layers": layers,
        "annotations": {"org.opencontainers.image.title": "kforge test image"},
    });
    (serde_json::to_vec(&manifest).expect("json"), manifest_type)
}

fn tag_in_index(layout: &Path, tag: &str, media_type: &str, bytes: &[u8]) -> String {
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let digest = put_blob(layout, bytes);
    let index_path = layout.join("index.json");
    let mut index: Value =
        std::fs::read(&index_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_else(|| json!({"schemaVersion": 2, "manifests": []}));
    let manifests = index["manifests"].as_array_mut().expect("manifests");
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != json!(tag));
    manifests.push(json!({"mediaType": media_type, "digest": digest, "size": bytes.len(), "annotations": {"org.opencontainers.image.ref.name": tag}}));
    std::fs::write(index_path, serde_json::to_vec(&index).expect("json")).expect("index.json");
    digest
}

/// Writes one image into the layout under `tag`; returns the manifest digest.
pub fn write_image(layout: &Path, tag: &str, image: &Image) -> String {
    let (bytes, media_type) = image_blobs(layout, image);
    tag_in_index(layout, tag, media_type, &bytes)
}

/// Writes a multi-platform index of `images` under `tag`; returns the index digest.
pub fn write_index(layout: &Path, tag: &str, images: &[Image]) -> String {
    let mut entries = vec![];
    for image in images {
        let (bytes, media_type) = image_blobs(layout, image);
        entries.push(json!({
            "mediaType": media_type, "digest": put_blob(layout, &bytes), "size": bytes.len(),
            "platform": {"os": image.os, "architecture": image.arch},
            "annotations": {"kforge.test/platform": format!("{}-{}", image.os, image.arch)},
        }));
    }
    let index =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries, "annotations": {"kforge.test/index": "yes"}});
    tag_in_index(layout, tag, "application/vnd.oci.image.index.v1+json", &serde_json::to_vec(&index).expect("json"))
}

/// Writes arbitrary manifest bytes under `tag` (for media types kforge must refuse).
pub fn write_raw(layout: &Path, tag: &str, media_type: &str, bytes: &[u8]) -> String {
    tag_in_index(layout, tag, media_type, bytes)
}

/// The manifest (or index) JSON a tag points at.
pub fn manifest(layout: &Path, tag: &str) -> Value {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json")).expect("json");
    let entry = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == json!(tag))
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()))
        .clone();
    blob_json(layout, entry["digest"].as_str().expect("digest"))
}

/// A JSON blob of the layout.
pub fn blob_json(layout: &Path, digest: &str) -> Value {
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).expect("blob")).expect("json")
}

/// The digest a tag points at.
pub fn tag_digest(layout: &Path, tag: &str) -> Option<String> {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).ok()?).ok()?;
    index["manifests"]
        .as_array()?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == json!(tag))
        .and_then(|m| m["digest"].as_str().map(str::to_string))
}
