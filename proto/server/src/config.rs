//! What the gRPC server itself needs: where to listen, TLS, bearer tokens and limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::Error;

/// Where and how the server listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus metrics and health over HTTP; `None` disables.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS for the gRPC listener; without it the server listens on loopback only.
    pub tls: Option<TlsConfig>,
    /// Bearer tokens, by name; only their SHA-256 is configured.
    pub tokens: Vec<TokenConfig>,
    /// Limits.
    pub limits: Limits,
}

impl ServerConfig {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(Error::Invalid(format!("listen = {} without TLS: plain-text gRPC is only allowed on loopback; configure [tls]", self.listen)));
        }
        for t in &self.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Invalid(format!("token {:?}: sha256 must be 64 hex digits (printf %s TOKEN | sha256sum)", t.name)));
            }
        }
        if self.limits.max_concurrent_requests == 0 {
            return Err(Error::Invalid("limits.max_concurrent_requests must be at least 1".into()));
        }
        Ok(())
    }

    /// Whether callers must authenticate (TLS client CA or tokens configured).
    pub fn requires_auth(&self) -> bool {
        !self.tokens.is_empty() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }
}

/// Server certificate and, for mutual TLS, the CA that client certificates must chain to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// CA bundle for client certificates (mutual TLS); identities come from their subject and SANs.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// A bearer token: its name (the identity `token:NAME`) and the SHA-256 of its value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name; the caller's identity becomes `token:NAME`.
    pub name: String,
    /// Lowercase hex SHA-256 of the token (`printf %s TOKEN | sha256sum`).
    pub sha256: String,
}

/// Request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest module accepted, in bytes (uncompressed or compressed as sent).
    pub max_module_bytes: u64,
    /// Requests served at once (a streaming request counts until its stream ends); more are
    /// refused with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Signatures per second per identity (bursts of twice that); 0 disables.
    pub signatures_per_second: f64,
    /// Requests (signing and building alike) per second per identity (bursts of twice that); 0
    /// disables.
    pub requests_per_second: f64,
    /// Largest gRPC message, in bytes (a Build request carries its context: the CLI sends up to 32 MiB).
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_module_bytes: 512 << 20, max_concurrent_requests: 256, signatures_per_second: 0.0, requests_per_second: 0.0, max_message_bytes: 64 << 20 }
    }
}
