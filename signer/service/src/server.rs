//! Starting and stopping the service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kforge_proto::builder::v1::builder_server::BuilderServer;
use kforge_proto::signer::v1::signer_server::SignerServer;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::error::Error;
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::service::{SignerService, State};

/// A running service.
pub struct Running {
    /// The gRPC address it listens on.
    pub addr: SocketAddr,
    /// The metrics address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests, lets the ones in flight finish, and returns.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits until the server stops.
    pub async fn wait(mut self) -> Result<(), Error> {
        let result = (&mut self.task).await.map_err(|e| Error::Serve { what: "server task".into(), cause: e.to_string() })?;
        if let Some(m) = self.metrics_task.take() {
            m.abort();
        }
        result
    }

    /// A sender that starts a graceful shutdown when used or dropped.
    pub fn shutdown_handle(&mut self) -> Option<oneshot::Sender<()>> {
        self.shutdown.take()
    }
}

fn read(path: &std::path::Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(Error::io(path, what))
}

/// A reflection builder that knows every service this server answers: kforge's, health, and both
/// versions of reflection itself.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kforge_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// Loads keys, opens the audit log and starts serving `kforge.signer.v1.Signer`, gRPC health,
/// server reflection (v1 and v1alpha) and (if configured) Prometheus metrics.
pub async fn serve(config: Config) -> Result<Running, Error> {
    config.validate()?;
    let keys_cfg = config.keys.clone();
    let keys = Arc::new(
        tokio::task::spawn_blocking(move || KeyStore::load(&keys_cfg))
            .await
            .map_err(|e| Error::Serve { what: "loading keys".into(), cause: e.to_string() })??,
    );
    keys.watch(Duration::from_secs(config.key_reload_seconds.max(1)));
    let audit = AuditLog::open(&config.audit_log)?;
    let metrics = Arc::new(Metrics::new());
    let mut registries = kforge_image::RegistryOptions::default();
    if let Some(f) = &config.registry_auth_file {
        registries.credentials = kforge_image::DockerConfig::load(f).map_err(|e| Error::Invalid(e.to_string()))?;
    }
    let builder_cfg = match &config.builder {
        Some(b) => Some((b.endpoint()?, b.clone())),
        None => None,
    };
    let state = Arc::new(State::new(keys.clone(), Authenticator::new(&config), audit, config.limits.clone(), metrics.clone(), registries.clone()));
    let dtk = match &config.dtk {
        Some(d) => Some(crate::build::dtk_resolver(d.clone(), registries.clone()).await?),
        None => None,
    };
    let max = config.limits.max_message_bytes;
    let build =
        BuilderServer::new(crate::build::BuildService::new(builder_cfg, state.clone(), dtk)).max_decoding_message_size(max).max_encoding_message_size(max);
    let signer = SignerServer::new(SignerService(state)).max_decoding_message_size(max).max_encoding_message_size(max);

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<SignerServer<SignerService>>().await;
    reporter.set_serving::<BuilderServer<crate::build::BuildService>>().await;
    // Server reflection in both versions: grpc.reflection.v1, and v1alpha for the many clients
    // that speak only it (grpcio's reflection, grpc_cli, older grpcurl). Each lists both.
    let reflection_error = |e: tonic_reflection::server::Error| Error::Serve { what: "server reflection".into(), cause: e.to_string() };
    let reflection = reflection_builder().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection_builder().build_v1alpha().map_err(reflection_error)?;

    // Modules are large: wide HTTP/2 windows and big frames avoid a flow-control round trip and a
    // wake-up every 64 KiB.
    let mut builder = Server::builder().initial_stream_window_size(8 << 20).initial_connection_window_size(32 << 20).max_frame_size(1 << 20);
    if let Some(tls) = &config.tls {
        let identity = Identity::from_pem(read(&tls.cert, "read TLS certificate")?, read(&tls.key, "read TLS key")?);
        let mut tls_cfg = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.client_ca {
            // Optional at the TLS layer so that token callers can connect; the service itself
            // answers UNAUTHENTICATED to callers with neither a certificate nor a token.
            tls_cfg = tls_cfg.client_ca_root(Certificate::from_pem(read(ca, "read client CA")?)).client_auth_optional(true);
        }
        builder = builder.tls_config(tls_cfg).map_err(|e| Error::Serve { what: "TLS configuration".into(), cause: e.to_string() })?;
    }

    let listener =
        tokio::net::TcpListener::bind(config.listen).await.map_err(|e| Error::Serve { what: format!("bind {}", config.listen), cause: e.to_string() })?;
    let addr = listener.local_addr().map_err(|e| Error::Serve { what: "listen address".into(), cause: e.to_string() })?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    let (metrics_addr, metrics_task) = match config.metrics_listen {
        Some(m) => {
            let ks = keys.clone();
            let (a, t) = crate::metrics::serve(m, metrics, Arc::new(move || !ks.snapshot().is_empty())).await?;
            (Some(a), Some(t))
        }
        None => (None, None),
    };

    let (tx, rx) = oneshot::channel::<()>();
    let router = builder.add_service(health).add_service(reflection).add_service(reflection_v1alpha).add_service(signer).add_service(build);
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
                tracing::info!("shutting down: finishing requests in flight");
            })
            .await
            .map_err(|e| Error::Serve { what: "gRPC server".into(), cause: e.to_string() })
    });
    tracing::info!(%addr, tls = config.tls.is_some(), auth = config.requires_auth(), metrics = ?metrics_addr, audit = %config.audit_log.display(), "kforge serving the signer and the builder");
    Ok(Running { addr, metrics_addr, shutdown: Some(tx), task, metrics_task })
}
