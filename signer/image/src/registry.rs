//! Registry access through `oci-client`: credentials, TLS per registry, retries with backoff.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncRead;

use crate::auth::DockerConfig;
use crate::error::Error;
use crate::manifest::ACCEPTED;

/// TLS settings for one registry (KMM's `registryTLS`).
#[derive(Debug, Clone, Default)]
pub struct RegistryTls {
    /// Plain HTTP (`registryTLS.insecure`).
    pub insecure: bool,
    /// HTTPS without certificate verification (`registryTLS.insecureSkipTLSVerify`).
    pub skip_verify: bool,
    /// Extra CA certificates (PEM) to trust.
    pub ca_pem: Vec<Vec<u8>>,
}

/// How to reach registries: credentials, TLS per host, timeouts and retries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Credentials by registry host.
    pub credentials: DockerConfig,
    /// TLS settings for every registry not listed in `per_registry`.
    pub tls: RegistryTls,
    /// TLS settings by registry host.
    pub per_registry: HashMap<String, RegistryTls>,
    /// Timeout for connecting and for each read.
    pub timeout: Duration,
    /// Attempts per request on 5xx answers and connection failures.
    pub attempts: u32,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            credentials: DockerConfig::default(),
            tls: RegistryTls::default(),
            per_registry: HashMap::new(),
            timeout: Duration::from_secs(60),
            attempts: 4,
        }
    }
}

impl RegistryOptions {
    /// Adds a CA bundle (PEM file) trusted for every registry.
    pub fn add_ca_file(&mut self, path: &Path) -> Result<(), Error> {
        let pem = std::fs::read(path).map_err(Error::io(path, "read CA bundle"))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(Error::AuthFile { path: path.into(), reason: "not a PEM certificate bundle".into() });
        }
        self.tls.ca_pem.push(pem);
        Ok(())
    }

    /// These options, with `image`'s registry as plain HTTP if it is on this machine (`localhost`,
    /// `127.*`, `[::1]`) and has no TLS settings of its own, as BuildKit and Docker treat such registries.
    pub fn with_loopback_plain_http(&self, image: &str) -> RegistryOptions {
        let mut opts = self.clone();
        if let Ok(reference) = image.parse::<Reference>() {
            let registry = reference.registry();
            if is_loopback(registry) && !opts.per_registry.contains_key(registry) {
                opts.per_registry.insert(registry.to_string(), RegistryTls { insecure: true, ..Default::default() });
            }
        }
        opts
    }

    fn tls_for(&self, host: &str) -> &RegistryTls {
        self.per_registry.get(host).unwrap_or(&self.tls)
    }
}

/// One repository on one registry, with a client configured for that registry.
pub(crate) struct RegistryRepo {
    client: Client,
    auth: RegistryAuth,
    registry: String,
    repository: String,
    attempts: u32,
}

impl RegistryRepo {
    pub async fn connect(reference: &Reference, opts: &RegistryOptions) -> Result<Self, Error> {
        let registry = reference.resolve_registry().to_string();
        let tls = opts.tls_for(reference.registry());
        let config = ClientConfig {
            protocol: if tls.insecure { ClientProtocol::Http } else { ClientProtocol::Https },
            accept_invalid_certificates: tls.skip_verify,
            extra_root_certificates: tls.ca_pem.iter().map(|data| Certificate { encoding: CertificateEncoding::Pem, data: data.clone() }).collect(),
            read_timeout: Some(opts.timeout),
            // One streamed PUT per blob (the size is always known) instead of a PATCH per chunk.
            use_monolithic_push: true,
            connect_timeout: Some(opts.timeout.min(Duration::from_secs(30))),
            ..Default::default()
        };
        let client = Client::new(config);
        let auth = opts.credentials.auth_for(reference.registry());
        client.store_auth_if_needed(&registry, &auth).await;
        Ok(RegistryRepo { client, auth, registry, repository: reference.repository().to_string(), attempts: opts.attempts.max(1) })
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    fn at(&self, reference: &str) -> Reference {
        if reference.starts_with("sha256:") {
            Reference::with_digest(self.registry.clone(), self.repository.clone(), reference.to_string())
        } else {
            Reference::with_tag(self.registry.clone(), self.repository.clone(), reference.to_string())
        }
    }

    /// Runs `op`, retrying with backoff on server errors and connection failures.
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.attempts && retryable(&e) => {
                    tracing::warn!(registry = %self.registry, %what, attempt, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(self.error(what, e)),
            }
        }
    }

