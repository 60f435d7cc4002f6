//! kforge's gRPC plumbing, shared by the signer and builder services so that both behave alike:
//! who is calling (mutual TLS or bearer tokens, the [`Caller`] in every request's extensions),
//! limits (requests in flight, per-caller request and signature rates, message sizes), metrics,
//! TLS, gRPC health and server reflection (v1 and v1alpha), all behind one tower layer.

#![warn(missing_docs)]

mod auth;
mod config;
mod error;
mod layer;
mod limits;
mod metrics;
mod serve;
mod status;

pub use auth::{Caller, cert_identities};
pub use config::{Limits, ServerConfig, TlsConfig, TokenConfig};
pub use error::{BoxError, Error, chain};
pub use layer::{Guarded, GuardedBody, ServiceLayer};
pub use limits::Limiter;
pub use metrics::{Check, Metrics, serve_endpoints};
pub use serve::{Running, Server};
pub use status::image_status;
