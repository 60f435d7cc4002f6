//! The whole controller, in steady state, on the planner bench's cluster (5,000 nodes x 40 kernels
//! x 200 Modules, ~500,000 loader pods) served by a mocked API server, images by a fake registry.
//!
//! The cluster is already as kforge wants it: DaemonSets as planned (digests from the registry),
//! nodes labelled, one Ready loader pod per (node, Module selecting it), Module statuses as the
//! planner computes them, finalizers on. The target is zero writes and RSS <= 200 MB.
//! Prints the time to the first pass, passes, API writes (counted by the mock and by the
//! controller), registry lookups, pass intervals and RSS (current and peak since the controller
//! started); asserts nothing. Run with `cargo bench -p kforge-reconcile --bench reconcile`
//! (source: tests/bench/reconcile.rs).
//!
//! The desired state is computed in a child process (the bench runs itself with
//! `KFORGE_BENCH_SETUP` set) and handed over in files, so that planning garbage does not count in
//! this process's RSS; pods and nodes are generated page by page, DaemonSets read from the file
//! page by page: what the bench itself keeps is small (printed as the baseline).

#[path = "cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{KERNELS, MODULES, NODES, facts, module, node, nodes, now, reset_peak, status_kib};
use http::{Method, Request, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::DaemonSetStatus;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, NodeStatus, NodeSystemInfo, Pod, PodCondition, PodSpec, PodStatus, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kforge_reconcile::api::Module;
use kforge_reconcile::facts::{NodeLabels, slim_daemonset};
use kforge_reconcile::labels::{COMPONENT, KERNEL_FULL, LOADER, MODULE_NAME, label_value, ready_label};
use kforge_reconcile::plan::{ImageFact, NodeFacts, plan};
use kforge_reconcile::{Config, Controller, FINALIZER};
use kube::client::Body;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the controller runs after its first pass.
const STEADY: Duration = Duration::from_secs(12);
/// Its resync period (every image looked up again, and a pass).
const RESYNC: Duration = Duration::from_secs(2);
/// Set (to the output directory) in the child process that computes the desired state.
const SETUP_ENV: &str = "KFORGE_BENCH_SETUP";

/// The manifest the fake registry serves for `repo:tag`; its digest is what the DaemonSets pin.
fn manifest(repo_tag: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":2}},"layers":[],"annotations":{{"bench":"{repo_tag}"}}}}"#,
        "0".repeat(64)
    )
}

fn digest(body: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body.as_bytes())))
}

fn selects(m: &Module, labels: &NodeLabels) -> bool {
    m.spec.selector.iter().all(|(k, v)| labels.get(k) == Some(v.as_str()))
}

fn modules(host: &str) -> Vec<Module> {
    (0..MODULES)
        .map(|m| {
            let mut module = module(m, host);
            module.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
            module.metadata.resource_version = Some("1".into());
            module
        })
        .collect()
}

/// Node `i` as kforge leaves it: kernel label and the ready label of every Module selecting it.
fn labelled(i: usize, modules: &[Module]) -> NodeFacts {
    let mut n = node(i);
    let mut labels: BTreeMap<String, String> = n.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    labels.insert(KERNEL_FULL.to_string(), label_value(&n.kernel));
    for m in modules.iter().filter(|m| selects(m, &n.labels)) {
        let (ns, name) = (m.metadata.namespace.clone().unwrap_or_default(), m.metadata.name.clone().unwrap_or_default());
        n.loaded.insert(format!("{ns}/{name}").into());
        labels.insert(ready_label(&ns, &name), String::new());
    }
    n.labels = NodeLabels::from(&labels);
    n
}

/// What the API server holds and the loader pods' DaemonSet and image per (Module, kernel).
#[derive(serde::Serialize, serde::Deserialize)]
struct Table {
    loaders: Vec<Vec<(String, String)>>,
}

