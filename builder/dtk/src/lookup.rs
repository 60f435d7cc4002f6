//! Registry look-ups behind a small trait, so resolution can be tested without a registry.

use futures_util::future::BoxFuture;
use kforge_image::{RegistryOptions, RegistryTls};

/// Tells the digest an image reference points at.
pub trait DigestLookup: Send + Sync {
    /// The manifest digest (`sha256:…`) of `image` (`registry/repo:tag` or `…@sha256:…`), `None` if the
    /// registry does not have it.
    fn digest<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<Option<String>, kforge_image::Error>>;
}

/// [`DigestLookup`] over real registries through `kforge_image::resolve_digest`. Loopback registries
/// (`localhost`, `127.*`, `[::1]`) without their own TLS settings are plain HTTP, as BuildKit and Docker
/// treat them.
#[derive(Debug, Clone, Default)]
pub struct RegistryLookup {
    opts: RegistryOptions,
}

impl RegistryLookup {
    /// A lookup with these credentials, TLS settings, timeouts and retries.
    pub fn new(opts: RegistryOptions) -> Self {
        RegistryLookup { opts }
    }

    /// The options in use.
    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    fn options_for(&self, image: &str) -> RegistryOptions {
        let mut opts = self.opts.clone();
        if let Ok(reference) = image.parse::<oci_client::Reference>() {
            let registry = reference.registry();
            if is_loopback(registry) && !opts.per_registry.contains_key(registry) {
                opts.per_registry.insert(registry.to_string(), RegistryTls { insecure: true, ..Default::default() });
            }
        }
        opts
    }
}

/// Whether `registry` (`host[:port]`) is on this machine.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = if registry.starts_with('[') {
        registry.split_once(']').map(|(h, _)| format!("{h}]")).unwrap_or_else(|| registry.to_string())
    } else {
        registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(registry).to_string()
    };
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

impl DigestLookup for RegistryLookup {
    fn digest<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<Option<String>, kforge_image::Error>> {
        let opts = self.options_for(image);
        Box::pin(async move { kforge_image::resolve_digest(image, &opts).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http_unless_configured() {
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost:5000") && is_loopback("[::1]:5000") && is_loopback("localhost"));
        assert!(!is_loopback("registry.example:5000") && !is_loopback("quay.io") && !is_loopback("10.0.0.1:5000"));
        let lookup = RegistryLookup::default();
        assert!(lookup.options_for("127.0.0.1:5000/dtk:6.1").per_registry["127.0.0.1:5000"].insecure);
        assert!(lookup.options_for("quay.io/org/dtk:6.1").per_registry.is_empty());
        let mut opts = RegistryOptions::default();
        opts.per_registry.insert("localhost:5000".into(), RegistryTls { skip_verify: true, ..Default::default() });
        let configured = RegistryLookup::new(opts).options_for("localhost:5000/dtk:1");
        assert!(!configured.per_registry["localhost:5000"].insecure, "explicit settings win");
    }
}
