//! The guest-OS abstraction: everything xdriver does inside a guest that
//! differs per OS goes through [`GuestOs`], and every OS xdriver knows is
//! one entry of [`REGISTRY`] (one file in this folder each).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::init::Init;
use crate::managers::Manager;
use crate::model::{Group, Profile, User};

use super::{debian12, debian12_cloud, debian12_nix, debian13, debian13_cloud, debian14, freebsd, linux, nixos};

/// The kernel family of a guest: which userland commands exist there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Linux (util-linux, shadow, iproute2).
    Linux,
    /// FreeBSD (pw, sockstat, rc.subr).
    Freebsd,
}

impl Family {
    /// The family's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::Linux => "Linux",
            Family::Freebsd => "FreeBSD",
        }
    }
}

/// How packages for an imported image are fetched by the host and
/// installed in the guest while it is prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPackages {
    /// Debian's `.deb` files: resolved and downloaded by the host's apt
    /// against the guest's own sources and package database, installed
    /// with dpkg.
    Deb,
    /// FreeBSD's `.pkg` files: the host reads the repository's index for
    /// the guest's ABI and fetches the closure, installed with `pkg add`
    /// (*unverified*: no FreeBSD image or repository can be reached here).
    Pkg,
}

/// The firmware an imported image's own boot loader is started by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS (QEMU's default PC firmware).
    Bios,
    /// UEFI: OVMF from Debian's `ovmf` package.
    Uefi,
}

impl Firmware {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bios" => Ok(Firmware::Bios),
            "uefi" => Ok(Firmware::Uefi),
            _ => Err(format!("unknown firmware `{s}` (expected bios or uefi)")),
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an OS's images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Images {
    /// Built by xdriver from a recipe in `images/recipes/` (one image per
    /// init system, booted by direct kernel boot).
    Built {
        /// Recipe name.
        recipe: &'static str,
    },
    /// Imported from the disk image the vendor ships (`xdriver image
    /// import`), booted by its own boot loader and prepared on first use
    /// with a NoCloud seed.
    Imported {
        /// The image's init system.
        init: Init,
        /// The firmware used when the import names none.
        firmware: Firmware,
        /// A file name the vendor publishes, for the hint in errors.
        example_file: &'static str,
        /// The page in docs/ that says how to get one.
        docs: &'static str,
    },
}

/// A shared directory's file system inside the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKind {
    /// virtio-fs.
    Virtiofs,
    /// 9p over virtio.
    NineP {
        /// The 9p `msize` (Linux's mount option).
        msize: u32,
    },
}

/// The store as the guest mounts it: a read-only share under `tag`, with
/// a writable layer over it at `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreMount {
    /// The device's mount tag.
    pub tag: String,
    /// The store's path in the guest (e.g. `/nix/store`).
    pub guest: String,
    /// The transport.
    pub kind: ShareKind,
}

