//! The loader pods the controller follows, kept compact: per pod only its node, its Module (own
//! label or owning DaemonSet) and readiness, with names shared between pods. A cluster of
//! 5,000 nodes each running 100 loaders holds half a million pods; as `Pod` objects (2.4 KB before
//! their strings) that alone would be gigabytes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::watcher::Event;
use tokio::sync::watch;

use crate::labels;

/// What is kept of one loader pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoaderPod {
    /// `spec.nodeName` (empty until scheduled).
    pub node: Arc<str>,
    /// Its own Module label, if any.
    pub module: Option<Arc<str>>,
    /// The DaemonSet owning it, if any.
    pub owner: Option<Arc<str>>,
    /// Whether its Ready condition is True.
    pub ready: bool,
}

/// Pods by (namespace, name).
type ByName = HashMap<(Arc<str>, Box<str>), LoaderPod>;

#[derive(Debug, Default)]
struct State {
    /// The pods.
    pods: ByName,
    /// The pods of a relist under way (watcher `Init` … `InitDone`).
    relist: Option<ByName>,
    /// Interned names (namespaces, nodes, Modules, DaemonSets); rebuilt at each relist.
    names: HashSet<Arc<str>>,
}

impl State {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(Arc::clone(&a));
        a
    }

    fn entry(&mut self, pod: &Pod) -> ((Arc<str>, Box<str>), LoaderPod) {
        let ns = self.intern(&pod.namespace().unwrap_or_default());
        let node = self.intern(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default());
        let module = pod.labels().get(labels::MODULE_NAME).map(|m| self.intern(m));
        let owner = pod.owner_references().iter().find(|o| o.kind == "DaemonSet").map(|o| self.intern(&o.name));
        let ready = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        ((ns, pod.name_any().into_boxed_str()), LoaderPod { node, module, owner, ready })
    }
}

/// The loader pods, fed by a pod watcher.
#[derive(Debug, Clone)]
pub struct LoaderPods {
    state: Arc<RwLock<State>>,
    ready: Arc<watch::Sender<bool>>,
}

impl Default for LoaderPods {
    fn default() -> Self {
        LoaderPods { state: Arc::default(), ready: Arc::new(watch::channel(false).0) }
    }
}

impl LoaderPods {
    /// Applies one watcher event.
    pub(crate) fn apply(&self, event: Event<Pod>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Init => {
                state.names.clear();
                state.relist = Some(HashMap::new());
            }
            Event::InitApply(pod) => {
                let (key, pod) = state.entry(&pod);
                state.relist.get_or_insert_with(HashMap::new).insert(key, pod);
            }
            Event::InitDone => {
                if let Some(pods) = state.relist.take() {
                    state.pods = pods;
                }
                self.ready.send_replace(true);
            }
            Event::Apply(pod) => {
                let (key, pod) = state.entry(&pod);
                state.pods.insert(key, pod);
            }
            Event::Delete(pod) => {
                let key = (Arc::<str>::from(pod.namespace().unwrap_or_default()), pod.name_any().into_boxed_str());
                state.pods.remove(&key);
            }
        }
    }

    /// Calls `f(namespace, pod)` for every pod.
    pub(crate) fn each(&self, mut f: impl FnMut(&str, &LoaderPod)) {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        for ((ns, _), pod) in &state.pods {
            f(ns, pod);
        }
    }

    /// Whether any pod satisfies `f(namespace, pod)`.
    pub(crate) fn any(&self, mut f: impl FnMut(&str, &LoaderPod) -> bool) -> bool {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.pods.iter().any(|((ns, _), pod)| f(ns, pod))
    }

    /// Waits for the first complete list.
    pub(crate) async fn wait_until_ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives in `self`: the wait ends only when the list is complete.
        let _ = rx.wait_for(|ready| *ready).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(name: &str, node: &str, ready: bool, module: Option<&str>) -> Pod {
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

    fn listed(pods: &LoaderPods) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        pods.each(|ns, p| out.push((ns.to_string(), p.node.to_string(), p.ready)));
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_relist_replaces_everything_and_events_follow() {
        let pods = LoaderPods::default();
        pods.apply(Event::Apply(pod("stale", "n9", true, Some("m"))));
        pods.apply(Event::Init);
        pods.apply(Event::InitApply(pod("a", "n1", true, Some("m"))));
        pods.apply(Event::InitApply(pod("b", "n2", false, None)));
        // Until the relist is done the old state stands.
        assert_eq!(listed(&pods), [("kmm".into(), "n9".into(), true)]);
        pods.apply(Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(5), pods.wait_until_ready()).await.expect("ready after InitDone");
        assert_eq!(listed(&pods), [("kmm".into(), "n1".into(), true), ("kmm".into(), "n2".into(), false)]);
        pods.apply(Event::Apply(pod("b", "n2", true, None)));
        pods.apply(Event::Delete(pod("a", "n1", true, Some("m"))));
        assert_eq!(listed(&pods), [("kmm".into(), "n2".into(), true)]);
        let mut owners = Vec::new();
        pods.each(|_, p| owners.push((p.module.clone(), p.owner.as_deref().map(str::to_string))));
        assert_eq!(owners, [(None, Some("m-loader".to_string()))]);
        assert!(pods.any(|ns, p| ns == "kmm" && &*p.node == "n2"));
        assert!(!pods.any(|_, p| &*p.node == "n1"));
    }
}
