//! `kforge.signer.v1.Signer`: module and image signing for remote callers, with the keys kept on
//! the server. Each key lists who may use it, and every signature is appended to an fsync'd audit
//! log before the signed bytes are returned. Caller identity, limits and metrics come from
//! `kforge-server`'s layer, which `kforge serve` puts in front of every service.

#![warn(missing_docs)]

mod assembler;
mod audit;
mod config;
mod error;
mod keys;
mod metrics;
mod service;
mod time;

use std::sync::Arc;
use std::time::Duration;

use kforge_proto::signer::v1::signer_server::SignerServer;
use kforge_server::{Caller, Limiter, Limits, Metrics};

pub use config::{KeyConfig, SignerConfig};
pub use error::{Error, Result};
pub use service::SignerService;

/// The signing service's keys, audit log and limits, shared by its gRPC service and by whoever
/// signs on its behalf (a build-and-sign request on the builder service).
#[derive(Clone)]
pub struct Signing {
    state: Arc<service::State>,
}

impl Signing {
    /// Loads the keys (and watches them for changes), opens the audit log; signatures are limited
    /// by `limits` and `limiter` and counted in `metrics`; `registries` serve SignImage requests
    /// that bring no credentials.
    pub async fn start(
        config: &SignerConfig,
        limits: Limits,
        limiter: Arc<Limiter>,
        metrics: &Metrics,
        registries: kforge_image::RegistryOptions,
    ) -> Result<Signing> {
        config.validate()?;
        let keys_cfg = config.keys.clone();
        let keys = Arc::new(
            tokio::task::spawn_blocking(move || keys::KeyStore::load(&keys_cfg))
                .await
                .map_err(|e| Error::Start { what: "loading keys".into(), source: Box::new(e) })??,
        );
        keys.watch(Duration::from_secs(config.key_reload_seconds.max(1)));
        let audit = audit::AuditLog::open(&config.audit_log)?;
        let state = service::State::new(keys, audit, limits, limiter, metrics::SignerMetrics::new(metrics), registries);
        Ok(Signing { state: Arc::new(state) })
    }

    /// The gRPC service.
    pub fn service(&self) -> SignerServer<SignerService> {
        let max = self.state.limits.max_message_bytes;
        SignerServer::new(SignerService(self.state.clone())).max_decoding_message_size(max).max_encoding_message_size(max)
    }

    /// Ready when at least one key is loaded.
    pub fn ready(&self) -> std::result::Result<(), String> {
        if self.state.keys.snapshot().is_empty() { Err("no signing keys loaded".into()) } else { Ok(()) }
    }

    /// The key `name` for `caller` (refusals audited; one token of the caller's signature rate) and the hook that audits every file signed
    /// with it, under a new request id.
    pub async fn key_for(&self, name: &str, caller: &Caller) -> std::result::Result<(kforge_signer::SigningKey, kforge_image::AuditHook), tonic::Status> {
        let request_id = self.state.request_id();
        let key = self.state.key_for(name, caller, &request_id).await?;
        // One signature token per request, as SignImage takes.
        self.state.limiter.take_signature(caller.name())?;
        let hook = self.state.audit_hook(&request_id, caller.name(), &key.name);
        Ok((key.signing.clone(), hook))
    }
}
