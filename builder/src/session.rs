//! The BuildKit session: kforge is the gRPC *server* of a tunnel BuildKit opens back to it, and
//! answers health checks, registry credentials (`Auth/Credentials`) and build secrets
//! (`Secrets/GetSecret`). Secrets travel only here, never as build arguments.

use std::collections::BTreeMap;
use std::sync::Arc;

use kforge_proto::buildkit::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use kforge_proto::buildkit::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use kforge_proto::buildkit::moby::filesync::v1::auth_server::{Auth, AuthServer};
use kforge_proto::buildkit::moby::filesync::v1::{CredentialsRequest, CredentialsResponse};
use tonic::{Request, Response, Status};

use crate::credentials::{Anonymous, Credentials};

/// The gRPC methods a session serves, announced to BuildKit when it opens.
pub(crate) const METHODS: [&str; 3] = ["/grpc.health.v1.Health/Check", "/moby.filesync.v1.Auth/Credentials", "/moby.buildkit.secrets.v1.Secrets/GetSecret"];

/// What the session hands out.
#[derive(Clone)]
pub(crate) struct SessionData {
    /// Build secrets by id.
    pub secrets: Arc<BTreeMap<String, Vec<u8>>>,
    /// Registry credentials by host.
    pub credentials: Arc<dyn Credentials>,
}

impl Default for SessionData {
    fn default() -> Self {
        SessionData { secrets: Arc::default(), credentials: Arc::new(Anonymous) }
    }
}

/// The headers (HTTP for a Docker engine, gRPC metadata for buildkitd) that open a session.
pub(crate) fn headers(id: &str) -> Vec<(String, String)> {
    let mut h = vec![
        ("x-docker-expose-session-uuid".to_string(), id.to_string()),
        ("x-docker-expose-session-name".to_string(), "kforge".to_string()),
        ("x-docker-expose-session-sharedkey".to_string(), String::new()),
    ];
    h.extend(METHODS.iter().map(|m| ("x-docker-expose-session-grpc-method".to_string(), m.to_string())));
    h
}

struct SecretStore(Arc<BTreeMap<String, Vec<u8>>>);

#[tonic::async_trait]
impl Secrets for SecretStore {
    async fn get_secret(&self, req: Request<GetSecretRequest>) -> Result<Response<GetSecretResponse>, Status> {
        let id = req.into_inner().id;
        match self.0.get(&id) {
            Some(data) => {
                tracing::debug!(secret = %id, "secret served to BuildKit");
                Ok(Response::new(GetSecretResponse { data: data.clone() }))
            }
            None => Err(Status::not_found(format!("secret {id} not found: the build request has no secret with that id"))),
        }
    }
}

struct CredentialStore(Arc<dyn Credentials>);

#[tonic::async_trait]
impl Auth for CredentialStore {
    async fn credentials(&self, req: Request<CredentialsRequest>) -> Result<Response<CredentialsResponse>, Status> {
        let host = req.into_inner().host;
        // An identity token goes in Secret with no username.
        let resp = self.0.lookup(&host).map(|(username, secret)| CredentialsResponse { username, secret }).unwrap_or_default();
        tracing::debug!(%host, anonymous = resp.secret.is_empty(), "registry credentials asked for");
        Ok(Response::new(resp))
    }
}

/// Serves the session over an HTTP/2 connection (BuildKit is the client) until it closes.
pub(crate) async fn serve<IO>(io: IO, data: SessionData)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (_reporter, health) = tonic_health::server::health_reporter();
    let routes = tonic::service::Routes::new(health)
        .add_service(SecretsServer::new(SecretStore(data.secrets)))
        .add_service(AuthServer::new(CredentialStore(data.credentials)));
    let service = hyper_util::service::TowerToHyperService::new(routes);
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection(io, service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "session connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use kforge_proto::buildkit::moby::buildkit::secrets::v1::secrets_client::SecretsClient;
    use kforge_proto::buildkit::moby::filesync::v1::auth_client::AuthClient;

    /// A client connected to a session served over an in-memory pipe.
    async fn session(data: SessionData) -> tonic::transport::Channel {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve(TokioIo::new(server_io), data));
        let mut io = Some(client_io);
        tonic::transport::Endpoint::from_static("http://session")
            .connect_with_connector(tower::service_fn(move |_| {
                let io = io.take();
                async move { io.map(TokioIo::new).ok_or_else(|| std::io::Error::other("one connection only")) }
            }))
            .await
            .expect("connects")
    }

    #[tokio::test]
    async fn serves_secrets_and_credentials() {
        let creds: BTreeMap<String, (String, String)> = [("reg.example:5000".to_string(), ("u".to_string(), "p".to_string()))].into();
        let data = SessionData { secrets: Arc::new([("token".to_string(), b"s3cr3t".to_vec())].into_iter().collect()), credentials: Arc::new(creds) };
        let ch = session(data).await;
        let got = SecretsClient::new(ch.clone()).get_secret(GetSecretRequest { id: "token".into(), ..Default::default() }).await.expect("secret");
        assert_eq!(got.into_inner().data, b"s3cr3t");
        let missing = SecretsClient::new(ch.clone()).get_secret(GetSecretRequest { id: "nope".into(), ..Default::default() }).await;
        assert_eq!(missing.expect_err("unknown secret").code(), tonic::Code::NotFound);
        let c = AuthClient::new(ch.clone()).credentials(CredentialsRequest { host: "reg.example:5000".into() }).await.expect("creds").into_inner();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("u", "p"));
        let anon = AuthClient::new(ch).credentials(CredentialsRequest { host: "other.example".into() }).await.expect("anon").into_inner();
        assert!(anon.username.is_empty() && anon.secret.is_empty());
    }
}
