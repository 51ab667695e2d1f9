//! The image cache: built and imported images under the user's cache directory, one
//! directory per (image, recipe hash), built under a lock and moved into
//! place only once complete, so an interrupted build never leaves an entry
//! a later run would use.

use std::path::{Path, PathBuf};

use crate::build::BuildError;
use crate::builder::build_image;
use crate::lock::{FileLock, LockError};
use crate::manifest::Manifest;
use crate::recipe::{GuestAdditions, ImageName, Recipe, RecipeError};

/// Image cache failures.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No usable cache directory.
    #[error("no cache directory: set XDRIVER_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    /// A lock failed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Bad image name.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The build failed.
    #[error("building image {name} failed (log kept in {log})")]
    Build {
        /// The image.
        name: String,
        /// Where its build log is.
        log: PathBuf,
        /// Why.
        #[source]
        source: BuildError,
    },
    /// The build ran out of space on the device holding the cache.
    #[error("building image {name} failed: no space left on the device holding the cache {root} ({free_then_mib} MiB free when it failed, {free_mib} MiB now that the half-built image is gone); free space there or set XDRIVER_CACHE_DIR to a roomier directory. The build log's last lines (the log, {log}, may have been cut short):\n{tail}")]
    DiskFull {
        /// The image.
        name: String,
        /// The cache's root.
        root: PathBuf,
        /// Space free there when the build failed.
        free_then_mib: u64,
        /// Space free there after the clean-up.
        free_mib: u64,
        /// Where the build log is.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// An image asked for by name is not in the store.
    #[error("no image named `{0}` in the store (see `xdriver image list`)")]
    NotFound(String),
    /// File I/O.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.into(), source }
}

/// A built image in the store.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Whether its recipe hash is that of the recipe this xdriver ships.
    pub current: bool,
}

/// A failed build with less than this free where it was building ran out
/// of space.
const FULL_BELOW: u64 = 16 << 20;

/// Bytes free for an unprivileged writer on the file system of `path`
/// (0 if it cannot be told).
pub fn free_bytes(path: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return 0 };
    // SAFETY: statvfs(3) fills the struct it is given; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail as u64 * st.f_frsize as u64
}

impl Entry {
    /// The base disk (never written; VMs get overlays).
    pub fn disk(&self) -> PathBuf {
        self.dir.join(&self.manifest.disk.file)
    }
    /// The kernel and initramfs for direct boot (built images only).
    pub fn kernel_initrd(&self) -> Option<(PathBuf, PathBuf)> {
        self.manifest.kernel.as_ref().map(|k| (self.dir.join(&k.file), self.dir.join(&k.initrd)))
    }
    /// Bytes on disk (allocated), its RAM snapshots included.
    pub fn size_bytes(&self) -> u64 {
        dir_size(&self.dir)
    }
}

/// What `gc` removed.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Directories removed.
    pub removed: Vec<PathBuf>,
    /// Bytes freed.
    pub freed_bytes: u64,
}

/// The image cache.
#[derive(Debug, Clone)]
pub struct ImageCache {
    root: PathBuf,
}

/// Bytes allocated on disk under `p` (RAM snapshots are sparse files far
/// larger than what they hold).
pub fn dir_size(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(p) else { return 0 };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(p).map(|rd| rd.filter_map(|e| e.ok()).map(|e| dir_size(&e.path())).sum()).unwrap_or(0)
}

impl ImageCache {
    /// The default store: `$XDRIVER_CACHE_DIR`, else `$XDG_CACHE_HOME/xdriver`,
    /// else `~/.cache/xdriver`.
    pub fn open_default() -> Result<ImageCache, CacheError> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let root = env("XDRIVER_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("xdriver")))
            .or_else(|| env("HOME").map(|p| p.join(".cache/xdriver")))
            .ok_or(CacheError::NoCacheDir)?;
        Ok(ImageCache::at(root))
    }

