//! Scenario tests of one pass against kube's mocked API server: every request is checked
//! (method, path, query, body) and answered in order; any request beyond the expected ones fails.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::api::{KernelStatus, ModuleSpec, ModuleStatus};
use crate::config::LeaseConfig;
use crate::labels::{KERNEL_FULL as KERNEL_LABEL, MODULE_NAME as MODULE_NAME_LABEL, SPEC_HASH};
use crate::node_table::NodeTable;
use crate::plan::{ModulePlan, NodeFacts};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

thread_local! {
    /// What the fake planner returns (tokio tests run on one thread).
    static PLAN: RefCell<Plan> = RefCell::new(Plan::default());
}

fn fake_planner(_: &[Module], _: &[NodeFacts], _: &Facts, _: Time) -> Plan {
    PLAN.with(|p| p.borrow().clone())
}

fn set_plan(plan: Plan) {
    PLAN.with(|p| *p.borrow_mut() = plan);
}

struct Writers {
    modules: Writer<Module>,
    nodes: NodeTable,
    daemonsets: Writer<DaemonSet>,
}

impl Writers {
    fn module(&mut self, m: &Module) {
        self.modules.apply_watcher_event(&watcher::Event::Apply(m.clone()));
    }
    fn node(&mut self, n: &Node) {
        self.nodes.apply(watcher::Event::Apply(n.clone()));
    }
    fn daemonset(&mut self, d: &DaemonSet) {
        self.daemonsets.apply_watcher_event(&watcher::Event::Apply(d.clone()));
    }
    fn delete_daemonset(&mut self, d: &DaemonSet) {
        self.daemonsets.apply_watcher_event(&watcher::Event::Delete(d.clone()));
    }
}

struct Rig {
    rec: Reconciler,
    api: Handle,
    w: Writers,
}

