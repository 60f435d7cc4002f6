//! End to end against a private Kubernetes control plane (`tests/support/control_plane.rs`): first
//! the harness itself (DaemonSets scheduled onto kwok's fake nodes, garbage collection, namespaces,
//! service accounts), then `DTK_AUTO` as `kforge dtk resolve --kube` and the service's `ResolveDtk`
//! find it through a real API server: OpenShift's ImageStream `openshift/driver-toolkit` (served by
//! our CRD) and a mapping ConfigMap, with the images in a real registry.

mod support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use support::control_plane::{ControlPlane, FakeNode, Options};
use support::oci::{Image, file, write_image};
use support::registry::{Registry, skopeo_copy};
use support::{ok, output, text};

/// A runtime for the kube client (the control plane itself is synchronous).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// An object of type `T` from its JSON.
fn object<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("not a valid object ({e}): {value}"))
}

/// A privileged DaemonSet (as KMM's module loaders are) for the nodes labelled `key=value`.
fn daemon_set(name: &str, key: &str, value: &str) -> DaemonSet {
    object(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {key: value},
                    "containers": [{"name": "loader", "image": "registry.invalid/kforge/loader:1", "command": ["sleep", "infinity"], "securityContext": {"privileged": true}}],
                },
            },
        },
    }))
}

