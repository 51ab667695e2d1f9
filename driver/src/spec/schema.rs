//! The spec file's TOML schema (docs/spec.md). Every string that ends up in
//! the guest is a template (minijinja, Jinja2 syntax), rendered per cell.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A whole spec file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// The system's name (reports, result directories).
    pub name: String,
    /// One line about it.
    #[serde(default)]
    pub description: String,
    /// The cells to run by default.
    #[serde(default)]
    pub matrix: MatrixDef,
    /// Extra parameters visible to every template (nix-processmgmt's
    /// `extraParams`); `--set KEY=VALUE` overrides them.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// Host directories shared into every cell's guest.
    #[serde(default)]
    pub shares: Vec<Spanned<ShareDef>>,
    /// Reusable, parameterized process definitions.
    #[serde(default)]
    pub constructors: BTreeMap<Spanned<String>, Spanned<ConstructorDef>>,
    /// The processes model: named instances.
    pub instances: BTreeMap<Spanned<String>, Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    /// The tests.
    #[serde(default)]
    pub tests: TestsDef,
    /// Default timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsDef,
    /// What the guest gets beyond its image: packages, prepare commands,
    /// disk, memory, vCPUs.
    #[serde(default)]
    pub guest: super::guest::GuestDef,
    /// The machines of a multi-machine cell (none: one machine, `machine`).
    #[serde(default)]
    pub nodes: BTreeMap<Spanned<String>, Spanned<NodeDef>>,
}

/// `[nodes.NAME]`: one machine of a cell. What it does not set, it takes
/// from the cell (so the matrix varies it); what it sets stays fixed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    /// Guest OS (default: the cell's).
    pub os: Option<Spanned<String>>,
    /// Process manager (default: the cell's).
    pub manager: Option<Spanned<String>>,
    /// Profile (default: the cell's).
    pub profile: Option<Spanned<String>>,
    /// The instances it runs (default: the first node runs every instance
    /// no node names).
    pub instances: Option<Vec<Spanned<String>>>,
    /// The vlans it has a NIC on (default: vlan 1).
    pub vlans: Option<Vec<Spanned<i64>>>,
    /// Guest RAM in MiB (default: `[guest] memory_mib`).
    pub memory_mib: Option<u32>,
    /// vCPUs (default: `[guest] cpus`).
    pub cpus: Option<u32>,
    /// The node's own `[guest]` (`[nodes.NAME.guest]`): replaces the
    /// spec's `[guest]` for this node, whole (default: the spec's).
    pub guest: Option<super::guest::GuestDef>,
}

/// `[matrix]`: default values of `--os`, `--manager`, `--profile`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixDef {
    /// Guest OSes.
    #[serde(default)]
    pub os: Vec<Spanned<String>>,
    /// Process managers.
    #[serde(default)]
    pub managers: Vec<Spanned<String>>,
    /// Profiles.
    #[serde(default)]
    pub profiles: Vec<Spanned<String>>,
}

/// `[[shares]]`: a host directory mounted read-only (unless `writable`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareDef {
    /// Host path, relative to the spec file; `${VAR}` and `${VAR:-default}`
    /// are expanded from the environment.
    pub host: String,
    /// Absolute guest mount point.
    pub guest: String,
    /// Mount read-write.
    #[serde(default)]
    pub writable: bool,
}

/// `[timeouts]`, in seconds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsDef {
    /// Default for every wait step.
    #[serde(default = "default_step")]
    pub step: u64,
    /// Default for every command of `succeed`/`fail`/`execute`.
    #[serde(default = "default_command")]
    pub command: u64,
    /// For the guest to come up.
    #[serde(default = "default_boot")]
    pub boot: u64,
}

fn default_step() -> u64 {
    120
}
fn default_command() -> u64 {
    300
}
fn default_boot() -> u64 {
    180
}

impl Default for TimeoutsDef {
    fn default() -> Self {
        TimeoutsDef { step: default_step(), command: default_command(), boot: default_boot() }
    }
}

/// The type of a constructor parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// An integer (a template string must render to one).
    Int,
    /// A string.
    String,
    /// A boolean.
    Bool,
    /// A list of instance names: resolved to those instances' attributes
    /// for templates, and added to the dependencies.
    Instances,
    /// Any TOML value.
    Any,
}

/// A constructor parameter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamDef {
    /// Its type.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Default (absent: the parameter is required).
    pub default: Option<toml::Value>,
    /// What it means.
    #[serde(default)]
    pub description: String,
}

