//! `kforge reconcile` end to end, against a private control plane (etcd, kube-apiserver,
//! controller-manager, scheduler, kwok's fake nodes) and a real registry: KMM Modules applied as
//! KMM users write them become digest-pinned module-loader DaemonSets on the nodes running each
//! kernel, a device plugin follows the loaders, a steady cluster costs no writes, a kernel upgrade
//! moves the loaders, bad input is reported in the Module's status, and deletion unloads cleanly.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kforge_reconcile::api::Module;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use support::control_plane::{ControlPlane, FakeNode, Options};
use support::oci::{Image, file, write_image};
use support::registry::{Registry, skopeo_copy};
use support::{kforge, ok};

const KERNEL_A: &str = "6.1.0-31-amd64";
const KERNEL_B: &str = "6.1.0-32-amd64";
const KERNEL_LABEL: &str = "kmm.node.kubernetes.io/kernel-version.full";
/// How long a wait that includes a module build may take on a loaded 2-core machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
const READY_LABEL: &str = "kmm.node.kubernetes.io/default.kmm-ci.ready";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

fn object<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("not a valid object ({e}): {value}"))
}

/// A small image naming itself, pushed as `repo:tag`; returns its digest.
fn push_image(registry: &Registry, work: &Path, repo: &str, tag: &str) -> String {
    let layout = work.join(format!("{repo}-{tag}"));
    write_image(&layout, "v", &Image::oci(vec![vec![file("/etc/kforge-kmm", format!("{repo}:{tag}\n").into_bytes())]]));
    let reference = format!("{}/{repo}:{tag}", registry.host());
    skopeo_copy(&format!("oci:{}:v", layout.display()), &format!("docker://{reference}"), &registry.skopeo_dest_flags());
    ok(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}"]).args(registry.skopeo_flags()).arg(format!("docker://{reference}")))
        .trim()
        .to_string()
}

/// `kforge reconcile`, stopped with SIGTERM on drop; its health and metrics address.
struct Reconciler {
    child: Child,
    addr: String,
}

impl Reconciler {
    fn start(kubeconfig: &Path, args: &[&str]) -> Reconciler {
        let mut child = kforge()
            .arg("reconcile")
            .args(["--listen", "127.0.0.1:0", "--resync", "2s"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kforge_reconcile=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kforge reconcile");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
        let Some(addr) = line.trim().strip_prefix("kforge reconcile: health and metrics on ").map(str::to_string) else {
            let _ = child.kill();
            panic!("kforge reconcile did not start: {line:?}");
        };
        Reconciler { child, addr }
    }

    /// The value of a counter or gauge on /metrics (summed over label sets matching `filter`).
    fn metric(&self, name: &str, filter: &str) -> f64 {
        let body = ok(Command::new("curl").args(["-sf", &format!("http://{}/metrics", self.addr)]));
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains(filter) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    fn metrics_text(&self) -> String {
        ok(Command::new("curl").args(["-sf", &format!("http://{}/metrics", self.addr)]))
    }

    fn healthy(&self, path: &str) -> bool {
        Command::new("curl").args(["-sf", &format!("http://{}{path}", self.addr)]).status().is_ok_and(|s| s.success())
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// Creates the Module CRD kforge generates (the API server must accept it) and waits until it is served.
async fn install_crd(cp: &ControlPlane, client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Module::crd()).await.expect("the generated CRD is accepted by the API server");
    cp.eventually("the Module CRD is established", async || {
        let crd = crds.get("modules.kmm.sigs.x-k8s.io").await.ok()?;
        crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
    })
    .await;
}

/// Creates every object of `deploy/reconciler.yaml` and returns a kubeconfig holding a token of its
/// service account, so the reconciler runs with exactly the RBAC the manifest grants.
async fn deploy_manifest(cp: &ControlPlane, client: &kube::Client, dir: &Path) -> std::path::PathBuf {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/reconciler.yaml")).expect("deploy/reconciler.yaml");
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("the manifest is YAML");
    let pp = PostParams::default();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let ns = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
        let created = match kind.as_str() {
            "Namespace" => Api::<Namespace>::all(client.clone()).create(&pp, &object(doc)).await.map(drop),
            "ServiceAccount" => Api::<ServiceAccount>::namespaced(client.clone(), &ns).create(&pp, &object(doc)).await.map(drop),
            "ClusterRole" => Api::<ClusterRole>::all(client.clone()).create(&pp, &object(doc)).await.map(drop),
            "ClusterRoleBinding" => Api::<ClusterRoleBinding>::all(client.clone()).create(&pp, &object(doc)).await.map(drop),
            "Role" => Api::<Role>::namespaced(client.clone(), &ns).create(&pp, &object(doc)).await.map(drop),
            "RoleBinding" => Api::<RoleBinding>::namespaced(client.clone(), &ns).create(&pp, &object(doc)).await.map(drop),
            "Deployment" => Api::<Deployment>::namespaced(client.clone(), &ns).create(&pp, &object(doc)).await.map(drop),
            other => panic!("deploy/reconciler.yaml: unexpected kind {other}"),
        };
        created.unwrap_or_else(|e| panic!("the API server refuses the manifest's {kind}: {e}"));
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "kforge-system");
    let request: TokenRequest = object(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}));
    let token = cp
        .eventually("a token for the reconciler's service account", async || {
            let answer: TokenRequest = accounts.create_subresource("token", "kforge-reconciler", &pp, &request).await.ok()?;
            answer.status.map(|s| s.token)
        })
        .await;
    let kubeconfig = dir.join("reconciler.kubeconfig");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": cp.server(), "certificate-authority": cp.ca_cert()}}],
        "users": [{"name": "kforge-reconciler", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "kforge-reconciler"}}],
        "current-context": "test",
    });
    std::fs::write(&kubeconfig, serde_json::to_vec_pretty(&config).expect("json")).expect("write kubeconfig");
    kubeconfig
}

