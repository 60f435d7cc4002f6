//! An image in the Docker engine's store, exported (`GET /images/{name}/get`, the `docker save`
//! format) into an OCI image layout on disk: how a build on the engine reaches the signer without
//! ever being pushed unsigned.

use std::collections::HashMap;
use std::io::{Read, Write};

use std::path::{Path, PathBuf};

use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Media types of the layout kforge writes.
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The engine saves layers uncompressed; they are gzipped (in parallel, deterministically) as they
/// arrive, at the fastest level: about a third of the bytes to push and for nodes to pull.
const GZIP_LEVEL: u32 = 1;

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Exports engine image `name` into an OCI layout at `dir/oci` tagged `tag`; returns the layout.
/// The `docker save` stream is converted as it arrives (no intermediate archive on disk).
pub(crate) async fn to_layout(socket: &Path, name: &str, dir: &Path, tag: &str) -> Result<PathBuf> {
    use futures_util::TryStreamExt;
    let fail = |cause: String| Error::Protocol { endpoint: format!("docker://{}", socket.display()), what: format!("export {name} from the engine"), cause };
    let resp = crate::docker::get(socket, &format!("/images/{name}/get")).await.map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(fail(format!("{status}: {}", String::from_utf8_lossy(&body).trim())));
    }
    let stream = resp.into_body().into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let (dir, name, tag) = (dir.to_path_buf(), name.to_string(), tag.to_string());
    tokio::task::spawn_blocking(move || convert(reader, &dir, &name, &tag)).await.map_err(|e| Error::Request(format!("export task failed: {e}")))?
}

/// A blob written into the layout (gzipped if `gzip`): its digest and size.
fn put_blob(layout: &Path, mut reader: impl Read, what: &str, gzip: bool) -> Result<(String, u64)> {
    let blobs = layout.join("blobs/sha256");
    let tmp = tempfile::NamedTempFile::new_in(&blobs).map_err(Error::io(&blobs, "create a blob in"))?;
    let file = tmp.reopen().map_err(Error::io(tmp.path(), "open"))?;
    let mut out = Hashing { inner: std::io::BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), size: 0 };
    let copied = if gzip {
        let mut gz = kforge_image::ParallelGz::new(&mut out, flate2::Compression::new(GZIP_LEVEL));
        std::io::copy(&mut reader, &mut gz).and_then(|_| gz.finish().map(|_| ()))
    } else {
        std::io::copy(&mut reader, &mut out).map(|_| ())
    };
    copied.and_then(|()| out.flush()).map_err(Error::io(what, "copy into the layout"))?;
    let size = out.size;
    let hex = hex::encode(out.hasher.finalize());
    let target = blobs.join(&hex);
    tmp.persist(&target).map_err(|e| Error::Io { path: target, action: "persist blob", source: e.error })?;
    Ok((format!("sha256:{hex}"), size))
}

/// Turns a `docker save` archive into an OCI layout (one image, tagged).
fn convert(archive: impl Read, dir: &Path, name: &str, tag: &str) -> Result<PathBuf> {
    let tar_path = Path::new("docker save stream");
    let layout = dir.join("oci");
    std::fs::create_dir_all(layout.join("blobs/sha256")).map_err(Error::io(&layout, "create"))?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(Error::io(&layout, "write oci-layout"))?;
    let bad = |reason: String| Error::Protocol { endpoint: "docker engine".into(), what: format!("export of {name}"), cause: reason };

    // One pass: small JSON members kept in memory, layer tars written straight into the layout.
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, archive));
    let mut json_members: HashMap<String, Vec<u8>> = HashMap::new();
    let mut layers: HashMap<String, (String, u64)> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    for entry in archive.entries().map_err(Error::io(tar_path, "read"))? {
        let mut entry = entry.map_err(Error::io(tar_path, "read"))?;
        let path = entry.path().map_err(Error::io(tar_path, "read"))?.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            // Newer engines store a repeated layer once and link to it.
            if let Some(target) = entry.link_name().map_err(Error::io(tar_path, "read"))? {
                let target = target.to_string_lossy().into_owned();
                let base = Path::new(&path).parent().unwrap_or(Path::new(""));
                let resolved = if kind.is_symlink() { normalize(&base.join(&target)) } else { target };
                links.insert(path, resolved);
            }
        } else if path.ends_with(".tar") {
            let blob = put_blob(&layout, &mut entry, &path, true)?;
            layers.insert(path, blob);
        } else if path.ends_with(".json") && entry.size() <= 16 << 20 {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(Error::io(tar_path, "read"))?;
            json_members.insert(path, data);
        }
    }
    let manifest: Value =
        serde_json::from_slice(json_members.get("manifest.json").ok_or_else(|| bad("no manifest.json".into()))?).map_err(|e| bad(e.to_string()))?;
    let image = manifest.as_array().and_then(|a| a.first()).ok_or_else(|| bad("manifest.json lists no image".into()))?;
    let config_path = image.get("Config").and_then(Value::as_str).ok_or_else(|| bad("no Config".into()))?;
    let config = json_members.get(config_path).ok_or_else(|| bad(format!("{config_path} missing")))?;
    let (config_digest, config_size) = put_blob(&layout, config.as_slice(), config_path, false)?;
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
        layer_descs.push(json!({"mediaType": LAYER_GZIP, "digest": digest, "size": size}));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": config_size},
        "layers": layer_descs,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))?;
    let (digest, size) = put_blob(&layout, bytes.as_slice(), "manifest", false)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": MANIFEST, "digest": digest, "size": size, "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).map_err(|e| bad(e.to_string()))?).map_err(Error::io(&layout, "write index.json"))?;
    Ok(layout)
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
        let layout = convert(archive.as_slice(), dir.path(), "x:1", "unsigned").expect("converts");
        let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index")).expect("json");
        let mdigest = index["manifests"][0]["digest"].as_str().expect("digest").trim_start_matches("sha256:").to_string();
        assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "unsigned");
        let manifest: Value = serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(mdigest)).expect("manifest")).expect("json");
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0]["digest"], layers[1]["digest"], "the linked layer is the same blob");
        assert_eq!(layers[0]["mediaType"], LAYER_GZIP);
        let blob = std::fs::read(layout.join("blobs/sha256").join(layers[0]["digest"].as_str().expect("digest").trim_start_matches("sha256:"))).expect("blob");
        assert_eq!(format!("sha256:{}", hex::encode(Sha256::digest(&blob))), layers[0]["digest"].as_str().expect("digest"), "stored under its digest");
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(blob.as_slice()).read_to_end(&mut plain).expect("gunzip");
        assert_eq!(plain, b"layer-a");
    }
}
