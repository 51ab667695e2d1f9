//! Prepare once, boot many: an imported image is booted once by its own
//! boot loader with a NoCloud seed (cloud-init on Linux, nuageinit on
//! FreeBSD) that installs xdriver's backdoor; the guest then records its
//! SSH host key, keeps its first-boot agent from running again and powers
//! off. The prepared disk (a qcow2 over the imported one) is cached beside
//! the image, keyed by the image and the preparation, and every cell boots
//! an overlay of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use xdriver_guests::{backdoor_script, Os};
use xdriver_images::{Entry, FileLock, GuestAdditions, Seed, ImageCache};

use crate::error_chain::chain_error;
use crate::vm::qemu::Accel;
use crate::vm::{Channel, DiskUse, Stopped, Vm, VmConfig};

/// Bumped when the preparation changes in a way its inputs do not show.
const PREPARE_VERSION: u32 = 1;

/// How long the first boot (firmware, boot loader, cloud-init's first
/// run) may take under TCG before the backdoor answers.
pub const PREPARE_BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// A prepared disk of an imported image.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    /// The prepared disk (a qcow2 whose backing file is the image's disk).
    #[serde(skip)]
    pub disk: PathBuf,
    /// The guest's SSH host key (OpenSSH public key line).
    pub host_key: String,
    /// The preparation's key (part of the file names).
    pub key: String,
    /// How long the preparation took.
    pub seconds: f64,
    /// RFC 3339.
    pub prepared_at: String,
    /// A spec's `[guest]` additions this preparation applied (None: the
    /// image's own preparation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additions: Option<GuestAdditions>,
    /// What they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<crate::vm::packages::Applied>,
}

/// Preparation failures.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The image is not an imported one.
    #[error("image {0} is built, not imported: it needs no preparation")]
    NotImported(String),
    /// The manifest names an OS xdriver does not know.
    #[error("image {image}: {detail}")]
    Os {
        /// The image.
        image: String,
        /// Why.
        detail: String,
    },
    /// The first boot failed.
    #[error("preparing image {image} (its first boot, with a NoCloud seed) failed: {detail}")]
    Boot {
        /// The image.
        image: String,
        /// What went wrong (with the serial tail).
        detail: String,
    },
    /// A lock failed.
    #[error(transparent)]
    Lock(#[from] xdriver_images::LockError),
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Io { path: path.into(), source }
}

/// The seed that prepares `entry` (a pure function of the image's OS).
pub fn seed_for(os: Os, key: &str) -> Seed {
    Seed {
        meta_data: format!("instance-id: xdriver-{key}\nlocal-hostname: xdriver\n"),
        user_data: os.prepare_user_data(&backdoor_script(&*os)),
        network_config: None,
    }
}

/// The preparation's key: the image (its own key covers the source file,
/// OS and firmware), everything the preparation does, and a spec's
/// `[guest]` additions if it applies some.
pub fn prepare_key(entry: &Entry, os: Os, add: Option<&GuestAdditions>) -> String {
    let seed = seed_for(os, "-");
    let mut h = Sha256::new();
    h.update(format!("{PREPARE_VERSION}\n{}\n{}\n", entry.manifest.recipe_hash, os.name()));
    h.update(seed.user_data.as_bytes());
    h.update(os.prepare_finish().as_bytes());
    if let Some(a) = add {
        h.update(serde_json::to_string(a).expect("additions serialize").as_bytes());
    }
    hex::encode(h.finalize())[..12].to_string()
}