fn condition(module: &Module, type_: &str) -> Option<(String, String, String)> {
    let c = module.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn loaders(list: &[DaemonSet], component: &str) -> Vec<DaemonSet> {
    list.iter().filter(|d| d.metadata.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/component")).is_some_and(|c| c == component)).cloned().collect()
}

fn node_selector(ds: &DaemonSet) -> std::collections::BTreeMap<String, String> {
    ds.spec.template.spec.as_ref().and_then(|p| p.node_selector.clone()).unwrap_or_default()
}

fn image(ds: &DaemonSet) -> String {
    ds.spec.template.spec.as_ref().and_then(|p| p.containers.first()).and_then(|c| c.image.clone()).unwrap_or_default()
}

/// The whole life of a Module on a cluster of four fake nodes: three selected (two on kernel A, one
/// on kernel B), one not. Only kernel A's image exists at first.
#[test]
#[cfg_attr(kforge_no_control_plane, ignore = "the control plane peers are not built: run tests/peers/build.sh")]
fn modules_become_digest_pinned_loaders_and_follow_kernels() {
    let registry = Registry::start_plain();
    let work = tempfile::tempdir().expect("tempdir");
    let digest_a = push_image(&registry, work.path(), "kmm-ci", KERNEL_A);
    let cp = ControlPlane::start_with(Options {
        nodes: vec![
            FakeNode::new("a1", KERNEL_A, "Debian GNU/Linux 12 (bookworm)").label("kforge.test/gpu", "yes"),
            FakeNode::new("a2", KERNEL_A, "Debian GNU/Linux 12 (bookworm)").label("kforge.test/gpu", "yes"),
            FakeNode::new("b1", KERNEL_B, "Debian GNU/Linux 12 (bookworm)").label("kforge.test/gpu", "yes"),
            FakeNode::new("plain", KERNEL_A, "Debian GNU/Linux 12 (bookworm)"),
        ],
    });
    let rt = runtime();
    let client = rt.block_on(cp.client());
    rt.block_on(install_crd(&cp, &client));

    // The reconciler runs as deploy/reconciler.yaml's service account, with leader election.
    let kubeconfig = rt.block_on(deploy_manifest(&cp, &client, work.path()));
    let reconciler = Reconciler::start(&kubeconfig, &["--leader-election", "kforge-system", "--identity", "replica-1"]);
    let modules: Api<Module> = Api::namespaced(client.clone(), "default");
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());
    let host = registry.host().to_string();
    let module: Module = object(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": "kmm-ci", "namespace": "default"},
        "spec": {
            "moduleLoader": {"container": {
                "modprobe": {"moduleName": "kmm_ci_a", "parameters": ["debug=1"]},
                "kernelMappings": [{"regexp": "^6\\.1\\.", "containerImage": format!("{host}/kmm-ci:${{KERNEL_FULL_VERSION}}")}],
            }},
            "devicePlugin": {"container": {"image": format!("{host}/device-plugin:1")}},
            "selector": {"kforge.test/gpu": "yes"},
        },
    }));
    rt.block_on(modules.create(&PostParams::default(), &module)).expect("create the Module");

    // Kernel A: one loader, pinned by digest, on the selected nodes running kernel A.
    let loader_a = rt.block_on(cp.eventually("a loader DaemonSet for kernel A", async || {
        let list = daemonsets.list(&ListParams::default()).await.ok()?;
        loaders(&list.items, "module-loader").into_iter().find(|d| node_selector(d).get(KERNEL_LABEL).is_some_and(|k| k == KERNEL_A))
    }));
    assert_eq!(image(&loader_a), format!("{host}/kmm-ci@{digest_a}"), "pinned by the registry's digest");
    let selector = node_selector(&loader_a);
    assert_eq!(selector.get("kforge.test/gpu").map(String::as_str), Some("yes"), "the Module's selector is kept: {selector:?}");
    let pod = loader_a.spec.template.spec.clone().expect("pod spec");
    let container = &pod.containers[0];
    assert_eq!(container.command.as_deref(), Some(&["sleep".to_string(), "infinity".to_string()][..]));
    let caps = container.security_context.as_ref().and_then(|s| s.capabilities.as_ref()).and_then(|c| c.add.clone()).unwrap_or_default();
    assert!(caps.contains(&"SYS_MODULE".to_string()), "SYS_MODULE: {caps:?}");
    let hooks = serde_json::to_string(&container.lifecycle).expect("json");
    assert!(hooks.contains("modprobe") && hooks.contains("kmm_ci_a") && hooks.contains("debug=1"), "modprobe hooks: {hooks}");
    let owner = loader_a.metadata.owner_references.clone().unwrap_or_default();
    assert!(owner.iter().any(|o| o.kind == "Module" && o.name == "kmm-ci"), "owned by the Module: {owner:?}");

    // Nodes carry their kernel; the loader's pods run on a1 and a2 only.
    rt.block_on(cp.eventually("kernel labels on every node", async || {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        list.items.iter().all(|n| n.metadata.labels.as_ref().and_then(|l| l.get(KERNEL_LABEL)).is_some()).then_some(())
    }));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let on = rt.block_on(cp.eventually("the loader's pods on a1 and a2", async || {
        let list = pods.list(&ListParams::default().labels("app.kubernetes.io/component=module-loader")).await.ok()?;
        let mut on: Vec<String> = list.items.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
        on.sort();
        (on.len() == 2).then_some(on)
    }));
    assert_eq!(on, ["a1", "a2"]);

    // Kernel B has no image and nothing to build it with: Degraded, naming the image.
    let status = rt.block_on(cp.eventually("kernel B reported missing", async || {
        let m = modules.get("kmm-ci").await.ok()?;
        let (s, _, message) = condition(&m, "Degraded")?;
        (s == "True" && message.contains(&format!("kmm-ci:{KERNEL_B}"))).then_some(m)
    }));
    let kernels = status.status.as_ref().map(|s| s.kernels.clone()).unwrap_or_default();
    let a = kernels.iter().find(|k| k.kernel == KERNEL_A).expect("kernel A in the status");
    assert_eq!(a.digest.as_deref(), Some(digest_a.as_str()));
    assert_eq!(a.nodes_desired, 2);

    // The device plugin follows loaders that are Ready (kwok makes the pods Ready).
    rt.block_on(cp.eventually("ready labels on a1 and a2", async || {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|n| n.metadata.labels.as_ref().is_some_and(|l| l.contains_key(READY_LABEL)))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        (ready.len() == 2).then_some(())
    }));
    let plugin = rt.block_on(cp.eventually("a device-plugin DaemonSet", async || {
        let list = daemonsets.list(&ListParams::default()).await.ok()?;
        loaders(&list.items, "device-plugin").into_iter().next()
    }));
    assert!(node_selector(&plugin).contains_key(READY_LABEL), "device plugin only where the loader is ready: {:?}", node_selector(&plugin));

    // Kernel B's image appears: the next resync pins it.
    let digest_b = push_image(&registry, work.path(), "kmm-ci", KERNEL_B);
    let loader_b = rt.block_on(cp.eventually("a loader DaemonSet for kernel B", async || {
        let list = daemonsets.list(&ListParams::default()).await.ok()?;
        loaders(&list.items, "module-loader").into_iter().find(|d| node_selector(d).get(KERNEL_LABEL).is_some_and(|k| k == KERNEL_B))
    }));
    assert_eq!(image(&loader_b), format!("{host}/kmm-ci@{digest_b}"));
    rt.block_on(cp.eventually("Ready once every selected node has its loader", async || {
        let m = modules.get("kmm-ci").await.ok()?;
        let (s, _, _) = condition(&m, "Ready")?;
        (s == "True").then_some(())
    }));

    // Steady state: several resyncs, no write request.
    std::thread::sleep(Duration::from_secs(3));
    // Writes other than the leader's Lease renewals (every 5 s while it leads).
    let writes = || reconciler.metric("kforge_reconcile_writes_total", "") - reconciler.metric("kforge_reconcile_writes_total", "kind=\"lease\"");
    let before = writes();
    let passes_before = reconciler.metric("kforge_reconcile_passes_total", "");
    assert!(before > 0.0, "the writes so far are counted");
    std::thread::sleep(Duration::from_secs(7));
    assert!(reconciler.metric("kforge_reconcile_passes_total", "") > passes_before, "the reconciler kept passing");
    let after = writes();
    assert_eq!(after, before, "a steady cluster costs no writes:\n{}", reconciler.metrics_text());
    assert!(reconciler.healthy("/healthz") && reconciler.healthy("/readyz"));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "kforge-system");
    let lease = rt.block_on(leases.get("kforge-reconciler")).expect("the Lease");
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some("replica-1"), "the leader holds the Lease");

    // Kernel upgrade: b1 now runs kernel A; kernel B's loader goes, b1 gets kernel A's.
    let patch = json!({"status": {"nodeInfo": {"kernelVersion": KERNEL_A}}});
    rt.block_on(nodes.patch_status("b1", &PatchParams::default(), &Patch::Merge(&patch))).expect("upgrade b1");
    rt.block_on(cp.eventually("kernel B's loader collected", async || {
        let list = daemonsets.list(&ListParams::default()).await.ok()?;
        let loaders = loaders(&list.items, "module-loader");
        (loaders.len() == 1 && node_selector(&loaders[0]).get(KERNEL_LABEL).is_some_and(|k| k == KERNEL_A)).then_some(())
    }));
    rt.block_on(cp.eventually("b1 labelled with its new kernel", async || {
        let n = nodes.get("b1").await.ok()?;
        n.metadata.labels?.get(KERNEL_LABEL).is_some_and(|k| k == KERNEL_A).then_some(())
    }));

    // Bad input: an invalid regexp is a Degraded condition naming the field, and the controller
    // goes on serving the other Module.
    let bad: Module = object(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {
            "moduleLoader": {"container": {"modprobe": {"moduleName": "x"}, "kernelMappings": [{"regexp": "6.1.(", "containerImage": "x"}]}},
            "selector": {"kforge.test/gpu": "yes"},
        },
    }));
    rt.block_on(modules.create(&PostParams::default(), &bad)).expect("create the bad Module");
    let (_, _, message) = rt.block_on(cp.eventually("the bad Module is Degraded", async || {
        let m = modules.get("bad").await.ok()?;
        condition(&m, "Degraded").filter(|(s, _, _)| s == "True")
    }));
    assert!(message.contains("kernelMappings[0].regexp"), "names the field: {message}");

    // Deletion: the finalizer holds the Module until its DaemonSets and ready labels are gone.
    let live = rt.block_on(modules.get("kmm-ci")).expect("get");
    assert!(live.metadata.finalizers.unwrap_or_default().iter().any(|f| f == "kforge.io/module-loader"), "finalizer added");
    rt.block_on(modules.delete("kmm-ci", &DeleteParams::default())).expect("delete");
    rt.block_on(cp.eventually("the Module gone with its DaemonSets", async || {
        let gone = modules.get_opt("kmm-ci").await.ok()?.is_none();
        let list = daemonsets.list(&ListParams::default()).await.ok()?;
        (gone && list.items.is_empty()).then_some(())
    }));
    let labelled = rt.block_on(nodes.list(&ListParams::default())).expect("nodes");
    assert!(labelled.items.iter().all(|n| !n.metadata.labels.as_ref().is_some_and(|l| l.contains_key(READY_LABEL))), "ready labels removed");
    drop(reconciler);
}

