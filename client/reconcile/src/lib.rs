//! kforge's compact reconciler: KMM `Module`s become per-kernel module-loader DaemonSets (and
//! device-plugin DaemonSets) whose images are pinned by digest, built and signed through kforge's
//! Builder service when missing.
//!
//! - [`api`]: the `Module` resource (`kmm.sigs.x-k8s.io/v1beta1`) and its status.
//! - [`plan`]: the pure planner — desired state from Modules, Nodes and observed facts.
//! - [`labels`]: the label and annotation names kforge writes.
#![warn(missing_docs)]

pub mod api;
mod daemonset;
mod inputs;
pub mod labels;
mod mapping;
mod nodes;
pub mod plan;
mod status;
#[cfg(test)]
mod testing;

pub use daemonset::spec_hash;
pub use plan::plan;
