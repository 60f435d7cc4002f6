//! Signing many files: walking trees, parallel signing on rayon, atomic writes.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::Error;
use crate::sign::{Signed, Signer};

/// One module to sign: where it is read from and where the signed module goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The input file.
    pub src: PathBuf,
    /// The output file (the input's real path when signing in place).
    pub dst: PathBuf,
}

/// Inputs found by [`collect`]: modules to sign and paths that could not be used.
#[derive(Debug, Default)]
pub struct Collected {
    /// Modules to sign.
    pub jobs: Vec<Job>,
    /// Problems found while walking (each names its path).
    pub errors: Vec<Error>,
}

/// Where and how to write signed modules.
#[derive(Debug, Clone, Default)]
pub struct BatchOptions {
    /// Write into this directory (keeping paths relative to each input) instead of in place.
    pub out_dir: Option<PathBuf>,
    /// fsync each module and its directory before reporting it done.
    pub fsync: bool,
}

/// A module that was signed and written.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The job.
    pub job: Job,
    /// The module's name from `.modinfo`.
    pub name: String,
    /// How many earlier signatures were replaced.
    pub replaced: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Expands files and directories (recursively, module files only) into signing jobs.
///
/// Directory walks do not follow symlinks: a link to a module inside the tree is skipped (its
/// target is signed once), and a link pointing outside the tree is reported, never written through.
pub fn collect(paths: &[PathBuf], opts: &BatchOptions) -> Collected {
    let mut c = Collected::default();
    let mut seen_src = HashSet::new();
    let mut seen_dst: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut push = |c: &mut Collected, src: PathBuf, rel: &Path| {
        let real = match fs::canonicalize(&src) {
            Ok(r) => r,
            Err(cause) => return c.errors.push(Error::Io { path: src, op: "resolve", cause }),
        };
        if !seen_src.insert(real.clone()) {
            return;
        }
        let dst = match &opts.out_dir {
            Some(out) => out.join(rel),
            None => real,
        };
        if let Some(first) = seen_dst.get(&dst) {
            return c.errors.push(Error::OutputCollision { first: first.clone(), second: src, dst });
        }
        seen_dst.insert(dst.clone(), src.clone());
        c.jobs.push(Job { src, dst });
    };
    for path in paths {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(cause) => {
                c.errors.push(Error::Io { path: path.clone(), op: "read", cause });
                continue;
            }
        };
        if meta.is_dir() {
            walk(path, &mut c, &mut push);
        } else {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !crate::is_module_name(&name) {
                c.errors.push(Error::NotModuleName { path: path.clone() });
                continue;
            }
            push(&mut c, path.clone(), Path::new(&name));
        }
    }
    c
}

fn walk(root: &Path, c: &mut Collected, push: &mut impl FnMut(&mut Collected, PathBuf, &Path)) {
    let real_root = match fs::canonicalize(root) {
        Ok(r) => r,
        Err(cause) => return c.errors.push(Error::Io { path: root.into(), op: "resolve", cause }),
    };
    let mut entries: Vec<walkdir::DirEntry> = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name() {
        match entry {
            Ok(e) => entries.push(e),
            Err(err) => {
                let path = err.path().map(Path::to_path_buf).unwrap_or_else(|| root.into());
                let cause = err.into_io_error().unwrap_or_else(|| std::io::Error::other("filesystem loop"));
                c.errors.push(Error::Io { path, op: "read directory entry", cause });
            }
        }
    }
    for entry in entries {
        let name = entry.file_name().to_string_lossy();
        if !crate::is_module_name(&name) {
            continue;
        }
        let path = entry.path();
        if entry.path_is_symlink() {
            match fs::canonicalize(path) {
                Ok(target) if target.starts_with(&real_root) => {} // signed through the walk itself
                Ok(target) => c.errors.push(Error::SymlinkEscape { link: path.into(), target, root: root.into() }),
                Err(cause) => c.errors.push(Error::Io { path: path.into(), op: "resolve symlink", cause }),
            }
            continue;
        }
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = path.strip_prefix(root).unwrap_or(path).to_path_buf();
        push(c, path.to_path_buf(), &rel);
    }
}

/// Signs every job in parallel. `on_done` is called once per job as it finishes.
pub fn sign_jobs(
    signer: &Signer,
    jobs: &[Job],
    opts: &BatchOptions,
    on_done: &(dyn Fn(&Job, bool) + Sync),
) -> Vec<Result<Outcome, Error>> {
    jobs.par_iter()
        .map(|job| {
            let result = sign_one(signer, job, opts);
            on_done(job, result.is_ok());
            result
        })
        .collect()
}

fn sign_one(signer: &Signer, job: &Job, opts: &BatchOptions) -> Result<Outcome, Error> {
    let input = fs::read(&job.src).map_err(Error::io(&job.src, "read"))?;
    let Signed { bytes, info, replaced, .. } = signer.sign(input).map_err(|e| e.at(&job.src))?;
    let meta = fs::metadata(&job.src).map_err(Error::io(&job.src, "stat"))?;
    write_atomic(&job.dst, &bytes, &meta, opts.fsync)?;
    tracing::debug!(module = %info.name, src = %job.src.display(), dst = %job.dst.display(), "signed");
    Ok(Outcome { job: job.clone(), name: info.name, replaced, bytes: bytes.len() as u64 })
}

/// Writes `bytes` to `dst` through a temporary file in the same directory and a rename, with
/// the mode (and, where permitted, owner) of `like`: readers see the old file or the new one.
pub(crate) fn write_atomic(dst: &Path, bytes: &[u8], like: &fs::Metadata, fsync: bool) -> Result<(), Error> {
    let dir = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(Error::io(dir, "create directory"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".kforge-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(Error::io(dir, "create a temporary file in"))?;
    tmp.write_all(bytes).map_err(Error::io(tmp.path(), "write"))?;
    let file = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(like.mode() & 0o7777))
        .map_err(Error::io(tmp.path(), "set permissions on"))?;
    let own = file.metadata().map_err(Error::io(tmp.path(), "stat"))?;
    if (own.uid(), own.gid()) != (like.uid(), like.gid()) {
        // Only root may give files away; anyone else keeps their own ownership.
        if let Err(e) = std::os::unix::fs::fchown(file, Some(like.uid()), Some(like.gid())) {
            tracing::debug!(path = %dst.display(), error = %e, "owner not preserved");
        }
    }
    if fsync {
        file.sync_all().map_err(Error::io(tmp.path(), "fsync"))?;
    }
    tmp.persist(dst).map_err(|e| Error::Io { path: dst.into(), op: "replace", cause: e.error })?;
    if fsync {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io(dir, "fsync directory"))?;
    }
    Ok(())
}
