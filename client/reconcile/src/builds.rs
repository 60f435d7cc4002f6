//! Builds through kforge's Builder service: one at a time per image, bounded overall, retried
//! with backoff after a failure (KMM never retries a failed build).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kforge_proto::builder::v1 as pb;
use kforge_proto::builder::v1::builder_client::BuilderClient;
use tokio::sync::{Semaphore, mpsc};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::{Backoff, BuilderEndpoint};
use crate::error::{Error, Result};
use crate::events::{Events, Note};
use crate::images::{ImageCache, present};
use crate::metrics::Metrics;
use crate::plan::{BuildJob, ImageFact, ImageKey};

/// Adds `authorization: Bearer …` to every call when a token is configured.
#[derive(Clone)]
pub(crate) struct Token(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = BuilderClient<InterceptedService<Channel, Token>>;

/// A client for `endpoint`; the connection is made on first use (and remade after a failure).
pub(crate) fn connect(endpoint: &BuilderEndpoint) -> Result<Client> {
    let bad = |source| Error::BuilderEndpoint { endpoint: endpoint.url.clone(), source };
    let mut ep = Endpoint::from_shared(endpoint.url.clone()).map_err(bad)?;
    if endpoint.url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &endpoint.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &endpoint.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        ep = ep.tls_config(tls).map_err(bad)?;
    }
    let token = match &endpoint.token {
        Some(t) => Some(format!("Bearer {}", t.trim()).parse().map_err(|_| Error::BuilderToken)?),
        None => None,
    };
    Ok(BuilderClient::with_interceptor(ep.connect_lazy(), Token(token)).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

#[derive(Debug, Clone)]
enum State {
    Running,
    Failed { message: String, failures: u32, retry_at: Instant, inputs_hash: String },
}

/// The builds the controller has started.
#[derive(Clone)]
pub(crate) struct Builds {
    state: Arc<Mutex<HashMap<ImageKey, State>>>,
    client: Option<Client>,
    permits: Arc<Semaphore>,
    backoff: Backoff,
    cache: ImageCache,
    metrics: Metrics,
    events: Events,
    trigger: mpsc::Sender<()>,
}

impl Builds {
    pub(crate) fn new(
        client: Option<Client>,
        max_builds: usize,
        backoff: Backoff,
        cache: ImageCache,
        metrics: Metrics,
        events: Events,
        trigger: mpsc::Sender<()>,
    ) -> Self {
        Builds { state: Arc::default(), client, permits: Arc::new(Semaphore::new(max_builds.max(1))), backoff, cache, metrics, events, trigger }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ImageKey, State>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the builds say about images at `now`: `Building` while one runs, `Failed` until its
    /// retry is due. These override the lookup cache.
    pub(crate) fn overlay(&self, now: Instant) -> Vec<(ImageKey, ImageFact)> {
        self.lock()
            .iter()
            .filter_map(|(k, s)| match s {
                State::Running => Some((k.clone(), ImageFact::Building)),
                State::Failed { message, retry_at, .. } if now < *retry_at => Some((k.clone(), ImageFact::Failed { message: message.clone() })),
                State::Failed { .. } => None,
            })
            .collect()
    }

    /// Starts `job` unless a build of its image runs already or its retry is not due.
    /// Returns whether it started.
    pub(crate) fn start(&self, job: &BuildJob, now: Instant) -> bool {
        let Some(client) = self.client.clone() else {
            tracing::debug!(image = %job.image, "no builder configured; not building");
            return false;
        };
        let key = (job.image.clone(), job.architecture.clone());
        let failures = {
            let mut state = self.lock();
            let failures = match state.get(&key) {
                Some(State::Running) => return false,
                // The same inputs wait for the backoff; changed inputs (a fixed Dockerfile) build now.
                Some(State::Failed { retry_at, inputs_hash, .. }) if now < *retry_at && *inputs_hash == job.inputs_hash => return false,
                Some(State::Failed { failures, inputs_hash, .. }) if *inputs_hash == job.inputs_hash => *failures,
                Some(State::Failed { .. }) => 0,
                None => 0,
            };
            state.insert(key.clone(), State::Running);
            failures
        };
        let this = self.clone();
        let job = job.clone();
        tokio::spawn(async move { this.run(client, job, key, failures).await });
        true
    }

    async fn run(self, mut client: Client, job: BuildJob, key: ImageKey, failures: u32) {
        let Ok(_permit) = self.permits.clone().acquire_owned().await else { return };
        for (ns, name) in &job.wanted_by {
            self.events.module(ns, name, Note::BuildStarted { image: job.image.clone(), kernel: job.kernel.clone() }).await;
        }
        tracing::info!(image = %job.image, kernel = %job.kernel, module = %format!("{}/{}", job.module.0, job.module.1), "build started");
        match build(&mut client, &job).await {
            Ok(digest) => {
                self.metrics.build("succeeded");
                tracing::info!(image = %job.image, %digest, "build finished");
                self.lock().remove(&key);
                self.cache.record(key, present(digest.clone(), Some(job.inputs_hash.clone())), None, Instant::now());
                let pinned = format!("{}@{digest}", repository(&job.image));
                for (ns, name) in &job.wanted_by {
                    self.events.module(ns, name, Note::BuildSucceeded { image: pinned.clone() }).await;
                    if job.request.sign.is_some() {
                        self.events.module(ns, name, Note::ImageSigned { image: pinned.clone() }).await;
                    }
                }
            }
            Err(message) => {
                self.metrics.build("failed");
                let failures = failures + 1;
                let delay = self.backoff.delay(failures);
                tracing::warn!(image = %job.image, kernel = %job.kernel, %message, retry_in = ?delay, "build failed");
                self.lock()
                    .insert(key, State::Failed { message: message.clone(), failures, retry_at: Instant::now() + delay, inputs_hash: job.inputs_hash.clone() });
                for (ns, name) in &job.wanted_by {
                    self.events.module(ns, name, Note::BuildFailed { image: job.image.clone(), message: message.clone() }).await;
                }
                let trigger = self.trigger.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = trigger.try_send(());
                });
            }
        }
        let _ = self.trigger.try_send(());
    }
}

/// `image` without its tag or digest.
fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(r, _)| r);
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => image,
    }
}

