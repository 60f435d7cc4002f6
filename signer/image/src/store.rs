//! One interface over a registry repository and an OCI layout directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::error::Error;
use crate::layout::Layout;
use crate::reference::ImageRef;
use crate::registry::{RegistryOptions, RegistryRepo};

/// Where blobs and manifests are read from or written to.
pub(crate) enum Store {
    Registry(RegistryRepo),
    Layout(Arc<Layout>),
}

/// A readable blob stream.
pub(crate) type BlobReader = Box<dyn AsyncRead + Send + Unpin>;

impl Store {
    /// Opens the store an image reference points into; `create` makes a missing layout.
    pub async fn open(image: &ImageRef, opts: &RegistryOptions, create: bool) -> Result<Store, Error> {
        Ok(match image {
            ImageRef::Registry(r) => Store::Registry(RegistryRepo::connect(r, opts).await?),
            ImageRef::Layout { dir, .. } => Store::Layout(Arc::new(if create { Layout::create(dir)? } else { Layout::open(dir)? })),
        })
    }

    /// The manifest or index at a tag or digest (`None`: a layout's only image).
    pub async fn manifest(&self, reference: Option<&str>) -> Result<(Bytes, String), Error> {
        match self {
            Store::Registry(r) => r.manifest(reference.unwrap_or("latest")).await,
            Store::Layout(l) => l.manifest(reference),
        }
    }

    pub async fn blob(&self, digest: &str) -> Result<BlobReader, Error> {
        match self {
            Store::Registry(r) => Ok(Box::new(r.blob(digest).await?)),
            Store::Layout(l) => {
                let path = l.blob_path(digest)?;
                let file = tokio::fs::File::open(&path).await.map_err(Error::io(&path, "open blob"))?;
                Ok(Box::new(file))
            }
        }
    }

    pub async fn has_blob(&self, digest: &str) -> Result<bool, Error> {
        match self {
            Store::Registry(r) => r.has_blob(digest).await,
            Store::Layout(l) => Ok(l.has_blob(digest)),
        }
    }

    /// Mounts a blob from `source` when both are repositories of one registry.
    pub async fn mount_from(&self, source: &Store, digest: &str) -> bool {
        match (self, source) {
            (Store::Registry(dst), Store::Registry(src)) if dst.registry() == src.registry() && dst.repository() != src.repository() => {
                dst.mount(digest, src.repository()).await
            }
            _ => false,
        }
    }

    pub async fn put_blob_file(&self, path: &Path, digest: &str, size: u64) -> Result<(), Error> {
        match self {
            Store::Registry(r) => r.push_blob_file(path, digest, size).await,
            Store::Layout(l) => {
                let (l, path, digest) = (l.clone(), PathBuf::from(path), digest.to_string());
                tokio::task::spawn_blocking(move || l.put_blob_file(&path, &digest)).await?
            }
        }
    }

    pub async fn put_blob_bytes(&self, bytes: &Bytes, digest: &str) -> Result<(), Error> {
        match self {
            Store::Registry(r) => r.push_blob_bytes(bytes, digest).await,
            Store::Layout(l) => l.put_blob_bytes(bytes, digest),
        }
    }

    /// Stores a manifest under `tag`, or untagged by digest; returns its digest.
    pub async fn put_manifest(&self, bytes: &Bytes, media_type: &str, tag: Option<&str>) -> Result<String, Error> {
        let digest = crate::digest::of(bytes);
        match self {
            Store::Registry(r) => r.push_manifest(bytes, media_type, tag.unwrap_or(&digest)).await?,
            Store::Layout(l) => {
                l.put_manifest(bytes, media_type, tag)?;
            }
        }
        Ok(digest)
    }
}
