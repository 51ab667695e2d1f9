//! A running VM: the QEMU process, its run directory and its channels.
//! Every wait ends early when QEMU dies, with the serial tail in the error;
//! QEMU gets SIGKILL if xdriver dies (PR_SET_PDEATHSIG) and when a `Vm` is
//! dropped without a shutdown.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use regex::bytes::Regex;
use tokio::net::UnixListener;
use tokio::sync::watch;
use xdriver_guests::{Init, Os};
use xdriver_images::Entry;

use crate::vm::backdoor::{Backdoor, BackdoorError};
use crate::vm::console::{tail_lines, Console, ConsoleTimeout};
use crate::vm::output::{Output, Sink};
use crate::vm::qemu::{kernel_cmdline, Accel, Boot, Firmware, QemuSpec, RamFile, Share, ShareDevice, StoreDevice, NINEP_MSIZE, OVMF_CODE, OVMF_VARS};
use crate::vm::snapshot::{self, Meta, Snapshot};
use crate::vm::nix_store::{guest_mount_script, host_nix_db, ShareFs, StoreShare, Virtiofsd};
use crate::vm::qmp::{Qmp, QmpError};
use crate::vm::rundir::RunDir;
use crate::vm::ssh::{ClientKey, Ssh, SshError};
use xdriver_guests::shell::quote;

/// Which channel runs a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Channel {
    /// The persistent SSH connection.
    Ssh,
    /// The root shell on the virtio-serial backdoor port.
    Backdoor,
}

