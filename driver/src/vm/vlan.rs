//! Virtual networks between a test's machines, as the NixOS test driver
//! makes them: one switch per vlan, Debian's `vde_switch`, its sockets in
//! a directory of the run (no TAP, no bridge, no host interface: nothing
//! on a vlan can reach outside the machines on it). A VM's NIC on a vlan
//! is plugged by QMP before its guest runs (a restored RAM snapshot has
//! none, so a restored guest takes it as hot-plugged), configured over
//! the backdoor in the start's set-up command (node *i* on vlan *v* is 192.168.*v*.*i*,
//! MAC 52:54:00:12:*v*:*i*, both in hex in the MAC as in the NixOS
//! driver), and cut or restored with QMP `set_link` (`block()` /
//! `unblock()`). The user-mode NIC (host forwarding, `restrict=on`) is on
//! no vlan.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::instance::{Vm, VmError};

/// Vlans are numbered 1..=254 (the third byte of their addresses).
pub const VLANS: std::ops::RangeInclusive<u32> = 1..=254;
/// Nodes are numbered 1..=254 on each vlan (the fourth byte).
pub const NODES: std::ops::RangeInclusive<u32> = 1..=254;

/// A failure to make or use a vlan.
#[derive(Debug, thiserror::Error)]
pub enum VlanError {
    /// `vde_switch` is not installed.
    #[error("vlans need Debian's vde2 (`vde_switch` not found: apt-get install vde2)")]
    NoSwitch,
    /// The switch did not start.
    #[error("vlan {vlan}: vde_switch did not start: {detail}")]
    Switch {
        /// The vlan.
        vlan: u32,
        /// Why.
        detail: String,
    },
    /// QEMU refused the NIC.
    #[error("vlan {vlan}: hot-plugging the NIC into {vm}: {detail}")]
    Plug {
        /// The vlan.
        vlan: u32,
        /// The VM.
        vm: String,
        /// QEMU's words.
        detail: String,
    },
    /// The guest did not take its address.
    #[error("vlan {vlan}: configuring {addr} in {vm}: {detail}")]
    Guest {
        /// The vlan.
        vlan: u32,
        /// The VM.
        vm: String,
        /// The address.
        addr: Ipv4Addr,
        /// What the guest said.
        detail: String,
    },
    /// The guest's /etc/hosts could not be written.
    #[error("writing the machines' names into {vm}'s /etc/hosts: {detail}")]
    Hosts {
        /// The VM.
        vm: String,
        /// What the guest said.
        detail: String,
    },
    /// The VM went away.
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// One running vde_switch. It ends when this is dropped (killed by its
/// PID), and on its own if xdriver dies: its standard input is a pipe
/// xdriver holds, and vde_switch quits at end of input.
#[derive(Debug)]
pub struct Switch {
    vlan: u32,
    dir: PathBuf,
    child: Child,
    _stdin: ChildStdin,
}

impl Switch {
    /// Starts the switch of `vlan` with its sockets in `parent/vlanN`.
    pub fn start(vlan: u32, parent: &Path) -> Result<Switch, VlanError> {
        let dir = parent.join(format!("vlan{vlan}"));
        let fail = |detail: String| VlanError::Switch { vlan, detail };
        let mut child = Command::new("vde_switch")
            .arg("--sock")
            .arg(&dir)
            .args(["--mode", "0600", "--dirmode", "0700"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| if e.kind() == std::io::ErrorKind::NotFound { VlanError::NoSwitch } else { fail(e.to_string()) })?;
        let stdin = child.stdin.take().expect("piped");
        let t0 = Instant::now();
        while !dir.join("ctl").exists() {
            if let Ok(Some(st)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(fail(format!("exited with {st}: {}", err.trim())));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no control socket in {} after 10 s", dir.display())));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!(vlan, pid = child.id(), dir = %dir.display(), "vde_switch up");
        Ok(Switch { vlan, dir, child, _stdin: stdin })
    }

    /// The vlan's number.
    pub fn vlan(&self) -> u32 {
        self.vlan
    }

    /// The directory QEMU's `vde` netdev connects to.
    pub fn sock(&self) -> &Path {
        &self.dir
    }

    /// The switch's process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The QEMU id of a VM's netdev and device on `vlan` (one NIC per vlan).
fn nic_id(vlan: u32) -> String {
    format!("vlan{vlan}")
}

/// A node's NIC on one vlan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The vlan.
    pub vlan: u32,
    /// The node's number on it (1-based).
    pub node: u32,
}

impl Nic {
    /// 192.168.*vlan*.*node*.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.vlan as u8, self.node as u8)
    }

    /// 2001:db8:*vlan*::*node* (the documentation prefix; the NixOS test
    /// driver's IPv6 scheme).
    pub fn addr6(&self) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0x2001, 0xdb8, self.vlan as u16, 0, 0, 0, 0, self.node as u16)
    }

    /// 52:54:00:12:*vlan*:*node* (hex), as the NixOS test driver numbers them.
    pub fn mac(&self) -> String {
        format!("52:54:00:12:{:02x}:{:02x}", self.vlan, self.node)
    }

