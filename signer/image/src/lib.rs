//! Sign the kernel modules inside container images.
//!
//! The image is read layer by layer as a stream; the files to sign are resolved through the layer
//! stack as a container runtime would (last layer wins, whiteouts, opaque directories, links inside
//! the image root), signed in-process, and written into one new deterministic layer. Only that layer,
//! a new config and the manifest (and index) are pushed; the original layers are reused by digest.

#![warn(missing_docs)]

mod auth;
mod config;
mod digest;
pub mod docker_save;
mod error;
mod layer_append;
mod layout;
mod manifest;
mod pgzip;
mod presign;
mod push;
mod read;
mod reference;
mod registry;
mod request;
mod select;
mod sign_image;
mod spool;
mod store;
mod tree;

pub use auth::DockerConfig;
pub use error::{Error, Result};
pub use oci_client::secrets::RegistryAuth;
pub use pgzip::ParallelGz;
pub use reference::ImageRef;
pub use registry::{RegistryOptions, RegistryTls, image_labels, resolve_digest};
pub use request::{AuditHook, DEFAULT_GZIP_LEVEL, Event, SignImage, SignedFile, SignedImage};
pub use select::Selection;
pub use sign_image::sign_image;
