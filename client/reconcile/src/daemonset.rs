//! The DaemonSets kforge applies: one module loader per (Module, kernel[, architecture]) and one
//! device plugin per Module, complete with labels, owner reference and a spec-hash annotation.
//!
//! Loader pods run `sleep infinity`; the postStart hook copies firmware and runs modprobe, the
//! preStop hook unloads, and the readiness probe checks `/proc/modules`. With
//! `modulesLoadingOrder` the modules are loaded one `modprobe` after the other in list order
//! (parameters and `args.load` go to `moduleName`'s call only) and unloaded with one
//! `modprobe -r` naming them in list order.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ExecAction, HostPathVolumeSource, Lifecycle, LifecycleHandler, LocalObjectReference, PodSpec, PodTemplateSpec, Probe,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::api::{DEFAULT_DIR_NAME, ModprobeSpec, Module};
use crate::labels;

/// Where the host's firmware directory is mounted in loader pods.
const FIRMWARE_DIR: &str = "/var/lib/firmware";
/// The kubelet's device-plugin directory.
const DEVICE_PLUGINS_DIR: &str = "/var/lib/kubelet/device-plugins";
/// Time for the preStop unload before the pod is killed.
const GRACE_SECONDS: i64 = 60;

/// `text` quoted for `/bin/sh`: left alone when made only of safe characters, else in single quotes.
pub(crate) fn shell_quote(text: &str) -> String {
    let safe = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '=' | ':' | ',' | '+' | '@' | '%'));
    if safe { text.to_string() } else { format!("'{}'", text.replace('\'', r"'\''")) }
}

fn join_quoted<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    words.into_iter().map(shell_quote).collect::<Vec<_>>().join(" ")
}

fn dir_name(m: &ModprobeSpec) -> &str {
    m.dir_name.as_deref().filter(|d| !d.is_empty()).unwrap_or(DEFAULT_DIR_NAME)
}

/// The postStart script: firmware copy, then modprobe.
pub(crate) fn load_script(m: &ModprobeSpec) -> String {
    let mut lines = vec!["set -e".to_string()];
    if let Some(fw) = m.firmware_path.as_deref().filter(|f| !f.is_empty()) {
        lines.push(format!("mkdir -p {FIRMWARE_DIR}"));
        lines.push(format!("cp -r {}/* {FIRMWARE_DIR}/", shell_quote(fw.trim_end_matches('/'))));
    }
    let dir = dir_name(m);
    let extra: &[String] = m.args.as_ref().map_or(&[], |a| &a.load);
    if let Some(raw) = m.raw_args.as_ref().filter(|r| !r.load.is_empty()) {
        lines.push(format!("modprobe {}", join_quoted(raw.load.iter().map(String::as_str))));
    } else if m.modules_loading_order.is_empty() {
        let words = ["-v", "-d", dir, &m.module_name].into_iter().chain(m.parameters.iter().map(String::as_str)).chain(extra.iter().map(String::as_str));
        lines.push(format!("modprobe {}", join_quoted(words)));
    } else {
        for name in &m.modules_loading_order {
            let own = *name == m.module_name;
            let words = ["-v", "-d", dir, name.as_str()]
                .into_iter()
                .chain(m.parameters.iter().map(String::as_str).filter(|_| own))
                .chain(extra.iter().map(String::as_str).filter(|_| own));
            lines.push(format!("modprobe {}", join_quoted(words)));
        }
    }
    lines.join("\n")
}

/// The preStop script: modprobe -r.
pub(crate) fn unload_script(m: &ModprobeSpec) -> String {
    if let Some(raw) = m.raw_args.as_ref().filter(|r| !r.unload.is_empty()) {
        return format!("modprobe {}", join_quoted(raw.unload.iter().map(String::as_str)));
    }
    let extra: &[String] = m.args.as_ref().map_or(&[], |a| &a.unload);
    let names: Vec<&str> = if m.modules_loading_order.is_empty() { vec![&m.module_name] } else { m.modules_loading_order.iter().map(String::as_str).collect() };
    let words = ["-r", "-v", "-d", dir_name(m)].into_iter().chain(extra.iter().map(String::as_str)).chain(names);
    format!("modprobe {}", join_quoted(words))
}

/// The readiness check: the module is listed in `/proc/modules` (where `-` reads `_`).
pub(crate) fn probe_script(m: &ModprobeSpec) -> String {
    let name = m.module_name.replace('-', "_");
    format!("grep -q {} /proc/modules", shell_quote(&format!("^{name} ")))
}

