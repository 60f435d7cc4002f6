//! The signer's part of the configuration: its keys and where it audits.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::Error;

/// What the signing service needs.
#[derive(Debug, Clone)]
pub struct SignerConfig {
    /// Append-only audit log (JSON lines).
    pub audit_log: PathBuf,
    /// Signing keys.
    pub keys: Vec<KeyConfig>,
    /// Seconds between checks of key files for changes.
    pub key_reload_seconds: u64,
}

impl SignerConfig {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), Error> {
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
        Ok(())
    }
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
