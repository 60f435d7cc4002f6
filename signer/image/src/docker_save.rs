//! A `docker save` archive (what a Docker engine's `GET /images/{name}/get` streams) turned into
//! an OCI image layout as it arrives: how a build kept in an engine's store reaches the signer
//! without ever being pushed unsigned.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::Error;
use crate::layout::Layout;
use crate::manifest::{LAYER_OCI_GZIP, MANIFEST_OCI};

const CONFIG_OCI: &str = "application/vnd.oci.image.config.v1+json";
/// The engine saves layers uncompressed; they are gzipped (in parallel, deterministically) as they
/// arrive, at the fastest level: about a third of the bytes to push and for nodes to pull.
const GZIP_LEVEL: u32 = 1;

/// Converts the `docker save` stream of one image (`name`, for errors) into an OCI layout at
/// `dir/oci` where it is tagged `tag`; returns the layout directory. Blocking: run it on a
/// blocking thread.
pub fn to_layout(archive: impl Read, dir: &Path, name: &str, tag: &str) -> Result<PathBuf, Error> {
    let stream = Path::new("docker save stream");
    let dir = dir.join("oci");
    let layout = Layout::create(&dir)?;
    let bad = |reason: String| Error::Malformed { image: name.to_string(), what: "docker save archive", reason };

    // One pass: small JSON members kept in memory, layer tars written straight into the layout.
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, archive));
    let mut json_members: HashMap<String, Vec<u8>> = HashMap::new();
    let mut layers: HashMap<String, (String, u64)> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    for entry in archive.entries().map_err(Error::io(stream, "read"))? {
        let mut entry = entry.map_err(Error::io(stream, "read"))?;
        let path = entry.path().map_err(Error::io(stream, "read"))?.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            // Newer engines store a repeated layer once and link to it.
            if let Some(target) = entry.link_name().map_err(Error::io(stream, "read"))? {
                let target = target.to_string_lossy().into_owned();
                let base = Path::new(&path).parent().unwrap_or(Path::new(""));
                let resolved = if kind.is_symlink() { normalize(&base.join(&target)) } else { target };
                links.insert(path, resolved);
            }
        } else if path.ends_with(".tar") {
            let blob = layout.put_blob_stream(&mut entry, Some(GZIP_LEVEL), &path)?;
            layers.insert(path, blob);
        } else if path.ends_with(".json") && entry.size() <= 16 << 20 {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(Error::io(stream, "read"))?;
            json_members.insert(path, data);
        }
    }
    let manifest: Value =
        serde_json::from_slice(json_members.get("manifest.json").ok_or_else(|| bad("no manifest.json".into()))?).map_err(|e| bad(e.to_string()))?;
    let image = manifest.as_array().and_then(|a| a.first()).ok_or_else(|| bad("manifest.json lists no image".into()))?;
    let config_path = image.get("Config").and_then(Value::as_str).ok_or_else(|| bad("no Config".into()))?;
    let config = json_members.get(config_path).ok_or_else(|| bad(format!("{config_path} missing")))?;
    let (config_digest, config_size) = layout.put_blob_stream(config.as_slice(), None, config_path)?;
    let mut layer_descs = Vec::new();
    for l in image.get("Layers").and_then(Value::as_array).ok_or_else(|| bad("no Layers".into()))? {
        let mut path = l.as_str().ok_or_else(|| bad("a layer is not a path".into()))?.to_string();
        for _ in 0..8 {
            match links.get(&path) {
                Some(t) => path = t.clone(),
                None => break,
            }
        }
        let (digest, size) = layers.get(&path).ok_or_else(|| bad(format!("layer {path} missing")))?;
        layer_descs.push(json!({"mediaType": LAYER_OCI_GZIP, "digest": digest, "size": size}));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_OCI,
        "config": {"mediaType": CONFIG_OCI, "digest": config_digest, "size": config_size},
        "layers": layer_descs,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))?;
    layout.put_manifest(&bytes, MANIFEST_OCI, Some(tag))?;
    Ok(dir)
}

/// `a/../b/layer.tar` → `b/layer.tar`.
fn normalize(p: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::Read;

    fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).expect("append");
    }

    #[test]
    fn converts_a_docker_save_archive_with_a_linked_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = tar::Builder::new(Vec::new());
        append(&mut b, "aaa/layer.tar", b"layer-a");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar").expect("link");
        append(&mut b, "cfg.json", br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
        append(&mut b, "manifest.json", br#"[{"Config":"cfg.json","RepoTags":["x:1"],"Layers":["aaa/layer.tar","bbb/layer.tar"]}]"#);
        let archive = b.into_inner().expect("tar");
        let layout = to_layout(archive.as_slice(), dir.path(), "x:1", "unsigned").expect("converts");
        let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index")).expect("json");
        let mdigest = index["manifests"][0]["digest"].as_str().expect("digest").trim_start_matches("sha256:").to_string();
        assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "unsigned");
        let manifest: Value = serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(mdigest)).expect("manifest")).expect("json");
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0]["digest"], layers[1]["digest"], "the linked layer is the same blob");
        assert_eq!(layers[0]["mediaType"], LAYER_OCI_GZIP);
        let blob = std::fs::read(layout.join("blobs/sha256").join(layers[0]["digest"].as_str().expect("digest").trim_start_matches("sha256:"))).expect("blob");
        assert_eq!(format!("sha256:{}", hex::encode(Sha256::digest(&blob))), layers[0]["digest"].as_str().expect("digest"), "stored under its digest");
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(blob.as_slice()).read_to_end(&mut plain).expect("gunzip");
        assert_eq!(plain, b"layer-a");
    }
}
