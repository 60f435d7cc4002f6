//! The benches' cluster: 5,000 nodes, 40 kernels, 200 Modules (shared by `plan.rs` and
//! `reconcile.rs` through `#[path = "cluster.rs"] mod cluster;`).
//!
//! Each Module selects a label carried by about half the nodes and maps kernels with regexps; half
//! of them build and sign, a quarter have a device plugin. Everything is derived from indices, so
//! any part can be generated again on demand.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kforge_reconcile::api::{Build, DevicePluginContainerSpec, DevicePluginSpec, KernelMapping, LocalObjectReference, Module, ModuleSpec, Sign};
use kforge_reconcile::facts::NodeLabels;
use kforge_reconcile::plan::{Facts, NodeFacts, ObjectKey};

pub const NODES: usize = 5_000;
pub const KERNELS: usize = 40;
pub const MODULES: usize = 200;
/// Selector labels; each node carries each one with `yes` or `no`, about half and half.
pub const HALVES: usize = 8;

pub fn kernel(k: usize) -> String {
    if k.is_multiple_of(2) { format!("6.1.0-{}-amd64", 10 + k) } else { format!("5.14.0-{}.el9_{}.x86_64", 300 + k, k % 5) }
}

pub fn mix(i: usize) -> u64 {
    let mut x = i as u64 ^ 0x9e37_79b9_7f4a_7c15;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Node `i` as the planner sees it before kforge labels it (nothing loaded).
pub fn node(i: usize) -> NodeFacts {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), format!("node-{i:05}")),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("topology.kubernetes.io/zone".to_string(), format!("zone-{}", i % 4)),
        ("node-role.kubernetes.io/worker".to_string(), String::new()),
    ]);
    let bits = mix(i);
    for h in 0..HALVES {
        let v = if bits >> h & 1 == 1 { "yes" } else { "no" };
        labels.insert(format!("bench.kforge.io/half-{h}"), v.to_string());
    }
    NodeFacts {
        name: format!("node-{i:05}"),
        labels: NodeLabels::from(&labels),
        kernel: kernel(i % KERNELS),
        architecture: "amd64".into(),
        loaded: BTreeSet::new(),
    }
}

pub fn nodes() -> Vec<NodeFacts> {
    (0..NODES).map(node).collect()
}

/// Module `m`, its images in `registry` (a host, with its port if any).
pub fn module(m: usize, registry: &str) -> Module {
    let ns = format!("team-{}", m % 10);
    let name = format!("driver-{m:03}");
    let mut module = Module::new(&name, ModuleSpec::default());
    module.metadata.namespace = Some(ns);
    module.metadata.uid = Some(format!("00000000-0000-0000-0000-{m:012}"));
    module.metadata.generation = Some(3);
    let spec = &mut module.spec;
    spec.selector.insert(format!("bench.kforge.io/half-{}", m % HALVES), "yes".into());
    spec.image_repo_secret = Some(LocalObjectReference { name: "pull".into() });
    let c = &mut spec.module_loader.container;
    c.modprobe.module_name = format!("drv_{m}");
    c.modprobe.parameters = vec!["debug=0".into()];
    c.container_image = Some(format!("{registry}/{name}:${{KERNEL_FULL_VERSION}}"));
    c.kernel_mappings = vec![
        KernelMapping { literal: Some(kernel(0)), ..Default::default() },
        KernelMapping { regexp: Some(r"^6\.1\.0-\d+-amd64$".into()), ..Default::default() },
        KernelMapping {
            regexp: Some(r"\.el9_\d\.x86_64$".into()),
            container_image: Some(format!("{registry}/el9/{name}:${{KERNEL_XYZ}}-${{KERNEL_FULL_VERSION}}")),
            ..Default::default()
        },
    ];
    if m.is_multiple_of(2) {
        c.build = Some(Build {
            dockerfile_config_map: Some(LocalObjectReference { name: "dockerfile".into() }),
            secrets: vec![LocalObjectReference { name: "token".into() }],
            ..Default::default()
        });
        c.sign = Some(Sign {
            key_secret: Some(LocalObjectReference { name: "signing-key".into() }),
            cert_secret: Some(LocalObjectReference { name: "signing-cert".into() }),
            files_to_sign: vec![format!("/opt/lib/modules/${{KERNEL_FULL_VERSION}}/drv_{m}.ko")],
            ..Default::default()
        });
    }
    if m.is_multiple_of(4) {
        spec.device_plugin = Some(DevicePluginSpec {
            container: DevicePluginContainerSpec { image: format!("{registry}/dp/{name}:1.0"), ..Default::default() },
            ..Default::default()
        });
    }
    module
}

pub fn facts() -> Facts {
    let mut facts = Facts::default();
    let dockerfile = "FROM registry.example/dtk:latest AS builder\nARG KERNEL_FULL_VERSION\nRUN make\n".repeat(20);
    for t in 0..10 {
        let ns = format!("team-{t}");
        let mut put = |kind: &'static str, name: &str, key: &str, value: &[u8]| {
            facts.objects.insert(ObjectKey { kind, namespace: ns.clone(), name: name.into() }, BTreeMap::from([(key.to_string(), value.to_vec())]));
        };
        put("ConfigMap", "dockerfile", "dockerfile", dockerfile.as_bytes());
        put("Secret", "token", "token", b"s3cr3t");
        put("Secret", "signing-key", "key", &[b'k'; 1700]);
        put("Secret", "signing-cert", "cert", &[b'c'; 1200]);
        put("Secret", "pull", ".dockerconfigjson", br#"{"auths":{"registry.example":{"auth":"eDp5"}}}"#);
    }
    facts
}

pub fn now() -> Time {
    Time(Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A `/proc/self/status` figure in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Resets the peak RSS (`VmHWM`) to the current RSS (Linux ≥ 4.0); false where it cannot.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
