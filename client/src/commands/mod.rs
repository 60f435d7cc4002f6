//! One module per subcommand.

pub mod keygen;
pub mod serve;
pub mod sign;
pub mod sign_image;
pub mod verify;

use std::path::Path;

use anyhow::Context;

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
