//! Registry look-ups behind a small trait, so resolution can be tested without a registry.

use futures_util::future::BoxFuture;
use kforge_image::RegistryOptions;

/// Tells the digest an image reference points at.
pub trait DigestLookup: Send + Sync {
    /// The manifest digest (`sha256:…`) of `image` (`registry/repo:tag` or `…@sha256:…`), `None` if the
    /// registry does not have it.
    fn digest<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<Option<String>, kforge_image::Error>>;
}

/// [`DigestLookup`] over real registries through `kforge_image::resolve_digest`. Loopback registries
/// without their own TLS settings are plain HTTP (`RegistryOptions::with_loopback_plain_http`).
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
}

impl DigestLookup for RegistryLookup {
    fn digest<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<Option<String>, kforge_image::Error>> {
        let opts = self.opts.with_loopback_plain_http(image);
        Box::pin(async move { kforge_image::resolve_digest(image, &opts).await })
    }
}
