//! `kforge.builder.v1.Builder`: builds through BuildKit for remote callers, with the service's
//! TLS, client identities and registry credentials.

use std::sync::Arc;
use std::time::Duration;

use kforge_builder::{Builder, BuilderOptions, Connection, Endpoint, Event, InputFile};
use kforge_image::{DockerConfig, RegistryOptions, RegistryTls};
use kforge_kmm::{DockerCredentials, KmmBuild, KmmRequest, KmmSign, Outcome, Resolver};
use kforge_proto::builder::v1 as pb;
use kforge_proto::builder::v1::builder_server::Builder as BuilderApi;
use kforge_signer::{Signer, SignerIdentifier};
use tokio::sync::{OnceCell, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use kforge_server::{Caller, Metrics, chain};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::BuilderConfig;

/// What a signed build needs from the signing service: a key the caller may use, and the audit
/// every signature made with it goes through.
#[tonic::async_trait]
pub trait ServerKeys: Send + Sync {
    /// The key named `name` for `caller` (NOT_FOUND or PERMISSION_DENIED otherwise, audited), the
    /// hook that audits each signed file, and the request id it audits under.
    async fn key(&self, name: &str, caller: &Caller) -> Result<(kforge_signer::SigningKey, kforge_image::AuditHook), Status>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    result: String,
}

/// The build service: connects to BuildKit on first use (the service starts without it).
pub struct BuildService {
    config: Option<(Endpoint, BuilderConfig)>,
    builder: OnceCell<Builder>,
    keys: Arc<dyn ServerKeys>,
    registries: RegistryOptions,
    builds: Family<BuildLabels, Counter>,
    dtk: Option<Arc<Resolver>>,
}

/// A DTK_AUTO resolver for the `[dtk]` configuration; the Kubernetes API is used when reachable
/// (in-cluster or KUBECONFIG) and the configuration needs it.
pub async fn dtk_resolver(config: kforge_kmm::DtkConfig, registries: RegistryOptions) -> Result<Arc<Resolver>, kforge_kmm::Error> {
    let client = if config.openshift || config.configmap.is_some() {
        match kube::Client::try_default().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::info!(error = %e, "no Kubernetes API: DTK_AUTO from OpenShift and ConfigMaps is off");
                None
            }
        }
    } else {
        None
    };
    let lookup = Arc::new(kforge_kmm::RegistryLookup::new(registries));
    Resolver::new(config, client, lookup).map(Arc::new)
}

impl BuildService {
    /// A service building through `config`'s BuildKit (connected on first use; `None` answers
    /// FAILED_PRECONDITION), signing with `keys`, using `registries` for requests that bring no
    /// credentials, resolving `DTK_AUTO` with `dtk`; its build counter goes into `metrics`.
    pub fn new(
        config: Option<(Endpoint, BuilderConfig)>,
        keys: Arc<dyn ServerKeys>,
        registries: RegistryOptions,
        dtk: Option<Arc<Resolver>>,
        metrics: &Metrics,
    ) -> Self {
        let builds = Family::<BuildLabels, Counter>::default();
        metrics.register("builder_builds", "Build requests by result", builds.clone());
        BuildService { config, builder: OnceCell::new(), keys, registries, builds, dtk }
    }

    /// The gRPC service, accepting messages up to `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> kforge_proto::builder::v1::builder_server::BuilderServer<Self> {
        kforge_proto::builder::v1::builder_server::BuilderServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    async fn builder(&self) -> Result<&Builder, Status> {
        let Some((endpoint, cfg)) = &self.config else {
            return Err(Status::failed_precondition("this kforge serve has no [builder] section; configure builder.buildkit"));
        };
        self.builder
            .get_or_try_init(|| async {
                let connection = Connection::connect(endpoint).await.map_err(|e| Status::unavailable(chain(&e)))?;
                Ok(Builder::new(connection, BuilderOptions { deadline: Duration::from_secs(cfg.deadline_seconds.max(1)) }))
            })
            .await
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let caller = Caller::of(req)?;
        let allow = self.config.as_ref().map(|(_, c)| c.allow.as_slice()).unwrap_or_default();
        if !caller.allowed(allow) {
            return Err(Status::permission_denied(format!("{} may not build on this service", caller.name())));
        }
        Ok(caller)
    }

