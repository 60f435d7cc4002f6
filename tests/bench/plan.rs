//! Times `plan()` on a large steady-state cluster: 5,000 nodes, 40 kernels, 200 Modules.
//!
//! Each Module selects a label carried by about half the nodes and maps kernels with regexps; half
//! of them build and sign. Images are all Present and the plan's own DaemonSets are fed back as the
//! observed ones, so a correct planner asks for no write, no build, no lookup and no deletion.
//! Prints the median of 5 runs after one warm-up, peak RSS (VmHWM) and the plan's sizes; asserts
//! nothing about time. Run with `cargo bench -p kforge-reconcile --bench plan` (source: tests/bench/plan.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kforge_reconcile::api::{Build, DevicePluginContainerSpec, DevicePluginSpec, KernelMapping, LocalObjectReference, Module, ModuleSpec, Sign};
use kforge_reconcile::facts::slim_daemonset;
use kforge_reconcile::labels::{KERNEL_FULL, label_value, ready_label};
use kforge_reconcile::plan::{Facts, ImageFact, NodeFacts, ObjectKey, Plan, plan};

const NODES: usize = 5_000;
const KERNELS: usize = 40;
const MODULES: usize = 200;
/// Selector labels; each node carries each one with `yes` or `no`, about half and half.
const HALVES: usize = 8;

fn kernel(k: usize) -> String {
    if k.is_multiple_of(2) { format!("6.1.0-{}-amd64", 10 + k) } else { format!("5.14.0-{}.el9_{}.x86_64", 300 + k, k % 5) }
}

fn mix(i: usize) -> u64 {
    let mut x = i as u64 ^ 0x9e37_79b9_7f4a_7c15;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn nodes() -> Vec<NodeFacts> {
    (0..NODES)
        .map(|i| {
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
            NodeFacts { name: format!("node-{i:05}"), labels, kernel: kernel(i % KERNELS), architecture: "amd64".into(), loaded: BTreeSet::new() }
        })
        .collect()
}

fn module(m: usize) -> Module {
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
    c.container_image = Some(format!("registry.example/{name}:${{KERNEL_FULL_VERSION}}"));
    c.kernel_mappings = vec![
        KernelMapping { literal: Some(kernel(0)), ..Default::default() },
        KernelMapping { regexp: Some(r"^6\.1\.0-\d+-amd64$".into()), ..Default::default() },
        KernelMapping {
            regexp: Some(r"\.el9_\d\.x86_64$".into()),
            container_image: Some(format!("registry.example/el9/{name}:${{KERNEL_XYZ}}-${{KERNEL_FULL_VERSION}}")),
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
            container: DevicePluginContainerSpec { image: format!("registry.example/dp/{name}:1.0"), ..Default::default() },
            ..Default::default()
        });
    }
    module
}

fn facts() -> Facts {
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

fn now() -> Time {
    Time(Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A `/proc/self/status` figure in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Resets the peak RSS to the current RSS (Linux ≥ 4.0), so the peak covers the timed plans only.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn main() {
    let setup = Instant::now();
    let mut nodes = nodes();
    let modules: Vec<Module> = (0..MODULES).map(module).collect();
    let mut facts = facts();
    // Round 1: every image is unknown; the planner lists the lookups. Answer them all Present.
    let first = plan(&modules, &nodes, &facts, now());
    for (i, l) in first.lookups.iter().enumerate() {
        facts.images.insert(l.key.clone(), ImageFact::Present { digest: format!("sha256:{:064x}", i), inputs_hash: None });
    }
    // Round 2, one Module at a time (little garbage left on the heap): the observed DaemonSets
    // are the desired ones, slimmed as the controller's store keeps them.
    drop(first);
    for m in modules.chunks(1) {
        for mp in plan(m, &nodes, &facts, now()).modules {
            for mut ds in mp.daemonsets {
                slim_daemonset(&mut ds);
                facts.daemonsets.insert((mp.namespace.clone(), ds.metadata.name.clone().unwrap_or_default()), Arc::new(ds));
            }
        }
    }
    for node in &mut nodes {
        node.labels.insert(KERNEL_FULL.to_string(), label_value(&node.kernel));
    }
    // Every module is loaded where it is selected, and the nodes carry its ready label.
    for node in &mut nodes {
        for m in &modules {
            if m.spec.selector.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
                let ns = m.metadata.namespace.as_deref().unwrap_or_default();
                let name = m.metadata.name.as_deref().unwrap_or_default();
                node.loaded.insert(format!("{ns}/{name}"));
                node.labels.insert(ready_label(ns, name), String::new());
            }
        }
    }
    let setup = setup.elapsed();
    let setup_peak = status_kib("VmHWM:");
    let inputs = status_kib("VmRSS:");
    let reset = reset_peak();

    drop(plan(&modules, &nodes, &facts, now()));
    let mut times: Vec<Duration> = Vec::new();
    let mut last = Plan::default();
    for _ in 0..5 {
        drop(std::mem::take(&mut last));
        let start = Instant::now();
        last = plan(&modules, &nodes, &facts, now());
        times.push(start.elapsed());
        std::hint::black_box(&last);
    }
    times.sort();
    let median = times[times.len() / 2];

    let writes: usize = last.modules.iter().map(|m| m.daemonsets.len()).sum();
    let desired: usize = writes + last.modules.iter().map(|m| m.unchanged).sum::<usize>();
    let label_changes: usize = last.node_labels.values().map(BTreeMap::len).sum();
    let kernel_entries: usize = last.modules.iter().map(|m| m.status.kernels.len()).sum();
    let ready = last.modules.iter().filter(|m| m.status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")).count();

    println!("plan bench: {NODES} nodes x {KERNELS} kernels x {MODULES} Modules (setup {:.1} s)", setup.as_secs_f64());
    println!("  plan() median of 5: {:.1} ms (min {:.1}, max {:.1})", ms(median), ms(times[0]), ms(times[times.len() - 1]));
    let peak = status_kib("VmHWM:");
    println!(
        "  RSS: {:.1} MiB with the inputs built; peak while planning {:.1} MiB{} (setup's own peak {:.1} MiB)",
        mib(inputs),
        mib(peak),
        if reset { "" } else { " (could not reset the peak: includes setup)" },
        mib(setup_peak)
    );
    println!("  plan: {desired} DaemonSets desired, {kernel_entries} kernel status entries, {ready} Modules Ready");
    println!(
        "  steady state: {writes} DaemonSet writes, {label_changes} node-label changes, {} garbage, {} builds, {} lookups",
        last.garbage.len(),
        last.builds.len(),
        last.lookups.len()
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
