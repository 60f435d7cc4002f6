//! `DTK_AUTO` resolution against a scripted Kubernetes API (kube's client over `tower_test::mock`) and a
//! fake registry. Every request is checked (method, path, query) and answered in order; a request the
//! script does not expect, or a missing one, fails the test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kforge_kmm::{ConfigMapRef, DigestLookup, DtkConfig, DtkSource as Source, Error, MappingConfig, Resolver};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const DTK_412: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const DTK_411: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const REG: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const ART: &str = "quay.io/openshift-release-dev/ocp-v4.0-art-dev";
const OCP_KERNEL: &str = "4.18.0-372.40.1.el8_6.x86_64";
const RHCOS_412: &str = "412.86.202301061548-0";
const RHCOS_411: &str = "411.86.202212072103-0";
const DEBIAN_KERNEL: &str = "6.1.0-56-amd64";

const IS_PATH: &str = "/apis/image.openshift.io/v1/namespaces/openshift/imagestreams/driver-toolkit";
const NODES_PATH: &str = "/api/v1/nodes";
const CM_PATH: &str = "/api/v1/namespaces/kforge/configmaps/dtk-images";

// ---- fake registry ----

#[derive(Default)]
struct FakeRegistry {
    images: HashMap<String, String>,
    asked: Mutex<Vec<String>>,
}

impl FakeRegistry {
    fn with(images: &[(&str, &str)]) -> Arc<Self> {
        Arc::new(FakeRegistry { images: images.iter().map(|(i, d)| (i.to_string(), d.to_string())).collect(), asked: Mutex::default() })
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("lock").clone()
    }
}

impl DigestLookup for FakeRegistry {
    fn digest<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<Option<String>, kforge_image::Error>> {
        self.asked.lock().expect("lock").push(image.to_string());
        let answer = if image.starts_with("unreachable.example") {
            Err(kforge_image::Error::Registry { registry: "unreachable.example".into(), what: "HEAD manifest".into(), cause: "connection refused".into() })
        } else {
            Ok(self.images.get(image).cloned())
        };
        Box::pin(async move { answer })
    }
}

// ---- scripted API server ----

struct Expect {
    path: &'static str,
    query: Option<&'static str>,
    status: StatusCode,
    body: String,
}

fn ok(path: &'static str, body: Value) -> Expect {
    Expect { path, query: None, status: StatusCode::OK, body: body.to_string() }
}

fn not_found(path: &'static str, kind: &str, name: &str) -> Expect {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound",
        "details": {"name": name, "kind": kind}, "code": 404
    });
    Expect { path, query: None, status: StatusCode::NOT_FOUND, body: status.to_string() }
}

fn nodes_page(query: &'static str, body: Value) -> Expect {
    Expect { path: NODES_PATH, query: Some(query), status: StatusCode::OK, body: body.to_string() }
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A kube client whose requests must follow `script`; the returned task fails if they do not.
fn api(script: Vec<Expect>) -> (kube::Client, JoinHandle<()>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(serve(handle, script));
    (kube::Client::new(svc, "default"), task)
}

async fn serve(mut handle: Handle, script: Vec<Expect>) {
    let wait = Duration::from_secs(5);
    for (i, expect) in script.into_iter().enumerate() {
        let next = tokio::time::timeout(wait, handle.next_request()).await;
        let (request, send) = next
            .unwrap_or_else(|_| panic!("request {i} ({}) never came", expect.path))
            .unwrap_or_else(|| panic!("client gone before request {i} ({})", expect.path));
        assert_eq!(request.method(), Method::GET, "request {i}");
        assert_eq!(request.uri().path(), expect.path, "request {i}");
        if let Some(q) = expect.query {
            let query = request.uri().query().unwrap_or_default();
            assert_eq!(query, q, "request {i} query");
        }
        let response =
            Response::builder().status(expect.status).header("content-type", "application/json").body(Body::from(expect.body.into_bytes())).expect("response");
        send.send_response(response);
    }
    let after = tokio::time::timeout(wait, handle.next_request()).await.expect("client not dropped at the end of the test");
    if let Some((request, _)) = after {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

// ---- realistic objects ----

fn node(name: &str, kernel: &str, os_image: &str) -> Value {
    json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "81234",
                     "labels": {"kubernetes.io/hostname": name, "node-role.kubernetes.io/worker": ""}},
        "spec": {"providerID": format!("aws:///eu-west-1a/i-{name}")},
        "status": {"nodeInfo": {
            "architecture": "amd64", "bootID": "7a3d0e2c-0b7e-4d8c-9d1e-3f3f2d9c1a11",
            "containerRuntimeVersion": "cri-o://1.25.1-5.rhaos4.12.git6005903.el8",
            "kernelVersion": kernel, "kubeProxyVersion": "v1.25.4+77bec7a", "kubeletVersion": "v1.25.4+77bec7a",
            "machineID": "ec2a1f0c4b5e4a3f9d8c7b6a5f4e3d2c", "operatingSystem": "linux",
            "osImage": os_image, "systemUUID": "ec2a1f0c-4b5e-4a3f-9d8c-7b6a5f4e3d2c"
        }}
    })
}