/// `[constructors.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstructorDef {
    /// What it makes.
    #[serde(default)]
    pub description: String,
    /// Parameters an instance passes.
    #[serde(default)]
    pub params: BTreeMap<String, ParamDef>,
    /// The process, as `createManagedProcess` takes it.
    pub process: ProcessDef,
}

/// A process definition (createManagedProcess). Strings are templates.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessDef {
    /// One line.
    pub description: Option<String>,
    /// Command (argv) that stays in the foreground.
    pub foreground: Option<Vec<String>>,
    /// Command (argv) that daemonizes and writes `pid_file`.
    pub daemon: Option<Vec<String>>,
    /// nix-processmgmt's form: the executable of both forms.
    pub process: Option<String>,
    /// nix-processmgmt's: arguments of both forms.
    pub args: Option<Vec<String>>,
    /// nix-processmgmt's: the daemon's executable (default `process`).
    pub daemon_process: Option<String>,
    /// nix-processmgmt's: the daemon's arguments (default `args` +
    /// `daemon_extra_args`).
    pub daemon_args: Option<Vec<String>>,
    /// nix-processmgmt's: appended to `args` for the daemon.
    pub daemon_extra_args: Option<Vec<String>>,
    /// nix-processmgmt's: the foreground executable (default `process`).
    pub foreground_process: Option<String>,
    /// nix-processmgmt's: the foreground arguments (default `args` +
    /// `foreground_process_extra_args`).
    pub foreground_process_args: Option<Vec<String>>,
    /// nix-processmgmt's: appended to `args` for the foreground form.
    pub foreground_process_extra_args: Option<Vec<String>>,
    /// nix-processmgmt's: directories whose `bin/` go first on PATH.
    #[serde(default)]
    pub path: Vec<String>,
    /// Pidfile; default `<runtimeDir>/<instance>.pid`, or
    /// `<tmpDir>/<instance>.pid` when the process changes user.
    pub pid_file: Option<String>,
    /// Environment.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Working directory.
    pub directory: Option<String>,
    /// umask (octal text).
    pub umask: Option<String>,
    /// Nice level.
    pub nice: Option<i32>,
    /// User to run as (ignored when user changes are disabled).
    pub user: Option<String>,
    /// Instances that must run first.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Shell run before the first start (as root, or as the profile's user).
    pub initialize: Option<String>,
    /// Users and groups to create (ignored when user changes are disabled).
    #[serde(default)]
    pub credentials: CredentialsDef,
    /// Files rendered from templates.
    #[serde(default)]
    pub config_files: Vec<ConfigFileDef>,
    /// The program reports readiness (sd_notify / READY_FD).
    #[serde(default)]
    pub notify: bool,
    /// Per-manager overrides.
    #[serde(default)]
    pub overrides: BTreeMap<String, OverrideDef>,
}

/// `credentials`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsDef {
    /// Groups: names, or `{ name, gid }` tables.
    #[serde(default)]
    pub groups: Vec<GroupDef>,
    /// Users.
    #[serde(default)]
    pub users: Vec<UserDef>,
}

/// A group to create: its name, or a table with a fixed gid.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum GroupDef {
    /// Just the name.
    Name(String),
    /// Name and gid.
    Table {
        /// Name.
        name: String,
        /// Fixed gid.
        gid: Option<u32>,
    },
}

impl GroupDef {
    /// The group's name and gid.
    pub fn parts(&self) -> (&str, Option<u32>) {
        match self {
            GroupDef::Name(n) => (n, None),
            GroupDef::Table { name, gid } => (name, *gid),
        }
    }
}

/// A user to create.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDef {
    /// Login name.
    pub name: String,
    /// Primary group.
    pub group: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Home directory.
    pub home: Option<String>,
    /// Create the home directory.
    #[serde(default)]
    pub create_home: bool,
    /// Fixed uid.
    pub uid: Option<u32>,
    /// Login shell (default: none, /usr/sbin/nologin).
    pub shell: Option<String>,
}

/// A configuration file from a template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFileDef {
    /// Guest path (a template).
    pub path: String,
    /// Permission bits as octal text (default "0644").
    pub mode: Option<String>,
    /// The template, inline.
    pub template: Option<String>,
    /// Or a template file, relative to the spec file.
    pub template_file: Option<String>,
}

