//! What the controller sees of the cluster: reflector stores, and the planner's inputs built
//! from them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use tokio::sync::watch;

use crate::api::Module;
use crate::labels;
use crate::node_table::NodeTable;
use crate::plan::{NodeFacts, ObjectKey};
use crate::pods::{LoaderPod, LoaderPods};

/// The reflector stores a pass reads.
#[derive(Clone)]
pub struct Stores {
    /// Modules, all namespaces.
    pub modules: Store<Module>,
    /// Nodes (as the planner reads them).
    pub nodes: NodeTable,
    /// DaemonSets labelled managed-by kforge.
    pub daemonsets: Store<DaemonSet>,
    /// Module-loader pods (compact).
    pub pods: LoaderPods,
    /// ConfigMaps (Dockerfiles).
    pub configmaps: Store<ConfigMap>,
    /// Secrets (pull secrets, build secrets, signing keys).
    pub secrets: Store<Secret>,
}

impl Stores {
    /// Live Modules sorted by namespace/name, the deleting ones apart.
    pub(crate) fn modules(&self) -> (Vec<Module>, Vec<Module>) {
        let mut all: Vec<Module> = self.modules.state().iter().map(|m| (**m).clone()).collect();
        all.sort_by_key(|m| (m.namespace(), m.name_any()));
        all.into_iter().partition(|m| m.metadata.deletion_timestamp.is_none())
    }

    /// The planner's view of every node.
    pub(crate) fn node_facts(&self) -> Vec<NodeFacts> {
        let owners = self.daemonset_modules();
        // One shared `namespace/name` per Module, not one string per pod.
        let mut ids: Nested<Arc<str>> = HashMap::new();
        let mut loaded: HashMap<Arc<str>, BTreeSet<Arc<str>>> = HashMap::new();
        self.pods.each(|ns, pod| {
            let Some(module) = pod_module(&pod, ns, &owners).filter(|_| pod.ready && !pod.node.is_empty()) else { return };
            let id = match ids.get(ns).and_then(|m| m.get(module)) {
                Some(id) => Arc::clone(id),
                None => {
                    let id: Arc<str> = Arc::from(format!("{ns}/{module}"));
                    ids.entry(ns.to_string()).or_default().insert(module.to_string(), Arc::clone(&id));
                    id
                }
            };
            loaded.entry(Arc::clone(pod.node)).or_default().insert(id);
        });
        let mut nodes = self.nodes.facts();
        for n in &mut nodes {
            n.loaded = loaded.remove(n.name.as_str()).unwrap_or_default();
        }
        nodes
    }

    /// The Module label of every kforge DaemonSet, by namespace and name.
    fn daemonset_modules(&self) -> Nested<String> {
        let mut out: Nested<String> = HashMap::new();
        for d in self.daemonsets.state() {
            if let Some(module) = d.labels().get(labels::MODULE_NAME) {
                out.entry(d.namespace().unwrap_or_default()).or_default().insert(d.name_any(), module.clone());
            }
        }
        out
    }

    /// Data of the ConfigMaps and Secrets in namespaces holding a Module.
    pub(crate) fn objects(&self, modules: &[Module]) -> BTreeMap<ObjectKey, BTreeMap<String, Vec<u8>>> {
        let namespaces: BTreeSet<String> = modules.iter().filter_map(|m| m.namespace()).collect();
        let mut out = BTreeMap::new();
        for cm in self.configmaps.state() {
            let Some(ns) = cm.namespace().filter(|ns| namespaces.contains(ns)) else { continue };
            out.insert(ObjectKey { kind: "ConfigMap", namespace: ns, name: cm.name_any() }, crate::facts::config_map_data(&cm));
        }
        for s in self.secrets.state() {
            let Some(ns) = s.namespace().filter(|ns| namespaces.contains(ns)) else { continue };
            out.insert(ObjectKey { kind: "Secret", namespace: ns, name: s.name_any() }, crate::facts::secret_data(&s));
        }
        out
    }

    /// kforge's DaemonSets by (namespace, name), shared with the store.
    pub(crate) fn daemonsets(&self) -> BTreeMap<(String, String), Arc<DaemonSet>> {
        self.daemonsets.state().into_iter().map(|d| ((d.namespace().unwrap_or_default(), d.name_any()), d)).collect()
    }

