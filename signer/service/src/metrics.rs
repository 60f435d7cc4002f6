//! Prometheus metrics and health over plain HTTP on a separate port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SignLabels {
    pub key: String,
    pub result: String,
}

/// The service's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    pub signatures: Family<SignLabels, Counter>,
    pub latency: Histogram,
    pub bytes: Counter,
    pub in_flight: Gauge,
    pub builds: Family<BuildLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BuildLabels {
    pub result: String,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kforge_signer");
        let signatures = Family::<SignLabels, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let bytes = Counter::default();
        let in_flight = Gauge::default();
        registry.register("signatures", "Module signatures by key and result", signatures.clone());
        registry.register("sign_duration_seconds", "Time to sign one module, audit included", latency.clone());
        registry.register("signed_bytes", "Bytes of modules signed", bytes.clone());
        registry.register("requests_in_flight", "Requests being served", in_flight.clone());
        let builds = Family::<BuildLabels, Counter>::default();
        registry.register("builds", "Build requests by result", builds.clone());
        Metrics { registry, signatures, latency, bytes, in_flight, builds }
    }

    /// Counts one signature outcome and its latency.
    pub fn record(&self, key: &str, result: &str, started: Instant, bytes: u64) {
        self.signatures.get_or_create(&SignLabels { key: key.into(), result: result.into() }).inc();
        if result == "signed" {
            self.latency.observe(started.elapsed().as_secs_f64());
            self.bytes.inc_by(bytes);
        }
    }

    /// Counts one finished build request.
    pub fn record_build(&self, result: &str) {
        self.builds.get_or_create(&BuildLabels { result: result.into() }).inc();
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Guard that keeps the in-flight gauge up while a request runs.
pub(crate) struct InFlight(Gauge);

impl InFlight {
    pub fn new(m: &Metrics) -> Self {
        m.in_flight.inc();
        InFlight(m.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `GET /metrics` and `GET /healthz` until the task is dropped.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::Serve { what: format!("bind metrics on {addr}"), cause: e.to_string() })?;
    let local = listener.local_addr().map_err(|e| Error::Serve { what: "metrics address".into(), cause: e.to_string() })?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (metrics, ready) = (metrics.clone(), ready.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (metrics, ready) = (metrics.clone(), ready.clone());
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => (StatusCode::OK, metrics.encode()),
                            "/healthz" if ready() => (StatusCode::OK, "ok\n".to_string()),
                            "/healthz" => (StatusCode::SERVICE_UNAVAILABLE, "no signing keys loaded\n".to_string()),
                            _ => (StatusCode::NOT_FOUND, "not found: try /metrics or /healthz\n".to_string()),
                        };
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((local, task))
}
