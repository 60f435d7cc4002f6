//! Writes: each one only when the live object differs from the plan, each one counted.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Map, Value, json};

use crate::api::{Module, ModuleStatus};
use crate::error::{Error, Result};
use crate::events::{Events, Note};
use crate::facts::NodeLabels;
use crate::labels::{self, SPEC_HASH, is_managed_node_label};
use crate::metrics::Metrics;
use crate::plan::LabelChanges;

/// The finalizer kforge puts on Modules so that loaders are unloaded before a Module goes.
pub const FINALIZER: &str = "kforge.io/module-loader";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "kforge";

/// The API client plus the bookkeeping every write goes through.
#[derive(Clone)]
pub(crate) struct Writes {
    pub(crate) client: Client,
    pub(crate) metrics: Metrics,
    pub(crate) events: Events,
}

/// The spec-hash annotation of a DaemonSet.
fn spec_hash(ds: &DaemonSet) -> Option<&String> {
    ds.annotations().get(SPEC_HASH)
}

impl Writes {
    fn counted<T>(&self, kind: &'static str, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.metrics.write_failed(kind);
        }
        result
    }

    /// Applies `desired` unless `live` carries the same spec hash.
    pub(crate) async fn daemonset(&self, desired: &DaemonSet, live: Option<&DaemonSet>, module: &str) -> Result<()> {
        if live.is_some_and(|l| spec_hash(l).is_some() && spec_hash(l) == spec_hash(desired)) {
            return Ok(());
        }
        let ns = desired.namespace().unwrap_or_default();
        let name = desired.name_any();
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &ns);
        self.metrics.write("apply");
        let r = api
            .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired))
            .await
            .map_err(Error::kube("apply", format!("DaemonSet {ns}/{name} of Module {module}")));
        self.counted("apply", r)?;
        tracing::info!(daemonset = %format!("{ns}/{name}"), module, created = live.is_none(), "applied DaemonSet");
        if live.is_none() {
            self.events.module(&ns, module, Note::DaemonSetCreated { daemonset: name }).await;
        }
        Ok(())
    }

    /// Deletes a DaemonSet (background propagation) unless it is already going.
    pub(crate) async fn delete_daemonset(&self, live: &DaemonSet) -> Result<()> {
        if live.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let ns = live.namespace().unwrap_or_default();
        let name = live.name_any();
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &ns);
        self.metrics.write("delete");
        let r = api.delete(&name, &DeleteParams::background()).await.map_err(Error::kube("delete", format!("DaemonSet {ns}/{name}")));
        match self.counted("delete", r) {
            Err(e) if e.is_not_found() => return Ok(()),
            r => r?,
        };
        tracing::info!(daemonset = %format!("{ns}/{name}"), "deleted DaemonSet");
        if let Some(module) = live.labels().get(labels::MODULE_NAME) {
            self.events.module(&ns, module, Note::DaemonSetDeleted { daemonset: name }).await;
        }
        Ok(())
    }

    /// Makes the planner's label `changes` on `node` (one merge patch of those the node does not
    /// have yet, if any).
    pub(crate) async fn node_labels(&self, name: &str, live: &NodeLabels, changes: &LabelChanges) -> Result<()> {
        let Some(patch) = label_patch(live, changes) else { return Ok(()) };
        let api: Api<Node> = Api::all(self.client.clone());
        self.metrics.write("node-labels");
        let body = json!({"metadata": {"labels": patch}});
        let r = api.patch(name, &PatchParams::default(), &Patch::Merge(&body)).await.map_err(Error::kube("patch labels", format!("Node {name}")));
        self.counted("node-labels", r)?;
        tracing::info!(node = %name, labels = %body["metadata"]["labels"], "labelled node");
        Ok(())
    }

    /// Writes `desired` into the Module's status subresource if it differs from the live one.
    pub(crate) async fn status(&self, module: &Module, desired: &ModuleStatus) -> Result<()> {
        if module.status.as_ref() == Some(desired) {
            return Ok(());
        }
        let ns = module.namespace().unwrap_or_default();
        let name = module.name_any();
        let mut status = serde_json::to_value(desired).unwrap_or(Value::Null);
        // A merge patch keeps fields it does not mention: name the ones to drop.
        if let (Value::Object(new), Some(Value::Object(old))) = (&mut status, module.status.as_ref().and_then(|s| serde_json::to_value(s).ok())) {
            for key in old.keys() {
                new.entry(key.clone()).or_insert(Value::Null);
            }
        }
        let api: Api<Module> = Api::namespaced(self.client.clone(), &ns);
        self.metrics.write("status");
        let r = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({ "status": status })))
            .await
            .map_err(Error::kube("patch status", format!("Module {ns}/{name}")));
        self.counted("status", r)?;
        tracing::debug!(module = %format!("{ns}/{name}"), "status updated");
        let had_no_mapping = |kernel: &str| module.status.iter().flat_map(|s| &s.kernels).any(|k| k.kernel == kernel && k.build == "NoMapping");
        for k in desired.kernels.iter().filter(|k| k.build == "NoMapping" && !had_no_mapping(&k.kernel)) {
            self.events.module(&ns, &name, Note::NoMapping { kernel: k.kernel.clone() }).await;
        }
        Ok(())
    }

    /// Sets the finalizer list of a Module (guarded by its resourceVersion).
    async fn finalizers(&self, module: &Module, finalizers: Vec<String>) -> Result<()> {
        let ns = module.namespace().unwrap_or_default();
        let name = module.name_any();
        let api: Api<Module> = Api::namespaced(self.client.clone(), &ns);
        self.metrics.write("finalizer");
        let body = json!({"metadata": {"finalizers": finalizers, "resourceVersion": module.resource_version()}});
        let r = api.patch(&name, &PatchParams::default(), &Patch::Merge(&body)).await.map_err(Error::kube("patch finalizers", format!("Module {ns}/{name}")));
        self.counted("finalizer", r).map(drop)
    }

    /// Adds kforge's finalizer to a live Module that lacks it.
    pub(crate) async fn add_finalizer(&self, module: &Module) -> Result<()> {
        if module.metadata.deletion_timestamp.is_some() || module.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let mut list = module.finalizers().to_vec();
        list.push(FINALIZER.to_string());
        self.finalizers(module, list).await
    }

    /// Removes kforge's finalizer.
    pub(crate) async fn remove_finalizer(&self, module: &Module) -> Result<()> {
        if !module.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let list = module.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
        self.finalizers(module, list).await
    }
}

