//! RAM snapshots: a VM booted once to its backdoor is saved (guest RAM and
//! device state), and later VMs of the same shape restore it instead of
//! booting.
//!
//! How it is stored, in `<image dir>/snapshots/<key>/`:
//! - `ram`: guest RAM. The saving VM maps it shared
//!   (`memory-backend-file,share=on`), so with the `x-ignore-shared`
//!   migration capability the stream skips it and the file is the RAM. A
//!   restoring VM maps it private (`share=off`, copy-on-write): nothing is
//!   copied or read up front, pages fault in from the page cache as the
//!   guest touches them, and no cell's writes reach the file or another
//!   cell.
//! - `state`: the migration stream (device state and the small RAM blocks:
//!   firmware, VGA memory).
//! - `disk.qcow2`: the saving VM's disk, an overlay of the image's disk (or
//!   of the prepared disk). Each restoring VM boots a new overlay of it,
//!   since guest RAM (its page cache, its mounted file systems) matches
//!   that disk.
//! - `OVMF_VARS.fd` (UEFI guests): the variable store as the firmware left
//!   it.
//! - `snapshot.json`: [`Meta`], written last: a directory without it is
//!   incomplete and is made again.
//!
//! The key is a hash of everything that shapes the VM ([`Shape`]), so a
//! snapshot is never restored into a VM it does not fit. QEMU refuses a
//! stream that does not fit anyway; xdriver then drops the snapshot and
//! boots cold, with a warning.
//!
//! What cannot be in a snapshot: a mounted 9p share (QEMU blocks migration
//! while one is mounted, so shares are mounted after the restore) and
//! vhost-user-fs (virtio-fs; QEMU 7.2 cannot migrate it), so the saving VM
//! has no virtio-fs devices and a restore hot-plugs them (see
//! `Vm::launch`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped when what a snapshot holds or how it is restored changes.
pub const FORMAT: u32 = 2;

/// What `snapshot.json` says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// [`FORMAT`] at the time of saving.
    pub format: u32,
    /// The key (the directory's name).
    pub key: String,
    /// What the key was made of, for people reading the file.
    pub shape: String,
    /// When it was saved (RFC 3339).
    pub created: String,
    /// The cold boot of the saving VM: QEMU's start to its backdoor.
    pub boot_s: f64,
    /// From the backdoor to the moment of saving (waiting for the guest's
    /// sshd, the sign that its init is done starting services).
    pub settle_s: f64,
    /// The save itself.
    pub save_s: f64,
    /// Checksums of the files as saved, checked before each restore
    /// (snapshots saved before xdriver took them have none: checked for
    /// size only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sums: Option<Sums>,
}

/// Checksums of a snapshot's files, taken as it is saved and checked
/// before QEMU reads them: a file changed since (bytes overwritten, a
/// device state from another save or another QEMU) is found before the
/// guest runs on it. Hashing the whole RAM file would read all of it
/// (about 0.5 s for 1 GiB, with SHA-NI) where a restore maps it and reads
/// only what the guest touches, so the RAM is sampled: [`RAM_SAMPLE`]
/// bytes in each MiB, at a page that moves from MiB to MiB. Any damage
/// of a MiB or more is seen; a few flipped bytes are seen only if they
/// fall in a sampled page (1 in 256), else the restored guest must show
/// them (a guest that does not come up is dropped the same way).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sums {
    /// SHA-256 of the device state, whole.
    pub state: String,
    /// SHA-256 of the sampled pages of the RAM file, in order.
    pub ram_sampled: String,
}

/// Bytes of the RAM file hashed in each MiB (one page).
pub const RAM_SAMPLE: u64 = 4096;

impl Sums {
    /// The checksums of `snap`'s files as they are now.
    pub fn of(snap: &Snapshot) -> std::io::Result<Sums> {
        use std::os::unix::fs::FileExt;
        let state = sha256_file(&snap.state())?;
        let ram = std::fs::File::open(snap.ram())?;
        let len = ram.metadata()?.len();
        let mut h = Sha256::new();
        let mut page = vec![0u8; RAM_SAMPLE as usize];
        for (i, mib) in (0..len).step_by(1 << 20).enumerate() {
            // The page within the MiB: 0, 97, 194, ... modulo 256 pages.
            let at = mib + (i as u64 * 97 % 256) * RAM_SAMPLE;
            let n = RAM_SAMPLE.min(len.saturating_sub(at)) as usize;
            ram.read_exact_at(&mut page[..n], at)?;
            h.update(&page[..n]);
        }
        h.update(len.to_le_bytes());
        Ok(Sums { state, ram_sampled: format!("{:x}", h.finalize()) })
    }

