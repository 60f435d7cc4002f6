//! kforge's service: `kforge.signer.v1.Signer` and `kforge.builder.v1.Builder` over gRPC.
//!
//! Keys stay on the server. Callers authenticate with mutual TLS or bearer tokens, each key lists
//! who may use it, every signature is appended to an fsync'd audit log before the signed bytes are
//! returned, and limits keep the service responsive under overload.

#![warn(missing_docs)]

mod audit;
mod auth;
mod build;
mod config;
mod error;
mod keys;
mod limits;
mod metrics;
mod server;
mod service;
mod time;

pub use config::{BuilderConfig, Config, KeyConfig, Limits, TlsConfig, TokenConfig};
pub use error::{Error, Result};
pub use server::{Running, serve};
