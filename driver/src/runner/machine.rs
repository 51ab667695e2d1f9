//! The Machine API over a running VM: the NixOS test driver's calls
//! (`succeed`, `wait_for_open_port`, …), manager-agnostic service control
//! through the cell's backend, every command recorded. Waits poll with
//! backoff, have deadlines, and say what they last saw when they fail.

use std::path::Path;
use std::time::{Duration, Instant};

use xdriver_guests::{Backend, Os};

use super::transcript::Transcript;
use crate::vm::output::Output;
use crate::spec::Action;
use crate::vm::{Channel, Vm, VmError};

/// Why a step did not pass.
#[derive(Debug)]
pub enum StepError {
    /// The system under test did not do what the step asked.
    Failed(String),
    /// The VM or a channel broke.
    Infra(VmError),
}

impl From<VmError> for StepError {
    fn from(e: VmError) -> Self {
        StepError::Infra(e)
    }
}

/// A VM driven for one cell.
pub struct Machine<'a> {
    /// The VM (replaced by a new QEMU on the same disk by `start` after a
    /// stop).
    pub vm: &'a mut Vm,
    /// The cell's manager backend.
    pub backend: &'a Backend,
    /// Every command run.
    pub transcript: Transcript,
    /// Where `copy_from_vm` puts things.
    pub artifacts: &'a Path,
    /// The node's name (`machine` in a cell of one).
    pub name: String,
    /// Its NICs on the cell's vlans, with their switches (none in a cell
    /// of one): `block()` cuts these, and a VM started again gets them
    /// back.
    pub net: Vec<(&'a crate::vm::vlan::Switch, crate::vm::vlan::Nic)>,
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A one-paragraph account of a command's result.
pub fn describe(cmd: &str, out: &Output) -> String {
    let mut s = format!("`{cmd}` exited {}", out.status);
    let (o, e) = (out.stdout_str(), out.stderr_str());
    if !o.trim().is_empty() {
        s.push_str(&format!("\n  stdout: {}", tail(o.trim_end(), 10).replace('\n', "\n          ")));
    }
    if !e.trim().is_empty() {
        s.push_str(&format!("\n  stderr: {}", tail(e.trim_end(), 10).replace('\n', "\n          ")));
    }
    s
}

/// The exit status `wait_for_service`'s probe gives when the manager has
/// given up on the instance.
const GAVE_UP: i32 = 99;

impl<'a> Machine<'a> {
    /// The guest OS.
    pub fn os(&self) -> Os {
        self.backend.os
    }

    /// Runs `cmd` as root on the backdoor, recorded under `context`.
    pub async fn run(&mut self, context: &str, cmd: &str, stdin: &[u8], timeout: Duration) -> Result<Output, VmError> {
        let t = Instant::now();
        match self.vm.exec(Channel::Backdoor, cmd, stdin, timeout, None).await {
            Ok(out) => {
                self.transcript.push(context, cmd, Some(out.status), out.stdout_str(), out.stderr_str(), t.elapsed());
                Ok(out)
            }
            Err(e) => {
                self.transcript.push(context, cmd, None, String::new(), e.to_string(), t.elapsed());
                Err(e)
            }
        }
    }

    /// Runs `cmd`; it must exit 0.
    pub async fn succeed(&mut self, context: &str, cmd: &str, timeout: Duration) -> Result<Output, StepError> {
        let out = self.run(context, cmd, &[], timeout).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(StepError::Failed(describe(cmd, &out)))
        }
    }

    /// Repeats `cmd` until its status satisfies `want`, or the deadline.
    async fn poll(&mut self, context: &str, cmd: &str, want_success: bool, timeout: Duration, what: &str) -> Result<Output, StepError> {
        self.poll_or_give_up(context, cmd, want_success, timeout, what, None).await
    }

    /// [`Self::poll`], ending at once with the failure `give_up.1` when the
    /// command exits `give_up.0`.
    async fn poll_or_give_up(
        &mut self,
        context: &str,
        cmd: &str,
        want_success: bool,
        timeout: Duration,
        what: &str,
        give_up: Option<(i32, &str)>,
    ) -> Result<Output, StepError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(200);
        let mut last: Output;
        let mut tries = 0u32;
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let per_try = left.clamp(Duration::from_secs(1), Duration::from_secs(60));
            let out = self.vm.exec(Channel::Backdoor, cmd, &[], per_try, None).await?;
            tries += 1;
            if out.success() == want_success {
                self.transcript.push(context, cmd, Some(out.status), out.stdout_str(), out.stderr_str(), start.elapsed());
                return Ok(out);
            }
            if let Some((_, why)) = give_up.filter(|(code, _)| out.status == *code) {
                self.transcript.push(context, cmd, Some(out.status), out.stdout_str(), out.stderr_str(), start.elapsed());
                return Err(StepError::Failed(format!("{why} (after {tries} tries); {}", describe(cmd, &out))));
            }
            last = out;
            if start.elapsed() + delay >= timeout {
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 3 / 2).min(Duration::from_secs(1));
        }
        self.transcript.push(context, cmd, Some(last.status), last.stdout_str(), last.stderr_str(), start.elapsed());
        Err(StepError::Failed(format!(
            "timed out after {:.0} s ({tries} tries) waiting for {what}; last try: {}",
            timeout.as_secs_f64(),
            describe(cmd, &last)
        )))
    }

    /// A monitor command that prints nothing when it works.
    async fn monitor(&mut self, context: &str, label: &str, cmd: &str) -> Result<Option<Output>, StepError> {
        let out = self.vm.qmp.hmp(cmd).await.map_err(|e| StepError::Infra(e.into()))?;
        let ok = out.trim().is_empty();
        self.transcript.push(context, label, Some(i32::from(!ok)), String::new(), out.clone(), Duration::ZERO);
        if ok {
            Ok(None)
        } else {
            Err(StepError::Failed(format!("{label}: the monitor said: {}", out.trim())))
        }
    }

    /// Performs one step.
    pub async fn step(&mut self, context: &str, action: &Action, timeout: Duration) -> Result<(), StepError> {
        self.step_output(context, action, timeout).await.map(drop)
    }

    /// Performs one step; a step that ran a command gives its output.
    pub async fn step_output(&mut self, context: &str, action: &Action, timeout: Duration) -> Result<Option<Output>, StepError> {
        match action {
            Action::Succeed(c) => self.succeed(context, c, timeout).await.map(Some),
            Action::Fail(c) => {
                let out = self.run(context, c, &[], timeout).await?;
                if out.success() {
                    Err(StepError::Failed(format!("expected failure, but {}", describe(c, &out))))
                } else {
                    Ok(Some(out))
                }
            }
            Action::Execute(c) => self.run(context, c, &[], timeout).await.map(Some).map_err(StepError::from),
            Action::WaitUntilSucceeds(c) => self.poll(context, c, true, timeout, &format!("`{c}` to succeed")).await.map(Some),
            Action::WaitUntilFails(c) => self.poll(context, c, false, timeout, &format!("`{c}` to fail")).await.map(Some),
            Action::WaitForOpenPort(p) => {
                let c = self.os().port_open(*p);
                self.poll(context, &c, true, timeout, &format!("TCP port {p} to be open")).await.map(|_| None)
            }
            Action::WaitForClosedPort(p) => {
                let c = self.os().port_open(*p);
                self.poll(context, &c, false, timeout, &format!("TCP port {p} to be closed")).await.map(|_| None)
            }
            Action::WaitForFile(f) => {
                let c = format!("test -e {}", xdriver_guests::shell::quote(f));
                self.poll(context, &c, true, timeout, &format!("file {f}")).await.map(|_| None)
            }
            Action::WaitForService(s) => {
                let what = format!("{} to report `{s}` running", self.backend.manager);
                match self.backend.failed(s) {
                    // One round trip per try: the status, and when it is not
                    // running, whether the manager has given up on it.
                    Some(failed) => {
                        // (Statuses may `exit`: each check in a subshell.)
                        let c = format!("( {} ); st=$?; [ $st -eq 0 ] && exit 0; if ( {failed} ) >/dev/null 2>&1; then exit {GAVE_UP}; fi; exit $st", self.backend.status(s));
                        let why = format!("{} holds `{s}` failed (it will not start it again by itself)", self.backend.manager);
                        self.poll_or_give_up(context, &c, true, timeout, &what, Some((GAVE_UP, &why))).await.map(|_| None)
                    }
                    None => self.poll(context, &self.backend.status(s), true, timeout, &what).await.map(|_| None),
                }
            }
            Action::StartService(s) => self.succeed(context, &self.backend.start(s), timeout).await.map(Some),
            Action::StopService(s) => self.succeed(context, &self.backend.stop(s), timeout).await.map(Some),
            Action::WaitForConsoleText(re) => {
                let rx = regex::bytes::Regex::new(re).map_err(|e| StepError::Failed(format!("invalid regex: {e}")))?;
                let t = Instant::now();
                match self.vm.wait_for_console_text(&rx, timeout).await {
                    Ok(m) => {
                        self.transcript.push(context, &format!("wait_for_console_text({re:?})"), Some(0), m, String::new(), t.elapsed());
                        Ok(None)
                    }
                    Err(VmError::Console { source, serial }) => {
                        Err(StepError::Failed(format!("{source}; last console lines:\n{}", tail(&serial, 5))))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Action::CopyToVm { source, target } => {
                let t = Instant::now();
                let ssh = self.vm.ssh().await?;
                let r = ssh.copy_to(source, target).await;
                let label = format!("copy_to_vm({}, {target})", source.display());
                self.transcript.push(context, &label, Some(i32::from(r.is_err())), String::new(), r.as_ref().err().map(|e| e.to_string()).unwrap_or_default(), t.elapsed());
                r.map(|_| None).map_err(|e| StepError::Failed(format!("{label}: {e}")))
            }
            Action::CopyFromVm { source, target } => {
                let t = Instant::now();
                let dest = self.artifacts.join(target);
                std::fs::create_dir_all(&dest).map_err(|e| StepError::Failed(format!("{}: {e}", dest.display())))?;
                let ssh = self.vm.ssh().await?;
                let r = ssh.copy_from(source, &dest).await;
                let label = format!("copy_from_vm({source}, {target})");
                self.transcript.push(context, &label, Some(i32::from(r.is_err())), String::new(), r.as_ref().err().map(|e| e.to_string()).unwrap_or_default(), t.elapsed());
                r.map(|_| None).map_err(|e| StepError::Failed(format!("{label}: {e}")))
            }
            Action::Sleep(s) => {
                tokio::time::sleep(Duration::from_secs_f64(*s)).await;
                Ok(None)
            }
            // On vlans, the NixOS driver's block(): the vlan NICs go down,
            // the user-mode NIC stays; a cell of one has only that one.
            Action::Block | Action::Unblock if !self.net.is_empty() => {
                let up = matches!(action, Action::Unblock);
                let t = Instant::now();
                for (_, nic) in &self.net {
                    self.vm.set_vlan_link(nic.vlan, up).await.map_err(|e| StepError::Infra(VmError::Prepare(e.to_string())))?;
                }
                let vlans: Vec<String> = self.net.iter().map(|(_, n)| n.vlan.to_string()).collect();
                let what = format!("set_link of the NICs on vlan {} {}", vlans.join(", "), if up { "on" } else { "off" });
                self.transcript.push(context, &action.display(), Some(0), what, String::new(), t.elapsed());
                Ok(None)
            }
            Action::Block => self.monitor(context, "block()", "set_link nic0 off").await,
            Action::Unblock => self.monitor(context, "unblock()", "set_link nic0 on").await,
            Action::ForwardPort { host_port, guest_port } => {
                self.monitor(context, &action.display(), &format!("hostfwd_add net0 tcp:127.0.0.1:{host_port}-:{guest_port}")).await
            }
            Action::SendChars(text) => {
                for c in text.chars() {
                    let key = key_name(c).ok_or_else(|| StepError::Failed(format!("send_chars: no key for {c:?}")))?;
                    self.vm.qmp.hmp(&format!("sendkey {key}")).await.map_err(|e| StepError::Infra(e.into()))?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                self.transcript.push(context, &action.display(), Some(0), String::new(), String::new(), Duration::ZERO);
                Ok(None)
            }
            Action::Screenshot(name) => {
                let file = if name.contains('.') { name.clone() } else { format!("{name}.png") };
                let path = self.artifacts.join(&file);
                self.vm.screendump(&path).await?;
                self.transcript.push(context, &action.display(), Some(0), path.display().to_string(), String::new(), Duration::ZERO);
                Ok(None)
            }
            Action::Shutdown => {
                let t = Instant::now();
                let off = self.vm.poweroff(timeout).await?;
                self.transcript.push(context, "shutdown()", Some(i32::from(!off)), String::new(), String::new(), t.elapsed());
                if off {
                    Ok(None)
                } else {
                    Err(StepError::Failed(format!("shutdown(): the guest did not power off within {:.0} s", timeout.as_secs_f64())))
                }
            }
            Action::Start => {
                let t = Instant::now();
                let was_running = self.vm.is_running();
                // The new QEMU starts on the VM's vlans as the first did.
                self.vm.start_again().await?;
                let note = if was_running { "already running" } else { "booted again on its disk" };
                self.transcript.push(context, "start()", Some(0), note.into(), String::new(), t.elapsed());
                Ok(None)
            }
            Action::Reboot => {
                let t = Instant::now();
                self.vm.reboot(timeout).await?;
                self.transcript.push(context, "reboot()", Some(0), String::new(), String::new(), t.elapsed());
                Ok(None)
            }
            Action::Crash => {
                let _ = self.vm.qmp.execute(qapi::qmp::quit {}).await;
                let gone = self.vm.wait_exit(Duration::from_secs(10)).await;
                self.transcript.push(context, "crash()", Some(i32::from(!gone)), String::new(), String::new(), Duration::ZERO);
                if gone {
                    Ok(None)
                } else {
                    Err(StepError::Failed("crash(): QEMU did not exit after QMP quit".into()))
                }
            }
            // Run by runner::python, which has the cell's results to record
            // its calls in.
            Action::Python(_) => Err(StepError::Failed("a Python script cannot run inside another step".into())),
        }
    }
}

/// The QEMU `sendkey` name of a character (as the NixOS driver's
/// `send_chars` maps them), if it has one.
fn key_name(c: char) -> Option<String> {
    const PLAIN: &[(char, &str)] = &[
        ('\n', "ret"), (' ', "spc"), ('\t', "tab"), ('-', "minus"), ('=', "equal"), (',', "comma"), ('.', "dot"), ('/', "slash"),
        (';', "semicolon"), ('\'', "apostrophe"), ('\\', "backslash"), ('[', "bracket_left"), (']', "bracket_right"), ('`', "grave_accent"),
    ];
    const SHIFTED: &[(char, &str)] = &[
        ('_', "minus"), ('+', "equal"), ('!', "1"), ('@', "2"), ('#', "3"), ('$', "4"), ('%', "5"), ('^', "6"), ('&', "7"), ('*', "8"),
        ('(', "9"), (')', "0"), (':', "semicolon"), ('"', "apostrophe"), ('<', "comma"), ('>', "dot"), ('?', "slash"), ('|', "backslash"),
        ('{', "bracket_left"), ('}', "bracket_right"), ('~', "grave_accent"),
    ];
    if c.is_ascii_lowercase() || c.is_ascii_digit() {
        return Some(c.to_string());
    }
    if c.is_ascii_uppercase() {
        return Some(format!("shift-{}", c.to_ascii_lowercase()));
    }
    if let Some((_, k)) = PLAIN.iter().find(|(ch, _)| *ch == c) {
        return Some((*k).to_string());
    }
    SHIFTED.iter().find(|(ch, _)| *ch == c).map(|(_, k)| format!("shift-{k}"))
}