/// The sources of the test module as an image of files only (`/src/…`), which a KMM Dockerfile
/// copies from: KMM builds get no build context, only the Dockerfile.
fn push_sources(registry: &Registry, work: &Path) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/modules/kforge_hello");
    let files = std::fs::read_dir(&dir)
        .expect("module sources")
        .flatten()
        .map(|e| file(&format!("/src/{}", e.file_name().to_string_lossy()), std::fs::read(e.path()).expect("read source")))
        .collect();
    let layout = work.join("sources");
    write_image(&layout, "v", &Image::oci(vec![files]));
    let reference = format!("{}/kmm/kforge-hello-src:1", registry.host());
    skopeo_copy(&format!("oci:{}:v", layout.display()), &format!("docker://{reference}"), &registry.skopeo_dest_flags());
    reference
}

/// A KMM Dockerfile as users write them: DTK_AUTO, the injected kernel, a build secret read from
/// /run/secrets/<secret>/<key> with no --mount flag. `marker` changes the Dockerfile's text.
fn kmm_dockerfile(marker: &str) -> String {
    format!(
        "ARG DTK_AUTO\nARG RUNTIME_IMAGE\nARG SOURCES\nFROM ${{SOURCES}} AS sources\n\
         FROM ${{DTK_AUTO}} AS builder\nARG KERNEL_FULL_VERSION\nWORKDIR /build\nCOPY --from=sources /src/ ./\n\
         RUN test \"$(cat /run/secrets/build-token/token)\" = s3cret\n\
         RUN make -C /usr/src/linux-headers-${{KERNEL_FULL_VERSION}} M=/build modules\n\
         FROM ${{RUNTIME_IMAGE}}\nARG KERNEL_FULL_VERSION\n\
         COPY --from=builder /build/kforge_hello.ko /opt/lib/modules/${{KERNEL_FULL_VERSION}}/\n\
         RUN depmod -b /opt ${{KERNEL_FULL_VERSION}}\nLABEL io.kforge.test.marker={marker}\n"
    )
}

