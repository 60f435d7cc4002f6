//! `kforge.toml`: the whole configuration of `kforge serve` (the server, the signer, the builder
//! and DTK resolution), and the embedded defaults it starts with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kforge_builder_service::BuilderConfig;
use kforge_kmm::DtkConfig;
use kforge_server::{Limits, ServerConfig, TlsConfig, TokenConfig};
use kforge_signer_service::{KeyConfig, SignerConfig};
use serde::Deserialize;

use crate::Error;

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
    pub dtk: Option<DtkConfig>,
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
            .map_err(|e| Error::Key { name: "dev".into(), source: e })?;
            let pem = pair.key.private_key_to_pem_pkcs8().map_err(|e| Error::Invalid(format!("development key: {e}")))?;
            let der = pair.cert.to_der().map_err(|e| Error::Invalid(format!("development certificate: {e}")))?;
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
        self.server().validate()?;
        self.signer().validate()?;
        if let Some(b) = &self.builder {
            b.endpoint().map_err(|e| Error::Invalid(format!("[builder] {e}")))?;
        }
        Ok(())
    }

    /// Whether callers must authenticate (TLS client CA or tokens configured).
    pub fn requires_auth(&self) -> bool {
        self.server().requires_auth()
    }

    /// The server's part.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            tls: self.tls.clone(),
            tokens: self.tokens.clone(),
            limits: self.limits.clone(),
        }
    }

    /// The signer's part.
    pub fn signer(&self) -> SignerConfig {
        SignerConfig { audit_log: self.audit_log.clone(), keys: self.keys.clone(), key_reload_seconds: self.key_reload_seconds }
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
