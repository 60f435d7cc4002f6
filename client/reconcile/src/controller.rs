//! The global reconcile loop: watches fill stores and wake the loop; after a short quiet spell
//! one pass plans the whole cluster and writes only what differs.

use std::future::Future;
use std::time::Instant;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::api::Module;
use crate::apply::{FINALIZER, Writes};
use crate::builds::Builds;
use crate::cluster::Stores;
use crate::config::Config;
use crate::error::Result;
use crate::events::Events;
use crate::facts;
use crate::images::{ImageCache, run_lookups};
use crate::labels::{self, ready_label};
use crate::leader::Elector;
use crate::metrics::Metrics;
use crate::node_table::NodeTable;
use crate::plan::{Facts, Plan};
use crate::pods::LoaderPods;

/// Room for wake-ups; when full, a pass is pending anyway.
const TRIGGER_CAPACITY: usize = 64;

/// The controller: build it with [`Controller::new`], take [`Controller::metrics`] for the
/// health and metrics endpoints, then [`Controller::run`] it.
pub struct Controller {
    client: Client,
    config: Config,
    metrics: Metrics,
}

impl Controller {
    /// A controller using `client`, its counters registered in `registry`.
    pub fn new(client: Client, config: Config, registry: &mut prometheus_client::registry::Registry) -> Self {
        Controller { client, config, metrics: Metrics::new(registry) }
    }

    /// The counters and the readiness flag.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Runs until `shutdown` completes: watches, passes while leading, builds and lookups.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Controller { client, config, metrics } = self;
        // Refuse a bad builder endpoint before anything is started.
        config.builder.as_ref().map(crate::builds::connect).transpose()?;
        let (trigger, mut wake) = mpsc::channel(TRIGGER_CAPACITY);
        let (stores, watches) = start_watches(&client, trigger.clone());
        {
            let stores = stores.clone();
            let metrics = metrics.clone();
            let trigger = trigger.clone();
            tokio::spawn(async move {
                if wait_ready(&stores).await {
                    metrics.set_ready();
                    tracing::info!("caches synced");
                    let _ = trigger.try_send(());
                }
            });
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (leading_tx, mut leading) = watch::channel(config.leader_election.is_none());
        let elector = config.leader_election.clone().map(|lease| tokio::spawn(Elector::new(client.clone(), lease, metrics.clone()).run(leading_tx, stop_rx)));
        let reconciler = Reconciler::new(client, config, stores, metrics.clone(), trigger.clone())?;
        let mut resync = tokio::time::interval(reconciler.config.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        // Without election the sender is gone at once: stop listening rather than spin.
        let mut election = elector.is_some();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                changed = leading.changed(), if election => election = changed.is_ok(),
                woken = wake.recv() => if woken.is_none() { break },
                _ = resync.tick() => reconciler.refresh_images(),
            }
            // Debounce: wait for quiet, but not forever.
            let first = tokio::time::Instant::now();
            while first.elapsed() < reconciler.config.debounce_max {
                match tokio::time::timeout(reconciler.config.debounce, wake.recv()).await {
                    Ok(Some(())) => continue,
                    _ => break,
                }
            }
            if *leading.borrow() && metrics.ready() {
                reconciler.pass().await;
            }
        }
        let _ = stop_tx.send(true);
        if let Some(e) = elector {
            let _ = e.await;
        }
        for w in watches {
            w.abort();
        }
        Ok(())
    }
}

/// Runs a [`Controller`] with a fresh registry of its own (see [`Controller::new`] to share one).
pub async fn run(client: Client, config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut registry = prometheus_client::registry::Registry::default();
    Controller::new(client, config, &mut registry).run(shutdown).await
}

/// Keeps `writer` in step with `api` (reconnecting with backoff after any error), storing each
/// object as `slim` leaves it (managed fields always dropped), and sends a wake-up on every change.
pub(crate) async fn watch_into<K>(api: Api<K>, cfg: watcher::Config, slim: fn(&mut K), writer: Writer<K>, trigger: mpsc::Sender<()>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let kind = K::kind(&Default::default()).to_string();
    let stream = reflector::reflector(
        writer,
        watcher(api, cfg).default_backoff().modify(move |o: &mut K| {
            o.managed_fields_mut().clear();
            slim(o);
        }),
    );
    tokio::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => {
                let _ = trigger.try_send(());
            }
            Err(e) => tracing::warn!(%kind, error = %e, "watch failed; reconnecting"),
        }
    }
}