    fn error(&self, what: &str, e: OciDistributionError) -> Error {
        match e {
            OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
                Error::Auth { registry: self.registry.clone(), what: what.to_string(), cause: e.to_string() }
            }
            OciDistributionError::RequestError(ref r) if r.is_connect() || r.is_timeout() => Error::Registry {
                registry: self.registry.clone(),
                what: what.to_string(),
                cause: format!("unreachable ({}); check the address, and --insecure for plain-HTTP registries", chain(r)),
            },
            other => Error::Registry { registry: self.registry.clone(), what: what.to_string(), cause: other.to_string() },
        }
    }

    /// The raw manifest or index at a tag or digest, with its digest.
    pub async fn manifest(&self, reference: &str) -> Result<(Bytes, String), Error> {
        let r = self.at(reference);
        self.retry(&format!("pull manifest {}", r.whole()), || self.client.pull_manifest_raw(&r, &self.auth, &ACCEPTED)).await
    }

    /// The digest of the manifest or index at a tag or digest; `None` if the registry has none.
    pub async fn manifest_digest(&self, reference: &str) -> Result<Option<String>, Error> {
        let r = self.at(reference);
        match self.retry(&format!("look up {}", r.whole()), || self.client.fetch_manifest_digest(&r, &self.auth)).await {
            Ok(digest) => Ok(Some(digest)),
            Err(Error::Registry { cause, .. }) if is_not_found(&cause) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A blob as a byte stream.
    pub async fn blob(&self, digest: &str) -> Result<impl AsyncRead + Send + Unpin + 'static, Error> {
        let r = self.at(digest);
        let what = format!("pull blob {digest} from {}", self.repository);
        let stream = self.retry(&what, || self.client.pull_blob_stream(&r, digest)).await?;
        Ok(tokio_util::io::StreamReader::new(stream.stream.map_err(std::io::Error::other)))
    }

    pub async fn has_blob(&self, digest: &str) -> Result<bool, Error> {
        let r = self.at(digest);
        self.retry(&format!("check blob {digest} in {}", self.repository), || self.client.blob_exists(&r, digest)).await
    }

    /// Asks the registry to mount a blob from another repository; `false` if it would not.
    pub async fn mount(&self, digest: &str, from_repository: &str) -> bool {
        let target = self.at(digest);
        let source = Reference::with_digest(self.registry.clone(), from_repository.to_string(), digest.to_string());
        match self.client.mount_blob(&target, &source, digest).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(registry = %self.registry, %digest, error = %e, "mount refused; uploading instead");
                false
            }
        }
    }

    /// Uploads a blob from a file.
    pub async fn push_blob_file(&self, path: &Path, digest: &str, size: u64) -> Result<(), Error> {
        let r = self.at(digest);
        let what = format!("push blob {digest} to {}", self.repository);
        self.retry(&what, || async {
            let file = tokio::fs::File::open(path).await?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map_err(OciDistributionError::from);
            self.client.push_blob_stream(&r, stream, digest, Some(size)).await
        })
        .await?;
        Ok(())
    }

    /// Uploads a small blob from memory.
    pub async fn push_blob_bytes(&self, bytes: &Bytes, digest: &str) -> Result<(), Error> {
        let r = self.at(digest);
        self.retry(&format!("push blob {digest} to {}", self.repository), || self.client.push_blob(&r, bytes.clone(), digest)).await?;
        Ok(())
    }

    /// Uploads a manifest or index at a tag or digest.
    pub async fn push_manifest(&self, bytes: &Bytes, media_type: &str, reference: &str) -> Result<(), Error> {
        let r = self.at(reference);
        let content_type: http::HeaderValue = media_type.parse().map_err(|_| Error::Malformed {
            image: r.whole(),
            what: "manifest",
            reason: format!("media type {media_type:?} is not a valid header"),
        })?;
        self.retry(&format!("push manifest {}", r.whole()), || self.client.push_manifest_raw(&r, bytes.clone(), content_type.clone())).await?;
        Ok(())
    }
}

