//! A private Kubernetes control plane for the end-to-end tests, from the pinned upstream peers that
//! `tests/peers/build.sh` builds: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and,
//! on request, kwok faking nodes and their pods. Everything listens on 127.0.0.1 only, with a private
//! CA made with the openssl CLI, in a temp dir; the processes are killed and the dir removed on drop.
//!
//! What it does and does not do (checked with Kubernetes v1.37.2, etcd v3.6.16, kwok v0.8.0):
//! - kube-controller-manager runs only the daemonset, garbage-collector, namespace, serviceaccount and
//!   serviceaccount-token controllers; there is no kubelet, kube-proxy or CNI, so nothing runs in a
//!   pod and Services have no endpoints.
//! - `--advertise-address 127.0.0.1` needs `--endpoint-reconciler-type none`: the endpoint reconciler
//!   refuses a loopback address and kube-apiserver exits.
//! - The `TaintNodesByCondition` admission plugin is off: it taints every new node `not-ready`, and
//!   only the node-lifecycle controller (not run here) would remove the taint.
//! - Fake nodes are created through the API with their `status` (nodeInfo, capacity), which the API
//!   keeps on create, and annotated `kwok.x-k8s.io/node: fake`, the only nodes kwok manages. kwok's
//!   stages (`tests/support/kwok/`, our own) make them Ready without touching nodeInfo, start the pods
//!   bound to them (Running, Ready) and remove those being deleted.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::peers::{Peer, free_port, tail};
use super::pki::{Ca, Leaf, Usage, rsa_key_pair};

/// How long one component may take to become ready (kube-apiserver takes a few seconds when idle).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `ControlPlane::eventually` waits for a condition.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The Service range; its first address is the `kubernetes` Service's, named in the serving cert.
const SERVICE_CIDR: &str = "10.96.0.0/16";
const SERVICE_IP: &str = "10.96.0.1";

/// The annotation that tells kwok to manage a node (`--manage-nodes-with-annotation-selector`).
pub const FAKE_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// The controllers kube-controller-manager runs (names as v1.37's `--help` lists them).
const CONTROLLERS: &str = "daemonset-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller";

/// Lines of each log in failure messages.
const TAIL_LINES: usize = 25;

/// A node that kwok fakes: what its `status.nodeInfo` reports, and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeNode {
    pub name: String,
    pub kernel_version: String,
    pub os_image: String,
    pub architecture: String,
    pub labels: BTreeMap<String, String>,
}

impl FakeNode {
    /// An amd64 node running `kernel_version` on `os_image`, with the well-known labels only.
    pub fn new(name: &str, kernel_version: &str, os_image: &str) -> FakeNode {
        FakeNode { name: name.into(), kernel_version: kernel_version.into(), os_image: os_image.into(), architecture: "amd64".into(), labels: BTreeMap::new() }
    }

    /// The same node with one more label.
    pub fn label(mut self, key: &str, value: &str) -> FakeNode {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The Node object to create, status included.
    fn manifest(&self) -> Value {
        let mut labels = self.labels.clone();
        for (key, value) in [("kubernetes.io/hostname", self.name.as_str()), ("kubernetes.io/os", "linux"), ("kubernetes.io/arch", &self.architecture)] {
            labels.entry(key.to_string()).or_insert_with(|| value.to_string());
        }
        let resources = json!({"cpu": "8", "memory": "32Gi", "pods": "110"});
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels, "annotations": {FAKE_NODE_ANNOTATION.0: FAKE_NODE_ANNOTATION.1}},
            "status": {
                "nodeInfo": {
                    "kernelVersion": self.kernel_version,
                    "osImage": self.os_image,
                    "architecture": self.architecture,
                    "operatingSystem": "linux",
                    "containerRuntimeVersion": format!("kwok://{}", Peer::Kwok.version()),
                    "kubeletVersion": Peer::Kubernetes.version(),
                    "kubeProxyVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
                "capacity": resources,
                "allocatable": resources,
            },
        })
    }
}

/// What `ControlPlane::start_with` starts besides the control plane.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Nodes for kwok to fake; kwok runs only when there are some.
    pub nodes: Vec<FakeNode>,
}