    /// A store rooted at `root`.
    pub fn at(root: impl Into<PathBuf>) -> ImageCache {
        ImageCache { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The lock file that guards work on the cache key `key` (an entry's
    /// directory name, or a name derived from it).
    pub fn lock_path(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lock"))
    }

    /// A fresh temporary directory (`.tmp-<key>-<pid>`) for work on `key`,
    /// which the caller has locked; leftovers of interrupted work on the
    /// same key go first (nobody else can be writing them).
    pub(crate) fn fresh_tmp(&self, key: &str) -> Result<PathBuf, CacheError> {
        let images = self.images_dir();
        std::fs::create_dir_all(&images).map_err(io(&images))?;
        for e in std::fs::read_dir(&images).map_err(io(&images))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!(".tmp-{key}-")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = images.join(format!(".tmp-{key}-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        Ok(tmp)
    }

    /// The recipe of `name` (plus `add`, when it adds anything), and the
    /// image's name: `name`, or `<name>+<tag>` for a derived image.
    fn recipe_of(name: &ImageName, add: Option<&GuestAdditions>) -> Result<(Recipe, String), CacheError> {
        let recipe = Recipe::load(&name.recipe)?;
        Ok(match add.filter(|a| !a.is_empty()) {
            Some(a) => (recipe.derive(a), a.image_name(name)),
            None => (recipe, name.to_string()),
        })
    }

    fn dir_of(&self, image: &str, hash: &str) -> PathBuf {
        self.images_dir().join(format!("{image}-{}", &hash[..12]))
    }

    /// The entry for `name` built from the current recipe, if present.
    pub fn lookup(&self, name: &ImageName) -> Result<Option<Entry>, CacheError> {
        self.lookup_with(name, None)
    }

    /// The entry for `name` plus a spec's additions (a derived image; the
    /// base image when `add` adds nothing), if present.
    pub fn lookup_with(&self, name: &ImageName, add: Option<&GuestAdditions>) -> Result<Option<Entry>, CacheError> {
        let (recipe, image) = Self::recipe_of(name, add)?;
        let dir = self.dir_of(&image, &recipe.hash(name.init));
        Ok(Manifest::read(&dir.join("manifest.json")).ok().map(|manifest| Entry { dir, manifest, current: true }))
    }

    /// Returns the image, building it first if needed. Concurrent callers
    /// (threads or processes) build it once: the others wait on the lock.
    /// `progress` is true to draw per-stage progress bars on a terminal.
    pub fn ensure(&self, name: &ImageName, progress: bool) -> Result<Entry, CacheError> {
        self.ensure_with(name, None, progress)
    }

    /// [`ImageCache::ensure`] for `name` plus a spec's additions: a derived
    /// image, built once per distinct (base, additions) and cached like any
    /// other.
    pub fn ensure_with(&self, name: &ImageName, add: Option<&GuestAdditions>, progress: bool) -> Result<Entry, CacheError> {
        if let Some(e) = self.lookup_with(name, add)? {
            return Ok(e);
        }
        let (recipe, image) = Self::recipe_of(name, add)?;
        let hash = recipe.hash(name.init);
        let dir = self.dir_of(&image, &hash);
        let key = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let _lock = FileLock::acquire(&self.lock_path(&key))?;
        if let Some(e) = self.lookup_with(name, add)? {
            return Ok(e);
        }
        let tmp = self.fresh_tmp(&key)?;
        let kernels = self.root.join("kernels");
        let manifest = match build_image(&recipe, name, &hash, &tmp, &kernels, progress) {
            Ok(m) => m,
            Err(source) => {
                let logs = self.root.join("logs");
                let _ = std::fs::create_dir_all(&logs);
                let log = logs.join(format!("build-{key}.log"));
                // Space left when it failed (apt's own words about it are
                // not always in the log: mmdebstrap --quiet keeps them).
                let free_then = free_bytes(&tmp);
                let _ = std::fs::rename(tmp.join("build.log"), &log);
                let _ = std::fs::remove_dir_all(&tmp);
                // A full disk shows in the log's end (the log itself may be
                // cut short there).
                let text = std::fs::read(&log).map(|b| String::from_utf8_lossy(&b[b.len().saturating_sub(64 << 10)..]).into_owned()).unwrap_or_default();
                let full = free_then < FULL_BELOW || text.contains("No space left on device") || source.to_string().contains("No space left on device");
                if full {
                    let tail: Vec<&str> = text.lines().rev().take(12).collect();
                    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                    return Err(CacheError::DiskFull { name: image, root: self.root.clone(), free_then_mib: free_then >> 20, free_mib: free_bytes(&self.root) >> 20, log, tail });
                }
                return Err(CacheError::Build { name: image, log, source });
            }
        };
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        Ok(Entry { dir, manifest, current: true })
    }

    /// The current derived image called `name` (`<base>+<tag>`), if built.
    pub fn derived(&self, name: &str) -> Option<Entry> {
        self.list().ok()?.into_iter().rfind(|e| e.current && e.manifest.name == name && e.manifest.derived.is_some())
    }

    /// Every complete entry, current or stale, sorted by name.
    pub fn list(&self) -> Result<Vec<Entry>, CacheError> {
        let images = self.images_dir();
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&images) else { return Ok(out) };
        for e in rd.flatten() {
            let dir = e.path();
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(manifest) = Manifest::read(&dir.join("manifest.json")) else { continue };
            // An imported image is current by definition (no recipe); a
            // derived one if its base recipe plus its additions still hash
            // the same.
            let current = manifest.import.is_some()
                || Recipe::load(&manifest.recipe)
                    .map(|r| match &manifest.derived {
                        Some(d) => r.derive(&d.additions).hash(manifest.init) == manifest.recipe_hash,
                        None => r.hash(manifest.init) == manifest.recipe_hash,
                    })
                    .unwrap_or(false);
            out.push(Entry { dir, manifest, current });
        }
        out.sort_by(|a, b| (&a.manifest.name, &a.manifest.created_at).cmp(&(&b.manifest.name, &b.manifest.created_at)));
        Ok(out)
    }

    /// Removes every entry of the image called `name`.
    pub fn remove(&self, name: &str) -> Result<Vec<PathBuf>, CacheError> {
        let mut removed = Vec::new();
        for e in self.list()?.into_iter().filter(|e| e.manifest.name == name) {
            let key = e.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let _lock = FileLock::acquire(&self.lock_path(&key))?;
            std::fs::remove_dir_all(&e.dir).map_err(io(&e.dir))?;
            removed.push(e.dir);
        }
        if removed.is_empty() {
            return Err(CacheError::NotFound(name.into()));
        }
        Ok(removed)
    }

    /// Removes stale entries (built from an older recipe or builder),
    /// leftovers of interrupted builds, and kernels no entry uses.
    pub fn gc(&self) -> Result<GcReport, CacheError> {
        let mut report = GcReport::default();
        let drop_dir = |p: PathBuf, report: &mut GcReport| {
            // Never delete through a mount: an interrupted build's rootfs can
            // still have /proc, /sys or /dev mounted by a surviving mmdebstrap.
            if has_mounts_under(&p) {
                return;
            }
            report.freed_bytes += dir_size(&p);
            if std::fs::remove_dir_all(&p).is_ok() {
                report.removed.push(p);
            }
        };
        let entries = self.list()?;
        for e in entries.iter().filter(|e| !e.current) {
            drop_dir(e.dir.clone(), &mut report);
        }
        let images = self.images_dir();
        if let Ok(rd) = std::fs::read_dir(&images) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix(".tmp-") else { continue };
                // `.tmp-<key>-<pid>`: only if nobody holds the key's lock.
                let key = rest.rsplit_once('-').map(|(k, _)| k).unwrap_or(rest);
                if let Some(_l) = FileLock::try_acquire(&self.lock_path(key))? {
                    drop_dir(e.path(), &mut report);
                }
            }
        }
        let used: Vec<String> = entries.iter().filter(|e| e.current).filter_map(|e| e.manifest.kernel.as_ref().map(|k| k.package.clone())).collect();
        if let Ok(rd) = std::fs::read_dir(self.root.join("kernels")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".lock") || used.iter().any(|u| name.starts_with(u.as_str())) {
                    continue;
                }
                if let Some(_l) = FileLock::try_acquire(&self.root.join("kernels").join(format!("{name}.lock")))? {
                    drop_dir(e.path(), &mut report);
                }
            }
        }
        Ok(report)
    }
}

/// Whether anything is mounted at or below `dir` (from /proc/self/mountinfo).
fn has_mounts_under(dir: &Path) -> bool {
    let Ok(dir) = std::fs::canonicalize(dir) else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return true };
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|mp| {
        // Mount points are octal-escaped (\040 for a space); ours have none.
        Path::new(mp).starts_with(&dir)
    })
}
