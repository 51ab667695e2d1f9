//! The Debian builder ([`Debian`], the one [`ImageBuilder`]): one image
//! variant's rootfs with mmdebstrap, xdriver's files and a fresh SSH host
//! key, kernel + initramfs from the recipe's release, then an ext4
//! filesystem made with `mke2fs -d` (no loop devices) converted to qcow2.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use russh::keys::{Algorithm, PrivateKey};
use xdriver_guests::shell::quote;
use xdriver_guests::FsEntry;

use crate::apt::{AptError, PrivateApt};
use crate::builder::ImageBuilder;
use crate::kernel::{self, KernelError};
use crate::lock::{FileLock, LockError};
use crate::manifest::{DerivedInfo, DiskInfo, KernelInfo, Manifest, MANIFEST_SCHEMA};
use crate::recipe::{GuestAdditions, ImageName, Recipe};

/// Build failures, one per stage.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Building needs root (mmdebstrap --mode=root, file ownership in mke2fs -d).
    #[error("building images needs root (mmdebstrap --mode=root and mke2fs -d keep file ownership); run as root or use an image built elsewhere")]
    NotRoot,
    /// A host tool is missing.
    #[error("`{tool}` is not installed (apt-get install {package})")]
    MissingTool {
        /// The program.
        tool: &'static str,
        /// The Debian package providing it.
        package: &'static str,
    },
    /// A stage's command failed.
    #[error("stage `{stage}`: `{command}` exited with {status}")]
    Command {
        /// The stage.
        stage: &'static str,
        /// The command.
        command: String,
        /// Its status.
        status: std::process::ExitStatus,
    },
    /// The recipe's sources do not give what it asks for (a package not in
    /// the release, an unreachable or unsigned archive).
    #[error("stage `sources`: {0}")]
    Sources(#[source] Box<AptError>),
    /// No builder makes images of the recipe's OS (the message names
    /// the recipe, its `os` and the builders there are).
    #[error("{0}")]
    NoBuilder(String),
    /// Kernel and initramfs preparation failed.
    #[error("stage `kernel`")]
    Kernel(#[from] KernelError),
    /// The kernel cache lock failed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The spec's packages or prepare commands failed (their output is in
    /// the build log).
    #[error("the spec's guest additions failed to build:\n{0}")]
    Additions(String),
    /// A file xdriver adds could not be written as planned (e.g. a line it
    /// replaces is not in the package's file).
    #[error("stage `provision`: {0}")]
    Provision(String),
    /// Host key generation failed.
    #[error("generating the SSH host key: {0}")]
    HostKey(String),
    /// File I/O.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.into(), source }
}

/// Host programs the builder runs, with the package that provides each.
pub const BUILD_TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mke2fs", "e2fsprogs"),
    ("qemu-img", "qemu-utils"),
    ("apt-get", "apt"),
    ("dpkg-deb", "dpkg"),
    ("xz", "xz-utils"),
];

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

struct Stages {
    log: PathBuf,
    progress: bool,
    name: String,
}

impl Stages {
    fn bar(&self, stage: &str) -> ProgressBar {
        let target = if self.progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let pb = ProgressBar::with_draw_target(None, target);
        pb.set_style(
            ProgressStyle::with_template("{spinner} {prefix:.bold} {msg} [{elapsed}]")
                .expect("static template is valid"),
        );
        pb.set_prefix(format!("{} {stage}", self.name));
        pb.enable_steady_tick(Duration::from_millis(120));
        tracing::info!(image = %self.name, stage, "build stage started");
        pb
    }

    fn done(&self, pb: ProgressBar, stage: &str, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        pb.finish_with_message(format!("done in {secs:.1} s"));
        tracing::info!(image = %self.name, stage, secs, "build stage done");
        self.note(&format!("== stage {stage}: {secs:.1} s"));
    }

