//! What every Linux guest does the same way (util-linux, shadow,
//! iproute2, /sys): the defaults of [`super::GuestOs`].

use crate::model::{Group, Profile, User};
use crate::shell::quote;

use super::profile::{ShareKind, StoreMount};

/// Where the store's read-only share is mounted under the overlay.
pub const STORE_LOWER: &str = "/run/xdriver-store/ro";

pub(super) fn as_user(profile: &Profile, cmd: &str) -> String {
    let Some(u) = &profile.user else { return cmd.to_string() };
    // From the user's home: the caller's working directory (root's) is not
    // the user's to open, and runsvdir, for one, needs it.
    format!(
        "runuser -u {} -- env HOME={h} XDG_RUNTIME_DIR=/run/user/{} sh -c {}",
        quote(&u.name),
        u.uid,
        quote(&format!("cd {} && {cmd}", quote(&u.home))),
        h = quote(&u.home),
    )
}

/// `useradd` of a system user; `group` is its group flag (` -g NAME` or
/// ` -U`).
fn useradd(u: &User, group: &str) -> String {
    let home = quote(u.home.as_deref().unwrap_or("/nonexistent"));
    let mk = if u.create_home { " -m" } else { " -M" };
    let uid = u.uid.map(|id| format!(" -u {id}")).unwrap_or_default();
    let shell = quote(u.shell.as_deref().unwrap_or("/usr/sbin/nologin"));
    format!("useradd --system{uid}{group}{mk} -d {home} -s {shell} -c {} {}", quote(&u.description), quote(&u.name))
}

/// The first of each name, in order.
fn first_of_each<'a, T: ?Sized>(items: impl IntoIterator<Item = &'a T>, name: impl Fn(&T) -> &str) -> Vec<&'a T> {
    let mut out: Vec<&T> = Vec::new();
    for i in items {
        if !out.iter().any(|o| name(o) == name(i)) {
            out.push(i);
        }
    }
    out
}

/// Every group, then every user, in one shell command line (each round
/// trip to the guest costs a quarter to half a second under TCG), each
/// created unless it exists. Which exist is asked once per database (one
/// `getent` for all the groups, one for all the users, instead of one per
/// name: 0.1 s each under TCG), and a group named after the one user whose
/// primary group it is, without a fixed gid, is made by that user's
/// `useradd -U` (one `groupadd` fewer: 0.36 s each under TCG).
pub(super) fn add_credentials(groups: &[Group], users: &[User]) -> Option<String> {
    let gs = first_of_each(groups, |g: &Group| &g.name);
    let us = first_of_each(users, |u: &User| &u.name);
    if gs.is_empty() && us.is_empty() {
        return None;
    }
    // A group made with its user: no gid, named after the user, and no
    // other user's primary group.
    let with_user = |g: &Group| {
        g.gid.is_none()
            && us.iter().filter(|u| u.group.as_deref() == Some(g.name.as_str())).count() == 1
            && us.iter().any(|u| u.name == g.name && u.group.as_deref() == Some(g.name.as_str()))
    };
    let names = |v: Vec<&str>| v.iter().map(|n| quote(n)).collect::<Vec<_>>().join(" ");
    let mut parts = vec![
        "nl='
'".to_string(),
        format!(
            "g=$(getent group {}; true)",
            names(first_of_each(gs.iter().map(|g| g.name.as_str()).chain(us.iter().filter_map(|u| u.group.as_deref())), |n: &str| n))
        ),
    ];
    if !us.is_empty() {
        parts.push(format!("p=$(getent passwd {}; true)", names(us.iter().map(|u| u.name.as_str()).collect())));
    }
    let unless = |var: &str, name: &str, then: String| format!("case \"$nl${var}\" in *\"$nl\"{}:*) ;; *) {then} ;; esac", quote(name));
    for g in gs.iter().filter(|g| !with_user(g)) {
        let gid = g.gid.map(|id| format!(" -g {id}")).unwrap_or_default();
        parts.push(unless("g", &g.name, format!("groupadd --system{gid} {}", quote(&g.name))));
    }
    for u in &us {
        let create = match u.group.as_deref() {
            // The group is made here unless it exists already (then joined).
            Some(g) if gs.iter().any(|x| x.name == g && with_user(x)) => {
                format!("case \"$nl$g\" in *\"$nl\"{}:*) {} ;; *) {} ;; esac", quote(g), useradd(u, &format!(" -g {}", quote(g))), useradd(u, " -U"))
            }
            Some(g) => useradd(u, &format!(" -g {}", quote(g))),
            None => useradd(u, " -U"),
        };
        parts.push(unless("p", &u.name, create));
    }
    Some(parts.join(" && "))
}

