//! The planner's inputs from Kubernetes objects, the same for the controller's stores and for
//! `kforge plan`'s files.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::labels;
use crate::plan::{NodeFacts, ObjectKey};

/// A node's labels (borrowed), kernel and architecture (`loaded` is left empty: it comes from
/// loader pods).
pub fn node(node: &Node) -> NodeFacts<'_> {
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    NodeFacts {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.as_ref().map_or_else(Default::default, Cow::Borrowed),
        kernel: info.map(|i| i.kernel_version.clone()).unwrap_or_default(),
        architecture: info.map(|i| i.architecture.clone()).unwrap_or_default(),
        loaded: Default::default(),
    }
}

/// The key of a ConfigMap or Secret (`kind`) in the planner's facts.
pub fn key(kind: &'static str, meta: &ObjectMeta) -> ObjectKey {
    ObjectKey { kind, namespace: meta.namespace.clone().unwrap_or_default(), name: meta.name.clone().unwrap_or_default() }
}

/// A ConfigMap's `data` and `binaryData` as bytes.
pub fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    data.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
    data
}

/// A Secret's `data` (and `stringData`, as a file read by `kforge plan` may carry it) as bytes.
pub fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    data.extend(secret.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
    data
}

/// A DaemonSet as the controller keeps it: metadata (without managed fields) and status; the
/// spec-hash annotation stands for the spec.
pub fn slim_daemonset(ds: &mut DaemonSet) {
    ds.spec = Default::default();
    ds.metadata.managed_fields = None;
}

/// A Node as the controller keeps it: without managed fields and the list of images it holds.
pub fn slim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    if let Some(status) = node.status.as_mut() {
        status.images = None;
    }
}

/// Whether kforge manages the object (`app.kubernetes.io/managed-by: kforge`).
pub fn managed(meta: &ObjectMeta) -> bool {
    meta.labels.as_ref().and_then(|l| l.get(labels::MANAGED_BY)).is_some_and(|v| v == labels::MANAGER)
}
