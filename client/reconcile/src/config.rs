//! The controller's configuration.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::Module;
use crate::plan::{Facts, NodeFacts, Plan};

/// The planner the controller calls on every pass (`crate::plan::plan` once it lands; tests pass
/// a fake).
pub type Planner = fn(&[Module], &[NodeFacts], &Facts, Time) -> Plan;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Desired state from observed state.
    pub planner: Planner,
    /// Where builds go; without one, images that need a build stay `Missing`.
    pub builder: Option<BuilderEndpoint>,
    /// How often every image tag is resolved again (KMM never re-resolves a moved tag), and a pass
    /// runs even without watch events. Default 5 minutes.
    pub resync: Duration,
    /// How long a `Missing` or failed lookup is believed before it is looked up again. Default 1 minute.
    pub missing_ttl: Duration,
    /// Builds running at once. Default 4.
    pub max_builds: usize,
    /// Registry lookups running at once. Default 8.
    pub max_lookups: usize,
    /// Retry delays after a failed build.
    pub build_backoff: Backoff,
    /// A pass starts after this much quiet following a watch event. Default 100 ms.
    pub debounce: Duration,
    /// … or at the latest this long after the first event. Default 1 s.
    pub debounce_max: Duration,
    /// Act only while holding a Lease; `None` acts always (one replica).
    pub leader_election: Option<LeaseConfig>,
    /// Publish Kubernetes Events on Modules. Default on.
    pub events: bool,
    /// Registry settings every lookup starts from (CA bundles, timeout); per-Module credentials
    /// and `registryTLS` are added to them.
    pub registry: kforge_image::RegistryOptions,
}

impl Config {
    /// Defaults around `planner`.
    pub fn new(planner: Planner) -> Self {
        Config {
            planner,
            builder: None,
            resync: Duration::from_secs(300),
            missing_ttl: Duration::from_secs(60),
            max_builds: 4,
            max_lookups: 8,
            build_backoff: Backoff::default(),
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_secs(1),
            leader_election: None,
            events: true,
            registry: kforge_image::RegistryOptions::default(),
        }
    }
}

/// Delays between retries: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay. Default 30 s.
    pub initial: Duration,
    /// The longest delay. Default 10 min.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(30), max: Duration::from_secs(600) }
    }
}

impl Backoff {
    /// The delay after the `failures`-th failure (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }
}

/// The Builder service and how to authenticate to it (as `kforge build --remote` does).
#[derive(Clone, Default)]
pub struct BuilderEndpoint {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// CA certificate (PEM) the service's certificate chains to (https only).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM) for mutual TLS (https only).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Bearer token sent on every call.
    pub token: Option<String>,
}

impl std::fmt::Debug for BuilderEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuilderEndpoint")
            .field("url", &self.url)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("identity", &self.identity.is_some())
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Leader election through a `coordination.k8s.io/v1` Lease.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's name. Default `kforge-reconciler`.
    pub name: String,
    /// Its namespace (the controller's).
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a holder's claim lasts without renewal. Default 15 s.
    pub lease_duration: Duration,
    /// How often the holder renews (and others retry). Default 5 s.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// Defaults for `namespace` and `identity`.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            name: "kforge-reconciler".into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(1), Duration::from_secs(30));
        assert_eq!(b.delay(2), Duration::from_secs(60));
        assert_eq!(b.delay(5), Duration::from_secs(480));
        assert_eq!(b.delay(6), Duration::from_secs(600));
        assert_eq!(b.delay(60), Duration::from_secs(600));
    }
}
