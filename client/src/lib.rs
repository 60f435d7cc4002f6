//! `kforge serve` as a library: the signer and builder services composed on one server from
//! `kforge.toml` ([`Config`]). The `kforge` binary's other commands live in `main.rs`.

#![warn(missing_docs)]

pub mod config;

use std::path::PathBuf;
use std::sync::Arc;

pub use config::Config;
use kforge_builder_service::{BuildService, ServerKeys};
use kforge_server::{Caller, Running, Server};
use kforge_signer_service::Signing;

/// What can stop `kforge serve` from starting.
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
    /// The development key could not be made.
    #[error("key {name:?}")]
    Key {
        /// Key name.
        name: String,
        /// Why.
        #[source]
        source: kforge_signer::Error,
    },
    /// A file could not be read or written.
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
    /// The server could not start.
    #[error(transparent)]
    Server(#[from] kforge_server::Error),
    /// The signing service could not start.
    #[error(transparent)]
    Signer(#[from] kforge_signer_service::Error),
    /// `[dtk]` cannot be used.
    #[error("[dtk]")]
    Dtk(#[source] kforge_kmm::Error),
    /// `registry_auth_file` cannot be used.
    #[error("registry_auth_file")]
    Registry(#[source] kforge_image::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, op, source }
    }
}

/// The signer's keys, lent to signed builds on the builder service.
struct SigningKeys(Signing);

#[tonic::async_trait]
impl ServerKeys for SigningKeys {
    async fn key(&self, name: &str, caller: &Caller) -> Result<(kforge_signer::SigningKey, kforge_image::AuditHook), tonic::Status> {
        self.0.key_for(name, caller).await
    }
}

/// Starts `kforge.signer.v1.Signer` and `kforge.builder.v1.Builder` on one server, behind one layer
/// (caller identity, limits, rate, metrics), with health, reflection and metrics.
pub async fn serve(config: Config) -> Result<Running, Error> {
    config.validate()?;
    let server = Server::new(config.server())?;
    let mut registries = kforge_image::RegistryOptions::default();
    if let Some(f) = &config.registry_auth_file {
        registries.credentials = kforge_image::DockerConfig::load(f).map_err(Error::Registry)?;
    }
    let signing = Signing::start(&config.signer(), config.limits.clone(), server.limiter().clone(), server.metrics(), registries.clone()).await?;
    let builder_cfg = match &config.builder {
        Some(b) => Some((b.endpoint().map_err(|e| Error::Invalid(format!("[builder] {e}")))?, b.clone())),
        None => None,
    };
    let dtk = match &config.dtk {
        Some(d) => Some(kforge_builder_service::dtk_resolver(d.clone(), registries.clone()).await.map_err(Error::Dtk)?),
        None => None,
    };
    let build = BuildService::new(builder_cfg, Arc::new(SigningKeys(signing.clone())), registries, dtk, server.metrics());
    let max = config.limits.max_message_bytes;
    let routes = tonic::service::Routes::new(signing.service()).add_service(build.into_server(max));
    let ready = signing.clone();
    Ok(server.serve(routes, &["kforge.signer.v1.Signer", "kforge.builder.v1.Builder"], Arc::new(move || ready.ready())).await?)
}
