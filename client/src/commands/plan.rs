//! `kforge plan -f module.yaml --nodes nodes.yaml`: what the reconciler would create, offline.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kforge_reconcile::api::Module;
use kforge_reconcile::facts;
use kforge_reconcile::plan::{Facts, ImageFact, NodeFacts, Plan};
use serde_json::Value;

/// Arguments of `kforge plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML or JSON with Modules, and the ConfigMaps and Secrets they reference (repeatable; `-` reads stdin).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The cluster's Nodes: `kubectl get nodes -o yaml`, or Node documents.
    #[arg(long)]
    nodes: PathBuf,
    /// An image's digest, IMAGE=sha256:… (repeatable); other images count as missing unless --resolve.
    #[arg(long = "image", value_name = "IMAGE=DIGEST")]
    images: Vec<String>,
    /// Look the other images up in their registries (online).
    #[arg(long)]
    resolve: bool,
    /// Registry credentials (docker config.json form) for --resolve.
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Print JSON documents instead of YAML.
    #[arg(long)]
    json: bool,
}

/// Everything read from the files.
#[derive(Default)]
struct Inputs {
    modules: Vec<Module>,
    nodes: Vec<NodeFacts>,
    facts: Facts,
}

/// Runs `kforge plan`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut inputs = Inputs::default();
    for file in &args.files {
        read_objects(file, &mut inputs)?;
    }
    read_objects(&args.nodes, &mut inputs)?;
    if inputs.modules.is_empty() {
        anyhow::bail!("no Module in {}: pass the Module's YAML with -f", list(&args.files));
    }
    if inputs.nodes.is_empty() {
        anyhow::bail!("no Node in {}: pass `kubectl get nodes -o yaml` with --nodes", args.nodes.display());
    }
    let mut known = BTreeMap::new();
    for image in &args.images {
        let (reference, digest) = image.split_once('=').with_context(|| format!("--image {image:?}: expected IMAGE=sha256:…"))?;
        known.insert(reference.to_string(), digest.to_string());
    }
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let mut plan = kforge_reconcile::plan(&inputs.modules, &inputs.nodes, &inputs.facts, now.clone());
    if !plan.lookups.is_empty() {
        let registries = registries(args.auth_file.as_deref())?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
        for lookup in &plan.lookups {
            let (image, _) = &lookup.key;
            let fact = match known.get(image) {
                Some(digest) => ImageFact::Present { digest: digest.clone(), inputs_hash: None },
                None if args.resolve => match runtime.block_on(kforge_image::resolve_digest(image, &registries)) {
                    Ok(Some(digest)) => ImageFact::Present { digest, inputs_hash: None },
                    Ok(None) => ImageFact::Missing,
                    Err(e) => ImageFact::Failed { message: format!("{e:#}") },
                },
                None => ImageFact::Missing,
            };
            inputs.facts.images.insert(lookup.key.clone(), fact);
        }
        plan = kforge_reconcile::plan(&inputs.modules, &inputs.nodes, &inputs.facts, now);
    }
    print_plan(&plan, args.json)?;
    Ok(ExitCode::SUCCESS)
}

fn list(files: &[PathBuf]) -> String {
    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn registries(auth_file: Option<&Path>) -> anyhow::Result<kforge_image::RegistryOptions> {
    Ok(kforge_image::RegistryOptions { credentials: kforge_image::DockerConfig::load_or_environment(auth_file)?, ..Default::default() })
}

/// Reads every document of `path` (a `List`'s items too) into `inputs`.
fn read_objects(path: &Path, inputs: &mut Inputs) -> anyhow::Result<()> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).with_context(|| format!("{}: not YAML or JSON", path.display()))?;
    for doc in docs {
        add_object(doc, path, inputs)?;
    }
    Ok(())
}

fn add_object(doc: Value, path: &Path, inputs: &mut Inputs) -> anyhow::Result<()> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let what = || format!("{}: {kind} {name:?}", path.display());
    match kind.as_str() {
        "" if doc.is_null() => {}
        "List" | "NodeList" | "ModuleList" => {
            for item in doc.get("items").and_then(Value::as_array).cloned().unwrap_or_default() {
                add_object(item, path, inputs)?;
            }
        }
        "Module" => inputs.modules.push(serde_json::from_value(doc).with_context(what)?),
        "Node" => inputs.nodes.push(facts::node(&serde_json::from_value::<Node>(doc).with_context(what)?)),
        "ConfigMap" => {
            let cm: ConfigMap = serde_json::from_value(doc).with_context(what)?;
            inputs.facts.objects.insert(facts::key("ConfigMap", &cm.metadata), facts::config_map_data(&cm));
        }
        "Secret" => {
            let secret: Secret = serde_json::from_value(doc).with_context(what)?;
            inputs.facts.objects.insert(facts::key("Secret", &secret.metadata), facts::secret_data(&secret));
        }
        "DaemonSet" => {
            let ds: DaemonSet = serde_json::from_value(doc).with_context(what)?;
            if facts::managed(&ds.metadata) {
                let key = (ds.metadata.namespace.clone().unwrap_or_default(), ds.metadata.name.clone().unwrap_or_default());
                inputs.facts.daemonsets.insert(key, ds.into());
            }
        }
        other => anyhow::bail!("{}: kforge plan reads Modules, Nodes, ConfigMaps, Secrets and DaemonSets, not {other:?}", path.display()),
    }
    Ok(())
}

/// The DaemonSets to apply (new or changed) as documents on stdout; builds, look-ups, garbage and conditions on stderr.
fn print_plan(plan: &Plan, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut docs = Vec::new();
    for module in &plan.modules {
        for ds in &module.daemonsets {
            docs.push(if json { serde_json::to_string_pretty(ds)? } else { serde_saphyr::to_string(ds)? });
        }
    }
    let text = if json { docs.join("\n") } else { docs.iter().map(|d| format!("---\n{}", d.trim_end())).collect::<Vec<_>>().join("\n") };
    if let Err(e) = writeln!(out, "{text}")
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e).context("writing to standard output");
    }
    for module in &plan.modules {
        eprintln!("Module {}/{}:", module.namespace, module.name);
        if module.unchanged > 0 {
            eprintln!("  {} DaemonSet(s) already as wanted", module.unchanged);
        }
        for c in &module.status.conditions {
            eprintln!("  {}={} ({}) {}", c.type_, c.status, c.reason, c.message);
        }
        for k in &module.status.kernels {
            let digest = k.digest.as_deref().unwrap_or("-");
            eprintln!(
                "  kernel {}: {} {} {digest} on {} node(s){}",
                k.kernel,
                k.build,
                k.image,
                k.nodes_desired,
                k.message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
            );
        }
    }
    for build in &plan.builds {
        let wanted: Vec<String> = build.wanted_by.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
        eprintln!("would build {} for kernel {} ({}), wanted by {}", build.image, build.kernel, build.architecture, wanted.join(", "));
    }
    for (ns, name) in &plan.garbage {
        eprintln!("would delete DaemonSet {ns}/{name}");
    }
    Ok(())
}
