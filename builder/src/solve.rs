//! One build through BuildKit: the Dockerfile frontend with the inputs as LLB, the session for
//! secrets and credentials, the status stream as events, and the delivery of the result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kforge_proto::buildkit::moby::buildkit::v1::{Exporter, SolveRequest, StatusRequest};
use tokio::sync::mpsc::UnboundedSender;

use crate::endpoint::Connection;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::failure::failure;
use crate::llb::{self, InputFile};
use crate::session::SessionData;
use crate::spec::{BuildSpec, Target};
use crate::status::{Seen, translate};

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

    let request = request(daemon, spec, &target, output, &context, &session.id, &reference);

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

/// The solve request: the Dockerfile frontend with the build arguments, labels and target, the
/// Dockerfile and context as LLB inputs, and the exporter `output` needs on this daemon.
fn request(daemon: &Connection, spec: &BuildSpec, target: &Target, output: &Output, context: &[InputFile], session: &str, reference: &str) -> SolveRequest {
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
    SolveRequest {
        r#ref: reference.to_string(),
        session: session.to_string(),
        frontend: "dockerfile.v0".into(),
        frontend_attrs,
        frontend_inputs: HashMap::from([
            ("dockerfile".to_string(), llb::files_definition(&[InputFile::new("Dockerfile", spec.dockerfile.as_bytes())])),
            ("context".to_string(), llb::files_definition(context)),
        ]),
        // Daemons before v0.13 read the single exporter, newer ones the list (as buildctl sends).
        exporter_deprecated: exporter.into(),
        exporter_attrs_deprecated: attrs.clone(),
        exporters: vec![Exporter { r#type: exporter.into(), attrs }],
        ..Default::default()
    }
}
