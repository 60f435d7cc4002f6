//! The pure part of the reconciler: desired state from (Modules, Nodes, facts about images and
//! referenced objects). No I/O; every decision the controller acts on is made here.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::DaemonSet;

use crate::api::ModuleStatus;

/// What the planner needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeFacts {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `status.nodeInfo.kernelVersion`.
    pub kernel: String,
    /// `status.nodeInfo.architecture` (`amd64`, `arm64`, …).
    pub architecture: String,
    /// Modules (`namespace/name`) whose loader pod on this node runs the wanted image and is Ready.
    pub loaded: BTreeSet<String>,
}

/// What is known about one image (expanded reference) for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFact {
    /// The image exists; `digest` is what the tag points at (`sha256:…`).
    Present {
        /// The manifest (or index) digest to pin.
        digest: String,
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
    /// DaemonSets kforge owns today (from the cluster), by namespace/name.
    pub daemonsets: BTreeMap<(String, String), DaemonSet>,
}

/// The desired state of the whole cluster.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// One entry per Module, in input order.
    pub modules: Vec<ModulePlan>,
    /// The labels kforge manages on each node (kernel label, per-Module ready labels): the whole set
    /// kforge wants, so a label missing here is removed.
    pub node_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Images whose facts are unknown: the controller looks them up in their registries.
    pub lookups: Vec<Lookup>,
    /// Builds to start, deduplicated across Modules (one per image and inputs hash).
    pub builds: Vec<BuildJob>,
    /// DaemonSets kforge owns that nothing wants any more (namespace, name).
    pub garbage: Vec<(String, String)>,
}

/// One Module's desired state.
#[derive(Debug, Clone, Default)]
pub struct ModulePlan {
    /// The Module's namespace.
    pub namespace: String,
    /// The Module's name.
    pub name: String,
    /// DaemonSets to apply (module loaders per kernel, then the device plugin), complete objects
    /// with labels, owner reference and a spec-hash annotation.
    pub daemonsets: Vec<DaemonSet>,
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
