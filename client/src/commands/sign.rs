//! `kforge sign`: sign module files and trees, in parallel, atomically.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use kforge_signer::{BatchOptions, Compression, Job, ModuleInfo, Signed, collect, sign_jobs, sign_jobs_with};

use super::{KeyArgs, human_bytes};
use crate::remote::{self, RemoteArgs};

/// Arguments of `kforge sign`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    keys: KeyArgs,
    /// Write signed modules here (paths relative to each input directory) instead of in place.
    #[arg(long)]
    out: Option<PathBuf>,
    /// fsync every module before reporting it signed.
    #[arg(long)]
    fsync: bool,
    /// Worker threads (default: one per core).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Module files (.ko, .ko.xz, .ko.zst, .ko.gz) and directories to sign recursively.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Loads the key (refusing a mismatch before any module is touched), then signs everything;
/// with `--remote`, the signing service signs and the files are written here.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let hash = args.keys.hash()?;
    let opts = BatchOptions { out_dir: args.out.clone(), fsync: args.fsync };
    let started = Instant::now();
    let collected = collect(&args.paths, &opts);
    let bar = crate::progress::bar(collected.jobs.len() as u64, "signing");
    let on_done = |_: &Job, _: bool| bar.inc(1);

    let (results, with) = if args.remote.remote.is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
        let (client, key_name) = runtime.block_on(async {
            let mut client = remote::connect(&args.remote).await?;
            let key = remote::pick_key(&mut client, args.remote.key_name.as_deref()).await?;
            anyhow::Ok((client, key))
        })?;
        let handle = runtime.handle().clone();
        let streams = remote::Streams::new(client);
        let key_id = args.keys.key_id;
        let latencies = std::sync::Mutex::new(Vec::with_capacity(collected.jobs.len()));
        let sign = |job: &Job, bytes: Vec<u8>| {
            let compression = Compression::detect(&bytes);
            let id = job.src.display().to_string();
            let t = Instant::now();
            let r = handle.block_on(streams.sign(&id, &key_name, hash.name(), key_id, bytes))?;
            if let Ok(mut l) = latencies.lock() {
                l.push(t.elapsed());
            }
            Ok(Signed { bytes: r.bytes, info: ModuleInfo { name: r.module_name, vermagic: r.vermagic, fields: vec![] }, replaced: 0, compression })
        };
        // Remote signing waits on the network more than on the CPU: more workers by default.
        let pool = rayon_pool(Some(args.jobs.unwrap_or(16)))?;
        let results = pool.install(|| sign_jobs_with(&collected.jobs, &opts, &on_done, &sign));
        let url = args.remote.remote.clone().unwrap_or_default();
        let mut l = latencies.into_inner().unwrap_or_default();
        l.sort();
        let pct = |p: usize| l.get((l.len().saturating_sub(1)) * p / 100).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
        (results, format!("key {key_name:?} on {url} ({hash}; per module p50 {:.1} ms, p99 {:.1} ms)", pct(50), pct(99)))
    } else {
        let signer = args.keys.signer()?;
        let pool = rayon_pool(args.jobs)?;
        let results = pool.install(|| sign_jobs(&signer, &collected.jobs, &opts, &on_done));
        let with = format!("{} RSA-{}/{hash}", signer.key().certificate().subject(), signer.key().bits());
        (results, with)
    };
    bar.finish_and_clear();

    let mut failures: Vec<String> = collected.errors.iter().map(ToString::to_string).collect();
    let (mut signed, mut bytes, mut replaced) = (0usize, 0u64, 0usize);
    for r in results {
        match r {
            Ok(o) => {
                signed += 1;
                bytes += o.bytes;
                replaced += usize::from(o.replaced > 0);
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    for f in &failures {
        eprintln!("error: {f}");
    }
    println!(
        "signed {signed} module{} ({}, {replaced} re-signed) with {with} in {:.2}s; {} failed",
        if signed == 1 { "" } else { "s" },
        human_bytes(bytes),
        started.elapsed().as_secs_f64(),
        failures.len(),
    );
    if signed == 0 && failures.is_empty() {
        eprintln!("error: no kernel modules (*.ko, *.ko.xz, *.ko.zst, *.ko.gz) found under the given paths");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A rayon pool with `jobs` threads, or rayon's default of one per core.
pub fn rayon_pool(jobs: Option<usize>) -> anyhow::Result<rayon::ThreadPool> {
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(n) = jobs {
        b = b.num_threads(n.max(1));
    }
    b.build().context("starting worker threads")
}
