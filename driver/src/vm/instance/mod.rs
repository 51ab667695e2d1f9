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
use crate::vm::qemu::{Accel, Boot, Firmware, Share, NINEP_MSIZE};
use crate::vm::snapshot::{self, Meta, Snapshot};
use crate::vm::nix_store::{guest_mount_script, host_nix_db, ShareFs, StoreShare, Virtiofsd};
use crate::vm::qmp::{Qmp, QmpError};
use crate::vm::rundir::RunDir;
use crate::vm::ssh::{ClientKey, Ssh, SshError};
use xdriver_guests::shell::quote;

mod bringup;
mod error;
mod plan;
mod power;
mod setup;
mod start;

pub use error::{find_panic, panic_excerpt, VmError};
pub use power::{kill_all, Stopped};
use power::register;
use start::hotplug_virtiofs;

/// Which channel runs a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Channel {
    /// The persistent SSH connection.
    Ssh,
    /// The root shell on the virtio-serial backdoor port.
    Backdoor,
}

/// vCPUs of a VM when neither `--cpus` nor the spec says.
pub const DEFAULT_CPUS: u32 = 2;
/// Guest RAM (MiB) when neither `--mem-mib` nor the spec says.
pub const DEFAULT_MEM_MIB: u32 = 1024;

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
    /// NICs on vlans (their switches already running): plugged before the
    /// guest runs or right after a restore, and given their addresses in
    /// the same guest command that mounts the shares.
    pub vlans: Vec<crate::vm::vlan::VlanPort>,
    /// Host names (address, name) the guest's /etc/hosts gets with its
    /// vlan addresses: every node's.
    pub hosts: Vec<(std::net::IpAddr, String)>,
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
            vlans: Vec::new(),
            hosts: Vec::new(),
        }
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
    /// Set (to the daemon's name and share) when a virtio-fs daemon of
    /// this VM has exited.
    share_server_gone: watch::Receiver<Option<String>>,
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

/// QEMU's BLOCK_IO_ERROR for a full host device (it then pauses the guest:
/// virtio-blk's default `werror=enospc`).
fn disk_full_event(e: &serde_json::Value) -> bool {
    e["event"] == "BLOCK_IO_ERROR" && e["data"]["nospace"] == true
}

impl Vm {

    /// How the VM came up: a cold boot (and why), or restored from which
    /// RAM snapshot (and whether it saved that snapshot first).
    pub fn how_started(&self) -> &str {
        &self.start_note
    }

    /// Runs `fut` unless QEMU exits first, or pauses the guest because
    /// the host's device under the run directory is full.
    async fn until_exit<T>(&self, during: &str, fut: impl std::future::Future<Output = T>) -> Result<T, VmError> {
        let mut ex = self.exited.clone();
        let mut events = self.qmp.subscribe();
        if let Some(e) = self.qmp.find_event(disk_full_event) {
            return Err(self.disk_full_error(during, &e));
        }
        let full = async {
            loop {
                match events.recv().await {
                    Ok(e) if disk_full_event(&e) => return e,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                    _ => {}
                }
            }
        };
        let mut gone = self.share_server_gone.clone();
        tokio::select! {
            v = fut => Ok(v),
            _ = ex.wait_for(Option::is_some) => Err(self.exited_error(during)),
            e = full => Err(self.disk_full_error(during, &e)),
            // (No daemon to watch: the sender is gone, and this never ends.)
            which = async {
                match gone.wait_for(Option::is_some).await {
                    Ok(w) => w.clone().unwrap_or_default(),
                    Err(_) => std::future::pending().await,
                }
            } => {
                // QEMU going first takes its daemons with it: that is the
                // exit, not the share server.
                if self.wait_exit(Duration::from_millis(500)).await {
                    return Err(self.exited_error(during));
                }
                Err(VmError::ShareServerDied { during: during.into(), which })
            }
        }
    }

    fn disk_full_error(&self, during: &str, event: &serde_json::Value) -> VmError {
        let d = &event["data"];
        VmError::HostDiskFull {
            during: during.into(),
            run_dir: self.run.path().to_path_buf(),
            detail: format!("{} of {}: {}", d["operation"].as_str().unwrap_or("write"), d["node-name"].as_str().or(d["device"].as_str()).unwrap_or("the disk"), d["reason"].as_str().unwrap_or("no space")),
        }
    }

    fn exited_error(&self, during: &str) -> VmError {
        // A guest whose kernel panicked reboots (panic=-1), which QEMU
        // (-no-reboot) makes an exit: say so, with the panic's lines.
        if let Ok(log) = std::fs::read(self.run.join("serial.log")) {
            // Only this QEMU's part of the log (a restored VM's starts with
            // the saving boot's console).
            let log = String::from_utf8_lossy(&log);
            let own = log.rfind("[xdriver: restored from the RAM snapshot").map(|i| &log[i..]).unwrap_or(&log);
            if let Some((panic_line, console)) = error::panic_excerpt(own, 40) {
                return VmError::GuestPanicked { during: during.into(), panic_line, console };
            }
        }
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

