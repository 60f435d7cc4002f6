//! `kforge build`: build an image through BuildKit (standalone buildkitd or a Docker engine) and push it.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kforge_builder::{Builder, BuilderOptions, Connection, Endpoint, Event, InputFile, PlainPrinter, TlsFiles};
use kforge_image::{DockerConfig, RegistryOptions};
use kforge_kmm::{DockerCredentials, KmmBuild, KmmRequest};

/// Context files go inline in the build request; keep them to sources, not artefacts.
const MAX_CONTEXT_BYTES: u64 = 32 << 20;

/// Arguments of `kforge build`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub build: BuildArgs,
    /// Where to push the result: registry/repo:tag.
    #[arg(long)]
    to: String,
    /// Build even if the target already exists.
    #[arg(long)]
    force: bool,
    /// Also write the pushed digest reference to this file.
    #[arg(long)]
    digest_file: Option<PathBuf>,
}

/// What a build needs, shared by `kforge build` and `kforge build-sign`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// BuildKit address: docker://[/path/docker.sock], unix:///path/buildkitd.sock or tcp://host:port.
    #[arg(long, env = "BUILDKIT_HOST", default_value = "docker://")]
    pub buildkit: String,
    /// The Dockerfile.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// A directory whose files form the build context (module sources); none by default.
    #[arg(long)]
    context: Option<PathBuf>,
    /// A build argument, NAME=VALUE (repeatable); KMM's KERNEL_FULL_VERSION, MOD_NAME, DTK_AUTO… go here.
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    build_args: Vec<String>,
    /// A build secret: id=NAME,src=FILE (repeatable); every RUN sees it at /run/secrets/NAME, as in
    /// KMM (an id SECRET/KEY gives /run/secrets/SECRET/KEY); never a build argument.
    #[arg(long = "secret", value_name = "id=NAME,src=FILE")]
    secrets: Vec<String>,
    /// The stage to build.
    #[arg(long)]
    target: Option<String>,
    /// Push to the target registry over plain HTTP (loopback registries always are).
    #[arg(long)]
    pub insecure: bool,
    /// Registry credentials in docker config.json / .dockerconfigjson form, served to BuildKit for
    /// base pulls and the push (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json).
    #[arg(long)]
    pub auth_file: Option<PathBuf>,
    /// Let RUN steps use the network (off by default: module builds need none).
    #[arg(long)]
    network: bool,
    /// Ignore BuildKit's cache.
    #[arg(long)]
    no_cache: bool,
    /// Cancel the build after this many seconds.
    #[arg(long, default_value_t = 3600)]
    deadline: u64,
    /// Progress output: auto (a live view on a terminal, else plain), plain, or quiet.
    #[arg(long, default_value = "auto", value_parser = ["auto", "plain", "quiet"])]
    pub progress: String,
    /// CA certificate of a tcp:// buildkitd (PEM).
    #[arg(long)]
    tlscacert: Option<PathBuf>,
    /// Client certificate for a tcp:// buildkitd (PEM).
    #[arg(long)]
    tlscert: Option<PathBuf>,
    /// Client key for a tcp:// buildkitd (PEM).
    #[arg(long)]
    tlskey: Option<PathBuf>,
    /// Name on buildkitd's certificate, if not its host name.
    #[arg(long)]
    tls_server_name: Option<String>,
}

