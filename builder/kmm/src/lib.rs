//! KMM's rules in one place: its kernel variables, `DTK_AUTO`, the translation of a Module's build
//! and sign sections for one kernel ([`KmmRequest`]) and the build-and-sign pipeline ([`run`]).
//!
//! - [`vars`]: KMM's variable expansion (`${KERNEL_FULL_VERSION}`, `$KERNEL_XYZ`, …) with KMM's exact
//!   semantics, and the build arguments KMM injects into every build.
//! - [`Resolver`]: the Driver Toolkit image for a kernel, pinned to a digest, from OpenShift's
//!   ImageStream, an explicit mapping, or a template.
//! - [`KmmRequest::prepare`] → [`BuildSign`] → [`run`]: one kernel's module image built (through
//!   `kforge-builder`), signed (through `kforge-image`) and pushed once. With build secrets, every
//!   `RUN` of the Dockerfile mounts them at `/run/secrets/<id>` first, as KMM's builds see them.
#![warn(missing_docs)]

mod config;
mod dockerfile;
mod error;
mod kubeapi;
mod lookup;
mod mapping;
mod openshift;
mod pipeline;
mod reference;
mod request;
mod resolve;
pub mod vars;

pub use config::{ConfigMapRef, DtkConfig, MappingConfig};
pub use error::{Error, Result};
pub use lookup::{DigestLookup, RegistryLookup};
pub use mapping::REGEXPS_KEY;
pub use openshift::coreos_version;
pub use pipeline::{BuildSign, INPUTS_LABEL, Outcome, SignStep, Source, run};
pub use request::{DockerCredentials, KmmBuild, KmmRequest, KmmSign, Prepared, uses_dtk_auto};
pub use resolve::{Resolved, Resolver, Source as DtkSource};
pub use vars::KernelVars;