/// A Module with build and sign sections, no image yet: the reconciler asks `kforge serve`'s
/// Builder (BuildKit of a Docker engine) once, the loader is pinned to the signed image's digest and
/// the module in it verifies against the Module's certificate; editing the Dockerfile in its
/// ConfigMap rebuilds and moves the loader to the new digest.
#[test]
#[cfg_attr(kforge_no_control_plane, ignore = "the control plane peers are not built: run tests/peers/build.sh")]
fn a_module_with_build_and_sign_is_built_signed_and_rebuilt_when_its_dockerfile_changes() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use support::docker::Engine;
    use support::registry::umoci_unpack;

    let abi = support::kernel_abi();
    let engine = Engine::start();
    let registry = Registry::start_plain();
    let work = tempfile::tempdir().expect("tempdir");
    support::dtk::push_dtk(&registry, &abi, &format!("dtk:{abi}"));
    let runtime_image = support::dtk::push_runtime(&registry, "kmod:bookworm");
    let sources = push_sources(&registry, work.path());
    let keys = support::openssl_keys(work.path(), "module", 2048);
    let config = work.path().join("kforge.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\naudit_log = \"{}\"\n[[keys]]\nname = \"service\"\nkey = \"{}\"\ncert = \"{}\"\n\
             [builder]\nbuildkit = \"{}\"\n[dtk]\nopenshift = false\ntemplate = \"{}/dtk:${{KERNEL_FULL_VERSION}}\"\n",
            work.path().join("audit.jsonl").display(),
            keys.key.display(),
            keys.cert_der.display(),
            engine.url(),
            registry.host()
        ),
    )
    .expect("write config");
    let mut serve = kforge()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("DOCKER_CONFIG", work.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kforge serve");
    let mut first = String::new();
    BufReader::new(serve.stdout.take().expect("stdout")).read_line(&mut first).expect("read");
    let builder =
        first.trim().strip_prefix("kforge serves the signer and the builder on ").unwrap_or_else(|| panic!("serve did not start: {first}")).to_string();
    struct Stop(Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
        }
    }
    let _serve = Stop(serve);

    let cp = ControlPlane::start_with(Options { nodes: vec![FakeNode::new("worker", &abi, "Debian GNU/Linux 12 (bookworm)")] });
    let rt = runtime();
    let client = rt.block_on(cp.client());
    rt.block_on(install_crd(&cp, &client));
    let pp = PostParams::default();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    rt.block_on(configmaps.create(&pp, &object(json!({"metadata": {"name": "kforge-hello-dockerfile"}, "data": {"dockerfile": kmm_dockerfile("one")}}))))
        .expect("ConfigMap");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let key = std::fs::read_to_string(&keys.key).expect("key");
    let cert = std::fs::read_to_string(&keys.cert_pem).expect("cert");
    for (name, data) in [("signing-key", json!({"key": key})), ("signing-cert", json!({"cert": cert})), ("build-token", json!({"token": "s3cret"}))] {
        rt.block_on(secrets.create(&pp, &object(json!({"metadata": {"name": name}, "stringData": data})))).expect("Secret");
    }

    let reconciler = Reconciler::start(cp.kubeconfig(), &["--builder", &format!("http://{builder}")]);
    let host = registry.host().to_string();
    let module: Module = object(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": "kforge-hello", "namespace": "default"},
        "spec": {
            "moduleLoader": {"container": {
                "modprobe": {"moduleName": "kforge_hello"},
                "kernelMappings": [{
                    "regexp": "^.+$",
                    "containerImage": format!("{host}/kmm/kforge_hello:${{KERNEL_FULL_VERSION}}"),
                    "build": {
                        "buildArgs": [{"name": "RUNTIME_IMAGE", "value": runtime_image}, {"name": "SOURCES", "value": sources}],
                        "secrets": [{"name": "build-token"}],
                        "dockerfileConfigMap": {"name": "kforge-hello-dockerfile"},
                    },
                    "sign": {
                        "keySecret": {"name": "signing-key"},
                        "certSecret": {"name": "signing-cert"},
                        "filesToSign": ["/opt/lib/modules/${KERNEL_FULL_VERSION}/kforge_hello.ko"],
                    },
                }],
            }},
            "selector": {},
        },
    }));
    let modules: Api<Module> = Api::namespaced(client.clone(), "default");
    rt.block_on(modules.create(&pp, &module)).expect("create the Module");
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let pinned = |not: Option<String>| {
        let daemonsets = daemonsets.clone();
        async move {
            let list = daemonsets.list(&ListParams::default()).await.ok()?;
            let image = loaders(&list.items, "module-loader").first().map(image)?;
            (Some(&image) != not.as_ref()).then_some(image)
        }
    };
    let first_image = rt.block_on(cp.eventually_within("the loader pinned to the built and signed image", BUILD_TIMEOUT, async || pinned(None).await));
    let tag = format!("{host}/kmm/kforge_hello:{abi}");
    let digest = ok(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}"]).args(registry.skopeo_flags()).arg(format!("docker://{tag}")));
    assert_eq!(first_image, format!("{host}/kmm/kforge_hello@{}", digest.trim()), "pinned to what the tag points at");
    assert_eq!(reconciler.metric("kforge_reconcile_builds_total", "succeeded"), 1.0, "one build");

    // The module in the pinned image carries a signature the Module's certificate verifies.
    let layout = work.path().join("pulled");
    skopeo_copy(&format!("docker://{first_image}"), &format!("oci:{}:img", layout.display()), &registry.skopeo_src_flags());
    let ko = umoci_unpack(&layout, "img", &work.path().join("bundle")).join(format!("opt/lib/modules/{abi}/kforge_hello.ko"));
    ok(kforge().arg("verify").arg("--cert").arg(&keys.cert_der).arg(&ko));

    // A changed Dockerfile changes the inputs: rebuilt, and the loader follows the new digest.
    let patch = json!({"data": {"dockerfile": kmm_dockerfile("two")}});
    rt.block_on(configmaps.patch("kforge-hello-dockerfile", &PatchParams::default(), &Patch::Merge(&patch))).expect("edit the Dockerfile");
    let second_image =
        rt.block_on(cp.eventually_within("the loader moved to the rebuilt image", BUILD_TIMEOUT, async || pinned(Some(first_image.clone())).await));
    let digest = ok(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}"]).args(registry.skopeo_flags()).arg(format!("docker://{tag}")));
    assert_eq!(second_image, format!("{host}/kmm/kforge_hello@{}", digest.trim()));
    let m = rt.block_on(modules.get("kforge-hello")).expect("Module");
    let kernel = m.status.as_ref().and_then(|s| s.kernels.first().cloned()).expect("kernel status");
    assert_eq!((kernel.kernel.as_str(), kernel.build.as_str()), (abi.as_str(), "Present"), "{kernel:?}");
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reconcile").join(name)
}