/// The merge-patch `labels` map making those of `changes` that `live` does not show yet (`null`
/// removes), or `None` when none is left. Labels kforge does not manage are never touched.
pub(crate) fn label_patch(live: &NodeLabels, changes: &LabelChanges) -> Option<Map<String, Value>> {
    let patch: Map<String, Value> = changes
        .iter()
        .filter(|(k, v)| is_managed_node_label(k) && live.get(k) != v.as_deref())
        .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
        .collect();
    (!patch.is_empty()).then_some(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_patch_sends_only_managed_changes_not_yet_made() {
        let live: NodeLabels = [
            ("kubernetes.io/hostname", "n1"),
            ("kmm.node.kubernetes.io/kernel-version.full", "6.1.0-1"),
            ("kmm.node.kubernetes.io/default.old.ready", ""),
            ("kmm.node.kubernetes.io/default.keep.ready", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let changes: LabelChanges = [
            ("kmm.node.kubernetes.io/kernel-version.full", Some("6.1.0-2")),
            ("kmm.node.kubernetes.io/default.old.ready", None),
            ("kmm.node.kubernetes.io/default.keep.ready", Some("")),
            ("kmm.node.kubernetes.io/default.new.ready", Some("")),
            ("kmm.node.kubernetes.io/default.gone.ready", None),
            ("kubernetes.io/hostname", None),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect();
        let patch = label_patch(&live, &changes).expect("differs");
        assert_eq!(
            Value::Object(patch),
            json!({
                "kmm.node.kubernetes.io/kernel-version.full": "6.1.0-2",
                "kmm.node.kubernetes.io/default.old.ready": null,
                "kmm.node.kubernetes.io/default.new.ready": "",
            })
        );
        let done: LabelChanges = [("kmm.node.kubernetes.io/default.keep.ready".to_string(), Some(String::new()))].into();
        assert_eq!(label_patch(&live, &done), None);
    }
}
