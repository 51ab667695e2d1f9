//! VM failures.

use super::*;

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
    /// The host's device under the run directory filled up: QEMU could not
    /// grow the VM's disk overlay and paused the guest.
    #[error("no space left on the host device under {run_dir}: QEMU could not grow the VM's disk overlay while {during} ({detail}) and paused the guest; free space there or set XDRIVER_RUN_DIR to a roomier directory")]
    HostDiskFull {
        /// What xdriver was doing.
        during: String,
        /// The run directory.
        run_dir: PathBuf,
        /// QEMU's words (operation, node, reason).
        detail: String,
    },
    /// A virtio-fs daemon (a share's or the store's server) exited while
    /// the VM ran: the guest's accesses to that share would hang.
    #[error("{which} exited while {during}: the guest's share is gone (its accesses would hang); the VM is stopped")]
    ShareServerDied {
        /// What xdriver was doing.
        during: String,
        /// The daemon and its share.
        which: String,
    },
    /// The guest's kernel panicked (and QEMU, told not to reboot, exited).
    #[error("the guest kernel panicked while {during}: {panic_line}\n--- console from the panic ---\n{console}")]
    GuestPanicked {
        /// What xdriver was doing.
        during: String,
        /// The `Kernel panic - not syncing: …` line (or the first line of
        /// the panic when there is none).
        panic_line: String,
        /// The console from the panic's first line on.
        console: String,
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
    /// A NIC on a vlan could not be plugged or configured (the words are
    /// [`crate::vm::vlan::VlanError`]'s).
    #[error("{0}")]
    Vlan(String),
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

/// Where a kernel panic starts in a console log: the first line of its
/// cause (an Oops, a BUG, sysrq's crash, or the panic line itself) and the
/// `Kernel panic - not syncing` line, as (index of the first line, the
/// panic line); None without a panic line.
pub fn find_panic(lines: &[&str]) -> Option<(usize, String)> {
    let at = lines.iter().rposition(|l| l.contains("Kernel panic - not syncing"))?;
    let panic_line = lines[at][lines[at].find("Kernel panic - not syncing").unwrap_or(0)..].trim().to_string();
    // The cause, within the 60 lines before (a register dump and a call
    // trace come between).
    let from = at.saturating_sub(60);
    let cause = (from..at).find(|&i| {
        let l = lines[i];
        l.contains("sysrq: Trigger a crash") || l.contains("Oops:") || l.contains("BUG:") || l.contains("general protection fault") || l.contains("Out of memory and no killable")
    });
    Some((cause.unwrap_or(at), panic_line))
}

/// The console's lines from a panic's start, at most `max`.
pub fn panic_excerpt(log: &str, max: usize) -> Option<(String, String)> {
    let lines: Vec<&str> = log.lines().collect();
    let (start, panic_line) = find_panic(&lines)?;
    let end = (start + max).min(lines.len());
    Some((panic_line, lines[start..end].join("\n")))
}

impl VmError {
    /// The guest kernel's panic line, if this error is QEMU exiting or a
    /// boot timing out with one in the serial tail.
    pub fn kernel_panic(&self) -> Option<&str> {
        let serial = match self {
            VmError::GuestPanicked { panic_line, .. } => return Some(panic_line),
            VmError::QemuExited { serial, .. } | VmError::BootTimeout { serial, .. } => serial,
            VmError::BootedTwice { last, .. } => return last.kernel_panic(),
            _ => return None,
        };
        serial.lines().map(str::trim).find_map(|l| l.find("Kernel panic - not syncing").map(|i| &l[i..]))
    }
}
