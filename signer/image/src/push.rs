//! Pushing what was prepared: blobs first (the ones the target lacks), in parallel.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};

use crate::error::Error;
use crate::layer_append::NewLayer;
use crate::manifest::Descriptor;
use crate::request::{Event, Events};
use crate::store::Store;

/// Everything to push for one platform image, prepared before anything is pushed.
pub(crate) struct Prepared {
    pub copies: Vec<(Descriptor, Option<tempfile::NamedTempFile>)>,
    pub layer: NewLayer,
    pub config: Bytes,
    pub manifest: Bytes,
    pub media_type: String,
    pub signed: Vec<String>,
}

/// Blob uploads in flight at once.
const UPLOADS: usize = 4;

/// Puts every blob of a prepared image at the destination: present ones are skipped, others mounted
/// from the source repository where the registry allows, the rest uploaded; config last.
pub(crate) async fn push_blobs(src: &Store, dst: &Store, p: &Prepared, events: &Events) -> Result<u64, Error> {
    let mut uploads = Vec::with_capacity(p.copies.len());
    for (d, tee) in &p.copies {
        uploads.push(copy_blob(src, dst, d, tee.as_ref(), events));
    }
    let copied: Vec<u64> = stream::iter(uploads).buffer_unordered(UPLOADS).try_collect().await?;
    // The same modules signed with the same key give the same layer: upload it only if missing.
    let layer_size = if dst.has_blob(&p.layer.digest).await? {
        events(Event::Blob { digest: p.layer.digest.clone(), how: "present", size: p.layer.size });
        0
    } else {
        dst.put_blob_file(p.layer.file.path(), &p.layer.digest, p.layer.size).await?;
        events(Event::Blob { digest: p.layer.digest.clone(), how: "uploaded", size: p.layer.size });
        p.layer.size
    };
    let config_digest = crate::digest::of(&p.config);
    dst.put_blob_bytes(&p.config, &config_digest).await?;
    Ok(copied.iter().sum::<u64>() + layer_size + p.config.len() as u64)
}

/// Puts one original layer at the destination: present, mounted, or uploaded from its copy.
pub(crate) async fn copy_blob(src: &Store, dst: &Store, d: &Descriptor, copy: Option<&tempfile::NamedTempFile>, events: &Events) -> Result<u64, Error> {
    let Some(file) = copy else {
        events(Event::Blob { digest: d.digest.clone(), how: "present", size: d.size });
        return Ok(0);
    };
    if dst.has_blob(&d.digest).await? {
        events(Event::Blob { digest: d.digest.clone(), how: "present", size: d.size });
        return Ok(0);
    }
    if dst.mount_from(src, &d.digest).await {
        events(Event::Blob { digest: d.digest.clone(), how: "mounted", size: d.size });
        return Ok(0);
    }
    dst.put_blob_file(file.path(), &d.digest, d.size).await?;
    events(Event::Blob { digest: d.digest.clone(), how: "uploaded", size: d.size });
    Ok(d.size)
}