fn rig() -> Rig {
    let (svc, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let modules = Writer::default();
    let nodes = NodeTable::default();
    let daemonsets = Writer::default();
    let configmaps = Writer::default();
    let secrets = Writer::default();
    let stores = Stores {
        modules: modules.as_reader(),
        nodes: nodes.clone(),
        daemonsets: daemonsets.as_reader(),
        pods: Default::default(),
        configmaps: configmaps.as_reader(),
        secrets: secrets.as_reader(),
    };
    let mut config = Config::new(fake_planner);
    config.events = false;
    let (tx, _rx) = mpsc::channel(16);
    let rec = Reconciler::new(client, config, stores, Metrics::default(), tx).expect("reconciler");
    Rig { rec, api, w: Writers { modules, nodes, daemonsets } }
}

fn status(kernel_build: &str) -> ModuleStatus {
    ModuleStatus {
        observed_generation: Some(1),
        kernels: vec![KernelStatus {
            kernel: "6.1.0-1".into(),
            image: "r/kmm:6.1.0-1".into(),
            build: kernel_build.into(),
            nodes_desired: 1,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn module(finalized: bool, status: Option<ModuleStatus>) -> Module {
    let mut m = Module::new("m", ModuleSpec::default());
    m.metadata.namespace = Some("kmm".into());
    m.metadata.uid = Some("uid-m".into());
    m.metadata.resource_version = Some("7".into());
    if finalized {
        m.metadata.finalizers = Some(vec![FINALIZER.into()]);
    }
    m.status = status;
    m
}

fn node(labels: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some("n1".into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            node_info: Some(NodeSystemInfo { kernel_version: "6.1.0-1".into(), architecture: "amd64".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

const READY: &str = "kmm.node.kubernetes.io/kmm.m.ready";

fn daemonset(name: &str, hash: &str) -> DaemonSet {
    DaemonSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("kmm".into()),
            labels: Some(BTreeMap::from([(crate::labels::MANAGED_BY.into(), crate::labels::MANAGER.into()), (MODULE_NAME_LABEL.into(), "m".into())])),
            annotations: Some(BTreeMap::from([(SPEC_HASH.into(), hash.into())])),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A plan with one Module and label changes on node n1.
fn plan(daemonsets: Vec<DaemonSet>, status: ModuleStatus, labels: &[(&str, Option<&str>)]) -> Plan {
    Plan {
        modules: vec![ModulePlan { namespace: "kmm".into(), name: "m".into(), daemonsets, unchanged: 0, status }],
        node_labels: BTreeMap::from([("n1".to_string(), labels.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect())]),
        ..Default::default()
    }
}

/// A cluster that already matches the plan.
fn steady(rig: &mut Rig) {
    rig.w.module(&module(true, Some(status("Present"))));
    rig.w.node(&node(&[("kubernetes.io/hostname", "n1"), (KERNEL_LABEL, "6.1.0-1"), (READY, "")]));
    rig.w.daemonset(&daemonset("m-loader-6-1-0-1", "h1"));
    // Label changes the node already shows: nothing to send.
    set_plan(plan(vec![daemonset("m-loader-6-1-0-1", "h1")], status("Present"), &[(KERNEL_LABEL, Some("6.1.0-1")), (READY, Some(""))]));
}

/// What a request must look like.
struct Expect {
    method: Method,
    path: &'static str,
    query: &'static [(&'static str, &'static str)],
    body: Option<Value>,
    status: StatusCode,
    reply: Value,
}

impl Expect {
    fn new(method: Method, path: &'static str) -> Self {
        Expect { method, path, query: &[], body: None, status: StatusCode::OK, reply: json!({}) }
    }
    fn query(mut self, q: &'static [(&'static str, &'static str)]) -> Self {
        self.query = q;
        self
    }
    fn body(mut self, b: Value) -> Self {
        self.body = Some(b);
        self
    }
    fn reply(mut self, status: StatusCode, reply: Value) -> Self {
        self.status = status;
        self.reply = reply;
        self
    }
}

fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "the object has been modified", "reason": "Conflict", "code": 409})
}

/// Answers `expected` in order, checking each request, then fails on any further request.
async fn serve(api: &mut Handle, expected: Vec<Expect>) {
    for e in expected {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request()).await.expect("expected request in time").expect("client alive");
        assert_eq!(req.method(), e.method, "method of {}", req.uri());
        assert_eq!(req.uri().path(), e.path);
        let query: Vec<(String, String)> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        for (k, v) in e.query {
            assert!(query.iter().any(|(qk, qv)| qk == k && qv == v), "{} lacks {k}={v}", req.uri());
        }
        let body = req.into_body().collect_bytes().await.expect("body");
        if let Some(want) = e.body {
            let got: Value = serde_json::from_slice(&body).expect("JSON body");
            assert_eq!(got, want);
        }
        send.send_response(Response::builder().status(e.status).body(Body::from(serde_json::to_vec(&e.reply).expect("json"))).expect("response"));
    }
}

/// Runs one pass while serving `expected`; then checks nothing else was asked.
async fn pass_with(rig: &mut Rig, expected: Vec<Expect>) {
    let Rig { rec, api, .. } = rig;
    tokio::join!(rec.pass(), serve(api, expected));
    if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(50), api.next_request()).await {
        panic!("an unexpected request: {} {}", req.method(), req.uri());
    }
}

#[tokio::test]
async fn steady_state_sends_no_writes() {
    let mut rig = rig();
    steady(&mut rig);
    pass_with(&mut rig, vec![]).await;
    pass_with(&mut rig, vec![]).await;
    assert_eq!(rig.rec.metrics.writes_total(), 0);
    assert_eq!(rig.rec.metrics.passes(), 2);
}

#[tokio::test]
async fn a_new_daemonset_is_applied_once_with_force() {
    let mut rig = rig();
    steady(&mut rig);
    let new = daemonset("m-loader-6-2-0-1", "h2");
    let mut p = fake_planner(&[], &[], &Facts::default(), Time(k8s_openapi::jiff::Timestamp::now()));
    p.modules[0].daemonsets.push(new.clone());
    set_plan(p);
    let want = serde_json::to_value(&new).expect("json");
    pass_with(
        &mut rig,
        vec![
            Expect::new(Method::PATCH, "/apis/apps/v1/namespaces/kmm/daemonsets/m-loader-6-2-0-1")
                .query(&[("fieldManager", "kforge"), ("force", "true")])
                .body(want.clone())
                .reply(StatusCode::OK, want),
        ],
    )
    .await;
    assert_eq!(rig.rec.metrics.writes_total(), 1);
}

#[tokio::test]
async fn a_changed_spec_hash_is_applied_and_a_missing_hash_too() {
    let mut rig = rig();
    steady(&mut rig);
    rig.w.daemonset(&daemonset("m-loader-6-1-0-1", "old"));
    let want = serde_json::to_value(daemonset("m-loader-6-1-0-1", "h1")).expect("json");
    pass_with(
        &mut rig,
        vec![
            Expect::new(Method::PATCH, "/apis/apps/v1/namespaces/kmm/daemonsets/m-loader-6-1-0-1")
                .query(&[("fieldManager", "kforge"), ("force", "true")])
                .body(want.clone())
                .reply(StatusCode::OK, want.clone()),
        ],
    )
    .await;
    // A live DaemonSet without the annotation (written by someone else) is applied too.
    let mut bare = daemonset("m-loader-6-1-0-1", "h1");
    bare.metadata.annotations = None;
    rig.w.daemonset(&bare);
    pass_with(
        &mut rig,
        vec![Expect::new(Method::PATCH, "/apis/apps/v1/namespaces/kmm/daemonsets/m-loader-6-1-0-1").body(want.clone()).reply(StatusCode::OK, want)],
    )
    .await;
}

#[tokio::test]
async fn creating_a_daemonset_publishes_an_event_on_the_module() {
    let (svc, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut w = rig();
    let mut config = Config::new(fake_planner);
    config.events = true;
    let (tx, _rx) = mpsc::channel(16);
    let rec = Reconciler::new(Client::new(svc, "default"), config, w.rec.stores.clone(), Metrics::default(), tx).expect("reconciler");
    steady(&mut w);
    let mut p = fake_planner(&[], &[], &Facts::default(), Time(k8s_openapi::jiff::Timestamp::now()));
    p.modules[0].daemonsets.push(daemonset("m-loader-6-2-0-1", "h2"));
    set_plan(p);
    let reply = serde_json::to_value(daemonset("m-loader-6-2-0-1", "h2")).expect("json");
    let (_, ()) = tokio::join!(rec.pass(), async {
        serve(&mut api, vec![Expect::new(Method::PATCH, "/apis/apps/v1/namespaces/kmm/daemonsets/m-loader-6-2-0-1").reply(StatusCode::OK, reply)]).await;
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request()).await.expect("event in time").expect("alive");
        assert_eq!((req.method(), req.uri().path()), (&Method::POST, "/apis/events.k8s.io/v1/namespaces/kmm/events"));
        let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body")).expect("json");
        assert_eq!(body["reason"], "DaemonSetCreated");
        assert_eq!(body["reportingController"], "kforge");
        assert_eq!(body["regarding"]["kind"], "Module");
        assert_eq!(body["regarding"]["name"], "m");
        send.send_response(Response::builder().status(201).body(Body::from(serde_json::to_vec(&body).expect("json"))).expect("response"));
    });
    assert_eq!(rec.metrics.writes_total(), 2);
}

#[tokio::test]
async fn garbage_is_deleted_in_the_background_once() {
    let mut rig = rig();
    steady(&mut rig);
    let old = daemonset("m-loader-5-10-0", "h0");
    rig.w.daemonset(&old);
    let mut p = fake_planner(&[], &[], &Facts::default(), Time(k8s_openapi::jiff::Timestamp::now()));
    p.garbage.push(("kmm".into(), "m-loader-5-10-0".into()));
    set_plan(p);
    pass_with(
        &mut rig,
        vec![
            Expect::new(Method::DELETE, "/apis/apps/v1/namespaces/kmm/daemonsets/m-loader-5-10-0")
                .body(json!({"propagationPolicy": "Background"}))
                .reply(StatusCode::OK, serde_json::to_value(&old).expect("json")),
        ],
    )
    .await;
    // Once the watch shows it terminating, nothing more is sent.
    let mut going = old.clone();
    going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    rig.w.daemonset(&going);
    pass_with(&mut rig, vec![]).await;
}

#[tokio::test]
async fn node_labels_are_patched_with_only_the_difference() {
    let mut rig = rig();
    steady(&mut rig);
    rig.w.node(&node(&[("kubernetes.io/hostname", "n1"), (KERNEL_LABEL, "6.0.0"), (READY, ""), ("kmm.node.kubernetes.io/kmm.gone.ready", "")]));
    let changes =
        [(KERNEL_LABEL, Some("6.1.0-1")), (READY, Some("")), ("kmm.node.kubernetes.io/kmm.gone.ready", None), ("kmm.node.kubernetes.io/kmm.never.ready", None)];
    set_plan(plan(vec![daemonset("m-loader-6-1-0-1", "h1")], status("Present"), &changes));
    pass_with(
        &mut rig,
        vec![
            Expect::new(Method::PATCH, "/api/v1/nodes/n1")
                .body(json!({"metadata": {"labels": {KERNEL_LABEL: "6.1.0-1", "kmm.node.kubernetes.io/kmm.gone.ready": null}}}))
                .reply(StatusCode::OK, serde_json::to_value(node(&[])).expect("json")),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_changed_status_is_patched_on_the_subresource() {
    let mut rig = rig();
    steady(&mut rig);
    let mut p = fake_planner(&[], &[], &Facts::default(), Time(k8s_openapi::jiff::Timestamp::now()));
    p.modules[0].status = status("Building");
    set_plan(p);
    let mut want = serde_json::to_value(status("Building")).expect("json");
    want["kernels"][0]["build"] = json!("Building");
    pass_with(
        &mut rig,
        vec![
            Expect::new(Method::PATCH, "/apis/kmm.sigs.x-k8s.io/v1beta1/namespaces/kmm/modules/m/status")
                .body(json!({ "status": want }))
                .reply(StatusCode::OK, serde_json::to_value(module(true, Some(status("Building")))).expect("json")),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_conflict_is_retried_on_the_next_pass() {
    let mut rig = rig();
    steady(&mut rig);
    rig.w.daemonset(&daemonset("m-loader-6-1-0-1", "old"));
    let path = "/apis/apps/v1/namespaces/kmm/daemonsets/m-loader-6-1-0-1";
    let want = serde_json::to_value(daemonset("m-loader-6-1-0-1", "h1")).expect("json");
    pass_with(&mut rig, vec![Expect::new(Method::PATCH, path).reply(StatusCode::CONFLICT, conflict())]).await;
    pass_with(&mut rig, vec![Expect::new(Method::PATCH, path).body(want.clone()).reply(StatusCode::OK, want)]).await;
    assert_eq!(rig.rec.metrics.writes_total(), 2);
}

#[tokio::test]
async fn the_finalizer_is_added_to_a_live_module() {
    let mut rig = rig();
    steady(&mut rig);
    rig.w.module(&module(false, Some(status("Present"))));
    pass_with(
        &mut rig,
        vec![
            Expect::new(Method::PATCH, "/apis/kmm.sigs.x-k8s.io/v1beta1/namespaces/kmm/modules/m")
                .body(json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "7"}}))
                .reply(StatusCode::OK, serde_json::to_value(module(true, None)).expect("json")),
        ],
    )
    .await;
}

#[tokio::test]
async fn deletion_removes_daemonsets_then_labels_then_the_finalizer() {
    let mut rig = rig();
    steady(&mut rig);
    let mut m = module(true, Some(status("Present")));
    m.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    rig.w.module(&m);
    let ds = daemonset("m-loader-6-1-0-1", "h1");
    // The planner no longer sees the Module: it lists its DaemonSet as garbage and drops its label.
    set_plan(Plan {
        node_labels: BTreeMap::from([("n1".to_string(), BTreeMap::from([(READY.to_string(), None)]))]),
        garbage: vec![("kmm".into(), "m-loader-6-1-0-1".into())],
        ..Default::default()
    });
    pass_with(
        &mut rig,
        vec![
            Expect::new(Method::DELETE, "/apis/apps/v1/namespaces/kmm/daemonsets/m-loader-6-1-0-1")
                .body(json!({"propagationPolicy": "Background"}))
                .reply(StatusCode::OK, serde_json::to_value(&ds).expect("json")),
            Expect::new(Method::PATCH, "/api/v1/nodes/n1")
                .body(json!({"metadata": {"labels": {READY: null}}}))
                .reply(StatusCode::OK, serde_json::to_value(node(&[])).expect("json")),
        ],
    )
    .await;
    // The watches show the DaemonSet gone and the label removed: only the finalizer is left to remove.
    rig.w.delete_daemonset(&ds);
    set_plan(Plan::default());
    rig.w.node(&node(&[(KERNEL_LABEL, "6.1.0-1")]));
    pass_with(
        &mut rig,
        vec![
            Expect::new(Method::PATCH, "/apis/kmm.sigs.x-k8s.io/v1beta1/namespaces/kmm/modules/m")
                .body(json!({"metadata": {"finalizers": [], "resourceVersion": "7"}}))
                .reply(StatusCode::OK, serde_json::to_value(module(false, None)).expect("json")),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_failed_watch_reconnects() {
    let (svc, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let writer: Writer<Node> = Writer::default();
    let store = writer.as_reader();
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(watch_into(Api::<Node>::all(client), watcher::Config::default(), |_| {}, writer, tx));
    let (req, send) = api.next_request().await.expect("list");
    assert_eq!(req.uri().path(), "/api/v1/nodes");
    send.send_response(
        Response::builder().status(500).body(Body::from(b"{\"kind\":\"Status\",\"code\":500,\"message\":\"boom\"}".to_vec())).expect("response"),
    );
    // The watcher backs off and lists again.
    let (req, send) = tokio::time::timeout(Duration::from_secs(10), api.next_request()).await.expect("relist in time").expect("relist");
    assert_eq!(req.uri().path(), "/api/v1/nodes");
    let list = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "5"}, "items": [serde_json::to_value(node(&[])).expect("json")]});
    send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&list).expect("json"))).expect("response"));
    tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready()).await.expect("synced in time").expect("writer alive");
    assert_eq!(store.state().len(), 1);
    // The watch request follows; the task is still running.
    let (req, _keep) = tokio::time::timeout(Duration::from_secs(5), api.next_request()).await.expect("watch in time").expect("watch");
    assert!(req.uri().query().unwrap_or_default().contains("watch=true"));
    assert!(!task.is_finished());
    task.abort();
    assert!(rx.try_recv().is_ok(), "the relist woke the loop");
}

#[tokio::test]
async fn a_build_wanted_by_two_modules_starts_once_across_passes() {
    use crate::builds::tests::{FakeBuilder, job, serve};
    let fake = FakeBuilder {
        requests: Default::default(),
        outcomes: std::sync::Arc::new(std::sync::Mutex::new(vec![Ok("r/kmm@sha256:abc".into())])),
        delay: Duration::from_millis(300),
    };
    let url = serve(fake.clone()).await;
    let (svc, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut config = Config::new(fake_planner);
    config.events = false;
    config.builder = Some(crate::BuilderEndpoint { url, ..Default::default() });
    let (tx, mut rx) = mpsc::channel(16);
    let mut w = rig();
    let rec = Reconciler::new(Client::new(svc, "default"), config, w.rec.stores.clone(), Metrics::default(), tx).expect("reconciler");
    steady(&mut w);
    let mut p = fake_planner(&[], &[], &Facts::default(), Time(k8s_openapi::jiff::Timestamp::now()));
    let j = job("r/kmm:6.1", &["a", "b"]);
    p.builds = vec![j.clone()];
    set_plan(p);
    rec.pass().await;
    rec.pass().await;
    // While it runs the planner is told so.
    let (_, _, _, facts) = rec.observe();
    assert_eq!(facts.images.get(&(j.image.clone(), j.architecture.clone())), Some(&crate::plan::ImageFact::Building));
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("build done in time");
    // A real planner sees the image present and plans no build.
    let mut p = fake_planner(&[], &[], &Facts::default(), Time(k8s_openapi::jiff::Timestamp::now()));
    p.builds.clear();
    set_plan(p);
    rec.pass().await;
    assert_eq!(fake.requests.lock().expect("lock").len(), 1);
    let (_, _, _, facts) = rec.observe();
    assert!(matches!(facts.images.get(&(j.image.clone(), j.architecture.clone())), Some(crate::plan::ImageFact::Present { .. })));
    if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(50), api.next_request()).await {
        panic!("an unexpected request: {} {}", req.method(), req.uri());
    }
}

/// A permissive API server for whole-controller tests: lists are empty, watches stay open, the
/// Lease belongs to `lease_holder` (fresh), and writes are recorded and answered `{}`.
async fn cluster(mut api: Handle, lease_holder: &'static str, writes: std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let mut open_watches = Vec::new();
    while let Some((req, send)) = api.next_request().await {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let reply = if req.method() != Method::GET {
            writes.lock().expect("lock").push(format!("{} {path}?{query}", req.method()));
            json!({})
        } else if query.contains("watch=true") {
            open_watches.push(send);
            continue;
        } else if path.ends_with("/leases/kforge-reconciler") {
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now());
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "kforge-reconciler", "namespace": "kforge", "resourceVersion": "1"},
                   "spec": {"holderIdentity": lease_holder, "leaseDurationSeconds": 15, "renewTime": now}})
        } else {
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []})
        };
        send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&reply).expect("json"))).expect("response"));
    }
}