/// Whether kwok has started the pod: Running, Ready, every container running and ready.
fn running_and_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let containers = status.container_statuses.as_deref().unwrap_or_default();
    status.phase.as_deref() == Some("Running")
        && ready
        && !containers.is_empty()
        && containers.iter().all(|c| c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// Fake nodes with their own kernels, OS images and labels: Ready as created, a DaemonSet's single
/// pod on the one node its selector names (daemonset controller, scheduler, kwok), its pods removed
/// with it in foreground and background deletion (garbage collector), a namespace's service account
/// and token (serviceaccount controllers), the namespace deleted (namespace controller).
#[test]
#[cfg_attr(kforge_no_control_plane, ignore = "the control plane peers are not built: run tests/peers/build.sh")]
fn fake_nodes_run_daemonsets_and_the_controllers_clean_up() {
    let nodes = vec![
        FakeNode::new("worker-debian", "6.1.0-31-amd64", "Debian GNU/Linux 12 (bookworm)").label("kforge.test/pool", "general"),
        FakeNode::new("worker-gpu", "6.8.0-51-generic", "Ubuntu 24.04.1 LTS").label("kforge.test/pool", "gpu").label("kforge.test/accelerator", "present"),
    ];
    let cp = ControlPlane::start_with(Options { nodes: nodes.clone() });
    runtime().block_on(async {
        let client = cp.client().await;
        let pp = PostParams::default();

        let node_api: Api<Node> = Api::all(client.clone());
        let names: Vec<String> = node_api.list(&ListParams::default()).await.expect("list Nodes").items.into_iter().filter_map(|n| n.metadata.name).collect();
        assert_eq!(names, ["worker-debian", "worker-gpu"], "the API server has exactly the fake nodes");
        for want in &nodes {
            let node = node_api.get(&want.name).await.unwrap_or_else(|e| panic!("get Node {}: {e}", want.name));
            let labels = node.metadata.labels.clone().unwrap_or_default();
            for (key, value) in &want.labels {
                assert_eq!(labels.get(key), Some(value), "label {key} of Node {}: {labels:?}", want.name);
            }
            let status = node.status.unwrap_or_else(|| panic!("Node {} has no status", want.name));
            let info = status.node_info.unwrap_or_else(|| panic!("Node {} has no nodeInfo", want.name));
            assert_eq!(
                (info.kernel_version.as_str(), info.os_image.as_str(), info.architecture.as_str(), info.operating_system.as_str()),
                (want.kernel_version.as_str(), want.os_image.as_str(), "amd64", "linux"),
                "nodeInfo of Node {} is what the test set",
                want.name
            );
            let ready = status.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "Ready").map(|c| c.status);
            assert_eq!(ready.as_deref(), Some("True"), "Node {} is Ready", want.name);
        }

        // One DaemonSet per pool; each must land on its node only.
        let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let cases = [("probe-gpu", "kforge.test/accelerator", "present", "worker-gpu"), ("probe-general", "kforge.test/pool", "general", "worker-debian")];
        for (name, key, value, _) in cases {
            daemon_sets.create(&pp, &daemon_set(name, key, value)).await.unwrap_or_else(|e| panic!("create DaemonSet {name}: {e}"));
        }
        for (name, _, _, node) in cases {
            let by_app = ListParams::default().labels(&format!("app={name}"));
            let pod = cp
                .eventually(&format!("a Running and Ready pod of DaemonSet {name}"), async || {
                    let list = pods.list(&by_app).await.ok()?;
                    let placed: Vec<_> = list.items.iter().map(|p| (p.metadata.name.clone(), p.spec.as_ref().and_then(|s| s.node_name.clone()))).collect();
                    assert!(placed.len() <= 1, "DaemonSet {name} has more than one pod: {placed:?}");
                    list.items.into_iter().next().filter(running_and_ready)
                })
                .await;
            assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(node), "the pod of DaemonSet {name} runs on {node}");
            let scheduled =
                pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "PodScheduled" && c.status == "True"));
            assert!(scheduled, "kube-scheduler bound the pod of DaemonSet {name}: {:?}", pod.status);
            let counts = cp
                .eventually(&format!("the status of DaemonSet {name} counting its ready pod"), async || {
                    let status = daemon_sets.get(name).await.ok()?.status?;
                    (status.number_ready == 1).then_some((status.desired_number_scheduled, status.current_number_scheduled, status.number_misscheduled))
                })
                .await;
            assert_eq!(counts, (1, 1, 0), "DaemonSet {name} wants exactly one node");
        }

        // Foreground: the DaemonSet waits for its pods (removed by kwok once the garbage collector
        // deletes them); background: it goes at once and the collector removes the orphans.
        let (first, second) = (cases[0].0, cases[1].0);
        let deleting = daemon_sets.delete(first, &DeleteParams::foreground()).await.unwrap_or_else(|e| panic!("delete DaemonSet {first}: {e}"));
        let finalizers = deleting.left().and_then(|ds| ds.metadata.finalizers).unwrap_or_default();
        assert!(finalizers.iter().any(|f| f == "foregroundDeletion"), "foreground deletion keeps DaemonSet {first} until its pods are gone: {finalizers:?}");
        daemon_sets.delete(second, &DeleteParams::background()).await.unwrap_or_else(|e| panic!("delete DaemonSet {second}: {e}"));
        for name in [first, second] {
            let by_app = ListParams::default().labels(&format!("app={name}"));
            cp.eventually(&format!("DaemonSet {name} and its pods deleted"), async || {
                let gone = daemon_sets.get_opt(name).await.ok()?.is_none() && pods.list(&by_app).await.ok()?.items.is_empty();
                gone.then_some(())
            })
            .await;
        }

        // A namespace gets its service account; a token Secret gets its token and our CA.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces.create(&pp, &object(json!({"metadata": {"name": "kforge-smoke"}}))).await.expect("create Namespace kforge-smoke");
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "kforge-smoke");
        cp.eventually("ServiceAccount kforge-smoke/default", async || accounts.get_opt("default").await.ok().flatten()).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "kforge-smoke");
        let token_secret = json!({
            "metadata": {"name": "default-token", "annotations": {"kubernetes.io/service-account.name": "default"}},
            "type": "kubernetes.io/service-account-token",
        });
        secrets.create(&pp, &object(token_secret)).await.expect("create Secret kforge-smoke/default-token");
        let data = cp
            .eventually("a token in Secret kforge-smoke/default-token", async || {
                let data = secrets.get("default-token").await.ok()?.data?;
                data.get("token").is_some_and(|t| !t.0.is_empty()).then_some(data)
            })
            .await;
        let ca = std::fs::read(cp.ca_cert()).expect("read the CA");
        assert_eq!(data.get("ca.crt").map(|c| c.0.as_slice()), Some(ca.as_slice()), "the token Secret carries the control plane's CA");

        namespaces.delete("kforge-smoke", &DeleteParams::default()).await.expect("delete Namespace kforge-smoke");
        cp.eventually("Namespace kforge-smoke deleted", async || namespaces.get_opt("kforge-smoke").await.ok()?.is_none().then_some(())).await;
    });
}

