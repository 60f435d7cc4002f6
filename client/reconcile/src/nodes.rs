//! Nodes indexed once per plan: kernel groups and label → node sets as bitsets, so that selecting
//! and counting nodes for each Module costs a few word operations per 64 nodes.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::plan::NodeFacts;

/// A set of node indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeSet {
    words: Vec<u64>,
}

impl NodeSet {
    /// An empty set for `n` nodes.
    pub(crate) fn empty(n: usize) -> Self {
        NodeSet { words: vec![0; n.div_ceil(64)] }
    }

    /// Every one of `n` nodes.
    pub(crate) fn full(n: usize) -> Self {
        let mut s = Self::empty(n);
        for i in 0..n {
            s.insert(i);
        }
        s
    }

    /// Adds node `i`.
    pub(crate) fn insert(&mut self, i: usize) {
        if let Some(w) = self.words.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    /// Whether node `i` is in the set.
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Keeps only the nodes also in `other`.
    pub(crate) fn intersect(&mut self, other: &NodeSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    /// |self ∩ other|.
    pub(crate) fn count_and(&self, other: &NodeSet) -> usize {
        self.words.iter().zip(&other.words).map(|(a, b)| (a & b).count_ones() as usize).sum()
    }

    /// |self ∩ a ∩ b|.
    pub(crate) fn count_and2(&self, a: &NodeSet, b: &NodeSet) -> usize {
        self.words.iter().zip(&a.words).zip(&b.words).map(|((x, y), z)| (x & y & z).count_ones() as usize).sum()
    }

    /// The lowest index in self ∩ other.
    pub(crate) fn first_and(&self, other: &NodeSet) -> Option<usize> {
        self.words.iter().zip(&other.words).enumerate().find_map(|(i, (a, b))| if a & b != 0 { Some(i * 64 + (a & b).trailing_zeros() as usize) } else { None })
    }
}

/// The selected nodes running one kernel on one architecture.
#[derive(Debug)]
pub(crate) struct KernelGroup<'n> {
    /// The kernel.
    pub kernel: &'n str,
    /// The architecture.
    pub arch: &'n str,
    /// Whether the kernel runs on several architectures (one DaemonSet per architecture then).
    pub split: bool,
    /// The nodes.
    pub members: NodeSet,
}

/// The nodes, indexed.
pub(crate) struct NodeIndex<'n> {
    /// The nodes, as given.
    pub nodes: &'n [NodeFacts],
    /// Kernel groups sorted by (kernel, architecture).
    pub groups: Vec<KernelGroup<'n>>,
    labels: HashMap<(&'n str, &'n str), NodeSet>,
}

impl<'n> NodeIndex<'n> {
    /// Indexes `nodes`; only the label pairs some selector in `selectors` asks for are indexed.
    pub(crate) fn new<'s>(nodes: &'n [NodeFacts], selectors: impl IntoIterator<Item = &'s BTreeMap<String, String>>) -> Self {
        // By key: each node is asked for the few selector keys, not scanned label by label.
        let mut wanted: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
        for (k, v) in selectors.into_iter().flatten() {
            wanted.entry(k.as_str()).or_default().insert(v.as_str());
        }
        let n = nodes.len();
        let mut groups: BTreeMap<(&str, &str), NodeSet> = BTreeMap::new();
        let mut labels: HashMap<(&str, &str), NodeSet> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            groups.entry((node.kernel.as_str(), node.architecture.as_str())).or_insert_with(|| NodeSet::empty(n)).insert(i);
            for (key, values) in &wanted {
                if let Some((k, v)) = node.labels.get_key_value(key).filter(|(_, v)| values.contains(v)) {
                    labels.entry((k, v)).or_insert_with(|| NodeSet::empty(n)).insert(i);
                }
            }
        }
        let mut arches: HashMap<&str, usize> = HashMap::new();
        for (kernel, _) in groups.keys() {
            *arches.entry(kernel).or_default() += 1;
        }
        let groups = groups
            .into_iter()
            .map(|((kernel, arch), members)| KernelGroup { kernel, arch, split: arches.get(kernel).is_some_and(|c| *c > 1), members })
            .collect();
        NodeIndex { nodes, groups, labels }
    }

    /// The nodes carrying every label of `selector` (every node for an empty selector).
    pub(crate) fn select(&self, selector: &BTreeMap<String, String>) -> NodeSet {
        let mut set = NodeSet::full(self.nodes.len());
        for (k, v) in selector {
            match self.labels.get(&(k.as_str(), v.as_str())) {
                Some(s) => set.intersect(s),
                None => return NodeSet::empty(self.nodes.len()),
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, kernel: &str, arch: &str, labels: &[(&str, &str)]) -> NodeFacts {
        use std::sync::Arc;
        NodeFacts {
            name: name.into(),
            kernel: kernel.into(),
            architecture: arch.into(),
            labels: labels.iter().map(|(k, v)| (Arc::from(*k), Arc::from(*v))).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn groups_and_selection() {
        let nodes: Vec<NodeFacts> = (0..130)
            .map(|i| {
                let kernel = if i % 2 == 0 { "a" } else { "b" };
                let arch = if i == 129 { "arm64" } else { "amd64" };
                let gpu = if i % 3 == 0 { "yes" } else { "no" };
                node(&format!("n{i}"), kernel, arch, &[("gpu", gpu)])
            })
            .collect();
        let gpu_yes = BTreeMap::from([("gpu".to_string(), "yes".to_string())]);
        let idx = NodeIndex::new(&nodes, [&gpu_yes]);
        let keys: Vec<_> = idx.groups.iter().map(|g| (g.kernel, g.arch, g.split)).collect();
        assert_eq!(keys, [("a", "amd64", false), ("b", "amd64", true), ("b", "arm64", true)]);
        let gpu = idx.select(&BTreeMap::from([("gpu".to_string(), "yes".to_string())]));
        assert_eq!(gpu.count_and(&NodeSet::full(130)), 44);
        assert_eq!(gpu.count_and(&idx.groups[0].members), 22);
        assert_eq!(gpu.first_and(&idx.groups[1].members), Some(3));
        assert!(gpu.contains(129) && !gpu.contains(128));
        assert_eq!(idx.select(&BTreeMap::new()).count_and(&NodeSet::full(130)), 130);
        let none = idx.select(&BTreeMap::from([("gpu".to_string(), "maybe".to_string())]));
        assert_eq!(none.count_and2(&NodeSet::full(130), &gpu), 0);
    }
}
