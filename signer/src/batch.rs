//! Signing many files: walking trees, parallel signing on rayon, atomic writes.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use rustix::fs::{CWD, RenameFlags, renameat_with};

use crate::error::Error;
use crate::sign::{Signed, Signer};

/// One module to sign: where it is read from and where the signed module goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The input file.
    pub src: PathBuf,
    /// The output file (the input's real path when signing in place).
    pub dst: PathBuf,
    /// The tree the job belongs to (input directory, output directory or the file's directory):
    /// temporary files are staged in one directory created there.
    pub tree: PathBuf,
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
    // `real` is the file's canonical path: walks build it from a canonical root without
    // following links, so only explicitly named files need resolving.
    let mut push = |c: &mut Collected, src: PathBuf, real: Option<PathBuf>, rel: &Path, tree: &Path| {
        let real = match real.map_or_else(|| fs::canonicalize(&src), Ok) {
            Ok(r) => r,
            Err(cause) => return c.errors.push(Error::Io { path: src, op: "resolve", cause }),
        };
        if !seen_src.insert(real.clone()) {
            return;
        }
        let (dst, tree) = match &opts.out_dir {
            Some(out) => (out.join(rel), out.clone()),
            None => (real, tree.to_path_buf()),
        };
        if let Some(first) = seen_dst.get(&dst) {
            return c.errors.push(Error::OutputCollision { first: first.clone(), second: src, dst });
        }
        seen_dst.insert(dst.clone(), src.clone());
        c.jobs.push(Job { src, dst, tree });
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
            let dir = fs::canonicalize(path).ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| ".".into());
            push(&mut c, path.clone(), None, Path::new(&name), &dir);
        }
    }
    c
}

fn walk(root: &Path, c: &mut Collected, push: &mut impl FnMut(&mut Collected, PathBuf, Option<PathBuf>, &Path, &Path)) {
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
        let real = real_root.join(&rel);
        push(c, path.to_path_buf(), Some(real), &rel, &real_root);
    }
}

/// A signing backend: the job and its file's bytes in, the signed module out.
pub type SignFn<'a> = dyn Fn(&Job, Vec<u8>) -> Result<Signed, Error> + Sync + 'a;

/// Signs every job in parallel. `on_done` is called once per job as it finishes.
pub fn sign_jobs(signer: &Signer, jobs: &[Job], opts: &BatchOptions, on_done: &(dyn Fn(&Job, bool) + Sync)) -> Vec<Result<Outcome, Error>> {
    sign_jobs_with(jobs, opts, on_done, &|_, bytes| signer.sign(bytes))
}

/// Like [`sign_jobs`], with signing done by `sign` (for example by a remote signing service):
/// files are read, handed to `sign`, and the results written back atomically.
pub fn sign_jobs_with(jobs: &[Job], opts: &BatchOptions, on_done: &(dyn Fn(&Job, bool) + Sync), sign: &SignFn<'_>) -> Vec<Result<Outcome, Error>> {
    let staging = Staging::for_jobs(jobs);
    jobs.par_iter()
        .map(|job| {
            let result = sign_one(job, opts, staging.slots(&job.tree), sign);
            on_done(job, result.is_ok());
            result
        })
        .collect()
}

/// One staging directory per tree, holding recycled temporary files for atomic replacements.
///
/// A module is replaced by writing a temporary file and exchanging it with the module
/// (`renameat2(RENAME_EXCHANGE)`, atomic like a rename). The temporary path then holds the old
/// module's inode, which is truncated and reused for the next module, so signing a tree frees and
/// allocates no inodes. Plain temporary files beside each module made the file system free one inode
/// and allocate another per module; on ext4 without a journal, finding a free inode next to many
/// recently freed ones is quadratic, and that took 2.8 s of a 4,023-module run that now takes about 1 s.
/// Where exchanging is impossible (another mount, no support, no old file), a plain rename is used.
struct Staging(HashMap<PathBuf, Slots>);

struct Slots {
    dir: tempfile::TempDir,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicUsize,
}

impl Staging {
    fn for_jobs(jobs: &[Job]) -> Self {
        let trees: HashSet<&PathBuf> = jobs.iter().map(|j| &j.tree).collect();
        let dirs = trees
            .into_iter()
            .filter_map(|tree| {
                let _ = fs::create_dir_all(tree);
                let dir = tempfile::Builder::new().prefix(".kforge-staging-").tempdir_in(tree).ok()?;
                Some((tree.clone(), Slots { dir, free: Mutex::new(Vec::new()), next: AtomicUsize::new(0) }))
            })
            .collect();
        Staging(dirs)
    }

    fn slots(&self, tree: &Path) -> Option<&Slots> {
        self.0.get(tree)
    }
}