fn node_list(items: Vec<Value>, continue_token: Option<&str>) -> Value {
    let mut metadata = json!({"resourceVersion": "81300"});
    if let Some(t) = continue_token {
        metadata["continue"] = json!(t);
    }
    json!({"kind": "NodeList", "apiVersion": "v1", "metadata": metadata, "items": items})
}

fn rhcos(version: &str) -> String {
    format!("Red Hat Enterprise Linux CoreOS {version} (Ootpa)")
}

fn spec_tag(name: &str, from: &str) -> Value {
    json!({"name": name, "annotations": null, "from": {"kind": "DockerImage", "name": from}, "generation": 2,
           "importPolicy": {"importMode": "Legacy"}, "referencePolicy": {"type": "Source"}})
}

fn status_tag(tag: &str, reference: &str, digest: &str) -> Value {
    json!({"tag": tag, "items": [{"created": "2023-01-10T10:05:00Z", "dockerImageReference": reference, "image": digest, "generation": 2}]})
}

fn image_stream(spec_tags: Vec<Value>, status_tags: Vec<Value>) -> Value {
    json!({
        "kind": "ImageStream", "apiVersion": "image.openshift.io/v1",
        "metadata": {"name": "driver-toolkit", "namespace": "openshift", "uid": "5b0c6f0e-1d0a-4bb0-9f8e-2a9e3f4b5c6d",
                     "resourceVersion": "20544", "generation": 2, "creationTimestamp": "2023-01-10T10:00:00Z",
                     "annotations": {"include.release.openshift.io/self-managed-high-availability": "true"}},
        "spec": {"lookupPolicy": {"local": false}, "tags": spec_tags},
        "status": {"dockerImageRepository": "image-registry.openshift-image-registry.svc:5000/openshift/driver-toolkit",
                   "tags": status_tags}
    })
}

fn ocp_image_stream() -> Value {
    image_stream(
        vec![
            spec_tag(RHCOS_411, &format!("{ART}@{DTK_411}")),
            spec_tag(RHCOS_412, &format!("{ART}@{DTK_412}")),
            spec_tag("latest", &format!("{ART}@{DTK_412}")),
        ],
        vec![
            status_tag(RHCOS_411, &format!("{ART}@{DTK_411}"), DTK_411),
            status_tag(RHCOS_412, &format!("{ART}@{DTK_412}"), DTK_412),
            status_tag("latest", &format!("{ART}@{DTK_412}"), DTK_412),
        ],
    )
}

fn config_map(data: Value) -> Value {
    json!({"kind": "ConfigMap", "apiVersion": "v1",
           "metadata": {"name": "dtk-images", "namespace": "kforge", "uid": "0f0e0d0c-0b0a-4909-8807-060504030201", "resourceVersion": "9911"},
           "data": data})
}

fn literal(kernel: &str, image: &str) -> MappingConfig {
    MappingConfig { literal: Some(kernel.into()), regexp: None, image: image.into() }
}

fn regexp(re: &str, image: &str) -> MappingConfig {
    MappingConfig { literal: None, regexp: Some(re.into()), image: image.into() }
}

fn cm_ref() -> Option<ConfigMapRef> {
    Some(ConfigMapRef { namespace: "kforge".into(), name: "dtk-images".into() })
}

async fn finish(resolver: Resolver, server: JoinHandle<()>) {
    drop(resolver);
    server.await.expect("API script");
}