/// One running component: killed on drop of the control plane.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A private control plane; its processes are killed and its temp dir removed on drop.
pub struct ControlPlane {
    /// In start order; killed in reverse order.
    processes: Vec<Process>,
    curl: Curl,
    server: String,
    kubeconfig: PathBuf,
    ports: Vec<u16>,
    startup: Vec<(&'static str, Duration)>,
    // Last: removed after `Drop::drop` has killed the processes.
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// etcd, kube-apiserver, kube-controller-manager and kube-scheduler, ready; no nodes.
    pub fn start() -> ControlPlane {
        Self::start_with(Options::default())
    }

    /// The control plane and, when `options.nodes` is not empty, kwok with those nodes Ready. The
    /// processes are started with `setpriv --pdeathsig KILL`: they die with the thread that started
    /// them, so start a control plane in the test that uses it (not in a shared static).
    pub fn start_with(options: Options) -> ControlPlane {
        let began = Instant::now();
        // Missing binaries panic here, saying how to build them, before anything starts.
        let etcd = Peer::Etcd.binary("etcd");
        let apiserver = Peer::Kubernetes.binary("kube-apiserver");
        let controller_manager = Peer::Kubernetes.binary("kube-controller-manager");
        let scheduler = Peer::Kubernetes.binary("kube-scheduler");
        let kwok = (!options.nodes.is_empty()).then(|| Peer::Kwok.binary("kwok"));

        let dir = tempfile::Builder::new().prefix("kforge-control-plane-").tempdir().expect("create the control plane's temp dir");
        let pki = Pki::new(dir.path());
        let mut cp = ControlPlane {
            processes: Vec::new(),
            curl: Curl { ca: pki.ca.cert.clone(), cert: pki.admin.cert.clone(), key: pki.admin.key.clone() },
            server: String::new(),
            kubeconfig: dir.path().join("admin.kubeconfig"),
            ports: Vec::new(),
            startup: vec![("certificates", began.elapsed())],
            dir,
        };
        let etcd_url = cp.start_etcd(&etcd);
        cp.start_apiserver(&apiserver, &pki, &etcd_url);
        write_kubeconfig(&cp.kubeconfig, &cp.server, &pki.ca.cert, &pki.admin);
        cp.start_controller_manager(&controller_manager, &pki);
        cp.start_scheduler(&scheduler, &pki);
        if let Some(kwok) = kwok {
            cp.start_kwok(&kwok, &options.nodes);
        }

        let steps: Vec<String> = cp.startup.iter().map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64())).collect();
        let nodes = match options.nodes.len() {
            0 => String::new(),
            n => format!(", {n} fake nodes"),
        };
        eprintln!("control plane ready in {:.1} s ({}{nodes}) at {}", began.elapsed().as_secs_f64(), steps.join(", "), cp.server);
        cp
    }

    /// etcd with a private data dir, until `/health` says so; returns its client URL.
    fn start_etcd(&mut self, program: &Path) -> String {
        let data = self.dir.path().join("etcd");
        let ports = self.launch(
            "etcd",
            program,
            2,
            |p| {
                let (client, peer) = (format!("http://127.0.0.1:{}", p[0]), format!("http://127.0.0.1:{}", p[1]));
                vec![
                    "--name=kforge".into(),
                    format!("--data-dir={}", data.display()),
                    format!("--listen-client-urls={client}"),
                    format!("--advertise-client-urls={client}"),
                    format!("--listen-peer-urls={peer}"),
                    format!("--initial-advertise-peer-urls={peer}"),
                    format!("--initial-cluster=kforge={peer}"),
                    "--initial-cluster-state=new".into(),
                    "--unsafe-no-fsync".into(),
                    "--log-level=warn".into(),
                ]
            },
            |curl, p| {
                curl.get(&format!("http://127.0.0.1:{}/health", p[0])).is_some_and(|(status, body)| status == 200 && body.contains("\"health\":\"true\""))
            },
        );
        format!("http://127.0.0.1:{}", ports[0])
    }

    /// kube-apiserver on etcd, until `/readyz` answers ok to the admin; sets `server`.
    fn start_apiserver(&mut self, program: &Path, pki: &Pki, etcd_url: &str) {
        let cert_dir = self.dir.path().join("kube-apiserver");
        let ports = self.launch(
            "kube-apiserver",
            program,
            1,
            |p| {
                vec![
                    format!("--etcd-servers={etcd_url}"),
                    "--bind-address=127.0.0.1".into(),
                    "--advertise-address=127.0.0.1".into(),
                    format!("--secure-port={}", p[0]),
                    "--endpoint-reconciler-type=none".into(),
                    format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                    format!("--tls-cert-file={}", pki.serving.cert.display()),
                    format!("--tls-private-key-file={}", pki.serving.key.display()),
                    format!("--client-ca-file={}", pki.ca.cert.display()),
                    "--authorization-mode=RBAC".into(),
                    "--allow-privileged=true".into(),
                    "--disable-admission-plugins=TaintNodesByCondition".into(),
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                    format!("--service-account-key-file={}", pki.service_account_public.display()),
                    format!("--service-account-signing-key-file={}", pki.service_account_key.display()),
                    format!("--cert-dir={}", cert_dir.display()),
                    "--profiling=false".into(),
                ]
            },
            |curl, p| curl.get(&format!("https://127.0.0.1:{}/readyz", p[0])).is_some_and(|(status, body)| status == 200 && body == "ok"),
        );
        self.server = format!("https://127.0.0.1:{}", ports[0]);
    }

    /// kube-controller-manager with `CONTROLLERS`, until healthy and the serviceaccount controller
    /// has made `default` in namespace `default`.
    fn start_controller_manager(&mut self, program: &Path, pki: &Pki) {
        let kubeconfig = self.kubeconfig.display().to_string();
        let default_account = format!("{}/api/v1/namespaces/default/serviceaccounts/default", self.server);
        self.launch(
            "kube-controller-manager",
            program,
            1,
            |p| {
                vec![
                    format!("--kubeconfig={kubeconfig}"),
                    format!("--authentication-kubeconfig={kubeconfig}"),
                    format!("--authorization-kubeconfig={kubeconfig}"),
                    format!("--controllers={CONTROLLERS}"),
                    "--leader-elect=false".into(),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={}", p[0]),
                    format!("--tls-cert-file={}", pki.serving.cert.display()),
                    format!("--tls-private-key-file={}", pki.serving.key.display()),
                    format!("--service-account-private-key-file={}", pki.service_account_key.display()),
                    format!("--root-ca-file={}", pki.ca.cert.display()),
                ]
            },
            |curl, p| {
                curl.get(&format!("https://127.0.0.1:{}/healthz", p[0])).is_some_and(|(status, body)| status == 200 && body == "ok")
                    && curl.get(&default_account).is_some_and(|(status, _)| status == 200)
            },
        );
    }

    /// kube-scheduler without leader election, until `/readyz` (which waits for its informers) says ok.
    fn start_scheduler(&mut self, program: &Path, pki: &Pki) {
        let kubeconfig = self.kubeconfig.display().to_string();
        let config = self.dir.path().join("kube-scheduler.yaml");
        let text = format!(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n\
             clientConnection:\n  kubeconfig: {}\nleaderElection:\n  leaderElect: false\n",
            yaml_str(&self.kubeconfig)
        );
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        self.launch(
            "kube-scheduler",
            program,
            1,
            |p| {
                vec![
                    format!("--config={}", config.display()),
                    format!("--authentication-kubeconfig={kubeconfig}"),
                    format!("--authorization-kubeconfig={kubeconfig}"),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={}", p[0]),
                    format!("--tls-cert-file={}", pki.serving.cert.display()),
                    format!("--tls-private-key-file={}", pki.serving.key.display()),
                ]
            },
            |curl, p| curl.get(&format!("https://127.0.0.1:{}/readyz", p[0])).is_some_and(|(status, body)| status == 200 && body == "ok"),
        );
    }

    /// kwok with our stages (`tests/support/kwok/`), then `nodes` created and waited for until Ready.
    fn start_kwok(&mut self, program: &Path, nodes: &[FakeNode]) {
        let began = Instant::now();
        let kubeconfig = self.kubeconfig.display().to_string();
        let stages = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/kwok");
        self.launch(
            "kwok",
            program,
            1,
            |p| {
                vec![
                    format!("--kubeconfig={kubeconfig}"),
                    format!("--manage-nodes-with-annotation-selector={}={}", FAKE_NODE_ANNOTATION.0, FAKE_NODE_ANNOTATION.1),
                    format!("--config={}", stages.join("nodes.yaml").display()),
                    format!("--config={}", stages.join("pods.yaml").display()),
                    format!("--server-address=127.0.0.1:{}", p[0]),
                ]
            },
            |curl, p| curl.get(&format!("http://127.0.0.1:{}/healthz", p[0])).is_some_and(|(status, body)| status == 200 && body == "ok"),
        );
        for node in nodes {
            self.create_node(node);
        }
        self.wait_nodes_ready(nodes);
        // kwok's time includes its nodes becoming Ready.
        if let Some(last) = self.startup.last_mut() {
            last.1 = began.elapsed();
        }
    }

    /// The admin kubeconfig (system:masters client certificate, private CA), for `KUBECONFIG`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The private CA's certificate (PEM), which signed the serving and client certificates.
    pub fn ca_cert(&self) -> &Path {
        &self.curl.ca
    }

    /// A kube client as the admin, from `kubeconfig()`.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap_or_else(|e| panic!("read {}: {e}", self.kubeconfig.display()));
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("load {}: {e}", self.kubeconfig.display()));
        kube::Client::try_from(config).unwrap_or_else(|e| panic!("a kube client for {}: {e}", self.server))
    }

    /// How long each step of `start` took: certificates, etcd, kube-apiserver, …, kwok (nodes Ready included).
    pub fn startup(&self) -> &[(&'static str, Duration)] {
        &self.startup
    }

    /// The last lines of every component's log, for failure messages.
    pub fn log_tails(&self) -> String {
        self.processes.iter().map(|p| format!("--- {} ({}):\n{}\n", p.name, p.log.display(), tail(&p.log, TAIL_LINES))).collect()
    }

    /// Polls `check` until it gives a value; after `WAIT_TIMEOUT` panics naming `what`, with the logs' tails.
    pub async fn eventually<T>(&self, what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
        self.eventually_within(what, WAIT_TIMEOUT, check).await
    }

    /// [`Self::eventually`] with a timeout of its own (for waits that include a build).
    pub async fn eventually_within<T>(&self, what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if Instant::now() > deadline {
                panic!("{what}: still not so after {timeout:?}; the control plane's logs end:\n{}", self.log_tails());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `ports` fresh loopback ports, distinct from the ones this control plane already uses.
    fn fresh_ports(&mut self, n: usize) -> Vec<u16> {
        let mut ports = Vec::with_capacity(n);
        while ports.len() < n {
            let port = free_port();
            if !self.ports.contains(&port) {
                self.ports.push(port);
                ports.push(port);
            }
        }
        ports
    }

    /// Starts `program` with `args` for fresh ports and polls `ready` until it holds; a port taken
    /// by someone else meanwhile means another try on other ports. Returns the ports.
    fn launch(
        &mut self,
        name: &'static str,
        program: &Path,
        ports: usize,
        args: impl Fn(&[u16]) -> Vec<String>,
        ready: impl Fn(&Curl, &[u16]) -> bool,
    ) -> Vec<u16> {
        const ATTEMPTS: usize = 3;
        let began = Instant::now();
        let log = self.dir.path().join(format!("{name}.log"));
        for attempt in 1..=ATTEMPTS {
            let ports = self.fresh_ports(ports);
            self.spawn(name, program, &args(&ports), &log);
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                let process = self.processes.last_mut().expect("just spawned");
                let exited = process.child.try_wait().unwrap_or_else(|e| panic!("poll {name}: {e}"));
                if let Some(status) = exited {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("address already in use") && attempt < ATTEMPTS {
                        self.processes.pop();
                        break;
                    }
                    panic!("{name} exited during start-up ({status}); last lines of {}:\n{}", log.display(), tail(&log, 40));
                }
                if ready(&self.curl, &ports) {
                    self.startup.push((name, began.elapsed()));
                    return ports;
                }
                if Instant::now() > deadline {
                    // Drop kills what started.
                    panic!("{name} was not ready within {READY_TIMEOUT:?}; last lines of {}:\n{}", log.display(), tail(&log, 40));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        unreachable!("every attempt returns, retries or panics")
    }

    /// Spawns `program args` under `setpriv --pdeathsig KILL`, output to `log`, and records it.
    fn spawn(&mut self, name: &'static str, program: &Path, args: &[String], log: &Path) {
        let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(program).args(args);
        // Only our flags: no KUBECONFIG, and none of etcd's ETCD_* flag variables.
        cmd.env_remove("KUBECONFIG");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd.stdin(Stdio::null()).stdout(file.try_clone().expect("clone a log handle")).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} under setpriv (util-linux): {e}"));
        self.processes.push(Process { name, child, log: log.to_path_buf() });
    }

    /// Creates a fake node with its status; if the API dropped the status, sets it through `/status`.
    fn create_node(&self, node: &FakeNode) {
        let manifest = node.manifest();
        let url = format!("{}/api/v1/nodes", self.server);
        let created = match self.curl.send("POST", &url, &manifest) {
            Some((201, body)) => serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("create Node {}: {e}: {body}", node.name)),
            other => panic!("create Node {}: {other:?}", node.name),
        };
        if created["status"]["nodeInfo"]["kernelVersion"] != json!(node.kernel_version) {
            let status_url = format!("{url}/{}/status", node.name);
            let patch = json!({"status": manifest["status"]});
            let answer = self.curl.request("PATCH", &status_url, Some(("application/merge-patch+json", &patch)));
            assert!(matches!(answer, Some((200, _))), "set the status of Node {}: {answer:?}", node.name);
        }
    }

    /// Waits until kwok reports every node Ready.
    fn wait_nodes_ready(&self, nodes: &[FakeNode]) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for node in nodes {
            let url = format!("{}/api/v1/nodes/{}", self.server, node.name);
            loop {
                let ready = self
                    .curl
                    .get(&url)
                    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                    .is_some_and(|n| n["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")));
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    panic!("kwok did not make Node {} Ready within {READY_TIMEOUT:?}\n{}", node.name, self.log_tails());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Everything is thrown away with the temp dir: no graceful shutdown needed.
        for p in self.processes.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// The control plane's keys and certificates.
struct Pki {
    ca: Ca,
    /// kube-apiserver's (also kube-controller-manager's and kube-scheduler's) serving certificate.
    serving: Leaf,
    /// The admin: O=system:masters.
    admin: Leaf,
    service_account_key: PathBuf,
    service_account_public: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = Ca::new(dir, "kubernetes");
        let sans = ["IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc", &format!("IP:{SERVICE_IP}")];
        let serving = ca.issue_for("apiserver", "/CN=kube-apiserver", Usage::Server, &sans);
        let admin = ca.issue_for("admin", "/O=system:masters/CN=kforge-test-admin", Usage::Client, &[]);
        let (service_account_key, service_account_public) = rsa_key_pair(dir, "service-account");
        Pki { ca, serving, admin, service_account_key, service_account_public }
    }
}

/// Writes a kubeconfig for `server` as the admin (files referenced by absolute path).
fn write_kubeconfig(path: &Path, server: &str, ca: &Path, admin: &Leaf) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kforge-test\n  cluster:\n    server: {server}\n    certificate-authority: {}\n\
         users:\n- name: kforge-test-admin\n  user:\n    client-certificate: {}\n    client-key: {}\n\
         contexts:\n- name: kforge-test\n  context:\n    cluster: kforge-test\n    user: kforge-test-admin\n    namespace: default\n\
         current-context: kforge-test\n",
        yaml_str(ca),
        yaml_str(&admin.cert),
        yaml_str(&admin.key),
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A path as a double-quoted YAML (JSON) string.
fn yaml_str(path: &Path) -> String {
    Value::from(path.to_string_lossy().into_owned()).to_string()
}

/// curl with the admin's client certificate, trusting the private CA.
#[derive(Debug, Clone)]
struct Curl {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Curl {
    /// `GET url`: Some((status, body)), None if nothing answers.
    fn get(&self, url: &str) -> Option<(u16, String)> {
        self.request("GET", url, None)
    }

    /// `method url` with a JSON body.
    fn send(&self, method: &str, url: &str, body: &Value) -> Option<(u16, String)> {
        self.request(method, url, Some(("application/json", body)))
    }

    /// `method url` with an optional (content type, body).
    fn request(&self, method: &str, url: &str, body: Option<(&str, &Value)>) -> Option<(u16, String)> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--noproxy", "*", "--max-time", "10", "-w", "\n%{http_code}", "-X", method]);
        cmd.arg("--cacert").arg(&self.ca).arg("--cert").arg(&self.cert).arg("--key").arg(&self.key);
        if let Some((content_type, body)) = body {
            cmd.args(["-H", &format!("Content-Type: {content_type}"), "--data-binary", &body.to_string()]);
        }
        let out = cmd.arg(url).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run curl: {e}"));
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, status) = text.rsplit_once('\n')?;
        Some((status.trim().parse().ok()?, body.to_string()))
    }
}
