//! Kernel mappings: which mapping serves a kernel, the effective sections after the mapping's
//! overrides, the referenced ConfigMaps and Secrets they need, and the expanded values per kernel.

use std::collections::{BTreeMap, HashMap};

use kforge_kmm::KernelVars;
use kforge_proto::builder::v1 as pb;
use regex::Regex;

use crate::api::{Build, Module, ModuleLoaderContainerSpec, Sign, TlsOptions};
use crate::inputs::InputsHasher;
use crate::plan::{Facts, ObjectKey};

const CONTAINER: &str = "spec.moduleLoader.container";

/// How one mapping matches kernels.
enum Matcher<'m> {
    Literal(&'m str),
    Regexp(Regex),
}

/// A Module's mappings, compiled once per plan.
pub(crate) struct Mappings<'m> {
    matchers: Vec<Matcher<'m>>,
}

impl<'m> Mappings<'m> {
    /// Compiles and checks the mappings; every problem is reported, naming its field. Regexps
    /// already compiled in this plan (by pattern text) are reused from `cache`.
    pub(crate) fn compile(container: &'m ModuleLoaderContainerSpec, cache: &mut HashMap<String, Result<Regex, String>>) -> Result<Self, Vec<String>> {
        if container.kernel_mappings.is_empty() {
            return Err(vec![format!("{CONTAINER}.kernelMappings is empty: add at least one mapping with a literal or a regexp")]);
        }
        let mut matchers = Vec::with_capacity(container.kernel_mappings.len());
        let mut problems = Vec::new();
        for (i, m) in container.kernel_mappings.iter().enumerate() {
            match (m.literal.as_deref(), m.regexp.as_deref()) {
                (Some(l), None) => matchers.push(Matcher::Literal(l)),
                (None, Some(r)) => {
                    let compiled = cache.entry(r.to_string()).or_insert_with(|| Regex::new(r).map_err(|e| e.to_string().replace('\n', " ")));
                    match compiled {
                        Ok(re) => matchers.push(Matcher::Regexp(re.clone())),
                        Err(e) => problems.push(format!("{CONTAINER}.kernelMappings[{i}].regexp {r:?} is not a valid RE2 regular expression: {e}")),
                    }
                }
                (None, None) => problems.push(format!("{CONTAINER}.kernelMappings[{i}] has neither literal nor regexp: set exactly one")),
                (Some(_), Some(_)) => problems.push(format!("{CONTAINER}.kernelMappings[{i}] has both literal and regexp: set exactly one")),
            }
        }
        if problems.is_empty() { Ok(Mappings { matchers }) } else { Err(problems) }
    }

    /// The index of the first mapping matching `kernel`.
    pub(crate) fn find(&self, kernel: &str) -> Option<usize> {
        self.matchers.iter().position(|m| match m {
            Matcher::Literal(l) => *l == kernel,
            Matcher::Regexp(re) => re.is_match(kernel),
        })
    }
}

/// The sections in effect for one mapping (a mapping's section replaces the container's whole).
#[derive(Debug, Clone)]
pub(crate) struct Sections<'m> {
    /// The image template.
    pub image: Option<&'m str>,
    /// The build section and its field path.
    pub build: Option<(&'m Build, String)>,
    /// The sign section and its field path.
    pub sign: Option<(&'m Sign, &'static str)>,
    /// Registry TLS.
    pub tls: Option<&'m TlsOptions>,
}