/// The child: plans the steady state as `plan.rs` does and writes Modules (with status) and
/// DaemonSets (one JSON a line) and the loader table into `dir`.
fn setup(host: &str, dir: &Path) {
    let t = Instant::now();
    let mut modules = modules(host);
    let mut facts = facts();
    let first = plan(&modules, &nodes(), &facts, now());
    for l in &first.lookups {
        let repo_tag = l.key.0.strip_prefix(&format!("{host}/")).unwrap_or(&l.key.0);
        facts.images.insert(l.key.clone(), ImageFact::Present { digest: digest(&manifest(repo_tag)), inputs_hash: None });
    }
    drop(first);
    let nodes: Vec<NodeFacts> = (0..NODES).map(|i| labelled(i, &modules)).collect();
    let mut by_kernel: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        by_kernel.entry(label_value(&n.kernel)).or_default().push(i);
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("daemonsets.jsonl")).expect("create"));
    let mut loaders = vec![vec![(String::new(), String::new()); KERNELS]; MODULES];
    for (m, one) in modules.chunks(1).enumerate() {
        for mp in plan(one, &nodes, &facts, now()).modules {
            for mut ds in mp.daemonsets {
                // Status as the DaemonSet controller would report it: every matching node runs a Ready pod.
                let selector = ds.spec.template.spec.as_ref().and_then(|s| s.node_selector.clone()).unwrap_or_default();
                let candidates: Vec<usize> = match selector.get(KERNEL_FULL) {
                    Some(k) => by_kernel.get(k).cloned().unwrap_or_default(),
                    None => (0..NODES).collect(),
                };
                let n = candidates.iter().filter(|&&i| selector.iter().all(|(k, v)| nodes[i].labels.get(k) == Some(v.as_str()))).count() as i32;
                ds.status = Some(DaemonSetStatus {
                    current_number_scheduled: n,
                    desired_number_scheduled: n,
                    number_ready: n,
                    number_available: Some(n),
                    updated_number_scheduled: Some(n),
                    observed_generation: Some(1),
                    ..Default::default()
                });
                ds.metadata.resource_version = Some("1".into());
                if let Some(k) = selector.get(KERNEL_FULL)
                    && let Some(kernel) = (0..KERNELS).find(|&k2| label_value(&cluster::kernel(k2)) == *k)
                {
                    let image = ds.spec.template.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone()).unwrap_or_default();
                    loaders[m][kernel] = (ds.metadata.name.clone().unwrap_or_default(), image);
                }
                serde_json::to_writer(&mut out, &ds).expect("write");
                out.write_all(b"\n").expect("write");
                slim_daemonset(&mut ds);
                facts.daemonsets.insert((mp.namespace.clone(), ds.metadata.name.clone().unwrap_or_default()), Arc::new(ds));
            }
        }
    }
    out.flush().expect("flush");
    // The statuses the controller will compute from this cluster.
    let last = plan(&modules, &nodes, &facts, now());
    let writes: usize = last.modules.iter().map(|m| m.daemonsets.len()).sum();
    let ready = last.modules.iter().filter(|m| m.status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")).count();
    println!(
        "  setup (child process, {:.1} s): {} DaemonSets, {} images; final plan: {writes} DaemonSet writes, {} node-label changes, {} garbage, {} lookups, {} builds, {ready} Modules Ready",
        t.elapsed().as_secs_f64(),
        facts.daemonsets.len(),
        facts.images.len(),
        last.node_labels.len(),
        last.garbage.len(),
        last.lookups.len(),
        last.builds.len()
    );
    for (module, mp) in modules.iter_mut().zip(last.modules) {
        module.status = Some(mp.status);
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("modules.jsonl")).expect("create"));
    for m in &modules {
        serde_json::to_writer(&mut out, m).expect("write");
        out.write_all(b"\n").expect("write");
    }
    out.flush().expect("flush");
    std::fs::write(dir.join("table.json"), serde_json::to_vec(&Table { loaders }).expect("json")).expect("write");
}

/// What the mocked API server serves from.
struct Cluster {
    modules: Vec<Module>,
    module_lines: Vec<Box<str>>,
    /// Offsets and lengths of the DaemonSet lines in `ds_file`.
    ds_index: Vec<(u64, usize)>,
    ds_file: PathBuf,
    loaders: Vec<Vec<(String, String)>>,
    configmaps: Vec<Value>,
    secrets: Vec<Value>,
}