/// Stores an object whole (but for managed fields).
fn whole<K>(_: &mut K) {}

/// Feeds `apply` (a compact table's) from `api`, as [`watch_into`] does for stores.
async fn watch_table<K>(api: Api<K>, cfg: watcher::Config, apply: impl Fn(watcher::Event<K>), trigger: mpsc::Sender<()>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).to_string();
    let stream = watcher(api, cfg).default_backoff();
    tokio::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                let change = matches!(event, watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone);
                apply(event);
                if change {
                    let _ = trigger.try_send(());
                }
            }
            Err(e) => tracing::warn!(%kind, error = %e, "watch failed; reconnecting"),
        }
    }
}

fn start_watches(client: &Client, trigger: mpsc::Sender<()>) -> (Stores, Vec<tokio::task::JoinHandle<()>>) {
    fn spawn<K>(
        api: Api<K>,
        cfg: watcher::Config,
        slim: fn(&mut K),
        trigger: &mpsc::Sender<()>,
        tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> reflector::Store<K>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let writer = Writer::default();
        let store = writer.as_reader();
        tasks.push(tokio::spawn(watch_into(api, cfg, slim, writer, trigger.clone())));
        store
    }
    let mut tasks = Vec::new();
    let all = watcher::Config::default();
    let t = &trigger;
    let stores = Stores {
        modules: spawn(Api::<Module>::all(client.clone()), all.clone(), whole, t, &mut tasks),
        nodes: {
            let nodes = NodeTable::default();
            let table = nodes.clone();
            tasks.push(tokio::spawn(watch_table(Api::<Node>::all(client.clone()), all.clone(), move |e| table.apply(e), trigger.clone())));
            nodes
        },
        daemonsets: spawn(
            Api::<DaemonSet>::all(client.clone()),
            all.clone().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER)),
            facts::slim_daemonset,
            t,
            &mut tasks,
        ),
        pods: {
            let pods = LoaderPods::default();
            let cfg = all.clone().labels(&format!("{}={}", labels::COMPONENT, labels::LOADER));
            let table = pods.clone();
            tasks.push(tokio::spawn(watch_table(Api::<Pod>::all(client.clone()), cfg, move |e| table.apply(e), trigger.clone())));
            pods
        },
        configmaps: spawn(Api::<ConfigMap>::all(client.clone()), all.clone(), whole, t, &mut tasks),
        // Service-account tokens are many and never referenced by a Module.
        secrets: spawn(Api::<Secret>::all(client.clone()), all.fields("type!=kubernetes.io/service-account-token"), whole, t, &mut tasks),
    };
    (stores, tasks)
}

async fn wait_ready(s: &Stores) -> bool {
    let stores = s.modules.wait_until_ready().await.is_ok()
        && s.daemonsets.wait_until_ready().await.is_ok()
        && s.configmaps.wait_until_ready().await.is_ok()
        && s.secrets.wait_until_ready().await.is_ok();
    if stores {
        s.nodes.wait_until_ready().await;
        s.pods.wait_until_ready().await;
    }
    stores
}

/// One pass's machinery: stores in, writes out.
pub(crate) struct Reconciler {
    pub(crate) config: Config,
    pub(crate) stores: Stores,
    pub(crate) writes: Writes,
    pub(crate) images: ImageCache,
    pub(crate) builds: Builds,
    pub(crate) metrics: Metrics,
    trigger: mpsc::Sender<()>,
}

impl Reconciler {
    pub(crate) fn new(client: Client, config: Config, stores: Stores, metrics: Metrics, trigger: mpsc::Sender<()>) -> Result<Self> {
        let events = Events::new(&client, config.events, metrics.clone());
        let images = ImageCache::new(config.missing_ttl);
        let builder = config.builder.as_ref().map(crate::builds::connect).transpose()?;
        let builds = Builds::new(builder, config.max_builds, config.build_backoff, images.clone(), metrics.clone(), events.clone(), trigger.clone());
        let writes = Writes { client, metrics: metrics.clone(), events };
        Ok(Reconciler { config, stores, writes, images, builds, metrics, trigger })
    }

    /// Looks every image known present for longer than the resync period up again.
    pub(crate) fn refresh_images(&self) {
        let due = self.images.stale(self.config.resync, Instant::now());
        self.lookup(due);
    }

