//! A protocol-level BuildKit double, and the builder driven against it.
//!
//! The double is a tonic server of BuildKit's `Control` service on a unix socket, run on a runtime
//! of its own (so that "the daemon died" is one `shutdown_background`). Like buildkitd, it takes the
//! bytes of a `Control.Session` stream as an HTTP/2 connection on which it is the gRPC *client*, and
//! calls `Health/Check`, `Secrets/GetSecret` and `Auth/Credentials` through it during the Solve. A
//! [`Script`] says what it streams on `Status` and how its `Solve` ends; [`Seen`] records what the
//! client sent and what the session answered.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use hyper_util::rt::TokioIo;
use kforge_builder::{BuildHandle, BuildSpec, Builder, BuilderOptions, Connection, Endpoint, Error, Event, FailureKind, InputFile, Output, solve};
use kforge_proto::buildkit::moby::buildkit::secrets::v1::GetSecretRequest;
use kforge_proto::buildkit::moby::buildkit::secrets::v1::secrets_client::SecretsClient;
use kforge_proto::buildkit::moby::buildkit::v1::control_server::{Control, ControlServer};
use kforge_proto::buildkit::moby::buildkit::v1::{
    BytesMessage, DiskUsageRequest, DiskUsageResponse, InfoRequest, InfoResponse, ListWorkersRequest, ListWorkersResponse, PruneRequest, SolveRequest,
    SolveResponse, StatusRequest, StatusResponse, UsageRecord, Vertex, VertexLog,
};
use kforge_proto::buildkit::moby::filesync::v1::CredentialsRequest;
use kforge_proto::buildkit::moby::filesync::v1::auth_client::AuthClient;
use kforge_proto::buildkit::pb;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::sync::mpsc::unbounded_channel;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

const IMAGE: &str = "reg.example:5000/mods/hello:6.1";
const DIGEST: &str = "sha256:3b1a5e0c2f7d9e8a6b4c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
const DOCKERFILE: &str = "FROM base\nARG KERNEL_FULL_VERSION\nRUN --mount=type=secret,id=token make\n";
const SECRET: &[u8] = b"s3cr3t-token-value";
const REGISTRY: &str = "reg.example:5000";
const USER: &str = "kforge-user";
const PASSWORD: &str = "kforge-password-value";
const FROM_STEP: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const RUN_STEP: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
/// How long the double waits for the session a Solve names before failing as BuildKit does.
const SESSION_WAIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// The double
// ---------------------------------------------------------------------------------------------

