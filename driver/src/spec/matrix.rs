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

/// The image a cell boots, or why it cannot run here (the OS's own
/// answer; see [`xdriver_guests::GuestOs::image_for`]).
pub fn image_for(os: Os, manager: Manager, profile: ProfileKind) -> Result<String, String> {
    if profile == ProfileKind::Unprivileged {
        manager.unprivileged_support(&*os)?;
    }
    os.image_for(manager)
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
        let os = self.pick(&sel.os, &m.os, || vec![Os::DEBIAN_12])?;
        let managers = self.pick(&sel.managers, &m.managers, || Manager::all().collect())?;
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
