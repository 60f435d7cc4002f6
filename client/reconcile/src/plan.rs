//! The pure part of the reconciler: desired state from (Modules, Nodes, facts about images and
//! referenced objects). No I/O; every decision the controller acts on is made here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kforge_kmm::KernelVars;
use kube::ResourceExt;

use crate::api::{DaemonSetCounts, KernelStatus, Module, ModuleStatus};
use crate::daemonset::{self, Loader, LoaderHasher};
use crate::facts::NodeLabels;
use crate::labels;
use crate::mapping::{self, Mappings, Objects, Sections};
use crate::nodes::{NodeIndex, NodeSet};
use crate::status::{self, Findings, Outcome};

/// What the planner needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeFacts {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: NodeLabels,
    /// `status.nodeInfo.kernelVersion`.
    pub kernel: String,
    /// `status.nodeInfo.architecture` (`amd64`, `arm64`, …).
    pub architecture: String,
    /// Modules (`namespace/name`) whose loader pod on this node runs the wanted image and is Ready.
    pub loaded: BTreeSet<Arc<str>>,
}

/// What is known about one image (expanded reference) for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFact {
    /// The image exists; `digest` is what the tag points at (`sha256:…`).
    Present {
        /// The manifest (or index) digest to pin.
        digest: String,
        /// The inputs hash of the build that produced it, when kforge built it (or read it back).
        inputs_hash: Option<String>,
    },
    /// The registry says there is no such image (or no manifest for the architecture).
    Missing,
    /// A build for it is under way.
    Building,
    /// Its build or lookup failed; `message` says why.
    Failed {
        /// What went wrong, for the status.
        message: String,
    },
}

/// Key of an image fact: the expanded reference and the architecture.
pub type ImageKey = (String, String);

/// A referenced ConfigMap or Secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// `ConfigMap` or `Secret`.
    pub kind: &'static str,
    /// The Module's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

/// Everything the controller has observed besides Modules and Nodes.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Image lookups and builds so far.
    pub images: BTreeMap<ImageKey, ImageFact>,
    /// Referenced objects that exist: their data (string keys, binary data as bytes).
    pub objects: BTreeMap<ObjectKey, BTreeMap<String, Vec<u8>>>,
    /// DaemonSets kforge owns today (from the cluster), by namespace/name. Only metadata and status
    /// are read: the spec-hash annotation stands for the spec.
    pub daemonsets: BTreeMap<(String, String), Arc<DaemonSet>>,
}

/// The desired state of the whole cluster.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// One entry per Module, in input order.
    pub modules: Vec<ModulePlan>,
    /// Changes to the labels kforge manages (kernel label, per-Module ready labels), for the nodes
    /// whose labels differ from what kforge wants; managed labels it no longer wants are removed.
    pub node_labels: BTreeMap<String, LabelChanges>,
    /// Images whose facts are unknown: the controller looks them up in their registries.
    pub lookups: Vec<Lookup>,
    /// Builds to start, deduplicated across Modules (one per image and inputs hash).
    pub builds: Vec<BuildJob>,
    /// DaemonSets kforge owns that nothing wants any more (namespace, name).
    pub garbage: Vec<(String, String)>,
}

/// Changes to one node's labels: `Some(value)` sets the label, `None` removes it.
pub type LabelChanges = BTreeMap<String, Option<String>>;

/// One Module's desired state.
#[derive(Debug, Clone, Default)]
pub struct ModulePlan {
    /// The Module's namespace.
    pub namespace: String,
    /// The Module's name.
    pub name: String,
    /// DaemonSets to apply (module loaders per kernel, then the device plugin): those missing from
    /// the cluster or whose spec-hash annotation differs; complete objects with labels, owner
    /// reference and the spec-hash annotation.
    pub daemonsets: Vec<DaemonSet>,
    /// Desired DaemonSets already in the cluster as wanted (not in `daemonsets`).
    pub unchanged: usize,
    /// The status to write (the controller fills in nothing; counts come from the observed
    /// DaemonSets in [`Facts`]).
    pub status: ModuleStatus,
}

