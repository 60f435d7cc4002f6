//! Small helpers over kube's `Api`.

use kube::api::Api;

use crate::error::{Error, Result};

/// `GET` that maps "not found" to `None`. Unlike kube's `get_opt` this also recognises the plain-text
/// `404 page not found` an API server answers for an API group it does not serve (vanilla Kubernetes
/// and `image.openshift.io`), which kube turns into a `Status` with code 404 but no reason.
pub(crate) async fn get_opt<K>(api: &Api<K>, name: &str, what: impl FnOnce() -> String) -> Result<Option<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(object) => Ok(Some(object)),
        Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 404 => Ok(None),
        Err(source) => Err(Error::Kube { what: what(), source }),
    }
}