/// Runs one build to its end; the digest of the pushed image, or why it failed.
async fn build(client: &mut Client, job: &BuildJob) -> std::result::Result<String, String> {
    let mut stream = client.build(job.request.clone()).await.map_err(|s| format!("builder: {}", s.message()))?.into_inner();
    loop {
        match stream.message().await {
            Ok(Some(pb::BuildEvent { event: Some(event) })) => match event {
                pb::build_event::Event::Step(step) => tracing::debug!(image = %job.image, step = %step.name, cached = step.cached, "build step"),
                pb::build_event::Event::Log(_) => {}
                pb::build_event::Event::Done(done) => return digest_of(client, job, &done.image).await,
                pb::build_event::Event::Failed(failed) => return Err(failed.message),
            },
            Ok(Some(pb::BuildEvent { event: None })) => {}
            Ok(None) => return Err("the build stream ended without a result".into()),
            Err(s) => return Err(format!("builder: {}", s.message())),
        }
    }
}

/// The digest of a finished build: from the `repo@sha256:…` the builder reported, else asked.
async fn digest_of(client: &mut Client, job: &BuildJob, reported: &str) -> std::result::Result<String, String> {
    if let Some((_, digest)) = reported.split_once('@') {
        return Ok(digest.to_string());
    }
    let request =
        pb::ImageRequest { image: job.image.clone(), docker_config_json: job.request.docker_config_json.clone(), registry_tls: job.request.registry_tls };
    match client.resolve_digest(request).await {
        Ok(r) if !r.get_ref().digest.is_empty() => Ok(r.into_inner().digest),
        Ok(_) => Err(format!("built {} but the registry has no digest for it", job.image)),
        Err(s) => Err(format!("built {} but resolving its digest failed: {}", job.image, s.message())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::pin::Pin;
    use std::time::Duration;

    use futures_util::{Stream, StreamExt};
    use kforge_proto::builder::v1::builder_server::{Builder, BuilderServer};
    use tonic::{Request, Response, Status};

    /// A builder that records requests and answers from a script: each Build takes the next
    /// outcome (`Ok(image ref)` or `Err(message)`), after `delay`.
    #[derive(Clone)]
    pub(crate) struct FakeBuilder {
        pub(crate) requests: Arc<Mutex<Vec<pb::BuildRequest>>>,
        pub(crate) outcomes: Arc<Mutex<Vec<std::result::Result<String, String>>>>,
        pub(crate) delay: Duration,
    }

    type EventStream = Pin<Box<dyn Stream<Item = std::result::Result<pb::BuildEvent, Status>> + Send>>;

    #[tonic::async_trait]
    impl Builder for FakeBuilder {
        type BuildStream = EventStream;

        async fn build(&self, request: Request<pb::BuildRequest>) -> std::result::Result<Response<EventStream>, Status> {
            self.requests.lock().expect("lock").push(request.into_inner());
            let outcome = self.outcomes.lock().expect("lock").remove(0);
            let delay = self.delay;
            let stream = async_stream(delay, outcome);
            Ok(Response::new(Box::pin(stream)))
        }

        async fn image_exists(&self, _: Request<pb::ImageRequest>) -> std::result::Result<Response<pb::ImageExistsResponse>, Status> {
            Ok(Response::new(pb::ImageExistsResponse { exists: true }))
        }

        async fn resolve_digest(&self, _: Request<pb::ImageRequest>) -> std::result::Result<Response<pb::ResolveDigestResponse>, Status> {
            Ok(Response::new(pb::ResolveDigestResponse { digest: "sha256:resolved".into() }))
        }

        async fn resolve_dtk(&self, _: Request<pb::ResolveDtkRequest>) -> std::result::Result<Response<pb::ResolveDtkResponse>, Status> {
            Err(Status::unimplemented("no DTK"))
        }
    }

    fn async_stream(delay: Duration, outcome: std::result::Result<String, String>) -> impl Stream<Item = std::result::Result<pb::BuildEvent, Status>> {
        let step = pb::BuildEvent { event: Some(pb::build_event::Event::Step(pb::Step { name: "[1/1] RUN make".into(), ..Default::default() })) };
        let last = match outcome {
            Ok(image) => pb::build_event::Event::Done(pb::BuildDone { image, ..Default::default() }),
            Err(message) => pb::build_event::Event::Failed(pb::BuildFailed { message, kind: 2 }),
        };
        futures_util::stream::iter([Ok(step)]).chain(futures_util::stream::once(async move {
            tokio::time::sleep(delay).await;
            Ok(pb::BuildEvent { event: Some(last) })
        }))
    }

    pub(crate) async fn serve(fake: FakeBuilder) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(BuilderServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    pub(crate) fn job(image: &str, wanted_by: &[&str]) -> BuildJob {
        BuildJob {
            image: image.into(),
            architecture: "amd64".into(),
            inputs_hash: "h1".into(),
            kernel: "6.1.0-1-amd64".into(),
            module: ("ns".into(), wanted_by[0].into()),
            wanted_by: wanted_by.iter().map(|m| ("ns".to_string(), m.to_string())).collect(),
            request: pb::BuildRequest { image: image.into(), kernel: "6.1.0-1-amd64".into(), dockerfile: "FROM scratch".into(), ..Default::default() },
        }
    }

    struct Rig {
        builds: Builds,
        cache: ImageCache,
        fake: FakeBuilder,
        triggers: mpsc::Receiver<()>,
    }

    async fn rig(outcomes: Vec<std::result::Result<String, String>>, delay: Duration) -> Rig {
        let fake = FakeBuilder { requests: Arc::default(), outcomes: Arc::new(Mutex::new(outcomes)), delay };
        let url = serve(fake.clone()).await;
        let client = connect(&BuilderEndpoint { url, ..Default::default() }).expect("client");
        let cache = ImageCache::new(Duration::from_secs(60));
        let (tx, triggers) = mpsc::channel(16);
        let backoff = Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(200) };
        let builds = Builds::new(Some(client), 4, backoff, cache.clone(), Metrics::default(), Events::disabled(), tx);
        Rig { builds, cache, fake, triggers }
    }

    async fn wait_for(triggers: &mut mpsc::Receiver<()>) {
        tokio::time::timeout(Duration::from_secs(5), triggers.recv()).await.expect("a trigger in time");
    }

    #[tokio::test]
    async fn a_build_for_two_modules_calls_the_builder_once_and_records_the_digest() {
        let mut rig = rig(vec![Ok("r.example/kmm@sha256:abc".into())], Duration::from_millis(100)).await;
        let j = job("r.example/kmm:6.1", &["a", "b"]);
        assert!(rig.builds.start(&j, Instant::now()));
        // The next passes while it runs plan the same job again: no second build.
        assert!(!rig.builds.start(&j, Instant::now()));
        assert_eq!(rig.builds.overlay(Instant::now()), vec![(("r.example/kmm:6.1".into(), "amd64".into()), ImageFact::Building)]);
        wait_for(&mut rig.triggers).await;
        assert_eq!(rig.fake.requests.lock().expect("lock").len(), 1);
        assert_eq!(rig.fake.requests.lock().expect("lock")[0], j.request);
        assert!(rig.builds.overlay(Instant::now()).is_empty());
        let facts = rig.cache.facts(Instant::now());
        assert_eq!(facts.get(&("r.example/kmm:6.1".to_string(), "amd64".to_string())), Some(&present("sha256:abc".into(), Some("h1".into()))));
    }

    #[tokio::test]
    async fn a_done_without_digest_asks_resolve_digest() {
        let mut rig = rig(vec![Ok("r.example/kmm:6.1".into())], Duration::ZERO).await;
        let j = job("r.example/kmm:6.1", &["a"]);
        assert!(rig.builds.start(&j, Instant::now()));
        wait_for(&mut rig.triggers).await;
        let facts = rig.cache.facts(Instant::now());
        assert_eq!(facts.get(&j_key(&j)), Some(&present("sha256:resolved".into(), Some("h1".into()))));
    }

    fn j_key(j: &BuildJob) -> ImageKey {
        (j.image.clone(), j.architecture.clone())
    }

    #[tokio::test]
    async fn a_failed_build_is_retried_only_after_its_backoff() {
        let mut rig = rig(vec![Err("RUN make: exit 2".into()), Ok("r.example/kmm@sha256:def".into())], Duration::ZERO).await;
        let j = job("r.example/kmm:6.1", &["a"]);
        assert!(rig.builds.start(&j, Instant::now()));
        wait_for(&mut rig.triggers).await;
        let failed_at = Instant::now();
        assert_eq!(rig.builds.overlay(failed_at), vec![(j_key(&j), ImageFact::Failed { message: "RUN make: exit 2".into() })]);
        // Not before the backoff (50 ms) …
        assert!(!rig.builds.start(&j, failed_at));
        // (unless the inputs changed: checked in a_failed_build_with_new_inputs_is_retried_at_once)
        // … which wakes the loop up when it is due.
        wait_for(&mut rig.triggers).await;
        assert!(rig.builds.overlay(Instant::now()).is_empty());
        assert!(rig.builds.start(&j, Instant::now()));
        wait_for(&mut rig.triggers).await;
        assert_eq!(rig.fake.requests.lock().expect("lock").len(), 2);
        assert_eq!(rig.cache.facts(Instant::now()).get(&j_key(&j)), Some(&present("sha256:def".into(), Some("h1".into()))));
    }

    #[tokio::test]
    async fn a_failed_build_with_new_inputs_is_retried_at_once() {
        let mut rig = rig(vec![Err("RUN make: exit 2".into()), Ok("r.example/kmm@sha256:fed".into())], Duration::ZERO).await;
        let j = job("r.example/kmm:6.1", &["a"]);
        assert!(rig.builds.start(&j, Instant::now()));
        wait_for(&mut rig.triggers).await;
        assert!(!rig.builds.start(&j, Instant::now()));
        let mut fixed = j.clone();
        fixed.inputs_hash = "h2".into();
        assert!(rig.builds.start(&fixed, Instant::now()));
        // Triggers also come from the first failure's backoff timer: wait for the result itself.
        while !rig.cache.facts(Instant::now()).contains_key(&j_key(&j)) {
            wait_for(&mut rig.triggers).await;
        }
        assert_eq!(rig.fake.requests.lock().expect("lock").len(), 2);
    }

    #[test]
    fn repository_drops_tag_and_digest() {
        assert_eq!(repository("localhost:5000/kmm:6.1"), "localhost:5000/kmm");
        assert_eq!(repository("localhost:5000/kmm@sha256:aa"), "localhost:5000/kmm");
        assert_eq!(repository("localhost:5000/kmm"), "localhost:5000/kmm");
    }
}