    fn credentials(&self, json: &[u8]) -> Result<DockerConfig, Status> {
        if json.is_empty() {
            return Ok(self.registries.credentials.clone());
        }
        DockerConfig::parse(json, "docker_config_json".as_ref()).map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

fn event_of(e: Event) -> Option<pb::BuildEvent> {
    use pb::build_event::Event as E;
    let event = match e {
        Event::Step(s) => E::Step(pb::Step { id: s.id, name: s.name, cached: s.cached, completed: s.completed, error: s.error.unwrap_or_default() }),
        Event::Log { step, stream, data } => E::Log(pb::Log { step, stream, data: data.into() }),
        Event::Warning { step, message } => E::Log(pb::Log { step, stream: 2, data: format!("WARNING: {message}\n").into_bytes().into() }),
        Event::Push(line) => E::Log(pb::Log { step: "push".into(), stream: 1, data: format!("{line}\n").into_bytes().into() }),
        Event::Message(text) => E::Log(pb::Log { step: "kforge".into(), stream: 1, data: format!("{text}\n").into_bytes().into() }),
        Event::Progress { .. } => return None,
    };
    Some(pb::BuildEvent { event: Some(event) })
}

#[tonic::async_trait]
impl BuilderApi for BuildService {
    type BuildStream = ReceiverStream<Result<pb::BuildEvent, Status>>;

    async fn build(&self, req: Request<pb::BuildRequest>) -> Result<Response<Self::BuildStream>, Status> {
        let caller = self.authorize(&req)?;
        let req = req.into_inner();
        let sign_only = req.sign.as_ref().is_some_and(|s| !s.unsigned_image.is_empty());
        if req.image.is_empty() || (req.dockerfile.is_empty() && !sign_only) {
            return Err(Status::invalid_argument("image and dockerfile (or sign.unsigned_image) are required"));
        }
        let tls = req.registry_tls.unwrap_or_default();
        if tls.insecure_skip_tls_verify {
            return Err(Status::invalid_argument(
                "registry_tls.insecure_skip_tls_verify: BuildKit takes certificate settings from its own configuration (buildkitd.toml or the engine's certs.d); use insecure for plain HTTP",
            ));
        }
        let credentials = self.credentials(&req.docker_config_json)?;
        let build = (!req.dockerfile.is_empty()).then(|| KmmBuild {
            dockerfile: req.dockerfile.clone(),
            context: req
                .context
                .iter()
                .map(|f| InputFile { path: f.path.clone(), mode: if f.mode == 0 { 0o644 } else { f.mode }, data: f.data.to_vec() })
                .collect(),
            build_args: req.build_args.iter().map(|a| (a.name.clone(), a.value.clone())).collect(),
            secrets: req.secrets.iter().map(|s| (s.name.clone(), s.data.to_vec())).collect(),
            target: (!req.target.is_empty()).then(|| req.target.clone()),
            credentials: Arc::new(DockerCredentials(credentials.clone())),
            insecure: tls.insecure,
            network: req.network,
            no_cache: false,
        });
        let (sign, key_name) = match &req.sign {
            Some(sign) => {
                let (s, name) = self.sign_step(&caller, sign).await?;
                (Some(s), name)
            }
            None => (None, String::new()),
        };
        let mut registries = RegistryOptions { credentials, ..self.registries.clone() };
        registries.tls.insecure = tls.insecure;
        let kmm = KmmRequest {
            kernel: req.kernel.clone(),
            module_name: req.module_name.clone(),
            namespace: req.module_namespace.clone(),
            image: req.image.clone(),
            build,
            sign,
            registries,
            force: req.force,
            attempts: if req.sign.is_some() { 3 } else { 1 },
        };
        let prepared = kmm.prepare(self.dtk.as_deref()).await.map_err(|e| kmm_status(&e))?;
        let request = prepared.request;
        kforge_builder::Target::parse(&request.image).map_err(|e| Status::invalid_argument(chain(&e)))?;
        let builder = match &request.source {
            kforge_kmm::Source::Dockerfile(_) => Some(self.builder().await?.clone()),
            kforge_kmm::Source::Unsigned(_) => None,
        };
        let deadline = Duration::from_secs(self.config.as_ref().map(|(_, c)| c.deadline_seconds).unwrap_or(kforge_builder::DEFAULT_DEADLINE.as_secs()).max(1));
        tracing::info!(caller = %caller.name(), image = %request.image, key = %key_name, "build requested");
        let builds = self.builds.clone();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let (events_tx, mut events_rx) = mpsc::unbounded_channel();
            let work = tokio::time::timeout(deadline, kforge_kmm::run(builder.as_ref(), &request, &events_tx));
            tokio::pin!(work);
            let result: Result<Outcome, kforge_kmm::Error> = loop {
                tokio::select! {
                    _ = tx.closed() => {
                        // Dropping the work future cancels the solve (if this was its last caller).
                        tracing::info!(image = %request.image, "caller went away; build cancelled");
                        return;
                    }
                    Some(e) = events_rx.recv() => {
                        if let Some(ev) = event_of(e) {
                            let _ = tx.send(Ok(ev)).await;
                        }
                    }
                    r = &mut work => break r.unwrap_or_else(|_| Err(kforge_kmm::Error::Deadline { image: request.image.clone(), seconds: deadline.as_secs() })),
                }
            };
            while let Ok(e) = events_rx.try_recv() {
                if let Some(ev) = event_of(e) {
                    let _ = tx.send(Ok(ev)).await;
                }
            }
            builds.get_or_create(&BuildLabels { result: if result.is_ok() { "ok" } else { "failed" }.into() }).inc();
            let last = match result {
                Ok(out) => pb::build_event::Event::Done(pb::BuildDone { image: out.image, skipped: out.reused, joined: out.joined }),
                Err(e) => pb::build_event::Event::Failed(pb::BuildFailed { message: chain(&e), kind: failure_kind(&e).into() }),
            };
            let _ = tx.send(Ok(pb::BuildEvent { event: Some(last) })).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn image_exists(&self, req: Request<pb::ImageRequest>) -> Result<Response<pb::ImageExistsResponse>, Status> {
        let digest = self.resolve(req).await?;
        Ok(Response::new(pb::ImageExistsResponse { exists: digest.is_some() }))
    }

    async fn resolve_digest(&self, req: Request<pb::ImageRequest>) -> Result<Response<pb::ResolveDigestResponse>, Status> {
        let image = req.get_ref().image.clone();
        match self.resolve(req).await? {
            Some(digest) => Ok(Response::new(pb::ResolveDigestResponse { digest })),
            None => Err(Status::not_found(format!("{image} does not exist"))),
        }
    }

    async fn resolve_dtk(&self, req: Request<pb::ResolveDtkRequest>) -> Result<Response<pb::ResolveDtkResponse>, Status> {
        self.authorize(&req)?;
        let kernel = req.into_inner().kernel;
        let Some(resolver) = &self.dtk else {
            return Err(Status::failed_precondition("this service has no [dtk] configuration"));
        };
        let resolved = resolver.resolve(&kernel).await.map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::ResolveDtkResponse { image: resolved.image, source: resolved.source.to_string() }))
    }
}

impl BuildService {
    /// KMM's sign section: a key on this service (audited, allow lists honoured) or the caller's own.
    async fn sign_step(&self, caller: &Caller, sign: &pb::SignSpec) -> Result<(KmmSign, String), Status> {
        let hash = if sign.hash.is_empty() {
            kforge_signer::HashAlgorithm::Sha256
        } else {
            sign.hash.parse().map_err(|e: kforge_signer::Error| Status::invalid_argument(e.to_string()))?
        };
        let (signing, key_name, audit) = if !sign.key_pem.is_empty() {
            let pkey = openssl::pkey::PKey::private_key_from_pem(&sign.key_pem).map_err(|e| Status::invalid_argument(format!("sign.key_pem: {e}")))?;
            let cert =
                kforge_signer::Certificate::from_bytes(&sign.cert, std::path::Path::new("sign.cert")).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let key = kforge_signer::SigningKey::new(pkey, cert, std::path::Path::new("sign.key_pem")).map_err(|e| Status::invalid_argument(e.to_string()))?;
            (key, "caller's key".to_string(), None)
        } else {
            let (key, hook) = self.keys.key(&sign.key, caller).await?;
            (key, sign.key.clone(), Some(hook))
        };
        let signer = Arc::new(Signer::new(signing, hash, SignerIdentifier::IssuerSerial).map_err(|e| Status::failed_precondition(e.to_string()))?);
        let unsigned_image = (!sign.unsigned_image.is_empty()).then(|| sign.unsigned_image.clone());
        Ok((KmmSign { signer, files_to_sign: sign.files_to_sign.clone(), unsigned_image, audit }, key_name))
    }