/// The RHCOS version of the first OpenShift node; its DTK tag is in the ImageStream's status.
const RHCOS_418: &str = "418.94.202501221327-0";
const KERNEL_418: &str = "5.14.0-427.50.1.el9_4.x86_64";
/// The RHCOS version of the second OpenShift node; its DTK tag is only in the ImageStream's spec.
const RHCOS_419: &str = "9.6.20250523-0";
const KERNEL_419: &str = "5.14.0-570.19.1.el9_6.x86_64";
/// The kernel of a Debian node, only in the mapping ConfigMap.
const KERNEL_DEBIAN: &str = "6.1.0-31-amd64";
/// A kernel nothing maps.
const KERNEL_UNKNOWN: &str = "6.1.0-999-amd64";

/// `image.openshift.io/v1` ImageStream as a CRD: the fields of OpenShift's documented API that
/// matter here (spec.tags[].from, status.tags[].items[]), structural, with a status subresource.
fn image_stream_crd() -> CustomResourceDefinition {
    let string = json!({"type": "string"});
    let object_reference = json!({"type": "object", "properties": {"kind": string, "namespace": string, "name": string}});
    let tag_event = json!({
        "type": "object",
        "required": ["dockerImageReference", "image", "generation"],
        "properties": {"created": {"type": "string", "format": "date-time"}, "dockerImageReference": string, "image": string, "generation": {"type": "integer", "format": "int64"}},
    });
    let condition = json!({
        "type": "object",
        "required": ["type", "status"],
        "properties": {"type": string, "status": string, "lastTransitionTime": {"type": "string", "format": "date-time"}, "reason": string, "message": string, "generation": {"type": "integer", "format": "int64"}},
    });
    let spec_tag = json!({
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": string,
            "annotations": {"type": "object", "additionalProperties": string},
            "from": object_reference,
            "reference": {"type": "boolean"},
            "generation": {"type": "integer", "format": "int64"},
            "importPolicy": {"type": "object", "properties": {"insecure": {"type": "boolean"}, "scheduled": {"type": "boolean"}, "importMode": string}},
            "referencePolicy": {"type": "object", "required": ["type"], "properties": {"type": string}},
        },
    });
    let schema = json!({
        "type": "object",
        "properties": {
            "apiVersion": string,
            "kind": string,
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "properties": {"lookupPolicy": {"type": "object", "properties": {"local": {"type": "boolean"}}}, "dockerImageRepository": string, "tags": {"type": "array", "items": spec_tag}},
            },
            "status": {
                "type": "object",
                "properties": {
                    "dockerImageRepository": string,
                    "publicDockerImageRepository": string,
                    "tags": {"type": "array", "items": {"type": "object", "required": ["tag", "items"], "properties": {"tag": string, "items": {"type": "array", "items": tag_event}, "conditions": {"type": "array", "items": condition}}}},
                },
            },
        },
    });
    object(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "imagestreams.image.openshift.io"},
        "spec": {
            "group": "image.openshift.io",
            "scope": "Namespaced",
            "names": {"plural": "imagestreams", "singular": "imagestream", "kind": "ImageStream", "listKind": "ImageStreamList", "shortNames": ["is"]},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": schema}}],
        },
    }))
}

