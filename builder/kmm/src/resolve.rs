//! `DTK_AUTO`: the Driver Toolkit image for a kernel, pinned to a digest.
//!
//! Sources, first that applies: (1) OpenShift's ImageStream `openshift/driver-toolkit` (tag = RHCOS
//! version of the Nodes running the kernel); (2) explicit mappings, the configuration's then the
//! ConfigMap's; (3) a template, if the image it names exists.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;

use crate::config::DtkConfig;
use crate::error::{Error, Result};
use crate::kubeapi::get_opt;
use crate::lookup::DigestLookup;
use crate::mapping::{Entry, Mappings};
use crate::openshift::{self, OBJECT, Outcome};
use crate::reference::{pinned, with_digest};
use crate::vars::KernelVars;

/// Which source gave the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// OpenShift's ImageStream `openshift/driver-toolkit`.
    ImageStream,
    /// A mapping from the configuration or the ConfigMap.
    Mapping,
    /// The configured template.
    Template,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::ImageStream => "imagestream",
            Source::Mapping => "mapping",
            Source::Template => "template",
        })
    }
}

/// A resolved `DTK_AUTO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Always a digest reference: `registry/repo@sha256:…`.
    pub image: String,
    /// Where it came from.
    pub source: Source,
    /// How it was found (tag, mapping, template), for logs and `kforge dtk resolve`.
    pub detail: String,
}

/// Resolves `DTK_AUTO` for kernels.
pub struct Resolver {
    config: DtkConfig,
    mappings: Mappings,
    client: Option<Client>,
    lookup: Arc<dyn DigestLookup>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver").field("config", &self.config).field("kubernetes", &self.client.is_some()).finish_non_exhaustive()
    }
}

const MAPPING: &str = "mapping";
const NO_MATCH: &str = "no literal or regexp matches";
const NO_API: &str = "skipped (no Kubernetes API)";

impl Resolver {
    /// A resolver; `client` is the Kubernetes API if there is one. Mappings and the template are checked
    /// here (regexps compile, braces close).
    pub fn new(config: DtkConfig, client: Option<Client>, lookup: Arc<dyn DigestLookup>) -> Result<Self> {
        let mappings = Mappings::from_config(&config.mappings)?;
        if let Some(template) = &config.template {
            KernelVars::kernel_only("0.0.0").expand(template)?;
        }
        Ok(Resolver { config, mappings, client, lookup })
    }

    /// The configuration in use.
    pub fn config(&self) -> &DtkConfig {
        &self.config
    }

    /// `DTK_AUTO` for `kernel` (`MOD_NAME` and `MOD_NAMESPACE` empty in templates).
    pub async fn resolve(&self, kernel: &str) -> Result<Resolved> {
        self.resolve_for(&KernelVars::kernel_only(kernel)).await
    }

    /// `DTK_AUTO` for the kernel and Module in `vars`.
    #[tracing::instrument(name = "dtk_resolve", skip_all, fields(kernel = %vars.kernel))]
    pub async fn resolve_for(&self, vars: &KernelVars) -> Result<Resolved> {
        let kernel = vars.kernel.as_str();
        let mut tried = Vec::new();

        // (1) OpenShift.
        match (&self.client, self.config.openshift) {
            (_, false) => tried.push(format!("{OBJECT}: disabled (openshift = false)")),
            (None, true) => tried.push(format!("{OBJECT}: {NO_API}")),
            (Some(client), true) => match openshift::resolve(client, kernel, self.lookup.as_ref()).await? {
                Outcome::Found { image, detail } => return Ok(found(image, Source::ImageStream, detail)),
                Outcome::Skipped(why) => tried.push(why),
            },
        }

        // (2) Mappings: configuration, then ConfigMap.
        if !self.mappings.is_empty() {
            match self.mappings.find(kernel) {
                Some(entry) => return self.mapped(entry, vars).await,
                None => {
                    let n = self.mappings.len();
                    tried.push(format!("{MAPPING} (configuration, {n} {}): {NO_MATCH}", if n == 1 { "entry" } else { "entries" }));
                }
            }
        }
        if let Some(cm) = &self.config.configmap {
            let what = format!("{MAPPING} (ConfigMap {cm})");
            match &self.client {
                None => tried.push(format!("{what}: {NO_API}")),
                Some(client) => {
                    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cm.namespace);
                    match get_opt(&api, &cm.name, || format!("get ConfigMap {cm}")).await? {
                        None => tried.push(format!("{what}: ConfigMap not found")),
                        Some(map) => {
                            let mappings = Mappings::from_configmap(cm, &map.data.unwrap_or_default())?;
                            match mappings.find(kernel) {
                                Some(entry) => return self.mapped(entry, vars).await,
                                None => tried.push(format!("{what}: {NO_MATCH}")),
                            }
                        }
                    }
                }
            }
        }
        if self.mappings.is_empty() && self.config.configmap.is_none() {
            tried.push(format!("{MAPPING}: none configured"));
        }

        // (3) Template.
        match &self.config.template {
            None => tried.push("template: none configured".to_string()),
            Some(template) => {
                let image = vars.expand(template)?;
                let origin = format!("template {template}");
                match self.lookup.digest(&image).await {
                    Ok(Some(digest)) => {
                        let pinned = with_digest(&image, &digest, &origin)?;
                        return Ok(found(pinned, Source::Template, format!("{origin} → {image}")));
                    }
                    Ok(None) => tried.push(format!("template {image}: image does not exist")),
                    Err(source) => return Err(Error::Registry { image, source }),
                }
            }
        }

        tracing::warn!(tried = ?tried, "no DTK image");
        Err(Error::NothingApplies { kernel: kernel.to_string(), tried })
    }

    async fn mapped(&self, entry: &Entry, vars: &KernelVars) -> Result<Resolved> {
        let image = vars.expand(&entry.image)?;
        let detail = format!("{MAPPING} {}", entry.origin);
        if let Some(pinned) = pinned(&image, &entry.origin)? {
            return Ok(found(pinned, Source::Mapping, detail));
        }
        match self.lookup.digest(&image).await {
            Ok(Some(digest)) => Ok(found(with_digest(&image, &digest, &entry.origin)?, Source::Mapping, format!("{detail} → {image}"))),
            Ok(None) => Err(Error::MappingImageMissing { mapping: entry.origin.clone(), kernel: vars.kernel.clone(), image }),
            Err(source) => Err(Error::Registry { image, source }),
        }
    }
}

fn found(image: String, source: Source, detail: String) -> Resolved {
    tracing::info!(%image, %source, %detail, "DTK image resolved");
    Resolved { image, source, detail }
}
