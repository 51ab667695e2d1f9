//! Snapshot policy: how a VM starts -- restored from its shape's RAM
//! snapshot, or booting cold (saving a snapshot first where it can), and
//! a boot made once more after a kernel panic.

use super::*;

/// Snapshots whose restores could not take their virtio-fs devices
/// hot-plugged, in this process: later VMs of their shape that need
/// virtio-fs boot cold at once instead of trying again.
static NO_HOTPLUG: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Why a snapshot was not saved.
enum SaveFailure {
    /// The guest did not come up.
    Boot(VmError),
    /// It came up, but saving failed.
    Save(VmError),
}

impl Vm {
    /// Boots a fresh VM of `cfg.image` on a new overlay and waits until its
    /// backdoor is ready and its shares are mounted. SSH (if asked) is set
    /// up in the background from the same moment; [`Vm::ssh`] waits for it.
    ///
    /// With [`VmConfig::snapshots`], a VM that can have a RAM snapshot
    /// restores it instead of booting; the first VM of its shape boots,
    /// saves it, and restores it. A snapshot that cannot be restored is
    /// dropped and the VM boots cold, with a warning.
    pub async fn start(cfg: VmConfig) -> Result<Vm, VmError> {
        let mut cold_why = String::from("snapshots off (--cold)");
        let snap = match cfg.snapshots.then(|| snapshot_shape(&cfg)) {
            None => None,
            Some(Ok(shape)) => Some((Snapshot::of(&cfg.image.dir, &shape), shape)),
            Some(Err(why)) => {
                tracing::info!(vm = %cfg.name, %why, "cold boot: no RAM snapshot for this VM");
                cold_why = format!("no RAM snapshot: {why}");
                None
            }
        };
        if let Some((snap, shape)) = snap {
            let mut saved = None;
            let mut waited_s = None;
            if snap.meta().is_none() {
                match snap.begin_save() {
                    Ok(Some(lock)) => {
                        match Vm::save_snapshot(&cfg, &snap, &shape).await {
                            Ok(meta) => saved = Some(meta),
                            // The guest did not come up: a cold boot would
                            // not either (and would take as long again).
                            Err(SaveFailure::Boot(e)) => {
                                let _ = std::fs::remove_dir_all(&snap.dir);
                                return Err(e);
                            }
                            Err(SaveFailure::Save(e)) => {
                                tracing::warn!(vm = %cfg.name, snapshot = %snap.dir.display(), error = %e, "saving a RAM snapshot failed; booting cold");
                                eprintln!("xdriver: warning: saving the RAM snapshot {} failed ({e}); booting cold", snap.dir.display());
                                cold_why = format!("saving the RAM snapshot failed: {e}");
                                let _ = std::fs::remove_dir_all(&snap.dir);
                            }
                        }
                        drop(lock);
                    }
                    // Another VM is saving it: wait for that save rather
                    // than boot a second time beside it (two boots at once
                    // on a small host each take longer than one).
                    Ok(None) => {
                        let waited = Instant::now();
                        if snap.wait_for_save(cfg.boot_timeout + Duration::from_secs(120)).await {
                            tracing::info!(vm = %cfg.name, waited = ?waited.elapsed(), "waited for another VM to save the RAM snapshot");
                            waited_s = Some(waited.elapsed().as_secs_f64());
                        } else {
                            cold_why = "the RAM snapshot of this VM's shape was being saved by another VM, which did not finish it".into();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(vm = %cfg.name, error = %e, "cold boot: the RAM snapshot cannot be saved");
                        cold_why = format!("the RAM snapshot cannot be saved: {e}");
                    }
                }
            }
            let hotplug_failed = cfg.image.manifest.os.parse::<Os>().is_ok_and(|os| hotplug_virtiofs(&cfg, os)) && NO_HOTPLUG.lock().expect("lock").as_ref().is_some_and(|s| s.contains(&snap.dir));
            if hotplug_failed {
                cold_why = "an earlier restore of this VM's RAM snapshot could not take its virtio-fs devices hot-plugged".into();
            } else if let Some(bad) = snap.meta().and_then(|m| snapshot_unsound(&snap, &m, cfg.mem_mib)) {
                // Cheap checks before QEMU maps the RAM file: a truncated
                // file would restore as zeros, overwritten bytes as
                // whatever they are now.
                let e = VmError::Restore { snapshot: snap.dir.clone(), detail: bad };
                tracing::warn!(vm = %cfg.name, error = %e, "dropping the RAM snapshot and booting cold");
                eprintln!("xdriver: warning: {e}; dropped it, booting cold");
                cold_why = format!("the RAM snapshot was unsound and was dropped: {e}");
                snap.discard();
            } else if snap.meta().is_some() {
                match Vm::launch(cfg.clone(), Launch::Restore(snap.clone())).await {
                    Err(e @ VmError::Hotplug { .. }) => {
                        // The snapshot is sound (VMs without virtio-fs
                        // restore it); this VM boots cold.
                        tracing::warn!(vm = %cfg.name, error = %e, "booting cold");
                        eprintln!("xdriver: warning: {e}; booting cold");
                        cold_why = format!("{e}");
                        NO_HOTPLUG.lock().expect("lock").get_or_insert_with(HashSet::new).insert(snap.dir.clone());
                    }
                    // A restore that does not come up (the snapshot's bytes
                    // damaged: the guest panics, QEMU exits or its backdoor
                    // never answers) is the snapshot's fault: dropped (the
                    // next VM of its shape saves a new one), this VM cold.
                    Err(e @ (VmError::Restore { .. } | VmError::GuestPanicked { .. } | VmError::QemuExited { .. } | VmError::Backdoor(_) | VmError::BootTimeout { .. })) => {
                        tracing::warn!(vm = %cfg.name, error = %e, "dropping the RAM snapshot and booting cold");
                        eprintln!("xdriver: warning: {e}; dropped it, booting cold");
                        cold_why = format!("the RAM snapshot could not be restored and was dropped: {e}");
                        snap.discard();
                    }
                    Ok(mut vm) => {
                        vm.start_note = match saved {
                            Some((m, again)) => format!(
                                "restored from the RAM snapshot {} it saved first (cold boot {:.1} s to the backdoor, {:.1} s more until sshd listened and the init settled, save {:.1} s{})",
                                snap.dir.display(),
                                m.boot_s,
                                m.settle_s,
                                m.save_s,
                                again.map(|a| format!("; {a}")).unwrap_or_default()
                            ),
                            None => match waited_s {
                                Some(w) => format!("restored from the RAM snapshot {} after {w:.1} s waiting for another VM to save it", snap.dir.display()),
                                None => format!("restored from the RAM snapshot {}", snap.dir.display()),
                            },
                        };
                        return Ok(vm);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let (mut vm, again) = Vm::launch_booting(&cfg, Launch::Cold).await?;
        vm.start_note = format!("cold boot ({cold_why}){}", again.map(|a| format!("; {a}")).unwrap_or_default());
        Ok(vm)
    }

    /// Boots `cfg` cold (to use or to save a snapshot). A guest kernel that
    /// panics before the backdoor is up gets one more boot, when that boot
    /// starts from the same disk (a new overlay of the image or prepared
    /// disk, or a VM started again: its own overlay, as a machine boots
    /// again after a crash; not a disk being prepared):
    /// under TCG, QEMU 7.2 now and then runs a stale copy of code Linux
    /// 6.12 has just patched (seen: "Oops: int3" in `sched_clock_cpu` as
    /// the sched_clock static key flips, then "Kernel panic - not
    /// syncing"), which no service and no test caused. The first boot's run
    /// directory is kept; the second boot's note (or error) names it.
    async fn launch_booting(cfg: &VmConfig, mode: Launch) -> Result<(Vm, Option<String>), VmError> {
        let before = RunDir::existing(&cfg.name);
        let e = match Vm::launch(cfg.clone(), mode.clone()).await {
            Ok(vm) => return Ok((vm, None)),
            Err(e) => e,
        };
        let again = matches!(cfg.disk, DiskUse::Image | DiskUse::Prepared { .. } | DiskUse::Continue { .. });
        let Some(panic) = e.kernel_panic().filter(|_| again).map(str::to_string) else {
            return Err(e);
        };
        let kept = RunDir::kept_since(&cfg.name, &before);
        let mut next = cfg.clone();
        if let DiskUse::Continue { overlay, host_key } = &cfg.disk {
            // The first boot moved the stopped VM's overlay into its own
            // run directory (kept): the second boots it from there.
            let moved = kept.as_ref().map(|d| d.join("overlay.qcow2")).filter(|o| o.is_file());
            match moved {
                Some(o) => next.disk = DiskUse::Continue { overlay: o, host_key: host_key.clone() },
                None if overlay.is_file() => {}
                None => return Err(e),
            }
        }
        let first = match &kept {
            Some(d) => format!("\"{panic}\", run directory {} kept", d.display()),
            None => format!("\"{panic}\""),
        };
        tracing::info!(vm = %cfg.name, %first, "the guest's kernel panicked at boot; booting it again");
        eprintln!("xdriver: warning: {}: the guest's kernel panicked at boot ({first}); booting it again", cfg.name);
        match Vm::launch(next, mode).await {
            Ok(vm) => Ok((vm, Some(format!("booted twice: the first boot's kernel panicked ({first})")))),
            Err(last) => Err(VmError::BootedTwice { first, last: Box::new(last) }),
        }
    }

    /// Boots a VM of `cfg`'s shape cold with its RAM in the snapshot's
    /// file, waits until its init has started its services (xdriver's sshd
    /// listens), and saves it.
    async fn save_snapshot(cfg: &VmConfig, snap: &Snapshot, shape: &snapshot::Shape) -> Result<(Meta, Option<String>), SaveFailure> {
        let t0 = Instant::now();
        let (vm, again) = Vm::launch_booting(cfg, Launch::Save(snap.clone())).await.map_err(SaveFailure::Boot)?;
        let meta = Vm::save_booted(vm, cfg, snap, shape, t0).await.map_err(SaveFailure::Save)?;
        Ok((meta, again))
    }

    async fn save_booted(vm: Vm, cfg: &VmConfig, snap: &Snapshot, shape: &snapshot::Shape, t0: Instant) -> Result<Meta, VmError> {
        let boot_s = vm.backdoor_ready_after.as_secs_f64();
        let t1 = Instant::now();
        // Services still starting would go on starting in every restored
        // VM: save once the last of xdriver's (its sshd) listens and the
        // init has reached what deployments wait for (systemd: basic.target;
        // it is what every restored systemd cell waited 17 s for when the
        // snapshot was saved before it).
        let probe = settled_probe(vm.os, vm.init);
        let settle_deadline = Instant::now() + cfg.boot_timeout.min(Duration::from_secs(90));
        loop {
            let out = vm.exec(Channel::Backdoor, &probe, &[], Duration::from_secs(10), None).await?;
            if out.success() {
                break;
            }
            if Instant::now() > settle_deadline {
                tracing::warn!(vm = %vm.name, "saving the snapshot before the guest's sshd listens or its init has settled");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let settle_s = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        vm.qmp.execute(qapi::qmp::stop {}).await?;
        vm.qmp.save_state(&snap.state(), Duration::from_secs(120)).await?;
        let save_s = t2.elapsed().as_secs_f64();
        if let Boot::Disk { firmware: Firmware::Uefi { .. } } = vm.boot {
            std::fs::copy(vm.run.join("OVMF_VARS.fd"), snap.vars()).map_err(|e| VmError::Prepare(format!("keeping the UEFI variables: {e}")))?;
        }
        let _ = std::fs::copy(vm.run.join("serial.log"), snap.serial_log());
        let name = vm.name.clone();
        // QEMU quits with the guest paused: its disk is as the RAM knows it.
        vm.quit().await;
        let meta = Meta {
            format: snapshot::FORMAT,
            key: shape.key(),
            shape: shape.lines.join("\n"),
            created: chrono_now(),
            boot_s,
            settle_s,
            save_s,
            sums: Some(snapshot::Sums::of(snap).map_err(|e| VmError::Prepare(format!("the snapshot's checksums: {e}")))?),
        };
        snap.finish_save(&meta).map_err(VmError::Prepare)?;
        tracing::info!(vm = %name, boot_s, settle_s, save_s, took = ?t0.elapsed(), snapshot = %snap.dir.display(), "RAM snapshot saved");
        Ok(meta)
    }
}

/// Everything that shapes `cfg`'s VM, or why it cannot have a snapshot.
fn snapshot_shape(cfg: &VmConfig) -> Result<snapshot::Shape, String> {
    let m = &cfg.image.manifest;
    let os: Os = m.os.parse().map_err(|e| format!("image {}: {e}", m.name))?;
    // QEMU 7.2 cannot migrate virtio-fs: such devices are hot-plugged
    // after the restore, where the guest takes them so.
    let hot = hotplug_virtiofs(cfg, os);
    if !hot && cfg.store.as_ref().is_some_and(|s| s.fs == ShareFs::Virtiofs) {
        return Err("the store is shared over virtio-fs, which QEMU 7.2 cannot migrate".into());
    }
    if !hot && !cfg.shares.is_empty() && !os.has_9p() {
        return Err(format!("{os} guests take shares over virtio-fs, which QEMU 7.2 cannot migrate"));
    }
    let mut shape = snapshot::Shape::new(&cfg.qemu)?;
    shape.add("image", cfg.image.dir.display());
    match &cfg.disk {
        DiskUse::Image => shape.add_file("disk", &cfg.image.disk())?,
        DiskUse::Prepared { disk, host_key } => {
            shape.add_file("prepared", disk)?;
            shape.add("host-key", host_key);
        }
        DiskUse::Preparing { .. } => return Err("a preparation boots its own disk".into()),
        DiskUse::Continue { .. } => return Err("a VM started again boots its own overlay".into()),
    }
    if let Some((kernel, initrd)) = cfg.image.kernel_initrd() {
        shape.add_file("kernel", &kernel)?;
        shape.add_file("initrd", &initrd)?;
        shape.add("init", &m.init_path);
    }
    if let Some(imp) = &m.import {
        shape.add("firmware", format!("{:?}", imp.firmware));
    }
    shape.add("cmdline-extra", cfg.extra_cmdline.join(" "));
    // What the saving VM waited for: a snapshot saved before a stricter
    // wait (one of an older xdriver) would restore a guest still booting.
    shape.add("settled", settled_probe(os, m.init));
    shape.add("accel", cfg.accel.name());
    shape.add("cpus", cfg.cpus);
    shape.add("mem-mib", cfg.mem_mib);
    // Hot-plugged devices are not in the saved state (nor on the saving
    // VM's command line): one snapshot serves VMs with and without them.
    for (i, s) in cfg.shares.iter().enumerate().filter(|_| !hot || os.has_9p()) {
        shape.add("share", format!("{i} writable={}", s.writable));
    }
    if let Some(st) = cfg.store.as_ref().filter(|st| !hot || st.fs != ShareFs::Virtiofs) {
        shape.add("store", st.fs.name());
    }
    Ok(shape)
}

/// The guest command a VM that saves a snapshot runs until it succeeds:
/// xdriver's sshd listens, and the init has reached what deployments wait
/// for (see [`xdriver_guests::InitSystem::settled_probe`]).
fn settled_probe(os: Os, init: xdriver_guests::Init) -> String {
    match init.settled_probe() {
        Some(init) => format!("{} && {init}", os.port_open(xdriver_guests::SSH_PORT)),
        None => os.port_open(xdriver_guests::SSH_PORT),
    }
}

/// Why a snapshot's files cannot be sound, before QEMU reads them: its
/// RAM file is not the VM's RAM size (truncated, or of another shape),
/// its device state is empty, or a file's checksum (taken as it was
/// saved: [`snapshot::Sums`]) differs now.
fn snapshot_unsound(snap: &Snapshot, meta: &Meta, mem_mib: u32) -> Option<String> {
    let want = u64::from(mem_mib) << 20;
    match std::fs::metadata(snap.ram()) {
        Ok(m) if m.len() != want => return Some(format!("its RAM file is {} bytes, the VM's RAM {want} (truncated?)", m.len())),
        Ok(_) => {}
        Err(e) => return Some(format!("its RAM file: {e}")),
    }
    match std::fs::metadata(snap.state()) {
        Ok(m) if m.len() == 0 => return Some("its device state is empty".into()),
        Ok(_) => {}
        Err(e) => return Some(format!("its device state: {e}")),
    }
    let saved = meta.sums.as_ref()?;
    let t = Instant::now();
    let now = match snapshot::Sums::of(snap) {
        Ok(now) => now,
        Err(e) => return Some(format!("its files cannot be read: {e}")),
    };
    tracing::debug!(snapshot = %snap.dir.display(), took = ?t.elapsed(), "snapshot checksums checked");
    saved.differ(&now)
}

/// Whether a VM's virtio-fs devices (its store, or the shares of a guest
/// without 9p) are hot-plugged after a restore rather than on QEMU's
/// command line: when it has some and its guest can take them so.
pub(super) fn hotplug_virtiofs(cfg: &VmConfig, os: Os) -> bool {
    let store = cfg.store.as_ref().is_some_and(|s| s.fs == ShareFs::Virtiofs);
    let shares = !cfg.shares.is_empty() && !os.has_9p();
    (store || shares) && os.wait_virtiofs_hotplug(1).is_some()
}
