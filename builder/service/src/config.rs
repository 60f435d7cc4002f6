//! `[builder]` in kforge.toml: where BuildKit is and who may build.

use std::path::PathBuf;

use serde::Deserialize;

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
    pub fn endpoint(&self) -> Result<kforge_builder::Endpoint, kforge_builder::Error> {
        let ep: kforge_builder::Endpoint = self.buildkit.parse()?;
        if self.tls_ca.is_none() && self.tls_cert.is_none() && self.tls_key.is_none() {
            return Ok(ep);
        }
        ep.with_tls(kforge_builder::TlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        })
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
