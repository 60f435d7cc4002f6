//! `kforge verify` and `kforge inspect`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kforge_signer::{BatchOptions, Certificate, Compression, Error, Inspection, SignatureInfo, collect};
use rayon::prelude::*;

/// Arguments of `kforge verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Certificate to verify against, DER or PEM.
    #[arg(long)]
    cert: PathBuf,
    /// Print only failures and the summary.
    #[arg(long, short)]
    quiet: bool,
    /// Module files and directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Arguments of `kforge inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Module files and directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Verifies every module; the exit status is non-zero if any fails.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cert = Certificate::load(&args.cert)?;
    let (files, mut failures) = module_files(&args.paths);
    let results: Vec<_> = files.par_iter().map(|path| read(path).and_then(|bytes| kforge_signer::verify(&bytes, &cert).map_err(|e| e.at(path)))).collect();
    let mut ok = 0;
    for (path, result) in files.iter().zip(results) {
        match result {
            Ok(v) => {
                ok += 1;
                if !args.quiet {
                    println!("{}: OK", path.display());
                    print_fields(&v.info, Some(&v.signature));
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    for f in &failures {
        println!("FAILED {f}");
    }
    println!("{ok} verified, {} failed (certificate {}, serial {})", failures.len(), cert.subject(), cert.serial_hex());
    Ok(if failures.is_empty() && ok > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Shows compression, `.modinfo` and signature of every module.
pub fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let (files, mut failures) = module_files(&args.paths);
    for path in &files {
        match read(path).and_then(|b| kforge_signer::inspect(&b).map_err(|e| e.at(path))) {
            Ok(Inspection { compression, module_len, info, signature }) => {
                println!("{}:", path.display());
                if compression != Compression::None {
                    println!("  compression:  {compression}");
                }
                println!("  size:         {module_len} bytes without signature");
                print_fields(&info, signature.as_ref());
                if signature.is_none() {
                    println!("  signature:    none");
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    for f in &failures {
        eprintln!("error: {f}");
    }
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_fields(info: &kforge_signer::ModuleInfo, sig: Option<&SignatureInfo>) {
    println!("  name:         {}", info.name);
    println!("  vermagic:     {}", info.vermagic);
    for key in ["license", "version", "depends"] {
        if let Some(v) = info.get(key).filter(|v| !v.is_empty()) {
            println!("  {key}:{:width$}{v}", "", width = 13 - key.len());
        }
    }
    if let Some(sig) = sig {
        if let Some(signer) = &sig.signer {
            println!("  signer:       {signer}");
        }
        println!("  sig_key:      {}{}", sig.key_id, if sig.by_key_id { " (subject key identifier)" } else { "" });
        println!("  sig_hashalgo: {}", sig.hash);
        println!(
            "  signature:    PKCS#7, {} bytes{}",
            sig.cms_len,
            if sig.stacked > 1 { format!(", {} stacked signatures", sig.stacked) } else { String::new() }
        );
    }
}

/// Expands the paths into module files, reporting unusable ones.
fn module_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<String>) {
    let collected = collect(paths, &BatchOptions::default());
    let files = collected.jobs.into_iter().map(|j| j.src).collect();
    (files, collected.errors.iter().map(ToString::to_string).collect())
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|cause| Error::Io { path: path.into(), op: "read", cause })
}
