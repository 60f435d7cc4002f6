//! The typed client of `kforge.signer.v1.Signer`, used by `kforge sign --remote` and friends.

use std::path::PathBuf;

use anyhow::{Context, bail};
use kforge_proto::signer::v1 as pb;
use kforge_proto::signer::v1::signer_client::SignerClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// How to reach and authenticate to a signing service.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// Sign on a kforge signing service instead of locally (http://127.0.0.1:7600 or https://host:7600).
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// CA certificate (PEM) that the service's TLS certificate chains to.
    #[arg(long, requires = "remote")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires_all = ["remote", "client_key"])]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, requires_all = ["remote", "client_cert"])]
    pub client_key: Option<PathBuf>,
    /// File holding a bearer token.
    #[arg(long, requires = "remote")]
    pub token_file: Option<PathBuf>,
    /// Name of the key on the service (default: the only key you may use).
    #[arg(long, requires = "remote")]
    pub key_name: Option<String>,
}

/// Adds `authorization: Bearer …` to every request when a token is configured.
#[derive(Clone)]
pub struct Token(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connected client.
pub type Client = SignerClient<InterceptedService<Channel, Token>>;

/// Connects to the service described by `args` (which must name `--remote`).
pub async fn connect(args: &RemoteArgs) -> anyhow::Result<Client> {
    let url = args.remote.clone().context("--remote URL is required")?;
    let mut endpoint = Channel::from_shared(url.clone())
        .with_context(|| format!("invalid service URL {url:?}"))?
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &args.ca {
            let pem = std::fs::read(ca).with_context(|| format!("{}: cannot read CA certificate", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            let c = std::fs::read(cert).with_context(|| format!("{}: cannot read client certificate", cert.display()))?;
            let k = std::fs::read(key).with_context(|| format!("{}: cannot read client key", key.display()))?;
            tls = tls.identity(Identity::from_pem(c, k));
        }
        endpoint = endpoint.tls_config(tls).context("TLS configuration")?;
    } else if args.client_cert.is_some() || args.ca.is_some() {
        bail!("--ca and --client-cert need an https:// service URL");
    }
    let channel = endpoint.connect().await.with_context(|| format!("cannot connect to the signing service at {url}"))?;
    let token = match &args.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f).with_context(|| format!("{}: cannot read token", f.display()))?;
            Some(format!("Bearer {}", t.trim()).parse().context("the token has characters not allowed in a header")?)
        }
        None => None,
    };
    Ok(SignerClient::with_interceptor(channel, Token(token)).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

/// The key to use: the one named, or the only one the caller may use.
pub async fn pick_key(client: &mut Client, named: Option<&str>) -> anyhow::Result<String> {
    if let Some(n) = named {
        return Ok(n.to_string());
    }
    let keys = client.list_keys(pb::ListKeysRequest {}).await.map_err(status_error)?.into_inner().keys;
    match keys.as_slice() {
        [one] => Ok(one.name.clone()),
        [] => bail!("the signing service offers no key to you"),
        many => bail!(
            "the signing service offers several keys ({}); choose one with --key-name",
            many.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// What the service returned for one module.
pub struct SignedRemote {
    pub bytes: Vec<u8>,
    pub module_name: String,
    pub vermagic: String,
}

/// Long-lived SignModules streams, one per concurrent caller, reused module after module: a
/// stream per module would pay for a request (authentication, admission, a task) every time.
pub struct Streams {
    client: Client,
    idle: std::sync::Mutex<Vec<Stream>>,
}

struct Stream {
    tx: tokio::sync::mpsc::Sender<pb::SignModulesRequest>,
    rx: tonic::Streaming<pb::SignModulesResponse>,
}

impl Streams {
    pub fn new(client: Client) -> Self {
        Streams { client, idle: std::sync::Mutex::new(Vec::new()) }
    }

    async fn open(&self) -> Result<Stream, kforge_signer::Error> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut client = self.client.clone();
        let rx = client.sign_modules(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map_err(service_error)?.into_inner();
        Ok(Stream { tx, rx })
    }

    /// Signs one module. Uncompressed modules are signed detached: only the appended signature
    /// comes back, and it is appended here to the module with any old signatures stripped (the
    /// same bytes, half the traffic).
    pub async fn sign(&self, id: &str, key: &str, hash: &str, key_id: bool, module: Vec<u8>) -> Result<SignedRemote, kforge_signer::Error> {
        let reused = self.idle.lock().ok().and_then(|mut i| i.pop());
        let mut stream = match reused {
            Some(s) => s,
            None => self.open().await?,
        };
        let result = exchange(&mut stream, id, key, hash, key_id, bytes::Bytes::from(module)).await;
        // A stream that failed at the transport level is dropped; one that carried a per-module
        // error goes back to the pool.
        if !matches!(&result, Err(Transport(_)))
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(stream);
        }
        result.map_err(|e| match e {
            Transport(e) | Module(e) => e,
        })
    }
}

enum Failure {
    Transport(kforge_signer::Error),
    Module(kforge_signer::Error),
}
use Failure::{Module, Transport};

/// Sends one module on a stream and reads its answer.
async fn exchange(stream: &mut Stream, id: &str, key: &str, hash: &str, key_id: bool, module: bytes::Bytes) -> Result<SignedRemote, Failure> {
    use pb::sign_modules_request::Part;
    use pb::sign_modules_response::Part as R;
    let closed = || Transport(RemoteError::error(tonic::Code::Unavailable, "the service closed the stream"));
    let msg = |p| pb::SignModulesRequest { part: Some(p) };
    let start = pb::ModuleStart { id: id.to_string(), key: key.to_string(), hash: hash.to_string(), key_id, size: module.len() as u64, detached: true };
    stream.tx.send(msg(Part::Start(start))).await.map_err(|_| closed())?;
    for chunk in kforge_proto::chunks(&module) {
        stream.tx.send(msg(Part::Data(chunk))).await.map_err(|_| closed())?;
    }
    stream.tx.send(msg(Part::End(pb::ModuleEnd { id: id.to_string() }))).await.map_err(|_| closed())?;
    let mut out = Vec::new();
    let mut header = None;
    loop {
        let Some(m) = stream.rx.message().await.map_err(|s| Transport(service_error(s)))? else { return Err(closed()) };
        match m.part {
            Some(R::Signed(h)) => {
                out.reserve(h.size as usize);
                header = Some(h);
            }
            Some(R::Data(d)) => out.extend_from_slice(&d),
            Some(R::End(_)) => break,
            Some(R::Error(e)) => {
                return Err(Module(RemoteError::error(tonic::Code::from(e.code), e.message)));
            }
            None => {}
        }
    }
    let protocol = |message: String| Transport(RemoteError::error(tonic::Code::DataLoss, message));
    let h = header.ok_or_else(|| protocol("a module ended without its signed header".into()))?;
    if h.id != id || out.len() as u64 != h.size {
        return Err(protocol(format!("expected {} bytes for {id}, received {} for {}", h.size, out.len(), h.id)));
    }
    let bytes = if h.detached {
        let (bare, _) = kforge_signer::trailer::strip_all(&module).map_err(Module)?;
        let mut whole = Vec::with_capacity(bare.len() + out.len());
        whole.extend_from_slice(bare);
        whole.extend_from_slice(&out);
        whole
    } else {
        out
    };
    Ok(SignedRemote { bytes, module_name: h.module_name, vermagic: h.vermagic })
}

/// A status as a signer error; transport failures get a hint at the usual causes.
fn service_error(s: tonic::Status) -> kforge_signer::Error {
    // A status made from a local transport failure carries that failure as its source.
    let transport = matches!(s.code(), tonic::Code::Cancelled | tonic::Code::Unavailable) || std::error::Error::source(&s).is_some();
    let message = match transport {
        true => format!(
            "{}: the service closed or refused the connection (a client certificate it does not trust, a TLS mismatch, or the service is down)",
            s.message()
        ),
        false => s.message().to_string(),
    };
    RemoteError::error(s.code(), message)
}

/// What the signing service answered instead of a signature.
#[derive(Debug, thiserror::Error)]
#[error("signing service: {message} ({code:?})")]
pub struct RemoteError {
    code: tonic::Code,
    message: String,
}

impl RemoteError {
    /// The service's answer, as the signer crate's error.
    fn error(code: tonic::Code, message: impl Into<String>) -> kforge_signer::Error {
        kforge_signer::Error::Backend(Box::new(RemoteError { code, message: message.into() }))
    }
}

/// Turns a status into an error that says what the service answered.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("signing service: {} ({:?})", s.message(), s.code())
}
