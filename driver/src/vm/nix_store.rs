//! The shared store: a host directory (by default `/nix/store`) that
//! appears read-only in the guest at the same path, with a tmpfs-backed
//! overlay on top so the guest can add paths of its own — what the NixOS
//! test driver does with the host's /nix/store.
//!
//! It travels over virtiofs (the Rust virtiofsd, one per VM, started by
//! xdriver as `nobody` when xdriver runs as root, its socket in the VM's run
//! directory, gone with the VM) or over 9p with a large `msize`. In the
//! guest the share is mounted at `/run/xdriver-store/ro`, the overlay's
//! upper and work directories live in `/run` (a tmpfs), and the overlay is
//! mounted at the store's own path.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::vm::qemu::NINEP_MSIZE;
use xdriver_guests::{ShareKind, StoreMount};

/// The mount tag of the store share.
pub const STORE_TAG: &str = "xdstore";

/// Where the guest mounts the read-only share under the overlay.
pub use xdriver_guests::STORE_LOWER as GUEST_LOWER;

/// How the store reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShareFs {
    /// virtio-fs through a virtiofsd per VM.
    Virtiofs,
    /// 9p (virtio-9p, QEMU's own server).
    #[value(name = "9p")]
    NineP,
}

impl ShareFs {
    /// Name as in flags.
    pub fn name(self) -> &'static str {
        match self {
            ShareFs::Virtiofs => "virtiofs",
            ShareFs::NineP => "9p",
        }
    }
}

/// `--share-fs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ShareFsChoice {
    /// virtiofs when a virtiofsd is installed and the guest has virtio-fs,
    /// else 9p.
    #[default]
    Auto,
    /// virtiofs (an error if no virtiofsd is installed).
    Virtiofs,
    /// 9p.
    #[value(name = "9p")]
    NineP,
}

/// A store shared into one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreShare {
    /// Host directory.
    pub host: PathBuf,
    /// Guest path of the overlay (the store's path).
    pub guest: String,
    /// Transport.
    pub fs: ShareFs,
    /// The virtiofsd binary (virtiofs only).
    pub virtiofsd: Option<PathBuf>,
    /// The guest OS (it says how the share and the layer over it mount).
    pub os: xdriver_guests::Os,
}

/// The store used when none is named: `/nix/store` when it exists.
pub fn default_store() -> Option<PathBuf> {
    let p = Path::new("/nix/store");
    p.is_dir().then(|| p.to_path_buf())
}

/// What the flags asked for: which store, and how to share it.
#[derive(Debug, Clone)]
pub struct StorePlan {
    /// Host directory (canonical).
    pub host: PathBuf,
    /// `--share-fs`.
    pub choice: ShareFsChoice,
    /// The virtiofsd found (unless 9p was asked for).
    pub virtiofsd: Option<PathBuf>,
    /// VMs start from RAM snapshots: `auto` then takes 9p for guests that
    /// have it (a RAM snapshot can hold an unmounted 9p device; QEMU 7.2
    /// cannot migrate virtio-fs).
    pub snapshots: bool,
}

impl StorePlan {
    /// From `--store`, `--no-store` and `--share-fs`: `None` when no store
    /// is shared (`--no-store`, or no `--store` and no /nix/store).
    pub fn from_flags(store: Option<&Path>, no_store: bool, choice: ShareFsChoice) -> Result<Option<StorePlan>, String> {
        if no_store {
            return Ok(None);
        }
        let Some(host) = store.map(Path::to_path_buf).or_else(default_store) else {
            if choice != ShareFsChoice::Auto {
                return Err("--share-fs: there is no store to share (no /nix/store on this host; name one with --store DIR)".into());
            }
            return Ok(None);
        };
        let host = std::fs::canonicalize(&host).map_err(|e| format!("--store {}: {e}", host.display()))?;
        if !host.is_dir() {
            return Err(format!("--store {}: not a directory", host.display()));
        }
        let virtiofsd = if choice == ShareFsChoice::NineP { None } else { find_virtiofsd() };
        let plan = StorePlan { host, choice, virtiofsd, snapshots: false };
        // An explicit virtiofs without a virtiofsd is a usage error now,
        // not a failure in every cell later.
        if choice == ShareFsChoice::Virtiofs {
            decide(choice, true, plan.virtiofsd.as_deref())?;
        }
        Ok(Some(plan))
    }

