//! The loader pods the controller follows, kept compact: per pod only its node, its Module (own
//! label or owning DaemonSet) and readiness, with names shared between pods. A cluster of
//! 5,000 nodes each running 100 loaders holds half a million pods; as `Pod` objects (2.4 KB before
//! their strings) that alone would be gigabytes.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::cluster::Listed;
use crate::labels;

/// What is known of one loader pod, borrowed from the pod table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoaderPod<'a> {
    /// `spec.nodeName` (empty until scheduled).
    pub node: &'a Arc<str>,
    /// Its own Module label, if any.
    pub module: Option<&'a Arc<str>>,
    /// The DaemonSet owning it, if any.
    pub owner: Option<&'a Arc<str>>,
    /// Whether its Ready condition is True.
    pub ready: bool,
}

/// One pod as stored: indices into [`Names`] (0 is "none" or empty), 20 bytes.
#[derive(Debug, Clone, Copy)]
struct Compact {
    namespace: u32,
    node: u32,
    module: u32,
    owner: u32,
    ready: bool,
}

/// Pods by a 128-bit hash of (namespace, name): the names themselves are not kept, and a
/// collision among a million pods is about as likely as one of SHA-256.
type ByKey = BTreeMap<u128, Compact>;

/// Interned names (namespaces, nodes, Modules, DaemonSets); index 0 is the empty string.
#[derive(Debug)]
struct Names {
    index: HashMap<Arc<str>, u32>,
    all: Vec<Arc<str>>,
}

impl Default for Names {
    fn default() -> Self {
        let empty: Arc<str> = Arc::from("");
        Names { index: HashMap::from([(Arc::clone(&empty), 0)]), all: vec![empty] }
    }
}

impl Names {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = u32::try_from(self.all.len()).unwrap_or(u32::MAX);
        let a: Arc<str> = Arc::from(s);
        self.all.push(Arc::clone(&a));
        self.index.insert(a, i);
        i
    }

    fn get(&self, i: u32) -> &Arc<str> {
        self.all.get(i as usize).unwrap_or(&self.all[0])
    }

    fn view(&self, p: &Compact) -> (&str, LoaderPod<'_>) {
        let some = |i: u32| (i != 0).then(|| self.get(i));
        (self.get(p.namespace), LoaderPod { node: self.get(p.node), module: some(p.module), owner: some(p.owner), ready: p.ready })
    }

    fn compact(&mut self, pod: &Pod) -> Compact {
        Compact {
            namespace: self.intern(&pod.namespace().unwrap_or_default()),
            node: self.intern(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default()),
            module: pod.labels().get(labels::MODULE_NAME).map_or(0, |m| self.intern(m)),
            owner: pod.owner_references().iter().find(|o| o.kind == "DaemonSet").map_or(0, |o| self.intern(&o.name)),
            ready: pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        }
    }
}

/// The key of pod `namespace/name`: two independent 64-bit SipHashes.
fn key(pod: &Pod) -> u128 {
    let (ns, name) = (pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default());
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        (salt, ns, name).hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

#[derive(Debug, Default)]
struct State {
    pods: ByKey,
    names: Names,
    /// A relist under way (watcher `Init` … `InitDone`), with names of its own so that the
    /// table it replaces keeps no stale names.
    relist: Option<(ByKey, Names)>,
}

/// The loader pods, fed by a pod watcher.
#[derive(Debug, Clone, Default)]
pub struct LoaderPods {
    state: Arc<RwLock<State>>,
    listed: Listed,
}

impl LoaderPods {
    /// Applies one watcher event.
    pub(crate) fn apply(&self, event: Event<Pod>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *state;
        match event {
            Event::Init => state.relist = Some(Default::default()),
            Event::InitApply(pod) => {
                let (pods, names) = state.relist.get_or_insert_with(Default::default);
                pods.insert(key(&pod), names.compact(&pod));
            }
            Event::InitDone => {
                if let Some((pods, names)) = state.relist.take() {
                    (state.pods, state.names) = (pods, names);
                }
                self.listed.done();
            }
            Event::Apply(pod) => {
                let compact = state.names.compact(&pod);
                state.pods.insert(key(&pod), compact);
            }
            Event::Delete(pod) => {
                state.pods.remove(&key(&pod));
            }
        }
    }

    /// Calls `f(namespace, pod)` for every pod.
    pub(crate) fn each(&self, mut f: impl FnMut(&str, LoaderPod<'_>)) {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        for p in state.pods.values() {
            let (ns, pod) = state.names.view(p);
            f(ns, pod);
        }
    }

    /// Whether any pod satisfies `f(namespace, pod)`.
    pub(crate) fn any(&self, mut f: impl FnMut(&str, LoaderPod<'_>) -> bool) -> bool {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.pods.values().any(|p| {
            let (ns, pod) = state.names.view(p);
            f(ns, pod)
        })
    }

    /// Waits for the first complete list.
    pub(crate) async fn wait_until_ready(&self) {
        self.listed.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::loader_pod as pod;

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
        pods.each(|_, p| owners.push((p.module.map(|m| m.to_string()), p.owner.map(|o| o.to_string()))));
        assert_eq!(owners, [(None, Some("m-loader".to_string()))]);
        assert!(pods.any(|ns, p| ns == "kmm" && &**p.node == "n2"));
        assert!(!pods.any(|_, p| &**p.node == "n1"));
    }
}
