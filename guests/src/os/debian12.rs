//! Debian 12 (bookworm), built by xdriver from Debian's packages: one image
//! per init system, booted by direct kernel boot.

use crate::init::Init;
use crate::managers::Manager;

use super::profile::{Family, GuestOs, Images};

/// Debian 12 built from Debian's packages.
#[derive(Debug)]
pub struct Debian12;

impl GuestOs for Debian12 {
    fn name(&self) -> &'static str {
        "debian-12"
    }
    fn summary(&self) -> &'static str {
        "Debian 12, built by xdriver from Debian's packages (every Linux manager)"
    }
    fn images(&self) -> Images {
        Images::Built { recipe: "debian-12" }
    }
    fn image_for(&self, manager: Manager) -> Result<String, String> {
        built_image("debian-12", manager)
    }
    fn versions(&self) -> &'static [(&'static str, &'static str)] {
        VERSIONS
    }
}

/// What bookworm ships (12.x), shared with debian-12-nix.
pub(super) const VERSIONS: &[(&str, &str)] =
    &[("systemd", "252"), ("sysvinit", "3.06"), ("openrc", "0.45"), ("runit", "2.1.2"), ("s6", "2.11"), ("supervisor", "4.2.5"), ("linux", "6.1")];

/// The image of a Debian recipe that carries `manager`: a manager that
/// must be PID 1 (or the rc system) boots the image of its init; the
/// others (which xdriver brings up itself) share the sysvinit image.
pub(super) fn built_image(recipe: &str, manager: Manager) -> Result<String, String> {
    if manager.family() != Family::Linux {
        return Err(format!("{manager} runs on {} guests only", manager.family().name()));
    }
    let init = manager.needs_init().unwrap_or(Init::SYSVINIT);
    if !init.built() {
        return Err(format!("{manager} needs {init}, which no {recipe} image has"));
    }
    Ok(format!("{recipe}-{init}"))
}