impl Cluster {
    fn load(dir: &Path) -> Cluster {
        let module_lines: Vec<Box<str>> = std::fs::read_to_string(dir.join("modules.jsonl")).expect("modules").lines().map(Box::from).collect();
        let modules = module_lines.iter().map(|l| serde_json::from_str(l).expect("module")).collect();
        let mut ds_index = Vec::new();
        let mut offset = 0u64;
        for line in std::io::BufRead::lines(std::io::BufReader::new(std::fs::File::open(dir.join("daemonsets.jsonl")).expect("open"))) {
            let len = line.expect("line").len();
            ds_index.push((offset, len));
            offset += len as u64 + 1;
        }
        let table: Table = serde_json::from_slice(&std::fs::read(dir.join("table.json")).expect("table")).expect("table");
        let (mut configmaps, mut secrets) = (Vec::new(), Vec::new());
        for (key, data) in facts().objects {
            let metadata = ObjectMeta { name: Some(key.name), namespace: Some(key.namespace), resource_version: Some("1".into()), ..Default::default() };
            if key.kind == "ConfigMap" {
                let data = data.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect();
                configmaps.push(serde_json::to_value(ConfigMap { metadata, data: Some(data), ..Default::default() }).expect("json"));
            } else {
                let data = data.into_iter().map(|(k, v)| (k, ByteString(v))).collect();
                secrets.push(serde_json::to_value(Secret { metadata, data: Some(data), type_: Some("Opaque".into()), ..Default::default() }).expect("json"));
            }
        }
        Cluster { modules, module_lines, ds_index, ds_file: dir.join("daemonsets.jsonl"), loaders: table.loaders, configmaps, secrets }
    }

    fn node(&self, i: usize) -> Value {
        let n = labelled(i, &self.modules);
        let node = Node {
            metadata: ObjectMeta {
                name: Some(n.name),
                labels: Some(n.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                node_info: Some(NodeSystemInfo {
                    kernel_version: n.kernel,
                    architecture: n.architecture,
                    operating_system: "linux".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        serde_json::to_value(node).expect("json")
    }

    /// The loader pod of Module `m` on node `i`.
    fn pod(&self, i: usize, m: usize) -> Value {
        let module = &self.modules[m];
        let name = module.metadata.name.clone().unwrap_or_default();
        let (ds, image) = &self.loaders[m][i % KERNELS];
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("{ds}-{i:05}")),
                namespace: module.metadata.namespace.clone(),
                labels: Some([(COMPONENT.to_string(), LOADER.to_string()), (MODULE_NAME.to_string(), name)].into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "DaemonSet".into(),
                    name: ds.clone(),
                    uid: format!("ds-{m}-{}", i % KERNELS),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(format!("node-{i:05}")),
                containers: vec![Container { name: "module-loader".into(), image: Some(image.clone()), ..Default::default() }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() }]),
                phase: Some("Running".into()),
                ..Default::default()
            }),
        };
        serde_json::to_value(pod).expect("json")
    }

    /// One page of the list at `path` from position `from`: its items and the next position.
    fn page(&self, path: &str, from: usize, limit: usize) -> Option<(Vec<String>, Option<usize>)> {
        let slice = |all: &[Value]| {
            let end = (from + limit).min(all.len());
            (all[from.min(end)..end].iter().map(Value::to_string).collect(), (end < all.len()).then_some(end))
        };
        Some(match path {
            "/apis/kmm.sigs.x-k8s.io/v1beta1/modules" => {
                let end = (from + limit).min(self.module_lines.len());
                (self.module_lines[from.min(end)..end].iter().map(|l| l.to_string()).collect(), (end < self.module_lines.len()).then_some(end))
            }
            "/api/v1/nodes" => {
                let end = (from + limit).min(NODES);
                ((from..end).map(|i| self.node(i).to_string()).collect(), (end < NODES).then_some(end))
            }
            "/apis/apps/v1/daemonsets" => {
                let end = (from + limit).min(self.ds_index.len());
                let mut file = std::fs::File::open(&self.ds_file).expect("open");
                let mut items = Vec::new();
                for &(offset, len) in &self.ds_index[from.min(end)..end] {
                    let mut buf = vec![0; len];
                    file.seek(SeekFrom::Start(offset)).expect("seek");
                    file.read_exact(&mut buf).expect("read");
                    items.push(String::from_utf8(buf).expect("utf-8"));
                }
                (items, (end < self.ds_index.len()).then_some(end))
            }
            "/api/v1/pods" => {
                // Position: node * MODULES + module.
                let (mut at, mut items) = (from, Vec::new());
                let mut labels = (usize::MAX, NodeLabels::default());
                while at < NODES * MODULES && items.len() < limit {
                    let (i, m) = (at / MODULES, at % MODULES);
                    if labels.0 != i {
                        labels = (i, node(i).labels);
                    }
                    if selects(&self.modules[m], &labels.1) {
                        items.push(self.pod(i, m).to_string());
                    }
                    at += 1;
                }
                (items, (at < NODES * MODULES).then_some(at))
            }
            "/api/v1/configmaps" => slice(&self.configmaps),
            "/api/v1/secrets" => slice(&self.secrets),
            _ => return None,
        })
    }
}

