//! `kforge serve`: the signing and build services on one port.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kforge::Config;

/// Arguments of `kforge serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML). Without one, kforge serves on loopback with a development key.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen address, overriding the configuration.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Metrics address, overriding the configuration.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Where the development key and audit log live when there is no configuration
    /// (default: $XDG_DATA_HOME/kforge or ~/.local/share/kforge).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// BuildKit for the build service, overriding the configuration (docker://, unix://, tcp://;
    /// without a configuration: BUILDKIT_HOST, else the local Docker engine).
    #[arg(long)]
    buildkit: Option<String>,
}

/// Runs until SIGTERM or Ctrl-C (a second one exits at once).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            let dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
            let c = Config::development(&dir)?;
            tracing::warn!("==================================================================");
            tracing::warn!("NO CONFIGURATION: serving on loopback without authentication,");
            tracing::warn!("signing with a DEVELOPMENT key created in {}", dir.display());
            tracing::warn!("Modules signed with it load only where that certificate is enrolled.");
            tracing::warn!("Use --config with your own keys, TLS and clients for anything real.");
            tracing::warn!("==================================================================");
            c
        }
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(m) = args.metrics_listen {
        config.metrics_listen = Some(m);
    }
    if let Some(url) = &args.buildkit {
        let mut b = config.builder.take().unwrap_or_else(kforge_builder_service::BuilderConfig::from_environment);
        b.buildkit = url.clone();
        config.builder = Some(b);
    }
    let builder_line = match &config.builder {
        Some(b) => format!("builder uses BuildKit at {} (connected on first build)", b.buildkit),
        None => "builder disabled (no [builder] in the configuration)".to_string(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut running = kforge::serve(config).await?;
        let metrics = match running.metrics_addr {
            Some(m) => format!("metrics on http://{m}/metrics"),
            None => "metrics disabled".to_string(),
        };
        // One write, errors ignored: whoever started us may stop reading after the address.
        let banner = format!("kforge serves the signer and the builder on {}\n{metrics}\n{builder_line}\n", running.addr);
        let _ = std::io::stdout().lock().write_all(banner.as_bytes());
        let stop = running.shutdown_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: draining requests in flight (signal again to exit now)");
            drop(stop);
            wait_for_signal().await;
            tracing::warn!("second signal: exiting without waiting");
            std::process::exit(130);
        });
        running.wait().await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("kforge");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/kforge"),
        None => PathBuf::from("/var/lib/kforge"),
    }
}