pub(super) fn add_profile_user(profile: &Profile) -> Option<String> {
    let u = profile.user.as_ref()?;
    let n = quote(&u.name);
    // Password `*`: no password logs in, but the account is not locked
    // (`!`), which sshd without PAM (a test's own sshd) would refuse even
    // for a key. Login shell bash where the guest has it, as a NixOS
    // user's is: tests written for NixOS run `su USER -c '… $(type -p ls) …'`
    // (dash's `type` has no -p).
    Some(format!(
        "getent passwd {n} >/dev/null || {{ s=/bin/sh; [ -x /bin/bash ] && s=/bin/bash; useradd -m -u {uid} -g {g} -d {h} -s \"$s\" -p '*' {n}; }}",
        uid = u.uid,
        g = quote(&u.group),
        h = quote(&u.home)
    ))
}

pub(super) fn configure_nic(mac: &str, cidr: &str, cidr6: &str) -> String {
    // The hot-plugged NIC, found by its MAC (it may take a moment to
    // appear); its addresses and link in one `ip` (a program start costs
    // ~0.1 s under TCG).
    format!(
        "n=; i=0; while :; do for d in /sys/class/net/*; do read -r a <\"$d/address\" && [ \"$a\" = {mac} ] && n=${{d##*/}}; done; \
         [ -n \"$n\" ] && break; i=$((i+1)); [ $i -lt 100 ] || {{ echo 'no network interface with MAC {mac} after 10 s' >&2; exit 1; }}; sleep 0.1; done; \
         printf 'addr add %s dev %s\\naddr add %s dev %s nodad\\nlink set %s up\\n' {cidr} \"$n\" {cidr6} \"$n\" \"$n\" | ip -batch -",
        mac = quote(mac),
        cidr = quote(cidr),
        cidr6 = quote(cidr6)
    )
}

pub(super) fn port_open(port: u16) -> String {
    // A connection, as the NixOS driver's `nc -z localhost PORT` makes
    // (a listener that does not accept yet is not open): bash's /dev/tcp,
    // IPv4 then IPv6 loopback; the listening sockets where there is no bash.
    format!(
        "if command -v bash >/dev/null 2>&1; then bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null || bash -c 'exec 3<>/dev/tcp/::1/{port}' 2>/dev/null; \
         else ss -Htln 'sport = :{port}' | grep -q .; fi"
    )
}

pub(super) fn mount_share(tag: &str, guest: &str, writable: bool, kind: ShareKind) -> String {
    let mode = if writable { "rw" } else { "ro" };
    let (fs, opts) = match kind {
        ShareKind::NineP { msize } => ("9p", format!("trans=virtio,version=9p2000.L,msize={msize},cache=loose,{mode}")),
        ShareKind::Virtiofs => ("virtiofs", mode.to_string()),
    };
    let mount = format!("mkdir -p {g} && {{ mountpoint -q {g} || mount -t {fs} -o {opts} {t} {g}; }}", g = quote(guest), t = quote(tag));
    // Also in the overlay's /etc/fstab (nofail), so that after a reboot
    // the share is there before the init starts services from it.
    if guest.chars().any(|c| c.is_whitespace() || c == '\'') || tag.chars().any(|c| !c.is_ascii_alphanumeric()) {
        return mount;
    }
    format!("{mount} && {{ grep -q '^{tag} ' /etc/fstab 2>/dev/null || echo '{tag} {guest} {fs} {opts},nofail 0 0' >> /etc/fstab; }}")
}

