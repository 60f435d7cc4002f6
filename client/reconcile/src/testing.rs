//! Chained builders for test Modules, nodes and facts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodSpec, PodStatus, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::*;
use crate::labels;
use crate::plan::{Facts, ImageFact, NodeFacts, ObjectKey, Plan};

/// A fixed time.
pub(crate) fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("time"))
}

/// A kernel mapping matching `literal`.
pub(crate) fn literal(kernel: &str, image: &str) -> KernelMapping {
    KernelMapping { literal: Some(kernel.into()), container_image: Some(image.into()).filter(|i: &String| !i.is_empty()), ..Default::default() }
}

/// A kernel mapping matching `regexp`.
pub(crate) fn regexp(re: &str, image: &str) -> KernelMapping {
    KernelMapping { regexp: Some(re.into()), container_image: Some(image.into()).filter(|i: &String| !i.is_empty()), ..Default::default() }
}

/// A build section with a Dockerfile ConfigMap.
pub(crate) fn build(configmap: &str) -> Build {
    Build { dockerfile_config_map: Some(LocalObjectReference { name: configmap.into() }), ..Default::default() }
}

/// A sign section with key and cert Secrets.
pub(crate) fn sign(key: &str, cert: &str) -> Sign {
    Sign {
        key_secret: Some(LocalObjectReference { name: key.into() }),
        cert_secret: Some(LocalObjectReference { name: cert.into() }),
        files_to_sign: vec!["/opt/lib/modules/${KERNEL_FULL_VERSION}/m.ko".into()],
        ..Default::default()
    }
}

impl Module {
    /// A Module `ns/name` loading module `name`, with no mapping yet.
    pub(crate) fn test(ns: &str, name: &str) -> Module {
        let mut m = Module::new(name, ModuleSpec::default());
        m.metadata.namespace = Some(ns.into());
        m.metadata.uid = Some(format!("uid-{name}"));
        m.metadata.generation = Some(1);
        m.spec.module_loader.container.modprobe.module_name = name.replace('-', "_");
        m
    }

    /// Adds a literal mapping.
    pub(crate) fn literal(self, kernel: &str, image: &str) -> Self {
        self.mapping(literal(kernel, image))
    }

    /// Adds a regexp mapping.
    pub(crate) fn regexp(self, re: &str, image: &str) -> Self {
        self.mapping(regexp(re, image))
    }

    /// Adds a mapping.
    pub(crate) fn mapping(mut self, m: KernelMapping) -> Self {
        self.spec.module_loader.container.kernel_mappings.push(m);
        self
    }

    /// Sets the container-level image.
    pub(crate) fn image(mut self, image: &str) -> Self {
        self.spec.module_loader.container.container_image = Some(image.into());
        self
    }

    /// Sets the container-level build.
    pub(crate) fn build(mut self, b: Build) -> Self {
        self.spec.module_loader.container.build = Some(b);
        self
    }

    /// Sets the container-level sign section.
    pub(crate) fn sign(mut self, s: Sign) -> Self {
        self.spec.module_loader.container.sign = Some(s);
        self
    }

    /// Adds a selector label.
    pub(crate) fn select(mut self, k: &str, v: &str) -> Self {
        self.spec.selector.insert(k.into(), v.into());
        self
    }

    /// Sets `imageRepoSecret`.
    pub(crate) fn pull_secret(mut self, name: &str) -> Self {
        self.spec.image_repo_secret = Some(LocalObjectReference { name: name.into() });
        self
    }

    /// Adds a toleration.
    pub(crate) fn tolerate(mut self, key: &str) -> Self {
        self.spec.tolerations.push(Toleration { key: Some(key.into()), operator: Some("Exists".into()), ..Default::default() });
        self
    }

    /// Sets a device plugin with `image`.
    pub(crate) fn device_plugin(mut self, image: &str) -> Self {
        self.spec.device_plugin = Some(DevicePluginSpec {
            container: DevicePluginContainerSpec { image: image.into(), ..Default::default() },
            service_account_name: Some("dp-sa".into()),
            ..Default::default()
        });
        self
    }

    /// Changes the modprobe section.
    pub(crate) fn modprobe(mut self, f: impl FnOnce(&mut ModprobeSpec)) -> Self {
        f(&mut self.spec.module_loader.container.modprobe);
        self
    }

    /// Any other change.
    pub(crate) fn with(mut self, f: impl FnOnce(&mut Module)) -> Self {
        f(&mut self);
        self
    }
}

impl NodeFacts {
    /// An amd64 node running `kernel`.
    pub(crate) fn test(name: &str, kernel: &str) -> NodeFacts {
        NodeFacts { name: name.into(), kernel: kernel.into(), architecture: "amd64".into(), ..Default::default() }
    }

    /// Adds a label.
    pub(crate) fn label(mut self, k: &str, v: &str) -> Self {
        self.labels = self.labels.with(k, v);
        self
    }

    /// Sets the architecture.
    pub(crate) fn arch(mut self, a: &str) -> Self {
        self.architecture = a.into();
        self
    }

    /// Marks `ns/module` loaded.
    pub(crate) fn loaded(mut self, id: &str) -> Self {
        self.loaded.insert(id.into());
        self
    }
}

impl Facts {
    /// `image` (amd64) exists with `digest`.
    pub(crate) fn present(mut self, image: &str, digest: &str) -> Self {
        self.images.insert((image.into(), "amd64".into()), ImageFact::Present { digest: digest.into(), inputs_hash: None });
        self
    }

    /// Any fact about `image` (amd64).
    pub(crate) fn image(mut self, image: &str, fact: ImageFact) -> Self {
        self.images.insert((image.into(), "amd64".into()), fact);
        self
    }

    /// A ConfigMap with a Dockerfile.
    pub(crate) fn dockerfile(self, ns: &str, name: &str, text: &str) -> Self {
        self.object("ConfigMap", ns, name, &[("dockerfile", text)])
    }

    /// A Secret with data.
    pub(crate) fn secret(self, ns: &str, name: &str, data: &[(&str, &str)]) -> Self {
        self.object("Secret", ns, name, data)
    }

    fn object(mut self, kind: &'static str, ns: &str, name: &str, data: &[(&str, &str)]) -> Self {
        let data: BTreeMap<String, Vec<u8>> = data.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        self.objects.insert(ObjectKey { kind, namespace: ns.into(), name: name.into() }, data);
        self
    }

    /// The plan's DaemonSets as observed ones (steady state), slimmed as the controller stores them.
    pub(crate) fn observed(mut self, plan: &Plan) -> Self {
        for m in &plan.modules {
            for ds in &m.daemonsets {
                // As the controller's store keeps them.
                let mut ds = ds.clone();
                crate::facts::slim_daemonset(&mut ds);
                self.daemonsets.insert((m.namespace.clone(), ds.metadata.name.clone().unwrap_or_default()), ds.into());
            }
        }
        self
    }
}

/// A loader pod `kmm/name` of DaemonSet `m-loader` on `node`, with its own Module label if `module`.
pub(crate) fn loader_pod(name: &str, node: &str, ready: bool, module: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("kmm".into()),
            labels: module.map(|m| [(labels::MODULE_NAME.to_string(), m.to_string())].into()),
            owner_references: Some(vec![OwnerReference { kind: "DaemonSet".into(), name: "m-loader".into(), ..Default::default() }]),
            ..Default::default()
        },
        spec: Some(PodSpec { node_name: Some(node.into()), ..Default::default() }),
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition { type_: "Ready".into(), status: if ready { "True" } else { "False" }.into(), ..Default::default() }]),
            ..Default::default()
        }),
    }
}
