//! Times `plan()` on a large steady-state cluster: 5,000 nodes, 40 kernels, 200 Modules.
//!
//! Each Module selects a label carried by about half the nodes and maps kernels with regexps; half
//! of them build and sign. Images are all Present and the plan's own DaemonSets are fed back as the
//! observed ones, so a correct planner asks for no write, no build, no lookup and no deletion.
//! Prints the median of 5 runs after one warm-up, peak RSS (VmHWM) and the plan's sizes; asserts
//! nothing about time. Run with `cargo bench -p kforge-reconcile --bench plan` (source: tests/bench/plan.rs).

#[path = "cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{KERNELS, MODULES, NODES, facts, module, nodes, now, reset_peak, status_kib};
use kforge_reconcile::api::Module;
use kforge_reconcile::facts::slim_daemonset;
use kforge_reconcile::labels::{KERNEL_FULL, label_value, ready_label};
use kforge_reconcile::plan::{ImageFact, Plan, plan};

fn main() {
    let setup = Instant::now();
    let mut nodes = nodes();
    let modules: Vec<Module> = (0..MODULES).map(|m| module(m, "registry.example")).collect();
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
    // Every module is loaded where it is selected, and the nodes carry the kernel label and each
    // loaded Module's ready label. As in the controller, label keys and values and each Module's
    // `namespace/name` are shared between nodes.
    let mut shared: HashMap<String, Arc<str>> = HashMap::new();
    let mut intern = |s: &str| Arc::clone(shared.entry(s.to_string()).or_insert_with(|| Arc::from(s)));
    let ids: Vec<Arc<str>> = modules
        .iter()
        .map(|m| Arc::from(format!("{}/{}", m.metadata.namespace.as_deref().unwrap_or_default(), m.metadata.name.as_deref().unwrap_or_default())))
        .collect();
    for node in &mut nodes {
        let mut labels: Vec<(Arc<str>, Arc<str>)> = node.labels.iter().map(|(k, v)| (intern(k), intern(v))).collect();
        labels.push((intern(KERNEL_FULL), intern(&label_value(&node.kernel))));
        for (m, id) in modules.iter().zip(&ids) {
            if m.spec.selector.iter().all(|(k, v)| node.labels.get(k) == Some(v.as_str())) {
                let ns = m.metadata.namespace.as_deref().unwrap_or_default();
                let name = m.metadata.name.as_deref().unwrap_or_default();
                node.loaded.insert(Arc::clone(id));
                labels.push((intern(&ready_label(ns, name)), intern("")));
            }
        }
        node.labels = labels.into_iter().collect();
    }
    drop(shared);
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
