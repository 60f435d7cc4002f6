//! kforge's compact reconciler: KMM `Module`s become per-kernel module-loader DaemonSets (and
//! device-plugin DaemonSets) whose images are pinned by digest, built and signed through kforge's
//! Builder service when missing.
//!
//! - [`api`]: the `Module` resource (`kmm.sigs.x-k8s.io/v1beta1`) and its status.
//! - [`plan`]: the pure planner — desired state from Modules, Nodes and observed facts.
//! - [`Controller`] / [`run`]: watches, the global reconcile loop and its writes; optional
//!   Lease-based leader election; builds over gRPC; registry lookups.
#![warn(missing_docs)]

pub mod api;
pub mod plan;

mod apply;
mod builds;
mod cluster;
mod config;
mod controller;
mod error;
mod events;
mod images;
mod leader;
mod metrics;

pub use apply::{FIELD_MANAGER, FINALIZER};
pub use cluster::{KERNEL_LABEL, LOADER_COMPONENT, MANAGED_BY, MODULE_NAME_LABEL, SPEC_HASH, is_managed_node_label, ready_label};
pub use config::{Backoff, BuilderEndpoint, Config, LeaseConfig, Planner};
pub use controller::{Controller, run};
pub use error::{Error, Result};
pub use metrics::Metrics;
