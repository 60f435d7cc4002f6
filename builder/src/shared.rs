//! The builder as a service uses it: an existing target is not rebuilt, identical concurrent
//! requests share one solve, every build has a deadline, and a build whose callers all went away
//! is cancelled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use kforge_image::{RegistryOptions, RegistryTls};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;

use crate::endpoint::Daemon;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::solve::{BuildOutput, BuildSpec, Target, build};

/// How the builder behaves.
#[derive(Debug, Clone)]
pub struct BuilderOptions {
    /// A build running longer is cancelled.
    pub deadline: Duration,
}

impl Default for BuilderOptions {
    fn default() -> Self {
        BuilderOptions { deadline: Duration::from_secs(3600) }
    }
}

type Outcome = Option<Result<BuildOutput, Arc<Error>>>;

/// One running build and everyone waiting for it.
struct Running {
    /// Events so far (replayed to late joiners) and the live subscribers.
    fanout: Mutex<(Vec<Event>, Vec<UnboundedSender<Event>>)>,
    outcome: watch::Receiver<Outcome>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The last caller is gone: cancel the solve.
        self.task.abort();
    }
}

/// Builds through one BuildKit, sharing identical concurrent builds.
#[derive(Clone)]
pub struct Builder {
    daemon: Daemon,
    options: BuilderOptions,
    inflight: Arc<Mutex<HashMap<String, Weak<Running>>>>,
}

/// A caller's view of a build: its events, then its result.
pub struct BuildHandle {
    running: Arc<Running>,
    events: UnboundedReceiver<Event>,
    joined: bool,
}

impl BuildHandle {
    /// The next event; `None` once the build has ended and every event was delivered.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Whether this request joined a build that was already running.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Waits for the result.
    pub async fn finish(self) -> Result<BuildOutput> {
        let mut rx = self.running.outcome.clone();
        let outcome = rx.wait_for(|o| o.is_some()).await.map_err(|_| Error::Request("the build task ended without a result".into()))?.clone();
        match outcome {
            Some(Ok(out)) => Ok(out),
            Some(Err(e)) => Err(Error::Shared(e)),
            None => Err(Error::Request("the build task ended without a result".into())),
        }
    }
}

/// Registry access for the existence check: the build's credentials, plain HTTP for `--insecure`
/// and for loopback registries (as BuildKit and Docker treat them).
fn registry_options(spec: &BuildSpec) -> RegistryOptions {
    let mut opts = RegistryOptions { credentials: (*spec.credentials).clone(), attempts: 2, ..Default::default() };
    opts.tls = RegistryTls { insecure: spec.insecure_registry, ..Default::default() };
    opts.with_loopback_plain_http(&spec.image)
}

impl Builder {
    /// A builder using `daemon`.
    pub fn new(daemon: Daemon, options: BuilderOptions) -> Self {
        Builder { daemon, options, inflight: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The BuildKit this builder uses.
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// Starts (or joins) the build of `spec`; with `force` an existing target is rebuilt.
    pub fn start(&self, spec: BuildSpec, force: bool) -> Result<BuildHandle> {
        let target = Target::parse(&spec.image)?;
        let key = format!("{}|{force}", spec.inputs_hash());
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = inflight.get(&key).and_then(Weak::upgrade) {
            if running.outcome.borrow().is_none() {
                let (tx, rx) = unbounded_channel();
                let mut fanout = running.fanout.lock().unwrap_or_else(|p| p.into_inner());
                for e in &fanout.0 {
                    let _ = tx.send(e.clone());
                }
                fanout.1.push(tx);
                drop(fanout);
                tracing::info!(image = %spec.image, "joining the identical build already running");
                return Ok(BuildHandle { running, events: rx, joined: true });
            }
        }

        let (outcome_tx, outcome_rx) = watch::channel(None);
        let (tx, rx) = unbounded_channel();
        let running = Arc::new_cyclic(|weak: &Weak<Running>| {
            let weak = weak.clone();
            let daemon = self.daemon.clone();
            let deadline = self.options.deadline;
            let inflight = self.inflight.clone();
            let key = key.clone();
            let task = tokio::spawn(async move {
                let (events_tx, mut events_rx) = unbounded_channel::<Event>();
                let fan = {
                    let weak = weak.clone();
                    async move {
                        while let Some(e) = events_rx.recv().await {
                            let Some(running) = weak.upgrade() else { break };
                            let mut fanout = running.fanout.lock().unwrap_or_else(|p| p.into_inner());
                            fanout.1.retain(|s| s.send(e.clone()).is_ok());
                            fanout.0.push(e);
                        }
                    }
                };
                let work = async {
                    let result = run(&daemon, &spec, &target, force, deadline, &events_tx).await;
                    drop(events_tx);
                    result
                };
                let (result, ()) = tokio::join!(work, fan);
                inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                if let Some(running) = weak.upgrade() {
                    // Closing the subscribers ends their event streams after the last event.
                    running.fanout.lock().unwrap_or_else(|p| p.into_inner()).1.clear();
                }
                let _ = outcome_tx.send(Some(result.map_err(Arc::new)));
            });
            Running { fanout: Mutex::new((Vec::new(), vec![tx])), outcome: outcome_rx, task }
        });
        inflight.insert(key, Arc::downgrade(&running));
        Ok(BuildHandle { running, events: rx, joined: false })
    }

    /// Whether `image` exists in its registry, and its digest.
    pub async fn image_digest(&self, spec: &BuildSpec) -> Result<Option<String>> {
        let target = Target::parse(&spec.image)?;
        Ok(kforge_image::resolve_digest(&target.tagged(), &registry_options(spec)).await?)
    }
}

async fn run(daemon: &Daemon, spec: &BuildSpec, target: &Target, force: bool, deadline: Duration, events: &UnboundedSender<Event>) -> Result<BuildOutput> {
    if !force {
        match kforge_image::resolve_digest(&target.tagged(), &registry_options(spec)).await {
            Ok(Some(digest)) => {
                tracing::info!(image = %spec.image, %digest, "target exists; not building (force to rebuild)");
                return Ok(BuildOutput { image: format!("{}@{digest}", target.name()), digest, skipped: true });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(image = %spec.image, error = %e, "cannot check whether the target exists; building"),
        }
    }
    match tokio::time::timeout(deadline, build(daemon, spec, events)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Deadline { image: spec.image.clone(), seconds: deadline.as_secs() }),
    }
}