// ---- (1) OpenShift ----

#[tokio::test]
async fn openshift_tag_of_the_nodes_rhcos_from_status_across_node_pages() {
    let (client, server) = api(vec![
        ok(IS_PATH, ocp_image_stream()),
        nodes_page("&limit=500", node_list(vec![node("master-0", "4.18.0-372.32.1.el8_6.x86_64", &rhcos(RHCOS_411))], Some("page2"))),
        nodes_page("&limit=500&continue=page2", node_list(vec![node("worker-1", OCP_KERNEL, &rhcos(RHCOS_412))], None)),
    ]);
    let registry = FakeRegistry::with(&[]);
    // A template is configured too: OpenShift comes first.
    let config = DtkConfig { template: Some("127.0.0.1:5000/dtk:${KERNEL_FULL_VERSION}".into()), ..Default::default() };
    let resolver = Resolver::new(config, Some(client), registry.clone()).expect("resolver");
    let got = resolver.resolve(OCP_KERNEL).await.expect("resolved");
    assert_eq!(got.image, format!("{ART}@{DTK_412}"));
    assert_eq!(got.source, Source::ImageStream);
    assert!(got.detail.contains(RHCOS_412) && got.detail.contains("worker-1"), "{}", got.detail);
    assert!(registry.asked().is_empty(), "a digest in status needs no registry: {:?}", registry.asked());
    finish(resolver, server).await;
}

#[tokio::test]
async fn openshift_spec_tag_without_status_is_pinned_through_the_registry() {
    let tagged = "quay.io/openshift-release-dev/driver-toolkit:412.86.202301061548-0";
    let stream = image_stream(vec![spec_tag(RHCOS_412, tagged)], vec![]);
    let (client, server) = api(vec![ok(IS_PATH, stream), nodes_page("&limit=500", node_list(vec![node("worker-0", OCP_KERNEL, &rhcos(RHCOS_412))], None))]);
    let registry = FakeRegistry::with(&[(tagged, REG)]);
    let resolver = Resolver::new(DtkConfig::default(), Some(client), registry.clone()).expect("resolver");
    let got = resolver.resolve(OCP_KERNEL).await.expect("resolved");
    assert_eq!(got.image, format!("quay.io/openshift-release-dev/driver-toolkit@{REG}"));
    assert_eq!(got.source, Source::ImageStream);
    assert_eq!(registry.asked(), vec![tagged.to_string()]);
    finish(resolver, server).await;
}

#[tokio::test]
async fn openshift_nodes_without_rhcos_fall_through_to_the_template() {
    // An OpenShift cluster with a RHEL worker: no RHCOS version, so no DTK tag.
    let (client, server) = api(vec![
        ok(IS_PATH, ocp_image_stream()),
        nodes_page("&limit=500", node_list(vec![node("rhel-worker-0", OCP_KERNEL, "Red Hat Enterprise Linux 8.6 (Ootpa)")], None)),
    ]);
    let image = format!("127.0.0.1:5000/dtk:{OCP_KERNEL}");
    let registry = FakeRegistry::with(&[(&image, REG)]);
    let config = DtkConfig { template: Some("127.0.0.1:5000/dtk:${KERNEL_FULL_VERSION}".into()), ..Default::default() };
    let resolver = Resolver::new(config, Some(client), registry.clone()).expect("resolver");
    let got = resolver.resolve(OCP_KERNEL).await.expect("resolved");
    assert_eq!((got.image.as_str(), got.source), (format!("127.0.0.1:5000/dtk@{REG}").as_str(), Source::Template));
    finish(resolver, server).await;
}

#[tokio::test]
async fn a_forbidden_image_stream_is_an_error_not_a_skip() {
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "imagestreams.image.openshift.io \"driver-toolkit\" is forbidden: User \"system:serviceaccount:kforge:kforge\" cannot get resource \"imagestreams\" in API group \"image.openshift.io\" in the namespace \"openshift\"",
        "reason": "Forbidden", "details": {"name": "driver-toolkit", "group": "image.openshift.io", "kind": "imagestreams"}, "code": 403});
    let (client, server) = api(vec![Expect { path: IS_PATH, query: None, status: StatusCode::FORBIDDEN, body: forbidden.to_string() }]);
    let config = DtkConfig { mappings: vec![literal(OCP_KERNEL, "127.0.0.1:5000/dtk:x")], ..Default::default() };
    let resolver = Resolver::new(config, Some(client), FakeRegistry::with(&[])).expect("resolver");
    let e = resolver.resolve(OCP_KERNEL).await.expect_err("403");
    assert!(matches!(&e, Error::Kube { what, .. } if what.contains("ImageStream openshift/driver-toolkit")), "{e}");
    finish(resolver, server).await;
}

