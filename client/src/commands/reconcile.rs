//! `kforge reconcile`: the controller that turns KMM Modules into digest-pinned module-loader and
//! device-plugin DaemonSets, building and signing missing images through the Builder service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use kforge_reconcile::{BuilderEndpoint, Config, Controller, LeaseConfig};

/// Arguments of `kforge reconcile`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kforge Builder service that builds and signs missing images (http://… or https://…);
    /// without it, Modules whose images are missing report so and wait.
    #[arg(long, value_name = "URL", env = "KFORGE_BUILDER")]
    builder: Option<String>,
    /// CA certificate (PEM) the Builder service's TLS certificate chains to.
    #[arg(long, requires = "builder")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS to the Builder service.
    #[arg(long, requires_all = ["builder", "client_key"])]
    client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS to the Builder service.
    #[arg(long, requires_all = ["builder", "client_cert"])]
    client_key: Option<PathBuf>,
    /// A file holding the bearer token for the Builder service.
    #[arg(long, requires = "builder")]
    token_file: Option<PathBuf>,
    /// Health (/healthz, /readyz) and Prometheus metrics (/metrics) on this address.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// How often image tags are resolved again and a full pass runs without events (e.g. 30s, 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    resync: Duration,
    /// Builds at once.
    #[arg(long, default_value_t = 4)]
    max_builds: usize,
    /// Take part in leader election (for more than one replica) through a Lease in this namespace.
    #[arg(long, value_name = "NAMESPACE")]
    leader_election: Option<String>,
    /// The Lease's name.
    #[arg(long, default_value = "kforge-reconciler", requires = "leader_election")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the host name, i.e. the pod's name).
    #[arg(long, requires = "leader_election")]
    identity: Option<String>,
}

/// `30s`, `5m`, `1h` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: expected a duration such as 30s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

impl Args {
    fn builder(&self) -> anyhow::Result<Option<BuilderEndpoint>> {
        let Some(url) = &self.builder else { return Ok(None) };
        let read = |p: &PathBuf, what: &str| std::fs::read(p).with_context(|| format!("{}: cannot read {what}", p.display()));
        let ca_pem = self.ca.as_ref().map(|p| read(p, "CA certificate")).transpose()?;
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => Some((read(c, "client certificate")?, read(k, "client key")?)),
            _ => None,
        };
        let token = match &self.token_file {
            Some(p) => Some(String::from_utf8(read(p, "token")?).with_context(|| format!("{}: the token is not UTF-8", p.display()))?.trim().to_string()),
            None => None,
        };
        Ok(Some(BuilderEndpoint { url: url.clone(), ca_pem, identity, token }))
    }

    fn config(&self) -> anyhow::Result<Config> {
        let mut config = Config::new(kforge_reconcile::plan);
        config.builder = self.builder()?;
        config.resync = self.resync;
        // A missing image is looked for again at the latest on the next resync.
        config.missing_ttl = config.missing_ttl.min(self.resync);
        config.max_builds = self.max_builds.max(1);
        if let Some(namespace) = &self.leader_election {
            let identity = match &self.identity {
                Some(i) => i.clone(),
                None => std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).context("--identity is needed when HOSTNAME is not set")?,
            };
            let mut lease = LeaseConfig::new(namespace.clone(), identity);
            lease.name = self.lease_name.clone();
            config.leader_election = Some(lease);
        }
        Ok(config)
    }
}

/// Runs `kforge reconcile` until SIGTERM or Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await.context("cannot reach the Kubernetes API (KUBECONFIG or in-cluster)")?;
        let mut registry = prometheus_client::registry::Registry::with_prefix("kforge");
        let controller = Controller::new(client, config, &mut registry);
        let metrics = controller.metrics();
        let registry = Arc::new(Mutex::new(registry));
        let encode = Arc::new(move || {
            let mut out = String::new();
            let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
            if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
                out.clear();
            }
            out
        });
        let ready_metrics = metrics.clone();
        let ready: kforge_server::Check =
            Arc::new(move || if ready_metrics.ready() { Ok(()) } else { Err("the caches of Modules, Nodes and DaemonSets are not synced yet".into()) });
        let (addr, _endpoints) = kforge_server::serve_endpoints(args.listen, encode, Arc::new(|| Ok(())), ready).await?;
        println!("kforge reconcile: health and metrics on {addr}");
        controller.run(shutdown()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on the first SIGTERM or Ctrl-C.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5d").is_err_and(|e| e.contains("unknown unit")));
        assert!(parse_duration("m").is_err());
    }
}