/// An image the controller must look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The expanded reference and architecture.
    pub key: ImageKey,
    /// The Module (namespace, name) whose `imageRepoSecret` and `registryTLS` apply.
    pub module: (String, String),
    /// The Secret holding `.dockerconfigjson`, if the Module names one.
    pub pull_secret: Option<String>,
    /// Plain HTTP / skip verification.
    pub tls: crate::api::TlsOptions,
}

/// One build (and/or signature) to ask the builder for.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildJob {
    /// The target image (expanded).
    pub image: String,
    /// The architecture of the nodes wanting it.
    pub architecture: String,
    /// The hash over every input (Dockerfile, args, secrets, key, cert, kernel, image).
    pub inputs_hash: String,
    /// The kernel.
    pub kernel: String,
    /// The first Module (namespace, name) that wants it; its secrets and objects are used.
    pub module: (String, String),
    /// Every Module that wants it.
    pub wanted_by: Vec<(String, String)>,
    /// The build request to send (sign.key_pem/cert filled from the key and cert Secrets).
    pub request: kforge_proto::builder::v1::BuildRequest,
}

/// Build states reported in [`KernelStatus::build`].
pub mod state {
    /// The image exists and the loader is pinned to it.
    pub const PRESENT: &str = "Present";
    /// A build (or signature) is requested or running.
    pub const BUILDING: &str = "Building";
    /// The build or lookup failed.
    pub const FAILED: &str = "Failed";
    /// The image does not exist and nothing builds it.
    pub const MISSING: &str = "Missing";
    /// No kernel mapping matches the kernel.
    pub const NO_MAPPING: &str = "NoMapping";
    /// The image is being looked up.
    pub const LOOKING_UP: &str = "LookingUp";
    /// The Module's sections for this kernel are invalid (see the Degraded condition).
    pub const INVALID: &str = "Invalid";
}

/// Per-plan accumulators shared by all Modules.
struct Shared<'f> {
    facts: &'f Facts,
    lookups: Vec<Lookup>,
    lookup_keys: HashSet<ImageKey>,
    builds: Vec<BuildJob>,
    build_keys: HashMap<(String, String), usize>,
    /// DaemonSets desired or kept, by (namespace, name).
    claimed: HashSet<(String, String)>,
    /// Regexps compiled so far, by pattern.
    regexps: HashMap<String, Result<regex::Regex, String>>,
}

/// A word-at-a-time multiplicative hash (as rustc's Fx): cheap for the many short
/// `namespace/name` lookups of one plan, where there is no adversary to fear.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            h = (h.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for b in chunks.remainder() {
            h = (h.rotate_left(5) ^ u64::from(*b)).wrapping_mul(K);
        }
        self.0 = h;
    }
}

/// One kernel group's precomputed names.
struct GroupNames {
    label: String,
    hash: String,
}

