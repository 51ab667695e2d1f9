//! FreeBSD 14.4 (the first release with p9fs(4), which shares and the
//! store need; 15.x works the same way) from its BASIC-CLOUDINIT image: pw(8), sockstat(1),
//! su(1), p9fs(4) with a tmpfs union mount for the store, rc.d and
//! daemon(8) (the bsdrc backend), `shutdown -p now`, nuageinit(7) for the
//! NoCloud seed, virtio_console(4) for the backdoor.
//!
//! Written from FreeBSD's manual pages and source (see
//! ../shared/reference/freebsd.md); unverified: no FreeBSD image can be
//! obtained on the machines xdriver is developed on.

use crate::init::Init;
use crate::managers::Manager;
use crate::model::{Group, Profile, User};
use crate::shell::quote;

use super::profile::{Family, Firmware, GuestOs, Images, ShareKind, StoreMount};

/// FreeBSD.
#[derive(Debug)]
pub struct Freebsd;

/// Where the backdoor script is installed.
const BACKDOOR: &str = "/usr/local/libexec/xdriver/backdoor";

/// The rc.d script that keeps the backdoor running (daemon(8) restarts it).
const RC_SCRIPT: &str = "#!/bin/sh
# PROVIDE: xdriver_backdoor
# REQUIRE: FILESYSTEMS
# KEYWORD: shutdown
. /etc/rc.subr
name=xdriver_backdoor
rcvar=xdriver_backdoor_enable
load_rc_config $name
: ${xdriver_backdoor_enable:=NO}
pidfile=/var/run/xdriver_backdoor.pid
command=/usr/sbin/daemon
command_args=\"-f -P ${pidfile} -r -R 1 /bin/sh /usr/local/libexec/xdriver/backdoor\"
run_rc_command \"$1\"
";

/// Where the store's share is mounted under the union layer.
const STORE_UPPER: &str = "/var/run/xdriver-store/upper";

