//! The one mapping from kforge's library errors to gRPC statuses that more than one service needs.

use tonic::{Code, Status};

use crate::error::chain;

/// An image error as a status: unreachable registries are UNAVAILABLE, refused credentials
/// PERMISSION_DENIED, local failures INTERNAL, the rest (bad references, images kforge cannot read)
/// INVALID_ARGUMENT.
pub fn image_status(e: &kforge_image::Error) -> Status {
    use kforge_image::Error as E;
    let code = match e {
        E::Registry { .. } | E::Stream { .. } | E::PlainHttp { .. } | E::SpeaksHttps { .. } => Code::Unavailable,
        E::Auth { .. } => Code::PermissionDenied,
        E::Io { .. } | E::Task(_) | E::Audit { .. } => Code::Internal,
        _ => Code::InvalidArgument,
    };
    Status::new(code, chain(e))
}