/// What one guest OS does differently. Methods with a body are what Linux
/// guests do (util-linux, shadow, iproute2, a /sys with virtio-ports); an
/// OS of another family overrides every one of them.
pub trait GuestOs: Sync + Send + fmt::Debug {
    /// The name in flags, specs, cell ids and image manifests.
    fn name(&self) -> &'static str;
    /// One line for `--help` and the docs.
    fn summary(&self) -> &'static str;
    /// The kernel family.
    fn family(&self) -> Family {
        Family::Linux
    }
    /// Where images come from.
    fn images(&self) -> Images;
    /// Versions of what the OS ships that decide what can run on it
    /// (`("openrc", "0.56")`, `("systemd", "257")`, …): per-release facts,
    /// kept in the release's own file. Empty where not known (an imported
    /// image of no fixed release).
    fn versions(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// The version of `component` in [`GuestOs::versions`], if known.
    fn version_of(&self, component: &str) -> Option<&'static str> {
        self.versions().iter().find(|(c, _)| *c == component).map(|(_, v)| *v)
    }
    /// Why this OS has not been run by xdriver's own tests, if it has not.
    fn unverified(&self) -> Option<&'static str> {
        None
    }
    /// The image a cell of `manager` boots, or why the manager cannot run
    /// on this OS at all.
    fn image_for(&self, manager: Manager) -> Result<String, String>;
    /// How a spec's `[guest]` packages reach an imported image of this OS,
    /// if they can (built images take them at build time).
    fn host_packages(&self) -> Option<HostPackages> {
        None
    }
    /// Whether the guest has Nix (`nix-store`) to register a shared store in.
    fn has_nix(&self) -> bool {
        false
    }
    /// Whether the guest kernel has virtio-fs.
    fn has_virtiofs(&self) -> bool {
        true
    }
    /// Whether the guest kernel has 9p over virtio (shares use virtio-fs
    /// where it has not).
    fn has_9p(&self) -> bool {
        true
    }
    /// A command that waits until `devices` virtio-fs devices hot-plugged
    /// into the running guest have their driver (a VM restored from a RAM
    /// snapshot gets its virtio-fs devices that way: QEMU 7.2 cannot
    /// migrate them), or None where the guest cannot take them hot-plugged
    /// (such VMs boot cold).
    fn wait_virtiofs_hotplug(&self, devices: usize) -> Option<String> {
        Some(linux::wait_virtiofs_hotplug(devices))
    }
    /// `cmd` (a shell command line) run as the profile's user, with its
    /// HOME (and its XDG_RUNTIME_DIR where there is one); unchanged when
    /// privileged.
    fn as_user(&self, profile: &Profile, cmd: &str) -> String {
        linux::as_user(profile, cmd)
    }
    /// Creates every group, then every user, unless they exist: one shell
    /// command line (None when there are none).
    fn add_credentials(&self, groups: &[Group], users: &[User]) -> Option<String> {
        linux::add_credentials(groups, users)
    }
    /// Creates the unprivileged profile's login user (uid fixed by the profile).
    fn add_profile_user(&self, profile: &Profile) -> Option<String> {
        linux::add_profile_user(profile)
    }
    /// Gives the NIC with `mac` (just hot-plugged) the addresses `cidr`
    /// (IPv4) and `cidr6` (IPv6) and brings it up.
    fn configure_nic(&self, mac: &str, cidr: &str, cidr6: &str) -> String {
        linux::configure_nic(mac, cidr, cidr6)
    }
    /// Exits 0 when something listens on TCP `port` (any local address).
    fn port_open(&self, port: u16) -> String {
        linux::port_open(port)
    }
    /// Mounts the share `tag` (9p or virtio-fs) at `guest` (idempotent).
    fn mount_share(&self, tag: &str, guest: &str, writable: bool, kind: ShareKind) -> String {
        linux::mount_share(tag, guest, writable, kind)
    }
    /// Undoes [`GuestOs::mount_share`] for good: unmounted, and not
    /// mounted again at the next boot (a share of one boot only).
    fn forget_share(&self, tag: &str, guest: &str) -> String {
        linux::forget_share(tag, guest)
    }
    /// Mounts the store share read-only with a writable layer over it
    /// (idempotent); prints `guest-has-nix` when the guest has `nix-store`.
    fn mount_store(&self, s: &StoreMount) -> Result<String, String> {
        Ok(linux::mount_store(s))
    }
    /// The command that powers the guest off under `init`; it returns at
    /// once and the caller waits for QEMU to exit.
    fn poweroff(&self, init: Init) -> String {
        init.poweroff_command().to_string()
    }
    /// The command that reboots the guest (returns before it goes down).
    fn reboot(&self, init: Init) -> String {
        init.reboot_command().to_string()
    }
    /// Shell defining `find_port`, which sets `$port` to the device node of
    /// the virtio-serial port named `org.xdriver.backdoor` (empty if there
    /// is none yet), for the POSIX backdoor script; the script calls it
    /// every 0.1 s until the port is there (up to 30 s). It may load the
    /// port's driver on a miss.
    fn backdoor_port(&self) -> &'static str {
        linux::BACKDOOR_PORT
    }
    /// Shell defining `b64enc` (stdin to one line of base64, no newline)
    /// and `b64dec` (base64 on stdin to bytes) for the backdoor script.
    fn backdoor_base64(&self) -> &'static str {
        linux::BASE64
    }
    /// Shell run first in the backdoor's OS part, e.g. to extend `PATH`
    /// (empty by default).
    fn backdoor_env(&self) -> &'static str {
        ""
    }
    /// Shell defining `fsize FILE` (its size in bytes) for the backdoor.
    fn backdoor_fsize(&self) -> &'static str {
        linux::FSIZE
    }
    /// The NoCloud `user-data` that prepares an imported image once (read
    /// by cloud-init on Linux, nuageinit on FreeBSD): installs `backdoor`
    /// (the script, see `crate::backdoor_script`) and has the image's init
    /// start it at every boot.
    fn prepare_user_data(&self, backdoor: &str) -> String {
        linux::prepare_user_data(backdoor)
    }
    /// Run over the backdoor at the end of the preparation, as root: waits
    /// for the first-boot agent to finish, keeps it from running again,
    /// lets root in over SSH with a key only, and prints the SSH host key
    /// (the ed25519 public key line) as its last line of output.
    fn prepare_finish(&self) -> &'static str {
        linux::PREPARE_FINISH
    }
    /// Powers the guest off at once, without stopping its services, once
    /// everything written is on disk (the end of a preparation, where
    /// nothing runs that needs stopping); returns at once.
    fn poweroff_now(&self) -> &'static str {
        // sysrq `o`: the kernel powers off straight away (after sync, the
        // ext4 journal holds everything; QEMU writes its disk on exit).
        "sync; echo o > /proc/sysrq-trigger"
    }
    /// Makes `key` (an OpenSSH public key line) the only key in
    /// /etc/xdriver/authorized_keys, the file xdriver's sshd reads for root
    /// before root's own ~/.ssh (which stays the test's).
    fn authorize_ssh_key(&self, key: &str) -> String {
        format!(
            "umask 077; {{ [ -d /etc/xdriver ] || {{ mkdir -p /etc/xdriver && chmod 755 /etc/xdriver; }}; }} && printf '%s\\n' {} > /etc/xdriver/authorized_keys",
            crate::shell::quote(key)
        )
    }
    /// Sets the clock to `epoch` (seconds since 1970, UTC): a guest
    /// restored from a RAM snapshot wakes up at the time of the save.
    fn set_clock(&self, epoch: u64) -> String {
        format!("date -u -s @{epoch}")
    }
    /// Mixes `seed_hex` (random bytes from the host, in hex) into the
    /// kernel's RNG, with the shell's own printf (no program to start):
    /// every VM restored from one RAM snapshot starts with the same RNG
    /// state. (Linux also reseeds by itself when the VM generation ID
    /// changes, which QEMU's `vmgenid` device does on every restore; a
    /// write to /dev/urandom only mixes into the input pool.)
    fn reseed_rng(&self, seed_hex: &str) -> String {
        format!("printf %s {seed_hex} > /dev/urandom")
    }
}

