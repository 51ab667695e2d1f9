//! The guest's set-up once its backdoor answers, as one guest command:
//! after a restore the clock, the RNG and the run's SSH key; the key of
//! an imported image; the hot-plugged virtio-fs devices awaited; the
//! shares and the store mounted; the vlan NICs given their addresses and
//! the machines' names. One command, not one per part: each is a round
//! trip through a guest whose every program start costs ~0.1 s under TCG
//! (twice that when another VM shares the host's cores), and the parts'
//! own commands are kept to builtins where the shell has them.

use super::*;
use crate::vm::vlan;

/// One part of the set-up, for naming what failed.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Part {
    /// Clock, RNG and key after a restore.
    Restored,
    /// The run's SSH key, over the backdoor.
    Key,
    /// The virtio-fs devices hot-plugged after a restore.
    VirtiofsWait,
    /// Share number N.
    Share(usize),
    /// The store.
    Store,
    /// The vlan NICs and /etc/hosts.
    Vlans,
}

/// The marker each part prints on stderr before it runs; on a failure the
/// last one names the part (a part may end the command with `exit`).
const PART: &str = "xdriver-setup-part ";

/// How long a restored guest has for its set-up: it took under 3 s with
/// two VMs on two busy cores (docs/benchmarks.md).
pub(super) const RESTORED_SETUP: Duration = Duration::from_secs(20);

/// The set-up command, part by part.
#[derive(Debug, Default)]
pub(super) struct Setup {
    parts: Vec<(Part, String)>,
}

impl Setup {
    pub(super) fn push(&mut self, part: Part, cmd: String) {
        self.parts.push((part, cmd));
    }

