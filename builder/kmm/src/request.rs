//! KMM's build and sign sections for one kernel, turned into a [`BuildSign`] the same way for every
//! caller (the CLI, the Builder service, the reconciler): KMM's variables expanded, KMM's build
//! arguments injected (they win, as in KMM), `DTK_AUTO` resolved when the Dockerfile uses it, build
//! secrets mounted into every `RUN` at `/run/secrets/<id>` (as KMM's builds see them), and the files
//! to sign chosen.

use std::collections::BTreeMap;
use std::sync::Arc;

use kforge_builder::{BuildSpec, Credentials, InputFile};
use kforge_image::{RegistryOptions, Selection};
use kforge_signer::Signer;

use crate::error::{Error, Result};
use crate::pipeline::{BuildSign, SignStep, Source};
use crate::resolve::{Resolved, Resolver};
use crate::vars::KernelVars;

/// KMM's `build` section (plus what a Module's Secrets and ConfigMaps hold).
#[derive(Clone)]
pub struct KmmBuild {
    /// Dockerfile text (KMM's dockerfileConfigMap).
    pub dockerfile: String,
    /// Files of the build context.
    pub context: Vec<InputFile>,
    /// The caller's build arguments, in order (KMM's buildArgs); values may use KMM's variables.
    pub build_args: Vec<(String, String)>,
    /// Build secrets by id (KMM's secrets: `<secret>/<key>`, or a plain name); every `RUN` of the
    /// Dockerfile sees each at `/run/secrets/<id>`.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// Target stage.
    pub target: Option<String>,
    /// Registry credentials for base pulls and the push.
    pub credentials: Arc<dyn Credentials>,
    /// Push over plain HTTP (KMM's registryTLS.insecure).
    pub insecure: bool,
    /// Give RUN steps network access.
    pub network: bool,
    /// Ignore BuildKit's cache.
    pub no_cache: bool,
}

/// KMM's `sign` section, with the key already loaded.
#[derive(Clone)]
pub struct KmmSign {
    /// Key, certificate and digest.
    pub signer: Arc<Signer>,
    /// KMM's filesToSign (variables expanded here); empty signs every module under /opt/lib/modules.
    pub files_to_sign: Vec<String>,
    /// KMM's unsignedImage: sign this instead of building.
    pub unsigned_image: Option<String>,
    /// Called for every file signed (the signing service's audit).
    pub audit: Option<kforge_image::AuditHook>,
}

/// One kernel's worth of a KMM Module: what to build and sign, and where it goes.
#[derive(Clone)]
pub struct KmmRequest {
    /// The kernel (node.status.nodeInfo.kernelVersion); empty means no KMM variables at all.
    pub kernel: String,
    /// The Module's name (MOD_NAME).
    pub module_name: String,
    /// The Module's namespace (MOD_NAMESPACE).
    pub namespace: String,
    /// KMM's containerImage (variables allowed).
    pub image: String,
    /// Build from a Dockerfile.
    pub build: Option<KmmBuild>,
    /// Sign.
    pub sign: Option<KmmSign>,
    /// Registry credentials and TLS for existence checks, the unsigned image and the push.
    pub registries: RegistryOptions,
    /// Rebuild even if the target exists with the same inputs.
    pub force: bool,
    /// Build attempts.
    pub attempts: u32,
}

/// The request, ready to run, and how `DTK_AUTO` was resolved (if it was).
pub struct Prepared {
    /// What to run.
    pub request: BuildSign,
    /// `DTK_AUTO`, when kforge resolved it.
    pub dtk: Option<Resolved>,
}

/// Whether a Dockerfile refers to the `DTK_AUTO` build argument (`$DTK_AUTO`, `${DTK_AUTO}`,
/// `${DTK_AUTO:-…}`), comments aside.
pub fn uses_dtk_auto(dockerfile: &str) -> bool {
    const NAME: &str = "DTK_AUTO";
    dockerfile.lines().filter(|l| !l.trim_start().starts_with('#')).any(|line| {
        line.match_indices('$').any(|(at, _)| {
            let rest = &line[at + 1..];
            let (rest, braced) = match rest.strip_prefix('{') {
                Some(r) => (r, true),
                None => (rest, false),
            };
            let Some(after) = rest.strip_prefix(NAME) else { return false };
            match after.chars().next() {
                None => !braced,
                Some(c) if braced => c == '}' || c == ':',
                Some(c) => !(c.is_ascii_alphanumeric() || c == '_'),
            }
        })
    })
}