impl Slots {
    /// Atomically replaces `dst` with `bytes`; `Ok(false)` means "use a temporary file beside `dst`".
    fn replace(&self, dst: &Path, bytes: &[u8], like: &fs::Metadata, fsync: bool) -> Result<bool, Error> {
        let recycled = self.free.lock().ok().and_then(|mut f| f.pop());
        let slot = recycled.unwrap_or_else(|| {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            self.dir.path().join(format!(".kforge-{n}.tmp"))
        });
        // Overwrite, then cut to length: truncating to zero first would make ext4 force block
        // allocation on close (its replace-via-truncate heuristic), one stall per module.
        let Ok(mut file) = fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&slot) else {
            let _ = fs::remove_file(&slot);
            return Ok(false);
        };
        file.write_all(bytes).map_err(Error::io(&slot, "write"))?;
        file.set_len(bytes.len() as u64).map_err(Error::io(&slot, "truncate"))?;
        finish_temp(&file, &slot, dst, like, fsync)?;
        drop(file);
        match renameat_with(CWD, &slot, CWD, dst, RenameFlags::EXCHANGE) {
            Ok(()) => {
                // The slot now holds the old file: reuse its inode unless other hard links share it.
                match fs::symlink_metadata(&slot) {
                    Ok(m) if m.is_file() && m.nlink() == 1 => {
                        if let Ok(mut free) = self.free.lock() {
                            free.push(slot);
                        }
                    }
                    _ => {
                        let _ = fs::remove_file(&slot);
                    }
                }
                Ok(true)
            }
            Err(e) if e == rustix::io::Errno::XDEV => {
                let _ = fs::remove_file(&slot);
                Ok(false)
            }
            // No old file to exchange with, or a file system without RENAME_EXCHANGE.
            Err(_) => match fs::rename(&slot, dst) {
                Ok(()) => Ok(true),
                Err(_) => {
                    let _ = fs::remove_file(&slot);
                    Ok(false)
                }
            },
        }
    }
}

fn sign_one(job: &Job, opts: &BatchOptions, slots: Option<&Slots>, sign: &SignFn<'_>) -> Result<Outcome, Error> {
    let mut file = fs::File::open(&job.src).map_err(Error::io(&job.src, "read"))?;
    let meta = file.metadata().map_err(Error::io(&job.src, "stat"))?;
    let mut input = Vec::with_capacity(meta.len() as usize + 4096);
    file.read_to_end(&mut input).map_err(Error::io(&job.src, "read"))?;
    drop(file);
    let Signed { bytes, info, replaced, .. } = sign(job, input).map_err(|e| e.at(&job.src))?;
    let replaced_in_staging = match slots {
        Some(slots) => slots.replace(&job.dst, &bytes, &meta, opts.fsync)?,
        None => false,
    };
    if !replaced_in_staging {
        write_atomic(&job.dst, &bytes, &meta, opts.fsync)?;
    }
    if opts.fsync {
        sync_parent(&job.dst)?;
    }
    tracing::debug!(module = %info.name, src = %job.src.display(), dst = %job.dst.display(), "signed");
    Ok(Outcome { job: job.clone(), name: info.name, replaced, bytes: bytes.len() as u64 })
}

/// Writes `bytes` to `dst` through a temporary file beside it and a rename, with the mode (and,
/// where permitted, owner) of `like`: readers see the old file or the new one, never a partial one.
pub(crate) fn write_atomic(dst: &Path, bytes: &[u8], like: &fs::Metadata, fsync: bool) -> Result<(), Error> {
    let dir = parent(dst);
    fs::create_dir_all(dir).map_err(Error::io(dir, "create directory"))?;
    let mut tmp = tempfile::Builder::new().prefix(".kforge-").suffix(".tmp").tempfile_in(dir).map_err(Error::io(dir, "create a temporary file in"))?;
    tmp.write_all(bytes).map_err(Error::io(tmp.path(), "write"))?;
    finish_temp(tmp.as_file(), tmp.path(), dst, like, fsync)?;
    tmp.persist(dst).map_err(|e| Error::Io { path: dst.into(), op: "replace", cause: e.error })?;
    Ok(())
}

/// Gives a written temporary file the mode and owner of `like`, and fsyncs it if asked.
fn finish_temp(file: &fs::File, path: &Path, dst: &Path, like: &fs::Metadata, fsync: bool) -> Result<(), Error> {
    file.set_permissions(fs::Permissions::from_mode(like.mode() & 0o7777)).map_err(Error::io(path, "set permissions on"))?;
    let own = file.metadata().map_err(Error::io(path, "stat"))?;
    if (own.uid(), own.gid()) != (like.uid(), like.gid()) {
        // Only root may give files away; anyone else keeps their own ownership.
        if let Err(e) = std::os::unix::fs::fchown(file, Some(like.uid()), Some(like.gid())) {
            tracing::debug!(path = %dst.display(), error = %e, "owner not preserved");
        }
    }
    if fsync {
        file.sync_all().map_err(Error::io(path, "fsync"))?;
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_parent(dst: &Path) -> Result<(), Error> {
    let dir = parent(dst);
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io(dir, "fsync directory"))
}
