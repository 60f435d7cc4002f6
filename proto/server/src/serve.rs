//! Starting and stopping the server: one tonic router for every service, behind one
//! [`ServiceLayer`], with TLS, health, reflection (v1 and v1alpha) and a metrics endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server as TonicServer, ServerTlsConfig};

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::error::Error;
use crate::layer::{ServiceLayer, Shared};
use crate::limits::Limiter;
use crate::metrics::Metrics;

/// A server being assembled: services take its metrics and limiter, then [`Server::serve`] starts it.
pub struct Server {
    config: ServerConfig,
    metrics: Arc<Metrics>,
    limiter: Arc<Limiter>,
}

/// A running server.
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
        let result = (&mut self.task).await.map_err(|e| Error::serve("server task")(e.into()))?;
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

fn read(path: &std::path::Path, op: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io { path: path.into(), op, source })
}

/// The descriptor sets reflection answers from: kforge's and health's.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kforge_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

impl Server {
    /// A server for `config` (validated).
    pub fn new(config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let limiter = Arc::new(Limiter::new(&config.limits));
        Ok(Server { config, metrics: Arc::new(Metrics::new()), limiter })
    }

    /// The metrics registry services add their metrics to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The limiter (services take signatures from it).
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Serves `routes` (whose services are named `services` for health) behind the service layer,
    /// with gRPC health, reflection and, if configured, the metrics endpoint (`ready` answers
    /// `/healthz`).
    pub async fn serve(self, routes: Routes, services: &[&str], ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>) -> Result<Running, Error> {
        let config = self.config;
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in services {
            reporter.set_service_status(*name, tonic_health::ServingStatus::Serving).await;
        }
        // Server reflection in both versions: grpc.reflection.v1, and v1alpha for the many clients
        // that speak only it (grpcio's reflection, grpc_cli, older grpcurl). Each lists both.
        let reflection = reflection_builder().build_v1().map_err(|e| Error::serve("server reflection")(e.into()))?;
        let reflection_v1alpha = reflection_builder().build_v1alpha().map_err(|e| Error::serve("server reflection")(e.into()))?;

        // Modules are large: wide HTTP/2 windows and big frames avoid a flow-control round trip and a
        // wake-up every 64 KiB.
        let mut builder = TonicServer::builder().initial_stream_window_size(8 << 20).initial_connection_window_size(32 << 20).max_frame_size(1 << 20);
        if let Some(tls) = &config.tls {
            let identity = Identity::from_pem(read(&tls.cert, "read TLS certificate")?, read(&tls.key, "read TLS key")?);
            let mut tls_cfg = ServerTlsConfig::new().identity(identity);
            if let Some(ca) = &tls.client_ca {
                // Optional at the TLS layer so that token callers can connect; the layer answers
                // UNAUTHENTICATED to callers with neither a certificate nor a token.
                tls_cfg = tls_cfg.client_ca_root(Certificate::from_pem(read(ca, "read client CA")?)).client_auth_optional(true);
            }
            builder = builder.tls_config(tls_cfg).map_err(|e| Error::serve("TLS configuration")(e.into()))?;
        }
        let layer = ServiceLayer::new(Shared {
            auth: Authenticator::new(&config.tokens, config.requires_auth()),
            limiter: self.limiter.clone(),
            metrics: self.metrics.clone(),
        });

        let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| Error::serve(format!("bind {}", config.listen))(e.into()))?;
        let addr = listener.local_addr().map_err(|e| Error::serve("listen address")(e.into()))?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

        let (metrics_addr, metrics_task) = match config.metrics_listen {
            Some(m) => {
                let metrics = self.metrics.clone();
                let (a, t) = crate::metrics::serve_endpoints(m, Arc::new(move || metrics.encode()), ready.clone(), ready).await?;
                (Some(a), Some(t))
            }
            None => (None, None),
        };

        let (tx, rx) = oneshot::channel::<()>();
        let routes = routes.add_service(health).add_service(reflection).add_service(reflection_v1alpha);
        let router = builder.layer(layer).add_routes(routes);
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                    tracing::info!("shutting down: finishing requests in flight");
                })
                .await
                .map_err(|e| Error::serve("gRPC server")(e.into()))
        });
        tracing::info!(%addr, tls = config.tls.is_some(), auth = config.requires_auth(), metrics = ?metrics_addr, services = ?services, "kforge serving");
        Ok(Running { addr, metrics_addr, shutdown: Some(tx), task, metrics_task })
    }
}
