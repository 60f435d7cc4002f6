//! kforge's compact reconciler: KMM `Module`s become per-kernel module-loader DaemonSets (and
//! device-plugin DaemonSets) whose images are pinned by digest, built and signed through kforge's
//! Builder service when missing.
//!
//! - [`api`]: the `Module` resource (`kmm.sigs.x-k8s.io/v1beta1`) and its status.
//! - [`plan`]: the pure planner — desired state from Modules, Nodes and observed facts.
//! - [`labels`]: the label and annotation names kforge writes.
//! - [`Controller`] / [`run`]: watches, the global reconcile loop and its writes; optional
//!   Lease-based leader election; builds over gRPC; registry lookups.
//!
//! Wiring it up (the `kforge reconcile` command does this):
//!
//! ```text
//! let mut registry = prometheus_client::registry::Registry::with_prefix("kforge");
//! let mut config = kforge_reconcile::Config::new(kforge_reconcile::plan::plan);
//! config.builder = Some(BuilderEndpoint { url: "https://builder:7600".into(), ..Default::default() });
//! config.leader_election = Some(LeaseConfig::new(namespace, pod_name));
//! let controller = kforge_reconcile::Controller::new(client, config, &mut registry);
//! let metrics = controller.metrics();          // metrics.ready() for /readyz, registry for /metrics
//! controller.run(shutdown_signal).await?;
//! ```
//!
//! RBAC it needs: Modules get/list/watch/patch (and `modules/status` patch); DaemonSets
//! get/list/watch/patch/delete; Nodes get/list/watch/patch; Pods, ConfigMaps, Secrets
//! get/list/watch; `events.k8s.io` Events create/patch; `coordination.k8s.io` Leases
//! get/create/update in its namespace.
#![warn(missing_docs)]

pub mod api;
pub mod facts;
pub mod labels;
pub mod plan;

mod apply;
mod builds;
mod cluster;
mod config;
mod controller;
mod daemonset;
mod error;
mod events;
mod images;
mod inputs;
mod leader;
mod mapping;
mod metrics;
mod node_table;
mod nodes;
mod pods;
mod status;
#[cfg(test)]
mod testing;

pub use apply::{FIELD_MANAGER, FINALIZER};
pub use config::{Backoff, BuilderEndpoint, Config, LeaseConfig, Planner};
pub use controller::{Controller, run};
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use plan::plan;
