//! Errors of the image pipeline; each names the image, layer, file or registry involved.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while signing an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference {
        /// What was given.
        reference: String,
        /// Why it is wrong.
        reason: String,
    },
    /// A registry request failed.
    #[error("registry {registry}: {what} failed: {cause}")]
    Registry {
        /// Registry host.
        registry: String,
        /// The operation ("pull manifest of …", "push blob …").
        what: String,
        /// What the client or server said.
        cause: String,
    },
    /// A registry reached over HTTPS answered the TLS handshake in plain HTTP. Not retried: asking
    /// again cannot help.
    #[error("registry {registry}: {what} failed: the registry answered plain HTTP to HTTPS; reach it over plain HTTP (registryTLS.insecure)")]
    PlainHttp {
        /// Registry host.
        registry: String,
        /// The operation.
        what: String,
        /// The TLS error, as the client reported it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A registry reached over plain HTTP speaks HTTPS.
    #[error(
        "registry {registry}: {what} failed: {cause}; the registry speaks HTTPS, not plain HTTP: reach it over HTTPS (registryTLS.insecure off), with its CA or without verification (registryTLS.insecureSkipTLSVerify)"
    )]
    SpeaksHttps {
        /// Registry host.
        registry: String,
        /// The operation.
        what: String,
        /// What the client said.
        cause: String,
    },
    /// Credentials are needed and were refused or missing.
    #[error("registry {registry}: authentication failed for {what}: {cause}; give credentials for {registry} (a Docker config: an auth file or a pull secret)")]
    Auth {
        /// Registry host.
        registry: String,
        /// The operation.
        what: String,
        /// What the server said.
        cause: String,
    },
    /// The manifest or index is not one kforge can handle.
    #[error("{image}: unsupported manifest media type {media_type:?}; supported are OCI and Docker v2 image manifests and indexes/manifest lists")]
    UnsupportedMediaType {
        /// The image.
        image: String,
        /// Its media type.
        media_type: String,
    },
    /// A manifest, index or config is malformed.
    #[error("{image}: malformed {what}: {reason}")]
    Malformed {
        /// The image.
        image: String,
        /// "manifest", "config", "index".
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Content did not match its digest.
    #[error("{what}: digest mismatch, expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// Expected digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },
    /// A layer's tar stream is unsafe or corrupt.
    #[error("layer {layer}: {reason}")]
    Layer {
        /// Layer digest.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// A path in the image resolves outside the image root.
    #[error("{path}: {reason}")]
    Escape {
        /// The path in the image.
        path: String,
        /// Which link escapes.
        reason: String,
    },
    /// A `filesToSign` path does not exist in the image.
    #[error("{image}: {path} does not exist in the image (filesToSign names files by their absolute path in the image)")]
    MissingFile {
        /// The image.
        image: String,
        /// The path.
        path: String,
    },
    /// Nothing matched the selection.
    #[error("{image}: no file matches {selection}; nothing would be signed")]
    NothingToSign {
        /// The image.
        image: String,
        /// The selection, described.
        selection: String,
    },
    /// A selected file is not a module (or signing it failed).
    #[error("{image}: {path}: {error}")]
    Sign {
        /// The image.
        image: String,
        /// The file in the image.
        path: String,
        /// What the signer said.
        error: Box<kforge_signer::Error>,
    },
    /// A file-system operation failed.
    #[error("{}: cannot {op}: {cause}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The OS error.
        cause: std::io::Error,
    },
    /// An I/O error while streaming a blob.
    #[error("{what}: {cause}")]
    Stream {
        /// Which blob.
        what: String,
        /// The error.
        cause: std::io::Error,
    },
    /// The credentials file could not be used.
    #[error("{}: {reason}", path.display())]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The audit hook refused a signature.
    #[error("{path}: the signature could not be recorded in the audit log: {reason}")]
    Audit {
        /// The file in the image.
        path: String,
        /// Why.
        reason: String,
    },
    /// A background task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| Error::Io { path, op, cause }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Task(e.to_string())
    }
}
