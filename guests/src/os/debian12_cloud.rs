//! A Debian 12 cloud image as Debian ships it (`debian-12-genericcloud`, or
//! one made the same way by `images/vendor/debian-cloud.sh 12`): its own
//! kernel and boot loader, systemd, cloud-init. Imported, then prepared
//! once with a NoCloud seed.

use crate::init::Init;
use crate::managers::Manager;

use super::profile::{carried, Firmware, GuestOs, Images};

/// The managers a systemd cloud image carries: systemd as PID 1, and s6
/// and supervisord, which xdriver brings up (their packages must be in
/// the image or come from the spec's `[guest]` table: Debian's own
/// genericcloud image has neither).
pub(super) const CARRIES: &[&str] = &["systemd", "s6", "supervisord"];

/// An imported Debian 12 cloud image.
#[derive(Debug)]
pub struct Debian12Cloud;

impl GuestOs for Debian12Cloud {
    fn name(&self) -> &'static str {
        "debian-12-cloud"
    }
    fn host_packages(&self) -> Option<super::profile::HostPackages> {
        Some(super::profile::HostPackages::Deb)
    }
    fn summary(&self) -> &'static str {
        "a Debian 12 cloud image (cloud-init, systemd), imported with `xdriver image import`"
    }
    fn images(&self) -> Images {
        cloud_image("debian-12-genericcloud-amd64.qcow2")
    }
    fn has_9p(&self) -> bool {
        // Debian's cloud kernel (linux-image-cloud-amd64) has virtio-fs
        // but no 9p: shares go over virtio-fs.
        false
    }
    fn image_for(&self, manager: Manager) -> Result<String, String> {
        carried(self.name(), manager, Init::SYSTEMD, CARRIES)
    }
    fn versions(&self) -> &'static [(&'static str, &'static str)] {
        &[("systemd", "252"), ("cloud-init", "22.4"), ("linux", "6.1")]
    }
}

/// Where a Debian cloud image comes from: imported, systemd, booted by
/// SeaBIOS unless the import says UEFI; `example_file` is the name Debian
/// publishes it under.
pub(super) fn cloud_image(example_file: &'static str) -> Images {
    Images::Imported { init: Init::SYSTEMD, firmware: Firmware::Bios, example_file, docs: "docs/images.md" }
}