/// How the double's Solve ends.
#[derive(Clone)]
enum Answer {
    /// The image was pushed with this manifest digest.
    Digest(&'static str),
    /// The build fails with this status.
    Fail(Status),
    /// The session stream is accepted but never attached: Solve fails as BuildKit does.
    NoSession,
    /// Solve never returns.
    Pending,
}

/// How the Status stream ends once its batches are sent.
#[derive(Clone, Copy, Debug)]
enum StatusEnd {
    /// Closes normally.
    Close,
    /// Ends with an error item (the stream breaks mid-build).
    Error,
    /// Stays open without sending anything.
    Hang,
}

/// What the double does with a build.
#[derive(Clone)]
struct Script {
    /// Secrets it asks the session for (by id) during the Solve.
    secrets: Vec<String>,
    /// Registries it asks the session credentials for.
    hosts: Vec<String>,
    /// Batches streamed on Status.
    status: Vec<StatusResponse>,
    status_end: StatusEnd,
    answer: Answer,
    /// If set, Solve waits for a permit before answering.
    gate: Option<Arc<Notify>>,
}

impl Default for Script {
    /// A successful build: one cached step, one `RUN` step with a log line.
    fn default() -> Self {
        Script {
            secrets: vec!["token".into()],
            hosts: vec![REGISTRY.into()],
            status: vec![
                StatusResponse {
                    vertexes: vec![
                        Vertex { cached: true, started: at(0), completed: at(0), ..vertex(FROM_STEP, "[1/2] FROM base") },
                        Vertex { started: at(1), ..vertex(RUN_STEP, "[2/2] RUN make") },
                    ],
                    ..Default::default()
                },
                StatusResponse { logs: vec![log(RUN_STEP, "make: built hello.ko\n")], ..Default::default() },
                StatusResponse { vertexes: vec![Vertex { started: at(1), completed: at(4), ..vertex(RUN_STEP, "[2/2] RUN make") }], ..Default::default() },
            ],
            status_end: StatusEnd::Close,
            answer: Answer::Digest(DIGEST),
            gate: None,
        }
    }
}

/// Metadata of a Session stream.
#[derive(Clone, Debug)]
struct SessionMeta {
    uuid: String,
    name: String,
    methods: Vec<String>,
    /// Every metadata value, to check that no secret travels there.
    values: Vec<String>,
}

/// What the double saw.
#[derive(Default)]
struct Seen {
    sessions: Vec<SessionMeta>,
    /// Session streams whose client side ended.
    sessions_closed: usize,
    /// HTTP/2 connections through each session, by session id.
    tunnels: HashMap<String, Channel>,
    solves: Vec<SolveRequest>,
    /// Build references whose Status batches were all sent.
    status_done: HashSet<String>,
    /// Health/Check answers through the session.
    health: Vec<i32>,
    /// GetSecret answers through the session: id and data (or the error).
    secrets: Vec<(String, Result<Vec<u8>, String>)>,
    /// Credentials answers: host and (username, secret) (or the error).
    credentials: Vec<(String, Result<Credentials, String>)>,
    /// Solve handlers dropped before they answered (the client cancelled the call).
    cancelled: usize,
}

/// Username and secret.
type Credentials = (String, String);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
struct Double {
    script: Script,
    seen: Arc<Mutex<Seen>>,
}

/// Counts a Solve handler dropped before it answered.
struct CancelGuard {
    seen: Arc<Mutex<Seen>>,
    armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.seen).cancelled += 1;
        }
    }
}