/// VM failures. Those after QEMU started carry the serial log's tail.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The run directory or the overlay could not be made.
    #[error("preparing the VM: {0}")]
    Prepare(String),
    /// QEMU could not be started or did not connect its sockets.
    #[error("QEMU failed to start: {detail}\n--- QEMU stderr ---\n{stderr}")]
    Start {
        /// What went wrong.
        detail: String,
        /// QEMU's stderr.
        stderr: String,
    },
    /// QEMU exited while xdriver was using it.
    #[error("QEMU exited unexpectedly ({status}) while {during}\n--- QEMU stderr ---\n{stderr}\n--- last serial output ---\n{serial}")]
    QemuExited {
        /// Exit status.
        status: String,
        /// What xdriver was doing.
        during: String,
        /// QEMU's stderr.
        stderr: String,
        /// Tail of the serial log.
        serial: String,
    },
    /// The guest did not come up in time.
    #[error("the guest did not come up within {timeout:?}: {waited_for}\n--- last serial output ---\n{serial}")]
    BootTimeout {
        /// What was awaited.
        waited_for: String,
        /// The deadline.
        timeout: Duration,
        /// Tail of the serial log.
        serial: String,
    },
    /// QMP failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// The backdoor failed.
    #[error(transparent)]
    Backdoor(#[from] BackdoorError),
    /// SSH failed.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// Waiting for console text timed out.
    #[error("{source}\n--- last serial output ---\n{serial}")]
    Console {
        /// The timeout.
        #[source]
        source: ConsoleTimeout,
        /// Tail of the serial log.
        serial: String,
    },
    /// Mounting a share in the guest failed.
    #[error("mounting share {host} at {guest} failed: {detail}")]
    Share {
        /// Host directory.
        host: PathBuf,
        /// Guest mount point.
        guest: String,
        /// The guest's message.
        detail: String,
    },
    /// The VM was started without SSH.
    #[error("this VM has no SSH connection (it was started with the backdoor channel only)")]
    NoSsh,
    /// The SSH connection, set up in the background, failed.
    #[error("SSH to the guest could not be set up: {0}")]
    SshSetup(String),
    /// A RAM snapshot could not be restored (the VM then boots cold).
    #[error("restoring the RAM snapshot {snapshot}: {detail}")]
    Restore {
        /// The snapshot's directory.
        snapshot: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A restored VM could not get its virtio-fs devices hot-plugged (the
    /// snapshot is fine; the VM then boots cold, with them on QEMU's
    /// command line).
    #[error("hot-plugging virtio-fs into a VM restored from {snapshot}: {detail}")]
    Hotplug {
        /// The snapshot's directory.
        snapshot: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The guest's kernel panicked at boot, and the boot made again (see
    /// [`Vm::start`]) failed too.
    #[error("{last}\n(booted twice: the first boot's kernel panicked too: {first})")]
    BootedTwice {
        /// The first boot's panic line, and its kept run directory.
        first: String,
        /// How the second boot failed.
        last: Box<VmError>,
    },
}

impl VmError {
    /// The guest kernel's panic line, if this error is QEMU exiting or a
    /// boot timing out with one in the serial tail.
    pub fn kernel_panic(&self) -> Option<&str> {
        let serial = match self {
            VmError::QemuExited { serial, .. } | VmError::BootTimeout { serial, .. } => serial,
            VmError::BootedTwice { last, .. } => return last.kernel_panic(),
            _ => return None,
        };
        serial.lines().map(str::trim).find_map(|l| l.find("Kernel panic - not syncing").map(|i| &l[i..]))
    }
}

/// vCPUs of a VM when neither `--cpus` nor the spec says.
pub const DEFAULT_CPUS: u32 = 2;
/// Guest RAM (MiB) when neither `--mem-mib` nor the spec says.
pub const DEFAULT_MEM_MIB: u32 = 1024;

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

/// How [`Vm::launch`] brings a VM up.
#[derive(Clone)]
enum Launch {
    /// A cold boot.
    Cold,
    /// A cold boot whose RAM is the snapshot's file and whose disk is the
    /// snapshot's, to be saved once it is up (no shares mounted, no SSH).
    Save(Snapshot),
    /// From the snapshot.
    Restore(Snapshot),
}

/// How the background SSH set-up ended (kept so that every caller of
/// [`Vm::ssh`] gets the same answer).
#[derive(Debug, Clone)]
enum SshOutcome {
    Up(Ssh, Duration),
    TimedOut { timeout: Duration, last: String },
    Failed(String),
}

/// How a VM is started.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Name (for the run directory, QEMU's -name and logs).
    pub name: String,
    /// The image.
    pub image: Entry,
    /// Accelerator.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// RAM.
    pub mem_mib: u32,
    /// Shares (9p, or virtio-fs for guests without 9p), mounted once the
    /// backdoor is up.
    pub shares: Vec<Share>,
    /// Whether to connect SSH. The handshake runs in the background from
    /// the start (for imported images: once the backdoor has installed the
    /// run's key); [`Vm::start`] does not wait for it, [`Vm::ssh`] does.
    pub ssh: bool,
    /// Whether the SSH handshake waits for [`Vm::begin_ssh`] (or the first
    /// use of SSH) instead of starting with the VM: a cell of several nodes
    /// starts it once every node has joined its vlans, so that the
    /// handshakes (the guest's sshd forks and its key exchange: ~0.5 s of
    /// guest CPU under TCG) do not compete with the nodes' starts for the
    /// host's cores.
    pub ssh_later: bool,
    /// Deadline for the guest to come up (the backdoor; SSH separately).
    pub boot_timeout: Duration,
    /// Extra kernel command-line words.
    pub extra_cmdline: Vec<String>,
    /// QEMU binary.
    pub qemu: String,
    /// The shared store (read-only share plus a tmpfs overlay).
    pub store: Option<StoreShare>,
    /// Which disk the VM boots (an imported image needs a prepared one).
    pub disk: DiskUse,
    /// Start from a RAM snapshot of this VM's shape (made by the first VM
    /// of that shape; see [`crate::vm::snapshot`]) where the VM can have
    /// one: a fresh overlay of a built or prepared disk, without virtio-fs.
    pub snapshots: bool,
}

/// The disk a VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskUse {
    /// A fresh overlay of the image's own disk (built images).
    Image,
    /// A fresh overlay of a prepared disk of an imported image, whose SSH
    /// host key the preparation recorded.
    Prepared {
        /// The prepared disk.
        disk: PathBuf,
        /// Its SSH host key (OpenSSH public key line).
        host_key: String,
    },
    /// Preparing an imported image: this disk itself (writes are kept),
    /// with a NoCloud seed attached.
    Preparing {
        /// The disk being prepared.
        disk: PathBuf,
        /// The seed image.
        seed: PathBuf,
    },
    /// The overlay a stopped VM left (see [`Vm::start_again`]): moved into
    /// the new run directory and booted as it is.
    Continue {
        /// The stopped VM's overlay.
        overlay: PathBuf,
        /// Its SSH host key.
        host_key: String,
    },
}

impl VmConfig {
    /// Defaults for `image`: TCG, 2 vCPUs, 1 GiB, SSH on, 120 s to boot.
    pub fn new(name: &str, image: Entry) -> VmConfig {
        VmConfig {
            name: name.into(),
            image,
            accel: Accel::Tcg,
            cpus: DEFAULT_CPUS,
            mem_mib: DEFAULT_MEM_MIB,
            shares: Vec::new(),
            ssh: true,
            ssh_later: false,
            boot_timeout: Duration::from_secs(120),
            extra_cmdline: Vec::new(),
            qemu: "qemu-system-x86_64".into(),
            store: None,
            disk: DiskUse::Image,
            snapshots: false,
        }
    }
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The guest powered off when asked from inside.
    GuestPoweroff,
    /// The guest powered off on the ACPI power button.
    Acpi,
    /// QEMU quit on QMP `quit`.
    Quit,
    /// QEMU was killed.
    Killed,
    /// QEMU had already exited.
    AlreadyExited,
}

static LIVE: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// SIGKILLs every QEMU this process started and has not reaped (used by
/// the binary's signal handler).
pub fn kill_all() {
    if let Some(set) = LIVE.lock().expect("live lock").as_ref() {
        for pid in set {
            // SAFETY: kill on a pid we spawned and have not reaped.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
    }
}

fn register(pid: i32, live: bool) {
    let mut g = LIVE.lock().expect("live lock");
    let set = g.get_or_insert_with(HashSet::new);
    if live {
        set.insert(pid);
    } else {
        set.remove(&pid);
    }
}

/// A running VM.
#[derive(Debug)]
pub struct Vm {
    /// Name.
    pub name: String,
    run: RunDir,
    pid: i32,
    exited: watch::Receiver<Option<String>>,
    /// QMP session.
    pub qmp: Qmp,
    /// Serial console.
    pub console: Console,
    /// Backdoor shell.
    pub backdoor: Backdoor,
    /// The SSH connection as the background task reports it (None: the VM
    /// was started without SSH).
    ssh: Option<watch::Receiver<Option<SshOutcome>>>,
    ssh_task: Option<tokio::task::AbortHandle>,
    /// Lets a deferred SSH set-up go ([`VmConfig::ssh_later`]).
    ssh_go: Option<Arc<tokio::sync::Notify>>,
    key: ClientKey,
    /// Host port forwarded to the guest's sshd.
    pub ssh_port: u16,
    /// The image's init system.
    pub init: Init,
    /// The image's OS.
    pub os: Os,
    host_key: String,
    /// Time from `cont` until the backdoor answered.
    pub backdoor_ready_after: Duration,
    /// Time from `cont` until the VM was ready: the backdoor answered and
    /// the shares and store were attached and mounted.
    pub ready_after: Duration,
    /// The store's virtiofsd (virtiofs only); killed with the VM.
    virtiofsd: Option<Virtiofsd>,
    /// The shares' virtiofsds (guests without 9p); killed with the VM.
    _share_daemons: Vec<Virtiofsd>,
    /// How it boots.
    boot: Boot,
    /// What a boot mounts (again after a reboot).
    shares: Vec<Share>,
    store: Option<StoreShare>,
    /// How it was started (to start it again on its disk).
    config: VmConfig,
    /// How it came up, in words (see [`Vm::how_started`]).
    start_note: String,
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
                    Err(e @ VmError::Restore { .. }) => {
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
    /// starts from the same disk (an overlay; not a disk being prepared):
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
        let again = matches!(cfg.disk, DiskUse::Image | DiskUse::Prepared { .. });
        let Some(panic) = e.kernel_panic().filter(|_| again).map(str::to_string) else {
            return Err(e);
        };
        let kept = RunDir::kept_since(&cfg.name, &before);
        let first = match &kept {
            Some(d) => format!("\"{panic}\", run directory {} kept", d.display()),
            None => format!("\"{panic}\""),
        };
        tracing::info!(vm = %cfg.name, %first, "the guest's kernel panicked at boot; booting it again");
        eprintln!("xdriver: warning: {}: the guest's kernel panicked at boot ({first}); booting it again", cfg.name);
        match Vm::launch(cfg.clone(), mode).await {
            Ok(vm) => Ok((vm, Some(format!("booted twice: the first boot's kernel panicked ({first})")))),
            Err(last) => Err(VmError::BootedTwice { first, last: Box::new(last) }),
        }
    }

    /// How the VM came up: a cold boot (and why), or restored from which
    /// RAM snapshot (and whether it saved that snapshot first).
    pub fn how_started(&self) -> &str {
        &self.start_note
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
        let probe = match vm.init.settled_probe() {
            Some(init) => format!("{} && {init}", vm.os.port_open(xdriver_guests::SSH_PORT)),
            None => vm.os.port_open(xdriver_guests::SSH_PORT),
        };
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
        };
        snap.finish_save(&meta).map_err(VmError::Prepare)?;
        tracing::info!(vm = %name, boot_s, settle_s, save_s, took = ?t0.elapsed(), snapshot = %snap.dir.display(), "RAM snapshot saved");
        Ok(meta)
    }

    async fn launch(cfg: VmConfig, mode: Launch) -> Result<Vm, VmError> {
        let called = Instant::now();
        let mut run = RunDir::create(&cfg.name).map_err(|e| VmError::Prepare(format!("run directory: {e}")))?;
        // Kept if starting fails (logs of a failed boot survive); released
        // once the VM is up.
        run.keep();
        // The disk this VM boots: an overlay of the image's disk or of a
        // prepared disk, or (preparing) the prepared disk itself.
        let backing = match (&mode, &cfg.disk) {
            (Launch::Restore(s), _) => Some(s.disk()),
            (_, DiskUse::Image) => Some(cfg.image.disk()),
            (_, DiskUse::Prepared { disk, .. }) => Some(disk.clone()),
            (_, DiskUse::Preparing { .. } | DiskUse::Continue { .. }) => None,
        };
        let disk = match (&mode, &backing, &cfg.disk) {
            (Launch::Save(s), _, _) => s.disk(),
            (_, None, DiskUse::Preparing { disk, .. }) => disk.clone(),
            _ => run.join("overlay.qcow2"),
        };
        if let DiskUse::Continue { overlay, .. } = &cfg.disk {
            std::fs::rename(overlay, &disk).map_err(|e| VmError::Prepare(format!("moving the stopped VM's overlay {}: {e}", overlay.display())))?;
        }
        if let Some(backing) = &backing {
            let out = tokio::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(backing)
                .arg(&disk)
                .output()
                .await
                .map_err(|e| VmError::Prepare(format!("qemu-img: {e}")))?;
            if !out.status.success() {
                return Err(VmError::Prepare(format!("qemu-img create: {}", String::from_utf8_lossy(&out.stderr).trim())));
            }
        }
        let key = ClientKey::generate();
        let key_b64 = base64::engine::general_purpose::STANDARD.encode(key.public_openssh());
        let m = &cfg.image.manifest;
        let os: Os = m.os.parse().map_err(|e| VmError::Prepare(format!("image {}: its manifest names {e}", m.name)))?;
        // Built images boot their kernel directly and take the SSH key on
        // its command line; imported ones boot by their firmware and get
        // the key over the backdoor once it is up.
        let boot = match (cfg.image.kernel_initrd(), &m.import) {
            (Some((kernel, initrd)), _) => Boot::Kernel { kernel, initrd, cmdline: kernel_cmdline(&m.init_path, &key_b64, &cfg.extra_cmdline) },
            (None, Some(imp)) => {
                if cfg.disk == DiskUse::Image {
                    return Err(VmError::Prepare(format!("image {} is imported: boot a prepared disk of it (crate::vm::prepare)", m.name)));
                }
                let firmware = match imp.firmware {
                    xdriver_guests::Firmware::Bios => Firmware::Bios,
                    xdriver_guests::Firmware::Uefi => {
                        let vars = run.join("OVMF_VARS.fd");
                        let template = match &mode {
                            Launch::Restore(s) if s.vars().is_file() => s.vars(),
                            _ => OVMF_VARS.into(),
                        };
                        std::fs::copy(&template, &vars).map_err(|e| VmError::Prepare(format!("UEFI needs OVMF (Debian's `ovmf` package): {}: {e}", template.display())))?;
                        Firmware::Uefi { code: OVMF_CODE.into(), vars }
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
        let hot = !matches!(mode, Launch::Cold) && hotplug_virtiofs(&cfg, os);
        let saving_hot = hot && matches!(mode, Launch::Save(_));
        let mut virtiofsd = None;
        let store = match &cfg.store {
            None => None,
            Some(StoreShare { fs: ShareFs::Virtiofs, .. }) if saving_hot => None,
            Some(st @ StoreShare { fs: ShareFs::NineP, .. }) => Some(StoreDevice::NineP { host: st.host.clone() }),
            Some(st @ StoreShare { fs: ShareFs::Virtiofs, .. }) => {
                let bin = st.virtiofsd.clone().ok_or_else(|| VmError::Prepare("virtiofs store without a virtiofsd".into()))?;
                let d = Virtiofsd::start(&bin, &st.host, run.path()).await.map_err(|e| VmError::Prepare(format!("virtiofsd: {e}")))?;
                tracing::debug!(pid = ?d.pid(), user = d.user, "virtiofsd started");
                let socket = d.socket.clone();
                virtiofsd = Some(d);
                Some(StoreDevice::Virtiofs { socket })
            }
        };
        // Shares over 9p, or over virtio-fs (a virtiofsd each) for guests
        // whose kernel has no 9p.
        let mut share_devices = Vec::new();
        let mut share_daemons = Vec::new();
        for (i, sh) in cfg.shares.iter().enumerate() {
            if os.has_9p() {
                share_devices.push(ShareDevice { share: sh.clone(), virtiofs: None });
                continue;
            }
            if saving_hot {
                continue;
            }
            let bin = crate::vm::nix_store::find_virtiofsd().ok_or_else(|| {
                VmError::Prepare(format!(
                    "{os} guests have no 9p, so shares need virtio-fs: install virtiofsd (`cargo install virtiofsd`, or set XDRIVER_VIRTIOFSD)"
                ))
            })?;
            let name = format!("virtiofsd-{}", Share::tag(i));
            let d = Virtiofsd::start_named(&bin, &sh.host, run.path(), &name, sh.writable, false)
                .await
                .map_err(|e| VmError::Prepare(format!("virtiofsd for {}: {e}", sh.host.display())))?;
            share_devices.push(ShareDevice { share: sh.clone(), virtiofs: Some(d.socket.clone()) });
            share_daemons.push(d);
        }
        let ram_copy = match &mode {
            Launch::Restore(s) if hot => {
                let from = s.ram();
                let copy = tokio::task::spawn_blocking(move || RamCopy::make(&from)).await.map_err(|e| e.to_string()).and_then(|r| r);
                Some(copy.map_err(|detail| VmError::Hotplug { snapshot: s.dir.clone(), detail })?)
            }
            _ => None,
        };
        let spec = QemuSpec {
            binary: cfg.qemu.clone(),
            name: cfg.name.clone(),
            accel: cfg.accel,
            cpus: cfg.cpus,
            mem_mib: cfg.mem_mib,
            boot,
            disk,
            run_dir: run.path().to_path_buf(),
            shares: share_devices,
            forwards: vec![xdriver_guests::SSH_PORT],
            store,
            seed,
            ram_file: match &mode {
                Launch::Cold => None,
                Launch::Save(s) => Some(RamFile { path: s.ram(), shared: true }),
                Launch::Restore(_) if hot => ram_copy.as_ref().map(|c| RamFile { path: c.path(), shared: true }),
                Launch::Restore(s) => Some(RamFile { path: s.ram(), shared: false }),
            },
            incoming: matches!(mode, Launch::Restore(_)),
            hotplug_virtiofs: hot,
        };
        let hotplugs = if hot { spec.virtiofs_devices() } else { Vec::new() };
        let boot_kind = spec.boot.clone();
        if let Launch::Restore(s) = &mode {
            // The console from the saving VM's boot, then this VM's (QEMU
            // appends to the log).
            let mut log = std::fs::read(s.serial_log()).unwrap_or_default();
            log.extend_from_slice(format!("\n[xdriver: restored from the RAM snapshot {}]\n", s.dir.display()).as_bytes());
            std::fs::write(run.join("serial.log"), log).map_err(|e| VmError::Prepare(format!("serial log: {e}")))?;
        }
        let listen = |f: &str| UnixListener::bind(run.join(f)).map_err(|e| VmError::Prepare(format!("socket {f}: {e}")));
        let (l_serial, l_backdoor, l_qmp) = (listen("serial.sock")?, listen("backdoor.sock")?, listen("qmp.sock")?);
        std::fs::write(run.join("qemu.cmdline"), format!("{} {}\n", spec.binary, spec.args().iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")))
            .map_err(|e| VmError::Prepare(e.to_string()))?;
        let stderr_path = run.join("qemu.log");
        let stderr_file = std::fs::File::create(&stderr_path).map_err(|e| VmError::Prepare(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(&spec.binary);
        cmd.args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file)
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            let parent = libc::getpid();
            // The RAM copy's descriptor is close-on-exec everywhere but in
            // this QEMU, which opens it by its number.
            let keep_fd = ram_copy.as_ref().map(|c| std::os::fd::AsRawFd::as_raw_fd(&c.0));
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                if let Some(fd) = keep_fd {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        tracing::debug!(after = ?called.elapsed(), "spawning QEMU");
        let mut child = cmd.spawn().map_err(|e| VmError::Start { detail: format!("{}: {e}", spec.binary), stderr: String::new() })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(-1);
        register(pid, true);
        let (tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            register(pid, false);
            let _ = tx.send(Some(status));
        });
        let stderr_of = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

        let accept = async {
            let (a, b, c) = tokio::try_join!(l_serial.accept(), l_backdoor.accept(), l_qmp.accept())?;
            Ok::<_, std::io::Error>((a.0, b.0, c.0))
        };
        let mut ex = exited.clone();
        let (serial, bd, qmp_sock) = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(30), accept) => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(VmError::Start { detail: e.to_string(), stderr: stderr_of() }),
                Err(_) => return Err(VmError::Start { detail: "QEMU did not connect its sockets within 30 s".into(), stderr: stderr_of() }),
            },
            _ = ex.wait_for(Option::is_some) => {
                let status = exited.borrow().clone().unwrap_or_default();
                return Err(VmError::Start { detail: format!("QEMU exited ({status})"), stderr: stderr_of() });
            }
        };
        tracing::debug!(after = ?called.elapsed(), "QEMU connected its sockets");
        let console = Console::start(serial);
        let backdoor = Backdoor::start(bd);
        let qmp = Qmp::handshake(qmp_sock).await?;
        let ssh_port = qmp.forwarded_port(xdriver_guests::SSH_PORT).await?;
        let mut vm = Vm {
            name: cfg.name.clone(),
            run,
            pid,
            exited,
            qmp,
            console,
            backdoor,
            ssh: None,
            ssh_task: None,
            ssh_go: cfg.ssh_later.then(|| Arc::new(tokio::sync::Notify::new())),
            key,
            ssh_port,
            init: m.init,
            os,
            host_key,
            backdoor_ready_after: Duration::ZERO,
            ready_after: Duration::ZERO,
            virtiofsd,
            _share_daemons: share_daemons,
            shares: cfg.shares.clone(),
            store: cfg.store.clone(),
            config: cfg.clone(),
            start_note: String::new(),
            boot: boot_kind,
        };
        if let Launch::Restore(s) = &mode {
            let restore_err = |detail: String| VmError::Restore { snapshot: s.dir.clone(), detail };
            match vm.until_exit("loading the RAM snapshot", vm.qmp.load_state(&s.state(), Duration::from_secs(60))).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(restore_err(e.to_string())),
                Err(e) => return Err(restore_err(e.to_string())),
            }
            drop(ram_copy);
            for (tag, socket) in &hotplugs {
                if let Err(e) = vm.qmp.hotplug_virtiofs(tag, socket).await {
                    return Err(VmError::Hotplug { snapshot: s.dir.clone(), detail: format!("hot-plugging the virtio-fs device {tag}: {e}") });
                }
            }
        }
        vm.qmp.execute(qapi::qmp::cont {}).await?;
        let t0 = Instant::now();
        tracing::info!(vm = %vm.name, accel = cfg.accel.name(), after = ?called.elapsed(), "VM started");

        // The two channels come up independently. The SSH handshake (key
        // exchange and authentication against a guest still booting: about
        // half a second under TCG) runs in a task of its own, so the VM is
        // ready as soon as the backdoor answers and the shares are mounted;
        // the first user of SSH waits for the rest. (An imported image gets
        // the key over the backdoor first, so its SSH starts after that.)
        if want_ssh && !key_over_backdoor {
            vm.spawn_ssh(t0, cfg.boot_timeout);
        }
        let backdoor_side = async {
            if let Launch::Restore(s) = &mode {
                // The shell announced itself before the save.
                vm.backdoor.assume_ready();
                let epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let key = if want_ssh { vm.os.authorize_ssh_key(&vm.key.public_openssh()) } else { "true".into() };
                let mut seed = [0u8; 64];
                getrandom(&mut seed);
                let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
                let script = snapshot::after_restore_script(&vm.os.set_clock(epoch), &vm.os.reseed_rng(&hex), &key);
                let out = match vm.backdoor.exec(&script, &[], Duration::from_secs(20), None).await {
                    Ok(o) => o,
                    Err(e) => return Err(VmError::Restore { snapshot: s.dir.clone(), detail: format!("the restored guest's backdoor: {e}") }),
                };
                if !out.success() {
                    return Err(VmError::Restore { snapshot: s.dir.clone(), detail: format!("setting the clock, RNG and key after the restore: {}", out.stderr_str().trim()) });
                }
                let after = t0.elapsed();
                if !hotplugs.is_empty() {
                    let wait = vm.os.wait_virtiofs_hotplug(hotplugs.len()).unwrap_or_default();
                    let out = vm.setup_exec(&wait).await?;
                    if !out.success() {
                        return Err(VmError::Hotplug { snapshot: s.dir.clone(), detail: format!("the guest did not take the hot-plugged virtio-fs devices: {}", out.stderr_str().trim()) });
                    }
                }
                vm.mount_shares_and_store().await?;
                return Ok(after);
            }
            let ready = vm.backdoor.wait_ready(cfg.boot_timeout);
            // A guest kernel that hangs early (seen under TCG with two
            // vCPUs: a CPU stuck in a soft lockup, or a lost timer
            // interrupt that RCU reports as a stall) never comes up; its
            // console says so long before the deadline.
            // A preparation's backdoor comes from the NoCloud seed, run by
            // the image's first-boot agent; an image without one (or with
            // the NoCloud datasource off) reaches its login prompt and
            // waits there: said once the prompt is FIRST_BOOT_GRACE old.
            let serial_log = vm.run.join("serial.log");
            let seeded = matches!(cfg.disk, DiskUse::Preparing { .. });
            let hung = async {
                let mut prompt_at: Option<std::time::Instant> = None;
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let Ok(log) = std::fs::read(&serial_log) else { continue };
                    let log = String::from_utf8_lossy(&log);
                    if let Some(why) = kernel_hang(&log) {
                        return format!("the guest kernel hung before the backdoor shell came up ({why}); given up early");
                    }
                    if seeded && prompt_at.is_none() && login_prompt(&log) {
                        prompt_at = Some(std::time::Instant::now());
                    }
                    // No agent on the console by the prompt: none will run
                    // (systemd runs cloud-init before the getty and prints
                    // its lines there; FreeBSD's rc runs nuageinit before
                    // its gettys start).
                    let agent = first_boot_agent_seen(&log);
                    let grace = if agent { FIRST_BOOT_GRACE } else { NO_AGENT_GRACE };
                    if let Some(at) = prompt_at.filter(|at| at.elapsed() >= grace) {
                        return if agent {
                            format!(
                                "the guest reached its login prompt {} s ago, and its first-boot agent ran, but it has not run \
                                 xdriver's NoCloud seed (the user-data that starts the backdoor): its NoCloud datasource is off \
                                 (a datasource_list without NoCloud) or it failed (see the console); given up early",
                                at.elapsed().as_secs()
                            )
                        } else {
                            format!(
                                "the guest reached its login prompt {} s ago and its console shows no first-boot agent (no \
                                 cloud-init or nuageinit line), so nothing will run xdriver's NoCloud seed (the user-data that \
                                 starts the backdoor): the image has no cloud-init (or nuageinit), or it is switched off \
                                 (/etc/cloud/cloud-init.disabled, cloud-init=disabled on the kernel command line); given up early",
                                at.elapsed().as_secs()
                            )
                        };
                    }
                }
            };
            let ready = async {
                tokio::select! {
                    r = ready => Ok(r),
                    why = hung => Err(why),
                }
            };
            match vm.until_exit("waiting for the backdoor shell", ready).await? {
                Ok(Ok(())) => {}
                Err(why) => {
                    return Err(VmError::BootTimeout {
                        waited_for: why,
                        timeout: t0.elapsed(),
                        serial: vm.serial_tail(30),
                    })
                }
                Ok(Err(BackdoorError::NotReady(t))) => {
                    return Err(VmError::BootTimeout {
                        waited_for: "the backdoor shell (virtio-serial port org.xdriver.backdoor) did not announce itself".into(),
                        timeout: t,
                        serial: vm.serial_tail(30),
                    })
                }
                Ok(Err(e)) => return Err(e.into()),
            }
            let after = t0.elapsed();
            if matches!(mode, Launch::Save(_)) {
                return Ok(after);
            }
            if want_ssh && key_over_backdoor {
                let out = vm.setup_exec(&vm.os.authorize_ssh_key(&vm.key.public_openssh())).await?;
                if !out.success() {
                    return Err(VmError::SshSetup(format!("installing the run's key over the backdoor: {}", out.stderr_str().trim())));
                }
            }
            vm.mount_shares_and_store().await?;
            Ok(after)
        };
        vm.backdoor_ready_after = match backdoor_side.await {
            Ok(v) => v,
            // A channel closing during boot is usually QEMU exiting: say so,
            // with its stderr and the serial tail.
            Err(e @ VmError::Backdoor(_)) => {
                if vm.wait_exit(Duration::from_secs(3)).await {
                    return Err(vm.exited_error("booting"));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        vm.ready_after = t0.elapsed();
        if want_ssh && key_over_backdoor {
            vm.spawn_ssh(t0, cfg.boot_timeout);
        }
        // An SSH set-up that has already failed fails the start, as it
        // would have if the start had waited for it.
        if let Some(rx) = &vm.ssh {
            let failed = matches!(&*rx.borrow(), Some(SshOutcome::TimedOut { .. } | SshOutcome::Failed(_)));
            if failed {
                return Err(vm.ssh().await.expect_err("SSH set-up failed"));
            }
        }
        vm.run.release();
        Ok(vm)
    }

    /// Starts the SSH set-up in the background (see [`Vm::ssh`]).
    fn spawn_ssh(&mut self, t0: Instant, timeout: Duration) {
        let (tx, rx) = watch::channel(None);
        let (port, host_key, key) = (self.ssh_port, self.host_key.clone(), self.key.clone());
        let go = self.ssh_go.clone();
        let task = tokio::spawn(async move {
            if let Some(go) = go {
                go.notified().await;
            }
            let outcome = match Ssh::connect(port, &host_key, &key, timeout).await {
                Ok(s) => SshOutcome::Up(s, t0.elapsed()),
                Err(SshError::Connect { timeout, last, .. }) => SshOutcome::TimedOut { timeout, last },
                Err(e) => SshOutcome::Failed(e.to_string()),
            };
            let _ = tx.send(Some(outcome));
        });
        self.ssh = Some(rx);
        self.ssh_task = Some(task.abort_handle());
    }

    /// Lets an SSH set-up held back by [`VmConfig::ssh_later`] start (a
    /// no-op otherwise, and the second time).
    pub fn begin_ssh(&self) {
        if let Some(go) = &self.ssh_go {
            go.notify_one();
        }
    }

    /// Mounts every share and the store (at the start, after a restore,
    /// after a reboot).
    async fn mount_shares_and_store(&self) -> Result<(), VmError> {
        for (i, s) in self.shares.iter().enumerate() {
            self.mount_share(i, s).await?;
        }
        if let Some(st) = &self.store {
            self.mount_store(st).await?;
        }
        Ok(())
    }

    async fn mount_share(&self, index: usize, s: &Share) -> Result<(), VmError> {
        // Idempotent, so it can be repeated if the backdoor restarts under it.
        let kind = if self.os.has_9p() { xdriver_guests::ShareKind::NineP { msize: NINEP_MSIZE } } else { xdriver_guests::ShareKind::Virtiofs };
        let cmd = self.os.mount_share(&Share::tag(index), &s.guest, s.writable, kind);
        let out = self.setup_exec(&cmd).await?;
        if !out.success() {
            return Err(VmError::Share { host: s.host.clone(), guest: s.guest.clone(), detail: out.stderr_str().trim().into() });
        }
        Ok(())
    }

    /// Mounts the shared store and its overlay (see [`crate::vm::nix_store`]).
    async fn mount_store(&self, s: &StoreShare) -> Result<(), VmError> {
        let script = guest_mount_script(s).map_err(|detail| VmError::Share { host: s.host.clone(), guest: s.guest.clone(), detail })?;
        let out = self.setup_exec(&script).await?;
        if !out.success() {
            return Err(VmError::Share {
                host: s.host.clone(),
                guest: s.guest.clone(),
                detail: format!("store over {}: {}", s.fs.name(), out.stderr_str().trim()),
            });
        }
        // A guest with Nix learns the host's store paths, so `nix-store`
        // there knows what the share holds (the NixOS driver registers its
        // closure the same way).
        if out.stdout_str().contains("guest-has-nix") {
            let share = s.clone();
            let db = tokio::task::spawn_blocking(move || host_nix_db(&share)).await.ok().flatten();
            if let Some(db) = db {
                let t = Instant::now();
                let load = self.exec(Channel::Backdoor, "nix-store --load-db", &db, Duration::from_secs(120), None).await?;
                if !load.success() {
                    return Err(VmError::Share {
                        host: s.host.clone(),
                        guest: s.guest.clone(),
                        detail: format!("registering the host's store paths (nix-store --load-db): {}", load.stderr_str().trim()),
                    });
                }
                tracing::debug!(bytes = db.len(), took = ?t.elapsed(), "host store paths registered in the guest's Nix database");
            }
        }
        Ok(())
    }

    /// A setup command on the backdoor while the VM comes up.
    async fn setup_exec(&self, cmd: &str) -> Result<Output, VmError> {
        // Rarely (seen on sysvinit guests under load, at the moment the
        // serial getty starts) the backdoor shell is replaced by a new one
        // while this first command runs; the new shell has announced itself
        // by the time that is reported, so try again on it.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.exec(Channel::Backdoor, cmd, &[], Duration::from_secs(30), None).await {
                Err(VmError::Backdoor(BackdoorError::Restarted)) if attempt < 3 => {
                    tracing::warn!(vm = %self.name, attempt, "backdoor restarted during setup; retrying");
                }
                other => return other,
            }
        }
    }

    /// Runs `fut` unless QEMU exits first.
    async fn until_exit<T>(&self, during: &str, fut: impl std::future::Future<Output = T>) -> Result<T, VmError> {
        let mut ex = self.exited.clone();
        tokio::select! {
            v = fut => Ok(v),
            _ = ex.wait_for(Option::is_some) => Err(self.exited_error(during)),
        }
    }

    fn exited_error(&self, during: &str) -> VmError {
        VmError::QemuExited {
            status: self.exited.borrow().clone().unwrap_or_else(|| "still running".into()),
            during: during.into(),
            stderr: std::fs::read_to_string(self.run.join("qemu.log")).unwrap_or_default().trim().to_string(),
            serial: self.serial_tail(20),
        }
    }

    /// The last lines of the serial log.
    pub fn serial_tail(&self, lines: usize) -> String {
        std::fs::read(self.run.join("serial.log")).map(|d| tail_lines(&d, lines)).unwrap_or_else(|_| self.console.tail(lines))
    }

    /// The run directory.
    pub fn run_dir(&self) -> &std::path::Path {
        self.run.path()
    }

    /// Keep the run directory (logs, overlay) after the VM is gone.
    pub fn keep_run_dir(&mut self) {
        self.run.keep();
    }

    /// QEMU's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether QEMU is still running.
    pub fn is_running(&self) -> bool {
        self.exited.borrow().is_none()
    }

    /// The SSH connection, once the background set-up has finished
    /// (waits for it; an error if it failed, timed out or QEMU exited).
    pub async fn ssh(&self) -> Result<Ssh, VmError> {
        self.begin_ssh();
        let mut rx = self.ssh.clone().ok_or(VmError::NoSsh)?;
        let outcome = self.until_exit("connecting over SSH", async move { rx.wait_for(Option::is_some).await.map(|o| o.clone()) }).await?;
        match outcome {
            Ok(Some(SshOutcome::Up(s, _))) => Ok(s),
            Ok(Some(SshOutcome::TimedOut { timeout, last })) => {
                if self.wait_exit(Duration::from_millis(200)).await {
                    return Err(self.exited_error("connecting over SSH"));
                }
                Err(VmError::BootTimeout {
                    waited_for: format!("SSH on 127.0.0.1:{} did not accept the run's key ({last})", self.ssh_port),
                    timeout,
                    serial: self.serial_tail(30),
                })
            }
            Ok(Some(SshOutcome::Failed(e))) => {
                // A connection breaking is usually the first sign of QEMU
                // dying.
                if self.wait_exit(Duration::from_secs(3)).await {
                    return Err(self.exited_error("connecting over SSH"));
                }
                Err(VmError::SshSetup(e))
            }
            Ok(None) | Err(_) => Err(VmError::SshSetup("the set-up task ended without an answer".into())),
        }
    }

    /// Time from `cont` until SSH was connected, if it is.
    pub fn ssh_ready_after(&self) -> Option<Duration> {
        match self.ssh.as_ref().map(|rx| rx.borrow().clone()) {
            Some(Some(SshOutcome::Up(_, after))) => Some(after),
            _ => None,
        }
    }

    /// The store's virtiofsd process id (virtiofs stores only).
    pub fn virtiofsd_pid(&self) -> Option<u32> {
        self.virtiofsd.as_ref().and_then(Virtiofsd::pid)
    }

    /// The run's SSH client key.
    pub fn client_key(&self) -> &ClientKey {
        &self.key
    }

    /// The guest's SSH host key (OpenSSH public key line) pinned from the
    /// image manifest.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    /// Runs `cmd` as root on `channel` with `stdin`. `timeout` bounds the
    /// command (zero: none). With a sink, output streams there.
    pub async fn exec(
        &self,
        channel: Channel,
        cmd: &str,
        stdin: &[u8],
        timeout: Duration,
        sink: Option<&mut dyn Sink>,
    ) -> Result<Output, VmError> {
        let during = format!("running `{}`", cmd.chars().take(80).collect::<String>());
        let res = match channel {
            Channel::Backdoor => self.until_exit(&during, self.backdoor.exec(cmd, stdin, timeout, sink)).await?.map_err(VmError::from),
            Channel::Ssh => {
                let ssh = self.ssh().await?;
                let run = ssh.exec(cmd, stdin, sink);
                if timeout.is_zero() {
                    self.until_exit(&during, run).await?.map_err(VmError::from)
                } else {
                    match self.until_exit(&during, tokio::time::timeout(timeout, run)).await? {
                        Ok(r) => r.map_err(VmError::from),
                        Err(_) => Ok(Output { stdout: Vec::new(), stderr: b"xdriver: command timed out\n".to_vec(), status: 124 }),
                    }
                }
            }
        };
        match res {
            // A channel breaking is usually the first sign of QEMU dying:
            // give the exit a moment to be reaped and report that instead.
            Err(e) if self.wait_exit(Duration::from_secs(3)).await => {
                tracing::debug!(error = %e, "channel failed as QEMU exited");
                Err(self.exited_error(&during))
            }
            other => other,
        }
    }

    /// Waits for console output matching `pattern` (see
    /// [`Console::wait_for_text`]).
    pub async fn wait_for_console_text(&self, pattern: &Regex, timeout: Duration) -> Result<String, VmError> {
        match self.until_exit("waiting for console text", self.console.wait_for_text(pattern, timeout)).await? {
            Ok(s) => Ok(s),
            Err(source) => Err(VmError::Console { source, serial: self.serial_tail(20) }),
        }
    }

    /// Waits up to `timeout` for QEMU to exit; true if it did.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut ex = self.exited.clone();
        let exited = tokio::time::timeout(timeout, ex.wait_for(Option::is_some)).await.is_ok();
        exited
    }

    /// Shuts the VM down: power off from inside, then the ACPI power button,
    /// then QMP `quit`, then SIGKILL, each with its own deadline.
    pub async fn shutdown(self) -> Stopped {
        if !self.is_running() {
            return Stopped::AlreadyExited;
        }
        let asked = tokio::time::timeout(Duration::from_secs(10), self.ask_poweroff()).await;
        // OpenRC takes 16-18 s to power off under TCG on an idle host, and
        // twice that when two VMs share two cores.
        if matches!(asked, Ok(Ok(_))) && self.wait_exit(Duration::from_secs(90)).await {
            return Stopped::GuestPoweroff;
        }
        if matches!(self.power_button(Duration::from_secs(10)).await, Ok(true)) {
            return Stopped::Acpi;
        }
        if !self.is_running() {
            return Stopped::GuestPoweroff;
        }
        self.quit_qemu().await
    }

    /// Ends QEMU without the guest's own power-off (QMP `quit`, then
    /// SIGKILL), for a VM whose overlay is thrown away anyway: a test
    /// cell's end, once its logs are collected.
    pub async fn quit(self) -> Stopped {
        if !self.is_running() {
            return Stopped::AlreadyExited;
        }
        self.quit_qemu().await
    }

    /// QMP `quit` (5 s), then SIGKILL.
    async fn quit_qemu(&self) -> Stopped {
        let _ = self.qmp.execute_within(qapi::qmp::quit {}, Duration::from_secs(5)).await;
        if self.wait_exit(Duration::from_secs(5)).await {
            return Stopped::Quit;
        }
        self.kill().await;
        Stopped::Killed
    }

    /// Powers the guest off from inside (its OS's power-off command, in the
    /// background) and waits up to `timeout` for QEMU to exit; true if it
    /// did. The VM stays usable as a value (for its logs).
    pub async fn poweroff(&self, timeout: Duration) -> Result<bool, VmError> {
        self.ask_poweroff().await?;
        Ok(self.wait_exit(timeout).await)
    }

    /// Reboots the guest through its init and waits up to `timeout` for its
    /// backdoor to announce itself again, then mounts the shares and the
    /// store again. QEMU runs with -no-reboot, so the reboot action is
    /// `reset` for the while (QMP `set-action`). The overlay (the guest's
    /// disk) is kept; xdriver's own SSH connection is not made again.
    pub async fn reboot(&self, timeout: Duration) -> Result<(), VmError> {
        let t0 = Instant::now();
        let mut events = self.qmp.subscribe();
        self.qmp.set_reboot_action("reset").await?;
        let cmd = format!("({}) >/dev/null 2>&1 </dev/null &", self.os.reboot(self.init));
        let asked = self.backdoor.exec(&cmd, &[], Duration::from_secs(10), None).await;
        let back = match asked {
            Ok(_) => {
                // QEMU says RESET when the guest's reboot reaches it; only
                // then can an announcement be the next boot's shell.
                let reset = async {
                    loop {
                        match events.recv().await {
                            Ok(ev) if ev["event"] == "RESET" => return true,
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
                        }
                    }
                };
                let before = match self.until_exit("waiting for the guest to reboot", tokio::time::timeout(timeout, reset)).await? {
                    Ok(true) => {
                        self.backdoor.forget_shell();
                        self.backdoor.announcements()
                    }
                    _ => {
                        let _ = self.qmp.set_reboot_action("shutdown").await;
                        return Err(VmError::BootTimeout { waited_for: "the guest to reset (QMP RESET) after its reboot command".into(), timeout, serial: self.serial_tail(30) });
                    }
                };
                let wait = self.backdoor.wait_announced_after(before, timeout.saturating_sub(t0.elapsed()));
                match self.until_exit("waiting for the guest to come back from its reboot", wait).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(BackdoorError::NotReady(t))) => Err(VmError::BootTimeout {
                        waited_for: "the backdoor shell after the reboot".into(),
                        timeout: t,
                        serial: self.serial_tail(30),
                    }),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e.into()),
        };
        let restored = self.qmp.set_reboot_action("shutdown").await;
        back?;
        restored?;
        self.mount_shares_and_store().await
    }

    /// Boots this VM again after its QEMU has stopped (a power-off or a
    /// crash), on the same disk: a new QEMU on the old overlay, moved into
    /// a new run directory (the first run's serial log goes along as
    /// `serial-earlier.log`), with the same devices, shares and store. A
    /// running VM is left as it is.
    pub async fn start_again(&mut self) -> Result<(), VmError> {
        if self.is_running() {
            return Ok(());
        }
        let mut cfg = self.config.clone();
        cfg.disk = DiskUse::Continue { overlay: self.run.join("overlay.qcow2"), host_key: self.host_key.clone() };
        let earlier = std::fs::read(self.run.join("serial.log")).unwrap_or_default();
        let new = Vm::start(cfg).await?;
        let _ = std::fs::write(new.run.join("serial-earlier.log"), earlier);
        let old = std::mem::replace(self, new);
        drop(old);
        Ok(())
    }

    /// Starts the guest OS's power-off command in the background, over the
    /// backdoor (it returns before the guest goes down).
    async fn ask_poweroff(&self) -> Result<Output, crate::vm::backdoor::BackdoorError> {
        let poweroff = format!("({}) >/dev/null 2>&1 </dev/null &", self.os.poweroff(self.init));
        self.backdoor.exec(&poweroff, &[], Duration::from_secs(5), None).await
    }

    /// Presses the ACPI power button (QMP `system_powerdown`) and waits up to
    /// `timeout` for QEMU to exit; true if it did (the guest powered off).
    /// xdriver's images power off on it (busybox acpid, every init).
    pub async fn power_button(&self, timeout: Duration) -> Result<bool, VmError> {
        self.qmp.execute(qapi::qmp::system_powerdown {}).await?;
        Ok(self.wait_exit(timeout).await)
    }

    /// Writes the guest's screen to `path` as PNG (QMP `screendump`).
    pub async fn screendump(&self, path: &std::path::Path) -> Result<(), VmError> {
        self.qmp
            .execute(qapi::qmp::screendump {
                filename: path.display().to_string(),
                device: None,
                head: None,
                format: Some(qapi::qmp::ImageFormat::png),
            })
            .await?;
        Ok(())
    }

    /// Kills QEMU at once and waits for it to be reaped.
    pub async fn kill(&self) {
        if self.is_running() {
            // SAFETY: kill on the pid we spawned; it is not reaped yet
            // (the exit watch would say so).
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
            self.wait_exit(Duration::from_secs(10)).await;
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(t) = &self.ssh_task {
            t.abort();
        }
        if self.is_running() {
            // SAFETY: as in `kill`.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
    }
}

/// Fills `buf` from the kernel's random source.
fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(buf);
    }
}

/// Now, in RFC 3339 (UTC, seconds).
fn chrono_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
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

/// Whether a VM's virtio-fs devices (its store, or the shares of a guest
/// without 9p) are hot-plugged after a restore rather than on QEMU's
/// command line: when it has some and its guest can take them so.
fn hotplug_virtiofs(cfg: &VmConfig, os: Os) -> bool {
    let store = cfg.store.as_ref().is_some_and(|s| s.fs == ShareFs::Virtiofs);
    let shares = !cfg.shares.is_empty() && !os.has_9p();
    (store || shares) && os.wait_virtiofs_hotplug(1).is_some()
}

/// A copy of a snapshot's RAM file in a memfd, which a restored VM maps
/// shared (vhost-user needs guest RAM in shared memory; the snapshot's own
/// file must stay as it is). Only the file's data is copied, so the
/// memfd's holes stay holes. A memfd, not a file in /dev/shm: it is not
/// held to the tmpfs's size, and nothing of it outlives the processes
/// that hold it (an interrupted run leaves nothing behind). QEMU gets it
/// as an inherited descriptor, `/proc/self/fd/N`.
struct RamCopy(std::os::fd::OwnedFd);

impl RamCopy {
    fn make(from: &std::path::Path) -> Result<RamCopy, String> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::fs::FileExt;
        let src = std::fs::File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
        let len = src.metadata().map_err(|e| format!("{}: {e}", from.display()))?.len();
        // SAFETY: memfd_create with a NUL-terminated name; the descriptor
        // it returns is owned here alone.
        let fd = unsafe { libc::memfd_create(c"xdriver-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor nobody else owns.
        let dst = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        dst.set_len(len).map_err(|e| format!("sizing the RAM copy: {e}"))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut pos: u64 = 0;
        while pos < len {
            // The next data extent (SEEK_DATA/SEEK_HOLE; ENXIO: no more data).
            // SAFETY: lseek on a descriptor this function holds open.
            let data = unsafe { libc::lseek(src.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                break;
            }
            let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
            let end = if hole < 0 { len } else { (hole as u64).min(len) };
            let mut at = data as u64;
            while at < end {
                let want = buf.len().min((end - at) as usize);
                let n = src.read_at(&mut buf[..want], at).map_err(|e| format!("reading the snapshot's RAM: {e}"))?;
                if n == 0 {
                    break;
                }
                dst.write_all_at(&buf[..n], at).map_err(|e| format!("copying the snapshot's RAM: {e}"))?;
                at += n as u64;
            }
            pos = end.max(at);
        }
        Ok(RamCopy(dst.into()))
    }

    /// The path QEMU maps it by (in QEMU's own /proc, the same number).
    fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
    }
}


/// How long a preparation waits for the seed's backdoor after the guest
/// showed its login prompt: cloud-init's final stage (which runs the
/// seed's commands) starts as the serial getty does and took under 30 s
/// to the backdoor on the Debian cloud images under TCG.
const FIRST_BOOT_GRACE: Duration = Duration::from_secs(180);

/// The same wait when the console has shown no first-boot agent at all by
/// the prompt: a little time for a late line, no more.
const NO_AGENT_GRACE: Duration = Duration::from_secs(20);

/// Whether a console log shows a first-boot agent at work: cloud-init's
/// units or its own lines (`cloud-init[PID]: Cloud-init v. …`), or
/// FreeBSD's nuageinit.
pub fn first_boot_agent_seen(log: &str) -> bool {
    log.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("cloud-init") || l.contains("nuageinit")
    })
}

/// Whether a console log shows a getty's login prompt (`host login: `, or
/// FreeBSD's `login: ` on a line of its own).
pub fn login_prompt(log: &str) -> bool {
    log.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("login: ") || l.split_once(" login: ").is_some_and(|(host, _)| !host.is_empty() && !host.contains(char::is_whitespace))
    })
}