/// Waits (up to 20 s by the guest's clock, inside the 30 s a set-up
/// command has) until `devices` virtio devices are bound to the virtiofs
/// driver: ACPI PCI hot-plug announces each to the kernel, which probes it
/// and (udev, or the modprobe here) loads the driver.
pub(super) fn wait_virtiofs_hotplug(devices: usize) -> String {
    format!(
        "modprobe virtiofs 2>/dev/null; end=$(($(date +%s) + 20)); \
         while n=$(ls /sys/bus/virtio/drivers/virtiofs 2>/dev/null | grep -c '^virtio'); [ \"$n\" -lt {devices} ]; do \
         if [ \"$(date +%s)\" -ge \"$end\" ]; then echo \"hot-plugged virtio-fs devices: $n of {devices} bound to the virtiofs driver within 20 s\" >&2; exit 1; fi; \
         sleep 0.1; done"
    )
}

/// Unmounts a share [`mount_share`] mounted and drops its /etc/fstab line.
pub(super) fn forget_share(tag: &str, guest: &str) -> String {
    format!("umount {g} 2>/dev/null; sed -i '/^{t} /d' /etc/fstab; rmdir {g} 2>/dev/null; true", g = quote(guest), t = tag)
}

/// The share read-only at [`STORE_LOWER`], an overlay with a tmpfs upper
/// layer at the store's path.
pub(super) fn mount_store(s: &StoreMount) -> String {
    let g = quote(&s.guest);
    let (fs, opts) = match s.kind {
        ShareKind::Virtiofs => ("virtiofs", "ro".to_string()),
        ShareKind::NineP { msize } => ("9p", format!("trans=virtio,version=9p2000.L,msize={msize},cache=loose,ro")),
    };
    // fstab(5) fields: a space or tab is written in octal.
    let field = |f: &str| f.replace('\\', "\\134").replace(' ', "\\040").replace('\t', "\\011").replace('\n', "\\012");
    let lower = quote(&format!("{} {STORE_LOWER} {fs} {opts} 0 0", field(&s.tag)));
    let upper = quote(&format!(
        "overlay {} overlay lowerdir={STORE_LOWER},upperdir=/run/xdriver-store/upper,workdir=/run/xdriver-store/work 0 0",
        field(&s.guest)
    ));
    // Builtins but for mkdir (where the directories are missing) and one
    // `mount -a` of a small fstab with what is not mounted yet: a program
    // start costs ~0.1 s under TCG, and this runs at every start.
    // `xmounted DIR`: DIR is a mount point in /proc/mounts (as
    // `mountpoint -q`, without starting it).
    format!(
        "xmounted() {{ xr=1; while read -r _ xm _; do [ \"$xm\" = \"$1\" ] && xr=0; done </proc/mounts; return $xr; }}; \
         {{ [ -d {STORE_LOWER} ] && [ -d /run/xdriver-store/upper ] && [ -d /run/xdriver-store/work ] && [ -d {g} ]; }} || \
         mkdir -p {STORE_LOWER} /run/xdriver-store/upper /run/xdriver-store/work {g} || exit 1; \
         : >/run/xdriver-store/fstab || exit 1; \
         xmounted {STORE_LOWER} || printf '%s\\n' {lower} >>/run/xdriver-store/fstab; \
         xmounted {gm} || printf '%s\\n' {upper} >>/run/xdriver-store/fstab; \
         [ ! -s /run/xdriver-store/fstab ] || mount -a -T /run/xdriver-store/fstab || exit 1; \
         if command -v nix-store >/dev/null; then echo guest-has-nix; fi",
        gm = quote(&field(&s.guest)),
    )
}

