//! The manifest written beside every built image.

use std::path::Path;

use serde::{Deserialize, Serialize};
use xdriver_guests::{Firmware, Init};

use crate::recipe::GuestAdditions;

/// Version of the manifest format.
pub const MANIFEST_SCHEMA: u32 = 1;

/// How the kernel file boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelFormat {
    /// Uncompressed ELF with a PVH entry point.
    PvhElf,
    /// A compressed bzImage.
    BzImage,
}

/// The kernel and initramfs kept beside the disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInfo {
    /// Versioned Debian package.
    pub package: String,
    /// Its version.
    pub package_version: String,
    /// `uname -r` in the guest.
    pub release: String,
    /// How it boots.
    pub format: KernelFormat,
    /// File name in the image directory.
    pub file: String,
    /// Initramfs file name in the image directory.
    pub initrd: String,
    /// Modules the initramfs loads, in order.
    pub modules: Vec<String>,
}

/// The disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskInfo {
    /// File name in the image directory.
    pub file: String,
    /// Virtual size seen by the guest.
    pub virtual_mib: u64,
    /// Bytes the qcow2 file takes.
    pub file_bytes: u64,
}

/// Everything known about a built image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_SCHEMA`].
    pub schema: u32,
    /// e.g. `debian-12-systemd`.
    pub name: String,
    /// Recipe name.
    pub recipe: String,
    /// Cache key.
    pub recipe_hash: String,
    /// The guest OS by its registry name (`xdriver_guests::Os`), e.g.
    /// `debian-12` or `freebsd`.
    pub os: String,
    /// OS release, e.g. `12`.
    pub release: String,
    /// Init system.
    pub init: Init,
    /// PID 1 path.
    pub init_path: String,
    /// Installed packages as `name=version`.
    pub packages: Vec<String>,
    /// Kernel and initramfs for direct boot (built images; an imported
    /// image boots through its own loader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelInfo>,
    /// Disk.
    pub disk: DiskInfo,
    /// The guest's SSH host public key (OpenSSH format); clients pin it.
    pub ssh_host_key: String,
    /// RFC 3339.
    pub created_at: String,
    /// Wall time of the build.
    pub build_seconds: f64,
    /// Where an imported image came from (None: built from a recipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportInfo>,
    /// What a spec added to a built image (None: the recipe's own image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived: Option<DerivedInfo>,
    /// The `Date:` of the release's archive the packages came from (its
    /// Release file), for a suite that changes daily (testing). None for
    /// imported images and images built before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_date: Option<String>,
}

/// A derived image: a built image plus a spec's `[guest]` additions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedInfo {
    /// The image it adds to, e.g. `debian-12-systemd`.
    pub base: String,
    /// What was asked for.
    pub additions: GuestAdditions,
    /// Packages the additions brought (dependencies included), as
    /// `name=version`.
    pub added_packages: Vec<String>,
    /// Their services, kept from starting at boot (units, init scripts).
    pub disabled_services: Vec<String>,
}

/// The source of an imported image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportInfo {
    /// The file name it was imported from.
    pub source_file: String,
    /// That file's SHA-256.
    pub source_sha256: String,
    /// How that file was compressed (`none`, `xz`, `zstd`, `gzip`).
    pub compression: String,
    /// The disk format inside (`qcow2` or `raw`).
    pub source_format: String,
    /// The firmware its boot loader needs.
    pub firmware: Firmware,
}

impl Manifest {
    /// Reads a manifest file.
    pub fn read(path: &Path) -> std::io::Result<Manifest> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}