impl<'m> Sections<'m> {
    /// The effective sections of mapping `i`.
    pub(crate) fn of(container: &'m ModuleLoaderContainerSpec, i: usize) -> Sections<'m> {
        let Some(m) = container.kernel_mappings.get(i) else {
            return Sections { image: container.container_image.as_deref(), build: None, sign: None, tls: container.registry_tls.as_ref() };
        };
        Sections {
            image: m.container_image.as_deref().or(container.container_image.as_deref()),
            build: match &m.build {
                Some(b) => Some((b, format!("{CONTAINER}.kernelMappings[{i}].build"))),
                None => container.build.as_ref().map(|b| (b, format!("{CONTAINER}.build"))),
            },
            sign: m.sign.as_ref().map(|s| (s, "kernelMappings")).or(container.sign.as_ref().map(|s| (s, "container"))),
            tls: m.registry_tls.as_ref().or(container.registry_tls.as_ref()),
        }
    }

    /// Whether images for this mapping are built or signed by kforge.
    pub(crate) fn builds(&self) -> bool {
        self.build.is_some() || self.sign.is_some()
    }
}

/// The field path of a sign section.
fn sign_path(i: usize, origin: &str) -> String {
    if origin == "kernelMappings" { format!("{CONTAINER}.kernelMappings[{i}].sign") } else { format!("{CONTAINER}.sign") }
}

/// The referenced objects' contents one mapping needs, checked to exist.
#[derive(Debug, Clone, Default)]
pub(crate) struct Objects<'f> {
    /// The Dockerfile text.
    pub dockerfile: Option<&'f [u8]>,
    /// Every build secret's name and data.
    pub build_secrets: Vec<(&'f str, &'f BTreeMap<String, Vec<u8>>)>,
    /// The signing key (PEM) and certificate.
    pub key_cert: Option<(&'f [u8], &'f [u8])>,
    /// `.dockerconfigjson` of `imageRepoSecret`.
    pub docker_config: Option<&'f [u8]>,
    /// The inputs hash of the objects' contents (Dockerfile, build secrets, key, cert), computed
    /// once per mapping and folded into every kernel's inputs hash.
    pub digest: String,
}

fn object<'f>(facts: &'f Facts, kind: &'static str, namespace: &str, name: &str) -> Option<&'f BTreeMap<String, Vec<u8>>> {
    facts.objects.get(&ObjectKey { kind, namespace: namespace.to_string(), name: name.to_string() })
}

/// Looks up `kind`/`name` and its `key`, or says what to create.
fn object_key<'f>(facts: &'f Facts, field: &str, kind: &'static str, ns: &str, name: &str, key: &str) -> Result<&'f [u8], String> {
    match object(facts, kind, ns, name) {
        None => Err(format!("{field}: {kind} {name:?} not found: create {kind} {name} in namespace {ns} with key `{key}`")),
        Some(data) => data.get(key).map(Vec::as_slice).ok_or_else(|| format!("{field}: {kind} {name:?} in namespace {ns} has no key `{key}`: add it")),
    }
}

/// `imageRepoSecret`'s `.dockerconfigjson`, when the Module names one.
pub(crate) fn pull_secret<'f>(module: &Module, ns: &str, facts: &'f Facts) -> Result<Option<&'f [u8]>, String> {
    match &module.spec.image_repo_secret {
        None => Ok(None),
        Some(s) => object_key(facts, "spec.imageRepoSecret", "Secret", ns, &s.name, ".dockerconfigjson").map(Some),
    }
}

