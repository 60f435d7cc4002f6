//! `kforge keygen`: a module-signing key pair.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use kforge_signer::{KeygenOptions, generate_key_pair};

/// Arguments of `kforge keygen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Certificate subject, e.g. "CN=Example Corp module signing key,O=Example Corp".
    #[arg(long)]
    subject: String,
    /// Where to write the private key (PEM, PKCS#8, mode 0600).
    #[arg(long)]
    key_out: PathBuf,
    /// Where to write the certificate.
    #[arg(long)]
    cert_out: PathBuf,
    /// RSA key size: 2048, 3072 or 4096.
    #[arg(long, default_value_t = 4096)]
    bits: u32,
    /// Write the certificate as DER (what `mokutil --import` takes) instead of PEM.
    #[arg(long)]
    der: bool,
    /// Validity in days (the kernel's own build uses 36500).
    #[arg(long, default_value_t = 36500)]
    days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

/// Generates the pair and writes both files.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = KeygenOptions { subject: args.subject.clone(), bits: args.bits, days: args.days };
    let pair = generate_key_pair(&opts)?;
    let key_pem = pair.key.private_key_to_pem_pkcs8().context("encoding the private key")?;
    let cert = if args.der { pair.cert.to_der() } else { pair.cert.to_pem() }.context("encoding the certificate")?;
    write_new(&args.key_out, &key_pem, 0o600, args.force)?;
    write_new(&args.cert_out, &cert, 0o644, args.force)?;
    let serial = pair.cert.serial_number().to_bn().and_then(|b| b.to_hex_str().map(|s| s.to_string())).unwrap_or_default();
    println!(
        "wrote {} (RSA-{}) and {} ({}, serial {serial})",
        args.key_out.display(),
        args.bits,
        args.cert_out.display(),
        if args.der { "DER" } else { "PEM" }
    );
    println!(
        "enrol for Secure Boot with: mokutil --import {} (DER; convert PEM with openssl x509 -outform DER), then reboot and confirm in MokManager",
        args.cert_out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(mode);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).with_context(|| {
        if path.exists() && !force {
            format!("{} already exists; pass --force to overwrite it", path.display())
        } else {
            format!("{}: cannot create", path.display())
        }
    })?;
    f.write_all(bytes).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}