    /// The share for a guest OS, and why that transport.
    pub fn share_for(&self, os: xdriver_guests::Os) -> Result<(StoreShare, String), String> {
        let (fs, why) = if self.choice == ShareFsChoice::Auto && self.snapshots && os.has_9p() {
            (ShareFs::NineP, "auto: 9p, which a RAM snapshot can hold (QEMU 7.2 cannot migrate virtio-fs; --cold boots with virtio-fs)".to_string())
        } else {
            decide(self.choice, os.has_virtiofs(), self.virtiofsd.as_deref())?
        };
        if fs == ShareFs::NineP && !os.has_9p() {
            return Err(format!(
                "{os} guests have no 9p, so the store needs virtio-fs: install virtiofsd (`cargo install virtiofsd`, or set XDRIVER_VIRTIOFSD) and do not pass --share-fs 9p"
            ));
        }
        let guest = self.host.to_string_lossy().into_owned();
        let virtiofsd = if fs == ShareFs::Virtiofs { self.virtiofsd.clone() } else { None };
        Ok((StoreShare { host: self.host.clone(), guest, fs, virtiofsd, os }, why))
    }
}

/// Finds the Rust virtiofsd: `$XDRIVER_VIRTIOFSD`, then `virtiofsd` on
/// `PATH`, in `~/.cargo/bin` and in `/usr/libexec`. QEMU 7.2's older C
/// virtiofsd (`/usr/lib/qemu/virtiofsd`) takes other options and is not
/// used.
pub fn find_virtiofsd() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("XDRIVER_VIRTIOFSD") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("virtiofsd")));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/virtiofsd"));
    }
    candidates.push(PathBuf::from("/usr/libexec/virtiofsd"));
    candidates.into_iter().find(|c| is_rust_virtiofsd(c))
}

fn is_rust_virtiofsd(p: &Path) -> bool {
    if !p.is_file() {
        return false;
    }
    std::process::Command::new(p)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--shared-dir"))
        .unwrap_or(false)
}

/// Picks the transport for a guest; returns it with the reason, or why the
/// requested one cannot be used.
pub fn decide(choice: ShareFsChoice, guest_has_virtiofs: bool, virtiofsd: Option<&Path>) -> Result<(ShareFs, String), String> {
    match choice {
        ShareFsChoice::NineP => Ok((ShareFs::NineP, "--share-fs 9p".into())),
        ShareFsChoice::Virtiofs => {
            if !guest_has_virtiofs {
                return Err("--share-fs virtiofs: this guest has no virtio-fs driver (FreeBSD has only 9p: p9fs)".into());
            }
            match virtiofsd {
                Some(p) => Ok((ShareFs::Virtiofs, format!("--share-fs virtiofs ({})", p.display()))),
                None => Err("--share-fs virtiofs: no virtiofsd found (install it with `cargo install virtiofsd`, or set XDRIVER_VIRTIOFSD)".into()),
            }
        }
        ShareFsChoice::Auto => match (guest_has_virtiofs, virtiofsd) {
            (false, _) => Ok((ShareFs::NineP, "auto: the guest has only 9p".into())),
            (true, Some(p)) => Ok((ShareFs::Virtiofs, format!("auto: virtiofs is the faster share and {} is installed", p.display()))),
            (true, None) => Ok((ShareFs::NineP, "auto: no virtiofsd found (`cargo install virtiofsd`), so 9p".into())),
        },
    }
}

/// The guest shell that mounts the share read-only and a writable layer
/// over it at the store's path (the OS's own way; idempotent). Its output
/// says `guest-has-nix` when the guest has `nix-store`.
pub fn guest_mount_script(s: &StoreShare) -> Result<String, String> {
    let kind = match s.fs {
        ShareFs::Virtiofs => ShareKind::Virtiofs,
        ShareFs::NineP => ShareKind::NineP { msize: NINEP_MSIZE },
    };
    s.os.mount_store(&StoreMount { tag: STORE_TAG.into(), guest: s.guest.clone(), kind })
}

/// The host's Nix database entries for every valid path in its store
/// (`nix-store --dump-db`), for the guest's `nix-store --load-db`; `None`
/// when the shared store is not the host's Nix store or the host has no
/// Nix.
pub fn host_nix_db(share: &StoreShare) -> Option<Vec<u8>> {
    if share.host != Path::new("/nix/store") {
        return None;
    }
    let out = std::process::Command::new("nix-store").arg("--dump-db").stdin(Stdio::null()).output().ok()?;
    if !out.status.success() {
        tracing::warn!(stderr = %String::from_utf8_lossy(&out.stderr).trim(), "nix-store --dump-db failed; the guest's Nix database stays empty");
        return None;
    }
    Some(out.stdout)
}