    /// What differs between these sums (as saved) and `now`'s, if
    /// anything.
    pub fn differ(&self, now: &Sums) -> Option<String> {
        let mut what = Vec::new();
        if self.state != now.state {
            what.push("its device state");
        }
        if self.ram_sampled != now.ram_sampled {
            what.push("its RAM file (sampled pages)");
        }
        (!what.is_empty()).then(|| format!("{} changed since it was saved (checksum)", what.join(" and ")))
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// Everything that shapes a VM a snapshot may be restored into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The lines that make the key.
    pub lines: Vec<String>,
}

impl Shape {
    /// Starts a shape with the QEMU binary's version (a snapshot is only
    /// restored by the QEMU that saved it).
    pub fn new(qemu: &str) -> Result<Shape, String> {
        let v = qemu_version(qemu)?;
        Ok(Shape { lines: vec![format!("format {FORMAT}"), format!("qemu {v}")] })
    }

    /// Adds a line.
    pub fn add(&mut self, what: &str, value: impl std::fmt::Display) {
        self.lines.push(format!("{what} {value}"));
    }

    /// Adds a file by its path, size and modification time.
    pub fn add_file(&mut self, what: &str, path: &Path) -> Result<(), String> {
        let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
        self.add(what, format!("{} {} {mtime}", path.display(), m.len()));
        Ok(())
    }

    /// The key: a hash of the lines.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for l in &self.lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// `qemu --version`'s first line (cached per binary).
pub fn qemu_version(qemu: &str) -> Result<String, String> {
    static CACHE: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some((_, v)) = cache.lock().expect("version cache").iter().find(|(b, _)| b == qemu) {
        return Ok(v.clone());
    }
    let out = std::process::Command::new(qemu).arg("--version").output().map_err(|e| format!("{qemu} --version: {e}"))?;
    let v = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_string();
    if !out.status.success() || v.is_empty() {
        return Err(format!("{qemu} --version said nothing useful"));
    }
    cache.lock().expect("version cache").push((qemu.to_string(), v.clone()));
    Ok(v)
}

/// One snapshot's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `<image dir>/snapshots/<key>`.
    pub dir: PathBuf,
}

impl Snapshot {
    /// The snapshot of `shape` for the image in `image_dir`.
    pub fn of(image_dir: &Path, shape: &Shape) -> Snapshot {
        Snapshot { dir: image_dir.join("snapshots").join(shape.key()) }
    }
    /// Guest RAM.
    pub fn ram(&self) -> PathBuf {
        self.dir.join("ram")
    }
    /// The migration stream.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// The disk restoring VMs take overlays of.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    /// UEFI's variable store.
    pub fn vars(&self) -> PathBuf {
        self.dir.join("OVMF_VARS.fd")
    }
    /// The serial log of the saving boot.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    fn meta_path(&self) -> PathBuf {
        self.dir.join("snapshot.json")
    }
    fn lock_path(&self) -> PathBuf {
        self.dir.with_extension("lock")
    }

    /// The metadata if the snapshot is complete and of this format.
    pub fn meta(&self) -> Option<Meta> {
        let m: Meta = serde_json::from_str(&std::fs::read_to_string(self.meta_path()).ok()?).ok()?;
        let files = [self.ram(), self.state(), self.disk()];
        (m.format == FORMAT && files.iter().all(|f| f.is_file())).then_some(m)
    }