/// `kforge plan` offline: the DaemonSet for the kernel whose digest is given, the build for the
/// kernel whose mapping builds, and the kernel no mapping matches named with a node running it.
#[test]
fn plan_prints_what_the_reconciler_would_create() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let out = support::output(
        kforge()
            .arg("plan")
            .arg("-f")
            .arg(fixture("module.yaml"))
            .arg("--nodes")
            .arg(fixture("nodes.yaml"))
            .arg("--image")
            .arg(format!("registry.example/kmm-ci:6.1.0-31-amd64={digest}")),
    );
    assert!(out.status.success(), "{}", support::text(&out.stderr));
    let docs: Vec<DaemonSet> = serde_saphyr::from_str_multiple(&support::text(&out.stdout)).expect("YAML DaemonSets");
    assert_eq!(docs.len(), 1, "one loader: the other kernels have no image yet");
    assert_eq!(image(&docs[0]), format!("registry.example/kmm-ci@{digest}"));
    let selector = node_selector(&docs[0]);
    assert_eq!(selector.get(KERNEL_LABEL).map(String::as_str), Some("6.1.0-31-amd64"));
    assert_eq!(selector.get("gpu").map(String::as_str), Some("yes"));
    let stderr = support::text(&out.stderr);
    assert!(stderr.contains("would build registry.example/kmm-ci:6.8.0-51-generic for kernel 6.8.0-51-generic"), "{stderr}");
    assert!(stderr.contains("5.14.0-503.el9.x86_64") && stderr.contains("rhel-1"), "the unmapped kernel and its node: {stderr}");

    // Without the digest, the image of the kernel that nothing builds is reported missing.
    let out = support::output(kforge().arg("plan").arg("-f").arg(fixture("module.yaml")).arg("--nodes").arg(fixture("nodes.yaml")));
    assert!(out.status.success());
    assert!(support::text(&out.stdout).trim().is_empty(), "nothing to create: {}", support::text(&out.stdout));
    let stderr = support::text(&out.stderr);
    assert!(stderr.contains("registry.example/kmm-ci:6.1.0-31-amd64") && stderr.contains("Degraded=True"), "{stderr}");

    // Nodes in place of Modules: the error says what to pass.
    let out = support::output(kforge().arg("plan").arg("-f").arg(fixture("nodes.yaml")).arg("--nodes").arg(fixture("nodes.yaml")));
    assert!(!out.status.success());
    assert!(support::text(&out.stderr).contains("no Module in"), "{}", support::text(&out.stderr));
}