/// The desired state: pure and deterministic; `now` stamps conditions whose status changes.
pub fn plan(modules: &[Module], nodes: &[NodeFacts], facts: &Facts, now: Time) -> Plan {
    let index = NodeIndex::new(nodes, modules.iter().map(|m| &m.spec.selector));
    let names: Vec<GroupNames> = index
        .groups
        .iter()
        .map(|g| GroupNames { label: labels::label_value(g.kernel), hash: labels::kernel_hash(g.kernel, g.split.then_some(g.arch)) })
        .collect();
    let ids: HashMap<String, usize, BuildHasherDefault<Fx>> =
        modules.iter().enumerate().map(|(i, m)| (format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any()), i)).collect();
    let mut loaded: Vec<NodeSet> = vec![NodeSet::empty(nodes.len()); modules.len()];
    for (n, node) in nodes.iter().enumerate() {
        for l in &node.loaded {
            if let Some(&m) = ids.get(&**l) {
                loaded[m].insert(n);
            }
        }
    }
    let mut shared = Shared {
        facts,
        lookups: Vec::new(),
        lookup_keys: HashSet::new(),
        builds: Vec::new(),
        build_keys: HashMap::new(),
        claimed: HashSet::new(),
        regexps: HashMap::new(),
    };
    let mut selections = Vec::with_capacity(modules.len());
    let mut ready_labels = Vec::with_capacity(modules.len());
    let mut out = Plan::default();
    for (m, module) in modules.iter().enumerate() {
        let ns = module.namespace().unwrap_or_default();
        let selected = index.select(&module.spec.selector);
        let ready = labels::ready_label(&ns, &module.name_any());
        out.modules.push(plan_module(module, &ns, &index, &names, &selected, &loaded[m], &ready, &mut shared, &now));
        selections.push(selected);
        ready_labels.push(ready);
    }
    // Modules by ready label: the order of the live labels, for one merge walk per node.
    let mut by_label: Vec<usize> = (0..modules.len()).collect();
    by_label.sort_by(|a, b| ready_labels[*a].cmp(&ready_labels[*b]));
    for (n, node) in nodes.iter().enumerate() {
        let wanted = by_label.iter().filter(|&&m| loaded[m].contains(n) && selections[m].contains(n)).map(|&m| ready_labels[m].as_str());
        let changes = label_changes(node, wanted);
        if !changes.is_empty() {
            out.node_labels.insert(node.name.clone(), changes);
        }
    }
    out.garbage = facts.daemonsets.keys().filter(|k| !shared.claimed.contains(*k)).cloned().collect();
    out.lookups = shared.lookups;
    out.builds = shared.builds;
    out
}

/// What turns `node`'s managed labels into the kernel label and the `wanted` ready labels (sorted).
fn label_changes<'a>(node: &NodeFacts, wanted: impl Iterator<Item = &'a str>) -> LabelChanges {
    let mut changes = LabelChanges::new();
    let kernel = labels::label_value(&node.kernel);
    if node.labels.get(labels::KERNEL_FULL) != Some(kernel.as_str()) {
        changes.insert(labels::KERNEL_FULL.to_string(), Some(kernel));
    }
    let mut live = node.labels.with_prefix(labels::NODE_PREFIX).filter(|(k, _)| labels::is_managed_node_label(k) && *k != labels::KERNEL_FULL).peekable();
    let mut wanted = wanted.peekable();
    loop {
        match (live.peek(), wanted.peek()) {
            (None, None) => break,
            (Some((k, v)), Some(w)) if k == w => {
                if !v.is_empty() {
                    changes.insert(k.to_string(), Some(String::new()));
                }
                live.next();
                wanted.next();
            }
            (Some((k, _)), w) if w.is_none_or(|w| k < w) => {
                changes.insert(k.to_string(), None);
                live.next();
            }
            (_, Some(w)) => {
                changes.insert(w.to_string(), Some(String::new()));
                wanted.next();
            }
            // Unreachable: (Some, None) is taken by the arm above.
            (Some(_), None) => break,
        }
    }
    changes
}

