//! `kforge build-sign`: one request, a signed image — KMM's build and sign sections for one kernel,
//! with `DTK_AUTO` resolved, the modules signed in-process and the signed image pushed once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use kforge_kmm::{KmmRequest, KmmSign, uses_dtk_auto};

use super::KeyArgs;
use super::build::{BuildArgs, run_with_progress, write_digest};
use super::dtk::DtkArgs;

/// Arguments of `kforge build-sign`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    build: BuildArgs,
    #[command(flatten)]
    dtk: DtkArgs,
    /// The kernel the module is for (node.status.nodeInfo.kernelVersion).
    #[arg(long)]
    kernel: String,
    /// The module's name (MOD_NAME).
    #[arg(long, default_value = "")]
    module_name: String,
    /// The Module's namespace (MOD_NAMESPACE).
    #[arg(long, default_value = "")]
    namespace: String,
    /// The signed image: registry/repo:tag (KMM's containerImage; ${KERNEL_FULL_VERSION}, ${MOD_NAME}… expanded).
    #[arg(long)]
    to: String,
    /// Sign this image instead of building one (KMM's sign.unsignedImage; variables expanded).
    #[arg(long)]
    unsigned_image: Option<String>,
    /// RSA private key, PEM (KMM's keySecret `key`); without --key the image is built but not signed.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Certificate, DER or PEM (KMM's certSecret `cert`).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Digest: sha256, sha384, sha512.
    #[arg(long, default_value = "sha256")]
    hash: String,
    /// Read the key's passphrase from this file instead of KBUILD_SIGN_PIN.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Files to sign (KMM's filesToSign, variables expanded); default every module under /opt/lib/modules.
    #[arg(long = "files", num_args = 1..)]
    files: Vec<String>,
    /// Rebuild even if the target exists with the same inputs.
    #[arg(long)]
    force: bool,
    /// Build attempts before a failure is reported.
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Also write the pushed digest reference to this file.
    #[arg(long)]
    digest_file: Option<PathBuf>,
}

/// Resolves, builds, signs, pushes; prints the digest reference.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let sign = match (&args.key, &args.cert) {
        (Some(key), Some(cert)) => {
            let keys = KeyArgs {
                key: Some(key.clone()),
                cert: Some(cert.clone()),
                hash: args.hash.clone(),
                key_id: false,
                passphrase_file: args.passphrase_file.clone(),
            };
            Some(KmmSign { signer: Arc::new(keys.signer()?), files_to_sign: args.files.clone(), unsigned_image: args.unsigned_image.clone(), audit: None })
        }
        (None, None) if args.unsigned_image.is_some() => anyhow::bail!("--unsigned-image needs --key and --cert: an unsigned image is only signed"),
        (None, None) => None,
        _ => anyhow::bail!("--key and --cert go together"),
    };
    let build = if args.build.file.is_some() { Some(args.build.kmm_build()?) } else { None };
    let registries = args.build.registries()?;
    let needs_dtk = build.as_ref().is_some_and(|b| uses_dtk_auto(&b.dockerfile) && !b.build_args.iter().any(|(k, _)| k == "DTK_AUTO"));
    let request = KmmRequest {
        kernel: args.kernel.clone(),
        module_name: args.module_name.clone(),
        namespace: args.namespace.clone(),
        image: args.to.clone(),
        build,
        sign,
        registries: registries.clone(),
        force: args.force,
        attempts: args.attempts,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let started = Instant::now();
    let (image, out) = runtime.block_on(async {
        let resolver = if needs_dtk { Some(args.dtk.resolver(registries).await?) } else { None };
        let prepared = request.prepare(resolver.as_ref()).await.map_err(crate::hints::kmm)?;
        if let Some(dtk) = &prepared.dtk {
            eprintln!("DTK_AUTO = {} ({}: {})", dtk.image, dtk.source, dtk.detail);
        }
        let request = prepared.request;
        let builder = match &request.source {
            kforge_kmm::Source::Dockerfile(_) => Some(args.build.builder().await?),
            kforge_kmm::Source::Unsigned(_) => None,
        };
        let deadline = args.build.deadline();
        let image = request.image.clone();
        let out = run_with_progress(&args.build.progress, |tx| async move {
            tokio::time::timeout(deadline, kforge_kmm::run(builder.as_ref(), &request, &tx))
                .await
                .unwrap_or_else(|_| Err(kforge_kmm::Error::Deadline { image: request.image.clone(), seconds: deadline.as_secs() }))
        })
        .await?;
        anyhow::Ok((image, out))
    })?;
    if out.reused {
        eprintln!("{image} is up to date ({})", out.digest);
    } else {
        eprintln!("{image}: done in {:.1}s", started.elapsed().as_secs_f64());
    }
    println!("{}", out.image);
    write_digest(args.digest_file.as_deref(), &out.image)
}