/// `image` if `manager` is one the image `carries` (its `init` as PID 1
/// or one xdriver brings up), else why not.
pub(super) fn carried(image: &str, manager: Manager, init: Init, carries: &[&str]) -> Result<String, String> {
    match manager.needs_init() {
        Some(needed) if needed != init => Err(format!("{manager} needs {needed} as the init; this image's is {init}")),
        _ if !carries.contains(&manager.name()) => Err(format!("{manager} is not in this image (it carries {})", carries.join(", "))),
        _ => Ok(image.to_string()),
    }
}

/// Every OS xdriver knows, in matrix order.
pub static REGISTRY: &[&dyn GuestOs] = &[
    &debian12::Debian12,
    &debian13::Debian13,
    &debian14::Debian14,
    &debian12_nix::Debian12Nix,
    &debian12_cloud::Debian12Cloud,
    &debian13_cloud::Debian13Cloud,
    &freebsd::Freebsd,
    &nixos::Nixos,
];

/// A guest OS: a handle on its [`REGISTRY`] entry. Compared, ordered and
/// hashed by registry position.
#[derive(Clone, Copy)]
pub struct Os(&'static dyn GuestOs);

/// An OS name that is not in the [`REGISTRY`].
#[derive(Debug, thiserror::Error)]
#[error("unknown OS `{0}` (expected one of: {list})", list = Os::names().join(", "))]
pub struct UnknownOs(pub String);

impl Os {
    /// Debian 12 built from Debian's packages (the default OS).
    pub const DEBIAN_12: Os = Os(&debian12::Debian12);
    /// Debian 13 built from Debian's packages.
    pub const DEBIAN_13: Os = Os(&debian13::Debian13);
    /// Debian 14 (testing) built from Debian's packages.
    pub const DEBIAN_14: Os = Os(&debian14::Debian14);
    /// Debian 12 with Debian's Nix.
    pub const DEBIAN_12_NIX: Os = Os(&debian12_nix::Debian12Nix);
    /// A Debian 12 cloud image, imported.
    pub const DEBIAN_12_CLOUD: Os = Os(&debian12_cloud::Debian12Cloud);
    /// A Debian 13 cloud image, imported.
    pub const DEBIAN_13_CLOUD: Os = Os(&debian13_cloud::Debian13Cloud);
    /// FreeBSD, imported.
    pub const FREEBSD: Os = Os(&freebsd::Freebsd);
    /// NixOS, imported.
    pub const NIXOS: Os = Os(&nixos::Nixos);

    /// Every OS, in matrix order.
    pub fn all() -> impl Iterator<Item = Os> {
        REGISTRY.iter().map(|o| Os(*o))
    }

    /// Every OS name, in matrix order.
    pub fn names() -> Vec<&'static str> {
        REGISTRY.iter().map(|o| o.name()).collect()
    }

    /// The OS behind the handle.
    pub fn profile(self) -> &'static dyn GuestOs {
        self.0
    }

    /// Name as in flags and specs.
    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

