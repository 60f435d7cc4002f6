//! The one tower layer in front of every kforge service: it identifies the caller (client
//! certificate or bearer token) and puts it in the request's extensions, admits the request under
//! the concurrency cap and the caller's request rate, and counts it in the metrics. A streaming
//! request holds its slot until its response stream ends. Health and reflection pass untouched.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::auth::Authenticator;
use crate::limits::Limiter;
use crate::metrics::{Metrics, RequestGuard};

/// What the layer checks and counts with.
pub(crate) struct Shared {
    pub auth: Authenticator,
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<Metrics>,
}

/// The layer.
#[derive(Clone)]
pub struct ServiceLayer {
    shared: Arc<Shared>,
}

impl ServiceLayer {
    pub(crate) fn new(shared: Shared) -> Self {
        ServiceLayer { shared: Arc::new(shared) }
    }
}

impl<S> tower::Layer<S> for ServiceLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner, shared: self.shared.clone() }
    }
}

/// A service behind [`ServiceLayer`].
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// What an admitted request holds until its response ends.
struct Admission {
    _permit: OwnedSemaphorePermit,
    _guard: RequestGuard,
}

fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

impl Shared {
    fn admit<B>(&self, req: &mut http::Request<B>) -> Result<Admission, Status> {
        let certs = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs());
        let caller = self.auth.identify(req.headers(), certs.as_deref().map(Vec::as_slice))?;
        let permit = self.limiter.admit()?;
        self.limiter.take_request(caller.name())?;
        let guard = self.metrics.request(req.uri().path());
        req.extensions_mut().insert(caller);
        Ok(Admission { _permit: permit, _guard: guard })
    }
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<GuardedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone is ready-less; the instance polled ready handles this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let admission = if exempt(req.uri().path()) { Ok(None) } else { self.shared.admit(&mut req).map(Some) };
        Box::pin(async move {
            let admission = match admission {
                Ok(a) => a,
                Err(status) => return Ok(status.into_http::<GuardedBody<ResBody>>()),
            };
            let resp = inner.call(req).await?;
            Ok(resp.map(|body| GuardedBody { inner: Some(body), _admission: admission }))
        })
    }
}

/// A response body that keeps its request admitted until it ends (or is dropped).
pub struct GuardedBody<B> {
    inner: Option<B>,
    _admission: Option<Admission>,
}

impl<B> Default for GuardedBody<B> {
    fn default() -> Self {
        GuardedBody { inner: None, _admission: None }
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_else(|| SizeHint::with_exact(0))
    }
}