/// Whether `registry` (`host[:port]`) is on this machine.
fn is_loopback(registry: &str) -> bool {
    let host = if registry.starts_with('[') {
        registry.split_once(']').map(|(h, _)| format!("{h}]")).unwrap_or_else(|| registry.to_string())
    } else {
        registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(registry).to_string()
    };
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// Whether a registry error means "no such manifest" (404, MANIFEST_UNKNOWN, NAME_UNKNOWN).
fn is_not_found(cause: &str) -> bool {
    ["manifest unknown", "MANIFEST_UNKNOWN", "name unknown", "NAME_UNKNOWN", "code: 404", "404 Not Found"].iter().any(|m| cause.contains(m))
}

/// The digest `image` (`registry/repo:tag`) points at, or `None` if the registry does not have it.
pub async fn resolve_digest(image: &str, opts: &RegistryOptions) -> Result<Option<String>, Error> {
    let reference: Reference = image.parse().map_err(|e: oci_client::ParseError| Error::Reference { reference: image.to_string(), reason: e.to_string() })?;
    let repo = RegistryRepo::connect(&reference, opts).await?;
    let at = reference.digest().or(reference.tag()).unwrap_or("latest").to_string();
    repo.manifest_digest(&at).await
}

/// An image's digest and its config labels (for an index, the linux/amd64 image's, else the
/// first's); `None` if the registry does not have it.
pub async fn image_labels(image: &str, opts: &RegistryOptions) -> Result<Option<(String, std::collections::BTreeMap<String, String>)>, Error> {
    use tokio::io::AsyncReadExt;
    let reference: Reference = image.parse().map_err(|e: oci_client::ParseError| Error::Reference { reference: image.to_string(), reason: e.to_string() })?;
    let repo = RegistryRepo::connect(&reference, opts).await?;
    let at = reference.digest().or(reference.tag()).unwrap_or("latest").to_string();
    let Some(digest) = repo.manifest_digest(&at).await? else { return Ok(None) };
    let bad = |reason: String| Error::Malformed { image: image.to_string(), what: "manifest", reason };
    let (bytes, _) = repo.manifest(&digest).await?;
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if let Some(list) = doc.get("manifests").and_then(|m| m.as_array()) {
        let amd64 = |m: &&serde_json::Value| m.pointer("/platform/architecture").and_then(|a| a.as_str()) == Some("amd64");
        let chosen =
            list.iter().find(amd64).or(list.first()).and_then(|m| m.get("digest")).and_then(|d| d.as_str()).ok_or_else(|| bad("an empty index".into()))?;
        let (inner, _) = repo.manifest(chosen).await?;
        doc = serde_json::from_slice(&inner).map_err(|e| bad(e.to_string()))?;
    }
    let config = doc.pointer("/config/digest").and_then(|d| d.as_str()).ok_or_else(|| bad("no config".into()))?.to_string();
    let mut raw = Vec::new();
    repo.blob(&config).await?.take(16 << 20).read_to_end(&mut raw).await.map_err(|cause| Error::Stream { what: format!("{image} config"), cause })?;
    let json: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| Error::Malformed { image: image.to_string(), what: "config", reason: e.to_string() })?;
    let labels = json
        .pointer("/config/Labels")
        .and_then(|l| l.as_object())
        .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    Ok(Some((digest, labels)))
}

fn retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RequestError(r) => r.is_connect() || r.is_timeout() || r.is_request(),
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http_unless_configured() {
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost:5000") && is_loopback("[::1]:5000") && is_loopback("localhost"));
        assert!(!is_loopback("registry.example:5000") && !is_loopback("quay.io") && !is_loopback("10.0.0.1:5000"));
        let opts = RegistryOptions::default();
        assert!(opts.with_loopback_plain_http("127.0.0.1:5000/dtk:6.1").per_registry["127.0.0.1:5000"].insecure);
        assert!(opts.with_loopback_plain_http("quay.io/org/dtk:6.1").per_registry.is_empty());
        let mut opts = RegistryOptions::default();
        opts.per_registry.insert("localhost:5000".into(), RegistryTls { skip_verify: true, ..Default::default() });
        assert!(!opts.with_loopback_plain_http("localhost:5000/dtk:1").per_registry["localhost:5000"].insecure, "explicit settings win");
    }
}
