//! KMM's `Module` (`kmm.sigs.x-k8s.io/v1beta1`) as Rust types, and the status kforge writes.
//!
//! Field names and defaults follow KMM's API so that a Module written for KMM applies unchanged.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Toleration, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The directory modprobe looks under when a Module does not say (`modprobe.dirName`).
pub const DEFAULT_DIR_NAME: &str = "/opt";

/// A set of kernel modules to load on the nodes `selector` picks, one image per kernel.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "Module",
    plural = "modules",
    doc = "KMM's Module: kernel modules loaded on the selected nodes, one image per kernel, built and signed by kforge when missing.",
    shortname = "mod",
    namespaced,
    status = "ModuleStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModuleSpec {
    /// How the module is loaded: the loader container and its kernel mappings.
    pub module_loader: ModuleLoaderSpec,
    /// An optional device plugin run where the module is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<DevicePluginSpec>,
    /// Pull secret for the DaemonSets; pull and push credentials for builds and signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repo_secret: Option<LocalObjectReference>,
    /// Labels a node must carry to get the module.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Tolerations for the loader and device-plugin pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// A reference to an object in the Module's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    /// The object's name.
    pub name: String,
}

/// `spec.moduleLoader`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLoaderSpec {
    /// The loader container.
    pub container: ModuleLoaderContainerSpec,
    /// The service account of the loader pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// `spec.moduleLoader.container`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLoaderContainerSpec {
    /// What modprobe loads and how.
    pub modprobe: ModprobeSpec,
    /// The loader container's pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// The image for every mapping that names none (KMM variables allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
    /// How to build the image when it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// How to sign the modules in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Sign>,
    /// How to reach the registry holding the image.
    #[serde(default, rename = "registryTLS", skip_serializing_if = "Option::is_none")]
    pub registry_tls: Option<TlsOptions>,
    /// Kernel → image mappings; the first that matches a node's kernel wins.
    #[serde(default)]
    pub kernel_mappings: Vec<KernelMapping>,
}

/// `modprobe`: the module and its arguments.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModprobeSpec {
    /// The module's name as modprobe knows it.
    pub module_name: String,
    /// The directory holding `lib/modules/<kernel>` in the image (default `/opt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir_name: Option<String>,
    /// A directory in the image whose files are copied to the host's `/var/lib/firmware`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_path: Option<String>,
    /// Module parameters (`name=value`) passed when loading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    /// Arguments added to modprobe's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<ModprobeArgs>,
    /// Arguments that replace modprobe's command line entirely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_args: Option<ModprobeArgs>,
    /// Modules to load in this order (and unload in reverse) instead of `moduleName` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules_loading_order: Vec<String>,
}

/// modprobe arguments for loading and unloading.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ModprobeArgs {
    /// Arguments when loading.
    #[serde(default)]
    pub load: Vec<String>,
    /// Arguments when unloading.
    #[serde(default)]
    pub unload: Vec<String>,
}

/// `build`: the image's Dockerfile and its inputs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    /// Build arguments (KMM variables allowed in values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_args: Vec<BuildArg>,
    /// Secrets whose keys every RUN sees under `/run/secrets/<secret>/<key>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<LocalObjectReference>,
    /// How to reach the base image's registry.
    #[serde(default, rename = "baseImageRegistryTLS", skip_serializing_if = "Option::is_none")]
    pub base_image_registry_tls: Option<TlsOptions>,
    /// The ConfigMap whose `dockerfile` key holds the Dockerfile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_config_map: Option<LocalObjectReference>,
}

/// One build argument.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct BuildArg {
    /// The argument's name.
    pub name: String,
    /// Its value.
    #[serde(default)]
    pub value: String,
}

/// `sign`: which files to sign with which key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sign {
    /// The image holding the unsigned modules when nothing is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned_image: Option<String>,
    /// The Secret holding the private key under `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<LocalObjectReference>,
    /// The Secret holding the certificate under `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret: Option<LocalObjectReference>,
    /// Paths of the modules in the image to sign.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_to_sign: Vec<String>,
}

/// How to reach a registry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsOptions {
    /// Plain HTTP.
    #[serde(default)]
    pub insecure: bool,
    /// TLS without verifying the registry's certificate.
    #[serde(default, rename = "insecureSkipTLSVerify")]
    pub insecure_skip_tls_verify: bool,
}

/// One kernel mapping: `literal` or `regexp`, with overrides of the container's settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelMapping {
    /// A kernel version matched exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    /// An unanchored RE2 regexp matched against the kernel version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regexp: Option<String>,
    /// The image for matching kernels (overrides the container's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
    /// Overrides the container's `build`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Overrides the container's `sign`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Sign>,
    /// Overrides the container's `registryTLS`.
    #[serde(default, rename = "registryTLS", skip_serializing_if = "Option::is_none")]
    pub registry_tls: Option<TlsOptions>,
}

