//! `kforge.builder.v1.Builder`: builds through BuildKit for remote callers, with the service's
//! TLS, client identities and registry credentials.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kforge_builder::{Builder, BuilderOptions, BuildSpec, Daemon, Endpoint, Event, InputFile};
use kforge_image::{DockerConfig, RegistryOptions, RegistryTls};
use kforge_proto::builder::v1 as pb;
use kforge_proto::builder::v1::builder_server::Builder as BuilderApi;
use tokio::sync::{mpsc, OnceCell};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::config::BuilderConfig;

/// The build service: connects to BuildKit on first use (the service starts without it).
pub(crate) struct BuildService {
    config: Option<(Endpoint, BuilderConfig)>,
    builder: OnceCell<Builder>,
    auth: Arc<Authenticator>,
    credentials: DockerConfig,
}

impl BuildService {
    pub fn new(config: Option<(Endpoint, BuilderConfig)>, auth: Arc<Authenticator>, credentials: DockerConfig) -> Self {
        BuildService { config, builder: OnceCell::new(), auth, credentials }
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

    fn authorize<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let caller = self.auth.identify(req)?;
        let allow = self.config.as_ref().map(|(_, c)| c.allow.as_slice()).unwrap_or_default();
        if !allow.is_empty() && !allow.iter().any(|a| (a == "*" && caller.authenticated) || caller.identities.iter().any(|i| i == a)) {
            return Err(Status::permission_denied(format!("{} may not build on this service", caller.name())));
        }
        Ok(caller.name().to_string())
    }

    fn credentials(&self, json: &[u8]) -> Result<DockerConfig, Status> {
        if json.is_empty() {
            return Ok(self.credentials.clone());
        }
        DockerConfig::parse(json, "docker_config_json".as_ref()).map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

/// KMM's build arguments for a kernel, module and namespace; explicit build args win.
fn kmm_args(req: &pb::BuildRequest) -> BTreeMap<String, String> {
    let mut args = BTreeMap::new();
    if !req.kernel.is_empty() {
        args.insert("KERNEL_FULL_VERSION".to_string(), req.kernel.clone());
        args.insert("KERNEL_VERSION".to_string(), req.kernel.clone());
    }
    if !req.module_name.is_empty() {
        args.insert("MOD_NAME".to_string(), req.module_name.clone());
    }
    if !req.module_namespace.is_empty() {
        args.insert("MOD_NAMESPACE".to_string(), req.module_namespace.clone());
    }
    for a in &req.build_args {
        args.insert(a.name.clone(), a.value.clone());
    }
    args
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
        if req.sign.is_some() {
            return Err(Status::unimplemented("signing as part of a build is not available yet; build, then call Signer/SignImage"));
        }
        if req.image.is_empty() || req.dockerfile.is_empty() {
            return Err(Status::invalid_argument("image and dockerfile are required"));
        }
        let tls = req.registry_tls.unwrap_or_default();
        if tls.insecure_skip_tls_verify {
            return Err(Status::invalid_argument("registry_tls.insecure_skip_tls_verify: BuildKit takes certificate settings from its own configuration (buildkitd.toml or the engine's certs.d); use insecure for plain HTTP"));
        }
        let spec = BuildSpec {
            image: req.image.clone(),
            dockerfile: req.dockerfile.clone(),
            context: req.context.iter().map(|f| InputFile { path: f.path.clone(), mode: if f.mode == 0 { 0o644 } else { f.mode }, data: f.data.to_vec() }).collect(),
            build_args: kmm_args(&req),
            target: (!req.target.is_empty()).then(|| req.target.clone()),
            secrets: req.secrets.iter().map(|s| (s.name.clone(), s.data.to_vec())).collect(),
            credentials: Arc::new(self.credentials(&req.docker_config_json)?),
            insecure_registry: tls.insecure,
            network: req.network,
            no_cache: false,
            labels: Default::default(),
        };
        let builder = self.builder().await?;
        let mut handle = builder.start(spec, req.force).map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(%caller, image = %req.image, joined = handle.joined(), "build requested");
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

    async fn resolve_dtk(&self, _req: Request<pb::ResolveDtkRequest>) -> Result<Response<pb::ResolveDtkResponse>, Status> {
        Err(Status::unimplemented("DTK_AUTO resolution is not available yet; pass DTK_AUTO as a build argument"))
    }
}

impl BuildService {
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
    fn kmm_arguments_are_injected_and_explicit_ones_win() {
        let req = pb::BuildRequest {
            kernel: "6.1.0-56-amd64".into(),
            module_name: "hello".into(),
            module_namespace: "kmm".into(),
            build_args: vec![pb::BuildArg { name: "MOD_NAME".into(), value: "override".into() }, pb::BuildArg { name: "DTK_AUTO".into(), value: "r/dtk@sha256:00".into() }],
            ..Default::default()
        };
        let args = kmm_args(&req);
        assert_eq!(args["KERNEL_FULL_VERSION"], "6.1.0-56-amd64");
        assert_eq!(args["KERNEL_VERSION"], "6.1.0-56-amd64");
        assert_eq!(args["MOD_NAMESPACE"], "kmm");
        assert_eq!(args["MOD_NAME"], "override");
        assert_eq!(args["DTK_AUTO"], "r/dtk@sha256:00");
    }
}
