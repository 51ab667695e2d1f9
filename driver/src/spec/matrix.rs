//! The OS × manager × profile matrix: which cells run, on which image, and
//! why the others are skipped.

use serde::Serialize;
use xdriver_guests::{Manager, Os, ProfileKind};

use super::error::SpecError;
use super::load::Spec;

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// Guest OS.
    pub os: Os,
    /// Manager.
    pub manager: Manager,
    /// Profile.
    pub profile: ProfileKind,
    /// The image to boot, or why the cell is skipped.
    pub image: Result<String, String>,
}

impl Cell {
    /// `os/manager/profile`.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.os, self.manager, self.profile)
    }

    /// Directory name for the cell's results.
    pub fn dir_name(&self) -> String {
        format!("{}-{}-{}", self.os, self.manager, self.profile)
    }
}

/// The image a cell boots, or why it cannot run here.
pub fn image_for(os: Os, manager: Manager, profile: ProfileKind) -> Result<String, String> {
    if profile == ProfileKind::Unprivileged {
        manager.unprivileged_support().map_err(str::to_string)?;
    }
    match os {
        Os::Debian12 => match manager {
            // These must be PID 1: boot the image whose init they are.
            Manager::Systemd => Ok("debian-12-systemd".into()),
            Manager::Openrc => Ok("debian-12-openrc".into()),
            Manager::Runit => Ok("debian-12-runit".into()),
            // The driver brings these up itself inside the sysvinit image.
            Manager::Sysvinit | Manager::S6 | Manager::Supervisord => Ok("debian-12-sysvinit".into()),
            Manager::Bsdrc => Err("bsdrc needs FreeBSD's rc.subr".into()),
        },
        // The same images with Debian's Nix added.
        Os::Debian12Nix => image_for(Os::Debian12, manager, profile).map(|i| i.replacen("debian-12-", "debian-12-nix-", 1)),
        Os::Freebsd => match manager {
            Manager::Bsdrc => Err("unverified: no FreeBSD image can be obtained on this host (scripts are rendered and snapshot-tested only)".into()),
            _ => Err(format!("{manager} on FreeBSD is not supported yet")),
        },
        Os::Nixos => match manager {
            Manager::Systemd => Err("unverified: no NixOS image can be obtained on this host".into()),
            _ => Err(format!("{manager} on NixOS is not supported yet")),
        },
    }
}

/// What the user asked for on the command line (empty: the spec's
/// `[matrix]`, or everything).
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// `--os`.
    pub os: Vec<Os>,
    /// `--manager`.
    pub managers: Vec<Manager>,
    /// `--profile`.
    pub profiles: Vec<ProfileKind>,
}

impl Spec {
    /// The command line's values, else the spec's `[matrix]` entry (parsed,
    /// errors at its position), else `default`.
    fn pick<T>(&self, flags: &[T], spec: &[toml::Spanned<String>], default: impl FnOnce() -> Vec<T>) -> Result<Vec<T>, SpecError>
    where
        T: Clone + std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        if !flags.is_empty() {
            return Ok(flags.to_vec());
        }
        if spec.is_empty() {
            return Ok(default());
        }
        spec.iter().map(|s| s.get_ref().parse().map_err(|e: T::Err| self.loc.at(s.span(), e.to_string()))).collect()
    }

    /// The cells for `sel`, in matrix order.
    pub fn cells(&self, sel: &Selection) -> Result<Vec<Cell>, SpecError> {
        let m = &self.file.matrix;
        let os = self.pick(&sel.os, &m.os, || vec![Os::Debian12])?;
        let managers = self.pick(&sel.managers, &m.managers, || Manager::ALL.to_vec())?;
        let profiles = self.pick(&sel.profiles, &m.profiles, || ProfileKind::ALL.to_vec())?;
        let mut cells = Vec::new();
        for &o in &os {
            for &mg in &managers {
                for &p in &profiles {
                    cells.push(Cell { os: o, manager: mg, profile: p, image: image_for(o, mg, p) });
                }
            }
        }
        Ok(cells)
    }
}
