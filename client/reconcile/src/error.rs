//! The one error type of this crate.

/// Everything that can go wrong in the reconciler. A failing write is logged and retried on the
/// next pass; only start-up errors (a builder endpoint that cannot be used) end [`crate::run`].
/// A failed build is not an error here: its message becomes the image's `Failed` fact.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API request failed.
    #[error("{action} {object}: {source}")]
    Kube {
        /// What was attempted (`apply`, `delete`, `patch status`, …).
        action: &'static str,
        /// The object, `kind namespace/name`.
        object: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The builder endpoint cannot be used.
    #[error("builder endpoint {endpoint}: {source}")]
    BuilderEndpoint {
        /// The configured URL.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The builder token cannot be sent as a header.
    #[error("builder token has characters not allowed in a header")]
    BuilderToken,
    /// A registry lookup failed.
    #[error("registry lookup of {image}: {source}")]
    Registry {
        /// The image looked up.
        image: String,
        /// The registry client's error.
        #[source]
        source: kforge_image::Error,
    },
}

impl Error {
    /// A closure mapping a kube error for `action` on `object`.
    pub(crate) fn kube(action: &'static str, object: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let object = object.into();
        move |source| Error::Kube { action, object, source }
    }

    /// Whether the API server answered 409 Conflict (someone else wrote first; retry next pass).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 409)
    }

    /// Whether the API server answered 404 Not Found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 404)
    }
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;
