//! The launch plan: everything starting a VM will do, worked out from its
//! config, the launch mode, its run directory and its key alone (no
//! process started, no file written; the one thing it reads is whether a
//! restored snapshot kept UEFI variables), so tests can snapshot it; the
//! run directory's `launch.plan` records it. `launch`
//! (bringup.rs) then carries it out: the overlay, the UEFI variables, the
//! virtio-fs daemons, the RAM copy, QEMU.

use std::path::{Path, PathBuf};

use super::{hotplug_virtiofs, DiskUse, Launch, VmConfig, VmError};
use crate::vm::nix_store::{ShareFs, StoreShare};
use crate::vm::qemu::{kernel_cmdline, Boot, Firmware, QemuSpec, RamFile, Share, ShareDevice, StoreDevice, OVMF_CODE, OVMF_VARS};
use xdriver_guests::Os;

/// A virtio-fs daemon the launch starts (its socket in the run directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Daemon {
    /// The directory it serves.
    pub host: PathBuf,
    /// Its socket and log are named after this.
    pub name: String,
    /// Served read-write.
    pub writable: bool,
    /// The store's daemon (its binary is the store's; as `nobody` when
    /// xdriver is root), or share number N's (found on the host).
    pub store: bool,
    /// Its socket: `<run dir>/<name>.sock`.
    pub socket: PathBuf,
}

/// What a launch does, in order.
#[derive(Debug, Clone)]
pub(super) struct LaunchPlan {
    /// The guest's OS.
    pub os: Os,
    /// A stopped VM's overlay, moved to the disk's path first.
    pub move_overlay: Option<PathBuf>,
    /// The disk is a new qcow2 overlay of this (None: used as it is).
    pub overlay_of: Option<PathBuf>,
    /// The UEFI variables file is a copy of this.
    pub vars_from: Option<PathBuf>,
    /// virtio-fs daemons, before QEMU.
    pub daemons: Vec<Daemon>,
    /// A restore with hot-plugged virtio-fs maps a private copy of this RAM
    /// file (a memfd, whose path only exists once it is made: see
    /// [`LaunchPlan::ram_copy_path`]).
    pub ram_copy_of: Option<PathBuf>,
    /// QEMU's command line.
    pub qemu: QemuSpec,
    /// virtio-fs devices (tag, socket) hot-plugged after a restore.
    pub hotplugs: Vec<(String, PathBuf)>,
    /// The run's SSH key goes over the backdoor (not the kernel command line).
    pub key_over_backdoor: bool,
    /// SSH is set up.
    pub want_ssh: bool,
    /// The SSH host key the client pins.
    pub host_key: String,
}

/// The placeholder path of the RAM copy in [`LaunchPlan::qemu`] until
/// the copy is made.
const RAM_COPY: &str = "<ram copy>";

