//! `kforge.signer.v1.Signer`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use kforge_proto::signer::v1 as pb;
use kforge_proto::signer::v1::signer_server::Signer as SignerApi;
use kforge_signer::{HashAlgorithm, Signer, SignerIdentifier};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use kforge_server::{Caller, Limiter, Limits, image_status};

use crate::assembler::{Assembler, Step};
use crate::audit::{AuditLog, Record};
use crate::keys::{Key, KeyStore};
use crate::metrics::SignerMetrics;

/// Shared state of the service.
pub(crate) struct State {
    pub keys: Arc<KeyStore>,
    pub audit: AuditLog,
    pub limiter: Arc<Limiter>,
    pub metrics: SignerMetrics,
    pub limits: Limits,
    pub registries: kforge_image::RegistryOptions,
    next_request: AtomicU64,
}

impl State {
    pub fn new(
        keys: Arc<KeyStore>,
        audit: AuditLog,
        limits: Limits,
        limiter: Arc<Limiter>,
        metrics: SignerMetrics,
        registries: kforge_image::RegistryOptions,
    ) -> Self {
        State { keys, audit, limiter, metrics, limits, registries, next_request: AtomicU64::new(1) }
    }

    /// Records every file an image signing signs, before anything is pushed.
    pub(crate) fn audit_hook(&self, request_id: &str, who: &str, key_name: &str) -> kforge_image::AuditHook {
        let audit = self.audit.clone();
        let (who, key_name, rid) = (who.to_string(), key_name.to_string(), request_id.to_string());
        Arc::new(move |f: &kforge_image::SignedFile| {
            let mut rec = Record::new(&rid, &who, &key_name, "signed");
            rec.module = Some(f.module_name.clone());
            rec.vermagic = Some(f.vermagic.clone());
            rec.sha256_in = Some(f.sha256_in.clone());
            rec.sha256_out = Some(f.sha256_out.clone());
            rec.image = Some(f.image.clone());
            rec.path = Some(f.path.clone());
            audit.append(&rec).map_err(|e| e.to_string())
        })
    }

    pub(crate) fn request_id(&self) -> String {
        format!("{:x}-{}", std::process::id(), self.next_request.fetch_add(1, Ordering::Relaxed))
    }

