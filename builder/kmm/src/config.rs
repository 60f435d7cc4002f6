//! Where `DTK_AUTO` may come from, as configured (`[dtk]` in kforge's TOML).

use serde::Deserialize;

/// Configuration of `DTK_AUTO` resolution.
///
/// ```toml
/// [dtk]
/// openshift = true                         # try ImageStream openshift/driver-toolkit (default)
/// template = "registry.example/dtk:${KERNEL_FULL_VERSION}"
/// configmap = { namespace = "kforge", name = "dtk-images" }
///
/// [[dtk.mappings]]
/// literal = "6.1.0-56-amd64"
/// image = "registry.example/dtk-debian:6.1.0-56"
///
/// [[dtk.mappings]]
/// regexp = '^6\.1\.0-\d+-amd64$'
/// image = "registry.example/dtk-debian:${KERNEL_FULL_VERSION}"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtkConfig {
    /// Explicit kernel → image mappings, tried before the ConfigMap's.
    #[serde(default)]
    pub mappings: Vec<MappingConfig>,
    /// A ConfigMap whose keys are kernels and whose values are images, plus an optional key `regexps`.
    #[serde(default)]
    pub configmap: Option<ConfigMapRef>,
    /// An image template expanded with KMM's variables, used when the image exists.
    #[serde(default)]
    pub template: Option<String>,
    /// Try OpenShift's ImageStream `openshift/driver-toolkit` when a Kubernetes client exists.
    #[serde(default = "default_true")]
    pub openshift: bool,
}

fn default_true() -> bool {
    true
}

impl Default for DtkConfig {
    fn default() -> Self {
        DtkConfig { mappings: Vec::new(), configmap: None, template: None, openshift: true }
    }
}

/// One mapping: exactly one of `literal` (equal to the kernel) and `regexp` (unanchored RE2 syntax,
/// like KMM's kernelMappings), and the image (KMM variables allowed).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// A kernel, compared for equality.
    #[serde(default)]
    pub literal: Option<String>,
    /// A regular expression searched in the kernel.
    #[serde(default)]
    pub regexp: Option<String>,
    /// The DTK image for matching kernels.
    pub image: String,
}

/// A namespaced ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigMapRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for ConfigMapRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        dtk: DtkConfig,
    }

    #[test]
    fn reads_the_documented_toml() {
        let text = r#"
            [dtk]
            template = "registry.example/dtk:${KERNEL_FULL_VERSION}"
            configmap = { namespace = "kforge", name = "dtk-images" }

            [[dtk.mappings]]
            literal = "6.1.0-56-amd64"
            image = "registry.example/dtk-debian:6.1.0-56"

            [[dtk.mappings]]
            regexp = '^6\.1\.0-\d+-amd64$'
            image = "registry.example/dtk-debian:${KERNEL_FULL_VERSION}"
        "#;
        let c = toml::from_str::<File>(text).expect("parses").dtk;
        assert!(c.openshift, "openshift defaults to true");
        assert_eq!(c.template.as_deref(), Some("registry.example/dtk:${KERNEL_FULL_VERSION}"));
        assert_eq!(c.configmap, Some(ConfigMapRef { namespace: "kforge".into(), name: "dtk-images".into() }));
        assert_eq!(c.mappings.len(), 2);
        assert_eq!(c.mappings[1].regexp.as_deref(), Some(r"^6\.1\.0-\d+-amd64$"));
        assert_eq!(toml::from_str::<File>("[dtk]\nopenshift = false").expect("parses").dtk, DtkConfig { openshift: false, ..Default::default() });
        let e = toml::from_str::<File>("[dtk]\ntemplates = \"x\"").err().expect("unknown field refused");
        assert!(e.to_string().contains("templates"), "{e}");
    }
}
