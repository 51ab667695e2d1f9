//! Debian 12 (bookworm), built by xdriver from Debian's packages: one image
//! per init system, booted by direct kernel boot.

use crate::model::Manager;

use super::profile::{GuestOs, Images};

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
}

/// The image of a Debian recipe that carries `manager`: the managers that
/// must be PID 1 boot the image whose init they are; sysvinit, s6 and
/// supervisord (which xdriver brings up itself) share the sysvinit image.
pub(super) fn built_image(recipe: &str, manager: Manager) -> Result<String, String> {
    let init = match manager {
        Manager::Systemd => "systemd",
        Manager::Openrc => "openrc",
        Manager::Runit => "runit",
        Manager::Sysvinit | Manager::S6 | Manager::Supervisord => "sysvinit",
        Manager::Bsdrc => return Err("bsdrc needs FreeBSD's rc.subr".into()),
    };
    Ok(format!("{recipe}-{init}"))
}