/// Checks mapping `i`'s sections and gathers the objects they reference.
pub(crate) fn gather<'f>(sections: &Sections<'f>, i: usize, module: &Module, ns: &str, facts: &'f Facts) -> Result<Objects<'f>, Vec<String>> {
    let mut problems = Vec::new();
    let mut out = Objects::default();
    if sections.image.is_none_or(str::is_empty) {
        problems.push(format!("{CONTAINER}.kernelMappings[{i}].containerImage: no image: set containerImage on the mapping or on {CONTAINER}"));
    }
    if let Some((build, path)) = &sections.build {
        match &build.dockerfile_config_map {
            None => problems.push(format!("{path}.dockerfileConfigMap is not set: name a ConfigMap holding the Dockerfile under key `dockerfile`")),
            Some(cm) => match object_key(facts, &format!("{path}.dockerfileConfigMap"), "ConfigMap", ns, &cm.name, "dockerfile") {
                Ok(d) => out.dockerfile = Some(d),
                Err(e) => problems.push(e),
            },
        }
        for (j, s) in build.secrets.iter().enumerate() {
            match object(facts, "Secret", ns, &s.name) {
                Some(data) => out.build_secrets.push((s.name.as_str(), data)),
                None => problems.push(format!("{path}.secrets[{j}]: Secret {:?} not found: create Secret {} in namespace {ns}", s.name, s.name)),
            }
        }
    }
    if let Some((sign, origin)) = &sections.sign {
        let path = sign_path(i, origin);
        let key = match &sign.key_secret {
            None => Err(format!("{path}.keySecret is not set: name a Secret holding the private key under key `key`")),
            Some(s) => object_key(facts, &format!("{path}.keySecret"), "Secret", ns, &s.name, "key"),
        };
        let cert = match &sign.cert_secret {
            None => Err(format!("{path}.certSecret is not set: name a Secret holding the certificate under key `cert`")),
            Some(s) => object_key(facts, &format!("{path}.certSecret"), "Secret", ns, &s.name, "cert"),
        };
        if sections.build.is_none() && sign.unsigned_image.as_deref().is_none_or(str::is_empty) {
            problems.push(format!("{path}.unsignedImage is not set: without a build section, name the image to sign"));
        }
        match (key, cert) {
            (Ok(k), Ok(c)) => out.key_cert = Some((k, c)),
            (k, c) => problems.extend(k.err().into_iter().chain(c.err())),
        }
    }
    if sections.builds() {
        match pull_secret(module, ns, facts) {
            Ok(d) => out.docker_config = d,
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut h = InputsHasher::new();
    h.field("dockerfile", out.dockerfile.unwrap_or_default());
    let secrets: Vec<&[u8]> = out
        .build_secrets
        .iter()
        .flat_map(|(name, data)| std::iter::once(name.as_bytes()).chain(data.iter().flat_map(|(k, v)| [k.as_bytes(), v.as_slice()])))
        .collect();
    h.list("build-secrets", secrets.into_iter());
    match out.key_cert {
        Some((key, cert)) => h.field("key", key).field("cert", cert),
        None => h.absent("key-cert"),
    };
    out.digest = h.finish();
    Ok(out)
}

/// One kernel's image and, when kforge builds or signs it, its expanded inputs.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// The image, expanded.
    pub image: String,
    /// The expanded build arguments, when there is a build.
    pub build_args: Vec<(String, String)>,
    /// The expanded files to sign and unsigned image, when there is a signature.
    pub files_to_sign: Vec<String>,
    /// `sign.unsignedImage` expanded (empty when there is a build).
    pub unsigned_image: String,
    /// The inputs hash, when kforge builds or signs.
    pub inputs_hash: Option<String>,
}

fn tls_flags(h: &mut InputsHasher, name: &str, tls: Option<&TlsOptions>) {
    match tls {
        None => h.absent(name),
        Some(t) => h.flag(name, t.insecure).flag(name, t.insecure_skip_tls_verify),
    };
}

/// Expands mapping sections for `kernel` and hashes the build inputs.
pub(crate) fn resolve(vars: &KernelVars, arch: &str, sections: &Sections<'_>, objects: &Objects<'_>) -> Result<Resolved, String> {
    let expand = |what: &str, text: &str| vars.expand(text).map_err(|e| format!("kernel {}: cannot expand {what} {text:?}: {e}", vars.kernel));
    let image = expand("containerImage", sections.image.unwrap_or_default())?;
    let mut r = Resolved { image, build_args: Vec::new(), files_to_sign: Vec::new(), unsigned_image: String::new(), inputs_hash: None };
    if !sections.builds() {
        return Ok(r);
    }
    let mut h = InputsHasher::new();
    h.field("kernel", vars.kernel.as_bytes()).field("architecture", arch.as_bytes()).field("image", r.image.as_bytes());
    match &sections.build {
        None => {
            h.absent("build");
        }
        Some((build, _)) => {
            for a in &build.build_args {
                r.build_args.push((a.name.clone(), expand("build argument", &a.value)?));
            }
            h.list("build-args", r.build_args.iter().flat_map(|(n, v)| [n.as_bytes(), v.as_bytes()]).collect::<Vec<_>>().into_iter());
            tls_flags(&mut h, "base-image-registry-tls", build.base_image_registry_tls.as_ref());
        }
    }
    match &sections.sign {
        None => {
            h.absent("sign");
        }
        Some((sign, _)) => {
            for f in &sign.files_to_sign {
                r.files_to_sign.push(expand("filesToSign", f)?);
            }
            if sections.build.is_none() {
                r.unsigned_image = expand("unsignedImage", sign.unsigned_image.as_deref().unwrap_or_default())?;
            }
            h.field("unsigned-image", r.unsigned_image.as_bytes());
            h.list("files-to-sign", r.files_to_sign.iter().map(String::as_bytes).collect::<Vec<_>>().into_iter());
        }
    }
    tls_flags(&mut h, "registry-tls", sections.tls);
    h.field("objects", objects.digest.as_bytes());
    r.inputs_hash = Some(h.finish());
    Ok(r)
}

fn pb_tls(tls: Option<&TlsOptions>) -> Option<pb::RegistryTls> {
    tls.map(|t| pb::RegistryTls { insecure: t.insecure, insecure_skip_tls_verify: t.insecure_skip_tls_verify })
}

/// The Builder request for one resolved kernel.
pub(crate) fn request(vars: &KernelVars, sections: &Sections<'_>, objects: &Objects<'_>, r: &Resolved) -> pb::BuildRequest {
    let build = sections.build.as_ref().map(|(b, _)| *b);
    pb::BuildRequest {
        image: r.image.clone(),
        dockerfile: String::from_utf8_lossy(objects.dockerfile.unwrap_or_default()).into_owned(),
        build_args: r.build_args.iter().map(|(name, value)| pb::BuildArg { name: name.clone(), value: value.clone() }).collect(),
        secrets: objects
            .build_secrets
            .iter()
            .flat_map(|(name, data)| data.iter().map(move |(k, v)| pb::BuildSecret { name: format!("{name}/{k}"), data: v.clone().into() }))
            .collect(),
        kernel: vars.kernel.clone(),
        module_name: vars.module_name.clone(),
        module_namespace: vars.namespace.clone(),
        docker_config_json: objects.docker_config.unwrap_or_default().to_vec().into(),
        base_image_registry_tls: pb_tls(build.and_then(|b| b.base_image_registry_tls.as_ref())),
        registry_tls: pb_tls(sections.tls),
        sign: sections.sign.as_ref().map(|_| {
            let (key, cert) = objects.key_cert.unwrap_or_default();
            pb::SignSpec {
                key_pem: key.to_vec().into(),
                cert: cert.to_vec().into(),
                files_to_sign: r.files_to_sign.clone(),
                unsigned_image: r.unsigned_image.clone(),
                ..Default::default()
            }
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{build, literal, regexp, sign};

    #[test]
    fn find_takes_the_first_match_and_compiles_once() {
        let m = Module::test("ns", "m").regexp("^6", "a").literal("6.1.0", "b").regexp("el9", "c");
        let maps = Mappings::compile(&m.spec.module_loader.container, &mut HashMap::new()).expect("valid");
        for (kernel, want) in [("6.1.0", Some(0)), ("5.14.0.el9", Some(2)), ("4.18.0", None), ("x6", None)] {
            assert_eq!(maps.find(kernel), want, "{kernel}");
        }
        let errors = Mappings::compile(&Module::test("ns", "m").regexp("(", "a").regexp(")", "b").spec.module_loader.container, &mut HashMap::new())
            .err()
            .expect("invalid");
        assert_eq!(errors.len(), 2, "every bad mapping is reported: {errors:?}");
    }

    #[test]
    fn sections_override_whole() {
        let mut mapping = literal("k", "");
        mapping.sign = Some(sign("k2", "c2"));
        let m = Module::test("ns", "m").image("img").build(build("df")).sign(sign("k1", "c1")).mapping(mapping).mapping(regexp(".", "own"));
        let c = &m.spec.module_loader.container;
        let s0 = Sections::of(c, 0);
        assert_eq!(s0.image, Some("img"));
        assert_eq!(s0.build.as_ref().map(|(_, p)| p.as_str()), Some("spec.moduleLoader.container.build"));
        assert_eq!(s0.sign.and_then(|(s, _)| s.key_secret.as_ref()).map(|k| k.name.as_str()), Some("k2"));
        let s1 = Sections::of(c, 1);
        assert_eq!(s1.image, Some("own"));
        assert_eq!(s1.sign.and_then(|(s, _)| s.key_secret.as_ref()).map(|k| k.name.as_str()), Some("k1"));
        assert!(s1.builds());
    }
}