fn entry_key(entry: &Entry) -> String {
    entry.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The prepared disk of `entry` (with `add` applied), if it has been prepared.
pub fn lookup(entry: &Entry, add: Option<&GuestAdditions>) -> Result<Option<Prepared>, PrepareError> {
    let os = os_of(entry)?;
    let key = prepare_key(entry, os, add);
    Ok(read(entry, &key))
}

fn read(entry: &Entry, key: &str) -> Option<Prepared> {
    let disk = entry.dir.join(format!("prepared-{key}.qcow2"));
    let meta = std::fs::read_to_string(entry.dir.join(format!("prepared-{key}.json"))).ok()?;
    let mut p: Prepared = serde_json::from_str(&meta).ok()?;
    if !disk.is_file() {
        return None;
    }
    p.disk = disk;
    Some(p)
}

fn os_of(entry: &Entry) -> Result<Os, PrepareError> {
    entry.manifest.os.parse().map_err(|e: xdriver_guests::UnknownOs| PrepareError::Os { image: entry.manifest.name.clone(), detail: e.to_string() })
}

/// Files of `entry`'s earlier preparations (another key than today's) and
/// of interrupted ones (nobody holds their lock), for `image gc`.
pub fn stale_files(cache: &ImageCache, entry: &Entry) -> Result<Vec<PathBuf>, PrepareError> {
    let os = os_of(entry)?;
    // Current: the image's own preparation and every preparation whose
    // recorded additions still give its key.
    let mut current = vec![prepare_key(entry, os, None)];
    for e in std::fs::read_dir(&entry.dir).map_err(io(&entry.dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(k) = name.strip_prefix("prepared-").and_then(|r| r.strip_suffix(".json")) else { continue };
        let meta: Option<Prepared> = std::fs::read_to_string(e.path()).ok().and_then(|t| serde_json::from_str(&t).ok());
        if let Some(a) = meta.and_then(|m| m.additions) {
            if prepare_key(entry, os, Some(&a)) == k {
                current.push(k.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(&entry.dir).map_err(io(&entry.dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = if let Some(rest) = name.strip_prefix("prepared-") {
            !current.iter().any(|key| rest.starts_with(&format!("{key}.")))
        } else if let Some(rest) = name.strip_prefix(".prepared-").or_else(|| name.strip_prefix(".seed-")) {
            // `.prepared-<key>-<pid>.qcow2`: only if nobody prepares it now.
            let k = rest.split('-').next().unwrap_or_default();
            let lock = cache.lock_path(&format!("{}-prepared-{k}", entry_key(entry)));
            FileLock::try_acquire(&lock)?.is_some()
        } else {
            false
        };
        if stale {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// Returns the prepared disk of the imported image `entry`, preparing it
/// first if needed. Concurrent callers prepare it once (a lock per image
/// and preparation); an interrupted preparation leaves nothing that a
/// later run would use.
pub async fn ensure(cache: &ImageCache, entry: &Entry, add: Option<&GuestAdditions>, accel: Accel, mem_mib: u32) -> Result<Prepared, PrepareError> {
    if entry.manifest.import.is_none() {
        return Err(PrepareError::NotImported(entry.manifest.name.clone()));
    }
    let os = os_of(entry)?;
    let key = prepare_key(entry, os, add);
    if let Some(p) = read(entry, &key) {
        return Ok(p);
    }
    let lock_path = cache.lock_path(&format!("{}-prepared-{key}", entry_key(entry)));
    let _lock = tokio::task::spawn_blocking(move || FileLock::acquire(&lock_path))
        .await
        .map_err(|e| PrepareError::Io { path: PathBuf::from("lock"), source: std::io::Error::other(e) })??;
    if let Some(p) = read(entry, &key) {
        return Ok(p);
    }
    let started = Instant::now();
    let pid = std::process::id();
    let tmp_disk = entry.dir.join(format!(".prepared-{key}-{pid}.qcow2"));
    let seed_path = entry.dir.join(format!(".seed-{key}-{pid}.img"));
    let cleanup = |paths: &[&Path]| {
        for p in paths {
            let _ = std::fs::remove_file(p);
        }
    };
    // The prepared disk is an overlay named relative to the image's disk,
    // so the entry can move (export, another cache) and keep working.
    let out = tokio::process::Command::new("qemu-img")
        .current_dir(&entry.dir)
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &entry.manifest.disk.file])
        .arg(&tmp_disk)
        .output()
        .await
        .map_err(io(&tmp_disk))?;
    if !out.status.success() {
        return Err(PrepareError::Boot { image: entry.manifest.name.clone(), detail: format!("qemu-img create: {}", String::from_utf8_lossy(&out.stderr).trim()) });
    }
    let seed = seed_for(os, &key).to_fat_image().map_err(io(&seed_path))?;
    std::fs::write(&seed_path, seed).map_err(io(&seed_path))?;

    // The host's downloads for the additions: outside the cache (the share's
    // server, virtiofsd, runs as nobody and must reach it), gone after.
    let additions = match add {
        Some(a) => Some((a, tempfile::Builder::new().prefix("xdriver-packages-").tempdir_in("/var/tmp").map_err(io(Path::new("/var/tmp")))?)),
        None => None,
    };
    let result = boot_and_prepare(entry, os, additions.as_ref().map(|(a, w)| (*a, w.path())), accel, mem_mib, &tmp_disk, &seed_path).await;
    drop(additions);
    cleanup(&[&seed_path]);
    let (host_key, applied) = match result {
        Ok(k) => k,
        Err(e) => {
            // The disk goes; its first boot's serial log stays for the
            // post-mortem (named in the error).
            cleanup(&[&tmp_disk]);
            return Err(e);
        }
    };
    let prepared = Prepared {
        disk: entry.dir.join(format!("prepared-{key}.qcow2")),
        host_key,
        key: key.clone(),
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        prepared_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        additions: add.cloned(),
        applied,
    };
    std::fs::rename(&tmp_disk, &prepared.disk).map_err(io(&prepared.disk))?;
    let _ = std::fs::rename(tmp_disk.with_extension("serial.log"), prepared.disk.with_extension("serial.log"));
    let meta = entry.dir.join(format!("prepared-{key}.json"));
    std::fs::write(&meta, serde_json::to_string_pretty(&prepared).expect("serializes")).map_err(io(&meta))?;
    tracing::info!(image = %entry.manifest.name, key, seconds = prepared.seconds, "image prepared");
    Ok(prepared)
}

/// The first boot: waits for the backdoor the seed installed, applies a
/// spec's additions if there are some (with a work directory on the host
/// for their downloads), finishes the preparation over it and powers off
/// cleanly. Returns the host key and what the additions did.
async fn boot_and_prepare(
    entry: &Entry,
    os: Os,
    additions: Option<(&GuestAdditions, &Path)>,
    accel: Accel,
    mem_mib: u32,
    disk: &Path,
    seed: &Path,
) -> Result<(String, Option<crate::vm::packages::Applied>), PrepareError> {
    let image = entry.manifest.name.clone();
    let fail = |detail: String| PrepareError::Boot { image: image.clone(), detail };
    let mut cfg = VmConfig::new(&format!("prepare-{image}"), entry.clone());
    cfg.accel = accel;
    cfg.mem_mib = mem_mib;
    cfg.ssh = false;
    cfg.boot_timeout = PREPARE_BOOT_TIMEOUT;
    cfg.disk = DiskUse::Preparing { disk: disk.to_path_buf(), seed: seed.to_path_buf() };
    // The downloads reach the guest over a share of this boot only.
    let downloads = additions.map(|(_, w)| w.join("downloads"));
    if let (Some(d), Some((_, w))) = (&downloads, additions) {
        std::fs::create_dir_all(d).map_err(io(d))?;
        // World-readable, for virtiofsd running as nobody.
        let _ = std::fs::set_permissions(w, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        cfg.shares = vec![crate::vm::qemu::Share { host: d.clone(), guest: crate::vm::packages::GUEST_DIR.into(), writable: false }];
    }
    let label = cfg.name.clone();
    let before = crate::vm::rundir::RunDir::existing(&label);
    let mut vm = match Vm::start(cfg).await {
        Ok(vm) => vm,
        Err(e) => {
            // The failed VM's run directory (its console and QEMU logs) is kept.
            let mut detail = chain_error(&e);
            if let Some(kept) = crate::vm::rundir::RunDir::kept_since(&label, &before) {
                detail.push_str(&format!("\n(run directory kept: {})", kept.display()));
            }
            return Err(fail(detail));
        }
    };
    let mut applied = None;
    if let (Some(d), Some((a, w))) = (&downloads, additions) {
        match crate::vm::packages::apply(&vm, os, a, d, &w.join("apt")).await {
            Ok(done) => applied = Some(done),
            Err(e) => {
                vm.keep_run_dir();
                return Err(fail(format!("applying the spec's [guest] additions: {e}\n(run directory kept: {})", vm.run_dir().display())));
            }
        }
        // Not mounted again when the prepared disk boots.
        let forget = os.forget_share(&crate::vm::qemu::Share::tag(0), crate::vm::packages::GUEST_DIR);
        let _ = vm.exec(Channel::Backdoor, &forget, &[], Duration::from_secs(30), None).await;
    }
    let out = vm.exec(Channel::Backdoor, os.prepare_finish(), &[], Duration::from_secs(600), None).await;
    let out = match out {
        Ok(o) if o.success() => o,
        Ok(o) => {
            vm.keep_run_dir();
            return Err(fail(format!("finishing the preparation exited {}: {}\n(run directory kept: {})", o.status, o.stderr_str().trim(), vm.run_dir().display())));
        }
        Err(e) => {
            vm.keep_run_dir();
            return Err(fail(chain_error(&e)));
        }
    };
    let host_key = out.stdout_str().lines().last().unwrap_or_default().trim().to_string();
    if !host_key.starts_with("ssh-ed25519 ") {
        vm.keep_run_dir();
        return Err(fail(format!("no ed25519 SSH host key in the guest (got {host_key:?})")));
    }
    // The first boot's serial log is kept beside the prepared disk (the
    // firmware's, the loader's and cloud-init's output).
    vm.keep_run_dir();
    let run_dir = vm.run_dir().to_path_buf();
    // Power off without stopping services (a clean shutdown took 12 s of
    // the first boot under TCG); the normal shutdown if that does not end
    // QEMU.
    let now = format!("(sleep 0.5; {}) >/dev/null 2>&1 </dev/null &", os.poweroff_now());
    let asked = vm.exec(Channel::Backdoor, &now, &[], Duration::from_secs(10), None).await.is_ok();
    let stopped = if asked && vm.wait_exit(Duration::from_secs(30)).await { Stopped::GuestPoweroff } else { vm.shutdown().await };
    let log = disk.with_extension("serial.log");
    let _ = std::fs::copy(run_dir.join("serial.log"), &log);
    if matches!(stopped, Stopped::GuestPoweroff | Stopped::Acpi | Stopped::AlreadyExited) {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    match stopped {
        Stopped::GuestPoweroff | Stopped::Acpi | Stopped::AlreadyExited => Ok((host_key, applied)),
        // Writes may still be in QEMU's cache (cache=unsafe): a disk from
        // a VM that had to be killed is not kept.
        other => Err(fail(format!("the guest did not power off cleanly ({other:?}); run directory {}", run_dir.display()))),
    }
}