/// The owner reference to `module`.
pub(crate) fn owner_reference(module: &Module) -> OwnerReference {
    OwnerReference {
        api_version: "kmm.sigs.x-k8s.io/v1beta1".into(),
        kind: "Module".into(),
        name: module.name_any(),
        uid: module.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn exec(script: String) -> ExecAction {
    ExecAction { command: Some(vec!["/bin/sh".into(), "-c".into(), script]) }
}

fn host_path(name: &str, path: &str) -> Volume {
    Volume { name: name.into(), host_path: Some(HostPathVolumeSource { path: path.into(), type_: Some("Directory".into()) }), ..Default::default() }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount { name: name.into(), mount_path: path.into(), read_only: read_only.then_some(true), ..Default::default() }
}

/// Metadata and pod scaffolding shared by both kinds.
struct Frame<'a> {
    module: &'a Module,
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    node_selector: BTreeMap<String, String>,
    service_account: Option<String>,
}

impl Frame<'_> {
    /// The DaemonSet; `hash` goes into its spec-hash annotation (`None`: hash of the object itself).
    fn into_daemonset(self, container: Container, volumes: Vec<Volume>, grace: Option<i64>, hash: Option<String>) -> DaemonSet {
        let spec = &self.module.spec;
        let pod = PodSpec {
            containers: vec![container],
            node_selector: Some(self.node_selector),
            service_account_name: self.service_account,
            image_pull_secrets: spec.image_repo_secret.as_ref().map(|s| vec![LocalObjectReference { name: s.name.clone() }]),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            termination_grace_period_seconds: grace,
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..Default::default()
        };
        let mut ds = DaemonSet {
            metadata: ObjectMeta {
                name: Some(self.name),
                namespace: self.module.metadata.namespace.clone(),
                labels: Some(self.labels.clone()),
                owner_references: Some(vec![owner_reference(self.module)]),
                annotations: Some(self.annotations),
                ..Default::default()
            },
            spec: DaemonSetSpec {
                selector: LabelSelector { match_labels: Some(self.labels.clone()), ..Default::default() },
                template: PodTemplateSpec { metadata: Some(ObjectMeta { labels: Some(self.labels), ..Default::default() }), spec: Some(pod) },
                ..Default::default()
            },
            status: None,
        };
        let hash = hash.unwrap_or_else(|| spec_hash(&ds));
        if let Some(a) = ds.metadata.annotations.as_mut() {
            a.insert(labels::SPEC_HASH.into(), hash);
        }
        ds
    }
}

fn common_labels(module: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
        (labels::COMPONENT.to_string(), component.to_string()),
        (labels::MODULE_NAME.to_string(), labels::label_value(module)),
    ])
}

/// One loader DaemonSet's parameters. [`loader`] puts each of them into the object verbatim (no
/// transformation): [`LoaderHasher`] relies on it.
#[derive(Clone, Copy)]
pub(crate) struct Loader<'a> {
    /// The Module.
    pub module: &'a Module,
    /// The DaemonSet's name.
    pub name: &'a str,
    /// The short kernel hash (label).
    pub kernel_hash: &'a str,
    /// The node's kernel label value.
    pub kernel_label: &'a str,
    /// The architecture, when the kernel is split by architecture.
    pub arch: Option<&'a str>,
    /// The image as the Module names it (by tag, expanded).
    pub tag: &'a str,
    /// The digest the tag points at.
    pub digest: &'a str,
    /// The image pinned by digest.
    pub image: &'a str,
    /// The inputs hash, when kforge builds or signs the image.
    pub inputs_hash: Option<&'a str>,
}

/// Spec hashes of one Module's loaders without building them: sha256 over the JSON of a prototype
/// loader (built once, with placeholders for the per-kernel values) and over those values. As
/// [`loader`] places the values verbatim, equal hashes mean equal DaemonSets, and any change to the
/// Module or to how loaders are built changes the prototype.
#[derive(Default)]
pub(crate) struct LoaderHasher {
    /// Prototype digests by (split by architecture, has inputs hash).
    prototypes: [Option<[u8; 32]>; 4],
}

