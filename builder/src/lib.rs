//! kforge's builder: kernel-module images built through BuildKit's gRPC API.
//!
//! BuildKit is reached either as a standalone `buildkitd` (`unix://`, `tcp://` with mutual TLS) or
//! inside a Docker engine (`docker://`, over the engine's `/grpc` and `/session` endpoints). A build
//! sends the Dockerfile and its context as LLB inputs to the Dockerfile frontend, serves build
//! secrets and registry credentials through a session (never as build arguments), streams BuildKit's
//! status as [`Event`]s and pushes the result, returning its digest.

#![warn(missing_docs)]

mod builder;
mod credentials;
mod docker;
mod endpoint;
mod error;
mod events;
mod failure;
mod llb;
mod session;
mod solve;
mod spec;
mod status;

pub use builder::{BuildHandle, Builder, BuilderOptions, DEFAULT_DEADLINE};
pub use credentials::{Anonymous, Credentials};
pub use endpoint::{Connection, DEFAULT_DOCKER_SOCKET, Endpoint, TlsFiles};
pub use error::{BoxError, BuildFailure, Error, FailureKind, Result};
pub use events::{Event, PlainPrinter, Step};
pub use llb::InputFile;
pub use solve::{Output, solve};
pub use spec::{BuildSpec, Target};

/// A process-unique, hard-to-guess identifier with a prefix (session ids, build references).
pub(crate) fn unique_id(prefix: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(now.as_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    // RandomState is seeded from the OS per process.
    h.update(std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8).to_le_bytes());
    format!("{prefix}-{}", &hex::encode(h.finalize())[..25])
}