    /// Takes the right to save this snapshot, if no other VM (of this
    /// xdriver or another) is saving it; clears what an unfinished save
    /// left.
    pub fn begin_save(&self) -> Result<Option<xdriver_images::FileLock>, String> {
        std::fs::create_dir_all(self.dir.parent().unwrap_or(&self.dir)).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let Some(lock) = xdriver_images::FileLock::try_acquire(&self.lock_path()).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        // Taken after a save that finished meanwhile: nothing to do.
        if self.meta().is_some() {
            return Ok(None);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        Ok(Some(lock))
    }

    /// Waits (up to `timeout`) while another VM saves this snapshot; true
    /// if it is complete then. A saver that dies releases its lock, so
    /// this ends as soon as the save ends either way.
    pub async fn wait_for_save(&self, timeout: std::time::Duration) -> bool {
        let t0 = std::time::Instant::now();
        loop {
            if self.meta().is_some() {
                return true;
            }
            if let Ok(Some(_free)) = xdriver_images::FileLock::try_acquire(&self.lock_path()) {
                return self.meta().is_some();
            }
            if t0.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Marks the save complete.
    pub fn finish_save(&self, meta: &Meta) -> Result<(), String> {
        let json = serde_json::to_string_pretty(meta).map_err(|e| e.to_string())?;
        let tmp = self.dir.join("snapshot.json.tmp");
        std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, self.meta_path())).map_err(|e| format!("{}: {e}", self.meta_path().display()))
    }

    /// Drops a snapshot that could not be restored (it is made again by
    /// the next VM of its shape). Not while another VM saves it.
    pub fn discard(&self) {
        if let Ok(Some(_lock)) = xdriver_images::FileLock::try_acquire(&self.lock_path()) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Bytes the snapshot takes on disk (allocated, since `ram` is sparse).
    pub fn disk_usage(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(&self.dir).into_iter().flatten().flatten().filter_map(|e| e.metadata().ok()).map(|m| m.blocks() * 512).sum()
    }
}

/// Every snapshot an image directory holds.
pub fn list(image_dir: &Path) -> Vec<Snapshot> {
    let mut v: Vec<Snapshot> = std::fs::read_dir(image_dir.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| Snapshot { dir: e.path() })
        .collect();
    v.sort_by(|a, b| a.dir.cmp(&b.dir));
    v
}

/// Snapshots under `image_dir` no VM will restore: incomplete or of an
/// older format (and not being saved), or saved by another QEMU than
/// `qemu`.
pub fn stale(image_dir: &Path, qemu: &str) -> Vec<Snapshot> {
    let version = qemu_version(qemu).ok();
    list(image_dir)
        .into_iter()
        .filter(|s| match s.meta() {
            None => xdriver_images::FileLock::try_acquire(&s.lock_path()).ok().flatten().is_some(),
            Some(m) => version.as_ref().is_some_and(|v| !m.shape.lines().any(|l| l == format!("qemu {v}"))),
        })
        .collect()
}

/// The commands a restored guest runs before anything else: its clock
/// set to the host's (it stood still since the save), its RNG reseeded
/// with bytes from the host (every restore of a snapshot starts with the
/// same RNG state otherwise), and `then`.
pub fn after_restore_script(set_clock: &str, reseed: &str, then: &str) -> String {
    format!("{set_clock} >/dev/null; {reseed}; {then}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_every_line_and_a_snapshot_is_complete_only_with_its_meta() {
        let mut a = Shape { lines: vec!["format 1".into(), "qemu QEMU emulator version 7.2.0".into()] };
        a.add("mem", 1024);
        let mut b = a.clone();
        assert_eq!(a.key(), b.key());
        b.add("shares", 1);
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key().len(), 16);
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Snapshot::of(dir.path(), &a);
        assert_eq!(s.dir, dir.path().join("snapshots").join(a.key()));
        let lock = s.begin_save().expect("begin").expect("ours");
        // Another saver is refused while the first holds the lock.
        assert!(s.begin_save().expect("begin").is_none());
        assert!(s.meta().is_none());
        for f in [s.ram(), s.state(), s.disk()] {
            std::fs::write(f, b"x").expect("write");
        }
        assert!(s.meta().is_none(), "complete without its meta");
        let meta = Meta { format: FORMAT, key: a.key(), shape: a.lines.join("\n"), created: "now".into(), boot_s: 1.0, settle_s: 0.5, save_s: 0.2, sums: None };
        s.finish_save(&meta).expect("finish");
        assert_eq!(s.meta(), Some(meta.clone()));
        drop(lock);
        // Complete: nobody saves it again.
        assert!(s.begin_save().expect("begin").is_none());
        assert_eq!(list(dir.path()), vec![s.clone()]);
        std::fs::remove_file(s.state()).expect("rm");
        assert!(s.meta().is_none(), "complete without its state");
        s.discard();
        assert!(!s.dir.exists());
        // An old format is not complete.
        std::fs::create_dir_all(&s.dir).expect("mkdir");
        for f in [s.ram(), s.state(), s.disk()] {
            std::fs::write(f, b"x").expect("write");
        }
        s.finish_save(&Meta { format: FORMAT + 1, ..meta }).expect("finish");
        assert!(s.meta().is_none());
    }

    #[test]
    fn sums_see_a_changed_state_and_a_changed_mib_of_ram_but_not_every_flipped_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Snapshot { dir: dir.path().to_path_buf() };
        let ram: Vec<u8> = (0..(3u32 << 20) + 5000).map(|i| (i % 251) as u8).collect();
        std::fs::write(s.ram(), &ram).expect("ram");
        std::fs::write(s.state(), b"QEVM device state").expect("state");
        let saved = Sums::of(&s).expect("sums");
        assert_eq!(saved.differ(&Sums::of(&s).expect("sums")), None);
        let write_at = |path: PathBuf, at: u64, bytes: &[u8]| {
            use std::os::unix::fs::FileExt;
            std::fs::OpenOptions::new().write(true).open(path).expect("open").write_all_at(bytes, at).expect("write");
        };
        // One byte of the device state.
        write_at(s.state(), 3, b"X");
        assert_eq!(saved.differ(&Sums::of(&s).expect("sums")).as_deref(), Some("its device state changed since it was saved (checksum)"));
        write_at(s.state(), 3, b"M");
        // A MiB of RAM, wherever it starts.
        write_at(s.ram(), (1 << 20) + 12345, &vec![0xa5; 1 << 20]);
        assert_eq!(saved.differ(&Sums::of(&s).expect("sums")).as_deref(), Some("its RAM file (sampled pages) changed since it was saved (checksum)"));
        std::fs::write(s.ram(), &ram).expect("ram");
        // A byte in the sampled page of the second MiB (page 97), and one
        // outside every sampled page (the first MiB samples page 0).
        write_at(s.ram(), (1 << 20) + 97 * RAM_SAMPLE + 10, b"\xff");
        assert!(saved.differ(&Sums::of(&s).expect("sums")).is_some());
        std::fs::write(s.ram(), &ram).expect("ram");
        write_at(s.ram(), 5 * RAM_SAMPLE, b"\xff");
        assert_eq!(saved.differ(&Sums::of(&s).expect("sums")), None, "a byte outside the sampled pages is not seen");
        // A truncated RAM file (the length is in the sum too).
        std::fs::OpenOptions::new().write(true).open(s.ram()).expect("open").set_len(3 << 20).expect("truncate");
        assert!(saved.differ(&Sums::of(&s).expect("sums")).is_some());
    }

