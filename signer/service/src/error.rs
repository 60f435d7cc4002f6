//! Errors of starting and configuring the service (request errors are gRPC statuses).

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop the service from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is unreadable or invalid.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A configured value is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A key could not be loaded.
    #[error("key {name:?}: {error}")]
    Key {
        /// Key name.
        name: String,
        /// The loader's error.
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
    /// Binding or serving failed.
    #[error("{what}: {cause}")]
    Serve {
        /// What was being done.
        what: String,
        /// The error.
        cause: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| Error::Io { path, op, cause }
    }
}

/// An error and its causes, joined: what a remote caller reads (it has no other view of the chain).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