impl KmmRequest {
    /// Expands, injects and resolves: the [`BuildSign`] every caller runs. `dtk` resolves
    /// `DTK_AUTO` when the Dockerfile uses it and the caller did not pass it.
    pub async fn prepare(self, dtk: Option<&Resolver>) -> Result<Prepared> {
        let vars = (!self.kernel.is_empty()).then(|| KernelVars::new(&self.kernel, &self.module_name, &self.namespace));
        let expand = |field: &str, text: &str| -> Result<String> {
            match &vars {
                Some(v) => v.expand(text).map_err(|e| e.in_field(field)),
                None => Ok(text.to_string()),
            }
        };
        let image = expand("containerImage", &self.image)?;
        let mut resolved = None;
        let source = match (&self.build, self.sign.as_ref().and_then(|s| s.unsigned_image.as_ref())) {
            // As in KMM: a build section wins; unsignedImage is signed only when nothing is built.
            (Some(build), _) => {
                let mut args = BTreeMap::new();
                for (name, value) in &build.build_args {
                    args.insert(name.clone(), expand(&format!("build arg {name}"), value)?);
                }
                match &vars {
                    Some(v) => args.extend(v.build_args()),
                    None => {
                        for (name, value) in [("MOD_NAME", &self.module_name), ("MOD_NAMESPACE", &self.namespace)] {
                            if !value.is_empty() {
                                args.insert(name.to_string(), value.clone());
                            }
                        }
                    }
                }
                if uses_dtk_auto(&build.dockerfile) && !args.contains_key("DTK_AUTO") {
                    // Refused before anything starts: never FROM an empty DTK_AUTO.
                    let (resolver, v) = match (dtk, &vars) {
                        (_, None) => return Err(Error::DtkUnconfigured { reason: "the request names no kernel" }),
                        (None, _) => return Err(Error::DtkUnconfigured { reason: "no DTK source is configured" }),
                        (Some(r), Some(v)) => (r, v),
                    };
                    let r = resolver.resolve_for(v).await?;
                    tracing::info!(kernel = %self.kernel, dtk = %r.image, source = %r.source, "DTK_AUTO resolved");
                    args.insert("DTK_AUTO".into(), r.image.clone());
                    resolved = Some(r);
                }
                // As in KMM, every RUN sees the secrets at /run/secrets/<id> without a --mount flag.
                // The rewritten Dockerfile is what is built and what the inputs hash covers.
                let dockerfile = if build.secrets.is_empty() {
                    build.dockerfile.clone()
                } else {
                    crate::dockerfile::mount_secrets(&build.dockerfile, build.secrets.keys().map(String::as_str))?
                };
                Source::Dockerfile(BuildSpec {
                    image: image.clone(),
                    dockerfile,
                    context: build.context.clone(),
                    build_args: args,
                    target: build.target.clone(),
                    secrets: build.secrets.clone(),
                    credentials: build.credentials.clone(),
                    insecure_registry: build.insecure,
                    network: build.network,
                    no_cache: build.no_cache,
                    labels: BTreeMap::new(),
                })
            }
            (None, Some(unsigned)) => Source::Unsigned(expand("sign.unsignedImage", unsigned)?),
            (None, None) => return Err(Error::Request("nothing to do: give a Dockerfile to build or an unsigned image to sign".into())),
        };
        let sign = match self.sign {
            Some(s) => {
                let files = s.files_to_sign.iter().map(|f| expand("filesToSign", f)).collect::<Result<Vec<_>>>()?;
                Some(SignStep { signer: s.signer, selection: if files.is_empty() { Selection::Default } else { Selection::Files(files) }, audit: s.audit })
            }
            None => None,
        };
        let request = BuildSign { image, source, sign, registries: self.registries, force: self.force, attempts: self.attempts };
        Ok(Prepared { request, dtk: resolved })
    }
}

/// Registry credentials from a Docker config (an auth file or a pull secret), handed to BuildKit.
#[derive(Debug, Clone, Default)]
pub struct DockerCredentials(pub kforge_image::DockerConfig);