/// `overrides.<manager>`: replaces the given fields for that manager.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideDef {
    /// Replaces `foreground`.
    pub foreground: Option<Vec<String>>,
    /// Replaces `daemon`.
    pub daemon: Option<Vec<String>>,
    /// Replaces `pid_file`.
    pub pid_file: Option<String>,
    /// Merged over `environment`.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Replaces `directory`.
    pub directory: Option<String>,
    /// Replaces `umask`.
    pub umask: Option<String>,
    /// Replaces `nice`.
    pub nice: Option<i32>,
    /// Replaces `user`.
    pub user: Option<String>,
    /// Replaces `notify`.
    pub notify: Option<bool>,
    /// Manager-specific settings (systemd: `Section.Key`; supervisord:
    /// program options; openrc/bsdrc: script variables).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// `[tests]`: Machine API steps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestsDef {
    /// Once, after deploying, before readiness.
    #[serde(default)]
    pub initial_tests: Vec<Spanned<StepDef>>,
    /// Per instance: wait until it is ready.
    #[serde(default)]
    pub readiness: Vec<Spanned<StepDef>>,
    /// Per instance: check it works.
    #[serde(default)]
    pub tests: Vec<Spanned<StepDef>>,
    /// Once, at the end.
    #[serde(default)]
    pub post_tests: Vec<Spanned<StepDef>>,
    /// A test script in Python for the NixOS test driver's `machine`, run
    /// after the steps.
    pub python: Option<Spanned<String>>,
}

/// `forward_port`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardDef {
    /// Host port (0: QEMU picks a free one).
    pub host_port: u16,
    /// Guest port.
    pub guest_port: u16,
}

/// `copy_to_vm` / `copy_from_vm`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyDef {
    /// From.
    pub source: String,
    /// To.
    pub target: String,
}

/// One step: exactly one action key, plus `name`, `if`, `for`, `timeout`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// Shown in reports.
    pub name: Option<String>,
    /// A template expression; the step is dropped when it is false.
    #[serde(rename = "if")]
    pub condition: Option<String>,
    /// `VAR in EXPR`: the step repeats for every item.
    #[serde(rename = "for")]
    pub each: Option<String>,
    /// Seconds (default: `[timeouts]`).
    pub timeout: Option<u64>,
    /// The node it runs on (a template; default: the instance's node for
    /// readiness and tests, else the first node).
    pub node: Option<String>,
    /// Run; must exit 0.
    pub succeed: Option<String>,
    /// Run; must exit non-zero.
    pub fail: Option<String>,
    /// Run; any status.
    pub execute: Option<String>,
    /// Retry until it exits 0.
    pub wait_until_succeeds: Option<String>,
    /// Retry until it exits non-zero.
    pub wait_until_fails: Option<String>,
    /// `true`: take the VM's NIC down.
    pub block: Option<bool>,
    /// `true`: bring the VM's NIC up.
    pub unblock: Option<bool>,
    /// `{ host_port, guest_port }`: a host port on 127.0.0.1 to the guest.
    pub forward_port: Option<ForwardDef>,
    /// File name under the cell's results (PNG; `.png` added).
    pub screenshot: Option<String>,
    /// Text typed on the VM's keyboard.
    pub send_chars: Option<String>,
    /// `true`: power the guest off from inside and wait for QEMU to exit.
    pub shutdown: Option<bool>,
    /// `true`: stop QEMU at once (QMP `quit`).
    pub crash: Option<bool>,
    /// `true`: reboot the guest through its init and wait until it is back.
    pub reboot: Option<bool>,
    /// `true`: boot the VM again on its disk after a shutdown or crash.
    pub start: Option<bool>,
    /// Port (integer or template).
    pub wait_for_open_port: Option<toml::Value>,
    /// Port (integer or template).
    pub wait_for_closed_port: Option<toml::Value>,
    /// Guest path.
    pub wait_for_file: Option<String>,
    /// Regular expression on the serial console.
    pub wait_for_console_text: Option<String>,
    /// Instance name: wait until its manager says it runs.
    pub wait_for_service: Option<String>,
    /// Instance name.
    pub start_service: Option<String>,
    /// Instance name.
    pub stop_service: Option<String>,
    /// Host path (relative to the spec) → guest directory.
    pub copy_to_vm: Option<CopyDef>,
    /// Guest path → directory under the cell's results.
    pub copy_from_vm: Option<CopyDef>,
    /// Seconds.
    pub sleep: Option<f64>,
}
