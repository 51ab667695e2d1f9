//! The resolved processes model the manager backends render: every
//! template already expanded for one OS, manager and profile, instances in
//! dependency order. (The spec layer in the driver produces it.)

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Which form of a process a manager runs when both are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The process stays in the foreground and the manager supervises it.
    Foreground,
    /// The process daemonizes itself and leaves a pidfile.
    Daemon,
}

/// The deployment profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileKind {
    /// As root: stateDir /var, processes run as their own users.
    Privileged,
    /// As a normal user: stateDir under its home, user changes disabled.
    Unprivileged,
}

/// A profile name that is not privileged or unprivileged.
#[derive(Debug, thiserror::Error)]
#[error("unknown profile `{0}` (expected privileged or unprivileged)")]
pub struct UnknownProfile(pub String);

impl ProfileKind {
    /// Both profiles.
    pub const ALL: [ProfileKind; 2] = [ProfileKind::Privileged, ProfileKind::Unprivileged];

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            ProfileKind::Privileged => "privileged",
            ProfileKind::Unprivileged => "unprivileged",
        }
    }
}

impl fmt::Display for ProfileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProfileKind {
    type Err = UnknownProfile;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProfileKind::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| UnknownProfile(s.into()))
    }
}

/// The unprivileged profile's user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileUser {
    /// Login name.
    pub name: String,
    /// Numeric uid.
    pub uid: u32,
    /// Primary group (`users`, as in nix-processmgmt's unprivileged
    /// profile).
    pub group: String,
    /// Home directory.
    pub home: String,
}

/// A profile with its directories, as the processes model sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Which profile.
    pub kind: ProfileKind,
    /// The user that deploys and runs everything (unprivileged only).
    pub user: Option<ProfileUser>,
    /// Base of all state.
    pub state_dir: String,
    /// Pidfiles, sockets.
    pub runtime_dir: String,
    /// Logs.
    pub log_dir: String,
    /// Caches.
    pub cache_dir: String,
    /// Persistent data.
    pub lib_dir: String,
    /// Temporary files.
    pub tmp_dir: String,
    /// Whether `user` and `credentials` are ignored.
    pub force_disable_user_change: bool,
}

impl Profile {
    /// The privileged profile: stateDir /var, tmpDir /tmp.
    pub fn privileged() -> Profile {
        Profile::with_state_dir(ProfileKind::Privileged, None, "/var", "/tmp")
    }

    /// The unprivileged profile for user `name` (uid `uid`, group `users`,
    /// shell /bin/sh, as nix-processmgmt's): stateDir `/home/<name>/var`,
    /// user changes disabled.
    pub fn unprivileged(name: &str, uid: u32) -> Profile {
        let home = format!("/home/{name}");
        let state = format!("{home}/var");
        let tmp = format!("{state}/tmp");
        let user = ProfileUser { name: name.into(), uid, group: "users".into(), home };
        Profile::with_state_dir(ProfileKind::Unprivileged, Some(user), &state, &tmp)
    }

    fn with_state_dir(kind: ProfileKind, user: Option<ProfileUser>, state: &str, tmp: &str) -> Profile {
        Profile {
            kind,
            force_disable_user_change: user.is_some(),
            user,
            state_dir: state.into(),
            runtime_dir: format!("{state}/run"),
            log_dir: format!("{state}/log"),
            cache_dir: format!("{state}/cache"),
            lib_dir: format!("{state}/lib"),
            tmp_dir: tmp.into(),
        }
    }

    /// Every directory of the profile (created at deploy).
    pub fn dirs(&self) -> Vec<&str> {
        vec![&self.state_dir, &self.runtime_dir, &self.log_dir, &self.cache_dir, &self.lib_dir, &self.tmp_dir]
    }

    /// The home of the user that owns the deployment (`/root` when privileged).
    pub fn home(&self) -> &str {
        self.user.as_ref().map(|u| u.home.as_str()).unwrap_or("/root")
    }
}

/// A group to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// Name.
    pub name: String,
    /// Fixed gid (default: the OS picks a system gid).
    pub gid: Option<u32>,
}

/// A user to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Primary group (created if listed in the groups, else must exist).
    pub group: Option<String>,
    /// GECOS description.
    pub description: String,
    /// Home directory (default: none, `/nonexistent`).
    pub home: Option<String>,
    /// Whether to create the home directory.
    pub create_home: bool,
    /// Fixed uid (default: the OS picks a system uid).
    pub uid: Option<u32>,
    /// Login shell (default: /usr/sbin/nologin).
    pub shell: Option<String>,
}

/// Users and groups a process needs (ignored when user changes are
/// disabled).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Credentials {
    /// Groups.
    pub groups: Vec<Group>,
    /// Users.
    pub users: Vec<User>,
}

/// A configuration file rendered from a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigFile {
    /// Absolute guest path.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Rendered contents.
    pub contents: String,
}

/// One process instance, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    /// Instance name: names the service, its pidfile and its logs.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// The command (argv) that stays in the foreground, if offered.
    pub foreground: Option<Vec<String>>,
    /// The command (argv) that daemonizes, if offered.
    pub daemon: Option<Vec<String>>,
    /// The pidfile (written by the daemon form, or by the manager).
    pub pid_file: String,
    /// Environment variables.
    pub environment: BTreeMap<String, String>,
    /// Working directory.
    pub directory: Option<String>,
    /// umask, octal text (e.g. `022`).
    pub umask: Option<String>,
    /// Nice level.
    pub nice: Option<i32>,
    /// User to run as (None when user changes are disabled).
    pub user: Option<String>,
    /// Instances that must be running first.
    pub dependencies: Vec<String>,
    /// Shell run (as the deploying user) before the first start.
    pub initialize: Option<String>,
    /// Users and groups to create.
    pub credentials: Credentials,
    /// Files rendered from templates.
    pub config_files: Vec<ConfigFile>,
    /// The process reports readiness itself: sd_notify (`NOTIFY_SOCKET`)
    /// or a newline on the descriptor named by `READY_FD`.
    pub notify: bool,
    /// Manager-specific settings from the instance's overrides, e.g.
    /// `Service.LimitNOFILE` for systemd or `startsecs` for supervisord.
    pub extra: BTreeMap<String, String>,
    /// Where the manager sends the process's output.
    pub log_file: String,
}

/// A whole system for one cell: instances in dependency order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct System {
    /// The spec's name.
    pub name: String,
    /// Instances, every one after its dependencies.
    pub processes: Vec<Process>,
}