    fn lookup(&self, lookups: Vec<crate::plan::Lookup>) {
        let claimed = self.images.claim(&lookups);
        if claimed.is_empty() {
            return;
        }
        let trigger = self.trigger.clone();
        let task = run_lookups(claimed, self.stores.clone(), self.config.registry.clone(), self.images.clone(), self.metrics.clone(), self.config.max_lookups);
        tokio::spawn(async move {
            task.await;
            let _ = trigger.try_send(());
        });
    }

    /// The planner's view of the cluster now, and the Modules being deleted.
    pub(crate) fn observe(&self) -> (Vec<Module>, Vec<Module>, Vec<crate::plan::NodeFacts>, Facts) {
        let (live, deleting) = self.stores.modules();
        let nodes = self.stores.node_facts();
        let now = Instant::now();
        let mut images = self.images.facts(now);
        self.lookup(self.images.expired(now));
        images.extend(self.builds.overlay(now));
        let facts = Facts { images, objects: self.stores.objects(&live), daemonsets: self.stores.daemonsets() };
        (live, deleting, nodes, facts)
    }

    /// One pass: plan, then act. Failures are logged and left to the next pass.
    pub(crate) async fn pass(&self) {
        self.metrics.pass();
        let (live, deleting, nodes, facts) = self.observe();
        let plan = (self.config.planner)(&live, &nodes, &facts, Time(k8s_openapi::jiff::Timestamp::now()));
        drop(nodes);
        self.act(&live, &deleting, &facts, &plan).await;
    }

    pub(crate) async fn act(&self, live: &[Module], deleting: &[Module], facts: &Facts, plan: &Plan) {
        let log = |what: &str, e: crate::error::Error| {
            if e.is_conflict() {
                tracing::info!(error = %e, "{what}: conflict; retrying next pass");
            } else {
                tracing::warn!(error = %e, "{what} failed; retrying next pass");
            }
        };
        for m in live {
            if let Err(e) = self.writes.add_finalizer(m).await {
                log("add finalizer", e);
            }
        }
        let mut deleted = std::collections::BTreeSet::new();
        for m in deleting {
            if let Err(e) = self.finish_deletion(m, &mut deleted).await {
                log("module deletion", e);
            }
        }
        for mp in &plan.modules {
            let module = format!("{}/{}", mp.namespace, mp.name);
            for ds in &mp.daemonsets {
                let key = (ds.namespace().unwrap_or_else(|| mp.namespace.clone()), ds.name_any());
                if let Err(e) = self.writes.daemonset(ds, facts.daemonsets.get(&key).map(|d| &**d), &mp.name).await {
                    log(&format!("apply DaemonSet of Module {module}"), e);
                }
            }
        }
        for key in plan.garbage.iter().filter(|k| !deleted.contains(*k)) {
            if let Some(ds) = facts.daemonsets.get(key)
                && let Err(e) = self.writes.delete_daemonset(ds).await
            {
                log("delete DaemonSet", e);
            }
        }
        for (name, changes) in &plan.node_labels {
            let Some(live) = self.stores.nodes.labels(name) else { continue };
            if let Err(e) = self.writes.node_labels(name, &live, changes).await {
                log("node labels", e);
            }
        }
        for mp in &plan.modules {
            let Some(module) = live.iter().find(|m| m.namespace().as_deref() == Some(mp.namespace.as_str()) && m.name_any() == mp.name) else { continue };
            if let Err(e) = self.writes.status(module, &mp.status).await {
                log("module status", e);
            }
        }
        self.lookup(plan.lookups.clone());
        let now = Instant::now();
        for job in &plan.builds {
            self.builds.start(job, now);
        }
    }

    /// A Module being deleted: its DaemonSets go first (their pods unload the module), then its
    /// ready labels, then the finalizer.
    async fn finish_deletion(&self, module: &Module, deleted: &mut std::collections::BTreeSet<(String, String)>) -> Result<()> {
        if !module.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let daemonsets = self.stores.module_daemonsets(module);
        for ds in &daemonsets {
            deleted.insert((ds.namespace().unwrap_or_default(), ds.name_any()));
            self.writes.delete_daemonset(ds).await?;
        }
        if !daemonsets.is_empty() || self.stores.module_has_pods(module) {
            return Ok(());
        }
        let label = ready_label(&module.namespace().unwrap_or_default(), &module.name_any());
        if self.stores.nodes.any_labelled(&label) {
            // The node-label step of this pass removes them (the planner no longer sees the Module).
            return Ok(());
        }
        self.writes.remove_finalizer(module).await
    }
}

#[cfg(test)]
mod tests;
