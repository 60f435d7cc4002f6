//! The service configuration (TOML), and the embedded defaults `kforge serve` starts with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;

/// Everything `kforge serve` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address (default `127.0.0.1:7600`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Prometheus metrics and health over HTTP; `None` disables.
    #[serde(default = "default_metrics")]
    pub metrics_listen: Option<SocketAddr>,
    /// Append-only audit log (JSON lines).
    pub audit_log: PathBuf,
    /// TLS for the gRPC listener; without it the service listens on loopback only.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Bearer tokens, by name; only their SHA-256 is configured.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Signing keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Registry credentials (`.dockerconfigjson`) for SignImage requests that bring none.
    #[serde(default)]
    pub registry_auth_file: Option<PathBuf>,
    /// Seconds between checks of key files for changes.
    #[serde(default = "default_reload")]
    pub key_reload_seconds: u64,
    /// The build service; without it `Builder` calls answer FAILED_PRECONDITION.
    #[serde(default)]
    pub builder: Option<BuilderConfig>,
    /// Where `DTK_AUTO` comes from for builds whose Dockerfile uses it (`[dtk]`).
    #[serde(default)]
    pub dtk: Option<kforge_kmm::DtkConfig>,
}

/// Where the build service finds BuildKit, and who may build.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderConfig {
    /// BuildKit address: `docker://[/path/docker.sock]`, `unix:///…/buildkitd.sock` or `tcp://host:port`.
    pub buildkit: String,
    /// CA of a `tcp://` buildkitd's certificate (PEM).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for a `tcp://` buildkitd (PEM).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Client key for a `tcp://` buildkitd (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Name on buildkitd's certificate, if not its host.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// A build running longer is cancelled.
    #[serde(default = "default_build_deadline")]
    pub deadline_seconds: u64,
    /// Identities allowed to build (`cn:…`, `token:…`, `*` for any authenticated caller); empty
    /// means every caller the service accepts.
    #[serde(default)]
    pub allow: Vec<String>,
}

impl BuilderConfig {
    /// The BuildKit endpoint, with TLS files for `tcp://`.
    pub fn endpoint(&self) -> Result<kforge_builder::Endpoint, Error> {
        let ep: kforge_builder::Endpoint = self.buildkit.parse().map_err(|e: kforge_builder::Error| Error::Invalid(format!("[builder] {e}")))?;
        if self.tls_ca.is_none() && self.tls_cert.is_none() && self.tls_key.is_none() {
            return Ok(ep);
        }
        ep.with_tls(kforge_builder::TlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        })
        .map_err(|e| Error::Invalid(format!("[builder] {e}")))
    }

    /// `BUILDKIT_HOST`, else the local Docker engine.
    pub fn from_environment() -> Self {
        BuilderConfig {
            buildkit: std::env::var("BUILDKIT_HOST").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "docker://".into()),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_server_name: None,
            deadline_seconds: default_build_deadline(),
            allow: vec![],
        }
    }
}

fn default_build_deadline() -> u64 {
    kforge_builder::DEFAULT_DEADLINE.as_secs()
}

/// Server certificate and, for mutual TLS, the CA that client certificates must chain to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// CA bundle for client certificates (mutual TLS); identities come from their subject and SANs.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// A bearer token: its name (the identity `token:NAME`) and the SHA-256 of its value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name; the caller's identity becomes `token:NAME`.
    pub name: String,
    /// Lowercase hex SHA-256 of the token (`printf %s TOKEN | sha256sum`).
    pub sha256: String,
}

/// A named signing key, from files or from a mounted Kubernetes Secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Name callers use.
    pub name: String,
    /// Private key, PEM.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Certificate, DER or PEM.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// A mounted Secret: `key` + `cert` (KMM) or `tls.key` + `tls.crt` (kubernetes.io/tls).
    #[serde(default)]
    pub secret_dir: Option<PathBuf>,
    /// File holding the passphrase of an encrypted key.
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// Identities allowed to use the key: `cn:NAME`, `dns:NAME`, `subject:CN=…`, `token:NAME`,
    /// `anonymous` (loopback without authentication), or `*` for any authenticated caller.
    #[serde(default)]
    pub allow: Vec<String>,
}

impl KeyConfig {
    /// The key and certificate files this entry names.
    pub fn files(&self) -> Result<(PathBuf, PathBuf), Error> {
        if let Some(dir) = &self.secret_dir {
            for (k, c) in [("key", "cert"), ("tls.key", "tls.crt")] {
                if dir.join(k).is_file() && dir.join(c).is_file() {
                    return Ok((dir.join(k), dir.join(c)));
                }
            }
            return Err(Error::Invalid(format!("key {:?}: {} holds neither key+cert (KMM) nor tls.key+tls.crt (kubernetes.io/tls)", self.name, dir.display())));
        }
        match (&self.key, &self.cert) {
            (Some(k), Some(c)) => Ok((k.clone(), c.clone())),
            _ => Err(Error::Invalid(format!("key {:?}: give key and cert, or secret_dir", self.name))),
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest module accepted, in bytes (uncompressed or compressed as sent).
    pub max_module_bytes: u64,
    /// Requests served at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Signatures per second per identity (bursts of twice that); 0 disables.
    pub signatures_per_second: f64,
    /// Requests (signing and building alike) per second per identity (bursts of twice that); 0
    /// disables.
    pub requests_per_second: f64,
    /// Largest gRPC message, in bytes (a Build request carries its context: the CLI sends up to 32 MiB).
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_module_bytes: 512 << 20, max_concurrent_requests: 256, signatures_per_second: 0.0, requests_per_second: 0.0, max_message_bytes: 64 << 20 }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7600))
}

