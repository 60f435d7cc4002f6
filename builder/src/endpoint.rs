//! Where BuildKit is and how to reach it: a standalone `buildkitd` (`unix://`, `tcp://` with mutual
//! TLS) or the BuildKit inside a Docker engine (`docker://`, over the engine's `/grpc` and
//! `/session` upgrades). Both give the same Control client and the same session.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use kforge_proto::buildkit::moby::buildkit::v1::control_client::ControlClient;
use kforge_proto::buildkit::moby::buildkit::v1::{BytesMessage, InfoRequest, ListWorkersRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::docker;
use crate::error::{BoxError, Error, Result};
use crate::session::{self, SessionData};

/// The Docker engine socket `docker://` means.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Certificates for `tcp://` (buildctl's `--tlscacert`, `--tlscert`, `--tlskey`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle (PEM) the daemon's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
    /// Name to verify the daemon's certificate against (default: the host).
    pub server_name: Option<String>,
}

/// A BuildKit address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The BuildKit embedded in a Docker engine, through the engine's socket.
    Docker {
        /// Engine socket.
        socket: PathBuf,
    },
    /// A buildkitd unix socket.
    Unix {
        /// Socket path.
        socket: PathBuf,
    },
    /// A buildkitd TCP listener.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// TLS settings; `None` means plain text.
        tls: Option<TlsFiles>,
    },
}

impl FromStr for Endpoint {
    type Err = Error;

