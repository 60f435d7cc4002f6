//! Registry credentials in Docker's `config.json` form (what a `kubernetes.io/dockerconfigjson`
//! pull secret holds).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;

use crate::error::Error;

/// Credentials per registry host.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    auths: HashMap<String, RegistryAuth>,
}

impl DockerConfig {
    /// Reads a `config.json` / `.dockerconfigjson` file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(Error::io(path, "read credentials file"))?;
        Self::parse(&bytes, path)
    }

    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; empty if neither exists.
    pub fn from_environment() -> Result<Self, Error> {
        let path = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir).join("config.json"),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".docker/config.json"),
                None => return Ok(Self::default()),
            },
        };
        if path.is_file() { Self::load(&path) } else { Ok(Self::default()) }
    }

    /// `path` if given, else [`DockerConfig::from_environment`].
    pub fn load_or_environment(path: Option<&Path>) -> Result<Self, Error> {
        match path {
            Some(p) => Self::load(p),
            None => Self::from_environment(),
        }
    }

    /// Parses the JSON; `origin` names it in errors.
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<Self, Error> {
        let bad = |reason: String| Error::AuthFile { path: origin.into(), reason };
        let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let mut auths = HashMap::new();
        let entries = json.get("auths").and_then(|a| a.as_object()).ok_or_else(|| bad("no \"auths\" object".into()))?;
        for (host, entry) in entries {
            let auth = if let Some(token) = entry.get("registrytoken").and_then(|v| v.as_str()) {
                RegistryAuth::Bearer(token.to_string())
            } else if let (Some(u), Some(p)) = (entry.get("username").and_then(|v| v.as_str()), entry.get("password").and_then(|v| v.as_str())) {
                RegistryAuth::Basic(u.to_string(), p.to_string())
            } else if let Some(b64) = entry.get("auth").and_then(|v| v.as_str()) {
                let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|e| bad(format!("auths.{host}.auth is not base64: {e}")))?;
                let text = String::from_utf8(decoded).map_err(|_| bad(format!("auths.{host}.auth is not UTF-8")))?;
                let (u, p) = text.split_once(':').ok_or_else(|| bad(format!("auths.{host}.auth is not user:password")))?;
                RegistryAuth::Basic(u.to_string(), p.to_string())
            } else {
                continue;
            };
            auths.insert(normalize_host(host), auth);
        }
        if json.get("credsStore").is_some() || json.get("credHelpers").is_some() {
            tracing::warn!(file = %origin.display(), "credential helpers are not supported; only inline auths are used");
        }
        Ok(DockerConfig { auths })
    }

    /// Credentials for a registry host, or anonymous access.
    pub fn auth_for(&self, registry: &str) -> RegistryAuth {
        self.auths.get(&normalize_host(registry)).cloned().unwrap_or(RegistryAuth::Anonymous)
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `https://host:5000/` → `host:5000`.
fn normalize_host(key: &str) -> String {
    let key = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_and_username_password_forms() {
        let json = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"127.0.0.1:5000":{"username":"u","password":"p:x"}}}"#;
        let c = DockerConfig::parse(json, Path::new("cfg")).expect("parses");
        assert!(matches!(c.auth_for("docker.io"), RegistryAuth::Basic(u, p) if u == "user" && p == "pass"));
        assert!(matches!(c.auth_for("127.0.0.1:5000"), RegistryAuth::Basic(u, p) if u == "u" && p == "p:x"));
        assert!(matches!(c.auth_for("quay.io"), RegistryAuth::Anonymous));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let e = DockerConfig::parse(b"{}", Path::new("secret.json")).expect_err("no auths").to_string();
        assert_eq!(e, "secret.json: no \"auths\" object");
        let e = DockerConfig::parse(br#"{"auths":{"r":{"auth":"!!"}}}"#, Path::new("s")).expect_err("bad b64").to_string();
        assert!(e.contains("auths.r.auth is not base64"), "{e}");
    }
}