// ---- (2) mappings ----

#[tokio::test]
async fn config_literal_mapping_on_vanilla_kubernetes() {
    let (client, server) = api(vec![not_found(IS_PATH, "imagestreams.image.openshift.io", "driver-toolkit")]);
    let registry = FakeRegistry::with(&[("127.0.0.1:5000/dtk-debian:6.1.0-56", REG)]);
    let config = DtkConfig {
        mappings: vec![regexp(r"^6\.1\.", "127.0.0.1:5000/dtk-debian:regexp"), literal(DEBIAN_KERNEL, "127.0.0.1:5000/dtk-debian:6.1.0-56")],
        configmap: cm_ref(),
        template: Some("127.0.0.1:5000/dtk:${KERNEL_FULL_VERSION}".into()),
        openshift: true,
    };
    let resolver = Resolver::new(config, Some(client), registry.clone()).expect("resolver");
    let got = resolver.resolve(DEBIAN_KERNEL).await.expect("resolved");
    assert_eq!(got.image, format!("127.0.0.1:5000/dtk-debian@{REG}"));
    assert_eq!(got.source, Source::Mapping);
    assert!(got.detail.contains("configuration entry 2") && got.detail.contains("literal"), "{}", got.detail);
    // Literal before regexp; the ConfigMap is not read once the configuration matched.
    assert_eq!(registry.asked(), vec!["127.0.0.1:5000/dtk-debian:6.1.0-56".to_string()]);
    finish(resolver, server).await;
}

#[tokio::test]
async fn configmap_literal_mapping_when_the_configuration_does_not_match() {
    // A real API server answers an unknown API group with a plain-text 404.
    let plain_404 = Expect { path: IS_PATH, query: None, status: StatusCode::NOT_FOUND, body: "404 page not found\n".into() };
    let (client, server) = api(vec![
        plain_404,
        ok(CM_PATH, config_map(json!({DEBIAN_KERNEL: "127.0.0.1:5000/dtk:debian-6.1.0-56", "regexps": "^6\\.1\\. 127.0.0.1:5000/dtk:regexp\n"}))),
    ]);
    let registry = FakeRegistry::with(&[("127.0.0.1:5000/dtk:debian-6.1.0-56", REG)]);
    let config = DtkConfig { mappings: vec![regexp(r"^5\.", "127.0.0.1:5000/dtk:5")], configmap: cm_ref(), ..Default::default() };
    let resolver = Resolver::new(config, Some(client), registry.clone()).expect("resolver");
    let got = resolver.resolve(DEBIAN_KERNEL).await.expect("resolved");
    assert_eq!((got.image.as_str(), got.source), (format!("127.0.0.1:5000/dtk@{REG}").as_str(), Source::Mapping));
    assert!(got.detail.contains("ConfigMap kforge/dtk-images key \"6.1.0-56-amd64\""), "{}", got.detail);
    assert_eq!(registry.asked(), vec!["127.0.0.1:5000/dtk:debian-6.1.0-56".to_string()]);
    finish(resolver, server).await;
}

#[tokio::test]
async fn configmap_regexp_mapping_with_kmm_variables() {
    let (client, server) = api(vec![
        not_found(IS_PATH, "imagestreams.image.openshift.io", "driver-toolkit"),
        ok(
            CM_PATH,
            config_map(
                json!({"6.1.0-55-amd64": "127.0.0.1:5000/dtk:old", "regexps": "# Debian 12\n^5\\.10\\. 127.0.0.1:5000/dtk:bullseye\n-amd64$   127.0.0.1:5000/dtk:${KERNEL_XYZ}-debian\n"}),
            ),
        ),
    ]);
    let registry = FakeRegistry::with(&[("127.0.0.1:5000/dtk:6.1.0-debian", REG)]);
    let config = DtkConfig { configmap: cm_ref(), ..Default::default() };
    let resolver = Resolver::new(config, Some(client), registry.clone()).expect("resolver");
    let got = resolver.resolve(DEBIAN_KERNEL).await.expect("resolved");
    assert_eq!((got.image.as_str(), got.source), (format!("127.0.0.1:5000/dtk@{REG}").as_str(), Source::Mapping));
    assert!(got.detail.contains("line 3"), "{}", got.detail);
    assert_eq!(registry.asked(), vec!["127.0.0.1:5000/dtk:6.1.0-debian".to_string()]);
    finish(resolver, server).await;
}