impl Credentials for DockerCredentials {
    fn lookup(&self, host: &str) -> Option<(String, String)> {
        match self.0.auth_for(host) {
            kforge_image::RegistryAuth::Basic(user, password) => Some((user, password)),
            // An identity token goes with no username.
            kforge_image::RegistryAuth::Bearer(token) => Some((String::new(), token)),
            kforge_image::RegistryAuth::Anonymous => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dockerfile: &str, args: &[(&str, &str)]) -> KmmRequest {
        KmmRequest {
            kernel: "6.1.0-56-amd64".into(),
            module_name: "hello".into(),
            namespace: "kmm".into(),
            image: "r.example/${MOD_NAME}:${KERNEL_FULL_VERSION}".into(),
            build: Some(KmmBuild {
                dockerfile: dockerfile.into(),
                context: vec![],
                build_args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                secrets: BTreeMap::new(),
                target: None,
                credentials: Arc::new(kforge_builder::Anonymous),
                insecure: false,
                network: false,
                no_cache: false,
            }),
            sign: None,
            registries: RegistryOptions::default(),
            force: false,
            attempts: 1,
        }
    }

    #[tokio::test]
    async fn kmm_arguments_are_injected_and_win_and_variables_expand() {
        let req = request("FROM a\n", &[("MOD_NAME", "override"), ("DTK_AUTO", "r/dtk@sha256:00"), ("SRC", "/src/${KERNEL_XYZ}/${MOD_NAME}")]);
        let prepared = req.prepare(None).await.expect("prepares");
        assert_eq!(prepared.request.image, "r.example/hello:6.1.0-56-amd64");
        let Source::Dockerfile(spec) = &prepared.request.source else { panic!("a build") };
        let args = &spec.build_args;
        assert_eq!(args["KERNEL_FULL_VERSION"], "6.1.0-56-amd64");
        assert_eq!(args["KERNEL_VERSION"], "6.1.0-56-amd64");
        assert_eq!(args["MOD_NAMESPACE"], "kmm");
        assert_eq!(args["MOD_NAME"], "hello", "KMM's injected value wins");
        assert_eq!(args["SRC"], "/src/6.1.0/hello");
        assert_eq!(args["DTK_AUTO"], "r/dtk@sha256:00", "a given DTK_AUTO is used as is");
    }

    #[tokio::test]
    async fn dtk_auto_without_a_source_is_refused_naming_why() {
        let e = request("ARG DTK_AUTO\nFROM ${DTK_AUTO}\n", &[]).prepare(None).await.err().expect("refused");
        assert!(matches!(e, Error::DtkUnconfigured { .. }), "{e}");
        let mut no_kernel = request("FROM $DTK_AUTO\n", &[]);
        no_kernel.kernel.clear();
        no_kernel.image = "r.example/x:1".into();
        assert!(no_kernel.prepare(None).await.err().expect("refused").to_string().contains("names no kernel"));
    }

    #[tokio::test]
    async fn a_bad_template_names_the_field() {
        let e = request("FROM a\n", &[("SRC", "${KERNEL_XYZ")]).prepare(None).await.err().expect("refused");
        assert!(e.to_string().contains("build arg SRC"), "{e}");
    }

    #[tokio::test]
    async fn secrets_are_mounted_into_every_run_and_hashed_as_built() {
        let mut req = request("FROM a\nRUN make\n", &[]);
        let plain = match req.clone().prepare(None).await.expect("prepares").request.source {
            Source::Dockerfile(spec) => spec,
            Source::Unsigned(_) => panic!("a build"),
        };
        assert_eq!(plain.dockerfile, "FROM a\nRUN make\n", "no secrets, no change");
        if let Some(b) = req.build.as_mut() {
            b.secrets.insert("mysecret/token".into(), b"s3cret".to_vec());
        }
        let Source::Dockerfile(spec) = req.clone().prepare(None).await.expect("prepares").request.source else { panic!("a build") };
        assert_eq!(spec.dockerfile, "FROM a\nRUN --mount=type=secret,id=mysecret/token,target=/run/secrets/mysecret/token make\n");
        assert_ne!(spec.inputs_hash(), plain.inputs_hash());

        if let Some(b) = req.build.as_mut() {
            b.secrets.insert("../x".into(), vec![]);
        }
        let e = req.prepare(None).await.err().expect("refused");
        assert!(matches!(&e, Error::SecretId { id, .. } if id == "../x"), "{e}");
    }

    #[test]
    fn dtk_auto_is_recognised_where_it_is_used() {
        assert!(uses_dtk_auto("ARG DTK_AUTO\nFROM ${DTK_AUTO} AS builder\n"));
        assert!(uses_dtk_auto("FROM $DTK_AUTO\n"));
        assert!(uses_dtk_auto("FROM ${DTK_AUTO:-quay.io/x/dtk:1}\n"));
        assert!(!uses_dtk_auto("# FROM ${DTK_AUTO}\nFROM debian:12\n"), "a comment does not count");
        assert!(!uses_dtk_auto("FROM ${DTK_AUTOMATIC}\n"));
        assert!(!uses_dtk_auto("RUN echo DTK_AUTO\n"), "the word alone is not a use");
    }
}