    fn note(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Runs a command with its output appended to the build log.
    fn run(&self, stage: &'static str, cmd: &mut Command) -> Result<(), BuildError> {
        let command = format!("{cmd:?}").replace('"', "");
        self.note(&format!("$ {command}"));
        let log = OpenOptions::new().create(true).append(true).open(&self.log).map_err(io(&self.log))?;
        let log2 = log.try_clone().map_err(io(&self.log))?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .status()
            .map_err(io(Path::new(&command)))?;
        if !status.success() {
            return Err(BuildError::Command { stage, command, status });
        }
        Ok(())
    }
}

/// `path` (absolute in the guest) as a host path under `root`, following
/// symlinks the way the guest would: absolute targets are taken relative
/// to `root`, not to the host's `/` (Debian's runit has /etc/service ->
/// /etc/runit/runsvdir/current). The last component is not followed.
fn in_root(root: &Path, path: &str) -> PathBuf {
    let mut cur = root.to_path_buf();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut queue: std::collections::VecDeque<String> = parts.iter().map(|s| s.to_string()).collect();
    let mut hops = 0;
    while let Some(part) = queue.pop_front() {
        let next = cur.join(&part);
        match std::fs::read_link(&next) {
            Ok(target) if !queue.is_empty() && hops < 40 => {
                hops += 1;
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    cur = root.to_path_buf();
                }
                for p in t.split('/').filter(|p| !p.is_empty()).rev() {
                    queue.push_front(p.to_string());
                }
            }
            _ if part == ".." => {
                if cur != root {
                    cur.pop();
                }
            }
            _ if part == "." => {}
            _ => cur = next,
        }
    }
    cur
}

fn apply(root: &Path, entries: &[FsEntry]) -> Result<(), BuildError> {
    for e in entries {
        let rel = match e {
            FsEntry::File { path, .. }
            | FsEntry::Symlink { path, .. }
            | FsEntry::Append { path, .. }
            | FsEntry::ReplaceLine { path, .. }
            | FsEntry::CommentOut { path, .. }
            | FsEntry::Remove { path } => in_root(root, path),
        };
        if let FsEntry::Remove { .. } = e {
            if rel.symlink_metadata().is_ok() {
                std::fs::remove_file(&rel).map_err(io(&rel))?;
            }
            continue;
        }
        if let Some(parent) = rel.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        match e {
            FsEntry::File { mode, contents, .. } => {
                let _ = std::fs::remove_file(&rel);
                std::fs::write(&rel, contents).map_err(io(&rel))?;
                std::fs::set_permissions(&rel, std::fs::Permissions::from_mode(*mode)).map_err(io(&rel))?;
            }
            FsEntry::Symlink { target, .. } => {
                let _ = std::fs::remove_file(&rel);
                symlink(target, &rel).map_err(io(&rel))?;
            }
            FsEntry::Append { text, .. } => {
                let mut f = OpenOptions::new().create(true).append(true).open(&rel).map_err(io(&rel))?;
                f.write_all(text.as_bytes()).map_err(io(&rel))?;
            }
            FsEntry::ReplaceLine { path, old, new } => {
                let text = std::fs::read_to_string(&rel).map_err(io(&rel))?;
                if !text.lines().any(|l| l == old) {
                    return Err(BuildError::Provision(format!("{path} has no line `{old}` to replace")));
                }
                let out: Vec<&str> = text.lines().map(|l| if l == old { new.as_str() } else { l }).collect();
                std::fs::write(&rel, out.join("\n") + "\n").map_err(io(&rel))?;
            }
            FsEntry::CommentOut { line, .. } => {
                let text = std::fs::read_to_string(&rel).map_err(io(&rel))?;
                if text.lines().any(|l| l == line) {
                    let out: Vec<String> = text.lines().map(|l| if l == line { format!("#{l}") } else { l.to_string() }).collect();
                    std::fs::write(&rel, out.join("\n") + "\n").map_err(io(&rel))?;
                }
            }
            FsEntry::Remove { .. } => unreachable!("handled above"),
        }
    }
    Ok(())
}

/// Keeps services from starting at boot: removes their sysv-rc links
/// (`/etc/rc?.d/[SK]NN<name>`), systemd `*.wants/<name>.service` links and
/// OpenRC runlevel links.
fn disable_services(root: &Path, names: &[String]) -> Result<(), BuildError> {
    for n in names {
        for pattern_dir in ["etc/systemd/system", "etc/runlevels"] {
            let Ok(dirs) = std::fs::read_dir(root.join(pattern_dir)) else { continue };
            for d in dirs.flatten() {
                for candidate in [d.path().join(format!("{n}.service")), d.path().join(n)] {
                    if candidate.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
                        std::fs::remove_file(&candidate).map_err(io(&candidate))?;
                    }
                }
            }
        }
    }
    for level in ["0", "1", "2", "3", "4", "5", "6", "S"] {
        let dir = root.join(format!("etc/rc{level}.d"));
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let b = file.as_bytes();
            let is_link = b.len() > 3 && matches!(b[0], b'S' | b'K') && b[1].is_ascii_digit() && b[2].is_ascii_digit();
            if is_link && names.iter().any(|n| file[3..] == **n) {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
            }
        }
    }
    Ok(())
}

