//! NixOS: systemd, and Nix to register the host's store in. An image is
//! imported either with xdriver's NixOS module (nix/nixos-module.nix: the
//! backdoor as a systemd service, sshd, the serial console; the NoCloud
//! seed then finds nothing to do) or, where the image has cloud-init, as
//! any cloud image. Unverified: no NixOS image or nixpkgs can be obtained
//! on the machines xdriver is developed on.

use crate::init::Init;
use crate::managers::Manager;

use super::profile::{Firmware, GuestOs, Images};

/// NixOS.
#[derive(Debug)]
pub struct Nixos;

impl GuestOs for Nixos {
    fn name(&self) -> &'static str {
        "nixos"
    }
    fn summary(&self) -> &'static str {
        "NixOS, imported (unverified: no NixOS image here)"
    }
    fn images(&self) -> Images {
        Images::Imported { init: Init::SYSTEMD, firmware: Firmware::Bios, example_file: "nixos.qcow2", docs: "docs/support-matrix.md" }
    }
    fn unverified(&self) -> Option<&'static str> {
        Some("no NixOS image or nixpkgs can be obtained on the machines xdriver is developed on")
    }
    fn image_for(&self, manager: Manager) -> Result<String, String> {
        super::profile::carried(self.name(), manager, Init::SYSTEMD, &["systemd", "s6", "supervisord"])
    }
    fn has_nix(&self) -> bool {
        true
    }
    fn backdoor_env(&self) -> &'static str {
        // NixOS keeps its commands in the system profile, setuid wrappers
        // in /run/wrappers.
        "export PATH=/run/wrappers/bin:/run/current-system/sw/bin:$PATH\n"
    }
}