#[allow(clippy::too_many_arguments)]
fn plan_module(
    module: &Module,
    ns: &str,
    index: &NodeIndex<'_>,
    names: &[GroupNames],
    selected: &NodeSet,
    loaded: &NodeSet,
    ready_label: &str,
    shared: &mut Shared<'_>,
    now: &Time,
) -> ModulePlan {
    let name = module.name_any();
    let container = &module.spec.module_loader.container;
    let mut degraded = Findings::default();
    let mut progressing = Findings::default();
    let mappings = match Mappings::compile(container, &mut shared.regexps) {
        Ok(m) => Some(m),
        Err(problems) => {
            for p in problems {
                degraded.add("InvalidKernelMappings", p);
            }
            None
        }
    };
    if let Err(e) = mapping::pull_secret(module, ns, shared.facts) {
        degraded.add("MissingImageRepoSecret", e);
    }
    let mut objects: Vec<Option<Result<Objects<'_>, Vec<String>>>> = vec![None; container.kernel_mappings.len()];
    let mut daemonsets = Vec::new();
    let mut unchanged = 0;
    let mut hasher = LoaderHasher::default();
    let mut kernels = Vec::new();
    let (mut desired_total, mut available_total) = (0, 0);
    for (g, group) in index.groups.iter().enumerate() {
        let desired = selected.count_and(&group.members);
        if desired == 0 {
            continue;
        }
        let available = selected.count_and2(&group.members, loaded);
        let ds_name = labels::loader_name(&name, &names[g].hash);
        let mut ks = KernelStatus {
            kernel: group.kernel.to_string(),
            architecture: group.arch.to_string(),
            nodes_desired: desired as i32,
            nodes_available: available as i32,
            ..Default::default()
        };
        let key = (ns.to_string(), ds_name);
        // Until something below says otherwise the existing loader (if any) is kept.
        let mut keep = true;
        match mappings.as_ref().map(|m| m.find(group.kernel)) {
            None => ks.build = state::INVALID.into(),
            Some(None) => {
                let node = selected.first_and(&group.members).and_then(|n| index.nodes.get(n)).map_or("", |n| n.name.as_str());
                let msg = format!("no kernelMappings entry matches kernel {} (node {node} runs it): add a literal or regexp mapping for it", group.kernel);
                degraded.add("NoKernelMapping", msg.clone());
                ks.build = state::NO_MAPPING.into();
                ks.message = Some(msg);
                keep = false;
            }
            Some(Some(i)) => {
                desired_total += desired as i32;
                available_total += available as i32;
                let sections = Sections::of(container, i);
                let objs = objects[i].get_or_insert_with(|| mapping::gather(&sections, i, module, ns, shared.facts));
                let kernel = Kernel { module, ns, name: &name, group_arch: group.arch, split: group.split, names: &names[g], key: &key };
                match objs {
                    Err(problems) => {
                        for p in problems.iter() {
                            degraded.add("InvalidModule", p.clone());
                        }
                        ks.build = state::INVALID.into();
                        ks.message = problems.first().cloned();
                    }
                    Ok(objs) => {
                        if let Some(desired) = kernel.image(group.kernel, &sections, objs, &mut ks, &mut degraded, &mut progressing, shared, &mut hasher) {
                            match desired {
                                Desired::Apply(ds) => daemonsets.push(*ds),
                                Desired::UpToDate => unchanged += 1,
                            }
                            keep = false;
                            shared.claimed.insert(key.clone());
                        }
                    }
                }
            }
        }
        if keep && shared.facts.daemonsets.contains_key(&key) {
            shared.claimed.insert(key);
        }
        kernels.push(ks);
    }
    let mut device_plugin = None;
    if let Some(ds) = daemonset::device_plugin(module, ready_label) {
        let key = (ns.to_string(), ds.metadata.name.clone().unwrap_or_default());
        let observed = shared.facts.daemonsets.get(&key).and_then(|d| d.status.as_ref());
        device_plugin = Some(DaemonSetCounts {
            nodes_matching_selector_number: selected.count_and(loaded) as i32,
            desired_number: observed.map_or(0, |s| s.desired_number_scheduled),
            available_number: observed.and_then(|s| s.number_available).unwrap_or(0),
        });
        if up_to_date(shared.facts, &key, &ds) {
            unchanged += 1;
        } else {
            daemonsets.push(ds);
        }
        shared.claimed.insert(key);
    }
    let previous = module.status.as_ref().map_or(&[][..], |s| s.conditions.as_slice());
    let outcome = Outcome { degraded: &degraded, progressing: &progressing, available: available_total, desired: desired_total };
    let status = ModuleStatus {
        observed_generation: module.metadata.generation,
        conditions: status::conditions(&outcome, module.metadata.generation, previous, now),
        kernels,
        module_loader: DaemonSetCounts {
            nodes_matching_selector_number: selected.count_and(selected) as i32,
            desired_number: desired_total,
            available_number: available_total,
        },
        device_plugin,
    };
    ModulePlan { namespace: ns.to_string(), name, daemonsets, unchanged, status }
}