impl LaunchPlan {
    /// The plan for `cfg` started as `mode` in `run_dir`, with the run's
    /// public key `key_b64` (base64 of its OpenSSH line).
    pub(super) fn of(cfg: &VmConfig, mode: &Launch, run_dir: &Path, key_b64: &str) -> Result<LaunchPlan, VmError> {
        let m = &cfg.image.manifest;
        let os: Os = m.os.parse().map_err(|e| VmError::Prepare(format!("image {}: its manifest names {e}", m.name)))?;
        // The disk this VM boots: an overlay of the image's disk or of a
        // prepared disk, or (preparing) the prepared disk itself.
        let overlay_of = match (mode, &cfg.disk) {
            (Launch::Restore(s), _) => Some(s.disk()),
            (_, DiskUse::Image) => Some(cfg.image.disk()),
            (_, DiskUse::Prepared { disk, .. }) => Some(disk.clone()),
            (_, DiskUse::Preparing { .. } | DiskUse::Continue { .. }) => None,
        };
        let disk = match (mode, &overlay_of, &cfg.disk) {
            (Launch::Save(s), _, _) => s.disk(),
            (_, None, DiskUse::Preparing { disk, .. }) => disk.clone(),
            _ => run_dir.join("overlay.qcow2"),
        };
        let move_overlay = match &cfg.disk {
            DiskUse::Continue { overlay, .. } => Some(overlay.clone()),
            _ => None,
        };
        // Built images boot their kernel directly and take the SSH key on
        // its command line; imported ones boot by their firmware and get
        // the key over the backdoor once it is up.
        let mut vars_from = None;
        let boot = match (cfg.image.kernel_initrd(), &m.import) {
            (Some((kernel, initrd)), _) => Boot::Kernel { kernel, initrd, cmdline: kernel_cmdline(&m.init_path, key_b64, &cfg.extra_cmdline) },
            (None, Some(imp)) => {
                if cfg.disk == DiskUse::Image {
                    return Err(VmError::Prepare(format!("image {} is imported: boot a prepared disk of it (crate::vm::prepare)", m.name)));
                }
                let firmware = match imp.firmware {
                    xdriver_guests::Firmware::Bios => Firmware::Bios,
                    xdriver_guests::Firmware::Uefi => {
                        vars_from = Some(match mode {
                            Launch::Restore(s) if s.vars().is_file() => s.vars(),
                            _ => OVMF_VARS.into(),
                        });
                        Firmware::Uefi { code: OVMF_CODE.into(), vars: run_dir.join("OVMF_VARS.fd") }
                    }
                };
                Boot::Disk { firmware }
            }
            (None, None) => return Err(VmError::Prepare(format!("image {}: its manifest has neither a kernel nor an import", m.name))),
        };
        let host_key = match &cfg.disk {
            DiskUse::Prepared { host_key, .. } | DiskUse::Continue { host_key, .. } => host_key.clone(),
            _ => m.ssh_host_key.clone(),
        };
        let seed = match &cfg.disk {
            DiskUse::Preparing { seed, .. } => Some(seed.clone()),
            _ => None,
        };
        // A restored guest's kernel command line is the saving VM's: it
        // gets the key over the backdoor too.
        let key_over_backdoor = matches!(boot, Boot::Disk { .. }) || matches!(mode, Launch::Restore(_));
        let want_ssh = cfg.ssh && !matches!(mode, Launch::Save(_));
        // Virtio-fs devices hot-plugged after a restore (the VM that saves
        // the snapshot has none; see snapshot_shape).
        let hot = !matches!(mode, Launch::Cold) && hotplug_virtiofs(cfg, os);
        let saving_hot = hot && matches!(mode, Launch::Save(_));
        let mut daemons = Vec::new();
        let daemon = |host: &Path, name: &str, writable: bool, store: bool| Daemon {
            host: host.to_path_buf(),
            name: name.into(),
            writable,
            store,
            socket: run_dir.join(format!("{name}.sock")),
        };
        let store = match &cfg.store {
            None => None,
            Some(StoreShare { fs: ShareFs::Virtiofs, .. }) if saving_hot => None,
            Some(st @ StoreShare { fs: ShareFs::NineP, .. }) => Some(StoreDevice::NineP { host: st.host.clone() }),
            Some(st @ StoreShare { fs: ShareFs::Virtiofs, .. }) => {
                let d = daemon(&st.host, "virtiofsd", false, true);
                let socket = d.socket.clone();
                daemons.push(d);
                Some(StoreDevice::Virtiofs { socket })
            }
        };
        // Shares over 9p, or over virtio-fs (a virtiofsd each) for guests
        // whose kernel has no 9p.
        let mut shares = Vec::new();
        for (i, sh) in cfg.shares.iter().enumerate() {
            if os.has_9p() {
                shares.push(ShareDevice { share: sh.clone(), virtiofs: None });
            } else if !saving_hot {
                let d = daemon(&sh.host, &format!("virtiofsd-{}", Share::tag(i)), sh.writable, false);
                shares.push(ShareDevice { share: sh.clone(), virtiofs: Some(d.socket.clone()) });
                daemons.push(d);
            }
        }
        let ram_copy_of = match mode {
            Launch::Restore(s) if hot => Some(s.ram()),
            _ => None,
        };
        let qemu = QemuSpec {
            binary: cfg.qemu.clone(),
            name: cfg.name.clone(),
            accel: cfg.accel,
            cpus: cfg.cpus,
            mem_mib: cfg.mem_mib,
            boot,
            disk,
            run_dir: run_dir.to_path_buf(),
            shares,
            forwards: vec![xdriver_guests::SSH_PORT],
            store,
            seed,
            ram_file: match mode {
                Launch::Cold => None,
                Launch::Save(s) => Some(RamFile { path: s.ram(), shared: true }),
                Launch::Restore(_) if hot => Some(RamFile { path: RAM_COPY.into(), shared: true }),
                Launch::Restore(s) => Some(RamFile { path: s.ram(), shared: false }),
            },
            incoming: matches!(mode, Launch::Restore(_)),
            hotplug_virtiofs: hot,
        };
        let hotplugs = if hot { qemu.virtiofs_devices() } else { Vec::new() };
        Ok(LaunchPlan { os, move_overlay, overlay_of, vars_from, daemons, ram_copy_of, qemu, hotplugs, key_over_backdoor, want_ssh, host_key })
    }

    /// Puts the RAM copy's path (once made) in QEMU's command line.
    pub(super) fn ram_copy_path(&mut self, path: PathBuf) {
        if let Some(r) = self.qemu.ram_file.as_mut().filter(|r| r.path == Path::new(RAM_COPY)) {
            r.path = path;
        }
    }