impl GuestOs for Freebsd {
    fn host_packages(&self) -> Option<super::profile::HostPackages> {
        Some(super::profile::HostPackages::Pkg)
    }
    fn name(&self) -> &'static str {
        "freebsd"
    }
    fn summary(&self) -> &'static str {
        "FreeBSD 14.4 from its BASIC-CLOUDINIT image, imported (unverified: no FreeBSD image here)"
    }
    fn family(&self) -> Family {
        Family::Freebsd
    }
    fn images(&self) -> Images {
        Images::Imported {
            init: Init::BSDINIT,
            firmware: Firmware::Bios,
            example_file: "FreeBSD-14.4-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz",
            docs: "docs/freebsd.md",
        }
    }
    fn unverified(&self) -> Option<&'static str> {
        Some("no FreeBSD image can be obtained on the machines xdriver is developed on")
    }
    fn image_for(&self, manager: Manager) -> Result<String, String> {
        super::profile::carried(self.name(), manager, Init::BSDINIT, &["bsdrc"])
    }
    fn has_virtiofs(&self) -> bool {
        // No virtio-fs driver in FreeBSD 14.x/15.x; p9fs(4) is 9p.
        false
    }
    fn has_9p(&self) -> bool {
        true
    }
    fn wait_virtiofs_hotplug(&self, _devices: usize) -> Option<String> {
        None
    }
    fn as_user(&self, profile: &Profile, cmd: &str) -> String {
        let Some(u) = &profile.user else { return cmd.to_string() };
        format!("su -m {} -c {}", quote(&u.name), quote(&format!("HOME={h}; export HOME; cd {h} && {cmd}", h = quote(&u.home))))
    }
    fn configure_nic(&self, mac: &str, cidr: &str, cidr6: &str) -> String {
        // ifconfig(8) lists each interface's `ether` address.
        format!(
            "n=; i=0; while :; do for x in $(ifconfig -l); do ifconfig \"$x\" | grep -q \"ether {mac}\" && n=$x; done; \
             [ -n \"$n\" ] && break; i=$((i+1)); [ $i -lt 100 ] || {{ echo 'no network interface with MAC {mac} after 10 s' >&2; exit 1; }}; sleep 0.1; done; \
             ifconfig \"$n\" inet {cidr} up && ifconfig \"$n\" inet6 {cidr6} alias",
            mac = mac,
            cidr = quote(cidr),
            cidr6 = quote(cidr6)
        )
    }
    fn add_credentials(&self, groups: &[Group], users: &[User]) -> Option<String> {
        let all: Vec<String> = groups.iter().map(pw_group).chain(users.iter().map(pw_user)).map(|c| format!("{{ {c}; }}")).collect();
        (!all.is_empty()).then(|| all.join(" && "))
    }
    fn add_profile_user(&self, profile: &Profile) -> Option<String> {
        let u = profile.user.as_ref()?;
        let n = quote(&u.name);
        Some(format!(
            "pw groupshow {g} >/dev/null 2>&1 || pw groupadd {g}; pw usershow {n} >/dev/null 2>&1 || {{ s=/bin/sh; [ -x /usr/local/bin/bash ] && s=/usr/local/bin/bash; pw useradd -n {n} -u {uid} -g {g} -m -d {h} -s \"$s\"; }}",
            uid = u.uid,
            g = quote(&u.group),
            h = quote(&u.home)
        ))
    }
    fn port_open(&self, port: u16) -> String {
        // sockstat exits 0 either way: test for output (-q: no header).
        format!("sockstat -4 -6 -l -P tcp -p {port} -q | grep -q .")
    }
    fn mount_share(&self, tag: &str, guest: &str, writable: bool, _kind: ShareKind) -> String {
        let mode = if writable { "rw" } else { "ro" };
        format!(
            "kldstat -q -m virtio_p9fs || kldload virtio_p9fs; mkdir -p {g} && {{ mount -t p9fs | grep -q ' on {g} ' || mount -t p9fs -o {mode} {tag} {g}; }}",
            g = quote(guest),
            tag = quote(tag)
        )
    }
    fn forget_share(&self, _tag: &str, guest: &str) -> String {
        // mount_share adds no fstab line here.
        format!("umount {g} 2>/dev/null; rmdir {g} 2>/dev/null; true", g = quote(guest))
    }
    fn mount_store(&self, s: &StoreMount) -> Result<String, String> {
        if s.kind == ShareKind::Virtiofs {
            return Err("FreeBSD has no virtio-fs driver; share the store over 9p (p9fs)".into());
        }
        // p9fs for the share (FreeBSD 14.4+ and 15), then a tmpfs
        // directory union-mounted above it at the store's path. No `set
        // -e`: this is one part of a longer set-up command.
        let (g, tag) = (quote(&s.guest), quote(&s.tag));
        Ok(format!(
            "{{ kldstat -q -m virtio_p9fs || kldload virtio_p9fs; }} && mkdir -p {g} {STORE_UPPER} && \
             {{ mount -t p9fs | grep -q ' on {g} ' || mount -t p9fs -o ro {tag} {g}; }} && \
             {{ mount -t tmpfs | grep -q ' on {STORE_UPPER} ' || mount -t tmpfs tmpfs {STORE_UPPER}; }} && \
             {{ mount -t unionfs | grep -q ' on {g} ' || mount_unionfs {STORE_UPPER} {g}; }} || exit 1; \
             if command -v nix-store >/dev/null; then echo guest-has-nix; fi"
        ))
    }
    fn poweroff_now(&self) -> &'static str {
        // halt(8): -q without shutting processes down, -p power off.
        "sync; halt -q -p"
    }
    fn poweroff(&self, _init: Init) -> String {
        "shutdown -p now".into()
    }
    fn reseed_rng(&self, seed_hex: &str) -> String {
        // Fortuna takes what is written to /dev/random as input.
        format!("printf %s {seed_hex} > /dev/random")
    }
    fn set_clock(&self, epoch: u64) -> String {
        // FreeBSD's date(1) takes the new time in the -f format.
        format!("date -u -f %s {epoch}")
    }
    fn reboot(&self, _init: Init) -> String {
        "shutdown -r now".into()
    }
    fn backdoor_port(&self) -> &'static str {
        // virtio_console(4) makes /dev/ttyV<unit>.<port> and, for a named
        // port, the alias /dev/vtcon/<name> (vtcon_ctrl_port_name_event in
        // sys/dev/virtio/console/virtio_console.c). It is a tty: raw, no
        // echo, so the line discipline passes bytes through unchanged.
        r#"kldstat -q -m virtio_console || kldload virtio_console 2>/dev/null
