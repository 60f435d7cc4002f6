//! Prometheus metrics and health over plain HTTP on a separate port. Every service registers its
//! own metrics in the one registry; the service layer counts requests for all of them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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
use prometheus_client::registry::{Metric, Registry};

use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// The server's metrics registry and the per-request metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<MethodLabels, Counter>,
    durations: Family<MethodLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry (metric names start with `kforge_`) with the request metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kforge");
        let requests = Family::<MethodLabels, Counter>::default();
        let durations = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 4.0, 12)));
        let in_flight = Gauge::default();
        registry.register("requests", "gRPC requests admitted, by method", requests.clone());
        registry.register("request_duration_seconds", "Time from admission to the end of the response stream, by method", durations.clone());
        registry.register("requests_in_flight", "Requests being served", in_flight.clone());
        Metrics { registry: Mutex::new(registry), requests, durations, in_flight }
    }

    /// Adds a service's metric (`name` without the `kforge_` prefix).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().unwrap_or_else(|p| p.into_inner()).register(name, help, metric);
    }

    /// Counts a request to `method` as admitted; the guard records its duration when dropped.
    pub(crate) fn request(&self, method: &str) -> RequestGuard {
        let labels = MethodLabels { method: method.to_string() };
        self.requests.get_or_create(&labels).inc();
        self.in_flight.inc();
        RequestGuard { histogram: self.durations.get_or_create(&labels).clone(), in_flight: self.in_flight.clone(), started: Instant::now() }
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Keeps a request counted as in flight until dropped, then records how long it took.
pub(crate) struct RequestGuard {
    histogram: Histogram,
    in_flight: Gauge,
    started: Instant,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.in_flight.dec();
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// A health check: `Ok` or why not.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves `GET /metrics` (`encode`'s text), `GET /healthz` (`live`) and `GET /readyz` (`ready`) on
/// plain HTTP until the task is dropped; returns the bound address.
pub async fn serve_endpoints(
    addr: SocketAddr,
    encode: Arc<dyn Fn() -> String + Send + Sync>,
    live: Check,
    ready: Check,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::serve(format!("bind metrics on {addr}"))(e.into()))?;
    let local = listener.local_addr().map_err(|e| Error::serve("metrics address")(e.into()))?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (encode, live, ready) = (encode.clone(), live.clone(), ready.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let check = |c: &Check| match c() {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    };
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, encode()),
                        "/healthz" => check(&live),
                        "/readyz" => check(&ready),
                        _ => (StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".to_string()),
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    std::future::ready(Ok::<_, std::convert::Infallible>(resp))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((local, task))
}
