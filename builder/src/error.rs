//! Errors of the builder, each naming the BuildKit endpoint, image or step involved.

use std::fmt;
use std::path::PathBuf;

/// Why a build failed, as far as BuildKit's answer tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The Dockerfile could not be parsed or turned into a build graph.
    Dockerfile,
    /// A `RUN` step exited non-zero.
    Run,
    /// A base image could not be pulled.
    BaseImage {
        /// The image as BuildKit named it.
        image: String,
        /// Its registry.
        registry: String,
        /// Whether the registry refused the credentials (or asked for some).
        auth: bool,
    },
    /// The registry refused the push of the result.
    Push,
    /// BuildKit went away or cut the stream during the build.
    Interrupted,
    /// Anything else.
    Other,
}

/// A failed build: what BuildKit said, the step and its last log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    /// Kind of failure.
    pub kind: FailureKind,
    /// BuildKit's message.
    pub message: String,
    /// The failing step's name (`[builder 3/5] RUN make`), if known.
    pub step: Option<String>,
    /// The last log lines of the failing step.
    pub logs: Vec<String>,
}

impl fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FailureKind::Dockerfile => write!(f, "Dockerfile error: {}", self.message)?,
            FailureKind::BaseImage { image, registry, auth: true } => write!(
                f,
                "base image {image} cannot be pulled: registry {registry} refused the credentials (give credentials for {registry} in the auth file / pull secret): {}",
                self.message
            )?,
            FailureKind::BaseImage { image, registry, auth: false } => {
                write!(f, "base image {image} cannot be pulled from {registry} (check the name, tag and registry): {}", self.message)?
            }
            FailureKind::Push => write!(f, "the registry refused the push: {}", self.message)?,
            FailureKind::Interrupted => write!(f, "BuildKit stopped answering during the build: {}", self.message)?,
            FailureKind::Run | FailureKind::Other => match &self.step {
                Some(step) => write!(f, "step {step} failed: {}", self.message)?,
                None => write!(f, "{}", self.message)?,
            },
        }
        if !self.logs.is_empty() {
            write!(f, "\nlast log lines:")?;
            for line in &self.logs {
                write!(f, "\n  | {line}")?;
            }
        }
        Ok(())
    }
}

/// Errors of the builder.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A BuildKit address that cannot be used.
    #[error("bad BuildKit address {url:?}: {reason}")]
    Endpoint {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// BuildKit (or the Docker engine) cannot be reached.
    #[error("BuildKit at {endpoint} is unreachable; check the address and that the daemon is running")]
    Unavailable {
        /// The endpoint.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The daemon answered, but not as BuildKit.
    #[error("{endpoint}: {what}")]
    Protocol {
        /// The endpoint.
        endpoint: String,
        /// What kforge was doing.
        what: String,
        /// The answer.
        #[source]
        source: BoxError,
    },
    /// The build was cancelled by BuildKit (or by its operator) before it finished.
    #[error("the build on {endpoint} was cancelled")]
    Cancelled {
        /// The endpoint.
        endpoint: String,
    },
    /// A bad build request.
    #[error("invalid build request: {0}")]
    Request(String),
    /// A local file could not be read.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What kforge was doing with it.
        action: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The build failed.
    #[error("build of {image} failed: {failure}")]
    Build {
        /// Target image.
        image: String,
        /// What failed.
        failure: Box<BuildFailure>,
    },
    /// The build ran past its deadline and was cancelled.
    #[error("build of {image} did not finish within {seconds} s and was cancelled")]
    Deadline {
        /// Target image.
        image: String,
        /// The deadline.
        seconds: u64,
    },
    /// The Docker engine refused to push the built image.
    #[error("push of {image} through the Docker engine failed: {cause}")]
    EnginePush {
        /// The image.
        image: String,
        /// The engine's message.
        cause: String,
    },
    /// The error of a build this request shared with another.
    #[error(transparent)]
    Shared(std::sync::Arc<Error>),
}

impl Error {
    /// A closure building an [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, action, source }
    }
}

/// A cause of any type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Result with the builder's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
