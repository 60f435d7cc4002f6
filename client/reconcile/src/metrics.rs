//! Counters for the `/metrics` endpoint, and the count of write requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];

/// The controller's counters. Cheap to clone (shared).
#[derive(Clone, Default, Debug)]
pub struct Metrics {
    passes: Counter,
    writes: Family<Labels, Counter>,
    write_failures: Family<Labels, Counter>,
    builds: Family<Labels, Counter>,
    lookups: Family<Labels, Counter>,
    writes_total: Arc<AtomicU64>,
    ready: Arc<AtomicBool>,
}

impl Metrics {
    /// New counters, registered under `registry` (`kforge_reconcile_…` with the caller's prefix).
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("reconcile");
        r.register("passes", "Reconcile passes run", m.passes.clone());
        r.register("writes", "Write requests sent to the API server, by kind", m.writes.clone());
        r.register("write_failures", "Write requests that failed, by kind", m.write_failures.clone());
        r.register("builds", "Builds finished, by result", m.builds.clone());
        r.register("lookups", "Registry lookups finished, by result", m.lookups.clone());
        m
    }

    /// Every write request the reconcile work sent so far (apply, patch, delete, Event
    /// create), failed or not; Lease renewals are not counted here.
    pub fn writes_total(&self) -> u64 {
        self.writes_total.load(Ordering::Relaxed)
    }

    /// Passes run so far.
    pub fn passes(&self) -> u64 {
        self.passes.get()
    }

    /// Whether every watched store has been listed once (for a readiness endpoint).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The readiness flag itself, to share with a health endpoint.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub(crate) fn pass(&self) {
        self.passes.inc();
    }

    /// Counts one write request of `kind` (before it is sent).
    pub(crate) fn write(&self, kind: &'static str) {
        self.writes_total.fetch_add(1, Ordering::Relaxed);
        self.writes.get_or_create(&[("kind", kind)]).inc();
    }

    /// Counts a Lease write of leader election: by kind only, not in [`Metrics::writes_total`]
    /// (renewals every few seconds are the price of election, not reconcile work).
    pub(crate) fn lease_write(&self) {
        self.writes.get_or_create(&[("kind", "lease")]).inc();
    }

    pub(crate) fn write_failed(&self, kind: &'static str) {
        self.write_failures.get_or_create(&[("kind", kind)]).inc();
    }

    pub(crate) fn build(&self, result: &'static str) {
        self.builds.get_or_create(&[("result", result)]).inc();
    }

    pub(crate) fn lookup(&self, result: &'static str) {
        self.lookups.get_or_create(&[("result", result)]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exposed_under_the_callers_prefix() {
        let mut registry = Registry::with_prefix("kforge");
        let m = Metrics::new(&mut registry);
        m.pass();
        m.write("apply");
        m.lease_write();
        m.build("failed");
        m.lookup("present");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "kforge_reconcile_passes_total 1",
            "kforge_reconcile_writes_total{kind=\"apply\"} 1",
            "kforge_reconcile_writes_total{kind=\"lease\"} 1",
            "kforge_reconcile_builds_total{result=\"failed\"} 1",
            "kforge_reconcile_lookups_total{result=\"present\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(m.writes_total(), 1, "Lease writes are not reconcile writes");
        assert!(!m.ready());
        m.set_ready();
        assert!(m.ready_flag().load(Ordering::Relaxed));
    }
}