impl LoaderHasher {
    /// The spec hash of the loader `p` describes (`sha256:<hex>`).
    pub(crate) fn hash(&mut self, p: &Loader<'_>) -> String {
        let slot = usize::from(p.arch.is_some()) | usize::from(p.inputs_hash.is_some()) << 1;
        let prototype = *self.prototypes[slot].get_or_insert_with(|| {
            let placeholders = Loader {
                module: p.module,
                name: "\0name",
                kernel_hash: "\0kernel-hash",
                kernel_label: "\0kernel-label",
                arch: p.arch.map(|_| "\0arch"),
                tag: "\0tag",
                digest: "\0digest",
                image: "\0image",
                inputs_hash: p.inputs_hash.map(|_| "\0inputs-hash"),
            };
            let ds = build_loader(&placeholders, String::new());
            Sha256::digest(serde_json::to_vec(&ds).unwrap_or_default()).into()
        });
        let mut h = Sha256::new();
        h.update(prototype);
        for value in [p.name, p.kernel_hash, p.kernel_label, p.arch.unwrap_or_default(), p.tag, p.digest, p.image, p.inputs_hash.unwrap_or_default()] {
            h.update((value.len() as u64).to_le_bytes());
            h.update(value);
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

/// The loader DaemonSet, its spec-hash annotation set to `hash` (from [`LoaderHasher`]).
pub(crate) fn loader(p: &Loader<'_>, hash: String) -> DaemonSet {
    build_loader(p, hash)
}

fn build_loader(p: &Loader<'_>, hash: String) -> DaemonSet {
    let spec = &p.module.spec;
    let modprobe = &spec.module_loader.container.modprobe;
    let mut labels = common_labels(&p.module.name_any(), labels::LOADER);
    labels.insert(labels::KERNEL_HASH.into(), p.kernel_hash.to_string());
    let mut node_selector = spec.selector.clone();
    node_selector.insert(labels::KERNEL_FULL.into(), p.kernel_label.to_string());
    if let Some(arch) = p.arch {
        node_selector.insert(labels::ARCH.into(), arch.to_string());
    }
    let firmware = modprobe.firmware_path.as_deref().is_some_and(|f| !f.is_empty());
    let mut mounts = vec![mount("node-lib-modules", "/lib/modules", true)];
    let mut volumes = vec![host_path("node-lib-modules", "/lib/modules")];
    if firmware {
        mounts.push(mount("node-firmware", FIRMWARE_DIR, false));
        volumes.push(Volume {
            name: "node-firmware".into(),
            host_path: Some(HostPathVolumeSource { path: FIRMWARE_DIR.into(), type_: Some("DirectoryOrCreate".into()) }),
            ..Default::default()
        });
    }
    let container = Container {
        name: "module-loader".into(),
        image: Some(p.image.to_string()),
        image_pull_policy: spec.module_loader.container.image_pull_policy.clone(),
        command: Some(vec!["sleep".into(), "infinity".into()]),
        lifecycle: Some(Lifecycle {
            post_start: Some(LifecycleHandler { exec: Some(exec(load_script(modprobe))), ..Default::default() }),
            pre_stop: Some(LifecycleHandler { exec: Some(exec(unload_script(modprobe))), ..Default::default() }),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            exec: Some(exec(probe_script(modprobe))),
            initial_delay_seconds: Some(5),
            period_seconds: Some(10),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities { add: Some(vec!["SYS_MODULE".into()]), drop: None }),
            run_as_user: Some(0),
            privileged: Some(false),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    // What the image was and is: after a restart the planner trusts these until lookups answer.
    let mut annotations = BTreeMap::from([(labels::IMAGE.to_string(), p.tag.to_string()), (labels::IMAGE_DIGEST.to_string(), p.digest.to_string())]);
    if let Some(h) = p.inputs_hash {
        annotations.insert(labels::INPUTS_HASH.to_string(), h.to_string());
    }
    let frame = Frame {
        module: p.module,
        name: p.name.to_string(),
        labels,
        annotations,
        node_selector,
        service_account: spec.module_loader.service_account_name.clone(),
    };
    frame.into_daemonset(container, volumes, Some(GRACE_SECONDS), Some(hash))
}

/// The device-plugin DaemonSet, when the Module has one.
pub(crate) fn device_plugin(module: &Module, ready_label: &str) -> Option<DaemonSet> {
    let dp = module.spec.device_plugin.as_ref()?;
    let mut node_selector = module.spec.selector.clone();
    node_selector.insert(ready_label.to_string(), String::new());
    let mut mounts = dp.container.volume_mounts.clone();
    mounts.push(mount("kubelet-device-plugins", DEVICE_PLUGINS_DIR, false));
    let mut volumes = dp.volumes.clone();
    volumes.push(host_path("kubelet-device-plugins", DEVICE_PLUGINS_DIR));
    let container = Container {
        name: "device-plugin".into(),
        image: Some(dp.container.image.clone()),
        image_pull_policy: dp.container.image_pull_policy.clone(),
        args: (!dp.container.args.is_empty()).then(|| dp.container.args.clone()),
        env: (!dp.container.env.is_empty()).then(|| dp.container.env.clone()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let frame = Frame {
        module,
        name: labels::device_plugin_name(&module.name_any()),
        labels: common_labels(&module.name_any(), labels::DEVICE_PLUGIN),
        annotations: BTreeMap::new(),
        node_selector,
        service_account: dp.service_account_name.clone(),
    };
    Some(frame.into_daemonset(container, volumes, None, None))
}

/// sha256 of the DaemonSet's JSON without its spec-hash annotation (`sha256:<hex>`).
pub(crate) fn spec_hash(ds: &DaemonSet) -> String {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        let has = ds.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(labels::SPEC_HASH));
        let result = if has {
            let mut copy = ds.clone();
            if let Some(a) = copy.metadata.annotations.as_mut() {
                a.remove(labels::SPEC_HASH);
            }
            serde_json::to_writer(&mut *buf, &copy)
        } else {
            serde_json::to_writer(&mut *buf, ds)
        };
        // Serialising plain data into memory cannot fail; mark a failure distinctly anyway.
        if result.is_err() {
            buf.extend_from_slice(b"\0serialisation failed");
        }
        format!("sha256:{}", hex::encode(Sha256::digest(&buf[..])))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        for (input, want) in
            [("nvidia", "nvidia"), ("a=1", "a=1"), ("", "''"), ("x y", "'x y'"), ("$(id)", "'$(id)'"), ("it's", r"'it'\''s'"), ("a;b", "'a;b'"), ("*", "'*'")]
        {
            assert_eq!(shell_quote(input), want, "{input:?}");
        }
    }

    #[test]
    fn loader_hashes_are_equal_exactly_when_the_daemonsets_are() {
        let modules = [
            Module::test("ns", "m"),
            Module::test("ns", "m").tolerate("gpu"),
            Module::test("other", "m"),
            Module::test("ns", "m").modprobe(|m| m.parameters.push("x=1".into())),
        ];
        let mut cases = Vec::new();
        for (i, module) in modules.iter().enumerate() {
            for name in ["m-loader-a", "m-loader-b"] {
                for (kernel_hash, kernel_label) in [("a", "6.1.0-1"), ("b", "6.1.0-1"), ("a", "6.1.0-2")] {
                    for arch in [None, Some("amd64"), Some("arm64")] {
                        for image in ["reg/m@sha256:1", "reg/m@sha256:2"] {
                            for inputs_hash in [None, Some("h1"), Some("h2")] {
                                let p = Loader { module, name, kernel_hash, kernel_label, arch, tag: "reg/m:1", digest: &image[6..], image, inputs_hash };
                                cases.push((i, p));
                            }
                        }
                    }
                }
            }
        }
        let mut hashers: Vec<LoaderHasher> = modules.iter().map(|_| LoaderHasher::default()).collect();
        let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        for (i, p) in &cases {
            let hash = hashers[*i].hash(p);
            let ds = loader(p, hash.clone());
            assert_eq!(ds.metadata.annotations.as_ref().map(|a| &a[labels::SPEC_HASH]), Some(&hash));
            let json = serde_json::to_string(&ds).expect("json");
            // One hash per distinct object: no two different loaders share one.
            if let Some(other) = seen.insert(hash.clone(), json.clone()) {
                assert_eq!(other, json, "two loaders with hash {hash}");
            }
            // A fresh hasher (another pass) agrees.
            assert_eq!(LoaderHasher::default().hash(p), hash);
        }
        assert_eq!(seen.len(), cases.len(), "every case differs from the others, so every hash must too");
    }

    #[test]
    fn the_probe_uses_the_kernels_spelling() {
        let m = ModprobeSpec { module_name: "my-mod".into(), ..Default::default() };
        assert_eq!(probe_script(&m), "grep -q '^my_mod ' /proc/modules");
    }
}
