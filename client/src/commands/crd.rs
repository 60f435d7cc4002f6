//! `kforge crd`: the CustomResourceDefinition of KMM's `Module`, as kforge reads it.

use std::process::ExitCode;

use std::io::Write;

use anyhow::Context;
use kube::CustomResourceExt;

/// Arguments of `kforge crd`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of YAML.
    #[arg(long)]
    json: bool,
}

/// Prints the `modules.kmm.sigs.x-k8s.io` CRD (apply it with `kubectl apply -f -`).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let crd = kforge_reconcile::api::Module::crd();
    let text = if args.json {
        serde_json::to_string_pretty(&crd).context("serialising the CRD")?
    } else {
        serde_saphyr::to_string(&crd).context("serialising the CRD")?
    };
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{}", text.trim_end()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to standard output"),
        _ => Ok(ExitCode::SUCCESS),
    }
}