    /// `docker://[/path/docker.sock]`, `unix:///path/buildkitd.sock` or `tcp://host:port`.
    fn from_str(url: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Endpoint { url: url.to_string(), reason: reason.to_string() };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("expected docker://, unix:// or tcp://"))?;
        match scheme {
            "docker" => Ok(Endpoint::Docker { socket: PathBuf::from(if rest.is_empty() { DEFAULT_DOCKER_SOCKET } else { rest }) }),
            "unix" if rest.starts_with('/') => Ok(Endpoint::Unix { socket: PathBuf::from(rest) }),
            "unix" => Err(bad("unix:// needs an absolute socket path, e.g. unix:///run/buildkit/buildkitd.sock")),
            "tcp" => {
                let (host, port) = rest.trim_end_matches('/').rsplit_once(':').ok_or_else(|| bad("tcp:// needs host:port"))?;
                let port = port.parse().map_err(|_| bad("the port is not a number"))?;
                if host.is_empty() {
                    return Err(bad("tcp:// needs a host"));
                }
                Ok(Endpoint::Tcp { host: host.trim_start_matches('[').trim_end_matches(']').to_string(), port, tls: None })
            }
            "docker-container" | "kube-pod" | "podman-container" => Err(bad("this transport is not supported; expose buildkitd on a unix or tcp address")),
            _ => Err(bad("unknown scheme; expected docker://, unix:// or tcp://")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Docker { socket } => write!(f, "docker://{}", socket.display()),
            Endpoint::Unix { socket } => write!(f, "unix://{}", socket.display()),
            Endpoint::Tcp { host, port, .. } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Endpoint::Tcp { host, port, .. } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

impl Endpoint {
    /// Adds TLS settings (meaningful for `tcp://` only).
    pub fn with_tls(self, files: TlsFiles) -> Result<Self> {
        match self {
            Endpoint::Tcp { host, port, .. } => Ok(Endpoint::Tcp { host, port, tls: Some(files) }),
            other => Err(Error::Endpoint { url: other.to_string(), reason: "TLS certificates apply to tcp:// addresses only".into() }),
        }
    }

    /// Whether this is a Docker engine (exports with `moby` and pushes through the engine).
    pub fn is_docker(&self) -> bool {
        matches!(self, Endpoint::Docker { .. })
    }
}

/// A connection to BuildKit: the Control client and what is needed to open sessions.
#[derive(Clone)]
pub struct Connection {
    endpoint: Endpoint,
    control: ControlClient<Channel>,
}

/// An open session; dropping it closes the tunnel.
pub(crate) struct Session {
    /// The id to put in `SolveRequest.Session`.
    pub id: String,
    task: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// BuildKit's errors can carry several kilobytes of details in a header (`grpc-status-details-bin`).
const MAX_HEADER_LIST: u32 = 1 << 20;
/// Large enough for status batches with long logs.
const MAX_MESSAGE: usize = 64 << 20;

fn read_pem(path: &PathBuf, what: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(Error::io(path, what))
}

impl Connection {
    /// Connects and checks that BuildKit answers.
    pub async fn connect(endpoint: &Endpoint) -> Result<Connection> {
        let unavailable = |source: BoxError| Error::Unavailable { endpoint: endpoint.to_string(), source };
        let base = |uri: &'static str| {
            tonic::transport::Endpoint::from_static(uri)
                .connect_timeout(Duration::from_secs(10))
                .http2_max_header_list_size(MAX_HEADER_LIST)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true)
        };
        let channel = match endpoint {
            Endpoint::Docker { socket } => {
                // Fails early with the engine's own answer if the socket is not a Docker engine.
                docker::version(socket).await.map_err(|e| unavailable(e.into()))?;
                let socket = socket.clone();
                base("http://docker")
                    .connect_with_connector(tower::service_fn(move |_| {
                        let socket = socket.clone();
                        async move { docker::upgrade(&socket, "/grpc", &[]).await }
                    }))
                    .await
            }
            Endpoint::Unix { socket } => {
                let socket = socket.clone();
                base("http://buildkitd")
                    .connect_with_connector(tower::service_fn(move |_| {
                        let socket = socket.clone();
                        async move { tokio::net::UnixStream::connect(&socket).await.map(TokioIo::new) }
                    }))
                    .await
            }
            Endpoint::Tcp { host, port, tls } => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let mut ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{host}:{port}"))
                    .map_err(|e| Error::Endpoint { url: endpoint.to_string(), reason: e.to_string() })?
                    .connect_timeout(Duration::from_secs(10))
                    .http2_max_header_list_size(MAX_HEADER_LIST)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(true);
                if let Some(files) = tls {
                    let mut cfg = ClientTlsConfig::new().domain_name(files.server_name.clone().unwrap_or_else(|| host.clone()));
                    let ca = files
                        .ca
                        .as_ref()
                        .ok_or_else(|| Error::Endpoint { url: endpoint.to_string(), reason: "TLS needs the CA that signed buildkitd's certificate".into() })?;
                    cfg = cfg.ca_certificate(Certificate::from_pem(read_pem(ca, "read BuildKit CA")?));
                    match (&files.cert, &files.key) {
                        (Some(c), Some(k)) => cfg = cfg.identity(Identity::from_pem(read_pem(c, "read client certificate")?, read_pem(k, "read client key")?)),
                        (None, None) => {}
                        _ => return Err(Error::Endpoint { url: endpoint.to_string(), reason: "a client certificate needs its key and vice versa".into() }),
                    }
                    ep = ep.tls_config(cfg).map_err(|e| Error::Endpoint { url: endpoint.to_string(), reason: e.to_string() })?;
                }
                ep.connect().await
            }
        }
        .map_err(|e| unavailable(e.into()))?;
        let control = ControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
        Ok(Connection { endpoint: endpoint.clone(), control })
    }

    /// A Connection over an existing channel (for tests and protocol doubles).
    pub fn from_channel(endpoint: Endpoint, channel: Channel) -> Connection {
        Connection { endpoint, control: ControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE) }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The Control client.
    pub(crate) fn control(&self) -> ControlClient<Channel> {
        self.control.clone()
    }

    /// BuildKit's version: `Info` where the daemon has it, else the first worker's.
    pub async fn version(&self) -> Result<String> {
        let mut c = self.control();
        match c.info(InfoRequest {}).await {
            Ok(r) => {
                if let Some(v) = r.into_inner().buildkit_version {
                    return Ok(format!("{} {}", v.package, v.version));
                }
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => {}
            Err(s) => return Err(self.status_error("Info", s)),
        }
        let workers = c.list_workers(ListWorkersRequest::default()).await.map_err(|s| self.status_error("ListWorkers", s))?.into_inner();
        Ok(workers
            .record
            .first()
            .and_then(|w| w.buildkit_version.as_ref())
            .map(|v| format!("{} {}", v.package, v.version))
            .unwrap_or_else(|| "BuildKit (version not reported)".into()))
    }

    /// Streams image `name` out of the Docker engine's store in `docker save` format (the way a
    /// build exported with [`crate::Output::Engine`] reaches the signer without being pushed).
    pub async fn export_engine_image(&self, name: &str) -> Result<impl tokio::io::AsyncRead + Send + Unpin + 'static> {
        use futures_util::TryStreamExt;
        use http_body_util::BodyExt;
        let Endpoint::Docker { socket } = &self.endpoint else {
            return Err(Error::Request(format!("{} is not a Docker engine: only an engine keeps built images in its own store", self.endpoint)));
        };
        let what = format!("export {name} from the engine");
        let fail = |source: BoxError| Error::Protocol { endpoint: self.endpoint.to_string(), what: what.clone(), source };
        let resp = docker::get(socket, &format!("/images/{name}/get")).await.map_err(|e| fail(e.into()))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(fail(format!("{status}: {}", String::from_utf8_lossy(&body).trim()).into()));
        }
        let stream = resp.into_body().into_data_stream().map_err(std::io::Error::other);
        Ok(tokio_util::io::StreamReader::new(stream))
    }

