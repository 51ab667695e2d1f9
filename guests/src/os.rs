//! What differs per guest OS for deploying a system: how to run a command
//! as the profile's user, create users and groups, and check a port.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::model::{Group, Profile, User};
use crate::shell::quote;

/// A guest OS family xdriver can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Os {
    /// Debian 12 (bookworm), built from Debian's packages.
    #[serde(rename = "debian-12")]
    Debian12,
    /// Debian 12 with Debian's Nix (`nix-bin`): a Nix-enabled OS that is
    /// not NixOS; the host's store is registered in its Nix database.
    #[serde(rename = "debian-12-nix")]
    Debian12Nix,
    /// FreeBSD 14.4+/15 (imported cloud image; unverified here).
    #[serde(rename = "freebsd")]
    Freebsd,
    /// NixOS (unverified here).
    #[serde(rename = "nixos")]
    Nixos,
}

/// An OS name that is not one of [`Os::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown OS `{0}` (expected one of: debian-12, debian-12-nix, freebsd, nixos)")]
pub struct UnknownOs(pub String);

impl Os {
    /// Every OS, in matrix order.
    pub const ALL: [Os; 4] = [Os::Debian12, Os::Debian12Nix, Os::Freebsd, Os::Nixos];

    /// Name as in flags and specs.
    pub fn name(self) -> &'static str {
        match self {
            Os::Debian12 => "debian-12",
            Os::Debian12Nix => "debian-12-nix",
            Os::Freebsd => "freebsd",
            Os::Nixos => "nixos",
        }
    }

    /// Whether the guest has Nix (`nix-store`) to register a shared store in.
    pub fn has_nix(self) -> bool {
        matches!(self, Os::Debian12Nix | Os::Nixos)
    }

    /// Whether the guest kernel has virtio-fs (FreeBSD has only 9p).
    pub fn has_virtiofs(self) -> bool {
        self != Os::Freebsd
    }

    /// `cmd` (a shell command line) run as the profile's user, with its
    /// HOME and, on Linux, its XDG_RUNTIME_DIR; unchanged when privileged.
    pub fn as_user(self, profile: &Profile, cmd: &str) -> String {
        let Some(u) = &profile.user else { return cmd.to_string() };
        match self {
            // From the user's home: the caller's working directory (root's)
            // is not the user's to open, and runsvdir, for one, needs it.
            Os::Debian12 | Os::Debian12Nix | Os::Nixos => format!(
                "runuser -u {} -- env HOME={h} XDG_RUNTIME_DIR=/run/user/{} sh -c {}",
                quote(&u.name),
                u.uid,
                quote(&format!("cd {} && {cmd}", quote(&u.home))),
                h = quote(&u.home),
            ),
            Os::Freebsd => {
                format!("su -m {} -c {}", quote(&u.name), quote(&format!("HOME={h}; export HOME; cd {h} && {cmd}", h = quote(&u.home))))
            }
        }
    }

    /// Creates a group unless it exists.
    pub fn add_group(self, g: &Group) -> String {
        let n = quote(&g.name);
        match self {
            Os::Debian12 | Os::Debian12Nix | Os::Nixos => format!("getent group {n} >/dev/null || groupadd --system {n}"),
            Os::Freebsd => format!("pw groupshow {n} >/dev/null 2>&1 || pw groupadd -n {n}"),
        }
    }

    /// Creates a system user unless it exists.
    pub fn add_user(self, u: &User) -> String {
        let n = quote(&u.name);
        let home = quote(u.home.as_deref().unwrap_or("/nonexistent"));
        match self {
            Os::Debian12 | Os::Debian12Nix | Os::Nixos => {
                let group = u.group.as_ref().map(|g| format!(" -g {}", quote(g))).unwrap_or_else(|| " -U".into());
                let mk = if u.create_home { " -m" } else { " -M" };
                format!(
                    "getent passwd {n} >/dev/null || useradd --system{group}{mk} -d {home} -s /usr/sbin/nologin -c {} {n}",
                    quote(&u.description)
                )
            }
            Os::Freebsd => {
                let group = u.group.as_ref().map(|g| format!(" -g {}", quote(g))).unwrap_or_default();
                let mk = if u.create_home { " -m" } else { "" };
                format!(
                    "pw usershow {n} >/dev/null 2>&1 || pw useradd -n {n}{group}{mk} -d {home} -s /usr/sbin/nologin -c {}",
                    quote(&u.description)
                )
            }
        }
    }

    /// Creates the unprivileged profile's login user (uid fixed by the profile).
    pub fn add_profile_user(self, profile: &Profile) -> Option<String> {
        let u = profile.user.as_ref()?;
        let n = quote(&u.name);
        Some(match self {
            Os::Debian12 | Os::Debian12Nix | Os::Nixos => format!(
                "getent passwd {n} >/dev/null || useradd -m -u {uid} -U -d {h} -s /bin/sh {n}",
                uid = u.uid,
                h = quote(&u.home)
            ),
            Os::Freebsd => format!(
                "pw usershow {n} >/dev/null 2>&1 || pw useradd -n {n} -u {uid} -m -d {h} -s /bin/sh",
                uid = u.uid,
                h = quote(&u.home)
            ),
        })
    }

    /// Exits 0 when something listens on TCP `port` (any local address).
    pub fn port_open(self, port: u16) -> String {
        match self {
            Os::Debian12 | Os::Debian12Nix | Os::Nixos => format!("ss -Htln 'sport = :{port}' | grep -q ."),
            Os::Freebsd => format!("sockstat -4 -6 -l -P tcp -p {port} -q | grep -q ."),
        }
    }
}

impl fmt::Display for Os {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Os {
    type Err = UnknownOs;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Os::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| UnknownOs(s.into()))
    }
}
