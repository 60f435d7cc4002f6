//! What `sign_image` is asked and answers: the request, the signed files, the events.

use std::path::PathBuf;
use std::sync::Arc;

use kforge_signer::Signer;

use crate::reference::ImageRef;
use crate::registry::RegistryOptions;
use crate::select::Selection;

/// A request to sign the modules inside an image.
pub struct SignImage {
    /// The image to read.
    pub from: ImageRef,
    /// Where to push the signed image (a tag; the digest is returned).
    pub to: ImageRef,
    /// Which files to sign.
    pub selection: Selection,
    /// The signer (key, certificate, hash).
    pub signer: Arc<Signer>,
    /// Registry credentials and TLS.
    pub registries: RegistryOptions,
    /// Where to keep temporary files (default: the system temp directory).
    pub work_dir: Option<PathBuf>,
    /// Called for every file signed, before anything is pushed; an error aborts the request.
    pub audit: Option<AuditHook>,
    /// gzip level of the new layer, 1 to 9.
    pub gzip_level: u32,
    /// Labels added to the signed image's config (for example the hash of the build inputs).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The default gzip level of the new layer: on the 394 MB module corpus, level 3 makes a layer 5%
/// larger than level 6 in about two thirds of the time.
pub const DEFAULT_GZIP_LEVEL: u32 = 3;

/// What the audit hook learns about each signed file.
#[derive(Debug, Clone)]
pub struct SignedFile {
    /// The image (and platform) it belongs to.
    pub image: String,
    /// Path in the image.
    pub path: String,
    /// `.modinfo` name.
    pub module_name: String,
    /// `.modinfo` vermagic.
    pub vermagic: String,
    /// sha256 of the file before signing, hex.
    pub sha256_in: String,
    /// sha256 of the signed file, hex.
    pub sha256_out: String,
}

/// Records a signature durably; an error fails the whole request.
pub type AuditHook = Arc<dyn Fn(&SignedFile) -> Result<(), String> + Send + Sync>;

/// Progress reported while signing an image.
#[derive(Debug, Clone)]
pub enum Event {
    /// A platform image is being read.
    Image {
        /// Platform (`linux/amd64`) or the image name.
        platform: String,
        /// Number of layers.
        layers: usize,
    },
    /// A layer was read.
    Layer {
        /// Its digest.
        digest: String,
        /// Compressed size.
        size: u64,
    },
    /// A file was signed.
    Signed {
        /// Path in the image.
        path: String,
    },
    /// A blob reached the destination.
    Blob {
        /// Its digest.
        digest: String,
        /// "present", "mounted" or "uploaded".
        how: &'static str,
        /// Size in bytes.
        size: u64,
    },
    /// A manifest or index was pushed.
    Manifest {
        /// Its digest.
        digest: String,
        /// The tag, if any.
        tag: Option<String>,
    },
}

/// The result: what was pushed.
#[derive(Debug, Clone)]
pub struct SignedImage {
    /// Digest of the pushed manifest or index.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Files signed, per platform image, as paths in the image.
    pub signed: Vec<String>,
    /// Bytes uploaded (blobs and manifests).
    pub uploaded: u64,
}

/// Where progress goes.
pub(crate) type Events = Arc<dyn Fn(Event) + Send + Sync>;