find_port() {
  port=/dev/vtcon/org.xdriver.backdoor
  [ -c "$port" ] && stty -f "$port" raw -echo 2>/dev/null || port=
}
"#
    }
    fn backdoor_base64(&self) -> &'static str {
        // b64encode(1)/b64decode(1) -r: raw base64 without the uuencode
        // framing lines; line breaks removed so a reply is one line.
        "b64enc() { b64encode -r - | tr -d '\\n'; }\nb64dec() { b64decode -r; }\n"
    }
    fn backdoor_fsize(&self) -> &'static str {
        "fsize() { stat -f %z \"$1\"; }\n"
    }
    fn prepare_user_data(&self, backdoor: &str) -> String {
        // A `#!` script: the one form every nuageinit (14.1+) runs;
        // runcmd and write_files came with 14.4.
        format!(
            "#!/bin/sh\n\
             # Written by xdriver: prepares this image once (the prepared disk is cached).\n\
             set -e\n\
             mkdir -p /usr/local/libexec/xdriver /usr/local/etc/rc.d\n\
             cat > {BACKDOOR} <<'XDRIVER_BACKDOOR_EOF'\n{backdoor}XDRIVER_BACKDOOR_EOF\n\
             chmod 755 {BACKDOOR}\n\
             cat > /usr/local/etc/rc.d/xdriver_backdoor <<'XDRIVER_RC_EOF'\n{RC_SCRIPT}XDRIVER_RC_EOF\n\
             chmod 755 /usr/local/etc/rc.d/xdriver_backdoor\n\
             sysrc xdriver_backdoor_enable=YES\n\
             sysrc -f /boot/loader.conf virtio_console_load=YES virtio_p9fs_load=YES console=comconsole,vidconsole\n\
             sysrc firstboot_freebsd_update_enable=NO || true\n\
             kldload virtio_console 2>/dev/null || true\n\
             service xdriver_backdoor start\n"
        )
    }
    fn prepare_finish(&self) -> &'static str {
        // nuageinit runs at first boot only (/firstboot is gone by now).
        "sysrc sshd_enable=YES >/dev/null\n\
         grep -q '^PermitRootLogin' /etc/ssh/sshd_config || echo 'PermitRootLogin prohibit-password' >> /etc/ssh/sshd_config\n\
         grep -q '^Port 10022' /etc/ssh/sshd_config || echo 'Port 10022' >> /etc/ssh/sshd_config\n\
         grep -q '^AuthorizedKeysFile /etc/xdriver' /etc/ssh/sshd_config || echo 'AuthorizedKeysFile /etc/xdriver/authorized_keys .ssh/authorized_keys' >> /etc/ssh/sshd_config\n\
         test -s /etc/ssh/ssh_host_ed25519_key.pub || ssh-keygen -A >/dev/null\n\
         service sshd restart >/dev/null 2>&1 || service sshd start >/dev/null 2>&1 || true\n\
         sync\n\
         cat /etc/ssh/ssh_host_ed25519_key.pub\n"
    }
}

/// Creates a group unless it exists (pw(8)).
fn pw_group(g: &Group) -> String {
    let n = quote(&g.name);
    let gid = g.gid.map(|id| format!(" -g {id}")).unwrap_or_default();
    format!("pw groupshow {n} >/dev/null 2>&1 || pw groupadd -n {n}{gid}")
}

/// Creates a system user unless it exists (pw(8)).
fn pw_user(u: &User) -> String {
    let n = quote(&u.name);
    let home = quote(u.home.as_deref().unwrap_or("/nonexistent"));
    let group = u.group.as_ref().map(|g| format!(" -g {}", quote(g))).unwrap_or_default();
    let mk = if u.create_home { " -m" } else { "" };
    let uid = u.uid.map(|id| format!(" -u {id}")).unwrap_or_default();
    let shell = quote(u.shell.as_deref().unwrap_or("/usr/sbin/nologin"));
    format!("pw usershow {n} >/dev/null 2>&1 || pw useradd -n {n}{uid}{group}{mk} -d {home} -s {shell} -c {}", quote(&u.description))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::backdoor_script;

    #[test]
    fn the_nuageinit_script_and_the_rc_script_parse_and_install_the_backdoor() {
        let user_data = Freebsd.prepare_user_data(&backdoor_script(&Freebsd));
        assert!(user_data.starts_with("#!/bin/sh\n"), "nuageinit runs a #! user-data as a script");
        for (what, text) in [("user-data", user_data.as_str()), ("rc.d script", RC_SCRIPT), ("finish", Freebsd.prepare_finish())] {
            let out = std::process::Command::new("dash").args(["-n", "-c", text]).output().expect("dash");
            assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The heredocs end where they should: the whole backdoor and the
        // whole rc.d script are inside them.
        assert!(user_data.contains("/dev/vtcon/org.xdriver.backdoor"), "{user_data}");
        assert!(user_data.contains("\nXDRIVER_BACKDOOR_EOF\n") && user_data.contains("\nXDRIVER_RC_EOF\n"));
        assert!(user_data.contains("sysrc xdriver_backdoor_enable=YES") && user_data.contains("virtio_console_load=YES"));
        assert!(RC_SCRIPT.contains("command_args=\"-f -P ${pidfile} -r -R 1 /bin/sh /usr/local/libexec/xdriver/backdoor\""));
        assert!(Freebsd.prepare_finish().trim_end().ends_with("cat /etc/ssh/ssh_host_ed25519_key.pub"));
    }
}
