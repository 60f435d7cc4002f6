//! Errors of starting the server (request errors are gRPC statuses).

use std::path::PathBuf;

/// A cause of any type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What can stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configured value is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A file could not be read.
    #[error("{}: cannot {op}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Binding or serving failed.
    #[error("{what}")]
    Serve {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    pub(crate) fn serve(what: impl Into<String>) -> impl FnOnce(BoxError) -> Error {
        let what = what.into();
        move |source| Error::Serve { what, source }
    }
}

/// An error and its causes, joined: what a remote caller reads (it has no other view of the chain).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
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