impl BuildArgs {
    /// The BuildKit endpoint, with TLS files for tcp://.
    pub fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let mut endpoint: Endpoint = self.buildkit.parse()?;
        if self.tlscacert.is_some() || self.tlscert.is_some() || self.tlskey.is_some() {
            endpoint = endpoint.with_tls(TlsFiles {
                ca: self.tlscacert.clone(),
                cert: self.tlscert.clone(),
                key: self.tlskey.clone(),
                server_name: self.tls_server_name.clone(),
            })?;
        }
        Ok(endpoint)
    }

    /// Registry credentials: --auth-file, else the docker config of the environment.
    pub fn credentials(&self) -> anyhow::Result<DockerConfig> {
        Ok(DockerConfig::load_or_environment(self.auth_file.as_deref())?)
    }

    /// The build these arguments describe (KMM's build section).
    pub fn kmm_build(&self) -> anyhow::Result<KmmBuild> {
        let file = self.file.as_ref().context("--file (the Dockerfile) is required")?;
        let dockerfile = std::fs::read_to_string(file).with_context(|| format!("cannot read the Dockerfile {}", file.display()))?;
        Ok(KmmBuild {
            dockerfile,
            context: match &self.context {
                Some(dir) => context_files(dir)?,
                None => Vec::new(),
            },
            build_args: build_args(&self.build_args)?.into_iter().collect(),
            target: self.target.clone(),
            secrets: secrets(&self.secrets)?,
            credentials: Arc::new(DockerCredentials(self.credentials()?)),
            insecure: self.insecure,
            network: self.network,
            no_cache: self.no_cache,
        })
    }

    /// Registry access for existence checks, unsigned images and pushes.
    pub fn registries(&self) -> anyhow::Result<RegistryOptions> {
        let mut registries = RegistryOptions { credentials: self.credentials()?, ..Default::default() };
        registries.tls.insecure = self.insecure;
        Ok(registries)
    }

    /// Connects to BuildKit; a builder with these arguments' deadline.
    pub async fn builder(&self) -> anyhow::Result<Builder> {
        let endpoint = self.endpoint()?;
        let connection = Connection::connect(&endpoint).await.context(crate::hints::BUILDKIT)?;
        Ok(Builder::new(connection, BuilderOptions { deadline: self.deadline() }))
    }

    /// The build deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline.max(1))
    }
}

/// Parses `NAME=VALUE` build arguments.
fn build_args(list: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in list {
        let Some((k, v)) = a.split_once('=') else { bail!("--build-arg {a:?}: expected NAME=VALUE") };
        if k.is_empty() {
            bail!("--build-arg {a:?}: the name is empty");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Parses `id=NAME,src=FILE` secrets (docker build's syntax) and reads the files.
fn secrets(list: &[String]) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for s in list {
        let (mut id, mut src) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = Some(v),
                Some(("src" | "source", v)) => src = Some(v),
                Some(("type", "file")) => {}
                _ => bail!("--secret {s:?}: expected id=NAME,src=FILE"),
            }
        }
        let (Some(id), Some(src)) = (id, src) else { bail!("--secret {s:?}: expected id=NAME,src=FILE") };
        let data = std::fs::read(src).with_context(|| format!("--secret {id}: cannot read {src}"))?;
        out.insert(id.to_string(), data);
    }
    Ok(out)
}

/// Reads a context directory's regular files (symlinks and special files are refused).
fn context_files(dir: &Path) -> anyhow::Result<Vec<InputFile>> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("--context: cannot read {}", d.display()))? {
            let entry = entry.with_context(|| format!("--context: cannot read {}", d.display()))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).with_context(|| format!("--context: cannot stat {}", path.display()))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                total += meta.len();
                if total > MAX_CONTEXT_BYTES {
                    bail!("--context {}: more than {} MiB of files; the context carries sources only", dir.display(), MAX_CONTEXT_BYTES >> 20);
                }
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
                let data = std::fs::read(&path).with_context(|| format!("--context: cannot read {}", path.display()))?;
                files.push(InputFile { path: rel, mode: meta.permissions().mode() & 0o7777, data });
            } else {
                bail!("--context: {} is not a regular file or directory (symlinks are not followed)", path.display());
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Builds, pushes and prints the digest reference.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let request = KmmRequest {
        kernel: String::new(),
        module_name: String::new(),
        namespace: String::new(),
        image: args.to.clone(),
        build: Some(args.build.kmm_build()?),
        sign: None,
        registries: args.build.registries()?,
        force: args.force,
        attempts: 1,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let started = Instant::now();
    let out = runtime.block_on(async {
        let request = request.prepare(None).await.map_err(crate::hints::kmm)?.request;
        let builder = args.build.builder().await?;
        run_with_progress(&args.build.progress, |tx| async move { kforge_kmm::run(Some(&builder), &request, &tx).await }).await
    })?;
    if out.reused {
        eprintln!("{} exists, built from the same inputs ({}); not rebuilt (--force rebuilds)", args.to, out.digest);
    } else {
        eprintln!("built and pushed {} in {:.1}s", args.to, started.elapsed().as_secs_f64());
    }
    println!("{}", out.image);
    write_digest(args.digest_file.as_deref(), &out.image)
}

/// Runs `work` with an event channel, showing its events as they come.
pub async fn run_with_progress<F, Fut>(progress: &str, work: F) -> anyhow::Result<kforge_kmm::Outcome>
where
    F: FnOnce(tokio::sync::mpsc::UnboundedSender<Event>) -> Fut,
    Fut: std::future::Future<Output = Result<kforge_kmm::Outcome, kforge_kmm::Error>>,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut view = View::new(progress);
    let work = work(tx);
    let show = async {
        while let Some(e) = rx.recv().await {
            view.show(&e);
        }
    };
    let (result, ()) = tokio::join!(work, show);
    view.finish();
    result.map_err(crate::hints::kmm)
}

