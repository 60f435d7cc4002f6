//! The builder as a service uses it: identical concurrent requests share one solve, every build
//! has a deadline, and a build whose callers all went away is cancelled. Whether a build is needed
//! at all (an existing target built from the same inputs) is the caller's decision.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;

use crate::endpoint::Connection;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::solve::{Output, solve};
use crate::spec::{BuildSpec, Target};

/// How the builder behaves.
#[derive(Debug, Clone)]
pub struct BuilderOptions {
    /// A build running longer is cancelled.
    pub deadline: Duration,
}

/// How long a build may run unless configured otherwise (KMM's default build timeout).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3600);

impl Default for BuilderOptions {
    fn default() -> Self {
        BuilderOptions { deadline: DEFAULT_DEADLINE }
    }
}

type Outcome = Option<Result<Option<String>, Arc<Error>>>;

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
    daemon: Connection,
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

    /// Forwards every event to `events`, then waits for the result.
    pub async fn forward(mut self, events: &UnboundedSender<Event>) -> Result<Option<String>> {
        while let Some(e) = self.events.recv().await {
            let _ = events.send(e);
        }
        self.finish().await
    }

    /// Waits for the result: the pushed digest (`None` for [`Output::Engine`]).
    pub async fn finish(self) -> Result<Option<String>> {
        let mut rx = self.running.outcome.clone();
        let outcome = rx.wait_for(|o| o.is_some()).await.map_err(|_| Error::Request("the build task ended without a result".into()))?.clone();
        match outcome {
            Some(Ok(out)) => Ok(out),
            Some(Err(e)) => Err(Error::Shared(e)),
            None => Err(Error::Request("the build task ended without a result".into())),
        }
    }
}

impl Builder {
    /// A builder using `daemon`.
    pub fn new(daemon: Connection, options: BuilderOptions) -> Self {
        Builder { daemon, options, inflight: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The BuildKit this builder uses.
    pub fn connection(&self) -> &Connection {
        &self.daemon
    }

    /// Starts the build of `spec` delivered as `output`, or joins the identical one running.
    pub fn start(&self, spec: BuildSpec, output: Output) -> Result<BuildHandle> {
        Target::parse(&spec.image)?;
        let key = format!("{}|{output:?}", spec.inputs_hash());
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = inflight.get(&key).and_then(Weak::upgrade)
            && running.outcome.borrow().is_none()
        {
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
                    let result = match tokio::time::timeout(deadline, solve(&daemon, &spec, &output, &events_tx)).await {
                        Ok(result) => result,
                        Err(_) => Err(Error::Deadline { image: spec.image.clone(), seconds: deadline.as_secs() }),
                    };
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
}
