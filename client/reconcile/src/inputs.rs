//! The inputs hash: sha256 over an explicit, versioned, length-prefixed encoding of every input of
//! one image build (and signature). Equal hashes mean the builder would produce the same image.
//!
//! Encoding (version 1): the bytes `kforge-inputs/1`, then for every field in the fixed order below
//! its name, then its value, each as an 8-byte big-endian length followed by the bytes; a list is its
//! element count (8 bytes) followed by its elements; an absent section is the field name followed
//! by a count of `u64::MAX`. The Module's name and namespace and the registry credentials are not
//! inputs: two Modules asking for the same image with the same inputs share one build.
//!
//! Per kernel: kernel, architecture, image, build args (or `build` absent), base-image TLS, files
//! to sign and unsignedImage (or `sign` absent), registry TLS, then `objects`: the hash (same
//! encoding) of the referenced contents — Dockerfile, build secrets (name, then key/value pairs),
//! key and cert — computed once per mapping.

use sha2::{Digest, Sha256};

/// Marks the encoding; bump it when a field is added or changed.
const VERSION: &[u8] = b"kforge-inputs/1";

/// Builds the hash field by field.
pub(crate) struct InputsHasher {
    hash: Sha256,
}

impl InputsHasher {
    /// A hasher with the version written.
    pub(crate) fn new() -> Self {
        let mut h = InputsHasher { hash: Sha256::new() };
        h.bytes(VERSION);
        h
    }

    fn bytes(&mut self, data: &[u8]) {
        self.hash.update((data.len() as u64).to_be_bytes());
        self.hash.update(data);
    }

    /// One named value.
    pub(crate) fn field(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.bytes(name.as_bytes());
        self.bytes(value);
        self
    }

    /// One named boolean (as `0`/`1`).
    pub(crate) fn flag(&mut self, name: &str, value: bool) -> &mut Self {
        self.field(name, if value { b"1" } else { b"0" })
    }

    /// A named list of values.
    pub(crate) fn list<'a>(&mut self, name: &str, items: impl ExactSizeIterator<Item = &'a [u8]>) -> &mut Self {
        self.bytes(name.as_bytes());
        self.hash.update((items.len() as u64).to_be_bytes());
        for item in items {
            self.bytes(item);
        }
        self
    }

    /// A section that is absent (distinct from one that is present but empty).
    pub(crate) fn absent(&mut self, name: &str) -> &mut Self {
        self.bytes(name.as_bytes());
        self.hash.update(u64::MAX.to_be_bytes());
        self
    }

    /// The hash as `sha256:<hex>`.
    pub(crate) fn finish(&mut self) -> String {
        format!("sha256:{}", hex::encode(std::mem::take(&mut self.hash).finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let a = InputsHasher::new().field("x", b"ab").field("y", b"c").finish();
        let b = InputsHasher::new().field("x", b"a").field("y", b"bc").finish();
        assert_ne!(a, b);
        let one = InputsHasher::new().list("l", [b"ab".as_slice()].into_iter()).finish();
        let two = InputsHasher::new().list("l", [b"a".as_slice(), b"b".as_slice()].into_iter()).finish();
        assert_ne!(one, two);
        let empty = InputsHasher::new().list("s", std::iter::empty()).finish();
        assert_ne!(empty, InputsHasher::new().absent("s").finish());
    }

    #[test]
    fn the_hash_is_stable() {
        let h = InputsHasher::new().field("kernel", b"6.1.0").flag("tls", true).finish();
        assert_eq!(h, InputsHasher::new().field("kernel", b"6.1.0").flag("tls", true).finish());
        assert!(h.starts_with("sha256:") && h.len() == 71, "{h}");
    }
}
