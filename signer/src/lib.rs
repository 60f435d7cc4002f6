//! Kernel module signing, byte-for-byte compatible with the kernel's `scripts/sign-file`.
//!
//! The crate is synchronous and pure: bytes and files in, signed bytes out. A signed module is
//! `[module][CMS SignedData, DER][struct module_signature][magic]`; see [`trailer`] and [`cms`].

#![warn(missing_docs)]

mod batch;
pub mod cms;
mod compress;
pub(crate) mod der;
mod error;
mod hash;
mod keygen;
mod keys;
mod module;
mod sign;
pub mod trailer;
mod verify;

pub use batch::{BatchOptions, Collected, Job, Outcome, SignFn, collect, sign_jobs, sign_jobs_with};
pub use compress::Compression;
pub use error::{Error, KeyError, NotModule, Result};
pub use hash::HashAlgorithm;
pub use keygen::{KeyPair, KeygenOptions, generate_key_pair};
pub use keys::{Certificate, SigningKey};
pub use module::ModuleInfo;
pub use sign::{Signed, Signer, SignerIdentifier};
pub use verify::{Inspection, SignatureInfo, Verification, inspect, verify};

/// File names the signer treats as kernel modules when walking directories.
pub const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// Whether a file name looks like a kernel module (`.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`).
pub fn is_module_name(name: &str) -> bool {
    MODULE_SUFFIXES.iter().any(|s| name.ends_with(s) && name.len() > s.len())
}
