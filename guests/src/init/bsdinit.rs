//! FreeBSD's init(8) with rc(8): imported FreeBSD images only (their
//! backdoor is installed by the NoCloud preparation, not by a build).

use crate::provision::FsEntry;

use super::registry::InitSystem;

/// FreeBSD's init.
#[derive(Debug)]
pub struct Bsdinit;

impl InitSystem for Bsdinit {
    fn name(&self) -> &'static str {
        "bsdinit"
    }
    fn built(&self) -> bool {
        false
    }
    fn poweroff_command(&self) -> &'static str {
        "shutdown -p now"
    }
    fn reboot_command(&self) -> &'static str {
        "shutdown -r now"
    }
    fn boot_files(&self, _acpid: &str) -> Vec<FsEntry> {
        // No image is built with it.
        Vec::new()
    }
}
