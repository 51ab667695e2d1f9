//! A Debian 12 cloud image as Debian ships it (`debian-12-genericcloud`, or
//! one made the same way by `images/vendor/debian-12-cloud.sh`): its own
//! kernel and boot loader, systemd, cloud-init. Imported, then prepared
//! once with a NoCloud seed.

use crate::init::Init;
use crate::model::Manager;

use super::profile::{Firmware, GuestOs, Images};

/// An imported Debian 12 cloud image.
#[derive(Debug)]
pub struct Debian12Cloud;

impl GuestOs for Debian12Cloud {
    fn name(&self) -> &'static str {
        "debian-12-cloud"
    }
    fn summary(&self) -> &'static str {
        "a Debian 12 cloud image (cloud-init, systemd), imported with `xdriver image import`"
    }
    fn images(&self) -> Images {
        Images::Imported { init: Init::Systemd, firmware: Firmware::Bios, example_file: "debian-12-genericcloud-amd64.qcow2", docs: "docs/images.md" }
    }
    fn image_for(&self, manager: Manager) -> Result<String, String> {
        match manager {
            // systemd is PID 1; s6 and supervisord are brought up by
            // xdriver (their packages must be in the image).
            Manager::Systemd | Manager::S6 | Manager::Supervisord => Ok(self.name().into()),
            Manager::Sysvinit | Manager::Openrc | Manager::Runit => Err(format!("{manager} is not the init of a systemd cloud image")),
            Manager::Bsdrc => Err("bsdrc needs FreeBSD's rc.subr".into()),
        }
    }
}
