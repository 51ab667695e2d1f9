//! Images that come from elsewhere: a vendor's disk image (qcow2 or raw,
//! plain or xz/zstd/gzip-compressed) imported for a guest OS, and any image
//! (built or imported) moved between machines as a tar of its cache entry.
//!
//! Every import works in a temporary directory under the entry's lock and
//! is renamed into place only once complete and checked, so a truncated or
//! corrupt input leaves nothing behind and two imports of the same thing
//! do the work once.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use xdriver_guests::{Firmware, Images, Os};

use crate::lock::{FileLock, LockError};
use crate::manifest::{DiskInfo, ImportInfo, Manifest, MANIFEST_SCHEMA};
use crate::cache::{CacheError, Entry, ImageCache};

/// Import and export failures.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The OS's images are built, not imported.
    #[error("{os} images are built by xdriver (`xdriver image build {os}`), not imported; OSes that are imported: {imported}")]
    NotImported {
        /// The OS.
        os: String,
        /// The OSes that are.
        imported: String,
    },
    /// A bad image name.
    #[error("image name `{0}`: use lowercase letters, digits, `.`, `_` and `-`, starting with a letter or digit")]
    BadName(String),
    /// The input's checksum is not the one given.
    #[error("{file}: SHA-256 is {actual}, not {expected} (--sha256): a truncated or different file")]
    Checksum {
        /// The input.
        file: PathBuf,
        /// What it is.
        actual: String,
        /// What was asked for.
        expected: String,
    },
    /// The input could not be decompressed.
    #[error("{file}: not a valid {format} stream ({detail}): truncated or corrupt")]
    Decompress {
        /// The input.
        file: PathBuf,
        /// The compression.
        format: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// qemu-img refused the disk.
    #[error("{file}: not a usable disk image: {detail}")]
    BadDisk {
        /// The input.
        file: PathBuf,
        /// qemu-img's message.
        detail: String,
    },
    /// A tar that is not an exported xdriver image.
    #[error("{file}: not an image exported by `xdriver image export` ({detail})")]
    BadArchive {
        /// The input.
        file: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A lock failed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The image cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io { path: path.into(), source }
}

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    /// The entry.
    pub entry: Entry,
    /// False when the same thing was already there (nothing was done).
    pub new: bool,
    /// Entries of the same name that the import replaced.
    pub replaced: Vec<PathBuf>,
}

/// Where an import stands once it holds its key's lock.
enum Begun {
    /// The entry is there already.
    Done(Box<Imported>),
    /// Work to do, in `tmp`, to be moved to `dir`.
    Work {
        /// Held until the entry is in place.
        _lock: FileLock,
        /// The entry's directory.
        dir: PathBuf,
        /// The temporary directory.
        tmp: PathBuf,
    },
}

/// How the input is compressed (found from its first bytes, not its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    None,
    /// xz.
    Xz,
    /// Zstandard.
    Zstd,
    /// gzip.
    Gzip,
}

impl Compression {
    /// From the first bytes of a file.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else {
            Compression::None
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }
}

/// Whether the file at `path` is a tar archive (the `ustar` magic of its
/// first header; only its first 512 bytes are read).
pub fn is_tar(path: &Path) -> Result<bool, ImportError> {
    let h = head(path)?;
    Ok(h.len() >= 262 && &h[257..262] == b"ustar")
}

fn check_name(name: &str) -> Result<(), ImportError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ImportError::BadName(name.into()))
    }
}

fn head(path: &Path) -> Result<Vec<u8>, ImportError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut buf = vec![0u8; 512];
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..]).map_err(io(path))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    buf.truncate(n);
    Ok(buf)
}

fn bytes_bar(progress: bool, len: u64, what: String) -> ProgressBar {
    let target = if progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    pb.set_style(
        ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("static template is valid")
            .progress_chars("=> "),
    );
    pb.set_prefix(what);
    pb
}

/// The SHA-256 of a file, with a progress bar.
fn sha256_file(path: &Path, progress: bool) -> Result<String, ImportError> {
    let f = File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let pb = bytes_bar(progress, len, format!("checksum {}", path.display()));
    let mut r = pb.wrap_read(BufReader::with_capacity(1 << 20, f));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    pb.finish_and_clear();
    Ok(hex::encode(h.finalize()))
}