#[tokio::test]
async fn a_mapping_whose_image_is_missing_is_an_error_naming_both() {
    let registry = FakeRegistry::with(&[]);
    let config = DtkConfig {
        mappings: vec![regexp("-amd64$", "127.0.0.1:5000/dtk:${KERNEL_FULL_VERSION}")],
        template: Some("127.0.0.1:5000/other:x".into()),
        ..Default::default()
    };
    let resolver = Resolver::new(config, None, registry.clone()).expect("resolver");
    let e = resolver.resolve(DEBIAN_KERNEL).await.expect_err("missing");
    assert!(matches!(&e, Error::MappingImageMissing { image, .. } if image == "127.0.0.1:5000/dtk:6.1.0-56-amd64"), "{e}");
    assert!(e.to_string().contains("configuration entry 1"), "{e}");
    assert_eq!(registry.asked(), vec!["127.0.0.1:5000/dtk:6.1.0-56-amd64".to_string()], "the template is not tried after a mapping matched");
}

#[tokio::test]
async fn a_digest_pinned_mapping_needs_no_registry() {
    let registry = FakeRegistry::with(&[]);
    let config = DtkConfig { mappings: vec![literal(DEBIAN_KERNEL, &format!("127.0.0.1:5000/dtk:tag@{REG}"))], ..Default::default() };
    let resolver = Resolver::new(config, None, registry.clone()).expect("resolver");
    let got = resolver.resolve(DEBIAN_KERNEL).await.expect("resolved");
    assert_eq!(got.image, format!("127.0.0.1:5000/dtk@{REG}"));
    assert!(registry.asked().is_empty());
}

// ---- (3) template ----

#[tokio::test]
async fn template_that_exists_without_kubernetes() {
    let registry = FakeRegistry::with(&[("127.0.0.1:5000/dtk:6.1.0-56-amd64", REG)]);
    let config = DtkConfig { template: Some("127.0.0.1:5000/dtk:${KERNEL_FULL_VERSION}".into()), configmap: cm_ref(), ..Default::default() };
    let resolver = Resolver::new(config, None, registry.clone()).expect("resolver");
    let got = resolver.resolve(DEBIAN_KERNEL).await.expect("resolved");
    assert_eq!(got.image, format!("127.0.0.1:5000/dtk@{REG}"));
    assert_eq!(got.source, Source::Template);
    assert!(got.detail.contains("${KERNEL_FULL_VERSION}") && got.detail.contains("127.0.0.1:5000/dtk:6.1.0-56-amd64"), "{}", got.detail);
}

#[tokio::test]
async fn template_registry_failure_is_an_error() {
    let config = DtkConfig { template: Some("unreachable.example/dtk:$KERNEL_XYZ".into()), ..Default::default() };
    let resolver = Resolver::new(config, None, FakeRegistry::with(&[])).expect("resolver");
    let e = resolver.resolve(DEBIAN_KERNEL).await.expect_err("unreachable");
    assert!(matches!(&e, Error::Registry { image, .. } if image == "unreachable.example/dtk:6.1.0"), "{e}");
}

#[tokio::test]
async fn a_template_with_an_unclosed_brace_is_refused_up_front() {
    let config = DtkConfig { template: Some("127.0.0.1:5000/dtk:${KERNEL_FULL_VERSION".into()), ..Default::default() };
    let e = Resolver::new(config, None, FakeRegistry::with(&[])).expect_err("unclosed");
    assert!(matches!(e, Error::Template { .. }), "{e}");
}

// ---- nothing applies ----

