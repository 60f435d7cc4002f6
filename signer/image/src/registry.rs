//! Registry access through `oci-client`: credentials, TLS per registry, retries with backoff.

use std::borrow::Cow;
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
///
/// A registry on this machine (`localhost`, `127.0.0.0/8`, `[::1]`) with no entry of its own in
/// `per_registry` is plain HTTP, as Docker, containerd and BuildKit treat such registries, unless
/// `tls` asks for something only HTTPS has (a CA bundle, skipped verification). Every client made
/// for a reference applies this rule; an entry in `per_registry` always wins.
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

    /// These options, with `image`'s registry written down as plain HTTP in `per_registry` if the
    /// loopback rule (see [`RegistryOptions`]) makes it so. Every registry client applies the rule
    /// already, so this changes no behaviour; it makes the choice visible in `per_registry`.
    pub fn with_loopback_plain_http(&self, image: &str) -> RegistryOptions {
        let mut opts = self.clone();
        if let Ok(reference) = image.parse::<Reference>() {
            let registry = reference.registry();
            if opts.loopback_plain_http(registry) {
                opts.per_registry.insert(registry.to_string(), RegistryTls { insecure: true, ..Default::default() });
            }
        }
        opts
    }

    /// The TLS settings for `registry` (`host[:port]` as written in the image reference): its own
    /// entry in `per_registry`, else plain HTTP if the loopback rule applies, else `tls`.
    fn tls_for(&self, registry: &str) -> Cow<'_, RegistryTls> {
        if let Some(own) = self.per_registry.get(registry) {
            Cow::Borrowed(own)
        } else if self.loopback_plain_http(registry) {
            Cow::Owned(RegistryTls { insecure: true, ..Default::default() })
        } else {
            Cow::Borrowed(&self.tls)
        }
    }

    /// Whether the loopback rule makes `registry` plain HTTP: on this machine, no settings of its
    /// own, and no CA bundle or skipped verification (which only mean something over HTTPS) for all.
    fn loopback_plain_http(&self, registry: &str) -> bool {
        is_loopback(registry) && !self.per_registry.contains_key(registry) && self.tls.ca_pem.is_empty() && !self.tls.skip_verify
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
        // The loopback rule (plain HTTP for registries on this machine) is applied here, for every caller.
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

    /// Runs `op`, retrying with backoff on server errors and connection failures (not on a plain-HTTP
    /// answer to HTTPS: that one is reported at once).
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
        if answered_plain_http(&e) {
            return Error::PlainHttp { registry: self.registry.clone(), what: what.to_string(), source: Box::new(e) };
        }
        match e {
            OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
                Error::Auth { registry: self.registry.clone(), what: what.to_string(), cause: e.to_string() }
            }
            OciDistributionError::RequestError(ref r) if r.is_connect() || r.is_timeout() => Error::Registry {
                registry: self.registry.clone(),
                what: what.to_string(),
                cause: format!("unreachable ({}); check the address, and whether the registry speaks plain HTTP (registryTLS.insecure)", chain(r)),
            },
            // Plain HTTP to an HTTPS server, most likely a TLS registry on this machine reached by the loopback rule.
            other if answered_https(&other) => Error::SpeaksHttps { registry: self.registry.clone(), what: what.to_string(), cause: other.to_string() },
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

/// Whether `registry` (`host[:port]`, an IPv6 address in brackets) is on this machine: `localhost`,
/// an address in `127.0.0.0/8`, or `[::1]`.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((address, _)) => address,
            None => return false,
        },
        None => registry.rsplit_once(':').map_or(registry, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
    if answered_plain_http(e) {
        return false;
    }
    match e {
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RequestError(r) => r.is_connect() || r.is_timeout() || r.is_request(),
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// Whether the TLS handshake failed because the server answered in plain HTTP: rustls's
/// `InvalidMessage(InvalidContentType)` ("received corrupt message of type InvalidContentType", an
/// HTTP status line is no TLS record), OpenSSL's "wrong version number", Go's "server gave HTTP
/// response to HTTPS client", somewhere in the `source()` chain. rustls's error type is not a
/// dependency of this crate (it comes through reqwest), so the chain is matched by its text.
fn answered_plain_http(e: &(dyn std::error::Error + 'static)) -> bool {
    const MARKS: [&str; 3] = ["InvalidContentType", "wrong version number", "server gave HTTP response to HTTPS client"];
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        let text = e.to_string();
        MARKS.iter().any(|mark| text.contains(mark))
    })
}

/// Whether a plain-HTTP request reached an HTTPS server (Go's `net/http`, so Distribution, answers
/// such requests "400 Client sent an HTTP request to an HTTPS server").
fn answered_https(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| e.to_string().contains("Client sent an HTTP request to an HTTPS server"))
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn loopback_registries_are_plain_http_unless_configured() {
        for host in ["127.0.0.1:5000", "127.1.2.3:5000", "localhost:5000", "LOCALHOST:5000", "localhost", "127.0.0.1", "[::1]:5000", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["registry.example:5000", "quay.io", "10.0.0.1:5000", "127.example.com:5000", "localhost.example:5000", "[::2]:5000", "[::1"] {
            assert!(!is_loopback(host), "{host}");
        }

        // The rule as every client applies it.
        let opts = RegistryOptions::default();
        for host in ["127.0.0.1:5000", "localhost:5000", "[::1]:5000"] {
            assert!(opts.tls_for(host).insecure, "{host} is plain HTTP");
        }
        for host in ["quay.io", "registry.example:5000", "10.0.0.1:5000"] {
            assert!(!opts.tls_for(host).insecure, "{host} is HTTPS");
        }
        let mut opts = RegistryOptions::default();
        opts.per_registry.insert("localhost:5000".into(), RegistryTls { skip_verify: true, ..Default::default() });
        opts.per_registry.insert("127.0.0.1:5443".into(), RegistryTls::default());
        assert!(!opts.tls_for("localhost:5000").insecure && opts.tls_for("localhost:5000").skip_verify, "explicit settings win");
        assert!(!opts.tls_for("127.0.0.1:5443").insecure, "explicit HTTPS wins");
        assert!(opts.tls_for("127.0.0.1:5000").insecure, "other loopback registries keep the rule");
        let mut opts = RegistryOptions::default();
        opts.tls.ca_pem.push(b"-----BEGIN CERTIFICATE-----".to_vec());
        assert!(!opts.tls_for("127.0.0.1:5000").insecure, "a CA bundle for all registries means HTTPS");
        let opts = RegistryOptions { tls: RegistryTls { skip_verify: true, ..Default::default() }, ..Default::default() };
        assert!(!opts.tls_for("127.0.0.1:5000").insecure, "skipping verification for all registries means HTTPS");
        let opts = RegistryOptions { tls: RegistryTls { insecure: true, ..Default::default() }, ..Default::default() };
        assert!(opts.tls_for("quay.io").insecure && opts.tls_for("127.0.0.1:5000").insecure);

        // The explicit form other crates call agrees with the rule.
        let opts = RegistryOptions::default();
        assert!(opts.with_loopback_plain_http("127.0.0.1:5000/dtk:6.1").per_registry["127.0.0.1:5000"].insecure);
        assert!(opts.with_loopback_plain_http("quay.io/org/dtk:6.1").per_registry.is_empty());
        let mut opts = RegistryOptions::default();
        opts.per_registry.insert("localhost:5000".into(), RegistryTls { skip_verify: true, ..Default::default() });
        assert!(!opts.with_loopback_plain_http("localhost:5000/dtk:1").per_registry["localhost:5000"].insecure, "explicit settings win");
    }

    #[test]
    fn protocol_mismatches_are_recognised_through_the_error_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Outer(#[source] std::io::Error);
        let tls = std::io::Error::new(std::io::ErrorKind::InvalidData, "received corrupt message of type InvalidContentType");
        assert!(answered_plain_http(&Outer(tls)));
        let openssl = std::io::Error::other("error:0A00010B:SSL routines:ssl3_get_record:wrong version number");
        assert!(answered_plain_http(&Outer(openssl)));
        assert!(!answered_plain_http(&Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))));
        assert!(!answered_plain_http(&Outer(std::io::Error::other("invalid peer certificate: UnknownIssuer"))));
        assert!(answered_https(&Outer(std::io::Error::other("code: 400, message: Client sent an HTTP request to an HTTPS server."))));
        assert!(!answered_https(&Outer(std::io::Error::other("code: 400, message: bad request"))));
    }

    /// A loopback server answering any bytes with a plain-HTTP 400 and closing; counts connections.
    async fn plain_http_server() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let registry = format!("127.0.0.1:{}", listener.local_addr().expect("local address").port());
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        let server = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (registry, connections, server)
    }

    /// HTTPS forced (a setting of its own) for a loopback server that answers plain HTTP: the
    /// `PlainHttp` error at once, no retries.
    #[tokio::test]
    async fn a_plain_http_answer_to_https_is_reported_at_once_without_retries() {
        // What one attempt costs: oci-client pings /v2/ for a token before a request (and ignores
        // that failure), so an attempt may open more than one connection.
        let mut per_attempt = None;
        for attempts in [1, 4] {
            let (registry, connections, server) = plain_http_server().await;
            let mut opts = RegistryOptions { timeout: Duration::from_secs(10), attempts, ..Default::default() };
            opts.per_registry.insert(registry.clone(), RegistryTls { insecure: false, ..Default::default() });
            let error = resolve_digest(&format!("{registry}/mods/x:v1"), &opts).await.expect_err("HTTPS to a plain-HTTP server fails");
            server.abort();

            assert!(matches!(&error, Error::PlainHttp { registry: r, .. } if *r == registry), "{error:?}");
            let message = error.to_string();
            assert!(message.contains("plain HTTP") && message.contains("registryTLS.insecure") && !message.contains("--"), "names no CLI flag: {message}");
            let cause = std::error::Error::source(&error).map(chain).unwrap_or_default();
            assert!(cause.contains("InvalidContentType"), "the TLS error is kept as the source: {cause}");

            let seen = connections.load(Ordering::SeqCst);
            match per_attempt {
                None => {
                    assert!((1..=2).contains(&seen), "one attempt: {seen} connections");
                    per_attempt = Some(seen);
                }
                Some(one) => assert_eq!(seen, one, "{attempts} attempts allowed, yet only one made: no retries"),
            }
        }
    }
}
