//! Who is calling: identities from a verified client certificate (mutual TLS) or a bearer token.

use openssl::nid::Nid;
use openssl::x509::X509;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::config::TokenConfig;

/// An authenticated (or anonymous loopback) caller, put in every request's extensions by
/// [`crate::ServiceLayer`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// Names the caller answers to: `cn:…`, `subject:…`, `dns:…`, `uri:…`, `email:…`, `token:…` or `anonymous`.
    pub identities: Vec<String>,
    /// False only for anonymous callers of a service without authentication.
    pub authenticated: bool,
}

impl Caller {
    /// The main identity, for logs and the audit.
    pub fn name(&self) -> &str {
        self.identities.first().map(String::as_str).unwrap_or("anonymous")
    }

    /// The caller of `req`, as the service layer identified it.
    pub fn of<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions().get::<Caller>().cloned().ok_or_else(|| Status::internal("the caller was not identified: serve through kforge_server::serve"))
    }

    /// Whether the caller is one of `allow` (`*` means any authenticated caller); an empty list allows all.
    pub fn allowed(&self, allow: &[String]) -> bool {
        allow.is_empty() || allow.iter().any(|a| (a == "*" && self.authenticated) || self.identities.iter().any(|i| i == a))
    }
}

/// Checks credentials on every request.
pub(crate) struct Authenticator {
    tokens: Vec<(String, Vec<u8>)>,
    requires_auth: bool,
}

impl Authenticator {
    pub fn new(tokens: &[TokenConfig], requires_auth: bool) -> Self {
        let tokens = tokens.iter().filter_map(|t| Some((t.name.clone(), hex::decode(t.sha256.to_ascii_lowercase()).ok()?))).collect();
        Authenticator { tokens, requires_auth }
    }

    /// Who sent a request with these headers over a connection with these client certificates.
    pub fn identify(&self, headers: &http::HeaderMap, peer_certs: Option<&[tonic::transport::CertificateDer<'static>]>) -> Result<Caller, Status> {
        if let Some(value) = headers.get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .ok_or_else(|| Status::unauthenticated("the authorization header must be \"Bearer TOKEN\""))?;
            let hash = Sha256::digest(token.trim().as_bytes());
            let found = self.tokens.iter().find(|(_, h)| h.len() == hash.len() && openssl::memcmp::eq(h, &hash));
            return match found {
                Some((name, _)) => Ok(Caller { identities: vec![format!("token:{name}")], authenticated: true }),
                None => Err(Status::unauthenticated("bearer token not recognised")),
            };
        }
        if let Some(certs) = peer_certs
            && let Some(leaf) = certs.first()
        {
            let identities = cert_identities(leaf.as_ref()).map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
            return Ok(Caller { identities, authenticated: true });
        }
        if self.requires_auth {
            return Err(Status::unauthenticated("authenticate with a client certificate (mutual TLS) or a bearer token"));
        }
        Ok(Caller { identities: vec!["anonymous".into()], authenticated: false })
    }
}

/// The identities a client certificate carries.
pub fn cert_identities(der: &[u8]) -> Result<Vec<String>, openssl::error::ErrorStack> {
    let cert = X509::from_der(der)?;
    let mut ids = Vec::new();
    if let Some(cn) = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next().and_then(|e| e.data().to_string().ok()) {
        ids.push(format!("cn:{cn}"));
    }
    let subject: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|e| format!("{}={}", e.object().nid().short_name().unwrap_or("?"), e.data().to_string().unwrap_or_default()))
        .collect();
    ids.push(format!("subject:{}", subject.join(", ")));
    if let Some(sans) = cert.subject_alt_names() {
        for san in sans.iter() {
            if let Some(d) = san.dnsname() {
                ids.push(format!("dns:{d}"));
            } else if let Some(u) = san.uri() {
                ids.push(format!("uri:{u}"));
            } else if let Some(e) = san.email() {
                ids.push(format!("email:{e}"));
            }
        }
    }
    Ok(ids)
}
