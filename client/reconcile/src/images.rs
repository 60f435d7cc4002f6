//! Registry lookups and the in-memory image-fact cache the planner reads.
//!
//! A `Present` fact is kept until a newer lookup replaces it: at every resync the controller
//! looks every cached tag up again in the background, so a tag that moved is followed while the
//! DaemonSets keep the old digest until the new one is known. `Missing` and failed facts are
//! looked up again after `missing_ttl` and believed until the answer comes (those with no lookup
//! to repeat are forgotten, so the planner asks for them again).
//!
//! Lookups are not architecture-aware yet: `kforge_image` exposes the digest a tag points at
//! (an index digest for multi-arch images) but not the index's per-platform entries, so an image
//! whose index lacks the node's architecture is reported `Present`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::cluster::Stores;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::plan::{ImageFact, ImageKey, Lookup};

#[derive(Debug, Clone)]
struct Entry {
    fact: ImageFact,
    at: Instant,
    lookup: Option<Lookup>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<ImageKey, Entry>,
    in_flight: HashSet<ImageKey>,
}

/// Image facts learnt from lookups and builds.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImageCache {
    inner: Arc<Mutex<Inner>>,
    missing_ttl: Duration,
}

impl ImageCache {
    pub(crate) fn new(missing_ttl: Duration) -> Self {
        ImageCache { inner: Arc::default(), missing_ttl }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The facts still believed at `now`.
    pub(crate) fn facts(&self, now: Instant) -> BTreeMap<ImageKey, ImageFact> {
        let mut inner = self.lock();
        let ttl = self.missing_ttl;
        inner.entries.retain(|_, e| matches!(e.fact, ImageFact::Present { .. }) || now.duration_since(e.at) < ttl || e.lookup.is_some());
        inner.entries.iter().map(|(k, e)| (k.clone(), e.fact.clone())).collect()
    }

    /// Lookups to repeat at `now`: facts other than `Present` older than `missing_ttl`.
    pub(crate) fn expired(&self, now: Instant) -> Vec<Lookup> {
        let inner = self.lock();
        inner
            .entries
            .values()
            .filter(|e| !matches!(e.fact, ImageFact::Present { .. }) && now.duration_since(e.at) >= self.missing_ttl)
            .filter_map(|e| e.lookup.clone())
            .collect()
    }

    /// Records a fact (from a lookup or a finished build).
    pub(crate) fn record(&self, key: ImageKey, fact: ImageFact, lookup: Option<Lookup>, now: Instant) {
        let mut inner = self.lock();
        let lookup = lookup.or_else(|| inner.entries.get(&key).and_then(|e| e.lookup.clone()));
        inner.in_flight.remove(&key);
        inner.entries.insert(key, Entry { fact, at: now, lookup });
    }

    /// Marks the lookups not already running as running and returns them.
    pub(crate) fn claim(&self, lookups: &[Lookup]) -> Vec<Lookup> {
        let mut inner = self.lock();
        lookups.iter().filter(|l| inner.in_flight.insert(l.key.clone())).cloned().collect()
    }

    /// Present facts older than `age` at `now` that can be looked up again.
    pub(crate) fn stale(&self, age: Duration, now: Instant) -> Vec<Lookup> {
        let inner = self.lock();
        inner
            .entries
            .values()
            .filter(|e| matches!(e.fact, ImageFact::Present { .. }) && now.duration_since(e.at) >= age)
            .filter_map(|e| e.lookup.clone())
            .collect()
    }

    /// Releases a claim without a result (the lookup was abandoned).
    fn release(&self, key: &ImageKey) {
        self.lock().in_flight.remove(key);
    }
}

/// A `Present` fact. `inputs_hash` is what a finished build knows (a plain lookup knows none).
/// The planner's branch adds `inputs_hash: Option<String>` to `ImageFact::Present`; when the two
/// meet, this is the one place to pass it on.
pub(crate) fn present(digest: String, inputs_hash: Option<String>) -> ImageFact {
    ImageFact::Present { digest, inputs_hash }
}

/// Registry options for one lookup: credentials from the pull Secret, TLS from `registryTLS`.
pub(crate) fn registry_options(base: &kforge_image::RegistryOptions, lookup: &Lookup, stores: &Stores) -> kforge_image::RegistryOptions {
    let mut opts = base.clone();
    if let Some(secret) = &lookup.pull_secret {
        let (ns, _) = &lookup.module;
        match stores.secret_key(ns, secret, ".dockerconfigjson") {
            Some(bytes) => match kforge_image::DockerConfig::parse(&bytes, Path::new(&format!("Secret {ns}/{secret}"))) {
                Ok(c) => opts.credentials = c,
                Err(e) => tracing::warn!(secret = %format!("{ns}/{secret}"), error = %e, "pull secret unreadable; looking up anonymously"),
            },
            None => tracing::warn!(secret = %format!("{ns}/{secret}"), "pull secret missing or without .dockerconfigjson; looking up anonymously"),
        }
    }
    if lookup.tls.insecure || lookup.tls.insecure_skip_tls_verify {
        let tls = kforge_image::RegistryTls { insecure: lookup.tls.insecure, skip_verify: lookup.tls.insecure_skip_tls_verify, ..opts.tls.clone() };
        match lookup.key.0.parse::<kforge_image::ImageRef>() {
            Ok(kforge_image::ImageRef::Registry(reference)) => {
                opts.per_registry.insert(reference.registry().to_string(), tls);
            }
            _ => opts.tls = tls,
        }
    }
    opts
}

/// Runs `lookups` (at most `concurrency` at once) and records their results in `cache`.
pub(crate) async fn run_lookups(
    lookups: Vec<Lookup>,
    stores: Stores,
    base: kforge_image::RegistryOptions,
    cache: ImageCache,
    metrics: Metrics,
    concurrency: usize,
) {
    futures_util::stream::iter(lookups)
        .map(|lookup| {
            let opts = registry_options(&base, &lookup, &stores);
            async move {
                let image = lookup.key.0.clone();
                let result = kforge_image::resolve_digest(&image, &opts).await.map_err(|source| Error::Registry { image, source });
                (lookup, result)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .for_each(|(lookup, result)| {
            let fact = match result {
                Ok(Some(digest)) => {
                    metrics.lookup("present");
                    present(digest, None)
                }
                Ok(None) => {
                    metrics.lookup("missing");
                    ImageFact::Missing
                }
                Err(e) => {
                    metrics.lookup("failed");
                    tracing::warn!(image = %lookup.key.0, module = %format!("{}/{}", lookup.module.0, lookup.module.1), error = %e, "image lookup failed");
                    ImageFact::Failed { message: e.to_string() }
                }
            };
            let key = lookup.key.clone();
            if matches!(fact, ImageFact::Failed { .. }) && cache.lock().entries.get(&key).is_some_and(|e| matches!(e.fact, ImageFact::Present { .. })) {
                // A refresh that failed keeps the digest it had.
                cache.release(&key);
            } else {
                cache.record(key, fact, Some(lookup), Instant::now());
            }
            std::future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(image: &str) -> Lookup {
        Lookup { key: (image.into(), "amd64".into()), module: ("ns".into(), "m".into()), pull_secret: None, tls: Default::default() }
    }

    #[test]
    fn missing_facts_are_looked_up_again_present_ones_stay_until_replaced() {
        let cache = ImageCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let (a, b, c) = (lookup("r/a:1"), lookup("r/b:1"), lookup("r/c:1"));
        cache.record(a.key.clone(), present("sha256:aa".into(), None), Some(a.clone()), t0);
        cache.record(b.key.clone(), ImageFact::Missing, Some(b.clone()), t0);
        cache.record(c.key.clone(), ImageFact::Failed { message: "x".into() }, None, t0);
        assert_eq!(cache.facts(t0 + Duration::from_secs(59)).len(), 3);
        assert!(cache.expired(t0 + Duration::from_secs(59)).is_empty());
        // Past missing_ttl: b is due again and still Missing meanwhile; c has no lookup to repeat.
        let later = cache.facts(t0 + Duration::from_secs(61));
        assert_eq!(later.len(), 2);
        assert_eq!(later.get(&a.key), Some(&present("sha256:aa".into(), None)));
        assert_eq!(later.get(&b.key), Some(&ImageFact::Missing));
        assert_eq!(cache.expired(t0 + Duration::from_secs(61)), vec![b.clone()]);
        // After the resync period the present fact is due for a refresh, and still believed meanwhile.
        assert_eq!(cache.stale(Duration::from_secs(300), t0 + Duration::from_secs(301)), vec![a.clone()]);
        assert!(cache.stale(Duration::from_secs(300), t0 + Duration::from_secs(100)).is_empty());
        cache.record(a.key.clone(), present("sha256:bb".into(), None), None, t0 + Duration::from_secs(302));
        assert_eq!(cache.facts(t0 + Duration::from_secs(303)).get(&a.key), Some(&present("sha256:bb".into(), None)));
        assert!(cache.stale(Duration::from_secs(300), t0 + Duration::from_secs(303)).is_empty());
    }

    #[test]
    fn lookup_options_take_the_pull_secret_and_registry_tls() {
        use k8s_openapi::ByteString;
        use k8s_openapi::api::core::v1::Secret;
        use kube::runtime::reflector::store::Writer;
        let mut secrets = Writer::default();
        let secret = Secret {
            metadata: kube::api::ObjectMeta { name: Some("pull".into()), namespace: Some("ns".into()), ..Default::default() },
            data: Some([(".dockerconfigjson".to_string(), ByteString(br#"{"auths":{"r.example:5000":{"username":"u","password":"p"}}}"#.to_vec()))].into()),
            ..Default::default()
        };
        secrets.apply_watcher_event(&kube::runtime::watcher::Event::Apply(secret));
        let stores = Stores {
            modules: Writer::default().as_reader(),
            nodes: Default::default(),
            daemonsets: Writer::default().as_reader(),
            pods: Default::default(),
            configmaps: Writer::default().as_reader(),
            secrets: secrets.as_reader(),
        };
        let mut l = lookup("r.example:5000/kmm:6.1");
        l.pull_secret = Some("pull".into());
        l.tls.insecure_skip_tls_verify = true;
        let opts = registry_options(&kforge_image::RegistryOptions::default(), &l, &stores);
        assert!(matches!(opts.credentials.auth_for("r.example:5000"), kforge_image::RegistryAuth::Basic(u, p) if u == "u" && p == "p"));
        let tls = opts.per_registry.get("r.example:5000").expect("per-registry TLS");
        assert!(tls.skip_verify && !tls.insecure);
        assert!(!opts.tls.skip_verify, "other registries keep verification");
        // No secret: anonymous, defaults.
        let opts = registry_options(&kforge_image::RegistryOptions::default(), &lookup("r.example:5000/kmm:6.1"), &stores);
        assert!(matches!(opts.credentials.auth_for("r.example:5000"), kforge_image::RegistryAuth::Anonymous));
        assert!(opts.per_registry.is_empty());
    }

    /// A registry on 127.0.0.1:0 (plain HTTP by the loopback rule) that knows tag `present`,
    /// not `missing`, and fails on anything else.
    async fn fake_registry() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
                    let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                    let digest = format!("sha256:{}", "ab".repeat(32));
                    let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#;
                    let unknown = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
                    let (status, extra, body) = match path.as_str() {
                        "/v2/" => ("200 OK", String::new(), "{}"),
                        "/v2/kmm/manifests/present" => {
                            ("200 OK", format!("Docker-Content-Digest: {digest}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"), manifest)
                        }
                        "/v2/kmm/manifests/missing" => ("404 Not Found", "Content-Type: application/json\r\n".to_string(), unknown),
                        _ => ("500 Internal Server Error", String::new(), "boom"),
                    };
                    let body = if line.starts_with("HEAD") { "" } else { body };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        if line.starts_with("HEAD") { manifest.len() } else { body.len() }
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        addr.to_string()
    }

    #[tokio::test]
    async fn lookups_record_present_missing_and_failed() {
        use kube::runtime::reflector::store::Writer;
        let registry = fake_registry().await;
        let stores = Stores {
            modules: Writer::default().as_reader(),
            nodes: Default::default(),
            daemonsets: Writer::default().as_reader(),
            pods: Default::default(),
            configmaps: Writer::default().as_reader(),
            secrets: Writer::default().as_reader(),
        };
        let base = kforge_image::RegistryOptions { attempts: 1, timeout: Duration::from_secs(5), ..Default::default() };
        let cache = ImageCache::new(Duration::from_secs(60));
        let lookups: Vec<Lookup> = ["present", "missing", "broken"].iter().map(|t| lookup(&format!("{registry}/kmm:{t}"))).collect();
        let claimed = cache.claim(&lookups);
        run_lookups(claimed, stores, base, cache.clone(), Metrics::default(), 8).await;
        let facts = cache.facts(Instant::now());
        assert_eq!(facts.get(&lookups[0].key), Some(&present(format!("sha256:{}", "ab".repeat(32)), None)));
        assert_eq!(facts.get(&lookups[1].key), Some(&ImageFact::Missing));
        assert!(matches!(facts.get(&lookups[2].key), Some(ImageFact::Failed { message }) if message.contains("kmm:broken")), "{facts:?}");
        // All three can be claimed again (none is stuck in flight).
        assert_eq!(cache.claim(&lookups).len(), 3);
    }

    #[test]
    fn a_lookup_is_claimed_once_until_it_reports() {
        let cache = ImageCache::new(Duration::from_secs(60));
        let a = lookup("r/a:1");
        assert_eq!(cache.claim(std::slice::from_ref(&a)).len(), 1);
        assert!(cache.claim(std::slice::from_ref(&a)).is_empty());
        cache.record(a.key.clone(), ImageFact::Missing, Some(a.clone()), Instant::now());
        assert_eq!(cache.claim(&[a]).len(), 1);
    }
}
