//! `kforge.builder.v1.Builder`: KMM's build and sign sections for one kernel, run for remote callers
//! through BuildKit (`kforge-builder`) with KMM's rules (`kforge-kmm`). What a signed build needs from
//! the signing service (a named key, its allow list, the audit) comes through [`ServerKeys`].

#![warn(missing_docs)]

mod build;
mod config;

pub use build::{BuildService, ServerKeys, dtk_resolver};
pub use config::BuilderConfig;
