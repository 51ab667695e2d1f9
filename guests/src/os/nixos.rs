//! NixOS: systemd, and Nix to register the host's store in. Images come
//! from xdriver's NixOS module (nix/nixos-module.nix) or, where the image
//! has cloud-init, from the NoCloud preparation every imported image gets.
//! Unverified: no NixOS image can be obtained on the machines xdriver is
//! developed on.

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
        Images::Imported { init: Init::Systemd, firmware: Firmware::Bios, example_file: "nixos.qcow2", docs: "docs/support-matrix.md" }
    }
    fn unverified(&self) -> Option<&'static str> {
        Some("no NixOS image or nixpkgs can be obtained on the machines xdriver is developed on")
    }
    fn image_for(&self, manager: Manager) -> Result<String, String> {
        super::debian12_cloud::carried(self.name(), manager, Init::Systemd, &["systemd", "s6", "supervisord"])
    }
    fn has_nix(&self) -> bool {
        true
    }
}