    /// Removes image `name` from the Docker engine's store.
    pub async fn remove_engine_image(&self, name: &str) -> Result<()> {
        let Endpoint::Docker { socket } = &self.endpoint else { return Ok(()) };
        docker::remove_image(socket, name).await.map_err(|e| Error::Protocol {
            endpoint: self.endpoint.to_string(),
            what: format!("remove {name} from the engine"),
            source: e.into(),
        })
    }

    /// Maps a gRPC status from a call to the daemon.
    pub(crate) fn status_error(&self, what: &str, s: tonic::Status) -> Error {
        match s.code() {
            tonic::Code::Unavailable => Error::Unavailable { endpoint: self.endpoint.to_string(), source: Box::new(s) },
            _ => Error::Protocol { endpoint: self.endpoint.to_string(), what: what.to_string(), source: Box::new(s) },
        }
    }

    /// Opens a session serving `data`; BuildKit calls back through it during the solve.
    pub(crate) async fn open_session(&self, data: SessionData) -> Result<Session> {
        let id = crate::unique_id("kforge-session");
        let headers = session::headers(&id);
        let task = match &self.endpoint {
            Endpoint::Docker { socket } => {
                let http_headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let io = docker::upgrade(socket, "/session", &http_headers)
                    .await
                    .map_err(|e| Error::Unavailable { endpoint: self.endpoint.to_string(), source: format!("cannot open a session: {e}").into() })?;
                tokio::spawn(session::serve(io, data))
            }
            _ => {
                // buildkitd: the session is a Control.Session stream of opaque frames carrying HTTP/2.
                let (to_daemon, outbound) = tokio::sync::mpsc::channel::<BytesMessage>(16);
                let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
                for (k, v) in &headers {
                    let bad = || Error::Request(format!("session header {k} is not valid metadata"));
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).map_err(|_| bad())?;
                    req.metadata_mut().append(key, v.parse().map_err(|_| bad())?);
                }
                let mut inbound = self.control().session(req).await.map_err(|s| self.status_error("open session", s))?.into_inner();
                let (ours, theirs) = tokio::io::duplex(1 << 16);
                let (mut read_half, mut write_half) = tokio::io::split(theirs);
                tokio::spawn(async move {
                    let pump_in = async {
                        while let Some(Ok(msg)) = inbound.next().await {
                            if write_half.write_all(&msg.data).await.is_err() {
                                break;
                            }
                        }
                        let _ = write_half.shutdown().await;
                    };
                    let pump_out = async {
                        let mut buf = vec![0u8; 32 << 10];
                        loop {
                            match read_half.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to_daemon.send(BytesMessage { data: Bytes::copy_from_slice(&buf[..n]) }).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    };
                    tokio::join!(pump_in, pump_out, session::serve(TokioIo::new(ours), data));
                })
            }
        };
        Ok(Session { id, task })
    }
}

/// An error and its causes, joined.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_transports() {
        assert_eq!("docker://".parse::<Endpoint>().expect("docker"), Endpoint::Docker { socket: DEFAULT_DOCKER_SOCKET.into() });
        assert_eq!("docker:///tmp/d.sock".parse::<Endpoint>().expect("docker path"), Endpoint::Docker { socket: "/tmp/d.sock".into() });
        assert_eq!("unix:///run/buildkit/buildkitd.sock".parse::<Endpoint>().expect("unix"), Endpoint::Unix { socket: "/run/buildkit/buildkitd.sock".into() });
        assert_eq!("tcp://bk.example:1234".parse::<Endpoint>().expect("tcp"), Endpoint::Tcp { host: "bk.example".into(), port: 1234, tls: None });
        assert_eq!("tcp://[::1]:1234".parse::<Endpoint>().expect("tcp6").to_string(), "tcp://[::1]:1234");
    }

    #[test]
    fn bad_addresses_say_what_is_expected() {
        for (url, want) in [
            ("buildkitd.sock", "expected docker://"),
            ("unix://relative.sock", "absolute socket path"),
            ("tcp://host", "host:port"),
            ("tcp://host:http", "not a number"),
            ("kube-pod://buildkitd", "not supported"),
            ("http://x", "unknown scheme"),
        ] {
            let e = url.parse::<Endpoint>().expect_err(url).to_string();
            assert!(e.contains(want) && e.contains(url), "{url}: {e}");
        }
        let e = "unix:///s".parse::<Endpoint>().expect("unix").with_tls(TlsFiles::default()).expect_err("tls on unix").to_string();
        assert!(e.contains("tcp:// addresses only"), "{e}");
    }

    #[tokio::test]
    async fn an_absent_socket_is_unavailable_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("none.sock");
        for ep in [Endpoint::Unix { socket: sock.clone() }, Endpoint::Docker { socket: sock.clone() }] {
            let e = Connection::connect(&ep).await.err().expect("must fail").to_string();
            assert!(e.contains("unreachable") && e.contains(&sock.display().to_string()), "{e}");
        }
    }
}
