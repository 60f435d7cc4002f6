//! One module per subcommand.

pub mod build;
pub mod build_sign;
pub mod crd;
pub mod dtk;
pub mod keygen;
pub mod plan;
pub mod reconcile;
pub mod serve;
pub mod sign;
pub mod sign_image;
pub mod verify;

use std::path::Path;

use anyhow::Context;

/// The signing key, certificate and signature options shared by `sign` and `sign-image`.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// RSA private key, PEM (KMM's `key`); encrypted keys take their passphrase from KBUILD_SIGN_PIN.
    #[arg(long, required_unless_present = "remote")]
    pub key: Option<std::path::PathBuf>,
    /// Certificate, DER or PEM (KMM's `cert`).
    #[arg(long, required_unless_present = "remote")]
    pub cert: Option<std::path::PathBuf>,
    /// Digest: sha256, sha384, sha512, sha224 or sha1 (deprecated).
    #[arg(long, default_value = "sha256")]
    pub hash: String,
    /// Name the certificate by subjectKeyIdentifier instead of issuer and serial (sign-file -k).
    #[arg(long)]
    pub key_id: bool,
    /// Read the key's passphrase from this file instead of KBUILD_SIGN_PIN.
    #[arg(long)]
    pub passphrase_file: Option<std::path::PathBuf>,
}

impl KeyArgs {
    /// The hash algorithm, with a warning for deprecated ones.
    pub fn hash(&self) -> anyhow::Result<kforge_signer::HashAlgorithm> {
        let hash: kforge_signer::HashAlgorithm = self.hash.parse()?;
        if hash.is_deprecated() {
            tracing::warn!("{hash} is deprecated for module signatures; prefer sha256 or stronger");
        }
        Ok(hash)
    }

    /// Loads the key pair (refusing a key that does not match its certificate) into a signer.
    pub fn signer(&self) -> anyhow::Result<kforge_signer::Signer> {
        let (Some(key), Some(cert)) = (&self.key, &self.cert) else {
            anyhow::bail!("--key and --cert are required (or sign on a service with --remote)");
        };
        let pass = passphrase(self.passphrase_file.as_deref())?;
        let key = kforge_signer::SigningKey::load(key, cert, pass.as_deref()).map_err(crate::hints::signer)?;
        let id = if self.key_id { kforge_signer::SignerIdentifier::KeyId } else { kforge_signer::SignerIdentifier::IssuerSerial };
        kforge_signer::Signer::new(key, self.hash()?, id).map_err(crate::hints::signer)
    }
}

/// Reads the key passphrase: `--passphrase-file` first, then `KBUILD_SIGN_PIN` (as sign-file does).
pub fn passphrase(file: Option<&Path>) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(file) = file {
        let mut bytes = std::fs::read(file).with_context(|| format!("{}: cannot read passphrase file", file.display()))?;
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        return Ok(Some(bytes));
    }
    Ok(std::env::var_os("KBUILD_SIGN_PIN").map(|v| v.into_encoded_bytes()))
}

/// Human-readable byte counts.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}