async fn run_controller(leader_election: bool, lease_holder: &'static str) -> (Metrics, Vec<String>) {
    let (svc, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let writes = std::sync::Arc::default();
    let server = tokio::spawn(cluster(api, lease_holder, std::sync::Arc::clone(&writes)));
    // Whatever the cluster holds, the (fake) planner wants one DaemonSet.
    set_plan(Plan {
        modules: vec![ModulePlan {
            namespace: "kmm".into(),
            name: "m".into(),
            daemonsets: vec![daemonset("m-loader", "h1")],
            unchanged: 0,
            status: status("Present"),
        }],
        ..Default::default()
    });
    let mut config = Config::new(fake_planner);
    config.events = false;
    if leader_election {
        config.leader_election = Some(LeaseConfig::new("kforge", "me"));
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let controller = Controller::new(client, config, &mut registry);
    let metrics = controller.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(controller.run(async move {
        let _ = stopped.await;
    }));
    // Let it sync, debounce and pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("stops on shutdown").expect("no panic").expect("no error");
    server.abort();
    let writes = writes.lock().expect("lock").clone();
    (metrics, writes)
}

#[tokio::test]
async fn the_controller_syncs_passes_and_stops_on_shutdown() {
    let (metrics, writes) = run_controller(false, "").await;
    assert!(metrics.ready());
    // One pass for the sync (and at most one for the first resync tick): nothing spins.
    assert!((1..=2).contains(&metrics.passes()), "{} passes", metrics.passes());
    assert!(writes.iter().all(|w| w.starts_with("PATCH /apis/apps/v1/namespaces/kmm/daemonsets/m-loader?")), "{writes:?}");
    assert!(!writes.is_empty());
}

#[tokio::test]
async fn the_controller_does_not_act_while_another_replica_holds_the_lease() {
    let (metrics, writes) = run_controller(true, "other").await;
    assert!(metrics.ready());
    assert_eq!(metrics.passes(), 0);
    assert!(writes.is_empty(), "{writes:?}");
}

#[tokio::test]
async fn a_bad_builder_endpoint_is_refused_before_anything_starts() {
    let (svc, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut config = Config::new(fake_planner);
    config.builder = Some(crate::BuilderEndpoint { url: "not a url".into(), ..Default::default() });
    let result = run(Client::new(svc, "default"), config, std::future::pending()).await;
    assert!(matches!(result, Err(crate::Error::BuilderEndpoint { .. })), "{result:?}");
    if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(50), api.next_request()).await {
        panic!("an unexpected request: {} {}", req.method(), req.uri());
    }
}