crate::handle::registry_handle!(Os, GuestOs, REGISTRY);

impl FromStr for Os {
    type Err = UnknownOs;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Os::all().find(|o| o.name() == s).ok_or_else(|| UnknownOs(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let names = Os::names();
        let set: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(set.len(), names.len(), "duplicate OS names: {names:?}");
        for o in Os::all() {
            assert_eq!(o.name().parse::<Os>().expect("own name parses"), o);
        }
        let e = "plan9".parse::<Os>().expect_err("unknown");
        assert!(e.to_string().contains("debian-12, debian-13, debian-14, debian-12-nix, debian-12-cloud, debian-13-cloud, freebsd, nixos"), "{e}");
    }

    #[test]
    fn every_manager_has_an_image_or_a_reason_on_every_os() {
        for o in Os::all() {
            for m in Manager::all() {
                match o.image_for(m) {
                    Ok(img) => assert!(img.starts_with(o.name()), "{o}/{m}: image {img}"),
                    Err(why) => assert!(!why.is_empty(), "{o}/{m}"),
                }
            }
        }
        assert_eq!(Os::FREEBSD.image_for(Manager::BSDRC).expect("bsdrc runs on FreeBSD"), "freebsd");
        assert!(Os::DEBIAN_12.image_for(Manager::BSDRC).is_err());
        assert_eq!(Os::DEBIAN_12_NIX.image_for(Manager::S6).expect("s6"), "debian-12-nix-sysvinit");
    }

    #[test]
    fn openrc_runs_unprivileged_only_where_the_release_has_user_services() {
        for (os, version) in [(Os::DEBIAN_12, "0.45"), (Os::DEBIAN_13, "0.56")] {
            let why = Manager::OPENRC.unprivileged_support(&*os).expect_err("no user services");
            assert!(why.contains(&format!("OpenRC {version} ({os}) has no user services")), "{why}");
        }
        assert!(Manager::OPENRC.unprivileged_support(&*Os::DEBIAN_14).is_ok(), "OpenRC 0.64");
        assert!(Manager::SYSTEMD.unprivileged_support(&*Os::DEBIAN_12).is_ok());
        assert_eq!(Os::DEBIAN_14.image_for(Manager::OPENRC).expect("built"), "debian-14-openrc");
    }

    #[test]
    fn only_imported_oses_name_a_firmware() {
        assert!(matches!(Os::DEBIAN_12.images(), Images::Built { recipe: "debian-12" }));
        assert!(matches!(Os::FREEBSD.images(), Images::Imported { firmware: Firmware::Bios, .. }));
        assert!(Os::FREEBSD.unverified().is_some() && Os::NIXOS.unverified().is_some());
        assert!(Os::DEBIAN_12_CLOUD.unverified().is_none());
    }
}