    /// The QEMU id of its netdev and device.
    pub fn id(&self) -> String {
        nic_id(self.vlan)
    }
}

/// A NIC a VM is started with: its vlan and node number, and the socket
/// directory of that vlan's switch ([`Switch::sock`]). Plugged by QMP
/// before the guest runs (a cold boot) or right after a restore, and
/// configured with the VM's other set-up (see [`crate::vm::VmConfig::vlans`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanPort {
    /// The NIC.
    pub nic: Nic,
    /// Its switch's socket directory.
    pub sock: PathBuf,
}

/// The marker a failed NIC's command prints (with its vlan) on stderr.
const NIC_FAILED: &str = "xdriver-vlan-failed ";
/// The marker a failed /etc/hosts update prints on stderr.
const HOSTS_FAILED: &str = "xdriver-hosts-failed";
/// The comment line above the machines' names in /etc/hosts: written
/// once, so a guest that reboots or starts again on its disk gets no
/// second copy.
const HOSTS_MARK: &str = "# xdriver: the test's machines";

/// The guest command that gives each of `nics` its addresses (found by
/// MAC: hot-plugged NICs may take a moment to appear) and adds `names`
/// (address, host name) to /etc/hosts unless they are there, so that
/// every node's name resolves to its first vlan address. Shell builtins
/// but for the OS's own network command: a program start costs ~0.1 s
/// in a guest under TCG.
pub fn guest_script(os: &dyn xdriver_guests::GuestOs, nics: &[Nic], names: &[(std::net::IpAddr, String)]) -> String {
    // Each NIC's command in a subshell of its own, marked, so a failure
    // names its vlan; then the hosts.
    let mut script = String::new();
    for nic in nics {
        let c = os.configure_nic(&nic.mac(), &format!("{}/24", nic.addr()), &format!("{}/64", nic.addr6()));
        script.push_str(&format!("( {c}\n) || {{ echo '{NIC_FAILED}{}' >&2; exit 3; }}\n", nic.vlan));
    }
    if !names.is_empty() {
        let lines: String = std::iter::once(format!("{HOSTS_MARK}\n")).chain(names.iter().map(|(a, n)| format!("{a} {n}\n"))).collect();
        script.push_str(&format!(
            "xh=; while IFS= read -r l; do [ \"$l\" = {mark} ] && xh=1; done </etc/hosts; \
             [ -n \"$xh\" ] || printf '%s' {lines} >>/etc/hosts || {{ echo '{HOSTS_FAILED}' >&2; exit 4; }}\n",
            mark = xdriver_guests::shell::quote(HOSTS_MARK),
            lines = xdriver_guests::shell::quote(&lines)
        ));
    }
    script
}

/// What failed in [`guest_script`], from its exit status and stderr.
pub fn guest_error(vm: &str, nics: &[Nic], status: &str, stderr: &str) -> VlanError {
    let detail = format!("exit {status}: {}", stderr.lines().filter(|l| !l.starts_with(NIC_FAILED) && *l != HOSTS_FAILED).collect::<Vec<_>>().join("\n").trim());
    let failed = stderr.lines().find_map(|l| l.strip_prefix(NIC_FAILED)).and_then(|v| v.trim().parse::<u32>().ok());
    match nics.iter().find(|n| Some(n.vlan) == failed) {
        Some(nic) => VlanError::Guest { vlan: nic.vlan, vm: vm.into(), addr: nic.addr(), detail },
        None => VlanError::Hosts { vm: vm.into(), detail },
    }
}

impl Vm {
    /// Plugs each port's NIC into this VM (QMP `netdev_add` of a `vde`
    /// netdev on the port's switch, then `device_add` of a virtio-net NIC
    /// with the node's MAC); the guest still has to configure them.
    pub(crate) async fn plug_vlans(&self, ports: &[VlanPort]) -> Result<(), VlanError> {
        for VlanPort { nic, sock } in ports {
            let id = nic.id();
            let plug = |detail: String| VlanError::Plug { vlan: nic.vlan, vm: self.name.clone(), detail };
            let netdev = serde_json::json!({ "type": "vde", "id": id, "sock": sock.display().to_string() });
            self.qmp.raw_command("netdev_add", netdev, Duration::from_secs(10)).await.map_err(|e| plug(e.to_string()))?;
            let device = serde_json::json!({ "driver": "virtio-net-pci", "id": id, "netdev": id, "mac": nic.mac() });
            self.qmp.raw_command("device_add", device, Duration::from_secs(30)).await.map_err(|e| plug(e.to_string()))?;
            tracing::debug!(vm = %self.name, vlan = nic.vlan, "vlan NIC plugged");
        }
        Ok(())
    }

    /// Cuts (`up = false`) or restores this VM's link on `vlan`, as the
    /// NixOS driver's `block()` / `unblock()` do; the guest sees its
    /// carrier go.
    pub async fn set_vlan_link(&self, vlan: u32, up: bool) -> Result<(), VlanError> {
        self.qmp
            .raw_command("set_link", serde_json::json!({ "name": nic_id(vlan), "up": up }), Duration::from_secs(10))
            .await
            .map_err(|e| VlanError::Plug { vlan, vm: self.name.clone(), detail: e.to_string() })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_macs_follow_the_nixos_driver() {
        let n = Nic { vlan: 1, node: 2 };
        assert_eq!(n.addr(), Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(n.mac(), "52:54:00:12:01:02");
        assert_eq!(Nic { vlan: 17, node: 254 }.mac(), "52:54:00:12:11:fe");
        assert_eq!(n.addr6().to_string(), "2001:db8:1::2");
    }
}
