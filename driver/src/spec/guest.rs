//! `[guest]`: what the guest gets beyond its image — the OS's own packages,
//! commands run once when the image is made, disk, memory and vCPUs.
//! Packages and commands make a derived image (xdriver_images'
//! `GuestAdditions`), built once per distinct (base image, additions).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;
use xdriver_guests::{Images, Os};
use xdriver_images::GuestAdditions;

use super::error::{Locator, SpecError};

/// `[guest]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestDef {
    /// The OS's own packages (Debian: apt package names).
    #[serde(default)]
    pub packages: Vec<Spanned<String>>,
    /// Shell commands run once, as root, in the image after the packages.
    #[serde(default)]
    pub prepare: Vec<Spanned<String>>,
    /// Services of the added packages that still start at boot.
    #[serde(default)]
    pub boot_services: Vec<Spanned<String>>,
    /// Virtual disk size (MiB).
    pub disk_mib: Option<Spanned<u64>>,
    /// Guest RAM (MiB); `--mem-mib` wins.
    pub memory_mib: Option<Spanned<u32>>,
    /// vCPUs; `--cpus` wins.
    pub cpus: Option<Spanned<u32>>,
    /// Per OS (`[guest.os.<name>]`): packages, prepare and boot_services
    /// that replace the ones above for that OS.
    #[serde(default)]
    pub os: BTreeMap<Spanned<String>, GuestOsDef>,
}

/// `[guest.os.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestOsDef {
    /// Replaces `packages` for this OS.
    pub packages: Option<Vec<Spanned<String>>>,
    /// Replaces `prepare` for this OS.
    pub prepare: Option<Vec<Spanned<String>>>,
    /// Replaces `boot_services` for this OS.
    pub boot_services: Option<Vec<Spanned<String>>>,
}

/// The smallest disk a built image can take (the base images use 2 GiB).
pub const MIN_DISK_MIB: u64 = 1024;
/// Bounds of `memory_mib`.
pub const MEMORY_MIB: std::ops::RangeInclusive<u32> = 256..=65536;
/// Bounds of `cpus`.
pub const CPUS: std::ops::RangeInclusive<u32> = 1..=64;

/// Whether `p` is a Debian package name, optionally `=version`
/// (policy 5.6.1: lower case, digits, `+ - .`, at least two characters,
/// starting alphanumeric).
fn debian_package(p: &str) -> bool {
    let (name, version) = match p.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (p, None),
    };
    let name_ok = name.len() >= 2
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    let version_ok = version.is_none_or(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".+-~:".contains(&b)));
    name_ok && version_ok
}

impl GuestDef {
    /// Checks values and OS names, pointing at the line of a bad one.
    pub fn check(&self, loc: &Locator) -> Result<(), SpecError> {
        let packages = std::iter::once(&self.packages).chain(self.os.values().filter_map(|o| o.packages.as_ref()));
        for p in packages.flatten() {
            if !debian_package(p.get_ref()) {
                return Err(loc.at(
                    p.span(),
                    format!("`{}` is not a package name (Debian: lower-case letters, digits, `+ - .`, optionally `=VERSION`)", p.get_ref()),
                ));
            }
        }
        let commands = std::iter::once(&self.prepare).chain(self.os.values().filter_map(|o| o.prepare.as_ref()));
        for c in commands.flatten() {
            if c.get_ref().trim().is_empty() {
                return Err(loc.at(c.span(), "an empty prepare command"));
            }
        }
        let services = std::iter::once(&self.boot_services).chain(self.os.values().filter_map(|o| o.boot_services.as_ref()));
        for s in services.flatten() {
            if s.get_ref().is_empty() || s.get_ref().contains('/') {
                return Err(loc.at(s.span(), format!("`{}` is not a service name (a unit or init script name, e.g. `cron`)", s.get_ref())));
            }
        }
        if let Some(d) = &self.disk_mib {
            if *d.get_ref() < MIN_DISK_MIB {
                return Err(loc.at(d.span(), format!("disk_mib = {} is too small: at least {MIN_DISK_MIB}", d.get_ref())));
            }
        }
        if let Some(m) = &self.memory_mib {
            if !MEMORY_MIB.contains(m.get_ref()) {
                return Err(loc.at(m.span(), format!("memory_mib = {} is out of range ({}..={})", m.get_ref(), MEMORY_MIB.start(), MEMORY_MIB.end())));
            }
        }
        if let Some(c) = &self.cpus {
            if !CPUS.contains(c.get_ref()) {
                return Err(loc.at(c.span(), format!("cpus = {} is out of range ({}..={})", c.get_ref(), CPUS.start(), CPUS.end())));
            }
        }
        for name in self.os.keys() {
            if let Err(e) = name.get_ref().parse::<Os>() {
                return Err(loc.at(name.span(), format!("[guest.os.{}]: {e}", name.get_ref())));
            }
        }
        Ok(())
    }

    /// The VM's RAM (MiB) the spec asks for, else the default.
    pub fn memory(&self) -> u32 {
        self.memory_mib.as_ref().map_or(crate::vm::DEFAULT_MEM_MIB, |m| *m.get_ref())
    }

    /// The VM's vCPUs the spec asks for, else the default.
    pub fn vcpus(&self) -> u32 {
        self.cpus.as_ref().map_or(crate::vm::DEFAULT_CPUS, |c| *c.get_ref())
    }

    /// What a cell of `os` adds to its image; None when it adds nothing
    /// (the base image serves). An imported OS's images take no additions
    /// yet: that is an error naming the OS.
    pub fn additions(&self, os: Os) -> Result<Option<GuestAdditions>, String> {
        let per_os = self.os.iter().find(|(k, _)| k.get_ref() == os.name()).map(|(_, v)| v);
        let strings = |v: &[Spanned<String>]| v.iter().map(|s| s.get_ref().clone()).collect::<Vec<_>>();
        let pick = |own: Option<&Vec<Spanned<String>>>, all: &Vec<Spanned<String>>| strings(own.unwrap_or(all));
        let add = GuestAdditions {
            packages: pick(per_os.and_then(|o| o.packages.as_ref()), &self.packages),
            prepare: pick(per_os.and_then(|o| o.prepare.as_ref()), &self.prepare),
            disk_mib: self.disk_mib.as_ref().map(|d| *d.get_ref()),
            boot_services: pick(per_os.and_then(|o| o.boot_services.as_ref()), &self.boot_services),
        };
        if add.is_empty() {
            return Ok(None);
        }
        match (os.images(), os.host_packages()) {
            (Images::Built { .. }, _) => Ok(Some(add)),
            (Images::Imported { .. }, Some(_)) if add.disk_mib.is_some() => Err(format!(
                "[guest] disk_mib applies to built images only: an imported {os} image keeps its vendor's disk \
                 (see docs/spec.md, \"[guest]\")"
            )),
            (Images::Imported { .. }, Some(_)) => Ok(Some(add)),
            (Images::Imported { .. }, None) => Err(format!(
                "[guest] packages, prepare and boot_services are not implemented for imported {os} images \
                 (see docs/spec.md, \"[guest]\"): give {os} empty lists under [guest.os.{os}], or leave {os} out of the matrix"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_package_names() {
        for ok in ["redis-server", "postgresql", "libc6", "g++", "nginx-light=1.22.1-9", "xz-utils=5.4.1-0.2"] {
            assert!(debian_package(ok), "{ok}");
        }
        for bad in ["", "a", "Redis", "-x", "redis server", "redis;rm", "x=", "pkg=1 2", "../x"] {
            assert!(!debian_package(bad), "{bad}");
        }
    }
}
