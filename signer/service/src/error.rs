//! Errors of starting the signing service (request errors are gRPC statuses).

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop the service from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configured value is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A key could not be loaded.
    #[error("key {name:?}")]
    Key {
        /// Key name.
        name: String,
        /// The loader's error.
        #[source]
        error: Box<kforge_signer::Error>,
    },
    /// A file-system operation failed.
    #[error("{}: cannot {op}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The OS error.
        #[source]
        cause: std::io::Error,
    },
    /// Starting failed.
    #[error("{what}")]
    Start {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| Error::Io { path, op, cause }
    }
}
