//! Debian 13 (trixie, stable), built by xdriver from Debian's packages:
//! one image per init system, booted by direct kernel boot. Differences
//! from Debian 12 that matter to xdriver live in its recipe
//! (`images/recipes/debian-13.toml`) and in [`GuestOs::versions`].

use crate::managers::Manager;

use super::debian12::built_image;
use super::profile::{GuestOs, Images};

/// Debian 13 built from Debian's packages.
#[derive(Debug)]
pub struct Debian13;

impl GuestOs for Debian13 {
    fn name(&self) -> &'static str {
        "debian-13"
    }
    fn summary(&self) -> &'static str {
        "Debian 13 (trixie), built by xdriver from Debian's packages (every Linux manager)"
    }
    fn images(&self) -> Images {
        Images::Built { recipe: "debian-13" }
    }
    fn image_for(&self, manager: Manager) -> Result<String, String> {
        built_image("debian-13", manager)
    }
    fn versions(&self) -> &'static [(&'static str, &'static str)] {
        // trixie's package index, 13.8 (December 2026).
        &[("systemd", "257"), ("sysvinit", "3.14"), ("openrc", "0.56"), ("runit", "2.2.0"), ("s6", "2.13"), ("supervisor", "4.2.5"), ("linux", "6.12")]
    }
}
