//! `kforge dtk resolve KERNEL`: how `DTK_AUTO` resolves for a kernel, and the DTK options shared
//! with `kforge build-sign`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use kforge_image::RegistryOptions;
use kforge_kmm::{DtkConfig, KernelVars, MappingConfig, RegistryLookup, Resolver};

/// Where `DTK_AUTO` may come from.
#[derive(Debug, clap::Args)]
pub struct DtkArgs {
    /// A TOML file with a [dtk] table (mappings, configmap, template, openshift), as in kforge.toml.
    #[arg(long)]
    dtk_config: Option<PathBuf>,
    /// A kernel → image mapping, KERNEL=IMAGE (repeatable; tried before the file's).
    #[arg(long = "dtk-map", value_name = "KERNEL=IMAGE")]
    dtk_map: Vec<String>,
    /// An image template, e.g. registry.example/dtk:${KERNEL_FULL_VERSION}, used when that image exists.
    #[arg(long)]
    dtk_template: Option<String>,
    /// Ask the Kubernetes API (KUBECONFIG or in-cluster) for OpenShift's ImageStream and the mapping ConfigMap.
    #[arg(long)]
    kube: bool,
}

impl DtkArgs {
    /// The configuration these options describe.
    fn config(&self) -> anyhow::Result<DtkConfig> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            dtk: Option<DtkConfig>,
        }
        let mut config = match &self.dtk_config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                let file: File = toml::from_str(&text).with_context(|| format!("{}: not a valid [dtk] configuration", path.display()))?;
                file.dtk.with_context(|| format!("{}: no [dtk] table", path.display()))?
            }
            None => DtkConfig::default(),
        };
        let mut maps = Vec::new();
        for m in &self.dtk_map {
            let (kernel, image) = m.split_once('=').with_context(|| format!("--dtk-map {m:?}: expected KERNEL=IMAGE"))?;
            maps.push(MappingConfig { literal: Some(kernel.to_string()), regexp: None, image: image.to_string() });
        }
        maps.append(&mut config.mappings);
        config.mappings = maps;
        if let Some(t) = &self.dtk_template {
            config.template = Some(t.clone());
        }
        Ok(config)
    }

    /// A resolver using these options and `registries` for digests.
    pub async fn resolver(&self, registries: RegistryOptions) -> anyhow::Result<Resolver> {
        let client =
            if self.kube { Some(kube::Client::try_default().await.context("cannot reach the Kubernetes API (KUBECONFIG or in-cluster)")?) } else { None };
        Ok(Resolver::new(self.config()?, client, Arc::new(RegistryLookup::new(registries)))?)
    }
}

/// Arguments of `kforge dtk`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Show the Driver Toolkit image DTK_AUTO resolves to for a kernel (always a digest).
    Resolve {
        /// The kernel (node.status.nodeInfo.kernelVersion).
        kernel: String,
        #[command(flatten)]
        dtk: DtkArgs,
        /// Registry credentials (docker config.json form) for the digest look-ups.
        #[arg(long)]
        auth_file: Option<PathBuf>,
        /// Plain HTTP to the registries (loopback registries always are).
        #[arg(long)]
        insecure: bool,
    },
}

/// Runs `kforge dtk …`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Command::Resolve { kernel, dtk, auth_file, insecure } = args.command;
    let mut registries = RegistryOptions { credentials: kforge_image::DockerConfig::load_or_environment(auth_file.as_deref())?, ..Default::default() };
    registries.tls.insecure = insecure;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let resolved = runtime.block_on(async { anyhow::Ok(dtk.resolver(registries).await?.resolve_for(&KernelVars::kernel_only(&kernel)).await?) })?;
    eprintln!("{} ({})", resolved.source, resolved.detail);
    println!("{}", resolved.image);
    Ok(ExitCode::SUCCESS)
}