/// `spec.devicePlugin`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevicePluginSpec {
    /// The device-plugin container.
    pub container: DevicePluginContainerSpec,
    /// Volumes of the device-plugin pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// The service account of the device-plugin pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// `spec.devicePlugin.container`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevicePluginContainerSpec {
    /// The device plugin's image.
    pub image: String,
    /// Its pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Its environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Its volume mounts (the kubelet's device-plugin directory is always mounted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

/// What kforge reports about a Module.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One entry per kernel the selected nodes run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<KernelStatus>,
    /// Loader counts across kernels, as KMM reports them.
    #[serde(default)]
    pub module_loader: DaemonSetCounts,
    /// Device-plugin counts, as KMM reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<DaemonSetCounts>,
}

/// Node counts of a Module's DaemonSets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetCounts {
    /// Nodes the selector matches.
    #[serde(default)]
    pub nodes_matching_selector_number: i32,
    /// Pods wanted.
    #[serde(default)]
    pub desired_number: i32,
    /// Pods available.
    #[serde(default)]
    pub available_number: i32,
}

/// The state of one kernel's image and loader.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelStatus {
    /// The kernel version (`node.status.nodeInfo.kernelVersion`).
    pub kernel: String,
    /// The nodes' architecture (`amd64`, `arm64`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    /// The image for it, variables expanded (empty when no mapping matched).
    #[serde(default)]
    pub image: String,
    /// The digest the loader is pinned to, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `Present`, `Building`, `Failed`, `Missing`, `NoMapping`, `LookingUp` or `Invalid`.
    pub build: String,
    /// Selected nodes running this kernel.
    #[serde(default)]
    pub nodes_desired: i32,
    /// Of those, nodes whose loader pod is available.
    #[serde(default)]
    pub nodes_available: i32,
    /// Why, when something is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kmm_module_parses_with_every_field() {
        let yaml = r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: kmm-ci, namespace: default}
spec:
  moduleLoader:
    container:
      modprobe:
        moduleName: kmm_ci_a
        dirName: /opt
        firmwarePath: /firmware
        parameters: [a=1]
        args: {load: [--x], unload: [--y]}
        modulesLoadingOrder: [kmm_ci_a, kmm_ci_b]
      imagePullPolicy: Always
      containerImage: registry.example/kmm:${KERNEL_FULL_VERSION}
      build:
        buildArgs: [{name: A, value: b}]
        secrets: [{name: s}]
        baseImageRegistryTLS: {insecure: true}
        dockerfileConfigMap: {name: df}
      sign:
        keySecret: {name: k}
        certSecret: {name: c}
        filesToSign: ["/opt/lib/modules/${KERNEL_FULL_VERSION}/kmm_ci_a.ko"]
      registryTLS: {insecureSkipTLSVerify: true}
      kernelMappings:
        - literal: 6.1.0-1-amd64
        - regexp: '^.+\.el8\..+$'
          containerImage: other:${KERNEL_XYZ}
    serviceAccountName: sa
  devicePlugin:
    container: {image: dp:1, args: [-v], env: [{name: E, value: v}], volumeMounts: [{name: v, mountPath: /v}]}
    volumes: [{name: v, emptyDir: {}}]
  imageRepoSecret: {name: pull}
  selector: {node-role.kubernetes.io/worker: ""}
  tolerations: [{key: k, operator: Exists}]
"#;
        let m: Module = serde_json::from_value(yaml_value(yaml)).expect("parses");
        let c = &m.spec.module_loader.container;
        assert_eq!(c.modprobe.modules_loading_order, ["kmm_ci_a", "kmm_ci_b"]);
        assert_eq!(c.kernel_mappings.len(), 2);
        assert_eq!(c.kernel_mappings[1].regexp.as_deref(), Some(r"^.+\.el8\..+$"));
        assert!(c.build.as_ref().and_then(|b| b.base_image_registry_tls.as_ref()).is_some_and(|t| t.insecure));
        assert_eq!(m.spec.device_plugin.as_ref().map(|d| d.volumes.len()), Some(1));
        assert_eq!(m.spec.image_repo_secret.as_ref().map(|s| s.name.as_str()), Some("pull"));
        assert_eq!(m.spec.tolerations.len(), 1);
        assert!(c.registry_tls.as_ref().is_some_and(|t| t.insecure_skip_tls_verify));
        let back = serde_json::to_value(&m).expect("serialises");
        assert!(back.pointer("/spec/moduleLoader/container/registryTLS").is_some());
        assert!(back.pointer("/spec/moduleLoader/container/build/baseImageRegistryTLS").is_some());
    }

    fn yaml_value(text: &str) -> serde_json::Value {
        serde_saphyr::from_str(text).expect("yaml")
    }
}
