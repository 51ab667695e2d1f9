//! Debian 14 (forky, testing), built by xdriver from Debian's packages:
//! one image per init system. Testing changes daily: an image's manifest
//! records the archive's date, and a build that fails for the archive's
//! reasons (a package in transition) names the suite, the package and that
//! date. OpenRC 0.64 has user services, so the unprivileged OpenRC cell
//! runs here.

use crate::managers::Manager;

use super::debian12::built_image;
use super::profile::{GuestOs, Images};

/// Debian 14 built from Debian's packages.
#[derive(Debug)]
pub struct Debian14;

impl GuestOs for Debian14 {
    fn name(&self) -> &'static str {
        "debian-14"
    }
    fn summary(&self) -> &'static str {
        "Debian 14 (forky, testing), built by xdriver from Debian's packages (every Linux manager)"
    }
    fn images(&self) -> Images {
        Images::Built { recipe: "debian-14" }
    }
    fn image_for(&self, manager: Manager) -> Result<String, String> {
        built_image("debian-14", manager)
    }
    fn versions(&self) -> &'static [(&'static str, &'static str)] {
        // forky's package index as of its archive of 2026-10-30.
        &[("systemd", "262"), ("sysvinit", "3.18"), ("openrc", "0.64"), ("runit", "2.3.1"), ("s6", "2.15"), ("supervisor", "4.3.0"), ("linux", "7.2")]
    }
}
