//! One build through BuildKit: the Dockerfile frontend with the inputs as LLB, the session for
//! secrets and credentials, the status stream as events, and the push of the result.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use kforge_proto::buildkit::moby::buildkit::v1::{Exporter, SolveRequest, StatusRequest, StatusResponse};
use oci_client::Reference;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedSender;

use crate::credentials::{Anonymous, Credentials};
use crate::endpoint::{Connection, chain};
use crate::error::{BuildFailure, Error, FailureKind, Result};
use crate::events::{Event, Step};
use crate::llb::{self, InputFile};
use crate::session::SessionData;

/// Lines of a failing step's log kept for the error.
const LOG_TAIL: usize = 15;

/// What to build.
#[derive(Clone)]
pub struct BuildSpec {
    /// Target image (`registry/repo:tag`); the result is pushed there.
    pub image: String,
    /// Dockerfile text.
    pub dockerfile: String,
    /// Files of the build context (relative paths).
    pub context: Vec<InputFile>,
    /// Build arguments (`ARG`), including KMM's.
    pub build_args: BTreeMap<String, String>,
    /// Target stage.
    pub target: Option<String>,
    /// Build secrets by id, for `RUN --mount=type=secret,id=…`.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// Registry credentials, served through the session (base pulls, pushes).
    pub credentials: Arc<dyn Credentials>,
    /// Push to the target registry over plain HTTP.
    pub insecure_registry: bool,
    /// Give `RUN` steps network access (off by default: module builds need none).
    pub network: bool,
    /// Ignore BuildKit's cache.
    pub no_cache: bool,
    /// Labels added to the image config (`LABEL`), e.g. the hash of the build inputs.
    pub labels: BTreeMap<String, String>,
}

