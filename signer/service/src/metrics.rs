//! The signer's own metrics, registered in the server's registry.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SignLabels {
    pub key: String,
    pub result: String,
}

/// Signatures by key and result, their latency and the bytes signed.
#[derive(Clone)]
pub(crate) struct SignerMetrics {
    signatures: Family<SignLabels, Counter>,
    latency: Histogram,
    bytes: Counter,
}

impl SignerMetrics {
    pub fn new(registry: &kforge_server::Metrics) -> Self {
        let signatures = Family::<SignLabels, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let bytes = Counter::default();
        registry.register("signer_signatures", "Module signatures by key and result", signatures.clone());
        registry.register("signer_sign_duration_seconds", "Time to sign one module, audit included", latency.clone());
        registry.register("signer_signed_bytes", "Bytes of modules signed", bytes.clone());
        SignerMetrics { signatures, latency, bytes }
    }

    /// Counts one signature outcome and its latency.
    pub fn record(&self, key: &str, result: &str, started: Instant, bytes: u64) {
        self.signatures.get_or_create(&SignLabels { key: key.into(), result: result.into() }).inc();
        if result == "signed" {
            self.latency.observe(started.elapsed().as_secs_f64());
            self.bytes.inc_by(bytes);
        }
    }
}
