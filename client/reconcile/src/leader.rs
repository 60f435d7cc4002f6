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
            self.metrics.write("lease");
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
        self.metrics.write("lease");
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
        self.metrics.write("lease");
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