impl Default for BuildSpec {
    fn default() -> Self {
        BuildSpec {
            image: String::new(),
            dockerfile: String::new(),
            context: Vec::new(),
            build_args: BTreeMap::new(),
            target: None,
            secrets: BTreeMap::new(),
            credentials: Arc::new(Anonymous),
            insecure_registry: false,
            network: false,
            no_cache: false,
            labels: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for BuildSpec {
    /// Everything but the secrets' contents and the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildSpec")
            .field("image", &self.image)
            .field("dockerfile_bytes", &self.dockerfile.len())
            .field("context_files", &self.context.len())
            .field("build_args", &self.build_args)
            .field("target", &self.target)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("insecure_registry", &self.insecure_registry)
            .field("network", &self.network)
            .field("no_cache", &self.no_cache)
            .field("labels", &self.labels)
            .finish()
    }
}

impl BuildSpec {
    /// A hash over every input of the build (secrets included, by content): equal hashes mean the
    /// same build. Credentials and transport settings are not part of it. The encoding is explicit
    /// and versioned: each field a tag, a little-endian length and the bytes, in a fixed order.
    pub fn inputs_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"kforge build inputs v2\0");
        let mut field = |tag: &str, bytes: &[u8]| {
            h.update(tag.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field("image", self.image.as_bytes());
        field("dockerfile", self.dockerfile.as_bytes());
        let mut files: Vec<_> = self.context.iter().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        for f in files {
            field("file", f.path.as_bytes());
            field("mode", &f.mode.to_le_bytes());
            field("data", &f.data);
        }
        for (k, v) in &self.build_args {
            field("arg", k.as_bytes());
            field("value", v.as_bytes());
        }
        field("target", self.target.as_deref().unwrap_or("").as_bytes());
        for (k, v) in &self.secrets {
            field("secret", k.as_bytes());
            field("secret-data", &Sha256::digest(v));
        }
        field("network", &[self.network as u8, self.no_cache as u8]);
        for (k, v) in &self.labels {
            field("label", k.as_bytes());
            field("label-value", v.as_bytes());
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

/// The target, split and normalised (`registry/repo`, `tag`).
#[derive(Debug, Clone)]
pub struct Target {
    /// Registry host (`registry.example:5000`).
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// Tag (`latest` when none was given).
    pub tag: String,
}

impl Target {
    /// Parses `registry/repo[:tag]`; digests and `oci:` layouts are refused.
    pub fn parse(image: &str) -> Result<Target> {
        let bad = |reason: String| Error::Request(format!("target image {image:?}: {reason}"));
        if image.starts_with("oci:") {
            return Err(bad("builds push to a registry; oci: layouts are not a build target".into()));
        }
        let r: Reference = image.parse().map_err(|e: oci_client::ParseError| bad(e.to_string()))?;
        if r.digest().is_some() {
            return Err(bad("a build pushes to a tag; give registry/repo:tag, not a digest".into()));
        }
        Ok(Target { registry: r.registry().to_string(), repository: r.repository().to_string(), tag: r.tag().unwrap_or("latest").to_string() })
    }

    /// `registry/repo` as engines and BuildKit name it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repo:tag`.
    pub fn tagged(&self) -> String {
        format!("{}:{}", self.name(), self.tag)
    }
}

/// What the status stream has seen: names and last log lines per step, and which step failed.
#[derive(Default)]
struct Seen {
    names: HashMap<String, String>,
    logs: HashMap<String, VecDeque<String>>,
    failed: Option<String>,
    ended: bool,
}

fn to_time(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t.as_ref()?;
    let secs = u64::try_from(t.seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, t.nanos.clamp(0, 999_999_999) as u32))
}

/// Translates one status batch into events and records it.
fn translate(batch: StatusResponse, seen: &Mutex<Seen>, events: &UnboundedSender<Event>) {
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    for v in batch.vertexes {
        seen.names.insert(v.digest.clone(), v.name.clone());
        let error = (!v.error.is_empty()).then(|| v.error.clone());
        if error.is_some() && seen.failed.is_none() {
            seen.failed = Some(v.digest.clone());
        }
        let (started, completed) = (to_time(&v.started), to_time(&v.completed));
        let duration = match (started, completed) {
            (Some(s), Some(c)) => c.duration_since(s).ok(),
            _ => None,
        };
        let _ = events.send(Event::Step(Step {
            id: v.digest,
            name: v.name,
            cached: v.cached,
            started: started.is_some(),
            completed: completed.is_some(),
            duration,
            error,
        }));
    }
    for s in batch.statuses {
        let _ = events.send(Event::Progress { step: s.vertex, name: s.id, current: s.current, total: s.total, completed: s.completed.is_some() });
    }
    for l in batch.logs {
        let tail = seen.logs.entry(l.vertex.clone()).or_default();
        for line in String::from_utf8_lossy(&l.msg).lines() {
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
        let _ = events.send(Event::Log { step: l.vertex, stream: l.stream as i32, data: l.msg.to_vec() });
    }
    for w in batch.warnings {
        let _ = events.send(Event::Warning { step: w.vertex, message: String::from_utf8_lossy(&w.short).into_owned() });
    }
}

/// Aborts a spawned task when dropped (a cancelled build stops its helpers too).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where a solve's result goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// Pushed to the target tag.
    Push,
    /// Into the Docker engine's image store under this name, not pushed.
    Engine(String),
    /// Pushed to the target's repository by digest only: no tag points at it.
    PushByDigest,
}

/// Builds `spec` on `daemon` and delivers the result as `output` says; returns the pushed digest
/// (`None` for [`Output::Engine`]). Events go to `events` as they happen; dropping the future
/// cancels the solve.
pub async fn solve(daemon: &Connection, spec: &BuildSpec, output: &Output, events: &UnboundedSender<Event>) -> Result<Option<String>> {
    let target = Target::parse(&spec.image)?;
    if *output == Output::PushByDigest && daemon.endpoint().is_docker() {
        return Err(Error::Request("a Docker engine cannot push by digest; export to the engine instead".into()));
    }
    if spec.dockerfile.trim().is_empty() {
        return Err(Error::Request("the Dockerfile is empty".into()));
    }
    let mut context = Vec::with_capacity(spec.context.len());
    for f in &spec.context {
        let path = llb::clean_path(&f.path).ok_or_else(|| Error::Request(format!("context file {:?} is outside the context", f.path)))?;
        context.push(InputFile { path, ..f.clone() });
    }

    let session = daemon.open_session(SessionData { secrets: Arc::new(spec.secrets.clone()), credentials: spec.credentials.clone() }).await?;
    let reference = crate::unique_id("kforge-build");

    let mut frontend_attrs: HashMap<String, String> = spec.build_args.iter().map(|(k, v)| (format!("build-arg:{k}"), v.clone())).collect();
    frontend_attrs.insert("filename".into(), "Dockerfile".into());
    if let Some(t) = &spec.target {
        frontend_attrs.insert("target".into(), t.clone());
    }
    if spec.no_cache {
        frontend_attrs.insert("no-cache".into(), String::new());
    }
    if !spec.network {
        frontend_attrs.insert("force-network-mode".into(), "none".into());
    }
    for (k, v) in &spec.labels {
        frontend_attrs.insert(format!("label:{k}"), v.clone());
    }
    let (exporter, mut attrs) = match output {
        // The engine's BuildKit exports into the engine's image store; the engine pushes after.
        Output::Push if daemon.endpoint().is_docker() => ("moby", HashMap::from([("name".to_string(), target.tagged())])),
        Output::Engine(name) => ("moby", HashMap::from([("name".to_string(), name.clone())])),
        Output::Push => ("image", HashMap::from([("name".to_string(), target.tagged()), ("push".to_string(), "true".to_string())])),
        Output::PushByDigest => (
            "image",
            HashMap::from([("name".to_string(), target.name()), ("push".to_string(), "true".to_string()), ("push-by-digest".to_string(), "true".to_string())]),
        ),
    };
    if spec.insecure_registry && !daemon.endpoint().is_docker() {
        attrs.insert("registry.insecure".into(), "true".into());
    }
    let request = SolveRequest {
        r#ref: reference.clone(),
        session: session.id.clone(),
        frontend: "dockerfile.v0".into(),
        frontend_attrs,
        frontend_inputs: HashMap::from([
            ("dockerfile".to_string(), llb::files_definition(&[InputFile::new("Dockerfile", spec.dockerfile.as_bytes())])),
            ("context".to_string(), llb::files_definition(&context)),
        ]),
        // Daemons before v0.13 read the single exporter, newer ones the list (as buildctl sends).
        exporter_deprecated: exporter.into(),
        exporter_attrs_deprecated: attrs.clone(),
        exporters: vec![Exporter { r#type: exporter.into(), attrs }],
        ..Default::default()
    };

    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut control = daemon.control();
    let status_task = {
        let mut control = daemon.control();
        let seen = seen.clone();
        let events = events.clone();
        let reference = reference.clone();
        AbortOnDrop(tokio::spawn(async move {
            match control.status(StatusRequest { r#ref: reference }).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(batch) => translate(batch, &seen, &events),
                            Err(s) => {
                                tracing::debug!(status = %s, "status stream ended with an error");
                                break;
                            }
                        }
                    }
                }
                Err(s) => tracing::warn!(status = %s, "BuildKit's status stream could not be opened; building without progress"),
            }
            seen.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
        }))
    };

    tracing::info!(image = %target.tagged(), endpoint = %daemon.endpoint(), reference, "solving");
    let solved = control.solve(request).await;
    // Let the status stream deliver the last logs before an error is described.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !seen.lock().unwrap_or_else(|p| p.into_inner()).ended {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(status_task);
    drop(session);
    let response = match solved {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            return Err(failure(daemon, &spec.image, &status, &seen));
        }
    };

    if let Output::Engine(_) = output {
        return Ok(None);
    }
    let digest = if let crate::Endpoint::Docker { socket } = daemon.endpoint() {
        let (user, password) = spec.credentials.lookup(&target.registry).unwrap_or_default();
        let auth = crate::docker::registry_auth_header(&target.registry, &user, &password);
        crate::docker::push(socket, &target.name(), &target.tag, &auth, |line| {
            let _ = events.send(Event::Push(line.to_string()));
        })
        .await?
    } else {
        response.exporter_response.get("containerimage.digest").cloned().ok_or_else(|| Error::Protocol {
            endpoint: daemon.endpoint().to_string(),
            what: format!("export of {}", spec.image),
            source: "BuildKit reported no containerimage.digest".into(),
        })?
    };
    Ok(Some(digest))
}

/// Describes a failed solve: the step, its last log lines, and what kind of failure it was.
fn failure(daemon: &Connection, image: &str, status: &tonic::Status, seen: &Seen) -> Error {
    let message = status.message().trim().to_string();
    if matches!(status.code(), tonic::Code::Unavailable) || (status.code() == tonic::Code::Unknown && looks_interrupted(&message)) {
        // The transport's own causes (broken pipe, reset) say more than tonic's summary.
        let cause = std::error::Error::source(status).map(chain).unwrap_or_default();
        let message = if cause.is_empty() || message.contains(&cause) { message } else { format!("{message}: {cause}") };
        let failure = BuildFailure { kind: FailureKind::Interrupted, message, step: None, logs: vec![] };
        return Error::Build { image: image.to_string(), failure: Box::new(failure) };
    }
    if status.code() == tonic::Code::Cancelled && message.is_empty() {
        return Error::Cancelled { endpoint: daemon.endpoint().to_string() };
    }
    let step = seen.failed.as_ref().and_then(|d| seen.names.get(d)).cloned();
    let logs = seen.failed.as_ref().and_then(|d| seen.logs.get(d)).map(|t| t.iter().cloned().collect()).unwrap_or_default();
    let kind = match step.as_deref().and_then(|s| s.strip_prefix("[internal] load metadata for ")) {
        // The frontend resolving a FROM image: whatever the message's wording, a base pull failed.
        Some(image) => base_image_failure(image, &message),
        None => classify(&message),
    };
    let message = if message.contains("no active session") {
        format!("{message} (BuildKit never saw kforge's session: a proxy between kforge and BuildKit must pass the session stream through)")
    } else {
        message
    };
    Error::Build { image: image.to_string(), failure: Box::new(BuildFailure { kind, message, step, logs }) }
}

/// A base image that could not be pulled: its registry, and whether credentials were the problem.
fn base_image_failure(image: &str, message: &str) -> FailureKind {
    let lower = message.to_ascii_lowercase();
    let image = image.trim().to_string();
    // Named as BuildKit names it; the registry is whatever the reference says (docker.io by default).
    let registry = image.parse::<Reference>().map(|r| r.registry().to_string()).unwrap_or_else(|_| "docker.io".to_string());
    let auth = ["401", "403", "unauthorized", "authorization", "authentication", "denied", "no basic auth"].iter().any(|m| lower.contains(m));
    FailureKind::BaseImage { image, registry, auth }
}

fn looks_interrupted(message: &str) -> bool {
    ["transport", "connection reset", "broken pipe", "error reading from server", "h2 protocol error", "stream closed"].iter().any(|m| message.contains(m))
}

/// The kind of failure BuildKit's message describes.
pub(crate) fn classify(message: &str) -> FailureKind {
    let lower = message.to_ascii_lowercase();
    for marker in ["failed to resolve source metadata for ", "failed to load cache key: ", "pull access denied for "] {
        if let Some(at) = message.find(marker) {
            let rest = &message[at + marker.len()..];
            let image = rest.split([' ', ',']).next().unwrap_or(rest).trim_end_matches(':');
            return base_image_failure(image, message);
        }
    }
    if lower.contains("dockerfile parse error") || lower.contains("failed to create llb definition") || lower.contains("failed to parse dockerfile") {
        return FailureKind::Dockerfile;
    }
    if lower.contains("failed to push") || lower.contains("push access denied") || lower.contains("exporting to image") && lower.contains("push") {
        return FailureKind::Push;
    }
    if lower.contains("did not complete successfully") || lower.contains("executor failed running") || lower.contains("exit code:") {
        return FailureKind::Run;
    }
    FailureKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_buildkit_messages() {
        assert_eq!(
            classify("failed to solve with frontend dockerfile.v0: failed to create LLB definition: dockerfile parse error line 3: unknown instruction: FORM"),
            FailureKind::Dockerfile
        );
        assert_eq!(classify("executor failed running [/bin/sh -c make]: exit code: 2"), FailureKind::Run);
        assert_eq!(classify("process \"/bin/sh -c make\" did not complete successfully: exit code: 2"), FailureKind::Run);
        assert_eq!(
            classify(
                "failed to solve with frontend dockerfile.v0: failed to create LLB definition: failed to resolve source metadata for 127.0.0.1:5000/dtk:6.1: unexpected status code [manifests 6.1]: 401 Unauthorized"
            ),
            FailureKind::BaseImage { image: "127.0.0.1:5000/dtk:6.1".into(), registry: "127.0.0.1:5000".into(), auth: true }
        );
        assert_eq!(
            classify("failed to resolve source metadata for docker.io/library/nope:1: docker.io/library/nope:1: not found"),
            FailureKind::BaseImage { image: "docker.io/library/nope:1".into(), registry: "docker.io".into(), auth: false }
        );
        assert_eq!(classify("failed to push 127.0.0.1:5000/x:y: unexpected status: 401 Unauthorized"), FailureKind::Push);
        assert_eq!(classify("something else"), FailureKind::Other);
    }

    #[test]
    fn targets_must_be_registry_tags() {
        let t = Target::parse("127.0.0.1:5000/mods/hello:6.1").expect("parses");
        assert_eq!((t.name().as_str(), t.tag.as_str()), ("127.0.0.1:5000/mods/hello", "6.1"));
        assert_eq!(Target::parse("127.0.0.1:5000/mods/hello").expect("no tag").tag, "latest");
        let e = Target::parse("r.example/x@sha256:0000000000000000000000000000000000000000000000000000000000000000").expect_err("digest").to_string();
        assert!(e.contains("not a digest"), "{e}");
        assert!(Target::parse("oci:/tmp/x").is_err());
    }

    #[test]
    fn inputs_hash_changes_with_any_input() {
        let base = BuildSpec { image: "r/x:1".into(), dockerfile: "FROM a\n".into(), ..Default::default() };
        let h = base.inputs_hash();
        assert_eq!(h, base.clone().inputs_hash());
        let mut arg = base.clone();
        arg.build_args.insert("KERNEL_FULL_VERSION".into(), "6.1".into());
        let mut secret = base.clone();
        secret.secrets.insert("s".into(), b"1".to_vec());
        let mut file = base.clone();
        file.context.push(InputFile::new("a.c", "x"));
        let hashes = [h, arg.inputs_hash(), secret.inputs_hash(), file.inputs_hash()];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
