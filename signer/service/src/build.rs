//! `kforge.builder.v1.Builder`: builds through BuildKit for remote callers, with the service's
//! TLS, client identities and registry credentials.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kforge_builder::{BuildOutput, BuildSign, BuildSpec, Builder, BuilderOptions, Daemon, Endpoint, Event, InputFile, SignStep, build_and_sign};
use kforge_dtk::{KernelVars, Resolver};
use kforge_image::{DockerConfig, RegistryOptions, RegistryTls, Selection};
use kforge_proto::builder::v1 as pb;
use kforge_proto::builder::v1::builder_server::Builder as BuilderApi;
use kforge_signer::{Signer, SignerIdentifier};
use tokio::sync::{OnceCell, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::config::BuilderConfig;
use crate::error::Error;
use crate::service::State;

/// The build service: connects to BuildKit on first use (the service starts without it).
pub(crate) struct BuildService {
    config: Option<(Endpoint, BuilderConfig)>,
    builder: OnceCell<Builder>,
    state: Arc<State>,
    dtk: Option<Arc<Resolver>>,
}

/// A DTK_AUTO resolver for the `[dtk]` configuration; the Kubernetes API is used when reachable
/// (in-cluster or KUBECONFIG) and the configuration needs it.
pub(crate) async fn dtk_resolver(config: kforge_dtk::DtkConfig, registries: RegistryOptions) -> Result<Arc<Resolver>, Error> {
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
    let lookup = Arc::new(kforge_dtk::RegistryLookup::new(registries));
    Resolver::new(config, client, lookup).map(Arc::new).map_err(|e| Error::Invalid(format!("[dtk] {e}")))
}

impl BuildService {
    pub fn new(config: Option<(Endpoint, BuilderConfig)>, state: Arc<State>, dtk: Option<Arc<Resolver>>) -> Self {
        BuildService { config, builder: OnceCell::new(), state, dtk }
    }

    async fn builder(&self) -> Result<&Builder, Status> {
        let Some((endpoint, cfg)) = &self.config else {
            return Err(Status::failed_precondition("this kforge serve has no [builder] section; configure builder.buildkit"));
        };
        self.builder
            .get_or_try_init(|| async {
                let daemon = Daemon::connect(endpoint).await.map_err(|e| Status::unavailable(e.to_string()))?;
                Ok(Builder::new(daemon, BuilderOptions { deadline: Duration::from_secs(cfg.deadline_seconds.max(1)) }))
            })
            .await
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let caller = self.state.auth.identify(req)?;
        let allow = self.config.as_ref().map(|(_, c)| c.allow.as_slice()).unwrap_or_default();
        if !allow.is_empty() && !allow.iter().any(|a| (a == "*" && caller.authenticated) || caller.identities.iter().any(|i| i == a)) {
            return Err(Status::permission_denied(format!("{} may not build on this service", caller.name())));
        }
        Ok(caller)
    }

    fn credentials(&self, json: &[u8]) -> Result<DockerConfig, Status> {
        if json.is_empty() {
            return Ok(self.state.registries.credentials.clone());
        }
        DockerConfig::parse(json, "docker_config_json".as_ref()).map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

/// The caller's build arguments (KMM's variables expanded), then the ones KMM injects for the
/// kernel, module and namespace, which win as they do in KMM.
fn kmm_args(req: &pb::BuildRequest, vars: Option<&KernelVars>) -> Result<BTreeMap<String, String>, Status> {
    let mut args = BTreeMap::new();
    for a in &req.build_args {
        let value = match vars {
            Some(v) => v.expand(&a.value).map_err(|e| Status::invalid_argument(format!("build arg {}: {e}", a.name)))?,
            None => a.value.clone(),
        };
        args.insert(a.name.clone(), value);
    }
    match vars {
        Some(v) => args.extend(v.build_args()),
        None => {
            for (name, value) in [("MOD_NAME", &req.module_name), ("MOD_NAMESPACE", &req.module_namespace)] {
                if !value.is_empty() {
                    args.insert(name.to_string(), value.clone());
                }
            }
        }
    }
    Ok(args)
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
        // KMM's variables are expanded (as KMM does) when the request names a kernel.
        let vars = (!req.kernel.is_empty()).then(|| KernelVars::new(&req.kernel, &req.module_name, &req.module_namespace));
        let expand = |what: &str, text: &str| -> Result<String, Status> {
            match &vars {
                Some(v) => v.expand(text).map_err(|e| Status::invalid_argument(format!("{what}: {e}"))),
                None => Ok(text.to_string()),
            }
        };
        let image = expand("image", &req.image)?;
        let mut build_args = kmm_args(&req, vars.as_ref())?;
        if req.dockerfile.contains("DTK_AUTO") && !build_args.contains_key("DTK_AUTO") {
            // Refused before anything starts when no source applies: never FROM an empty DTK_AUTO.
            let (Some(resolver), Some(v)) = (&self.dtk, &vars) else {
                return Err(Status::failed_precondition(format!(
                    "the Dockerfile uses DTK_AUTO but {}: pass DTK_AUTO as a build argument or configure [dtk]",
                    if vars.is_none() { "the request names no kernel" } else { "this service has no [dtk] configuration" }
                )));
            };
            let resolved = resolver.resolve_for(v).await.map_err(|e| Status::failed_precondition(e.to_string()))?;
            tracing::info!(kernel = %req.kernel, dtk = %resolved.image, source = %resolved.source, "DTK_AUTO resolved");
            build_args.insert("DTK_AUTO".into(), resolved.image);
        }
        let credentials = Arc::new(self.credentials(&req.docker_config_json)?);
        let spec = (!req.dockerfile.is_empty()).then(|| BuildSpec {
            image: image.clone(),
            dockerfile: req.dockerfile.clone(),
            context: req
                .context
                .iter()
                .map(|f| InputFile { path: f.path.clone(), mode: if f.mode == 0 { 0o644 } else { f.mode }, data: f.data.to_vec() })
                .collect(),
            build_args,
            target: (!req.target.is_empty()).then(|| req.target.clone()),
            secrets: req.secrets.iter().map(|s| (s.name.clone(), s.data.to_vec())).collect(),
            credentials: credentials.clone(),
            insecure_registry: tls.insecure,
            network: req.network,
            no_cache: false,
            labels: Default::default(),
        });
        if let Some(sign) = &req.sign {
            return self.build_and_sign(&caller, image, spec, sign, &credentials, tls.insecure, req.force, expand).await;
        }
        let Some(spec) = spec else { return Err(Status::invalid_argument("dockerfile is required")) };
        let builder = self.builder().await?;
        let mut handle = builder.start(spec, req.force).map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(caller = %caller.name(), image = %req.image, joined = handle.joined(), "build requested");
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            // Stops (and, if it was the last caller, cancels the build) when the caller goes away.
            loop {
                tokio::select! {
                    _ = tx.closed() => {
                        tracing::info!(image = %req.image, "caller went away; build handle dropped");
                        return;
                    }
                    e = handle.next_event() => match e {
                        Some(e) => {
                            if let Some(ev) = event_of(e) {
                                if tx.send(Ok(ev)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        None => break,
                    }
                }
            }
            let joined = handle.joined();
            let last = match handle.finish().await {
                Ok(out) => pb::build_event::Event::Done(pb::BuildDone { image: out.image, skipped: out.skipped, joined }),
                Err(e) => pb::build_event::Event::Failed(pb::BuildFailed { message: e.to_string() }),
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
    /// KMM's build and sign sections: build (or take the unsigned image), sign with a key on this
    /// service (audited) or the caller's, push the signed image once.
    #[allow(clippy::too_many_arguments)]
    async fn build_and_sign(
        &self,
        caller: &Caller,
        image: String,
        spec: Option<BuildSpec>,
        sign: &pb::SignSpec,
        credentials: &DockerConfig,
        insecure: bool,
        force: bool,
        expand: impl Fn(&str, &str) -> Result<String, Status>,
    ) -> Result<Response<ReceiverStream<Result<pb::BuildEvent, Status>>>, Status> {
        let state = &self.state;
        let request_id = state.request_id();
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
            let key = state.key_for(&sign.key, caller, &request_id).await?;
            let hook = state.audit_hook(&request_id, caller.name(), &key.name);
            (key.signing.clone(), key.name.clone(), Some(hook))
        };
        let signer = Arc::new(Signer::new(signing, hash, SignerIdentifier::IssuerSerial).map_err(|e| Status::failed_precondition(e.to_string()))?);
        let files = sign.files_to_sign.iter().map(|f| expand("files_to_sign", f)).collect::<Result<Vec<_>, _>>()?;
        let unsigned_image = (!sign.unsigned_image.is_empty()).then(|| expand("unsigned_image", &sign.unsigned_image)).transpose()?;
        let mut registries = RegistryOptions { credentials: credentials.clone(), ..state.registries.clone() };
        registries.tls.insecure = insecure;
        let request = BuildSign {
            image: image.clone(),
            build: spec,
            unsigned_image,
            sign: Some(SignStep { signer, selection: if files.is_empty() { Selection::Default } else { Selection::Files(files) }, audit }),
            registries,
            force,
            attempts: 3,
        };
        let daemon = match &request.build {
            Some(_) => Some(self.builder().await?.daemon().clone()),
            None => None,
        };
        let deadline = Duration::from_secs(self.config.as_ref().map(|(_, c)| c.deadline_seconds).unwrap_or(3600).max(1));
        tracing::info!(caller = %caller.name(), %image, key = %key_name, "build and sign requested");
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let (events_tx, mut events_rx) = mpsc::unbounded_channel();
            let work = tokio::time::timeout(deadline, build_and_sign(daemon.as_ref(), &request, &events_tx));
            tokio::pin!(work);
            let result: Result<BuildOutput, String> = loop {
                tokio::select! {
                    _ = tx.closed() => {
                        // Dropping the work future cancels the solve.
                        tracing::info!(image = %request.image, "caller went away; build and sign cancelled");
                        return;
                    }
                    Some(e) = events_rx.recv() => {
                        if let Some(ev) = event_of(e) {
                            let _ = tx.send(Ok(ev)).await;
                        }
                    }
                    r = &mut work => break match r {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("build and sign of {} did not finish within {} s and was cancelled", request.image, deadline.as_secs())),
                    },
                }
            };
            while let Ok(e) = events_rx.try_recv() {
                if let Some(ev) = event_of(e) {
                    let _ = tx.send(Ok(ev)).await;
                }
            }
            let last = match result {
                Ok(out) => pb::build_event::Event::Done(pb::BuildDone { image: out.image, skipped: out.skipped, joined: false }),
                Err(message) => pb::build_event::Event::Failed(pb::BuildFailed { message }),
            };
            let _ = tx.send(Ok(pb::BuildEvent { event: Some(last) })).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
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
        kforge_image::resolve_digest(&req.image, &opts).await.map_err(|e| match e {
            kforge_image::Error::Reference { .. } => Status::invalid_argument(e.to_string()),
            kforge_image::Error::Auth { .. } => Status::permission_denied(e.to_string()),
            _ => Status::unavailable(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmm_arguments_are_injected_and_win_and_variables_expand() {
        let req = pb::BuildRequest {
            kernel: "6.1.0-56-amd64".into(),
            module_name: "hello".into(),
            module_namespace: "kmm".into(),
            build_args: vec![
                pb::BuildArg { name: "MOD_NAME".into(), value: "override".into() },
                pb::BuildArg { name: "DTK_AUTO".into(), value: "r/dtk@sha256:00".into() },
                pb::BuildArg { name: "SRC".into(), value: "/src/${KERNEL_XYZ}/${MOD_NAME}".into() },
            ],
            ..Default::default()
        };
        let args = kmm_args(&req, Some(&KernelVars::new(&req.kernel, &req.module_name, &req.module_namespace))).expect("expands");
        assert_eq!(args["KERNEL_FULL_VERSION"], "6.1.0-56-amd64");
        assert_eq!(args["KERNEL_VERSION"], "6.1.0-56-amd64");
        assert_eq!(args["MOD_NAMESPACE"], "kmm");
        assert_eq!(args["MOD_NAME"], "hello", "KMM's injected value wins");
        assert_eq!(args["SRC"], "/src/6.1.0/hello");
        assert_eq!(args["DTK_AUTO"], "r/dtk@sha256:00");
    }
}
