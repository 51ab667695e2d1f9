//! Power: shutting a VM down (its init, the ACPI button, QMP `quit`,
//! SIGKILL), rebooting it, starting it again on its disk, killing it, and
//! the registry of live QEMU processes that `kill_all` ends.

use super::*;

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

pub(super) fn register(pid: i32, live: bool) {
    let mut g = LIVE.lock().expect("live lock");
    let set = g.get_or_insert_with(HashSet::new);
    if live {
        set.insert(pid);
    } else {
        set.remove(&pid);
    }
}

impl Vm {
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