/// How many reports of a stuck guest kernel, and over how long (by the
/// kernel's own timestamps), mean it hung: the soft-lockup watchdog
/// reports every ~28 s and RCU's stall detector every ~21 s while a CPU
/// stays stuck, so three reports 40 s apart or more are a kernel that made
/// no progress for over a minute. (One stall of the host can make each
/// vCPU and RCU report at once: a burst is not a hang.)
const HANG_REPORTS: usize = 3;
const HANG_SPAN_S: f64 = 40.0;

/// Whether a kernel console log shows a hung kernel: [`HANG_REPORTS`]
/// soft-lockup or RCU-stall reports spanning [`HANG_SPAN_S`] or more.
/// Returns the last report's line.
pub fn kernel_hang(log: &str) -> Option<String> {
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("BUG: soft lockup - CPU#") || l.contains("detected stalls on CPUs") || l.contains("self-detected stall on CPU"))
        .collect();
    // "[   28.773646] watchdog: …" -> 28.773646
    let stamp = |l: &str| l.trim_start().strip_prefix('[').and_then(|r| r.split_once(']')).and_then(|(t, _)| t.trim().parse::<f64>().ok());
    let span = match (reports.first().and_then(|l| stamp(l)), reports.last().and_then(|l| stamp(l))) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    (reports.len() >= HANG_REPORTS && span >= HANG_SPAN_S).then(|| {
        let last = reports[reports.len() - 1];
        // Without the timestamp and the "rcu: INFO:"/"watchdog:" prefix.
        let text = last.rsplit_once("] ").map_or(last, |(_, t)| t);
        format!("{} kernel reports like \"{}\"", reports.len(), text.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::kernel_hang;

    // Lines from two boots that hung under TCG (Debian 12's 6.1 kernels, two
    // vCPUs, QEMU 7.2): a soft lockup in the crypto self-tests, and CPU 0
    // idling with its timer interrupt lost.
    const LOCKUP: &str = "[    4.707615] io scheduler mq-deadline registered\n[   28.773646] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [cryptomgr_test:50]\n[   28.776737] RIP: 0010:alg_test+0x4f/0x540\n";
    const LOCKUP2: &str = "[   56.773208] watchdog: BUG: soft lockup - CPU#0 stuck for 52s! [cryptomgr_test:50]\n";
    const LOCKUP3: &str = "[   84.773366] watchdog: BUG: soft lockup - CPU#0 stuck for 78s! [cryptomgr_test:50]\n";
    const STALL: &str = "[   22.705481] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n[   22.706219] rcu: \t0-...!: (4 GPs behind) idle=f580/0/0x0 softirq=40/45 fqs=1 (false positive?)\n";
    const STALL2: &str = "[   43.729395] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n";
    const STALL3: &str = "[   64.753371] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n";

    #[test]
    fn a_first_boot_agent_is_seen_by_its_units_or_its_lines() {
        use super::first_boot_agent_seen;
        assert!(first_boot_agent_seen("[   46.2] cloud-init[549]: Cloud-init v. 25.1.4 running 'init-local'\n"));
        assert!(first_boot_agent_seen("         Starting \x1b[0;1;39mcloud-init-local.service\x1b[0m\n"));
        assert!(first_boot_agent_seen("Starting nuageinit.\n"));
        assert!(!first_boot_agent_seen("[  OK  ] Reached target getty.target\r\nxdriver login: "));
    }

    #[test]
    fn a_login_prompt_is_told_from_other_lines_with_login_in_them() {
        use super::login_prompt;
        assert!(login_prompt("[  OK  ] Reached target getty.target\r\nxdriver login: [  164.175288] systemd-ssh-generator[734]: x\n"));
        assert!(login_prompt("FreeBSD/amd64 (freebsd) (ttyu0)\n\nlogin: "));
        assert!(!login_prompt("[  OK  ] Started systemd-logind.service - User Login Management.\n"));
        assert!(!login_prompt("Debian GNU/Linux 13 xdriver ttyS0\n\n"));
        assert!(!login_prompt("pam_unix(login:session): session opened\n"));
    }

    #[test]
    fn three_lockup_or_stall_reports_over_40_s_are_a_hang_fewer_or_a_burst_are_not() {
        assert_eq!(kernel_hang("[    0.000000] Linux version 6.1.0\n[    3.0] Run /init as init process\n"), None);
        assert_eq!(kernel_hang(&format!("{LOCKUP}{LOCKUP2}")), None, "two reports may be a starved host");
        assert_eq!(
            kernel_hang(&format!("{LOCKUP}{LOCKUP2}{LOCKUP3}")).as_deref(),
            Some("3 kernel reports like \"watchdog: BUG: soft lockup - CPU#0 stuck for 78s! [cryptomgr_test:50]\"")
        );
        assert_eq!(kernel_hang(&format!("{STALL}{STALL2}{STALL3}")).as_deref(), Some("3 kernel reports like \"rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\""));
        // One host stall reported by RCU and by both vCPUs' watchdogs within
        // seconds (22.7 to 28.8 s) is no hang.
        let burst = format!("{STALL}{LOCKUP}[   28.801000] watchdog: BUG: soft lockup - CPU#1 stuck for 24s! [swapper/1:0]\n");
        assert_eq!(kernel_hang(&burst), None);
        assert!(kernel_hang(&format!("{burst}{STALL3}")).is_some(), "22.7 to 64.8 s");
    }
}