    async fn resolve(&self, req: Request<pb::ImageRequest>) -> Result<Option<String>, Status> {
        self.authorize(&req)?;
        let req = req.into_inner();
        let tls = req.registry_tls.unwrap_or_default();
        let opts = RegistryOptions {
            credentials: self.credentials(&req.docker_config_json)?,
            tls: RegistryTls { insecure: tls.insecure, skip_verify: tls.insecure_skip_tls_verify, ca_pem: vec![] },
            ..Default::default()
        };
        kforge_image::resolve_digest(&req.image, &opts.with_loopback_plain_http(&req.image)).await.map_err(|e| kforge_server::image_status(&e))
    }
}

/// How a failed request is reported to the caller: refusals of the request itself are statuses
/// before the stream starts; everything after is a `BuildFailed` with its kind.
fn kmm_status(e: &kforge_kmm::Error) -> Status {
    use kforge_kmm::Error as E;
    let message = chain(e);
    match e {
        E::DtkUnconfigured { .. } | E::NothingApplies { .. } | E::MappingImageMissing { .. } => Status::failed_precondition(message),
        E::Kube { .. } | E::Registry { .. } => Status::unavailable(message),
        E::NoBuildKit { .. } => Status::failed_precondition(message),
        _ => Status::invalid_argument(message),
    }
}

/// The kind of a failure, for callers that decide whether to retry.
fn failure_kind(e: &kforge_kmm::Error) -> pb::FailureKind {
    use kforge_builder::{Error as B, FailureKind as F};
    use kforge_kmm::Error as E;
    fn of_build(e: &B) -> pb::FailureKind {
        match e {
            B::Shared(inner) => of_build(inner),
            B::Build { failure, .. } => match failure.kind {
                F::Dockerfile => pb::FailureKind::Dockerfile,
                F::Run => pb::FailureKind::StepFailed,
                F::BaseImage { .. } => pb::FailureKind::BaseImageUnavailable,
                F::Push => pb::FailureKind::PushRefused,
                F::Interrupted => pb::FailureKind::BuildkitUnavailable,
                F::Other => pb::FailureKind::Unspecified,
            },
            B::EnginePush { .. } => pb::FailureKind::PushRefused,
            B::Unavailable { .. } | B::Protocol { .. } => pb::FailureKind::BuildkitUnavailable,
            B::Cancelled { .. } => pb::FailureKind::Cancelled,
            B::Deadline { .. } => pb::FailureKind::Deadline,
            B::Endpoint { .. } | B::Request(_) => pb::FailureKind::InvalidRequest,
            _ => pb::FailureKind::Unspecified,
        }
    }
    match e {
        E::Build(b) => of_build(b),
        E::Deadline { .. } => pb::FailureKind::Deadline,
        E::Image(_) | E::Signer(_) => pb::FailureKind::Signing,
        E::NoBuildKit { .. } => pb::FailureKind::BuildkitUnavailable,
        E::Request(_) | E::Field { .. } => pb::FailureKind::InvalidRequest,
        _ => pb::FailureKind::Unspecified,
    }
}