/// Writes the digest reference to `path`, if given.
pub fn write_digest(path: Option<&Path>, image: &str) -> anyhow::Result<ExitCode> {
    if let Some(path) = path {
        std::fs::write(path, format!("{image}\n")).with_context(|| format!("{}: cannot write the digest", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Progress output: plain lines (like `buildctl --progress=plain`) on stderr, with a spinner naming
/// the running step when stderr is a terminal.
pub struct View {
    plain: Option<PlainPrinter<std::io::Stderr>>,
    spinner: Option<indicatif::ProgressBar>,
}

impl View {
    /// A view for `--progress` mode.
    pub fn new(mode: &str) -> Self {
        let tty = std::io::stderr().is_terminal();
        let plain = (mode != "quiet").then(|| PlainPrinter::new(std::io::stderr()));
        let spinner = (mode == "auto" && tty).then(|| {
            let s = indicatif::ProgressBar::new_spinner();
            s.enable_steady_tick(Duration::from_millis(120));
            s
        });
        View { plain, spinner }
    }

    /// Shows one event.
    pub fn show(&mut self, event: &Event) {
        if let Some(p) = &mut self.plain {
            match &self.spinner {
                // Print above the spinner so the two do not interleave.
                Some(s) => s.suspend(|| p.print(event)),
                None => p.print(event),
            }
        }
        if let (Some(s), Event::Step(step)) = (&self.spinner, event)
            && step.started
            && !step.completed
        {
            s.set_message(step.name.clone());
        }
    }

    /// Clears the live view.
    pub fn finish(&mut self) {
        if let Some(s) = self.spinner.take() {
            s.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_build_args_and_secrets() {
        let a = build_args(&["KERNEL_FULL_VERSION=6.1.0-56-amd64".into(), "EMPTY=".into(), "X=a=b".into()]).expect("args");
        assert_eq!(a["KERNEL_FULL_VERSION"], "6.1.0-56-amd64");
        assert_eq!(a["EMPTY"], "");
        assert_eq!(a["X"], "a=b");
        assert!(build_args(&["NOVALUE".into()]).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("tok");
        std::fs::write(&f, "s3cr3t").expect("write");
        let s = secrets(&[format!("id=token,src={}", f.display())]).expect("secret");
        assert_eq!(s["token"], b"s3cr3t");
        let e = secrets(&["id=token".into()]).expect_err("no src").to_string();
        assert!(e.contains("id=NAME,src=FILE"), "{e}");
        let e = secrets(&["id=t,src=/nonexistent/file".into()]).expect_err("missing").to_string();
        assert!(e.contains("/nonexistent/file"), "{e}");
    }

    #[test]
    fn context_reads_files_and_refuses_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("src")).expect("mkdir");
        std::fs::write(dir.path().join("Makefile"), "obj-m += x.o\n").expect("write");
        std::fs::write(dir.path().join("src/x.c"), "int x;\n").expect("write");
        let files = context_files(dir.path()).expect("reads");
        let paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["Makefile", "src/x.c"]);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).expect("symlink");
        let e = context_files(dir.path()).expect_err("symlink").to_string();
        assert!(e.contains("link") && e.contains("symlinks"), "{e}");
    }
}