/// `find_port`: the port's node from the names virtio-serial gives its
/// ports in /sys (empty until the driver is there). On a distribution
/// kernel virtio_console is a module that udev's coldplug loads seconds
/// into the boot, so the first miss loads it here.
pub(super) const BACKDOOR_PORT: &str = r#"find_port() {
  port=
  for d in /sys/class/virtio-ports/*; do
    [ -e "$d/name" ] || continue
    n=; read -r n <"$d/name"
    [ "$n" = org.xdriver.backdoor ] && [ -c "/dev/${d##*/}" ] && port=/dev/${d##*/}
  done
  if [ -z "$port" ] && [ -z "${port_probed-}" ]; then port_probed=1; modprobe -q virtio_console 2>/dev/null; fi
}
"#;

/// coreutils' base64 (busybox's takes the same flags).
pub(super) const BASE64: &str = r#"b64enc() { base64 -w0; }
b64dec() { base64 -d; }
"#;

/// coreutils' stat.
pub(super) const FSIZE: &str = r#"fsize() { stat -c %s "$1"; }
"#;


/// cloud-config for a systemd Linux cloud image: the backdoor as a file
/// and a unit that starts it early at every boot (as xdriver's own images
/// do), enabled and started at once.
pub(super) fn prepare_user_data(backdoor: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(backdoor);
    format!(
        "#cloud-config\n\
         # Written by xdriver: prepares this image once (the prepared disk is\n\
         # cached; cloud-init is disabled afterwards). No default user: the\n\
         # unprivileged profile's user takes uid 1000, as in nix-processmgmt.\n\
         users: []\n\
         # One host key (the one xdriver pins), and no locale to generate:\n\
         # both cost tens of seconds of the first boot under TCG.\n\
         ssh_genkeytypes: [ed25519]\n\
         locale: C.UTF-8\n\
         write_files:\n\
         \x20 - path: {path}\n\
         \x20   permissions: '0755'\n\
         \x20   encoding: b64\n\
         \x20   content: {b64}\n\
         \x20 - path: /etc/systemd/system/xdriver-backdoor.service\n\
         \x20   permissions: '0644'\n\
         \x20   content: |\n\
         \x20     [Unit]\n\
         \x20     Description=xdriver backdoor root shell (virtio-serial port org.xdriver.backdoor)\n\
         \x20     DefaultDependencies=no\n\
         \x20     Conflicts=shutdown.target\n\
         \x20     Before=shutdown.target\n\
         \x20     [Service]\n\
         \x20     ExecStart={path}\n\
         \x20     Restart=always\n\
         \x20     RestartSec=0\n\
         \x20     KillMode=process\n\
         \x20     [Install]\n\
         \x20     WantedBy=sysinit.target\n\
         runcmd:\n\
         \x20 - [systemctl, daemon-reload]\n\
         \x20 - [systemctl, enable, --now, xdriver-backdoor.service]\n",
        path = crate::provision::BACKDOOR_PATH,
    )
}

/// The end of a Linux preparation: cloud-init finished and disabled (so
/// no later boot of the prepared disk runs it again or renews the host
/// keys), key-only root login, the host key printed. Under systemd, the
/// prepared copy also drops what a test VM never uses and pays for at
/// every boot or during a test: generators for disks, encryption,
/// hibernation, boot counting, offline updates and the kernel command
/// line's debugging options (each one a process start while nothing else
/// can start), cloud-init's (it is disabled), and the periodic maintenance
/// timers (apt, man-db, e2scrub, fstrim). The sysv and rc-local generators
/// stay: the image's own services may need them.
pub(super) const PREPARE_FINISH: &str = "cloud-init status --wait >/dev/null 2>&1 || true
touch /etc/cloud/cloud-init.disabled
mkdir -p /etc/ssh/sshd_config.d
printf 'Port 10022\nPidFile /run/xdriver-sshd.pid\nAuthorizedKeysFile /etc/xdriver/authorized_keys .ssh/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\nMaxSessions 64\nMaxStartups 64:30:128\n' > /etc/ssh/sshd_config.d/00-xdriver.conf
test -s /etc/ssh/ssh_host_ed25519_key.pub || ssh-keygen -A >/dev/null
systemctl enable ssh.service >/dev/null 2>&1 || true
# Root's ~/.ssh is the test's to make: Debian's systemd makes one at every
# boot (tmpfiles' provision.conf); an empty one goes.
if [ -d /run/systemd/system ] && [ -e /usr/lib/tmpfiles.d/provision.conf ]; then
  mkdir -p /etc/tmpfiles.d && ln -sf /dev/null /etc/tmpfiles.d/provision.conf