fn image_stream_resource() -> ApiResource {
    ApiResource {
        group: "image.openshift.io".into(),
        version: "v1".into(),
        api_version: "image.openshift.io/v1".into(),
        kind: "ImageStream".into(),
        plural: "imagestreams".into(),
    }
}

/// A small image of its own (a file naming it) pushed as `repo:tag`: (tag reference, digest reference).
fn push_image(registry: &Registry, work: &Path, repo: &str, tag: &str) -> (String, String) {
    let layout = work.join(format!("{repo}-{tag}"));
    write_image(&layout, "v", &Image::oci(vec![vec![file("/etc/kforge-kmm", format!("{repo}:{tag}\n").into_bytes())]]));
    let reference = format!("{}/{repo}:{tag}", registry.host());
    skopeo_copy(&format!("oci:{}:v", layout.display()), &format!("docker://{reference}"), &registry.skopeo_dest_flags());
    let digest = ok(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}"]).args(registry.skopeo_flags()).arg(format!("docker://{reference}")));
    (reference, format!("{}/{repo}@{}", registry.host(), digest.trim()))
}

/// `kforge serve`, killed on drop.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// DTK_AUTO from a real API server: a kernel of an RHCOS node → the ImageStream tag of its RHCOS
/// version (status digest, or spec tag resolved in the registry); a kernel only in the mapping
/// ConfigMap → its image's digest; a kernel nothing maps → an error naming it. The service's
/// ResolveDtk answers as the CLI does.
#[test]
#[cfg_attr(kforge_no_control_plane, ignore = "the control plane peers are not built: run tests/peers/build.sh")]
fn dtk_auto_resolves_through_a_real_api_server() {
    let registry = Registry::start_plain();
    let work = tempfile::tempdir().expect("tempdir");
    let (_, dtk_418) = push_image(&registry, work.path(), "dtk", RHCOS_418);
    let (tagged_419, dtk_419) = push_image(&registry, work.path(), "dtk", RHCOS_419);
    let (tagged_debian, dtk_debian) = push_image(&registry, work.path(), "dtk-debian", KERNEL_DEBIAN);
    assert!(dtk_418 != dtk_419 && dtk_419 != dtk_debian, "three distinct images: {dtk_418} {dtk_419} {dtk_debian}");

    let cp = ControlPlane::start_with(Options {
        nodes: vec![
            FakeNode::new("rhcos-418", KERNEL_418, &format!("Red Hat Enterprise Linux CoreOS {RHCOS_418} (Plow)")),
            FakeNode::new("rhcos-419", KERNEL_419, &format!("Red Hat Enterprise Linux CoreOS {RHCOS_419} (Plow)")),
            FakeNode::new("debian", KERNEL_DEBIAN, "Debian GNU/Linux 12 (bookworm)"),
        ],
    });
    let rt = runtime();
    let client = rt.block_on(cp.client());
    let pp = PostParams::default();
    let dtk = "[dtk]\nconfigmap = { namespace = \"kforge\", name = \"dtk-images\" }\n";
    let config = work.path().join("dtk.toml");
    std::fs::write(&config, dtk).expect("write dtk.toml");
    let resolve = |kernel: &str| {
        let mut cmd = support::kforge();
        cmd.args(["dtk", "resolve", kernel, "--kube", "--dtk-config"]).arg(&config).env("KUBECONFIG", cp.kubeconfig()).stdin(Stdio::null());
        output(&mut cmd)
    };

    // Vanilla Kubernetes first: no image.openshift.io API (the API server answers a plain-text 404),
    // only the mapping ConfigMap.
    rt.block_on(async {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for ns in ["openshift", "kforge"] {
            namespaces.create(&pp, &object(json!({"metadata": {"name": ns}}))).await.unwrap_or_else(|e| panic!("create Namespace {ns}: {e}"));
        }
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kforge");
        maps.create(&pp, &object(json!({"metadata": {"name": "dtk-images"}, "data": {KERNEL_DEBIAN: tagged_debian}})))
            .await
            .expect("create ConfigMap kforge/dtk-images");
    });
    let vanilla = resolve(KERNEL_DEBIAN);
    assert!(vanilla.status.success(), "without OpenShift's API the ConfigMap still answers for {KERNEL_DEBIAN}:\n{}", text(&vanilla.stderr));
    assert_eq!(text(&vanilla.stdout).trim(), dtk_debian, "DTK_AUTO for {KERNEL_DEBIAN} without OpenShift's API");
    let refused = resolve(KERNEL_418);
    let stderr = text(&refused.stderr);
    assert!(!refused.status.success(), "no DTK for {KERNEL_418} without an ImageStream:\n{}", text(&refused.stdout));
    assert!(stderr.contains(KERNEL_418) && stderr.contains("ImageStream openshift/driver-toolkit: not found (not OpenShift)"), "{stderr}");

    // Then OpenShift's ImageStream, as OpenShift has it after importing the release: the 418 tag
    // imported (its status names the digest), the 419 tag only declared in the spec.
    rt.block_on(async {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&pp, &image_stream_crd()).await.expect("create the ImageStream CRD");
        cp.eventually("CRD imagestreams.image.openshift.io Established", async || {
            let crd = crds.get("imagestreams.image.openshift.io").await.ok()?;
            crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await;
        let streams: Api<DynamicObject> = Api::namespaced_with(client.clone(), "openshift", &image_stream_resource());
        let mut stream = DynamicObject::new("driver-toolkit", &image_stream_resource()).within("openshift");
        stream.data = json!({
            "spec": {
                "lookupPolicy": {"local": false},
                "tags": [
                    {"name": RHCOS_418, "from": {"kind": "DockerImage", "name": dtk_418}, "referencePolicy": {"type": "Source"}, "generation": 1},
                    {"name": RHCOS_419, "from": {"kind": "DockerImage", "name": tagged_419}, "referencePolicy": {"type": "Source"}, "generation": 2},
                    {"name": "latest", "from": {"kind": "ImageStreamTag", "name": RHCOS_418}, "referencePolicy": {"type": "Source"}, "generation": 1},
                ],
            },
        });
        // Established can come a moment before the API server serves the new resource.
        cp.eventually("ImageStream openshift/driver-toolkit created", async || streams.create(&pp, &stream).await.ok()).await;
        let digest = dtk_418.split_once('@').map(|(_, d)| d.to_string()).expect("a digest reference");
        let status = json!({
            "status": {
                "dockerImageRepository": "image-registry.openshift-image-registry.svc:5000/openshift/driver-toolkit",
                "tags": [
                    {"tag": RHCOS_418, "items": [{"created": "2025-01-22T13:27:00Z", "dockerImageReference": dtk_418, "image": digest, "generation": 1}]},
                    {"tag": "latest", "items": [{"created": "2025-01-22T13:27:00Z", "dockerImageReference": dtk_418, "image": digest, "generation": 1}]},
                ],
            },
        });
        streams.patch_status("driver-toolkit", &PatchParams::default(), &Patch::Merge(&status)).await.expect("set the ImageStream's status");
        let stored = streams.get("driver-toolkit").await.expect("get the ImageStream");
        assert_eq!(stored.data["status"]["tags"][0]["items"][0]["dockerImageReference"], json!(dtk_418), "the status was stored: {:?}", stored.data);
        assert_eq!(stored.data["spec"]["tags"].as_array().map(Vec::len), Some(3), "the spec was stored: {:?}", stored.data);
    });

    // (kernel, image, source, what the detail must say, what it must not)
    let cases = [
        (
            KERNEL_418,
            &dtk_418,
            "imagestream",
            format!("ImageStream openshift/driver-toolkit tag {RHCOS_418} (RHCOS of Node rhcos-418, which runs {KERNEL_418})"),
            Some(" via "),
        ),
        (KERNEL_419, &dtk_419, "imagestream", format!("tag {RHCOS_419} (RHCOS of Node rhcos-419, which runs {KERNEL_419}) via {tagged_419}"), None),
        (KERNEL_DEBIAN, &dtk_debian, "mapping", format!("ConfigMap kforge/dtk-images key \"{KERNEL_DEBIAN}\" → {tagged_debian}"), None),
    ];
    for (kernel, image, source, detail, not) in &cases {
        let out = resolve(kernel);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "kforge dtk resolve {kernel} --kube failed ({}):\n{stderr}\n{}", out.status, cp.log_tails());
        assert_eq!(text(&out.stdout).trim(), image.as_str(), "DTK_AUTO for {kernel}:\n{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("{source} (")))
            .unwrap_or_else(|| panic!("kforge names the source {source} for {kernel}:\n{stderr}"));
        assert!(line.contains(detail.as_str()), "the detail for {kernel} says {detail:?}: {line}");
        if let Some(not) = not {
            assert!(!line.contains(not), "the digest for {kernel} came from the ImageStream's status, without a registry look-up: {line}");
        }
    }
    let refused = resolve(KERNEL_UNKNOWN);
    let stderr = text(&refused.stderr);
    assert!(!refused.status.success(), "kforge dtk resolve {KERNEL_UNKNOWN} should fail:\n{}", text(&refused.stdout));
    for want in [KERNEL_UNKNOWN, &format!("no Node runs kernel {KERNEL_UNKNOWN}"), "ConfigMap kforge/dtk-images"] {
        assert!(stderr.contains(want), "the error says {want:?}:\n{stderr}");
    }

    // The service, with the same [dtk] section and KUBECONFIG.
    let service = work.path().join("kforge.toml");
    let audit = work.path().join("audit.jsonl");
    let serve_log = work.path().join("serve.log");
    // The service starts only with a signing key.
    let keys = support::openssl_keys(work.path(), "vendor", 2048);
    let text = format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\naudit_log = {:?}\n[[keys]]\nname = \"vendor\"\nkey = {:?}\ncert = {:?}\n{dtk}",
        audit.display().to_string(),
        keys.key.display().to_string(),
        keys.cert_der.display().to_string()
    );
    std::fs::write(&service, text).expect("write kforge.toml");
    let mut child = support::kforge()
        .arg("serve")
        .arg("--config")
        .arg(&service)
        .env("KUBECONFIG", cp.kubeconfig())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&serve_log).expect("create serve.log"))
        .spawn()
        .expect("start kforge serve");
    let first = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines().next().and_then(Result::ok).unwrap_or_default();
    let _serve = Serve(child);
    let addr = first
        .strip_prefix("kforge serves the signer and the builder on ")
        .unwrap_or_else(|| panic!("kforge serve did not start: {first:?}\n{}", support::peers::tail(&serve_log, 30)))
        .to_string();
    rt.block_on(async {
        use kforge_proto::builder::v1::{ResolveDtkRequest, builder_client::BuilderClient};
        let mut client = BuilderClient::connect(format!("http://{addr}")).await.expect("connect to kforge serve");
        for (kernel, image, source, _, _) in &cases {
            let answer =
                client.resolve_dtk(ResolveDtkRequest { kernel: kernel.to_string() }).await.unwrap_or_else(|e| panic!("ResolveDtk {kernel}: {e}")).into_inner();
            assert_eq!((answer.image.as_str(), answer.source.as_str()), (image.as_str(), *source), "ResolveDtk {kernel} answers as the CLI");
        }
        let refused = client.resolve_dtk(ResolveDtkRequest { kernel: KERNEL_UNKNOWN.into() }).await.expect_err("no DTK for an unknown kernel");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains(KERNEL_UNKNOWN), "the error names the kernel: {}", refused.message());
    });
}