fn default_metrics() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 7601)))
}

fn default_reload() -> u64 {
    5
}

impl Config {
    /// Reads a TOML configuration file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path, "read configuration"))?;
        let config: Config = toml::from_str(&text).map_err(|e| Error::Config { path: path.into(), reason: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// The embedded defaults: loopback, no authentication, one development key (created on first
    /// use under `data_dir`) that anonymous loopback callers may use.
    pub fn development(data_dir: &Path) -> Result<Config, Error> {
        std::fs::create_dir_all(data_dir).map_err(Error::io(data_dir, "create data directory"))?;
        let key = data_dir.join("dev-signing-key.pem");
        let cert = data_dir.join("dev-signing-cert.der");
        if !key.is_file() || !cert.is_file() {
            let pair = kforge_signer::generate_key_pair(&kforge_signer::KeygenOptions {
                subject: "CN=kforge development signing key (not for production)".into(),
                bits: 2048,
                days: 3650,
            })
            .map_err(|e| Error::Key { name: "dev".into(), error: Box::new(e) })?;
            let pem = pair.key.private_key_to_pem_pkcs8().map_err(|e| Error::Invalid(e.to_string()))?;
            let der = pair.cert.to_der().map_err(|e| Error::Invalid(e.to_string()))?;
            write_private(&key, &pem)?;
            std::fs::write(&cert, der).map_err(Error::io(&cert, "write"))?;
        }
        Ok(Config {
            listen: default_listen(),
            metrics_listen: default_metrics(),
            audit_log: data_dir.join("audit.jsonl"),
            tls: None,
            tokens: vec![],
            keys: vec![KeyConfig {
                name: "dev".into(),
                key: Some(key),
                cert: Some(cert),
                secret_dir: None,
                passphrase_file: None,
                allow: vec!["anonymous".into(), "*".into()],
            }],
            limits: Limits::default(),
            registry_auth_file: None,
            key_reload_seconds: default_reload(),
            builder: Some(BuilderConfig::from_environment()),
            dtk: None,
        })
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(Error::Invalid(format!("listen = {} without TLS: plain-text gRPC is only allowed on loopback; configure [tls]", self.listen)));
        }
        if self.keys.is_empty() {
            return Err(Error::Invalid("no [[keys]] configured".into()));
        }
        let mut names = std::collections::HashSet::new();
        for k in &self.keys {
            if !names.insert(&k.name) {
                return Err(Error::Invalid(format!("key name {:?} is used twice", k.name)));
            }
            k.files()?;
        }
        for t in &self.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Invalid(format!("token {:?}: sha256 must be 64 hex digits (printf %s TOKEN | sha256sum)", t.name)));
            }
        }
        if let Some(b) = &self.builder {
            b.endpoint()?;
        }
        if self.limits.max_concurrent_requests == 0 {
            return Err(Error::Invalid("limits.max_concurrent_requests must be at least 1".into()));
        }
        Ok(())
    }

    /// Whether callers must authenticate (TLS client CA or tokens configured).
    pub fn requires_auth(&self) -> bool {
        !self.tokens.is_empty() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(Error::io(path, "create"))?;
    f.write_all(bytes).map_err(Error::io(path, "write"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_configuration_and_refuses_plain_text_off_loopback() {
        let text = r#"
            listen = "127.0.0.1:9000"
            audit_log = "/tmp/audit.jsonl"
            [[tokens]]
            name = "ci"
            sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
            [[keys]]
            name = "prod"
            key = "/k.pem"
            cert = "/c.der"
            allow = ["token:ci", "cn:builder"]
            [limits]
            max_concurrent_requests = 8
        "#;
        let c: Config = toml::from_str(text).expect("parses");
        c.validate().expect("valid");
        assert!(c.requires_auth());
        assert_eq!(c.limits.max_concurrent_requests, 8);
        assert_eq!(c.limits.max_module_bytes, 512 << 20, "unset limits keep their defaults");
        let open: Config = toml::from_str(&text.replace("127.0.0.1:9000", "0.0.0.0:9000")).expect("parses");
        let e = open.validate().expect_err("plain text off loopback").to_string();
        assert!(e.contains("only allowed on loopback"), "{e}");
        assert!(toml::from_str::<Config>(&format!("{text}\nbogus = 1")).is_err(), "unknown keys are refused");
    }
}