/// Decompresses (or copies) `src` into `dst`.
fn unpack(src: &Path, dst: &Path, c: Compression, progress: bool) -> Result<(), ImportError> {
    let f = File::open(src).map_err(io(src))?;
    let len = f.metadata().map_err(io(src))?.len();
    let pb = bytes_bar(progress, len, format!("unpack {}", src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    let input = BufReader::with_capacity(1 << 20, pb.wrap_read(f));
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(dst).map_err(io(dst))?);
    let bad = |format: &'static str, detail: String| ImportError::Decompress { file: src.into(), format, detail };
    match c {
        Compression::None => {
            let mut input = input;
            std::io::copy(&mut input, &mut out).map_err(io(dst))?;
        }
        Compression::Xz => {
            let mut input = input;
            lzma_rs::xz_decompress(&mut input, &mut out).map_err(|e| bad("xz", e.to_string()))?;
        }
        Compression::Zstd => {
            let mut d = ruzstd::decoding::StreamingDecoder::new(input).map_err(|e| bad("zstd", e.to_string()))?;
            std::io::copy(&mut d, &mut out).map_err(|e| bad("zstd", e.to_string()))?;
        }
        Compression::Gzip => {
            let mut d = flate2::read::MultiGzDecoder::new(input);
            std::io::copy(&mut d, &mut out).map_err(|e| bad("gzip", e.to_string()))?;
        }
    }
    out.flush().map_err(io(dst))?;
    pb.finish_and_clear();
    Ok(())
}

/// `qemu-img info --output=json` of a file.
fn qemu_img_info(path: &Path, format: Option<&str>) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json"]);
    if let Some(f) = format {
        cmd.args(["-f", f]);
    }
    let out = cmd.arg(path).output().map_err(|e| format!("qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info: {e}"))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Turns the unpacked input into the entry's qcow2 disk and checks it.
fn make_disk(src_name: &Path, unpacked: &Path, disk: &Path) -> Result<(String, DiskInfo), ImportError> {
    let bad = |detail: String| ImportError::BadDisk { file: src_name.into(), detail };
    let h = head(unpacked)?;
    let format = if h.starts_with(b"QFI\xfb") { "qcow2" } else { "raw" };
    if format == "qcow2" {
        let info = qemu_img_info(unpacked, Some("qcow2")).map_err(bad)?;
        if info.get("backing-filename").is_some() {
            return Err(bad("a qcow2 with a backing file; import the image it is based on, flattened (qemu-img convert)".into()));
        }
        run(Command::new("qemu-img").args(["check", "-q", "-f", "qcow2"]).arg(unpacked)).map_err(bad)?;
        std::fs::rename(unpacked, disk).map_err(io(disk))?;
    } else {
        if std::fs::metadata(unpacked).map_err(io(unpacked))?.len() < 512 {
            return Err(bad("too small to hold a partition table".into()));
        }
        run(Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(unpacked).arg(disk)).map_err(bad)?;
        let _ = std::fs::remove_file(unpacked);
    }
    let info = qemu_img_info(disk, Some("qcow2")).map_err(bad)?;
    let virtual_bytes = info["virtual-size"].as_u64().unwrap_or(0);
    let file_bytes = std::fs::metadata(disk).map_err(io(disk))?.len();
    Ok((format.into(), DiskInfo { file: "disk.qcow2".into(), virtual_mib: virtual_bytes / (1 << 20), file_bytes }))
}

/// Moves a finished temporary entry into place, or removes it if the work
/// in it failed (nothing of a failed import is left behind).
fn commit(tmp: &Path, dir: &Path, result: Result<Manifest, ImportError>) -> Result<Manifest, ImportError> {
    match result {
        Ok(m) => {
            std::fs::rename(tmp, dir).map_err(io(dir))?;
            Ok(m)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(tmp);
            Err(e)
        }
    }
}

impl ImageCache {
    /// The imported image called `name`, if there is one.
    pub fn imported(&self, name: &str) -> Option<Entry> {
        self.list().ok()?.into_iter().rfind(|e| e.manifest.name == name && e.manifest.import.is_some())
    }

    fn lock(&self, key: &str) -> Result<FileLock, ImportError> {
        Ok(FileLock::acquire(&self.lock_path(key))?)
    }

    /// Takes `key`'s lock and says whether its entry is already there (the
    /// import is then a no-op); else the work goes to a fresh `.tmp-*`.
    fn begin(&self, key: &str) -> Result<Begun, ImportError> {
        let dir = self.root().join("images").join(key);
        let lock = self.lock(key)?;
        if let Ok(manifest) = Manifest::read(&dir.join("manifest.json")) {
            return Ok(Begun::Done(Box::new(Imported { entry: Entry { dir, manifest, current: true }, new: false, replaced: Vec::new() })));
        }
        let tmp = self.fresh_tmp(key)?;
        Ok(Begun::Work { _lock: lock, dir, tmp })
    }

    /// Imports a vendor's disk image as `name` for `os`. `firmware`
    /// defaults to the OS's; `sha256`, if given, must match the file.
    pub fn import_disk(
        &self,
        name: &str,
        file: &Path,
        os: Os,
        firmware: Option<Firmware>,
        sha256: Option<&str>,
        progress: bool,
    ) -> Result<Imported, ImportError> {
        check_name(name)?;
        let Images::Imported { init, firmware: default_fw, .. } = os.images() else {
            let imported: Vec<&str> = Os::all().filter(|o| matches!(o.images(), Images::Imported { .. })).map(|o| o.name()).collect();
            return Err(ImportError::NotImported { os: os.name().into(), imported: imported.join(", ") });
        };
        let firmware = firmware.unwrap_or(default_fw);
        let sum = sha256_file(file, progress)?;
        if let Some(want) = sha256 {
            if !want.eq_ignore_ascii_case(&sum) {
                return Err(ImportError::Checksum { file: file.into(), actual: sum, expected: want.to_lowercase() });
            }
        }
        let key_hash = hex::encode(Sha256::digest(format!("{sum}\n{}\n{}\n", os.name(), firmware.name())));
        let key = format!("{name}-{}", &key_hash[..12]);
        let (_lock, dir, tmp) = match self.begin(&key)? {
            Begun::Done(imported) => return Ok(*imported),
            Begun::Work { _lock, dir, tmp } => (_lock, dir, tmp),
        };
        let result = (|| {
            let c = Compression::sniff(&head(file)?);
            let unpacked = tmp.join("unpacked");
            unpack(file, &unpacked, c, progress)?;
            let (format, disk) = make_disk(file, &unpacked, &tmp.join("disk.qcow2"))?;
            let manifest = Manifest {
                schema: MANIFEST_SCHEMA,
                name: name.into(),
                recipe: String::new(),
                recipe_hash: key_hash.clone(),
                os: os.name().into(),
                release: String::new(),
                init,
                init_path: init.init_path().into(),
                packages: Vec::new(),
                kernel: None,
                disk,
                ssh_host_key: String::new(),
                created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                build_seconds: 0.0,
                derived: None,
                archive_date: None,
                import: Some(ImportInfo {
                    source_file: file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    source_sha256: sum.clone(),
                    compression: c.name().into(),
                    source_format: format,
                    firmware,
                }),
            };
            let json = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
            std::fs::write(tmp.join("manifest.json"), json).map_err(io(&tmp))?;
            Ok(manifest)
        })();
        let manifest = commit(&tmp, &dir, result)?;
        // One image per name: an earlier import under this name goes.
        let mut replaced = Vec::new();
        for old in self.list().unwrap_or_default() {
            if old.manifest.name == name && old.dir != dir {
                let k = old.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let _l = self.lock(&k)?;
                if std::fs::remove_dir_all(&old.dir).is_ok() {
                    replaced.push(old.dir);
                }
            }
        }
        Ok(Imported { entry: Entry { dir, manifest, current: true }, new: true, replaced })
    }

    /// Writes `entry` (its manifest, disk and, for built images, kernel and
    /// initramfs; not the prepared disks derived from it) to a tar file.
    pub fn export(&self, entry: &Entry, out: &Path) -> Result<u64, ImportError> {
        let key = entry.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = out.with_extension("tar.partial");
        let f = File::create(&tmp).map_err(io(&tmp))?;
        let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
        let mut files = vec!["manifest.json".to_string(), entry.manifest.disk.file.clone()];
        if let Some(k) = &entry.manifest.kernel {
            files.push(k.file.clone());
            files.push(k.initrd.clone());
        }
        let res = (|| {
            for f in &files {
                // Plain regular members (not GNU sparse ones, which the tar
                // crate writes for files with holes, as qcow2 files are).
                let p = entry.dir.join(f);
                let file = File::open(&p).map_err(io(&p))?;
                let meta = file.metadata().map_err(io(&p))?;
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                h.set_mode(0o644);
                h.set_mtime(meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()).unwrap_or(0));
                b.append_data(&mut h, format!("{key}/{f}"), BufReader::with_capacity(1 << 20, file)).map_err(io(&p))?;
            }
            b.into_inner().map_err(io(&tmp))?.flush().map_err(io(&tmp))
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, out).map_err(io(out))?;
        Ok(std::fs::metadata(out).map_err(io(out))?.len())
    }

    /// Imports a tar written by [`ImageCache::export`].
    pub fn import_tar(&self, file: &Path, progress: bool) -> Result<Imported, ImportError> {
        let bad = |detail: String| ImportError::BadArchive { file: file.into(), detail };
        // The first member names the entry's directory.
        let key = {
            let mut a = tar::Archive::new(File::open(file).map_err(io(file))?);
            let mut entries = a.entries().map_err(|e| bad(e.to_string()))?;
            let first = entries.next().ok_or_else(|| bad("empty archive".into()))?.map_err(|e| bad(e.to_string()))?;
            let path = first.path().map_err(|e| bad(e.to_string()))?.into_owned();
            let top = path.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
            if top.is_empty() || top.starts_with('.') || top.contains('/') {
                return Err(bad(format!("unexpected member {}", path.display())));
            }
            top
        };
        let (_lock, dir, tmp) = match self.begin(&key)? {
            Begun::Done(imported) => return Ok(*imported),
            Begun::Work { _lock, dir, tmp } => (_lock, dir, tmp),
        };
        let result = (|| {
            let f = File::open(file).map_err(io(file))?;
            let len = f.metadata().map_err(io(file))?.len();
            let pb = bytes_bar(progress, len, format!("unpack {}", file.display()));
            let mut a = tar::Archive::new(BufReader::with_capacity(1 << 20, pb.wrap_read(f)));
            for e in a.entries().map_err(|e| bad(e.to_string()))? {
                let mut e = e.map_err(|e| bad(e.to_string()))?;
                let path = e.path().map_err(|e| bad(e.to_string()))?.into_owned();
                let rel = path.strip_prefix(&key).map_err(|_| bad(format!("member {} is outside {key}/", path.display())))?;
                let name = rel.to_string_lossy().into_owned();
                if name.is_empty() {
                    continue;
                }
                if name.contains('/') || name.starts_with('.') || !e.header().entry_type().is_file() {
                    return Err(bad(format!("unexpected member {}", path.display())));
                }
                let dst = tmp.join(&name);
                let mut out = File::create(&dst).map_err(io(&dst))?;
                let want = e.header().size().map_err(|e| bad(e.to_string()))?;
                let got = std::io::copy(&mut e, &mut out).map_err(|e| bad(format!("{name}: {e}")))?;
                if got != want {
                    return Err(bad(format!("{name}: {got} of {want} bytes: the archive is truncated")));
                }
            }
            pb.finish_and_clear();
            let manifest = Manifest::read(&tmp.join("manifest.json")).map_err(|e| bad(format!("manifest.json: {e}")))?;
            let disk = tmp.join(&manifest.disk.file);
            if !disk.is_file() {
                return Err(bad(format!("no disk {}", manifest.disk.file)));
            }
            run(Command::new("qemu-img").args(["check", "-q", "-f", "qcow2"]).arg(&disk)).map_err(|d| bad(format!("{}: {d}", manifest.disk.file)))?;
            if let Some(k) = &manifest.kernel {
                for f in [&k.file, &k.initrd] {
                    if !tmp.join(f).is_file() {
                        return Err(bad(format!("no {f}")));
                    }
                }
            }
            Ok(manifest)
        })();
        let manifest = commit(&tmp, &dir, result)?;
        Ok(Imported { entry: Entry { dir, manifest, current: true }, new: true, replaced: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_found_from_the_bytes() {
        assert_eq!(Compression::sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]), Compression::Xz);
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 1]), Compression::Zstd);
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::sniff(b"QFI\xfb\0\0\0\x03"), Compression::None);
    }

    #[test]
    fn image_names_are_checked() {
        for ok in ["freebsd", "debian-12-cloud", "f14.3_ufs"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Freebsd", "-x", "a/b", "a b", ".hidden"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
