//! The nodes the controller follows, kept as the planner reads them: name, labels (keys and values
//! shared between nodes), kernel and architecture. 5,000 nodes with a hundred ready labels each
//! hold about a fifth of the memory they take as `Node` objects.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::Event;

use crate::cluster::Listed;
use crate::facts::{self, Interner, NodeLabels};
use crate::plan::NodeFacts;

#[derive(Debug, Default)]
struct State {
    /// By name.
    nodes: BTreeMap<String, NodeFacts>,
    /// The nodes of a relist under way (watcher `Init` … `InitDone`).
    relist: Option<BTreeMap<String, NodeFacts>>,
    names: Interner,
}

/// The nodes, fed by a node watcher.
#[derive(Debug, Clone, Default)]
pub struct NodeTable {
    state: Arc<RwLock<State>>,
    listed: Listed,
}

impl NodeTable {
    /// Applies one watcher event.
    pub(crate) fn apply(&self, event: Event<Node>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *state;
        match event {
            Event::Init => state.relist = Some(BTreeMap::new()),
            Event::InitApply(node) => {
                let facts = facts::node_interned(&node, &mut state.names);
                state.relist.get_or_insert_with(BTreeMap::new).insert(facts.name.clone(), facts);
            }
            Event::InitDone => {
                if let Some(nodes) = state.relist.take() {
                    state.nodes = nodes;
                }
                state.names.prune();
                self.listed.done();
            }
            Event::Apply(node) => {
                let facts = facts::node_interned(&node, &mut state.names);
                state.nodes.insert(facts.name.clone(), facts);
                state.names.prune();
            }
            Event::Delete(node) => {
                state.nodes.remove(node.metadata.name.as_deref().unwrap_or_default());
            }
        }
    }

    /// Every node, sorted by name (`loaded` empty).
    pub(crate) fn facts(&self) -> Vec<NodeFacts> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.nodes.values().cloned().collect()
    }

    /// The labels of node `name`, if it is there.
    pub(crate) fn labels(&self, name: &str) -> Option<NodeLabels> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.nodes.get(name).map(|n| n.labels.clone())
    }

    /// Whether any node carries label `key`.
    pub(crate) fn any_labelled(&self, key: &str) -> bool {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.nodes.values().any(|n| n.labels.contains_key(key))
    }

    /// Waits for the first complete list.
    pub(crate) async fn wait_until_ready(&self) {
        self.listed.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeStatus, NodeSystemInfo};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, kernel: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                node_info: Some(NodeSystemInfo { kernel_version: kernel.into(), architecture: "arm64".into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_relist_replaces_everything_and_labels_are_shared() {
        let table = NodeTable::default();
        table.apply(Event::Apply(node("stale", "6.1.0-9", &[])));
        table.apply(Event::Init);
        table.apply(Event::InitApply(node("n2", "6.1.0-2", &[("gpu", "yes"), ("kmm.node.kubernetes.io/a.m.ready", "")])));
        table.apply(Event::InitApply(node("n1", "6.1.0-1", &[("kmm.node.kubernetes.io/a.m.ready", ""), ("gpu", "no")])));
        // Until the relist is done the old state stands.
        assert_eq!(table.facts().iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["stale"]);
        table.apply(Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(5), table.wait_until_ready()).await.expect("ready after InitDone");
        let facts = table.facts();
        assert_eq!(
            facts.iter().map(|n| (n.name.as_str(), n.kernel.as_str(), n.architecture.as_str())).collect::<Vec<_>>(),
            [("n1", "6.1.0-1", "arm64"), ("n2", "6.1.0-2", "arm64")]
        );
        assert_eq!(facts[0].labels.iter().collect::<Vec<_>>(), [("gpu", "no"), ("kmm.node.kubernetes.io/a.m.ready", "")]);
        // One copy of a key all nodes carry.
        let key = |n: &NodeFacts| n.labels.0.iter().find(|(k, _)| k.ends_with(".ready")).map(|(k, _)| Arc::clone(k)).expect("ready label");
        assert!(Arc::ptr_eq(&key(&facts[0]), &key(&facts[1])));
        assert!(table.any_labelled("kmm.node.kubernetes.io/a.m.ready"));
        table.apply(Event::Apply(node("n1", "6.1.0-1", &[("gpu", "no")])));
        table.apply(Event::Delete(node("n2", "", &[])));
        assert!(!table.any_labelled("kmm.node.kubernetes.io/a.m.ready"));
        assert_eq!(table.labels("n1").map(|l| l.get("gpu").map(str::to_string)), Some(Some("no".into())));
        assert_eq!(table.labels("n2"), None);
    }
}
