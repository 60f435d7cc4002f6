//! `kforge sign`: sign module files and trees, in parallel, atomically.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use kforge_signer::{collect, sign_jobs, BatchOptions, HashAlgorithm, Signer, SignerIdentifier, SigningKey};

use super::{human_bytes, passphrase};

/// Arguments of `kforge sign`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// RSA private key, PEM (KMM's `key`); encrypted keys take their passphrase from KBUILD_SIGN_PIN.
    #[arg(long)]
    key: PathBuf,
    /// Certificate, DER or PEM (KMM's `cert`).
    #[arg(long)]
    cert: PathBuf,
    /// Digest: sha256, sha384, sha512, sha224 or sha1 (deprecated).
    #[arg(long, default_value = "sha256")]
    hash: String,
    /// Name the certificate by subjectKeyIdentifier instead of issuer and serial (sign-file -k).
    #[arg(long)]
    key_id: bool,
    /// Read the key's passphrase from this file instead of KBUILD_SIGN_PIN.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Write signed modules here (paths relative to each input directory) instead of in place.
    #[arg(long)]
    out: Option<PathBuf>,
    /// fsync every module before reporting it signed.
    #[arg(long)]
    fsync: bool,
    /// Worker threads (default: one per core).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Module files (.ko, .ko.xz, .ko.zst, .ko.gz) and directories to sign recursively.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Loads the key (refusing a mismatch before any module is touched), then signs everything.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let hash: HashAlgorithm = args.hash.parse()?;
    if hash.is_deprecated() {
        tracing::warn!("{hash} is deprecated for module signatures; prefer sha256 or stronger");
    }
    let pass = passphrase(args.passphrase_file.as_deref())?;
    let key = SigningKey::load(&args.key, &args.cert, pass.as_deref())?;
    let id = if args.key_id { SignerIdentifier::KeyId } else { SignerIdentifier::IssuerSerial };
    let signer = Signer::new(key, hash, id)?;
    let opts = BatchOptions { out_dir: args.out.clone(), fsync: args.fsync };

    let started = Instant::now();
    let collected = collect(&args.paths, &opts);
    let pool = rayon_pool(args.jobs)?;
    let bar = crate::progress::bar(collected.jobs.len() as u64, "signing");
    let results = pool.install(|| sign_jobs(&signer, &collected.jobs, &opts, &|_, _| bar.inc(1)));
    bar.finish_and_clear();

    let mut failures: Vec<String> = collected.errors.iter().map(ToString::to_string).collect();
    let (mut signed, mut bytes, mut replaced) = (0usize, 0u64, 0usize);
    for r in results {
        match r {
            Ok(o) => {
                signed += 1;
                bytes += o.bytes;
                replaced += usize::from(o.replaced > 0);
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    for f in &failures {
        eprintln!("error: {f}");
    }
    let cert = signer.key().certificate();
    println!(
        "signed {signed} module{} ({}, {replaced} re-signed) with {} RSA-{}/{hash} in {:.2}s; {} failed",
        if signed == 1 { "" } else { "s" },
        human_bytes(bytes),
        cert.subject(),
        signer.key().bits(),
        started.elapsed().as_secs_f64(),
        failures.len(),
    );
    if signed == 0 && failures.is_empty() {
        eprintln!("error: no kernel modules (*.ko, *.ko.xz, *.ko.zst, *.ko.gz) found under the given paths");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A rayon pool with `jobs` threads, or rayon's default of one per core.
pub fn rayon_pool(jobs: Option<usize>) -> anyhow::Result<rayon::ThreadPool> {
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(n) = jobs {
        b = b.num_threads(n.max(1));
    }
    b.build().context("starting worker threads")
}