/// Masks systemd units or generators: `<dir>/<name>` -> /dev/null.
fn mask_units(root: &Path, dir: &str, units: &[String]) -> Result<(), BuildError> {
    let dir = root.join(dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    for u in units {
        let link = dir.join(u);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).map_err(io(&link))?;
        }
        std::os::unix::fs::symlink("/dev/null", &link).map_err(io(&link))?;
    }
    Ok(())
}

/// Writes a fresh ed25519 host key into the rootfs (removing any other host
/// keys) and returns the public key line clients pin.
fn install_host_key(root: &Path) -> Result<String, BuildError> {
    let ssh = root.join("etc/ssh");
    std::fs::create_dir_all(&ssh).map_err(io(&ssh))?;
    for e in std::fs::read_dir(&ssh).map_err(io(&ssh))?.flatten() {
        if e.file_name().to_string_lossy().starts_with("ssh_host_") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| BuildError::HostKey(e.to_string()))?;
    let private = key.to_openssh(russh::keys::ssh_key::LineEnding::LF).map_err(|e| BuildError::HostKey(e.to_string()))?;
    let public = key.public_key().to_openssh().map_err(|e| BuildError::HostKey(e.to_string()))?;
    let kp = ssh.join("ssh_host_ed25519_key");
    std::fs::write(&kp, private.as_bytes()).map_err(io(&kp))?;
    std::fs::set_permissions(&kp, std::fs::Permissions::from_mode(0o600)).map_err(io(&kp))?;
    let pp = ssh.join("ssh_host_ed25519_key.pub");
    std::fs::write(&pp, format!("{public} root@xdriver\n")).map_err(io(&pp))?;
    Ok(public)
}

