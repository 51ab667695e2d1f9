//! The init systems of guest images: the four a Debian image can be built
//! with, and FreeBSD's own init (imported images only).

use std::fmt;
use std::str::FromStr;

/// The init system (PID 1) of a guest image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// systemd (with udev).
    Systemd,
    /// sysvinit-core with sysv-rc.
    Sysvinit,
    /// sysvinit-core as PID 1 with OpenRC as the rc system.
    Openrc,
    /// runit-init as PID 1.
    Runit,
    /// FreeBSD's init(8) with rc(8) (imported FreeBSD images).
    Bsdinit,
}

/// A name that is not one of [`Init::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown init system `{0}` (expected one of: systemd, sysvinit, openrc, runit, bsdinit)")]
pub struct UnknownInit(pub String);

impl Init {
    /// Every init a Debian image can be built with, in the order the docs
    /// and the matrix list them.
    pub const ALL: [Init; 4] = [Init::Systemd, Init::Sysvinit, Init::Openrc, Init::Runit];

    /// The lowercase name used in image names, flags and manifests.
    pub fn name(self) -> &'static str {
        match self {
            Init::Systemd => "systemd",
            Init::Sysvinit => "sysvinit",
            Init::Openrc => "openrc",
            Init::Runit => "runit",
            Init::Bsdinit => "bsdinit",
        }
    }

    /// The program the kernel starts as PID 1 (`init=` on the command line).
    pub fn init_path(self) -> &'static str {
        match self {
            Init::Systemd => "/lib/systemd/systemd",
            Init::Sysvinit | Init::Openrc | Init::Runit | Init::Bsdinit => "/sbin/init",
        }
    }

    /// The in-guest command that powers the machine off cleanly. It returns
    /// at once; the caller waits for QEMU to exit.
    pub fn poweroff_command(self) -> &'static str {
        match self {
            Init::Systemd => "systemctl --no-block poweroff",
            // sysvinit's poweroff talks to init over /run/initctl and returns.
            Init::Sysvinit | Init::Openrc => "poweroff",
            // runit: stage 3 runs once /run/runit.stopit is executable and
            // runit gets SIGCONT; `poweroff` here is runit's own wrapper.
            Init::Runit => "touch /run/runit.stopit; chmod 100 /run/runit.stopit; kill -CONT 1",
            Init::Bsdinit => "shutdown -p now",
        }
    }

    /// The command that reboots the guest through its init (returns
    /// before the guest goes down).
    pub fn reboot_command(self) -> &'static str {
        match self {
            Init::Systemd => "systemctl --no-block reboot",
            Init::Sysvinit | Init::Openrc => "reboot",
            // runit reboots, not halts, after stage 3 when /etc/runit/reboot
            // is executable (Debian links it to /run/runit.reboot).
            Init::Runit => "touch /run/runit.reboot /run/runit.stopit; chmod 100 /run/runit.reboot /run/runit.stopit; kill -CONT 1",
            Init::Bsdinit => "shutdown -r now",
        }
    }
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Init {
    type Err = UnknownInit;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Init::ALL
            .into_iter()
            .chain([Init::Bsdinit])
            .find(|i| i.name() == s)
            .ok_or_else(|| UnknownInit(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for i in Init::ALL {
            assert_eq!(i.name().parse::<Init>().expect("own name parses"), i);
        }
        assert!("upstart".parse::<Init>().is_err());
    }
}