fn respond(status: u16, body: Vec<u8>) -> Response<Body> {
    Response::builder().status(status).header("content-type", "application/json").body(Body::from(body)).expect("response")
}

/// API requests seen by the mock.
#[derive(Default)]
struct Seen {
    writes: Vec<String>,
    write_bodies: Vec<String>,
    lists: u64,
    watches: u64,
    unknown: Vec<String>,
}

/// The mocked API server: lists paged from `cluster`, watches left open, writes counted and echoed.
async fn api_server(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>, cluster: Arc<Cluster>, seen: Arc<Mutex<Seen>>) {
    let mut open_watches = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let param = |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).map(str::to_string);
        if req.method() != Method::GET {
            let what = format!("{} {path}?{query}", req.method());
            let seen = seen.clone();
            tokio::spawn(async move {
                let body = req.into_body().collect_bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                {
                    let mut s = seen.lock().expect("lock");
                    s.writes.push(what);
                    if s.write_bodies.len() < 3 {
                        s.write_bodies.push(String::from_utf8_lossy(&body).chars().take(3000).collect());
                    }
                }
                send.send_response(respond(200, body));
            });
            continue;
        }
        if param("watch").as_deref() == Some("true") {
            seen.lock().expect("lock").watches += 1;
            open_watches.push(send);
            continue;
        }
        seen.lock().expect("lock").lists += 1;
        let limit = param("limit").and_then(|l| l.parse().ok()).filter(|&l| l > 0).unwrap_or(usize::MAX);
        let from = param("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let cluster = cluster.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let page = tokio::task::spawn_blocking(move || cluster.page(&path, from, limit).ok_or(path)).await.expect("page");
            match page {
                Ok((items, next)) => {
                    let mut meta = json!({"resourceVersion": "1"});
                    if let Some(next) = next {
                        meta["continue"] = Value::String(next.to_string());
                    }
                    let body = format!(r#"{{"apiVersion":"v1","kind":"List","metadata":{meta},"items":[{}]}}"#, items.join(","));
                    send.send_response(respond(200, body.into_bytes()));
                }
                Err(path) => {
                    println!("  unknown path: GET {path}?{query}");
                    seen.lock().expect("lock").unknown.push(path.clone());
                    let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")});
                    send.send_response(respond(404, status.to_string().into_bytes()));
                }
            }
        });
    }
    drop(open_watches);
}

/// A registry on 127.0.0.1 (plain HTTP, keep-alive) with every `repo:tag` present; counts manifest requests.
async fn registry(lookups: Arc<AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let lookups = lookups.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let mut words = head.lines().next().unwrap_or_default().split(' ');
                    let (method, path) = (words.next().unwrap_or_default().to_string(), words.next().unwrap_or_default().to_string());
                    let path = path.split('?').next().unwrap_or_default();
                    let (status, extra, body) = if path == "/v2/" {
                        ("200 OK", String::new(), "{}".to_string())
                    } else if let Some((repo, tag)) = path.strip_prefix("/v2/").and_then(|p| p.rsplit_once("/manifests/")) {
                        lookups.fetch_add(1, Ordering::Relaxed);
                        let body = manifest(&format!("{repo}:{tag}"));
                        ("200 OK", format!("Docker-Content-Digest: {}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n", digest(&body)), body)
                    } else {
                        println!("  registry: unknown request {method} {path}");
                        (
                            "404 Not Found",
                            "Content-Type: application/json\r\n".to_string(),
                            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"unknown"}]}"#.to_string(),
                        )
                    };
                    let sent = if method == "HEAD" { "" } else { body.as_str() };
                    let reply = format!("HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n{sent}", body.len());
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    if let Some(dir) = std::env::var_os(SETUP_ENV) {
        let host = std::env::var("KFORGE_BENCH_REGISTRY").unwrap_or_default();
        setup(&host, Path::new(&dir));
        return;
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime").block_on(bench());
}