    /// Finds a key the caller may use, auditing a refusal.
    pub(crate) async fn key_for(&self, name: &str, caller: &Caller, request_id: &str) -> Result<Arc<Key>, Status> {
        let keys = self.keys.snapshot();
        let Some(key) = keys.get(name).cloned() else {
            return Err(Status::not_found(format!("no key named {name:?} on this signer; ListKeys shows the keys you may use")));
        };
        if !key.allows(&caller.identities, caller.authenticated) {
            let mut r = Record::new(request_id, caller.name(), name, "denied");
            r.reason = Some("identity not allowed to use this key".into());
            self.audit.append_async(r).await.map_err(|e| Status::internal(format!("audit log write failed: {e}")))?;
            self.metrics.record(name, "denied", Instant::now(), 0);
            return Err(Status::permission_denied(format!("{} may not use key {name:?}", caller.name())));
        }
        Ok(key)
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct SignerService(pub(crate) Arc<State>);

fn hash_of(name: &str) -> Result<HashAlgorithm, Status> {
    if name.is_empty() {
        return Ok(HashAlgorithm::Sha256);
    }
    name.parse().map_err(|e: kforge_signer::Error| Status::invalid_argument(e.to_string()))
}

fn code_of(e: &kforge_signer::Error) -> Code {
    use kforge_signer::Error as E;
    match e {
        E::Crypto { .. } | E::Io { .. } => Code::Internal,
        E::Key(_) => Code::FailedPrecondition,
        _ => Code::InvalidArgument,
    }
}

#[tonic::async_trait]
impl SignerApi for SignerService {
    type SignModulesStream = ReceiverStream<Result<pb::SignModulesResponse, Status>>;
    type SignImageStream = ReceiverStream<Result<pb::SignImageEvent, Status>>;

    async fn sign_modules(&self, req: Request<Streaming<pb::SignModulesRequest>>) -> Result<Response<Self::SignModulesStream>, Status> {
        let state = self.0.clone();
        let caller = Caller::of(&req)?;
        let request_id = state.request_id();
        tracing::debug!(%request_id, caller = %caller.name(), "SignModules");
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut assembler = Assembler::new(state.limits.max_module_bytes);
            loop {
                let part = match inbound.message().await {
                    Ok(Some(m)) => m.part,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%request_id, %status, "client stream ended with an error");
                        return;
                    }
                };
                let sent = match part.map(|p| assembler.push(p)) {
                    None | Some(Step::More) => Ok(()),
                    Some(Step::Module { start, bytes }) => {
                        let id = start.id.clone();
                        match sign_one(&state, &caller, &request_id, start, bytes).await {
                            Ok((header, bytes)) => send_signed(&tx, header, bytes).await,
                            Err(e) => send_error(&tx, &id, &e).await,
                        }
                    }
                    Some(Step::Refused { id, status }) => send_error(&tx, &id, &status).await,
                    Some(Step::Broken(status)) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            if let Some((id, status)) = assembler.finish() {
                let _ = send_error(&tx, &id, &status).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn sign_image(&self, req: Request<pb::SignImageRequest>) -> Result<Response<Self::SignImageStream>, Status> {
        let state = self.0.clone();
        let caller = Caller::of(&req)?;
        let request_id = state.request_id();
        let r = req.into_inner();
        let key = state.key_for(&r.key, &caller, &request_id).await?;
        state.limiter.take_signature(caller.name())?;
        let hash = hash_of(&r.hash)?;
        let id = if r.key_id { SignerIdentifier::KeyId } else { SignerIdentifier::IssuerSerial };
        let signer = Arc::new(Signer::new(key.signing.clone(), hash, id).map_err(|e| Status::failed_precondition(e.to_string()))?);
        let from: kforge_image::ImageRef = r.from.parse().map_err(|e: kforge_image::Error| Status::invalid_argument(e.to_string()))?;
        let to: kforge_image::ImageRef = r.to.parse().map_err(|e: kforge_image::Error| Status::invalid_argument(e.to_string()))?;
        if !matches!(from, kforge_image::ImageRef::Registry(_)) || !matches!(to, kforge_image::ImageRef::Registry(_)) {
            return Err(Status::invalid_argument("the signing service reads and writes registries only, not oci: layouts on its own disk"));
        }
        let mut registries = state.registries.clone();
        if !r.docker_config_json.is_empty() {
            registries.credentials = kforge_image::DockerConfig::parse(&r.docker_config_json[..], std::path::Path::new("request docker_config_json"))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        registries.tls.insecure = r.insecure;
        registries.tls.skip_verify = r.insecure_skip_tls_verify;
        let selection = if r.files.is_empty() { kforge_image::Selection::Default } else { kforge_image::Selection::Files(r.files.clone()) };

        let (tx, rx) = mpsc::channel(64);
        let hook = state.audit_hook(&request_id, caller.name(), &key.name);
        let request = kforge_image::SignImage {
            from,
            to,
            selection,
            signer,
            registries,
            work_dir: None,
            audit: Some(hook),
            gzip_level: kforge_image::DEFAULT_GZIP_LEVEL,
            labels: Default::default(),
        };
        let events_tx = tx.clone();
        let events: Arc<dyn Fn(kforge_image::Event) + Send + Sync> = Arc::new(move |e| {
            let msg = match e {
                kforge_image::Event::Signed { path } => pb::sign_image_event::Event::Signed(path),
                kforge_image::Event::Image { platform, layers } => pb::sign_image_event::Event::Progress(format!("reading {platform}: {layers} layers")),
                kforge_image::Event::Blob { digest, how, size } => pb::sign_image_event::Event::Progress(format!("blob {digest} {how} ({size} bytes)")),
                kforge_image::Event::Manifest { digest, tag } => {
                    pb::sign_image_event::Event::Progress(format!("pushed manifest {digest}{}", tag.map(|t| format!(" as {t}")).unwrap_or_default()))
                }
                kforge_image::Event::Layer { digest, size } => pb::sign_image_event::Event::Progress(format!("read layer {digest} ({size} bytes)")),
            };
            // Progress is best effort: a slow client must not stall signing.
            let _ = events_tx.try_send(Ok(pb::SignImageEvent { event: Some(msg) }));
        });
        tokio::spawn(async move {
            let started = Instant::now();
            let result = kforge_image::sign_image(&request, events).await;
            let msg = match result {
                Ok(done) => {
                    for _ in &done.signed {
                        state.metrics.record(&key.name, "signed", started, 0);
                    }
                    Ok(pb::SignImageEvent {
                        event: Some(pb::sign_image_event::Event::Done(pb::SignImageDone {
                            digest: done.digest,
                            media_type: done.media_type,
                            files: done.signed,
                            uploaded: done.uploaded,
                        })),
                    })
                }
                Err(e) => {
                    state.metrics.record(&key.name, "failed", started, 0);
                    Err(image_status(&e))
                }
            };
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn verify(&self, req: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let state = &self.0;
        Caller::of(&req)?;
        let r = req.into_inner();
        let cert = match r.against {
            Some(pb::verify_request::Against::Key(name)) => {
                let keys = state.keys.snapshot();
                keys.get(&name).map(|k| k.signing.certificate().clone()).ok_or_else(|| Status::not_found(format!("no key named {name:?} on this signer")))?
            }
            Some(pb::verify_request::Against::Certificate(bytes)) => {
                kforge_signer::Certificate::from_bytes(&bytes, std::path::Path::new("request certificate"))
                    .map_err(|e| Status::invalid_argument(e.to_string()))?
            }
            None => return Err(Status::invalid_argument("name a key or give a certificate to verify against")),
        };
        let v = tokio::task::spawn_blocking(move || kforge_signer::verify(&r.module, &cert))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::new(code_of(&e), e.to_string()))?;
        Ok(Response::new(pb::VerifyResponse {
            module_name: v.info.name,
            vermagic: v.info.vermagic,
            signer: v.signature.signer.unwrap_or_default(),
            sig_key: v.signature.key_id,
            hash: v.signature.hash.to_string(),
        }))
    }

    async fn list_keys(&self, req: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = Caller::of(&req)?;
        let keys = self.0.keys.snapshot();
        let mut out: Vec<pb::KeyInfo> = keys
            .values()
            .filter(|k| k.allows(&caller.identities, caller.authenticated))
            .map(|k| {
                let cert = k.signing.certificate();
                pb::KeyInfo {
                    name: k.name.clone(),
                    certificate_pem: cert.x509().to_pem().map(|p| String::from_utf8_lossy(&p).into_owned()).unwrap_or_default(),
                    subject: cert.subject(),
                    serial: cert.serial_hex(),
                    fingerprint_sha256: cert.fingerprint_sha256(),
                    bits: k.signing.bits(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListKeysResponse { keys: out }))
    }
}

/// Authorises, signs, audits (fsync'd) and returns the signed module.
async fn sign_one(
    state: &Arc<State>,
    caller: &Caller,
    request_id: &str,
    start: pb::ModuleStart,
    bytes: Vec<u8>,
) -> Result<(pb::SignedModule, bytes::Bytes), Status> {
    let started = Instant::now();
    let key = state.key_for(&start.key, caller, request_id).await?;
    state.limiter.take_signature(caller.name())?;
    let hash = hash_of(&start.hash)?;
    let id = if start.key_id { SignerIdentifier::KeyId } else { SignerIdentifier::IssuerSerial };
    let (audit, who, rid, metrics) = (state.audit.clone(), caller.name().to_string(), request_id.to_string(), state.metrics.clone());
    tokio::task::spawn_blocking(move || {
        let signer = Signer::new(key.signing.clone(), hash, id).map_err(|e| Status::failed_precondition(e.to_string()))?;
        // One pass of SHA-256 for both audit digests where the output only extends the input
        // (an unsigned, uncompressed module); a full second pass otherwise.
        let mut hasher = openssl::sha::Sha256::new();
        hasher.update(&bytes);
        let sha256_in = hex::encode(hasher.clone().finish());
        let size_in = bytes.len() as u64;
        let signed = match signer.sign(bytes) {
            Ok(s) => s,
            Err(e) => {
                metrics.record(&key.name, "invalid", started, 0);
                return Err(Status::new(code_of(&e), format!("{}: {e}", start.id)));
            }
        };
        let extends_input = signed.compression == kforge_signer::Compression::None && signed.replaced == 0 && signed.bytes.len() as u64 >= size_in;
        let sha256_out = if extends_input {
            hasher.update(&signed.bytes[size_in as usize..]);
            hex::encode(hasher.finish())
        } else {
            hex::encode(openssl::sha::sha256(&signed.bytes))
        };
        let mut rec = Record::new(&rid, &who, &key.name, "signed");
        rec.module = Some(signed.info.name.clone());
        rec.vermagic = Some(signed.info.vermagic.clone());
        rec.sha256_in = Some(sha256_in.clone());
        rec.sha256_out = Some(sha256_out.clone());
        rec.path = Some(start.id.clone());
        if let Err(e) = audit.append(&rec) {
            metrics.record(&key.name, "audit_failed", started, 0);
            tracing::error!(error = %e, log = %audit.path().display(), "audit log write failed; refusing to return a signature");
            return Err(Status::internal(format!("the signature could not be recorded in the audit log ({e}); nothing was returned")));
        }
        metrics.record(&key.name, "signed", started, size_in);
        let mut out = bytes::Bytes::from(signed.bytes);
        let detached = start.detached && signed.compression == kforge_signer::Compression::None;
        if detached {
            let bare = kforge_signer::trailer::split(&out).ok().flatten().map(|a| a.signed.len()).unwrap_or(0);
            out = out.slice(bare..);
        }
        let header = pb::SignedModule {
            id: start.id,
            size: out.len() as u64,
            module_name: signed.info.name,
            vermagic: signed.info.vermagic,
            sha256_in,
            sha256_out,
            key: key.name.clone(),
            detached,
        };
        Ok((header, out))
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
}

type Tx = mpsc::Sender<Result<pb::SignModulesResponse, Status>>;

async fn send_signed(tx: &Tx, header: pb::SignedModule, bytes: bytes::Bytes) -> Result<(), ()> {
    use pb::sign_modules_response::Part;
    let id = header.id.clone();
    let msg = |part| Ok(pb::SignModulesResponse { part: Some(part) });
    tx.send(msg(Part::Signed(header))).await.map_err(drop)?;
    for chunk in kforge_proto::chunks(&bytes) {
        tx.send(msg(Part::Data(chunk))).await.map_err(drop)?;
    }
    tx.send(msg(Part::End(pb::ModuleEnd { id }))).await.map_err(drop)
}

async fn send_error(tx: &Tx, id: &str, e: &Status) -> Result<(), ()> {
    let part = pb::sign_modules_response::Part::Error(pb::ModuleError { id: id.to_string(), code: e.code() as i32, message: e.message().to_string() });
    tx.send(Ok(pb::SignModulesResponse { part: Some(part) })).await.map_err(drop)
}
