//! `kforge sign-image`: sign the modules inside an image and push it with one extra layer.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{KeyArgs, human_bytes};
use crate::remote::{self, RemoteArgs};
use anyhow::Context;
use kforge_image::{DockerConfig, Event, ImageRef, RegistryOptions, Selection, SignImage, sign_image};

/// Arguments of `kforge sign-image`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    keys: KeyArgs,
    /// Image to sign: registry/repo:tag, registry/repo@sha256:…, or oci:DIR[:tag].
    #[arg(long)]
    from: String,
    /// Where to push the signed image: registry/repo:tag or oci:DIR[:tag].
    #[arg(long)]
    to: String,
    /// Files to sign: absolute paths in the image (KMM's filesToSign) or glob patterns.
    /// Default: every *.ko, *.ko.xz, *.ko.zst, *.ko.gz under /opt/lib/modules.
    #[arg(long = "files", num_args = 1..)]
    files: Vec<String>,
    /// Registry credentials in docker config.json / .dockerconfigjson form
    /// (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json).
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for the registries.
    #[arg(long)]
    registry_ca: Vec<PathBuf>,
    /// Talk plain HTTP to the registries (KMM's registryTLS.insecure).
    #[arg(long)]
    insecure: bool,
    /// Talk plain HTTP to this registry only (host[:port]; repeatable), e.g. a local source registry.
    #[arg(long, value_name = "HOST")]
    insecure_registry: Vec<String>,
    /// Do not verify the registries' TLS certificates (KMM's registryTLS.insecureSkipTLSVerify).
    #[arg(long)]
    insecure_skip_tls_verify: bool,
    /// Network timeout in seconds for each registry request.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Also write the pushed digest to this file.
    #[arg(long)]
    digest_file: Option<PathBuf>,
    /// gzip level of the new layer (1 fastest … 9 smallest).
    #[arg(long, default_value_t = kforge_image::DEFAULT_GZIP_LEVEL, value_parser = clap::value_parser!(u32).range(1..=9))]
    gzip_level: u32,
    /// Directory for temporary files (layers being copied, the new layer).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Loads the key, signs the image and prints the pushed digest.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let from: ImageRef = args.from.parse()?;
    let to: ImageRef = args.to.parse()?;
    if args.remote.remote.is_some() {
        args.keys.hash()?;
        return run_remote(&args);
    }
    let signer = Arc::new(args.keys.signer()?);

    let mut registries = RegistryOptions {
        credentials: DockerConfig::load_or_environment(args.auth_file.as_deref())?,
        timeout: Duration::from_secs(args.timeout.max(1)),
        ..RegistryOptions::default()
    };
    registries.tls.insecure = args.insecure;
    registries.tls.skip_verify = args.insecure_skip_tls_verify;
    for ca in &args.registry_ca {
        registries.add_ca_file(ca)?;
    }
    for host in &args.insecure_registry {
        registries.per_registry.insert(host.clone(), kforge_image::RegistryTls { insecure: true, ..Default::default() });
    }
    let selection = if args.files.is_empty() { Selection::Default } else { Selection::Files(args.files.clone()) };
    let req = SignImage {
        from,
        to: to.clone(),
        selection,
        signer,
        registries,
        work_dir: args.work_dir.clone(),
        audit: None,
        gzip_level: args.gzip_level,
        labels: Default::default(),
    };

    let verbose = std::io::stderr().is_terminal() || std::env::var_os("KFORGE_PROGRESS").is_some();
    let events: Arc<dyn Fn(Event) + Send + Sync> = Arc::new(move |e| report(&e, verbose));
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let result = runtime.block_on(sign_image(&req, events)).map_err(crate::hints::image)?;
    eprintln!(
        "signed {} file{} and pushed {} ({}) in {:.1}s, {} uploaded",
        result.signed.len(),
        if result.signed.len() == 1 { "" } else { "s" },
        to,
        result.media_type,
        started.elapsed().as_secs_f64(),
        human_bytes(result.uploaded),
    );
    println!("{}", result.digest);
    if let Some(path) = &args.digest_file {
        std::fs::write(path, format!("{}\n", result.digest)).with_context(|| format!("{}: cannot write digest", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the signing service to sign and push the image, printing its progress.
fn run_remote(args: &Args) -> anyhow::Result<ExitCode> {
    use kforge_proto::signer::v1::{SignImageRequest, sign_image_event::Event as E};
    let docker_config_json = match &args.auth_file {
        Some(f) => std::fs::read(f).with_context(|| format!("{}: cannot read credentials", f.display()))?,
        None => Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let started = Instant::now();
    let done = runtime.block_on(async {
        let mut client = remote::connect(&args.remote).await?;
        let key = remote::pick_key(&mut client, args.remote.key_name.as_deref()).await?;
        let req = SignImageRequest {
            from: args.from.clone(),
            to: args.to.clone(),
            key,
            hash: args.keys.hash.clone(),
            files: args.files.clone(),
            docker_config_json: docker_config_json.into(),
            insecure: args.insecure,
            insecure_skip_tls_verify: args.insecure_skip_tls_verify,
            key_id: args.keys.key_id,
        };
        let mut stream = client.sign_image(req).await.map_err(remote::status_error)?.into_inner();
        while let Some(ev) = stream.message().await.map_err(remote::status_error)? {
            match ev.event {
                Some(E::Progress(p)) => eprintln!("{p}"),
                Some(E::Signed(path)) => eprintln!("  signed {path}"),
                Some(E::Done(d)) => return Ok(d),
                None => {}
            }
        }
        anyhow::bail!("the signing service ended the stream without a result")
    })?;
    eprintln!("signed {} files and pushed {} in {:.1}s, {} uploaded", done.files.len(), args.to, started.elapsed().as_secs_f64(), human_bytes(done.uploaded));
    println!("{}", done.digest);
    if let Some(path) = &args.digest_file {
        std::fs::write(path, format!("{}\n", done.digest)).with_context(|| format!("{}: cannot write digest", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn report(e: &Event, verbose: bool) {
    match e {
        Event::Image { platform, layers } => eprintln!("reading {platform}: {layers} layer{}", if *layers == 1 { "" } else { "s" }),
        Event::Layer { digest, size } if verbose => eprintln!("  read layer {} ({})", short(digest), human_bytes(*size)),
        Event::Signed { path } if verbose => eprintln!("  signed {path}"),
        Event::Blob { digest, how, size } if verbose => eprintln!("  blob {} {how} ({})", short(digest), human_bytes(*size)),
        Event::Manifest { digest, tag } => match tag {
            Some(t) => eprintln!("pushed manifest {} as {t}", short(digest)),
            None => eprintln!("pushed manifest {}", short(digest)),
        },
        _ => {}
    }
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}