async fn bench() {
    println!("reconcile bench: {NODES} nodes x {KERNELS} kernels x {MODULES} Modules, steady state, mocked API server");
    let lookups = Arc::new(AtomicU64::new(0));
    let host = registry(lookups.clone()).await;
    let dir = std::env::temp_dir().join(format!("kforge-reconcile-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env(SETUP_ENV, &dir)
        .env("KFORGE_BENCH_REGISTRY", &host)
        .status()
        .expect("setup process");
    assert!(status.success(), "setup failed");
    let cluster = Arc::new(Cluster::load(&dir));

    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let seen = Arc::new(Mutex::new(Seen::default()));
    tokio::spawn(api_server(handle, cluster.clone(), seen.clone()));

    let mut config = Config::new(kforge_reconcile::plan);
    config.events = false;
    config.leader_election = None;
    config.resync = RESYNC;
    config.registry.per_registry.insert(host.clone(), kforge_image::RegistryTls { insecure: true, ..Default::default() });
    config.registry.attempts = 1;
    config.registry.timeout = Duration::from_secs(10);
    let mut registry = prometheus_client::registry::Registry::default();
    let controller = Controller::new(client, config, &mut registry);
    let metrics = controller.metrics();

    let baseline = status_kib("VmRSS:");
    let reset = reset_peak();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let run = tokio::spawn(controller.run(async move {
        let _ = stopped.await;
    }));
    while metrics.passes() < 1 && start.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = start.elapsed();
    let rss_first = status_kib("VmRSS:");
    let peak_first = status_kib("VmHWM:");
    let lookups_first = lookups.load(Ordering::Relaxed);
    let writes_first = seen.lock().expect("lock").writes.len();
    // Steady state: note when each pass starts.
    let mut starts = vec![first];
    let steady = Instant::now();
    while steady.elapsed() < STEADY {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let passes = metrics.passes() as usize;
        while starts.len() < passes {
            starts.push(start.elapsed());
        }
    }
    let rss_end = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), run).await;

    let seen = seen.lock().expect("lock");
    let intervals: Vec<f64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0).collect();
    println!("  time to the first pass (lists of ~{} pods, nodes, DaemonSets, Modules): {:.2} s", pods_total(&cluster), first.as_secs_f64());
    println!(
        "  passes: {} ({} in {:.0} s of steady state, resync {} s); intervals between pass starts (ms): {}",
        metrics.passes(),
        starts.len() - 1,
        STEADY.as_secs_f64(),
        RESYNC.as_secs(),
        intervals.iter().map(|i| format!("{i:.0}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  API writes: {} seen by the mock ({} before the first pass ended), {} counted by the controller; {} lists, {} watches",
        seen.writes.len(),
        writes_first,
        metrics.writes_total(),
        seen.lists,
        seen.watches
    );
    println!("  registry lookups: {} ({lookups_first} by the end of the first pass)", lookups.load(Ordering::Relaxed));
    println!(
        "  RSS: {:.1} MiB baseline (the bench's own data), {:.1} MiB after the first pass, {:.1} MiB at the end; peak {:.1} MiB{} ({:.1} MiB at the first pass)",
        mib(baseline),
        mib(rss_first),
        mib(rss_end),
        mib(peak),
        if reset { " since the controller started" } else { " (could not reset the peak: includes setup)" },
        mib(peak_first)
    );
    if !seen.writes.is_empty() {
        println!("  writes (first 10):");
        for w in seen.writes.iter().take(10) {
            println!("    {w}");
        }
        for b in &seen.write_bodies {
            println!("    body: {b}");
        }
    }
    if !seen.unknown.is_empty() {
        println!("  unknown paths: {:?}", seen.unknown);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn pods_total(cluster: &Cluster) -> usize {
    (0..NODES).map(|i| node(i).labels).map(|l| cluster.modules.iter().filter(|m| selects(m, &l)).count()).sum()
}
