//! KMM's kernel variables and `DTK_AUTO`.
//!
//! - [`vars`]: KMM's variable expansion (`${KERNEL_FULL_VERSION}`, `$KERNEL_XYZ`, …) with KMM's exact
//!   semantics, and the build arguments KMM injects into every build.
//! - [`Resolver`]: the Driver Toolkit image for a kernel, pinned to a digest, from OpenShift's
//!   ImageStream, an explicit mapping, or a template.
#![warn(missing_docs)]

mod config;
mod error;
mod kubeapi;
mod lookup;
mod mapping;
mod openshift;
mod reference;
mod resolve;
pub mod vars;

pub use config::{ConfigMapRef, DtkConfig, MappingConfig};
pub use error::{Error, Result};
pub use lookup::{DigestLookup, RegistryLookup};
pub use mapping::REGEXPS_KEY;
pub use openshift::coreos_version;
pub use resolve::{Resolved, Resolver, Source};
pub use vars::KernelVars;