/// `kforge crd` prints the CRD as YAML; the end-to-end tests create the same CRD in a real API server.
#[test]
fn crd_prints_the_module_definition() {
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&ok(kforge().arg("crd"))).expect("a CRD in YAML");
    assert_eq!(crd.metadata.name.as_deref(), Some("modules.kmm.sigs.x-k8s.io"));
    assert_eq!(crd.spec.versions.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["v1beta1"]);
    assert!(crd.spec.versions[0].subresources.as_ref().is_some_and(|s| s.status.is_some()), "status subresource");
}

/// Opt-in, against a real cluster (`KFORGE_E2E_KUBECONFIG`, with rights to create namespaces and,
/// if missing, the Module CRD): a Module selecting every node gets one status entry per kernel the
/// nodes run, each reporting its image (by default one that does not exist, so nothing is loaded;
/// `KFORGE_E2E_IMAGE` names a real template, e.g. `quay.io/org/kmod:${KERNEL_FULL_VERSION}`).
#[test]
#[cfg_attr(kforge_no_e2e_kubeconfig, ignore = "set KFORGE_E2E_KUBECONFIG to a real cluster's kubeconfig to run")]
fn a_real_cluster_reports_every_kernel() {
    use k8s_openapi::api::core::v1::Namespace;

    let kubeconfig = std::path::PathBuf::from(std::env::var_os("KFORGE_E2E_KUBECONFIG").expect("KFORGE_E2E_KUBECONFIG"));
    let template = std::env::var("KFORGE_E2E_IMAGE").unwrap_or_else(|_| "registry.invalid/kforge-e2e:${KERNEL_FULL_VERSION}".into());
    let rt = runtime();
    let client = rt.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig"), &Default::default())
            .await
            .expect("kubeconfig");
        kube::Client::try_from(config).expect("client")
    });
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if rt.block_on(crds.get_opt("modules.kmm.sigs.x-k8s.io")).expect("reach the cluster").is_none() {
        rt.block_on(crds.create(&PostParams::default(), &Module::crd())).expect("create the CRD");
        std::thread::sleep(Duration::from_secs(5));
    }
    let kernels: std::collections::BTreeSet<String> = rt
        .block_on(Api::<Node>::all(client.clone()).list(&ListParams::default()))
        .expect("nodes")
        .items
        .iter()
        .filter_map(|n| Some(n.status.as_ref()?.node_info.as_ref()?.kernel_version.clone()))
        .collect();
    let namespace = format!("kforge-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    rt.block_on(namespaces.create(&PostParams::default(), &object(json!({"metadata": {"name": namespace}})))).expect("namespace");
    let _reconciler = Reconciler::start(&kubeconfig, &[]);
    let modules: Api<Module> = Api::namespaced(client.clone(), &namespace);
    let module: Module = object(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": "e2e"},
        "spec": {"moduleLoader": {"container": {"modprobe": {"moduleName": "kforge_e2e"}, "kernelMappings": [{"regexp": "^.+$", "containerImage": template}]}}, "selector": {}},
    }));
    rt.block_on(modules.create(&PostParams::default(), &module)).expect("create the Module");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let reported = loop {
        let m = rt.block_on(modules.get("e2e")).expect("get the Module");
        let seen: std::collections::BTreeSet<String> = m.status.iter().flat_map(|s| &s.kernels).map(|k| k.kernel.clone()).collect();
        if seen == kernels || std::time::Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    rt.block_on(modules.delete("e2e", &DeleteParams::default())).expect("delete the Module");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while rt.block_on(modules.get_opt("e2e")).ok().flatten().is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
    }
    let _ = rt.block_on(namespaces.delete(&namespace, &DeleteParams::default()));
    assert_eq!(reported, kernels, "one status entry per kernel the cluster's nodes run");
}