/// A running virtiofsd. Killed (by PID) when dropped; it also exits by
/// itself when QEMU goes away.
#[derive(Debug)]
pub struct Virtiofsd {
    child: tokio::process::Child,
    /// The vhost-user socket QEMU connects to.
    pub socket: PathBuf,
    /// Who it runs as, for the record.
    pub user: &'static str,
}

impl Virtiofsd {
    /// Starts virtiofsd for `share` with its socket and log in `dir`,
    /// and waits for the socket. When xdriver runs as root, virtiofsd runs
    /// as `nobody` in its own namespaces (read-only sharing needs no
    /// privilege); otherwise as the current user.
    pub async fn start(binary: &Path, share: &Path, dir: &Path) -> Result<Virtiofsd, String> {
        Virtiofsd::start_named(binary, share, dir, "virtiofsd", false, true).await
    }

    /// As [`Virtiofsd::start`], with the socket and log named after `name`
    /// (several per VM); `writable` serves the directory read-write;
    /// `as_nobody` (when xdriver is root) drops to `nobody`, which a user's
    /// share under a private home directory could not be read as, so
    /// shares keep the current user.
    pub async fn start_named(binary: &Path, share: &Path, dir: &Path, name: &str, writable: bool, as_nobody: bool) -> Result<Virtiofsd, String> {
        // xdriver binds the socket in the run directory and hands virtiofsd
        // the listening descriptor (--fd), so virtiofsd needs no access to
        // the run directory.
        let socket = dir.join(format!("{name}.sock"));
        let listener = std::os::unix::net::UnixListener::bind(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
        let sock_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0 && as_nobody;
        // As nobody, the binary's own path may be out of reach (e.g.
        // ~/.cargo/bin under root's 0700 home): open it here and execute
        // the open file through /proc/self/fd, as fexecve does.
        let exe = std::fs::File::open(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
        let exe_fd = std::os::fd::AsRawFd::as_raw_fd(&exe);
        let program = if root { PathBuf::from(format!("/proc/self/fd/{exe_fd}")) } else { binary.to_path_buf() };
        let mut cmd = tokio::process::Command::new(&program);
        cmd.arg0("virtiofsd")
            .arg(format!("--fd={sock_fd}"))
            .arg("--shared-dir")
            .arg(share)
            .args(if writable { &["--sandbox", "namespace", "--cache", "auto", "--log-level", "warn"][..] } else { &["--readonly", "--sandbox", "namespace", "--cache", "auto", "--log-level", "warn"][..] })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .process_group(0);
        let user = if root {
            cmd.uid(65534).gid(65534);
            "nobody"
        } else {
            "the current user"
        };
        // SAFETY: only async-signal-safe calls between fork and exec. (std
        // drops the supplementary groups itself when it changes the uid.)
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // These descriptors must survive the exec.
                libc::fcntl(sock_fd, libc::F_SETFD, 0);
                if root {
                    libc::fcntl(exe_fd, libc::F_SETFD, 0);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", binary.display()))?;
        drop(exe);
        drop(listener);
        // Give it a moment to fail on bad options or an unreadable directory.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(Some(st)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("virtiofsd exited ({st}) at once: {}", log.trim()));
        }
        Ok(Virtiofsd { child, socket, user })
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Ends it (SIGKILL by PID) and reaps it.
    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(fs: ShareFs) -> StoreShare {
        StoreShare { host: "/nix/store".into(), guest: "/nix/store".into(), fs, virtiofsd: None, os: xdriver_guests::Os::DEBIAN_12 }
    }

    #[test]
    fn auto_prefers_virtiofs_and_says_why() {
        let vfsd = Path::new("/usr/bin/virtiofsd");
        assert_eq!(decide(ShareFsChoice::Auto, true, Some(vfsd)).expect("a choice").0, ShareFs::Virtiofs);
        let (fs, why) = decide(ShareFsChoice::Auto, true, None).expect("ok");
        assert_eq!(fs, ShareFs::NineP);
        assert!(why.contains("no virtiofsd"), "{why}");
        let (fs, why) = decide(ShareFsChoice::Auto, false, Some(vfsd)).expect("ok");
        assert_eq!(fs, ShareFs::NineP);
        assert!(why.contains("only 9p"), "{why}");
        assert!(decide(ShareFsChoice::Virtiofs, true, None).expect_err("an error").contains("cargo install virtiofsd"));
        assert!(decide(ShareFsChoice::Virtiofs, false, Some(vfsd)).expect_err("an error").contains("FreeBSD"));
        assert_eq!(decide(ShareFsChoice::NineP, true, Some(vfsd)).expect("a choice").0, ShareFs::NineP);
    }

    #[test]
    fn mount_scripts_put_a_writable_overlay_over_a_read_only_share() {
        let v = guest_mount_script(&share(ShareFs::Virtiofs)).expect("Linux mounts virtiofs");
        // One `mount -a` of an fstab of what is not mounted yet: the share
        // read-only, then the overlay on it.
        assert!(v.contains("'xdstore /run/xdriver-store/ro virtiofs ro 0 0'"), "{v}");
        assert!(
            v.contains("'overlay /nix/store overlay lowerdir=/run/xdriver-store/ro,upperdir=/run/xdriver-store/upper,workdir=/run/xdriver-store/work 0 0'"),
            "{v}"
        );
        assert!(v.find("virtiofs ro 0 0").expect("share") < v.find("overlay /nix/store").expect("overlay"), "{v}");
        assert!(v.contains("mount -a -T /run/xdriver-store/fstab") && !v.contains("mountpoint"), "{v}");
        let n = guest_mount_script(&share(ShareFs::NineP)).expect("Linux mounts 9p");
        assert!(n.contains(&format!("'xdstore /run/xdriver-store/ro 9p trans=virtio,version=9p2000.L,msize={NINEP_MSIZE},cache=loose,ro 0 0'")), "{n}");
        // FreeBSD: p9fs and a tmpfs union-mounted above it.
        let f = guest_mount_script(&StoreShare { os: xdriver_guests::Os::FREEBSD, ..share(ShareFs::NineP) }).expect("p9fs");
        assert!(f.contains("mount -t p9fs -o ro xdstore /nix/store"), "{f}");
        assert!(f.contains("mount_unionfs /var/run/xdriver-store/upper /nix/store"), "{f}");
        assert!(!f.contains("overlay") && !f.contains("mountpoint"), "Linux-only commands in {f}");
        let e = guest_mount_script(&StoreShare { os: xdriver_guests::Os::FREEBSD, ..share(ShareFs::Virtiofs) }).expect_err("no virtio-fs");
        assert!(e.contains("no virtio-fs"), "{e}");
    }

    #[test]
    fn guests_without_9p_need_virtiofs() {
        let plan = StorePlan { host: "/nix/store".into(), choice: ShareFsChoice::NineP, virtiofsd: None, snapshots: false };
        let e = plan.share_for(xdriver_guests::Os::DEBIAN_12_CLOUD).expect_err("no 9p there");
        assert!(e.contains("no 9p"), "{e}");
        let plan = StorePlan { host: "/nix/store".into(), choice: ShareFsChoice::Auto, virtiofsd: Some("/usr/bin/virtiofsd".into()), snapshots: false };
        assert_eq!(plan.share_for(xdriver_guests::Os::DEBIAN_12_CLOUD).expect("virtiofs").0.fs, ShareFs::Virtiofs);
    }

    #[test]
    fn freebsd_guests_get_9p_even_when_virtiofs_is_asked_for_by_auto() {
        let plan = StorePlan { host: "/nix/store".into(), choice: ShareFsChoice::Auto, virtiofsd: Some("/usr/bin/virtiofsd".into()), snapshots: false };
        let (s, _) = plan.share_for(xdriver_guests::Os::FREEBSD).expect("ok");
        assert_eq!((s.fs, s.os, s.virtiofsd), (ShareFs::NineP, xdriver_guests::Os::FREEBSD, None));
        let (s, _) = plan.share_for(xdriver_guests::Os::DEBIAN_12).expect("ok");
        assert_eq!(s.fs, ShareFs::Virtiofs);
    }

    #[test]
    fn with_snapshots_auto_takes_9p_where_the_guest_has_it() {
        let plan = StorePlan { host: "/nix/store".into(), choice: ShareFsChoice::Auto, virtiofsd: Some("/usr/bin/virtiofsd".into()), snapshots: true };
        let (s, why) = plan.share_for(xdriver_guests::Os::DEBIAN_12).expect("ok");
        assert_eq!(s.fs, ShareFs::NineP, "{why}");
        assert!(why.contains("snapshot"), "{why}");
        // Guests without 9p keep virtio-fs (and boot cold).
        assert_eq!(plan.share_for(xdriver_guests::Os::DEBIAN_12_CLOUD).expect("virtiofs").0.fs, ShareFs::Virtiofs);
        // Asked for by name, virtio-fs it is.
        let plan = StorePlan { choice: ShareFsChoice::Virtiofs, ..plan };
        assert_eq!(plan.share_for(xdriver_guests::Os::DEBIAN_12).expect("virtiofs").0.fs, ShareFs::Virtiofs);
    }
}