fi
rmdir /root/.ssh 2>/dev/null || true
if [ -d /run/systemd/system ]; then
  mkdir -p /etc/systemd/system-generators
  for g in cloud-init-generator systemd-gpt-auto-generator systemd-cryptsetup-generator systemd-veritysetup-generator systemd-integritysetup-generator systemd-hibernate-resume-generator systemd-bless-boot-generator systemd-system-update-generator systemd-run-generator systemd-debug-generator; do
    ln -sf /dev/null /etc/systemd/system-generators/$g
  done
  systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer dpkg-db-backup.timer >/dev/null 2>&1 || true
fi
sync
cat /etc/ssh/ssh_host_ed25519_key.pub
";

#[cfg(test)]
mod credential_tests {
    use super::*;

    fn user(name: &str, group: Option<&str>) -> User {
        User { name: name.into(), group: group.map(Into::into), description: format!("U {name}"), home: None, create_home: false, uid: None, shell: None }
    }

    /// Runs the command under dash with getent/groupadd/useradd shims that
    /// know the names in `groups` and `passwd` and log every call.
    fn run(cmd: &str, groups: &str, passwd: &str) -> String {
        let dir = std::env::temp_dir().join(format!("xdriver-cred-{}-{}", std::process::id(), groups.len() + passwd.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("log");
        let shim = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("shim");
            std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&p).expect("meta").permissions(), 0o755);
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        };
        shim("getent", &format!("echo \"getent $*\" >>{l}\ndb=$1; shift; for n; do case \"$db\" in group) list='{groups}';; *) list='{passwd}';; esac; for k in $list; do [ \"$k\" = \"$n\" ] && echo \"$n:x:1:\"; done; done; exit 2", l = log.display()));
        shim("groupadd", &format!("echo \"groupadd $*\" >>{}", log.display()));
        shim("useradd", &format!("echo \"useradd $*\" >>{}", log.display()));
        let out = std::process::Command::new("sh").arg("-c").arg(cmd).env("PATH", format!("{}:/usr/bin:/bin", dir.display())).output().expect("sh");
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        text
    }

    #[test]
    fn credentials_are_made_once_each_and_a_users_own_group_with_it() {
        let groups = [Group { name: "web".into(), gid: None }, Group { name: "shared".into(), gid: Some(500) }, Group { name: "web".into(), gid: None }];
        let users = [user("web", Some("web")), user("a", Some("shared")), user("b", Some("shared")), user("old", Some("shared"))];
        let cmd = add_credentials(&groups, &users).expect("a command");
        let log = run(&cmd, "", "old");
        assert_eq!(
            log,
            "getent group web shared\n\
             getent passwd web a b old\n\
             groupadd --system -g 500 shared\n\
             useradd --system -U -M -d /nonexistent -s /usr/sbin/nologin -c U web web\n\
             useradd --system -g shared -M -d /nonexistent -s /usr/sbin/nologin -c U a a\n\
             useradd --system -g shared -M -d /nonexistent -s /usr/sbin/nologin -c U b b\n"
        );
        // The user's own group already there (an image's, or a rerun):
        // joined, not made again.
        let log = run(&cmd, "web shared", "");
        assert!(log.contains("useradd --system -g web -M") && !log.contains("groupadd"), "{log}");
        assert!(add_credentials(&[], &[]).is_none());
    }
}