#[tokio::test]
async fn nothing_applies_lists_every_source_and_why() {
    let (client, server) = api(vec![not_found(IS_PATH, "imagestreams.image.openshift.io", "driver-toolkit"), not_found(CM_PATH, "configmaps", "dtk-images")]);
    let registry = FakeRegistry::with(&[]);
    let kernel = "6.1.0-99-amd64";
    let config = DtkConfig {
        mappings: vec![literal(DEBIAN_KERNEL, "127.0.0.1:5000/dtk:56")],
        configmap: cm_ref(),
        template: Some("127.0.0.1:5000/dtk:${KERNEL_FULL_VERSION}".into()),
        openshift: true,
    };
    let resolver = Resolver::new(config, Some(client), registry.clone()).expect("resolver");
    let e = resolver.resolve(kernel).await.expect_err("nothing");
    let Error::NothingApplies { kernel: k, tried } = &e else { panic!("wrong error: {e}") };
    assert_eq!(k, kernel);
    assert_eq!(
        tried,
        &vec![
            "ImageStream openshift/driver-toolkit: not found (not OpenShift)".to_string(),
            "mapping (configuration, 1 entry): no literal or regexp matches".to_string(),
            "mapping (ConfigMap kforge/dtk-images): ConfigMap not found".to_string(),
            "template 127.0.0.1:5000/dtk:6.1.0-99-amd64: image does not exist".to_string(),
        ]
    );
    let shown = e.to_string();
    assert!(shown.contains(kernel) && tried.iter().all(|t| shown.contains(t.as_str())), "{shown}");
    assert_eq!(registry.asked(), vec!["127.0.0.1:5000/dtk:6.1.0-99-amd64".to_string()]);
    finish(resolver, server).await;
}

#[tokio::test]
async fn nothing_applies_without_kubernetes_says_so() {
    let config = DtkConfig { configmap: cm_ref(), ..Default::default() };
    let resolver = Resolver::new(config, None, FakeRegistry::with(&[])).expect("resolver");
    let e = resolver.resolve(DEBIAN_KERNEL).await.expect_err("nothing");
    let Error::NothingApplies { tried, .. } = &e else { panic!("wrong error: {e}") };
    assert_eq!(
        tried,
        &vec![
            "ImageStream openshift/driver-toolkit: skipped (no Kubernetes API)".to_string(),
            "mapping (ConfigMap kforge/dtk-images): skipped (no Kubernetes API)".to_string(),
            "template: none configured".to_string(),
        ]
    );
}

#[tokio::test]
async fn openshift_disabled_and_no_node_with_the_kernel() {
    // openshift = false: the API is not asked for the ImageStream at all.
    let (client, server) = api(vec![]);
    let resolver = Resolver::new(DtkConfig { openshift: false, ..Default::default() }, Some(client), FakeRegistry::with(&[])).expect("resolver");
    let e = resolver.resolve(OCP_KERNEL).await.expect_err("nothing");
    assert!(e.to_string().contains("disabled (openshift = false)") && e.to_string().contains("mapping: none configured"), "{e}");
    finish(resolver, server).await;

    // OpenShift, but no Node runs the kernel (yet): skipped, with the reason.
    let (client, server) =
        api(vec![ok(IS_PATH, ocp_image_stream()), nodes_page("&limit=500", node_list(vec![node("worker-0", OCP_KERNEL, &rhcos(RHCOS_412))], None))]);
    let resolver = Resolver::new(DtkConfig::default(), Some(client), FakeRegistry::with(&[])).expect("resolver");
    let e = resolver.resolve("5.14.0-284.11.1.el9_2.x86_64").await.expect_err("nothing");
    assert!(e.to_string().contains("no Node runs kernel 5.14.0-284.11.1.el9_2.x86_64"), "{e}");
    finish(resolver, server).await;
}

// ---- a real kube client ----

#[tokio::test]
async fn a_real_kube_client_builds_with_one_crypto_provider_and_reports_an_unreachable_api() {
    // With two rustls providers (ring and aws-lc-rs) building the TLS connector panics.
    let config = kube::Config::new("https://127.0.0.1:1".parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    let resolver = Resolver::new(DtkConfig::default(), Some(client), FakeRegistry::with(&[])).expect("resolver");
    let e = resolver.resolve(OCP_KERNEL).await.expect_err("nothing listens on port 1");
    assert!(matches!(&e, Error::Kube { what, .. } if what == "get ImageStream openshift/driver-toolkit"), "{e}");
}