    #[test]
    fn gc_drops_incomplete_snapshots_and_those_of_another_qemu_but_not_one_being_saved() {
        let qemu = "qemu-system-x86_64";
        let dir = tempfile::tempdir().expect("tempdir");
        let make = |shape: &Shape| {
            let s = Snapshot::of(dir.path(), shape);
            let _lock = s.begin_save().expect("begin").expect("ours");
            for f in [s.ram(), s.state(), s.disk()] {
                std::fs::write(f, b"x").expect("write");
            }
            s.finish_save(&Meta { format: FORMAT, key: shape.key(), shape: shape.lines.join("\n"), created: "now".into(), boot_s: 1.0, settle_s: 0.0, save_s: 0.1, sums: None })
                .expect("finish");
            s
        };
        let mut ours = Shape::new(qemu).expect("qemu installed");
        ours.add("mem-mib", 1024);
        let current = make(&ours);
        let mut old = Shape { lines: vec![format!("format {FORMAT}"), "qemu QEMU emulator version 1.0".into()] };
        old.add("mem-mib", 1024);
        let other_qemu = make(&old);
        let mut half = ours.clone();
        half.add("cpus", 4);
        let incomplete = Snapshot::of(dir.path(), &half);
        std::fs::create_dir_all(&incomplete.dir).expect("mkdir");
        let mut saving_shape = ours.clone();
        saving_shape.add("cpus", 8);
        let saving = Snapshot::of(dir.path(), &saving_shape);
        let lock = saving.begin_save().expect("begin").expect("ours");
        let mut stale_dirs: Vec<PathBuf> = stale(dir.path(), qemu).into_iter().map(|s| s.dir).collect();
        stale_dirs.sort();
        let mut want = vec![other_qemu.dir.clone(), incomplete.dir.clone()];
        want.sort();
        assert_eq!(stale_dirs, want);
        assert!(!stale(dir.path(), qemu).iter().any(|s| s == &current || s == &saving));
        drop(lock);
        assert!(stale(dir.path(), qemu).contains(&saving), "an abandoned save is stale");
    }
}