/// Lets root log in on the serial console without a password (the console
/// is only reachable through the run directory, mode 0700).
fn clear_root_password(root: &Path) -> Result<(), BuildError> {
    let shadow = root.join("etc/shadow");
    let text = std::fs::read_to_string(&shadow).map_err(io(&shadow))?;
    let out: String = text
        .lines()
        .map(|l| match l.strip_prefix("root:") {
            Some(rest) => format!("root::{}\n", rest.split_once(':').map(|(_, r)| r).unwrap_or("")),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&shadow, out).map_err(io(&shadow))
}

/// mmdebstrap hooks for a spec's additions, run in the finished rootfs
/// (proc, sys and dev mounted, services kept from starting by mmdebstrap's
/// policy-rc.d): record the base's packages, install the added ones from
/// the recipe's mirrors through apt, then run the prepare commands.
fn additions_hooks(cmd: &mut Command, add: &GuestAdditions, base_list: &Path) {
    use xdriver_guests::shell::quote;
    cmd.arg(format!(
        "--customize-hook=chroot \"$1\" dpkg-query -W -f='${{Package}}\\n' > {}",
        quote(&base_list.display().to_string())
    ));
    if !add.packages.is_empty() {
        let pkgs: Vec<String> = add.packages.iter().map(|p| quote(p)).collect();
        cmd.arg(format!(
            "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {} \
             || {{ echo 'xdriver: apt-get could not install the [guest] packages: {}'; exit 1; }}",
            pkgs.join(" "),
            add.packages.join(" ").replace('\'', "")
        ));
    }
    for (i, c) in add.prepare.iter().enumerate() {
        let n = i + 1;
        cmd.arg(format!(
            "--customize-hook=echo '== xdriver: [guest] prepare command {n}'; chroot \"$1\" /bin/sh -c {} \
             || {{ echo \"xdriver: [guest] prepare command {n} exited with $?: \"{}; exit 1; }}",
            quote(c),
            quote(c)
        ));
    }
}

/// What the build log says about a failed addition: xdriver's own line
/// and apt's errors, with the lines before it.
fn additions_failure(log: &Path) -> Option<BuildError> {
    let text = std::fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().rposition(|l| l.starts_with("xdriver: "))?;
    let from = at.saturating_sub(12);
    Some(BuildError::Additions(lines[from..=at].join("\n")))
}

/// Keeps the services of the packages a spec added from starting at boot
/// (unless the spec names them in `boot_services`): systemd units of those
/// packages lose their `.wants`/`.requires` links (template instances
/// too), their init scripts lose their rc and OpenRC runlevel links, and
/// their runit services their `/etc/service` links. Returns what the
/// manifest records.
fn disable_added_services(root: &Path, base_list: &Path, add: &GuestAdditions, base: &ImageName) -> Result<DerivedInfo, BuildError> {
    let base_pkgs = std::fs::read_to_string(base_list).map_err(io(base_list))?;
    let _ = std::fs::remove_file(base_list);
    let added = added_packages(&base_pkgs, &installed_packages(root).join("\n"));
    let names: Vec<&str> = added.iter().map(|p| p.split('=').next().unwrap_or(p)).collect();
    let files = package_files(root, &names);
    let services = services_of(&files, &add.boot_services);
    let disabled = services.names();
    // The same command the preparation of an imported image runs in the
    // guest, run here in the image's root.
    if let Some(cmd) = services.disable_command() {
        let out = Command::new("sh").arg("-c").arg(&cmd).current_dir(root).output().map_err(|e| BuildError::Additions(format!("disabling the added packages' services: {e}")))?;
        if !out.status.success() {
            return Err(BuildError::Additions(format!("disabling the added packages' services ({cmd}): {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
    }
    Ok(DerivedInfo { base: base.to_string(), additions: add.clone(), added_packages: added, disabled_services: disabled })
}

/// Services found among packages' files.
#[derive(Debug, Default, PartialEq)]
pub struct Services {
    /// systemd units (`.service`, `.socket`, `.timer`, `.path`).
    pub units: Vec<String>,
    /// sysv-rc / OpenRC init scripts.
    pub scripts: Vec<String>,
    /// runit service directories (`/etc/sv/<name>`).
    pub runit: Vec<String>,
}

impl Services {
    /// The shell command that keeps these services from starting at boot,
    /// run in the root of the system (its paths are relative, so that an
    /// image's root on the build host and a running guest take the same
    /// command): systemd's `.wants`/`.requires` links (template instances
    /// too), rc and OpenRC runlevel links, runit's service links. None when
    /// there is nothing to do.
    pub fn disable_command(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.units.is_empty() {
            let names: Vec<String> = self
                .units
                .iter()
                .map(|u| match u.split_once("@.") {
                    Some((stem, ext)) => format!("-name {}", quote(&format!("{stem}@*.{ext}"))),
                    None => format!("-name {}", quote(u)),
                })
                .collect();
            parts.push(format!(
                "{{ [ ! -d etc/systemd/system ] || find etc/systemd/system -mindepth 2 -maxdepth 2 -type l \\( -path '*.wants/*' -o -path '*.requires/*' \\) \\( {} \\) -delete; }}",
                names.join(" -o ")
            ));
        }
        for n in &self.scripts {
            parts.push(format!("rm -f etc/rc?.d/[SK][0-9][0-9]{n} etc/runlevels/*/{n}", n = quote(n)));
        }
        // Debian's /etc/service is an absolute link to the runsvdir, which
        // must not be followed outside a guest: the runsvdir is named
        // itself, /etc/service only when it is a directory of its own.
        for n in &self.runit {
            parts.push(format!("rm -f etc/runit/runsvdir/default/{n} && {{ [ -L etc/service ] || rm -f etc/service/{n}; }}", n = quote(n)));
        }
        // Each part succeeds when it has nothing to remove: any failure is
        // the command's.
        (!parts.is_empty()).then(|| parts.join(" && "))
    }

    /// What the manifest records: units, `/etc/init.d/<script>`,
    /// `/etc/sv/<service>`, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .units
            .iter()
            .cloned()
            .chain(self.scripts.iter().map(|s| format!("/etc/init.d/{s}")))
            .chain(self.runit.iter().map(|s| format!("/etc/sv/{s}")))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The packages in `after` (`name=version` lines) whose names are not in
/// `before` (lines starting with a name, `=version` optional): what an
/// installation added.
pub fn added_packages(before: &str, after: &str) -> Vec<String> {
    let name = |l: &str| l.split('=').next().unwrap_or(l).trim().to_string();
    let before: std::collections::BTreeSet<String> = before.lines().map(name).collect();
    after.lines().filter(|l| !l.trim().is_empty() && !before.contains(&name(l))).map(str::to_string).collect()
}

/// The services among packages' files (`dpkg-query -L` lines), but those
/// named in `kept`.
pub fn services_of(files: &[String], kept: &[String]) -> Services {
    let kept = |n: &str| kept.iter().any(|b| b == n || n.rsplit_once('.').map(|(stem, _)| stem) == Some(b.as_str()));
    let mut s = Services::default();
    for f in files {
        let (dir, file) = f.rsplit_once('/').unwrap_or(("", f));
        match dir {
            "/lib/systemd/system" | "/usr/lib/systemd/system" if [".service", ".socket", ".timer", ".path"].iter().any(|x| file.ends_with(x)) => {
                if !kept(file) {
                    s.units.push(file.to_string());
                }
            }
            "/etc/init.d" if !file.starts_with('.') && file != "README" => {
                if !kept(file) {
                    s.scripts.push(file.to_string());
                }
            }
            _ => {
                if let Some(sv) = dir.strip_prefix("/etc/sv/").filter(|sv| !sv.contains('/') && file == "run") {
                    if !kept(sv) {
                        s.runit.push(sv.to_string());
                    }
                }
            }
        }
    }
    s
}

/// Every file the packages `names` installed in `root`.
fn package_files(root: &Path, names: &[&str]) -> Vec<String> {
    if names.is_empty() {
        return Vec::new();
    }
    let out = Command::new("dpkg-query").arg(format!("--admindir={}", root.join("var/lib/dpkg").display())).arg("-L").args(names).output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with('/')).map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

fn installed_packages(root: &Path) -> Vec<String> {
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}", root.join("var/lib/dpkg").display()))
        .args(["-W", "-f", "${Package}=${Version}\\n"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), BuildError> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(io(to))?;
    }
    Ok(())
}

/// Debian images, built with mmdebstrap from the recipe's suite and mirrors.
#[derive(Debug)]
pub struct Debian;

impl ImageBuilder for Debian {
    fn os(&self) -> &'static str {
        "debian"
    }

    fn build(&self, recipe: &Recipe, name: &ImageName, hash: &str, out: &Path, kernels: &Path, progress: bool) -> Result<Manifest, BuildError> {
        build_debian(recipe, name, hash, out, kernels, progress)
    }
}

/// The recipe's mirrors as a private apt's sources, updated: the kernel and
/// busybox come from the recipe's own release, and every package the build
/// will ask mmdebstrap for is checked first, so a name the release lacks is
/// told with the suite and the archive's date before anything is built.
fn recipe_sources(recipe: &Recipe, init: &crate::recipe::InitRecipe, dir: &Path) -> Result<PrivateApt, BuildError> {
    let sources = vec![("recipe.list".to_string(), recipe.mirrors.iter().map(|m| format!("{m}\n")).collect::<String>())];
    let sources_error = |e: AptError| BuildError::Sources(Box::new(e));
    let apt = PrivateApt::new(dir, &sources, "", &recipe.suite).map_err(sources_error)?.with_options(&recipe.apt_options);
    apt.update_strict().map_err(sources_error)?;
    let mut wanted: Vec<String> = recipe.packages.iter().chain(&init.packages).cloned().collect();
    if let Some(add) = &recipe.additions {
        wanted.extend(add.packages.iter().cloned());
    }
    wanted.push(recipe.kernel.package.clone());
    wanted.push(recipe.kernel.busybox_package.clone());
    apt.check_available(&wanted).map_err(sources_error)?;
    Ok(apt)
}

fn build_debian(recipe: &Recipe, name: &ImageName, hash: &str, out: &Path, kernels: &Path, progress: bool) -> Result<Manifest, BuildError> {
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BuildError::NotRoot);
    }
    for (tool, package) in BUILD_TOOLS {
        if !have(tool) {
            return Err(BuildError::MissingTool { tool, package });
        }
    }
    // A derived recipe names its image after the base and its additions.
    let image = recipe.additions.as_ref().map(|a| a.image_name(name)).unwrap_or_else(|| name.to_string());
    let stages = Stages { log: out.join("build.log"), progress, name: image.clone() };
    let init = recipe.inits.get(&name.init).expect("ImageName::from_str checked the variant exists");
    let rootfs = out.join("rootfs");

    // 0. sources
    let t = Instant::now();
    let pb = stages.bar("sources");
    pb.set_message(format!("apt update ({})", recipe.suite));
    let apt_dir = out.join("apt");
    let apt = recipe_sources(recipe, init, &apt_dir).inspect_err(|e| {
        pb.abandon_with_message("failed");
        let cause = std::error::Error::source(e).map(|c| c.to_string()).unwrap_or_default();
        stages.note(&format!("== stage sources failed: {cause}"));
    })?;
    let archive_date = apt.archive_date();
    stages.done(pb, "sources", t);

    // 1. rootfs
    let t = Instant::now();
    let pb = stages.bar("rootfs");
    pb.set_message("mmdebstrap");
    let include: Vec<&str> = recipe.packages.iter().chain(&init.packages).map(String::as_str).collect();
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=apt", "--mode=root", "--format=directory", "--quiet"])
        .arg(format!("--include={}", include.join(",")))
        .arg("--aptopt=Acquire::Retries \"3\"");
    for o in &recipe.apt_options {
        let (k, v) = o.split_once('=').unwrap_or((o, "true"));
        cmd.arg(format!("--aptopt={k} \"{v}\""));
    }
    let merged = Path::new("/usr/share/mmdebstrap/hooks/merged-usr");
    if merged.is_dir() {
        // Keeps usrmerge (and perl with it) out of the image.
        cmd.arg(format!("--hook-dir={}", merged.display()));
    }
    for ex in &recipe.path_excludes {
        cmd.arg(format!("--dpkgopt=path-exclude={ex}"));
    }
    let base_list = out.join("base-packages.txt");
    if let Some(add) = &recipe.additions {
        additions_hooks(&mut cmd, add, &base_list);
    }
    cmd.arg(&recipe.suite).arg(&rootfs);
    for m in &recipe.mirrors {
        cmd.arg(m);
    }
    if let Err(e) = stages.run("rootfs", &mut cmd) {
        return Err(match recipe.additions {
            Some(_) => additions_failure(&stages.log).unwrap_or(e),
            None => e,
        });
    }
    stages.done(pb, "rootfs", t);

    // 2. provision
    let t = Instant::now();
    let pb = stages.bar("provision");
    apply(&rootfs, &xdriver_guests::provision(name.init, "xdriver"))?;
    let replaced = name.init.replaced_boot_scripts().iter().chain(name.init.pruned_init_scripts()).map(|s| s.to_string());
    let disabled: Vec<String> = recipe.disable_services.iter().chain(&init.disable_services).cloned().chain(replaced).collect();
    disable_services(&rootfs, &disabled)?;
    for s in name.init.pruned_init_scripts() {
        let p = rootfs.join("etc/init.d").join(s);
        if p.symlink_metadata().is_ok() {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    let derived = match &recipe.additions {
        Some(add) => Some(disable_added_services(&rootfs, &base_list, add, name)?),
        None => None,
    };
    mask_units(&rootfs, "etc/systemd/system", &init.mask_units)?;
    mask_units(&rootfs, "etc/systemd/system-generators", &init.mask_generators)?;
    for u in &init.on_demand {
        for dir in ["lib/systemd/system", "usr/lib/systemd/system", "etc/systemd/system"] {
            let link = rootfs.join(dir).join("multi-user.target.wants").join(u);
            if link.symlink_metadata().is_ok() {
                std::fs::remove_file(&link).map_err(io(&link))?;
            }
        }
    }
    // Root's ~/.ssh is the test's to make (an empty one left by package
    // set-up goes; one with files stays).
    let _ = std::fs::remove_dir(rootfs.join("root/.ssh"));
    let ssh_host_key = install_host_key(&rootfs)?;
    clear_root_password(&rootfs)?;
    for d in ["nix/store", "var/cache/apt/archives/partial"] {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    let packages = installed_packages(&rootfs);
    stages.done(pb, "provision", t);

    // 3. kernel (shared between variants)
    let t = Instant::now();
    let pb = stages.bar("kernel");
    let kernel = shared_kernel(&apt, recipe, kernels)?;
    std::fs::remove_dir_all(&apt_dir).map_err(io(&apt_dir))?;
    for f in [&kernel.1.file, &kernel.1.initrd] {
        link_or_copy(&kernel.0.join(f), &out.join(f))?;
    }
    let kernel_info = kernel.1;
    stages.done(pb, "kernel", t);

    // 4. disk
    let t = Instant::now();
    let pb = stages.bar("disk");
    let raw = out.join("disk.raw");
    stages.run(
        "disk",
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "root", "-E", "root_owner=0:0", "-d"])
            .arg(&rootfs)
            .arg(&raw)
            .arg(format!("{}M", recipe.disk_mib)),
    )?;
    std::fs::remove_dir_all(&rootfs).map_err(io(&rootfs))?;
    let disk = out.join("disk.qcow2");
    stages.run("disk", Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&disk))?;
    std::fs::remove_file(&raw).map_err(io(&raw))?;
    let file_bytes = std::fs::metadata(&disk).map_err(io(&disk))?.len();
    stages.done(pb, "disk", t);

    let manifest = Manifest {
        schema: MANIFEST_SCHEMA,
        name: image.clone(),
        recipe: recipe.name.clone(),
        recipe_hash: hash.to_string(),
        os: recipe.name.clone(),
        release: recipe.release.clone(),
        init: name.init,
        init_path: name.init.init_path().to_string(),
        packages,
        kernel: Some(kernel_info),
        disk: DiskInfo { file: "disk.qcow2".into(), virtual_mib: recipe.disk_mib, file_bytes },
        ssh_host_key,
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        build_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        import: None,
        derived,
        archive_date,
    };
    let mp = out.join("manifest.json");
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    std::fs::write(&mp, json).map_err(io(&mp))?;
    Ok(manifest)
}

/// The kernel + initramfs directory for the recipe's kernel settings,
/// prepared once under a lock and reused by every variant.
fn shared_kernel(apt: &PrivateApt, recipe: &Recipe, kernels: &Path) -> Result<(PathBuf, KernelInfo), BuildError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{:?}", recipe.kernel).as_bytes());
    // One package name (linux-image-amd64) is a different kernel per release.
    h.update(format!("{:?}", recipe.mirrors).as_bytes());
    h.update(crate::initramfs::INIT_SCRIPT.as_bytes());
    h.update(crate::kernel::PREP_VERSION.to_le_bytes());
    let key = format!("{}-{}", recipe.kernel.package, &hex::encode(h.finalize())[..12]);
    let dir = kernels.join(&key);
    let info_path = dir.join("kernel.json");
    let _lock = FileLock::acquire(&kernels.join(format!("{key}.lock")))?;
    if let Ok(text) = std::fs::read_to_string(&info_path) {
        if let Ok(info) = serde_json::from_str::<KernelInfo>(&text) {
            return Ok((dir, info));
        }
    }
    let tmp = kernels.join(format!(".tmp-{key}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&dir);
    let work = tmp.join("work");
    let info = kernel::prepare(apt, &recipe.kernel, &work, &tmp)?;
    let _ = std::fs::remove_dir_all(&work);
    std::fs::write(tmp.join("kernel.json"), serde_json::to_string_pretty(&info).expect("serializes"))
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    Ok((dir, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_commented_out_where_present_and_files_removed_where_there() {
        let root = std::env::temp_dir().join(format!("xdriver-apply-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc/service")).expect("dirs");
        std::fs::write(root.join("etc/inittab"), "1:2345:respawn:/sbin/getty tty1\n2:23:respawn:/sbin/getty tty2\n").expect("inittab");
        symlink("/etc/sv/getty-tty2", root.join("etc/service/getty-tty2")).expect("link");
        let entries = [
            FsEntry::CommentOut { path: "/etc/inittab".into(), line: "2:23:respawn:/sbin/getty tty2".into() },
            FsEntry::CommentOut { path: "/etc/inittab".into(), line: "3:23:respawn:/sbin/getty tty3".into() },
            FsEntry::Remove { path: "/etc/service/getty-tty2".into() },
            FsEntry::Remove { path: "/etc/service/getty-tty3".into() },
        ];
        let r = apply(&root, &entries);
        let inittab = std::fs::read_to_string(root.join("etc/inittab")).expect("read");
        let link_gone = root.join("etc/service/getty-tty2").symlink_metadata().is_err();
        let _ = std::fs::remove_dir_all(&root);
        r.expect("applies");
        assert_eq!(inittab, "1:2345:respawn:/sbin/getty tty1\n#2:23:respawn:/sbin/getty tty2\n");
        assert!(link_gone);
    }

    #[test]
    fn the_services_of_added_packages_are_found_and_boot_services_kept() {
        let files: Vec<String> = [
            "/lib/systemd/system/redis-server.service",
            "/lib/systemd/system/redis-server@.service",
            "/usr/lib/systemd/system/cron.service",
            "/lib/systemd/system/foo.socket",
            "/lib/systemd/system/foo.conf",
            "/etc/init.d/redis-server",
            "/etc/init.d/cron",
            "/etc/init.d/README",
            "/etc/sv/memcached/run",
            "/etc/sv/memcached/log/run",
            "/usr/bin/redis-server",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = services_of(&files, &["cron".to_string()]);
        assert_eq!(s.units, ["redis-server.service", "redis-server@.service", "foo.socket"]);
        assert_eq!(s.scripts, ["redis-server"]);
        assert_eq!(s.runit, ["memcached"]);
    }

    /// Every symlink under `root`, relative, sorted.
    fn links(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).expect("dir").flatten() {
                let ft = e.file_type().expect("type");
                if ft.is_symlink() {
                    out.push(e.path().strip_prefix(root).expect("under root").display().to_string());
                } else if ft.is_dir() {
                    walk(root, &e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn the_disable_command_removes_the_services_links_only_and_follows_no_absolute_link() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        for (dir, link) in [
            ("etc/systemd/system/multi-user.target.wants", "redis-server.service"),
            ("etc/systemd/system/multi-user.target.wants", "ssh.service"),
            ("etc/systemd/system/postgresql.service.wants", "postgresql@15-main.service"),
            ("etc/systemd/system/sockets.target.wants", "foo.socket"),
            ("etc/systemd/system/foo.service.requires", "foo.socket"),
            ("etc/rc2.d", "S01redis-server"),
            ("etc/rc0.d", "K01redis-server"),
            ("etc/rc2.d", "S01ssh"),
            ("etc/runlevels/default", "redis-server"),
            ("etc/runlevels/default", "sshd"),
            ("etc/runit/runsvdir/default", "memcached"),
            ("etc/runit/runsvdir/default", "getty-1"),
        ] {
            std::fs::create_dir_all(r.join(dir)).expect("mkdir");
            symlink(format!("/lib/x/{link}"), r.join(dir).join(link)).expect("symlink");
        }
        // Debian's runit layout: /etc/service is an absolute link, which
        // on the build host would lead out of the image.
        symlink("default", r.join("etc/runit/runsvdir/current")).expect("link");
        symlink("/etc/runit/runsvdir/current", r.join("etc/service")).expect("link");
        let s = Services {
            units: vec!["redis-server.service".into(), "postgresql@.service".into(), "foo.socket".into()],
            scripts: vec!["redis-server".into()],
            runit: vec!["memcached".into()],
        };
        let cmd = s.disable_command().expect("something to do");
        let out = Command::new("sh").arg("-c").arg(&cmd).current_dir(r).output().expect("sh");
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            links(r),
            [
                "etc/rc2.d/S01ssh",
                "etc/runit/runsvdir/current",
                "etc/runit/runsvdir/default/getty-1",
                "etc/runlevels/default/sshd",
                "etc/service",
                "etc/systemd/system/multi-user.target.wants/ssh.service",
            ]
        );
        assert!(Services::default().disable_command().is_none());
        // A root without systemd or runit directories is no error.
        let empty = tempfile::tempdir().expect("tempdir");
        let out = Command::new("sh").arg("-c").arg(&cmd).current_dir(empty.path()).output().expect("sh");
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn added_packages_are_the_new_names() {
        assert_eq!(added_packages("bash\ncron\n", "bash=5.2\ncron=3.0\nredis-server=7.0\nredis-tools=7.0\n"), ["redis-server=7.0", "redis-tools=7.0"]);
        assert_eq!(added_packages("bash=5.1\n", "bash=5.2\n"), Vec::<String>::new(), "an upgrade adds nothing");
    }

    #[test]
    fn a_failed_addition_is_told_from_the_build_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("build.log");
        std::fs::write(&log, "$ mmdebstrap ...\nI: installing remaining packages\n== xdriver: [guest] prepare command 2\nsh: 1: pg_dropcluster: not found\nxdriver: [guest] prepare command 2 exited with 127: pg_dropcluster 15 main\nE: hook failed\n").expect("write");
        let e = additions_failure(&log).expect("found").to_string();
        assert!(e.contains("prepare command 2 exited with 127: pg_dropcluster 15 main") && e.contains("pg_dropcluster: not found"), "{e}");
        std::fs::write(&log, "$ mmdebstrap ...\nE: some other failure\n").expect("write");
        assert!(additions_failure(&log).is_none(), "no xdriver line: the stage's own error stands");
    }

    #[test]
    fn guest_symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        std::fs::create_dir_all(r.join("etc/runit/runsvdir/default")).expect("mkdir");
        symlink("default", r.join("etc/runit/runsvdir/current")).expect("link");
        symlink("/etc/runit/runsvdir/current", r.join("etc/service")).expect("link");
        assert_eq!(in_root(r, "/etc/service/x"), r.join("etc/runit/runsvdir/default/x"));
        assert_eq!(in_root(r, "/etc/service"), r.join("etc/service"), "the last component is not followed");
        assert_eq!(in_root(r, "/etc/../../x"), r.join("x"), "cannot escape the root");
    }
}
