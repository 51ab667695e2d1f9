//! A Debian 13 cloud image as Debian ships it (`debian-13-genericcloud`,
//! or one made the same way by `images/vendor/debian-cloud.sh 13`): its
//! own kernel (6.12) and boot loader, systemd 257, cloud-init 25,
//! networking by netplan and systemd-networkd. Imported, then prepared
//! once with a NoCloud seed, as the Debian 12 one is.

use crate::managers::Manager;

use super::debian12_cloud::{cloud_image, CARRIES};
use super::profile::{carried, GuestOs, HostPackages, Images};
use crate::init::Init;

/// An imported Debian 13 cloud image.
#[derive(Debug)]
pub struct Debian13Cloud;

impl GuestOs for Debian13Cloud {
    fn name(&self) -> &'static str {
        "debian-13-cloud"
    }
    fn host_packages(&self) -> Option<HostPackages> {
        Some(HostPackages::Deb)
    }
    fn summary(&self) -> &'static str {
        "a Debian 13 cloud image (cloud-init, systemd), imported with `xdriver image import`"
    }
    fn images(&self) -> Images {
        cloud_image("debian-13-genericcloud-amd64.qcow2")
    }
    fn has_9p(&self) -> bool {
        // Debian's cloud kernel has virtio-fs but no 9p.
        false
    }
    fn image_for(&self, manager: Manager) -> Result<String, String> {
        carried(self.name(), manager, Init::SYSTEMD, CARRIES)
    }
    fn versions(&self) -> &'static [(&'static str, &'static str)] {
        &[("systemd", "257"), ("cloud-init", "25.1"), ("linux", "6.12")]
    }
}
