//! `kforge build-sign`: one request, a signed image — KMM's build and sign sections for one kernel,
//! with `DTK_AUTO` resolved, the modules signed in-process and the signed image pushed once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use kforge_builder::{BuildSign, Daemon, SignStep, build_and_sign};
use kforge_dtk::KernelVars;
use kforge_image::{RegistryOptions, Selection};

use super::KeyArgs;
use super::build::{BuildArgs, View, write_digest};
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
    let vars = KernelVars::new(&args.kernel, &args.module_name, &args.namespace);
    let image = vars.expand(&args.to).context("--to")?;
    let sign = match (&args.key, &args.cert) {
        (Some(key), Some(cert)) => {
            let keys = KeyArgs {
                key: Some(key.clone()),
                cert: Some(cert.clone()),
                hash: args.hash.clone(),
                key_id: false,
                passphrase_file: args.passphrase_file.clone(),
            };
            let files = args.files.iter().map(|f| vars.expand(f)).collect::<Result<Vec<_>, _>>().context("--files")?;
            Some(SignStep {
                signer: Arc::new(keys.signer()?),
                selection: if files.is_empty() { Selection::Default } else { Selection::Files(files) },
                audit: None,
            })
        }
        (None, None) => None,
        _ => anyhow::bail!("--key and --cert go together"),
    };
    let unsigned_image = args.unsigned_image.as_deref().map(|u| vars.expand(u)).transpose().context("--unsigned-image")?;
    let endpoint = args.build.endpoint()?;
    let credentials = args.build.credentials()?;
    let mut registries = RegistryOptions { credentials, ..Default::default() };
    registries.tls.insecure = args.build.insecure;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let started = Instant::now();
    let out = runtime.block_on(async {
        let build = if args.build.file.is_some() {
            // The user's arguments with variables expanded, then KMM's (which win, as in KMM); then DTK_AUTO.
            let mut spec = args.build.spec(&image, BTreeMap::new())?;
            for v in spec.build_args.values_mut() {
                *v = vars.expand(v)?;
            }
            spec.build_args.extend(vars.build_args());
            if spec.dockerfile.contains("DTK_AUTO") && !spec.build_args.contains_key("DTK_AUTO") {
                let resolved = args.dtk.resolver(registries.clone()).await?.resolve_for(&vars).await?;
                eprintln!("DTK_AUTO = {} ({}: {})", resolved.image, resolved.source, resolved.detail);
                spec.build_args.insert("DTK_AUTO".into(), resolved.image);
            }
            Some(spec)
        } else {
            None
        };
        let request = BuildSign { image: image.clone(), build, unsigned_image, sign, registries, force: args.force, attempts: args.attempts };
        let daemon = if request.build.is_some() { Some(Daemon::connect(&endpoint).await?) } else { None };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut view = View::new(&args.build.progress);
        let work = async {
            let result = tokio::time::timeout(args.build.deadline(), build_and_sign(daemon.as_ref(), &request, &tx))
                .await
                .unwrap_or_else(|_| Err(kforge_builder::Error::Deadline { image: image.clone(), seconds: args.build.deadline().as_secs() }));
            drop(tx);
            result
        };
        let show = async {
            while let Some(e) = rx.recv().await {
                view.show(&e);
            }
        };
        let (result, ()) = tokio::join!(work, show);
        view.finish();
        anyhow::Ok(result?)
    })?;
    if out.skipped {
        eprintln!("{image} is up to date ({})", out.digest);
    } else {
        eprintln!("{image}: done in {:.1}s", started.elapsed().as_secs_f64());
    }
    println!("{}", out.image);
    write_digest(args.digest_file.as_deref(), &out.image)
}