    /// A part in a subshell of its own (one fork): for commands that
    /// change the shell's state (the key's `umask 077`).
    pub(super) fn push_isolated(&mut self, part: Part, cmd: String) {
        self.parts.push((part, format!("( {cmd}\n)")));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The guest command: each part in a brace group after its marker,
    /// the command ending at the first part that fails.
    pub(super) fn script(&self) -> String {
        // `xp N`: part N begins (the marker, with the guest's uptime).
        let mut s = format!("xp() {{ xu=; read -r xu _ 2>/dev/null </proc/uptime; printf '{PART}%s %s\\n' \"$1\" \"$xu\" >&2; }}\n");
        for (i, (_, cmd)) in self.parts.iter().enumerate() {
            s.push_str(&format!("xp {i}\n{{ {cmd}\n}} || exit $?\n"));
        }
        s.push_str(&format!("xp {}\n", self.parts.len()));
        s
    }

    /// Each part's name and the guest's uptime as it began, then the end
    /// (Linux guests; for the debug log).
    pub(super) fn timings(&self, stderr: &str) -> String {
        stderr
            .lines()
            .filter_map(|l| l.strip_prefix(PART))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let i: usize = w.next()?.parse().ok()?;
                let name = self.parts.get(i).map(|(p, _)| format!("{p:?}")).unwrap_or_else(|| "end".into());
                Some(format!("{name}@{}", w.next().unwrap_or("?")))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The part that failed and its own stderr (what it printed after its
    /// marker), from the command's stderr.
    pub(super) fn failed<'a>(&self, stderr: &'a str) -> Option<(&Part, &'a str)> {
        let at = stderr.rfind(PART)?;
        let rest = &stderr[at + PART.len()..];
        let (num, detail) = rest.split_once('\n').unwrap_or((rest, ""));
        let i: usize = num.split_whitespace().next()?.parse().ok()?;
        self.parts.get(i).map(|(p, _)| (p, detail.trim()))
    }
}

impl Vm {
    /// The parts every start (and every reboot) ends with: shares, store,
    /// vlans; `names` says whether /etc/hosts gets the machines' names
    /// (not after a reboot: they are on the disk).
    pub(super) fn mount_and_net_parts(&self, setup: &mut Setup, names: bool) -> Result<(), VmError> {
        let kind = if self.os.has_9p() { xdriver_guests::ShareKind::NineP { msize: NINEP_MSIZE } } else { xdriver_guests::ShareKind::Virtiofs };
        for (i, s) in self.shares.iter().enumerate() {
            setup.push(Part::Share(i), self.os.mount_share(&Share::tag(i), &s.guest, s.writable, kind));
        }
        if let Some(st) = &self.store {
            let script = guest_mount_script(st).map_err(|detail| VmError::Share { host: st.host.clone(), guest: st.guest.clone(), detail })?;
            setup.push(Part::Store, script);
        }
        if !self.config.vlans.is_empty() {
            let nics: Vec<vlan::Nic> = self.config.vlans.iter().map(|p| p.nic.clone()).collect();
            let hosts: &[(std::net::IpAddr, String)] = if names { &self.config.hosts } else { &[] };
            setup.push(Part::Vlans, vlan::guest_script(self.os.profile(), &nics, hosts));
        }
        Ok(())
    }

    /// Runs `setup` on the backdoor; a failure is the failed part's error.
    /// `snapshot` is the restored snapshot, if any.
    pub(super) async fn run_setup(&self, setup: &Setup, snapshot: Option<&Snapshot>) -> Result<(), VmError> {
        if setup.is_empty() {
            return Ok(());
        }
        let script = setup.script();
        // A restored guest that cannot set itself up within RESTORED_SETUP
        // is taken for a damaged snapshot (see `Vm::start`).
        let within = if snapshot.is_some() { RESTORED_SETUP } else { Duration::from_secs(30) };
        let out = self.setup_exec_within(&script, within).await?;
        tracing::debug!(vm = %self.name, bytes = script.len(), parts = %setup.timings(&out.stderr_str()), "set-up parts (guest uptime at each)");
        if out.success() {
            if setup.parts.iter().any(|(p, _)| *p == Part::Store) && out.stdout_str().contains("guest-has-nix") {
                if let Some(st) = &self.store {
                    self.load_host_nix_db(st).await?;
                }
            }
            return Ok(());
        }
        let stderr = out.stderr_str();
        // No marker at all: the command died before its first part.
        let (part, detail) = setup.failed(&stderr).unwrap_or((&setup.parts[0].0, stderr.trim()));
        let detail = if detail.is_empty() { format!("exit {}", out.status) } else { detail.to_string() };
        let snap = || snapshot.map(|s| s.dir.clone()).unwrap_or_default();
        Err(match part {
            Part::Restored => VmError::Restore { snapshot: snap(), detail: format!("setting the clock, RNG and key after the restore: {detail}") },
            Part::Key => VmError::SshSetup(format!("installing the run's key over the backdoor: {detail}")),
            Part::VirtiofsWait => VmError::Hotplug { snapshot: snap(), detail: format!("the guest did not take the hot-plugged virtio-fs devices: {detail}") },
            Part::Share(i) => {
                let s = &self.shares[*i];
                VmError::Share { host: s.host.clone(), guest: s.guest.clone(), detail }
            }
            Part::Store => {
                let s = self.store.as_ref().expect("a store part has a store");
                VmError::Share { host: s.host.clone(), guest: s.guest.clone(), detail: format!("store over {}: {detail}", s.fs.name()) }
            }
            Part::Vlans => {
                let nics: Vec<vlan::Nic> = self.config.vlans.iter().map(|p| p.nic.clone()).collect();
                VmError::Vlan(vlan::guest_error(&self.name, &nics, &out.status.to_string(), &stderr).to_string())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_named_by_the_last_marker_before_it() {
        let mut s = Setup::default();
        s.push(Part::Key, "true".into());
        s.push(Part::Store, "mount x".into());
        s.push(Part::Vlans, "ip".into());
        let script = s.script();
        assert!(script.contains("xp 1\n{ mount x\n} || exit $?\n"), "{script}");
        let err = "xdriver-setup-part 0 7.50\nxdriver-setup-part 1 7.61\nmount: no such device\n";
        assert_eq!(s.failed(err), Some((&Part::Store, "mount: no such device")));
        assert_eq!(s.failed("xdriver-setup-part 2 \n"), Some((&Part::Vlans, "")));
        assert_eq!(s.timings(err), "Key@7.50 Store@7.61");
        assert_eq!(s.failed("sh: garbage"), None);
    }

    /// The script runs in a POSIX shell as the backdoor runs it: parts in
    /// order, the first failure ends it with that part's status, the last
    /// marker on stderr naming it.
    #[test]
    fn the_script_stops_at_the_first_failing_part() {
        let mut s = Setup::default();
        s.push(Part::Key, "echo one".into());
        s.push(Part::Store, "echo broken >&2; false".into());
        s.push(Part::Vlans, "echo never".into());
        let out = std::process::Command::new("sh").arg("-c").arg(s.script()).output().expect("sh");
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "one\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(s.failed(&err), Some((&Part::Store, "broken")));
    }
}