/// Whether the cluster's DaemonSet `key` carries `desired`'s spec hash.
fn up_to_date(facts: &Facts, key: &(String, String), desired: &DaemonSet) -> bool {
    let hash = |d: &DaemonSet| d.metadata.annotations.as_ref().and_then(|a| a.get(labels::SPEC_HASH)).cloned();
    facts.daemonsets.get(key).is_some_and(|live| hash(live).is_some() && hash(live) == hash(desired))
}

/// A desired DaemonSet: to apply, or already as wanted.
enum Desired {
    Apply(Box<DaemonSet>),
    UpToDate,
}

/// One (Module, kernel group) being planned.
struct Kernel<'a> {
    module: &'a Module,
    ns: &'a str,
    name: &'a str,
    group_arch: &'a str,
    split: bool,
    names: &'a GroupNames,
    key: &'a (String, String),
}

impl Kernel<'_> {
    /// Decides the image of one kernel: the loader DaemonSet when its image is known, else a lookup
    /// or a build.
    #[allow(clippy::too_many_arguments)]
    fn image(
        &self,
        kernel: &str,
        sections: &Sections<'_>,
        objs: &Objects<'_>,
        ks: &mut KernelStatus,
        degraded: &mut Findings,
        progressing: &mut Findings,
        shared: &mut Shared<'_>,
        hasher: &mut LoaderHasher,
    ) -> Option<Desired> {
        let vars = KernelVars::new(kernel, self.name, self.ns);
        let r = match mapping::resolve(&vars, self.group_arch, sections, objs) {
            Ok(r) => r,
            Err(e) => {
                degraded.add("InvalidModule", e.clone());
                ks.build = state::INVALID.into();
                ks.message = Some(e);
                return None;
            }
        };
        ks.image = r.image.clone();
        let image_key: ImageKey = (r.image.clone(), self.group_arch.to_string());
        let wants_build = |shared: &mut Shared<'_>| {
            let hash = r.inputs_hash.clone().unwrap_or_default();
            let module = (self.ns.to_string(), self.name.to_string());
            match shared.build_keys.get(&(r.image.clone(), hash.clone())).and_then(|&i| shared.builds.get_mut(i)) {
                Some(job) => {
                    if !job.wanted_by.contains(&module) {
                        job.wanted_by.push(module);
                    }
                }
                None => {
                    shared.build_keys.insert((r.image.clone(), hash.clone()), shared.builds.len());
                    shared.builds.push(BuildJob {
                        image: r.image.clone(),
                        architecture: self.group_arch.to_string(),
                        inputs_hash: hash,
                        kernel: kernel.to_string(),
                        module: module.clone(),
                        wanted_by: vec![module],
                        request: mapping::request(&vars, sections, objs, &r),
                    });
                }
            }
        };
        let known = shared.facts.images.get(&image_key);
        // Unknown (a restarted controller): what the running loader says stands until the lookup
        // answers, so a restart changes nothing in a steady cluster.
        let pinned = if known.is_none() { self.pinned(shared.facts, &r.image) } else { None };
        if known.is_none() && shared.lookup_keys.insert(image_key.clone()) {
            shared.lookups.push(Lookup {
                key: image_key,
                module: (self.ns.to_string(), self.name.to_string()),
                pull_secret: self.module.spec.image_repo_secret.as_ref().map(|s| s.name.clone()),
                tls: sections.tls.cloned().unwrap_or_default(),
            });
        }
        match known.or(pinned.as_ref()) {
            None => {
                ks.build = state::LOOKING_UP.into();
                progressing.add("LookingUp", format!("looking up image {} for kernel {kernel}", r.image));
                None
            }
            Some(ImageFact::Missing) if sections.builds() => {
                wants_build(shared);
                ks.build = state::BUILDING.into();
                progressing.add("Building", format!("building image {} for kernel {kernel}", r.image));
                None
            }
            Some(ImageFact::Missing) => {
                let msg = format!("image {} for kernel {kernel} does not exist and the mapping has no build or sign section: push it or add a build", r.image);
                degraded.add("ImageMissing", msg.clone());
                ks.build = state::MISSING.into();
                ks.message = Some(msg);
                None
            }
            Some(ImageFact::Building) => {
                ks.build = state::BUILDING.into();
                progressing.add("Building", format!("building image {} for kernel {kernel}", r.image));
                None
            }
            Some(ImageFact::Failed { message }) => {
                let msg = format!("image {} for kernel {kernel}: {message}", r.image);
                degraded.add("BuildFailed", msg.clone());
                ks.build = state::FAILED.into();
                ks.message = Some(msg);
                None
            }
            Some(ImageFact::Present { digest, inputs_hash: built }) => {
                let existing = shared.facts.daemonsets.get(self.key).and_then(|d| d.metadata.annotations.as_ref()).and_then(|a| a.get(labels::INPUTS_HASH));
                let stale = sections.builds() && existing.is_some_and(|h| Some(h) != r.inputs_hash.as_ref()) && built.as_ref() != r.inputs_hash.as_ref();
                if stale {
                    wants_build(shared);
                    ks.build = state::BUILDING.into();
                    ks.digest = Some(digest.clone());
                    progressing.add("Rebuilding", format!("build inputs of image {} for kernel {kernel} changed: rebuilding", r.image));
                    return None;
                }
                ks.build = state::PRESENT.into();
                ks.digest = Some(digest.clone());
                let image = pin(&r.image, digest);
                let loader = Loader {
                    tag: &r.image,
                    digest,
                    module: self.module,
                    name: &self.key.1,
                    kernel_hash: &self.names.hash,
                    kernel_label: &self.names.label,
                    arch: self.split.then_some(self.group_arch),
                    image: &image,
                    inputs_hash: r.inputs_hash.as_deref(),
                };
                let hash = hasher.hash(&loader);
                let live = shared.facts.daemonsets.get(self.key).and_then(|d| d.metadata.annotations.as_ref()?.get(labels::SPEC_HASH));
                if live == Some(&hash) {
                    return Some(Desired::UpToDate);
                }
                Some(Desired::Apply(Box::new(daemonset::loader(&loader, hash))))
            }
        }
    }
}

impl Kernel<'_> {
    /// The fact the running loader of this kernel records about `image`, if it runs that image.
    fn pinned(&self, facts: &Facts, image: &str) -> Option<ImageFact> {
        let annotations = facts.daemonsets.get(self.key)?.metadata.annotations.as_ref()?;
        let digest = annotations.get(labels::IMAGE_DIGEST).filter(|d| !d.is_empty())?;
        (annotations.get(labels::IMAGE).map(String::as_str) == Some(image))
            .then(|| ImageFact::Present { digest: digest.clone(), inputs_hash: annotations.get(labels::INPUTS_HASH).cloned() })
    }
}

/// `image` pinned to `digest`: the tag (or an older digest) replaced by `@digest`.
pub(crate) fn pin(image: &str, digest: &str) -> String {
    let repo = image.split_once('@').map_or(image, |(r, _)| r);
    let last_slash = repo.rfind('/').map_or(0, |i| i + 1);
    let repo = match repo[last_slash..].rfind(':') {
        Some(colon) => &repo[..last_slash + colon],
        None => repo,
    };
    format!("{repo}@{digest}")
}

#[cfg(test)]
mod tests;
