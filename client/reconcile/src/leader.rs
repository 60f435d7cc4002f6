//! Leader election through a `coordination.k8s.io/v1` Lease: the holder renews it every
//! `renew_every`; another replica takes it over once `renewTime + leaseDurationSeconds` has
//! passed. Optimistic concurrency (resourceVersion) settles races: a 409 means someone else won.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::config::LeaseConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// One replica's side of the election.
pub(crate) struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    metrics: Metrics,
}

impl Elector {
    pub(crate) fn new(client: Client, config: LeaseConfig, metrics: Metrics) -> Self {
        Elector { api: Api::namespaced(client, &config.namespace), config, metrics }
    }

    fn object(&self) -> String {
        format!("Lease {}/{}", self.config.namespace, self.config.name)
    }

    fn spec(&self, now: Timestamp, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Acquires, renews or fails to get the Lease; whether this replica holds it now.
    pub(crate) async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.config.name).await.map_err(Error::kube("get", self.object()))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.config.name.clone()), namespace: Some(self.config.namespace.clone()), ..Default::default() },
                spec: Some(self.spec(now, 0, None)),
            };
            self.metrics.lease_write();
            return match self.api.create(&PostParams::default(), &lease).await.map_err(Error::kube("create", self.object())) {
                Ok(_) => Ok(true),
                Err(e) if e.is_conflict() => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.config.identity.as_str());
        let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
        let expired = spec.renew_time.as_ref().is_none_or(|t| t.0 + duration < now);
        if !mine && holder.is_some() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time.clone() } else { None };
        lease.spec = Some(self.spec(now, transitions, acquired));
        self.metrics.lease_write();
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await.map_err(Error::kube("update", self.object())) {
            Ok(_) => Ok(true),
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (clears the holder) if this replica holds it.
    pub(crate) async fn step_down(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await.map_err(Error::kube("get", self.object()))? else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(self.config.identity.as_str())) else { return Ok(()) };
        spec.holder_identity = None;
        spec.renew_time = None;
        self.metrics.lease_write();
        self.api.replace(&self.config.name, &PostParams::default(), &lease).await.map_err(Error::kube("release", self.object()))?;
        Ok(())
    }

    /// Keeps trying every `renew_every` and publishes whether this replica leads, until
    /// `stop` fires; then steps down. Leadership is lost when renewal has failed for longer
    /// than the lease lasts.
    pub(crate) async fn run(self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let mut last_renewal: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(self.config.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewal = Some(tokio::time::Instant::now());
                    if !*leading.borrow() {
                        tracing::info!(lease = %self.object(), identity = %self.config.identity, "became leader");
                    }
                    leading.send_replace(true);
                }
                Ok(false) => {
                    if leading.send_replace(false) {
                        tracing::warn!(lease = %self.object(), "lost the lease to another replica");
                    }
                    last_renewal = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lease");
                    if last_renewal.is_none_or(|t| t.elapsed() > self.config.lease_duration.saturating_sub(Duration::from_secs(1))) {
                        leading.send_replace(false);
                    }
                }
            }
        }
        leading.send_replace(false);
        if let Err(e) = self.step_down().await {
            tracing::warn!(error = %e, "cannot release the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kforge/leases/kforge-reconciler";

    fn elector() -> (Elector, Handle) {
        let (svc, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        (Elector::new(client, LeaseConfig::new("kforge", "me"), Metrics::default()), api)
    }

    fn lease(holder: &str, renewed_ago: i64) -> Value {
        let renewed = Timestamp::now() - SignedDuration::from_secs(renewed_ago);
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "kforge-reconciler", "namespace": "kforge", "resourceVersion": "3"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": MicroTime(renewed), "leaseTransitions": 2}
        })
    }

    async fn answer(api: &mut Handle, method: Method, path: &str, status: StatusCode, reply: Value) -> Value {
        let (req, send) = tokio::time::timeout(std::time::Duration::from_secs(5), api.next_request()).await.expect("request in time").expect("alive");
        assert_eq!((req.method(), req.uri().path()), (&method, path));
        let body = req.into_body().collect_bytes().await.expect("body");
        send.send_response(Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).expect("json"))).expect("response"));
        if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).expect("json body") }
    }

    async fn quiet(api: &mut Handle) {
        if let Ok(Some((req, _))) = tokio::time::timeout(std::time::Duration::from_millis(50), api.next_request()).await {
            panic!("an unexpected request: {} {}", req.method(), req.uri());
        }
    }

    #[tokio::test]
    async fn a_free_lease_is_created_and_held() {
        let (e, mut api) = elector();
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
        let (held, ()) = tokio::join!(e.try_acquire_or_renew(), async {
            answer(&mut api, Method::GET, PATH, StatusCode::NOT_FOUND, not_found).await;
            let body = answer(&mut api, Method::POST, "/apis/coordination.k8s.io/v1/namespaces/kforge/leases", StatusCode::CREATED, lease("me", 0)).await;
            assert_eq!(body["spec"]["holderIdentity"], "me");
            assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        });
        assert!(held.expect("no error"));
        quiet(&mut api).await;
    }

    #[tokio::test]
    async fn a_fresh_lease_of_another_holder_is_left_alone() {
        let (e, mut api) = elector();
        let (held, ()) = tokio::join!(e.try_acquire_or_renew(), async {
            answer(&mut api, Method::GET, PATH, StatusCode::OK, lease("other", 3)).await;
        });
        assert!(!held.expect("no error"));
        quiet(&mut api).await;
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_a_race_lost_on_conflict() {
        let (e, mut api) = elector();
        let (held, ()) = tokio::join!(e.try_acquire_or_renew(), async {
            answer(&mut api, Method::GET, PATH, StatusCode::OK, lease("other", 60)).await;
            let body = answer(&mut api, Method::PUT, PATH, StatusCode::OK, lease("me", 0)).await;
            assert_eq!(body["spec"]["holderIdentity"], "me");
            assert_eq!(body["spec"]["leaseTransitions"], 3);
            assert_eq!(body["metadata"]["resourceVersion"], "3");
        });
        assert!(held.expect("no error"));
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "modified"});
        let (held, ()) = tokio::join!(e.try_acquire_or_renew(), async {
            answer(&mut api, Method::GET, PATH, StatusCode::OK, lease("other", 60)).await;
            answer(&mut api, Method::PUT, PATH, StatusCode::CONFLICT, conflict).await;
        });
        assert!(!held.expect("a conflict is no error"));
    }

    #[tokio::test]
    async fn the_holder_renews_and_steps_down_by_clearing_the_holder() {
        let (e, mut api) = elector();
        let (held, ()) = tokio::join!(e.try_acquire_or_renew(), async {
            answer(&mut api, Method::GET, PATH, StatusCode::OK, lease("me", 4)).await;
            let body = answer(&mut api, Method::PUT, PATH, StatusCode::OK, lease("me", 0)).await;
            assert_eq!(body["spec"]["leaseTransitions"], 2, "a renewal is no transition");
        });
        assert!(held.expect("no error"));
        let (done, ()) = tokio::join!(e.step_down(), async {
            answer(&mut api, Method::GET, PATH, StatusCode::OK, lease("me", 1)).await;
            let body = answer(&mut api, Method::PUT, PATH, StatusCode::OK, lease("", 1)).await;
            assert!(body["spec"].get("holderIdentity").is_none());
        });
        done.expect("stepped down");
    }

    #[tokio::test]
    async fn the_loop_reports_not_leading_while_another_holds_the_lease() {
        let (e, mut api) = elector();
        let (leading_tx, leading) = watch::channel(true);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(e.run(leading_tx, stop_rx));
        answer(&mut api, Method::GET, PATH, StatusCode::OK, lease("other", 1)).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!*leading.borrow());
        stop_tx.send(true).expect("send");
        // Stepping down reads the Lease and, not holding it, writes nothing.
        answer(&mut api, Method::GET, PATH, StatusCode::OK, lease("other", 1)).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), task).await.expect("stops").expect("no panic");
        quiet(&mut api).await;
    }
}