    /// A Secret's data key.
    pub(crate) fn secret_key(&self, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>> {
        let s = self.secrets.find(|s| s.name_any() == name && s.namespace().as_deref() == Some(namespace))?;
        s.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone())
    }

    /// The DaemonSets of Module `namespace/name` (by label or owner reference).
    pub(crate) fn module_daemonsets(&self, module: &Module) -> Vec<DaemonSet> {
        let uid = module.uid();
        let name = module.name_any();
        self.daemonsets
            .state()
            .iter()
            .filter(|d| d.namespace() == module.namespace())
            .filter(|d| d.labels().get(labels::MODULE_NAME) == Some(&name) || d.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref()))
            .map(|d| (**d).clone())
            .collect()
    }

    /// Whether any loader pod of Module `namespace/name` is still there.
    pub(crate) fn module_has_pods(&self, module: &Module) -> bool {
        let name = module.name_any();
        let ns = module.namespace().unwrap_or_default();
        let owners = self.daemonset_modules();
        self.pods.any(|pod_ns, p| pod_ns == ns && pod_module(&p, pod_ns, &owners) == Some(name.as_str()))
    }
}

/// Whether a compact table has had its first complete list (shared by its clones).
#[derive(Debug, Clone)]
pub(crate) struct Listed(Arc<watch::Sender<bool>>);

impl Default for Listed {
    fn default() -> Self {
        Listed(Arc::new(watch::channel(false).0))
    }
}

impl Listed {
    /// Records the first complete list.
    pub(crate) fn done(&self) {
        self.0.send_replace(true);
    }

    /// Waits for the first complete list.
    pub(crate) async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`: the wait ends only when the list is complete.
        let _ = rx.wait_for(|listed| *listed).await;
    }
}

/// Values by namespace, then name (looked up without building keys).
type Nested<T> = HashMap<String, HashMap<String, T>>;

/// The Module a loader pod belongs to: its own label, else its DaemonSet's.
fn pod_module<'a>(pod: &LoaderPod<'a>, ns: &str, owners: &'a Nested<String>) -> Option<&'a str> {
    if let Some(m) = pod.module {
        return Some(m);
    }
    owners.get(ns)?.get(&**pod.owner?).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::loader_pod;
    use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo, Pod};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    fn pod(name: &str, node: &str, ready: bool, own_label: bool) -> Pod {
        loader_pod(name, node, ready, own_label.then_some("m"))
    }

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            status: Some(NodeStatus {
                node_info: Some(NodeSystemInfo { kernel_version: "6.1.0-1".into(), architecture: "arm64".into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_has_a_module_loaded_when_its_loader_pod_is_ready() {
        let nodes = NodeTable::default();
        let pods = LoaderPods::default();
        let mut daemonsets = Writer::default();
        let stores = Stores {
            modules: Writer::default().as_reader(),
            nodes: nodes.clone(),
            daemonsets: daemonsets.as_reader(),
            pods: pods.clone(),
            configmaps: Writer::default().as_reader(),
            secrets: Writer::default().as_reader(),
        };
        for n in ["n1", "n2", "n3"] {
            nodes.apply(Event::Apply(node(n)));
        }
        let ds = DaemonSet {
            metadata: ObjectMeta {
                name: Some("m-loader".into()),
                namespace: Some("kmm".into()),
                labels: Some([(labels::MODULE_NAME.to_string(), "m".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        daemonsets.apply_watcher_event(&Event::Apply(ds));
        pods.apply(Event::Apply(pod("a", "n1", true, true)));
        // No label of its own: the module comes from its DaemonSet.
        pods.apply(Event::Apply(pod("b", "n2", true, false)));
        pods.apply(Event::Apply(pod("c", "n3", false, true)));
        let facts = stores.node_facts();
        let loaded: Vec<(String, Vec<String>)> = facts.iter().map(|n| (n.name.clone(), n.loaded.iter().map(|m| m.to_string()).collect())).collect();
        assert_eq!(loaded, vec![("n1".into(), vec!["kmm/m".to_string()]), ("n2".into(), vec!["kmm/m".to_string()]), ("n3".into(), vec![])]);
        assert_eq!((facts[0].kernel.as_str(), facts[0].architecture.as_str()), ("6.1.0-1", "arm64"));
    }
}