impl Double {
    /// What buildkitd does during a solve: find the session, use it, stream, answer.
    async fn solve(&self, req: &SolveRequest) -> Result<SolveResponse, Status> {
        let no_session = || Status::unknown(format!("no active session for {}: context deadline exceeded", req.session));
        let tunnel = eventually(SESSION_WAIT, || lock(&self.seen).tunnels.get(&req.session).cloned()).await.ok_or_else(no_session)?;

        let health =
            tonic_health::pb::health_client::HealthClient::new(tunnel.clone()).check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?;
        lock(&self.seen).health.push(health.into_inner().status);
        for id in &self.script.secrets {
            let got = SecretsClient::new(tunnel.clone()).get_secret(GetSecretRequest { id: id.clone(), ..Default::default() }).await;
            lock(&self.seen).secrets.push((id.clone(), got.map(|r| r.into_inner().data).map_err(|s| s.to_string())));
        }
        for host in &self.script.hosts {
            let got = AuthClient::new(tunnel.clone()).credentials(CredentialsRequest { host: host.clone() }).await;
            let got = got.map(|r| r.into_inner()).map(|c| (c.username, c.secret)).map_err(|s| s.to_string());
            lock(&self.seen).credentials.push((host.clone(), got));
        }

        // Answer after the status batches are out, as buildkitd does (the build ends, then Solve returns).
        let _ = eventually(Duration::from_secs(5), || lock(&self.seen).status_done.contains(&req.r#ref).then_some(())).await;
        if let Some(gate) = &self.script.gate {
            gate.notified().await;
        }
        match &self.script.answer {
            Answer::Digest(digest) => {
                let name = req.exporter_attrs_deprecated.get("name").cloned().unwrap_or_default();
                let response = HashMap::from([("containerimage.digest".to_string(), digest.to_string()), ("image.name".to_string(), name)]);
                Ok(SolveResponse { exporter_response: response })
            }
            Answer::Fail(status) => Err(status.clone()),
            Answer::NoSession => Err(no_session()),
            Answer::Pending => std::future::pending().await,
        }
    }
}

#[tonic::async_trait]
impl Control for Double {
    type PruneStream = BoxStream<'static, Result<UsageRecord, Status>>;
    type StatusStream = BoxStream<'static, Result<StatusResponse, Status>>;
    type SessionStream = BoxStream<'static, Result<BytesMessage, Status>>;

    async fn solve(&self, req: Request<SolveRequest>) -> Result<Response<SolveResponse>, Status> {
        let req = req.into_inner();
        lock(&self.seen).solves.push(req.clone());
        let mut guard = CancelGuard { seen: self.seen.clone(), armed: true };
        let result = Double::solve(self, &req).await;
        guard.armed = false;
        result.map(Response::new)
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<Self::StatusStream>, Status> {
        let reference = req.into_inner().r#ref;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (batches, end, seen) = (self.script.status.clone(), self.script.status_end, self.seen.clone());
        tokio::spawn(async move {
            for batch in batches {
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
            lock(&seen).status_done.insert(reference);
            match end {
                StatusEnd::Close => {}
                StatusEnd::Error => {
                    let _ = tx.send(Err(Status::internal("status stream broke"))).await;
                }
                StatusEnd::Hang => tx.closed().await,
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn session(&self, req: Request<Streaming<BytesMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let md = req.metadata();
        let text = |v: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>| v.to_str().unwrap_or_default().to_string();
        let one = |k: &str| md.get(k).map(text).unwrap_or_default();
        let meta = SessionMeta {
            uuid: one("x-docker-expose-session-uuid"),
            name: one("x-docker-expose-session-name"),
            methods: md.get_all("x-docker-expose-session-grpc-method").iter().map(text).collect(),
            values: md.iter().filter_map(|kv| if let tonic::metadata::KeyAndValueRef::Ascii(_, v) = kv { Some(text(v)) } else { None }).collect(),
        };
        lock(&self.seen).sessions.push(meta.clone());
        let mut inbound = req.into_inner();

        if matches!(self.script.answer, Answer::NoSession) {
            // Accepted, but never attached to the session manager.
            tokio::spawn(async move { while let Some(Ok(_)) = inbound.next().await {} });
            return Ok(Response::new(futures_util::stream::pending().boxed()));
        }

        // The stream's bytes are an HTTP/2 connection on which the daemon is the client.
        let (ours, wire) = tokio::io::duplex(1 << 16);
        let (mut wire_read, mut wire_write) = tokio::io::split(wire);
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                if wire_write.write_all(&msg.data).await.is_err() {
                    break;
                }
            }
            let _ = wire_write.shutdown().await;
            lock(&seen).sessions_closed += 1;
        });
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            while let Ok(n @ 1..) = wire_read.read(&mut buf).await {
                if tx.send(Ok(BytesMessage { data: Bytes::copy_from_slice(&buf[..n]) })).await.is_err() {
                    break;
                }
            }
        });
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let mut io = Some(ours);
            let connector = tower::service_fn(move |_| {
                let io = io.take();
                async move { io.map(TokioIo::new).ok_or_else(|| std::io::Error::other("a session carries one connection")) }
            });
            match tonic::transport::Endpoint::from_static("http://session").connect_with_connector(connector).await {
                Ok(channel) => {
                    lock(&seen).tunnels.insert(meta.uuid, channel);
                }
                Err(e) => eprintln!("double: HTTP/2 through session {} failed: {e}", meta.uuid),
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn disk_usage(&self, _: Request<DiskUsageRequest>) -> Result<Response<DiskUsageResponse>, Status> {
        Err(Status::unimplemented("not in the double"))
    }

    async fn prune(&self, _: Request<PruneRequest>) -> Result<Response<Self::PruneStream>, Status> {
        Err(Status::unimplemented("not in the double"))
    }

    async fn list_workers(&self, _: Request<ListWorkersRequest>) -> Result<Response<ListWorkersResponse>, Status> {
        Err(Status::unimplemented("not in the double"))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Err(Status::unimplemented("not in the double"))
    }
}

/// A running double: its socket, what it saw, and its runtime (shut down to "kill the daemon").
struct Buildkitd {
    runtime: Option<tokio::runtime::Runtime>,
    socket: PathBuf,
    seen: Arc<Mutex<Seen>>,
    _dir: tempfile::TempDir,
}

impl Buildkitd {
    fn start(script: Script) -> Buildkitd {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("buildkitd.sock");
        // Bound before start() returns: clients can connect at once.
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind the double's socket");
        listener.set_nonblocking(true).expect("non-blocking socket");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("the double's runtime");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let double = Double { script, seen: seen.clone() };
        runtime.spawn(async move {
            let listener = tokio::net::UnixListener::from_std(listener).expect("tokio listener");
            let served =
                tonic::transport::Server::builder().add_service(ControlServer::new(double)).serve_with_incoming(UnixListenerStream::new(listener)).await;
            if let Err(e) = served {
                eprintln!("double: server failed: {e}");
            }
        });
        Buildkitd { runtime: Some(runtime), socket, seen, _dir: dir }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Unix { socket: self.socket.clone() }
    }

    async fn daemon(&self) -> Connection {
        Connection::connect(&self.endpoint()).await.map_err(|e| e.to_string()).expect("connects to the double")
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        lock(&self.seen)
    }

    /// The daemon dies: every task, connection and the listener go away at once.
    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Waits until `f` holds of what the double saw.
    async fn wait_for(&self, what: &str, f: impl Fn(&Seen) -> bool) {
        eventually(Duration::from_secs(5), || f(&self.seen()).then_some(())).await.unwrap_or_else(|| panic!("the double never saw {what}"));
    }
}

impl Drop for Buildkitd {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Polls `f` until it gives a value or `timeout` passes.
async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: 1_700_000_000 + seconds, nanos: 0 })
}

fn vertex(digest: &str, name: &str) -> Vertex {
    Vertex { digest: digest.into(), name: name.into(), ..Default::default() }
}

fn log(digest: &str, text: &str) -> VertexLog {
    VertexLog { vertex: digest.into(), timestamp: at(2), stream: 1, msg: text.as_bytes().to_vec() }
}

fn spec() -> BuildSpec {
    let credentials: std::collections::BTreeMap<String, (String, String)> = [(REGISTRY.to_string(), (USER.to_string(), PASSWORD.to_string()))].into();
    BuildSpec {
        image: IMAGE.into(),
        dockerfile: DOCKERFILE.into(),
        context: vec![InputFile::new("hello.c", "int hello;\n")],
        build_args: [("KERNEL_FULL_VERSION".to_string(), "6.1.0-kforge".to_string())].into_iter().collect(),
        secrets: [("token".to_string(), SECRET.to_vec())].into_iter().collect(),
        credentials: Arc::new(credentials),
        ..Default::default()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The files a definition creates, as (path, content).
fn mkfiles(def: &pb::Definition) -> Vec<(String, Vec<u8>)> {
    def.def
        .iter()
        .map(|bytes| pb::Op::decode(bytes.as_slice()).expect("an op decodes"))
        .filter_map(|op| match op.op {
            Some(pb::op::Op::File(f)) => Some(f.actions),
            _ => None,
        })
        .flatten()
        .filter_map(|a| match a.action {
            Some(pb::file_action::Action::Mkfile(m)) => Some((m.path, m.data)),
            _ => None,
        })
        .collect()
}

/// Every event of a handle, until the build ends.
async fn drain(handle: &mut BuildHandle) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(e) = handle.next_event().await {
        events.push(e);
    }
    events
}

fn has_step(events: &[Event], name: &str, done: bool) -> bool {
    events.iter().any(|e| matches!(e, Event::Step(s) if s.name == name && s.completed == done))
}

/// A build pushed to its tag against a double with `script`: the digest, the events and the double.
async fn build_with(script: Script) -> (Result<String, Error>, Vec<Event>, Buildkitd) {
    let double = Buildkitd::start(script);
    let daemon = double.daemon().await;
    let (tx, mut rx) = unbounded_channel();
    let result = solve(&daemon, &spec(), &Output::Push, &tx).await.map(Option::unwrap_or_default);
    let events = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    (result, events, double)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_build_speaks_buildkits_protocol() {
    let (result, events, double) = build_with(Script::default()).await;
    let out = result.expect("the build succeeds");
    assert_eq!(out, DIGEST);
    double.wait_for("the session closed after the build", |s| s.sessions_closed == 1).await;

    let seen = double.seen();
    assert_eq!((seen.sessions.len(), seen.solves.len()), (1, 1), "one session, one solve");
    let session = &seen.sessions[0];
    let req = &seen.solves[0];
    assert!(session.uuid.starts_with("kforge-session-"), "{session:?}");
    assert_eq!(session.name, "kforge");
    assert_eq!(req.session, session.uuid, "Solve names the session announced in its metadata");
    for m in ["/grpc.health.v1.Health/Check", "/moby.filesync.v1.Auth/Credentials", "/moby.buildkit.secrets.v1.Secrets/GetSecret"] {
        assert!(session.methods.iter().any(|x| x == m), "{m} not announced: {:?}", session.methods);
    }

    assert!(req.r#ref.starts_with("kforge-build-"), "{}", req.r#ref);
    assert_eq!(req.frontend, "dockerfile.v0");
    let attr = |k: &str| req.frontend_attrs.get(k).map(String::as_str);
    assert_eq!(attr("build-arg:KERNEL_FULL_VERSION"), Some("6.1.0-kforge"));
    assert_eq!(attr("filename"), Some("Dockerfile"));
    assert_eq!(attr("force-network-mode"), Some("none"));
    // Secrets and passwords travel only through the session.
    let wire = req.encode_to_vec();
    for (what, value) in [("secret", SECRET), ("password", PASSWORD.as_bytes())] {
        assert!(!contains(&wire, value), "the {what} is in the SolveRequest");
        assert!(!session.values.iter().any(|v| contains(v.as_bytes(), value)), "the {what} is in the session metadata");
    }

    let input = |k: &str| req.frontend_inputs.get(k).unwrap_or_else(|| panic!("no frontend input {k}"));
    assert_eq!(mkfiles(input("dockerfile")), vec![("/Dockerfile".to_string(), DOCKERFILE.as_bytes().to_vec())]);
    assert_eq!(mkfiles(input("context")), vec![("/hello.c".to_string(), b"int hello;\n".to_vec())]);

    assert_eq!(req.exporter_deprecated, "image");
    assert_eq!(req.exporter_attrs_deprecated.get("name").map(String::as_str), Some(IMAGE));
    assert_eq!(req.exporter_attrs_deprecated.get("push").map(String::as_str), Some("true"));
    assert_eq!(req.exporters.len(), 1, "{:?}", req.exporters);
    assert_eq!(req.exporters[0].r#type, "image");
    assert_eq!(req.exporters[0].attrs, req.exporter_attrs_deprecated, "the exporter list and the deprecated fields agree");

    // What BuildKit got back through the session.
    assert_eq!(seen.health, vec![tonic_health::pb::health_check_response::ServingStatus::Serving as i32]);
    assert_eq!(seen.secrets, vec![("token".to_string(), Ok(SECRET.to_vec()))]);
    assert_eq!(seen.credentials, vec![(REGISTRY.to_string(), Ok((USER.to_string(), PASSWORD.to_string())))]);

    // The status stream, as events.
    assert!(events.iter().any(|e| matches!(e, Event::Step(s) if s.name == "[1/2] FROM base" && s.cached)), "{events:?}");
    assert!(has_step(&events, "[2/2] RUN make", false), "the started step: {events:?}");
    assert!(
        events.iter().any(|e| matches!(e, Event::Step(s) if s.id == RUN_STEP && s.completed && s.duration == Some(Duration::from_secs(3)))),
        "the completed step with its duration: {events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Log { step, data, stream: 1 } if step == RUN_STEP && data == b"make: built hello.ko\n")), "{events:?}");
}

#[tokio::test]
async fn large_error_details_keep_the_message() {
    let message = format!(
        "failed to solve: failed to compute cache key: {}end of trace",
        (0..130).map(|i| format!("frame {i:03} github.com/moby/buildkit/solver.(*edge).execOp \"é\"\n")).collect::<String>()
    );
    assert!(message.len() > 8000);
    let details = Bytes::from((0..8192u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let status = Status::with_details(tonic::Code::Unknown, message.clone(), details);
    let (result, _, _double) = build_with(Script { answer: Answer::Fail(status), ..Default::default() }).await;
    match result {
        Err(Error::Build { image, failure }) => {
            assert_eq!(image, IMAGE);
            assert_ne!(failure.kind, FailureKind::Interrupted, "{failure}");
            let head: String = failure.message.chars().take(160).collect();
            assert!(failure.message == message, "the message was altered ({} bytes): {head:?}", failure.message.len());
        }
        other => panic!("want Error::Build, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_run_names_the_step_and_keeps_its_last_lines() {
    const FAILED: &str = "process \"/bin/sh -c make\" did not complete successfully: exit code: 2";
    let lines: Vec<String> = (1..=20).map(|i| format!("cc: hello.c:{i}: error {i}")).collect();
    let chunk = |r: std::ops::Range<usize>| lines[r].iter().map(|l| format!("{l}\n")).collect::<String>();
    let script = Script {
        status: vec![
            StatusResponse {
                vertexes: vec![
                    Vertex { cached: true, completed: at(0), ..vertex(FROM_STEP, "[1/3] FROM base") },
                    Vertex { started: at(1), ..vertex(RUN_STEP, "[2/3] RUN make") },
                ],
                ..Default::default()
            },
            StatusResponse { logs: vec![log(RUN_STEP, &chunk(0..7)), log(RUN_STEP, &chunk(7..20))], ..Default::default() },
            StatusResponse {
                vertexes: vec![Vertex { started: at(1), completed: at(2), error: FAILED.into(), ..vertex(RUN_STEP, "[2/3] RUN make") }],
                ..Default::default()
            },
        ],
        answer: Answer::Fail(Status::unknown(FAILED)),
        ..Default::default()
    };
    let (result, events, _double) = build_with(script).await;
    assert!(events.iter().any(|e| matches!(e, Event::Step(s) if s.error.as_deref() == Some(FAILED))), "{events:?}");
    let e = result.expect_err("the build fails");
    let text = e.to_string();
    let Error::Build { failure, .. } = e else { panic!("want Error::Build, got {text}") };
    assert_eq!(failure.kind, FailureKind::Run);
    assert_eq!(failure.message, FAILED);
    assert_eq!(failure.step.as_deref(), Some("[2/3] RUN make"));
    assert_eq!(failure.logs, lines[5..].to_vec(), "the last 15 lines");
    assert!(text.contains("step [2/3] RUN make failed") && text.contains("error 20") && !text.contains("error 5\n"), "{text}");
}

#[tokio::test]
async fn a_broken_or_stuck_status_stream_does_not_fail_the_build() {
    for end in [StatusEnd::Error, StatusEnd::Hang] {
        let first = Script::default().status[0].clone();
        let started = Instant::now();
        let (result, events, _double) = build_with(Script { status: vec![first], status_end: end, ..Default::default() }).await;
        assert_eq!(result.map_err(|e| e.to_string()).expect("the build succeeds"), DIGEST, "{end:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{end:?}: took {:?}", started.elapsed());
        assert!(has_step(&events, "[2/2] RUN make", false), "{end:?}: events before the break are kept: {events:?}");
    }
}

#[tokio::test]
async fn a_session_the_daemon_never_attached_fails_clearly() {
    let (result, _, double) = build_with(Script { answer: Answer::NoSession, ..Default::default() }).await;
    let uuid = double.seen().sessions.first().expect("a session was offered").uuid.clone();
    let want = format!("no active session for {uuid}: context deadline exceeded");
    let e = result.expect_err("the build fails");
    let text = e.to_string();
    let Error::Build { failure, .. } = e else { panic!("want Error::Build, got {text}") };
    assert!(failure.message.starts_with(&want), "BuildKit's words come first: {}", failure.message);
    assert!(failure.message.contains("proxy"), "with a hint: {}", failure.message);
    assert!(text.contains(&want), "{text}");
    assert!(double.seen().secrets.is_empty(), "no session, so no secret was fetched");
}

#[tokio::test]
async fn a_daemon_that_dies_mid_build_ends_the_build_promptly() {
    let mut double = Buildkitd::start(Script { answer: Answer::Pending, ..Default::default() });
    let daemon = double.daemon().await;
    let (tx, _rx) = unbounded_channel();
    let task = tokio::spawn(async move { solve(&daemon, &spec(), &Output::Push, &tx).await });
    double.wait_for("the solve", |s| s.solves.len() == 1 && s.secrets.len() == 1).await;
    double.kill();
    let result = tokio::time::timeout(Duration::from_secs(10), task).await.expect("the build returns within 10 s").expect("the build task");
    let e = result.expect_err("the build fails");
    let interrupted = matches!(&e, Error::Build { failure, .. } if failure.kind == FailureKind::Interrupted);
    assert!(interrupted || matches!(e, Error::Unavailable { .. }), "{e:?}");
}

#[tokio::test]
async fn dropping_the_last_handle_cancels_the_solve() {
    let double = Buildkitd::start(Script { answer: Answer::Pending, ..Default::default() });
    let builder = Builder::new(double.daemon().await, BuilderOptions::default());
    let handle = builder.start(spec(), Output::Push).expect("starts");
    double.wait_for("the solve", |s| s.solves.len() == 1 && s.credentials.len() == 1).await;
    assert_eq!(double.seen().cancelled, 0);
    drop(handle);
    double.wait_for("the Solve call cancelled", |s| s.cancelled == 1).await;
    double.wait_for("the session closed", |s| s.sessions_closed == 1).await;
}

#[tokio::test]
async fn identical_concurrent_builds_share_one_solve() {
    let gate = Arc::new(Notify::new());
    let double = Buildkitd::start(Script { gate: Some(gate.clone()), ..Default::default() });
    let builder = Builder::new(double.daemon().await, BuilderOptions::default());
    let mut first = builder.start(spec(), Output::Push).expect("first starts");
    let mut second = builder.start(spec(), Output::Push).expect("second starts");
    assert!(!first.joined());
    assert!(second.joined(), "the identical request joins the running build");
    double.wait_for("the solve", |s| s.solves.len() == 1).await;
    gate.notify_one();

    let (a_events, b_events) = tokio::join!(drain(&mut first), drain(&mut second));
    let (a, b) = tokio::join!(first.finish(), second.finish());
    let a = a.expect("first succeeds");
    assert_eq!(a.as_deref(), Some(DIGEST));
    assert_eq!(b.expect("second succeeds"), a, "both get the same output");
    for events in [&a_events, &b_events] {
        assert!(has_step(events, "[2/2] RUN make", true), "{events:?}");
    }
    let counts = {
        let seen = double.seen();
        (seen.solves.len(), seen.sessions.len())
    };
    assert_eq!(counts, (1, 1), "one solve, one session");

    // A finished build is not joined: the same request builds again.
    let third = builder.start(spec(), Output::Push).expect("third starts");
    assert!(!third.joined());
}

#[tokio::test]
async fn a_build_past_its_deadline_is_cancelled() {
    let double = Buildkitd::start(Script { answer: Answer::Pending, ..Default::default() });
    let builder = Builder::new(double.daemon().await, BuilderOptions { deadline: Duration::from_secs(1) });
    let started = Instant::now();
    let handle = builder.start(spec(), Output::Push).expect("starts");
    let e = tokio::time::timeout(Duration::from_secs(10), handle.finish()).await.expect("returns promptly").expect_err("fails");
    assert!(started.elapsed() >= Duration::from_secs(1) && started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    match &e {
        Error::Shared(inner) => assert!(matches!(inner.as_ref(), Error::Deadline { image, seconds: 1 } if image == IMAGE), "{inner:?}"),
        other => panic!("want a shared Error::Deadline, got {other:?}"),
    }
    assert!(e.to_string().contains("did not finish within 1 s"), "{e}");
    double.wait_for("the Solve call cancelled", |s| s.cancelled == 1).await;
}

/// (An absent socket is covered in endpoint.rs; this is a socket file nobody listens on.)
#[tokio::test]
async fn a_stale_socket_is_unavailable_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let e = tokio::time::timeout(Duration::from_secs(15), Connection::connect(&Endpoint::Unix { socket: socket.clone() }))
        .await
        .expect("fails promptly")
        .err()
        .expect("cannot connect");
    assert!(matches!(&e, Error::Unavailable { endpoint, .. } if *endpoint == format!("unix://{}", socket.display())), "{e:?}");
    assert!(e.to_string().contains(&socket.display().to_string()), "{e}");
}
