//! OCI image layouts on disk (`oci:DIR[:tag]`): `oci-layout`, `index.json`, `blobs/sha256/…`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::error::Error;
use crate::manifest::{self, INDEX_OCI};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory.
pub(crate) struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Opens an existing layout.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        if !dir.join("index.json").is_file() {
            return Err(Error::Io {
                path: dir.into(),
                op: "open OCI layout",
                cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no index.json: not an OCI image layout"),
            });
        }
        Ok(Layout { dir: dir.into() })
    }

    /// Opens a layout, creating an empty one if the directory has none.
    pub fn create(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(Error::io(dir, "create OCI layout"))?;
        if !dir.join("oci-layout").is_file() {
            write_atomic(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !dir.join("index.json").is_file() {
            let index = json!({"schemaVersion": 2, "mediaType": INDEX_OCI, "manifests": []});
            write_atomic(&dir.join("index.json"), index.to_string().as_bytes())?;
        }
        Ok(Layout { dir: dir.into() })
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, Error> {
        let hex = digest.strip_prefix("sha256:").filter(|_| crate::digest::is_sha256(digest)).ok_or_else(|| Error::Malformed {
            image: self.dir.display().to_string(),
            what: "descriptor",
            reason: format!("unsupported digest {digest:?}"),
        })?;
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    fn index(&self) -> Result<Value, Error> {
        let path = self.dir.join("index.json");
        let bytes = std::fs::read(&path).map_err(Error::io(&path, "read"))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Malformed { image: self.dir.display().to_string(), what: "index.json", reason: e.to_string() })
    }

    /// The manifest (or index) for a tag, a digest, or — with neither — the layout's only image.
    pub fn manifest(&self, reference: Option<&str>) -> Result<(Bytes, String), Error> {
        let image = self.dir.display().to_string();
        let digest = match reference {
            Some(d) if d.starts_with("sha256:") => d.to_string(),
            _ => {
                let index = self.index()?;
                let entries = index.get("manifests").and_then(Value::as_array).cloned().unwrap_or_default();
                let found: Vec<&Value> = match reference {
                    Some(tag) => entries
                        .iter()
                        .filter(|m| m.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1"))).and_then(Value::as_str) == Some(tag))
                        .collect(),
                    None => entries.iter().collect(),
                };
                match found.as_slice() {
                    [one] => one.get("digest").and_then(Value::as_str).map(str::to_string).ok_or_else(|| Error::Malformed {
                        image: image.clone(),
                        what: "index.json",
                        reason: "descriptor without digest".into(),
                    })?,
                    [] => {
                        return Err(Error::MissingFile { image, path: format!("tag {}", reference.unwrap_or("(any)")) });
                    }
                    _ => {
                        return Err(Error::Reference {
                            reference: format!("oci:{image}"),
                            reason: "the layout holds several images: name one with :tag or @digest".into(),
                        });
                    }
                }
            }
        };
        let path = self.blob_path(&digest)?;
        let bytes = std::fs::read(&path).map_err(Error::io(&path, "read manifest blob"))?;
        let actual = crate::digest::of(&bytes);
        if actual != digest {
            return Err(Error::DigestMismatch { what: format!("{image} manifest"), expected: digest, actual });
        }
        Ok((Bytes::from(bytes), digest))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Stores a blob from a file (copied; the source stays).
    pub fn put_blob_file(&self, src: &Path, digest: &str) -> Result<(), Error> {
        let dst = self.blob_path(digest)?;
        if dst.is_file() {
            return Ok(());
        }
        let dir = self.dir.join("blobs/sha256");
        let tmp = tempfile::Builder::new().prefix(".kforge-").tempfile_in(&dir).map_err(Error::io(&dir, "create a temporary file in"))?;
        std::fs::copy(src, tmp.path()).map_err(Error::io(src, "copy blob"))?;
        readable(tmp.as_file(), tmp.path())?;
        tmp.persist(&dst).map_err(|e| Error::Io { path: dst.clone(), op: "store blob", cause: e.error })?;
        Ok(())
    }

    /// Stores a blob streamed from `reader`, gzip-compressed (in parallel) at `gzip` if given;
    /// returns its digest and size. `what` names the source in errors.
    pub fn put_blob_stream(&self, mut reader: impl Read, gzip: Option<u32>, what: &str) -> Result<(String, u64), Error> {
        let dir = self.dir.join("blobs/sha256");
        let tmp = tempfile::Builder::new().prefix(".kforge-").tempfile_in(&dir).map_err(Error::io(&dir, "create a temporary file in"))?;
        let file = tmp.reopen().map_err(Error::io(tmp.path(), "open"))?;
        let mut out = Hashing { inner: std::io::BufWriter::with_capacity(1 << 20, file), hasher: sha2::Sha256::default(), size: 0 };
        let copied = match gzip {
            Some(level) => {
                let mut gz = crate::pgzip::ParallelGz::new(&mut out, flate2::Compression::new(level));
                std::io::copy(&mut reader, &mut gz).and_then(|_| gz.finish().map(|_| ()))
            }
            None => std::io::copy(&mut reader, &mut out).map(|_| ()),
        };
        copied.and_then(|()| out.flush()).map_err(Error::io(what, "copy into the layout"))?;
        let (size, digest) = (out.size, format!("sha256:{}", hex::encode(sha2::Digest::finalize(out.hasher))));
        readable(tmp.as_file(), tmp.path())?;
        let dst = self.blob_path(&digest)?;
        tmp.persist(&dst).map_err(|e| Error::Io { path: dst.clone(), op: "store blob", cause: e.error })?;
        Ok((digest, size))
    }

    pub fn put_blob_bytes(&self, bytes: &[u8], digest: &str) -> Result<(), Error> {
        let dst = self.blob_path(digest)?;
        if dst.is_file() {
            return Ok(());
        }
        write_atomic(&dst, bytes)
    }

    /// Stores a manifest and points `tag` (if any) at it in `index.json`, replacing the old entry.
    pub fn put_manifest(&self, bytes: &[u8], media_type: &str, tag: Option<&str>) -> Result<String, Error> {
        let digest = crate::digest::of(bytes);
        self.put_blob_bytes(bytes, &digest)?;
        let mut index = self.index()?;
        let mut descriptor = json!({"mediaType": media_type, "digest": digest, "size": bytes.len()});
        if let Some(tag) = tag {
            descriptor["annotations"] = json!({ REF_NAME: tag });
        }
        let entries = index.get_mut("manifests").and_then(Value::as_array_mut).ok_or_else(|| Error::Malformed {
            image: self.dir.display().to_string(),
            what: "index.json",
            reason: "no manifests array".into(),
        })?;
        entries.retain(|m| match tag {
            Some(tag) => manifest::annotation(m, REF_NAME) != Some(tag),
            None => m.get("digest").and_then(Value::as_str) != Some(digest.as_str()),
        });
        entries.push(descriptor);
        write_atomic(&self.dir.join("index.json"), index.to_string().as_bytes())?;
        Ok(digest)
    }
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".kforge-").tempfile_in(dir).map_err(Error::io(dir, "create a temporary file in"))?;
    tmp.write_all(bytes).map_err(Error::io(tmp.path(), "write"))?;
    readable(tmp.as_file(), tmp.path())?;
    tmp.persist(path).map_err(|e| Error::Io { path: path.into(), op: "replace", cause: e.error })?;
    Ok(())
}

/// Layout files are world-readable, like those other tools write (temporary files start at 0600).
fn readable(file: &std::fs::File, path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(Error::io(path, "set permissions on"))
}
