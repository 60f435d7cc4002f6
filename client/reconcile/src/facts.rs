//! The planner's inputs from Kubernetes objects, the same for the controller's stores and for
//! `kforge plan`'s files.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::labels;
use crate::plan::{NodeFacts, ObjectKey};

/// A node's labels, kernel and architecture (`loaded` is left empty: it comes from loader pods).
pub fn node(node: &Node) -> NodeFacts {
    node_interned(node, &mut Interner::default())
}

/// [`node`], with label keys and values shared through `names`.
pub(crate) fn node_interned(node: &Node, names: &mut Interner) -> NodeFacts {
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    NodeFacts {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.iter().flatten().map(|(k, v)| (names.get(k), names.get(v))).collect(),
        kernel: info.map(|i| i.kernel_version.clone()).unwrap_or_default(),
        architecture: info.map(|i| i.architecture.clone()).unwrap_or_default(),
        loaded: Default::default(),
    }
}

/// A node's labels, sorted by key, with keys and values shared between nodes (a cluster's nodes
/// carry the same hundred ready labels each); cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLabels(pub(crate) Arc<[(Arc<str>, Arc<str>)]>);

impl NodeLabels {
    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_key_value(key).map(|(_, v)| v)
    }

    /// Label `key` and its value.
    pub fn get_key_value(&self, key: &str) -> Option<(&str, &str)> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        self.0.get(i).map(|(k, v)| (&**k, &**v))
    }

    /// Whether label `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get_key_value(key).is_some()
    }

    /// The labels whose key starts with `prefix`, in key order.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        let start = self.0.partition_point(|(k, _)| &**k < prefix);
        self.0[start..].iter().map(|(k, v)| (&**k, &**v)).take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// All labels, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The labels with `key` set to `value`.
    pub fn with(&self, key: &str, value: &str) -> NodeLabels {
        self.iter().filter(|(k, _)| *k != key).map(|(k, v)| (Arc::from(k), Arc::from(v))).chain([(Arc::from(key), Arc::from(value))]).collect()
    }
}

impl FromIterator<(Arc<str>, Arc<str>)> for NodeLabels {
    /// Sorted by key; the last value given for a key stands.
    fn from_iter<I: IntoIterator<Item = (Arc<str>, Arc<str>)>>(iter: I) -> Self {
        let mut all: Vec<(Arc<str>, Arc<str>)> = iter.into_iter().collect();
        all.reverse();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.dedup_by(|later, earlier| later.0 == earlier.0);
        NodeLabels(all.into())
    }
}

impl From<&BTreeMap<String, String>> for NodeLabels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        map.iter().map(|(k, v)| (Arc::from(k.as_str()), Arc::from(v.as_str()))).collect()
    }
}

/// Shared strings; [`Interner::prune`] lets go of those no one else holds.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    names: HashSet<Arc<str>>,
    /// Size after the last prune.
    kept: usize,
}

impl Interner {
    /// The shared copy of `s`.
    pub(crate) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(Arc::clone(&a));
        a
    }

    /// Drops the strings only the interner holds, once it has doubled since the last prune.
    pub(crate) fn prune(&mut self) {
        if self.names.len() > 2 * self.kept.max(1024) {
            self.names.retain(|a| Arc::strong_count(a) > 1);
            self.kept = self.names.len();
        }
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

/// A DaemonSet as the controller keeps it: metadata and status; the spec-hash annotation stands
/// for the spec.
pub fn slim_daemonset(ds: &mut DaemonSet) {
    ds.spec = Default::default();
}

/// Whether kforge manages the object (`app.kubernetes.io/managed-by: kforge`).
pub fn managed(meta: &ObjectMeta) -> bool {
    meta.labels.as_ref().and_then(|l| l.get(labels::MANAGED_BY)).is_some_and(|v| v == labels::MANAGER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> NodeLabels {
        pairs.iter().map(|(k, v)| (Arc::from(*k), Arc::from(*v))).collect()
    }

    #[test]
    fn node_labels_are_sorted_the_last_value_stands_and_prefixes_are_ranges() {
        let l = labels(&[("b/x", "1"), ("a", "1"), ("b/y", "2"), ("a", "2"), ("ba", "3"), ("b/", "0")]);
        assert_eq!(l.iter().collect::<Vec<_>>(), [("a", "2"), ("b/", "0"), ("b/x", "1"), ("b/y", "2"), ("ba", "3")]);
        assert_eq!(l.with_prefix("b/").collect::<Vec<_>>(), [("b/", "0"), ("b/x", "1"), ("b/y", "2")]);
        assert_eq!(l.with_prefix("c").count(), 0);
        assert_eq!((l.get("ba"), l.get("b"), l.contains_key("b/y")), (Some("3"), None, true));
        let changed = l.with("b/x", "9").with("0", "");
        assert_eq!(changed.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["0", "a", "b/", "b/x", "b/y", "ba"]);
        assert_eq!((changed.get("b/x"), l.get("b/x")), (Some("9"), Some("1")));
        let map: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
        assert_eq!(NodeLabels::from(&map), labels(&[("k", "v")]));
    }

    #[test]
    fn the_interner_shares_and_prunes_what_no_one_holds() {
        let mut names = Interner::default();
        let kept = names.get("kept");
        assert!(Arc::ptr_eq(&kept, &names.get("kept")));
        for i in 0..3000 {
            names.get(&format!("dropped-{i}"));
        }
        names.prune();
        assert_eq!(names.names.len(), 1);
        assert!(Arc::ptr_eq(&kept, &names.get("kept")));
    }
}
