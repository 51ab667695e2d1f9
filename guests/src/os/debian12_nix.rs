//! Debian 12 with Debian's Nix (`nix-bin`): a Nix-enabled OS that is not
//! NixOS; the host's store is registered in its Nix database.

use crate::managers::Manager;

use super::debian12::built_image;
use super::profile::{GuestOs, Images};

/// Debian 12 with Nix.
#[derive(Debug)]
pub struct Debian12Nix;

impl GuestOs for Debian12Nix {
    fn name(&self) -> &'static str {
        "debian-12-nix"
    }
    fn summary(&self) -> &'static str {
        "Debian 12 with Debian's Nix, built by xdriver (every Linux manager)"
    }
    fn images(&self) -> Images {
        Images::Built { recipe: "debian-12-nix" }
    }
    fn image_for(&self, manager: Manager) -> Result<String, String> {
        built_image("debian-12-nix", manager)
    }
    fn has_nix(&self) -> bool {
        true
    }
    fn versions(&self) -> &'static [(&'static str, &'static str)] {
        super::debian12::VERSIONS
    }
}