    /// The plan as text, a line per step (for snapshot tests and the run
    /// directory's record).
    pub(super) fn describe(&self) -> String {
        let mut out = Vec::new();
        if let Some(o) = &self.move_overlay {
            out.push(format!("move {} -> {}", o.display(), self.qemu.disk.display()));
        }
        if let Some(b) = &self.overlay_of {
            out.push(format!("qemu-img create -f qcow2 -F qcow2 -b {} {}", b.display(), self.qemu.disk.display()));
        }
        if let Some(v) = &self.vars_from {
            out.push(format!("copy UEFI variables {}", v.display()));
        }
        for d in &self.daemons {
            out.push(format!("virtiofsd {} ({}, {}) at {}", d.host.display(), if d.store { "store" } else { "share" }, if d.writable { "rw" } else { "ro" }, d.socket.display()));
        }
        if let Some(r) = &self.ram_copy_of {
            out.push(format!("RAM copy of {} in a memfd", r.display()));
        }
        out.push(format!("qemu {}", self.qemu.args().join(" ")));
        for (tag, socket) in &self.hotplugs {
            out.push(format!("after the restore: hot-plug virtio-fs {tag} on {}", socket.display()));
        }
        out.push(format!("ssh: {}, key over the {}", self.want_ssh, if self.key_over_backdoor { "backdoor" } else { "kernel command line" }));
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::qemu::Accel;
    use crate::vm::snapshot::Snapshot;

    fn entry(kernel: bool, firmware: Option<xdriver_guests::Firmware>, os: &str) -> xdriver_images::Entry {
        let manifest: xdriver_images::Manifest = serde_json::from_value(serde_json::json!({
            "schema": xdriver_images::MANIFEST_SCHEMA,
            "name": "img", "recipe": "r", "recipe_hash": "h", "os": os, "release": "12",
            "init": "systemd", "init_path": "/lib/systemd/systemd", "packages": [],
            "kernel": if kernel { serde_json::json!({ "package": "linux-image-amd64", "package_version": "6.1", "release": "6.1.0", "format": "bz-image", "file": "kernel", "initrd": "initrd.img", "modules": [] }) } else { serde_json::Value::Null },
            "disk": { "file": "disk.qcow2", "virtual_mib": 4096, "file_bytes": 1 },
            "ssh_host_key": "ssh-ed25519 AAAA image", "created_at": "now", "build_seconds": 1.0,
            "import": firmware.map(|f| serde_json::json!({ "source_file": "/src/vendor.qcow2", "source_sha256": "x", "compression": "none", "source_format": "qcow2", "firmware": f })),
        }))
        .expect("manifest");
        xdriver_images::Entry { dir: "/cache/img".into(), manifest, current: true }
    }

    fn cfg(e: xdriver_images::Entry) -> VmConfig {
        let mut c = VmConfig::new("t", e);
        c.accel = Accel::Tcg;
        c
    }

    fn snap() -> Snapshot {
        Snapshot { dir: "/cache/img/snapshots/k".into() }
    }

    #[test]
    fn a_cold_boot_of_a_built_image_with_the_store_over_9p() {
        let mut c = cfg(entry(true, None, "debian-12"));
        c.store = Some(StoreShare { host: "/nix/store".into(), guest: "/nix/store".into(), fs: ShareFs::NineP, virtiofsd: None, os: Os::DEBIAN_12 });
        let p = LaunchPlan::of(&c, &Launch::Cold, Path::new("/run/x"), "S0VZ").expect("plan");
        insta::assert_snapshot!(p.describe());
    }

    #[test]
    fn a_restore_of_an_imported_uefi_image_hot_plugs_its_virtiofs_share() {
        let mut c = cfg(entry(false, Some(xdriver_guests::Firmware::Uefi), "debian-12-cloud"));
        c.disk = DiskUse::Prepared { disk: "/cache/img/prepared.qcow2".into(), host_key: "ssh-ed25519 AAAA prepared".into() };
        c.shares = vec![Share { host: "/home/u/app".into(), guest: "/srv/app".into(), writable: false }];
        let p = LaunchPlan::of(&c, &Launch::Restore(snap()), Path::new("/run/x"), "S0VZ").expect("plan");
        insta::assert_snapshot!(p.describe());
    }

    #[test]
    fn saving_a_snapshot_leaves_hot_plugged_devices_out() {
        let mut c = cfg(entry(false, Some(xdriver_guests::Firmware::Bios), "debian-12-cloud"));
        c.disk = DiskUse::Prepared { disk: "/cache/img/prepared.qcow2".into(), host_key: "ssh-ed25519 AAAA prepared".into() };
        c.shares = vec![Share { host: "/home/u/app".into(), guest: "/srv/app".into(), writable: true }];
        let p = LaunchPlan::of(&c, &Launch::Save(snap()), Path::new("/run/x"), "S0VZ").expect("plan");
        insta::assert_snapshot!(p.describe());
        // An imported image is booted from a prepared disk only.
        let c = cfg(entry(false, Some(xdriver_guests::Firmware::Bios), "debian-12-cloud"));
        assert!(matches!(LaunchPlan::of(&c, &Launch::Cold, Path::new("/run/x"), "S0VZ"), Err(VmError::Prepare(_))));
    }
}
