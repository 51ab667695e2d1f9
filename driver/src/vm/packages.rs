//! A spec's `[guest]` additions for an imported image, applied while the
//! image is prepared (docs/images.md): the host's apt resolves the packages
//! against the guest's own sources and package database and downloads the
//! `.deb` files (the guest's network stays restricted); the preparation VM
//! reads them over a read-only share, installs them with its own apt (local
//! files only, nothing fetched) while a
//! `policy-rc.d` keeps them from starting, and the services they bring are
//! disabled at boot as in a derived built image; then the prepare
//! commands run.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use xdriver_guests::shell::quote;
use xdriver_guests::{HostPackages, Os};
use xdriver_images::{GuestAdditions, PrivateApt};

use crate::error_chain::chain_error;
use crate::vm::{Channel, Vm};

/// Where Debian's cloud images keep the mirror lists of their sources.
const MIRRORS: &str = "/etc/apt/mirrors/";

/// Where the preparation VM sees the host's download directory.
pub const GUEST_DIR: &str = "/run/xdriver-packages";

/// What the additions did to the image (kept with the prepared disk).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    /// Packages the additions brought (dependencies included), as
    /// `name=version`.
    pub added_packages: Vec<String>,
    /// Their services, kept from starting at boot.
    pub disabled_services: Vec<String>,
}

/// Lists the guest's apt sources, each file after a `== PATH` line, and
/// the mirror lists `mirror+file:` sources name (Debian's cloud images
/// point their sources at /etc/apt/mirrors/*.list).
const SOURCES: &str = "for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources /etc/apt/mirrors/*.list; do \
                       [ -f \"$f\" ] && { echo \"== $f\"; cat \"$f\"; echo; }; done; true";

async fn run(vm: &Vm, what: &str, cmd: &str, timeout: Duration) -> Result<String, String> {
    let out = vm.exec(Channel::Backdoor, cmd, &[], timeout, None).await.map_err(|e| format!("{what}: {}", chain_error(&e)))?;
    if !out.success() {
        let stdout = out.stdout_str();
        let tail: Vec<&str> = stdout.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("{what} exited {}:\n{}\n{}", out.status, tail.join("\n"), out.stderr_str().trim()));
    }
    Ok(out.stdout_str())
}

/// Applies `add` in the preparation VM; `host_dir` is shared into it at
/// [`GUEST_DIR`] (read-only) and is where the host downloads to.
pub async fn apply(vm: &Vm, os: Os, add: &GuestAdditions, host_dir: &Path, apt_dir: &Path) -> Result<Applied, String> {
    match os.host_packages() {
        Some(HostPackages::Deb) => apply_deb(vm, add, host_dir, apt_dir).await,
        Some(HostPackages::Pkg) => apply_pkg(vm, add, host_dir).await,
        None => Err(format!("{os} images take no [guest] packages or prepare commands")),
    }
}

async fn apply_deb(vm: &Vm, add: &GuestAdditions, host_dir: &Path, apt_dir: &Path) -> Result<Applied, String> {
    let minute = Duration::from_secs(60);
    let before = run(vm, "listing the guest's packages", "dpkg-query -W -f '${Package}\\n'", minute).await?;
    if !add.packages.is_empty() {
        let status = run(vm, "reading the guest's dpkg status", "cat /var/lib/dpkg/status", minute).await?;
        let sources = run(vm, "reading the guest's apt sources", SOURCES, minute).await?;
        let (apt, debs, packages) = (apt_dir.to_path_buf(), host_dir.to_path_buf(), add.packages.clone());
        tokio::task::spawn_blocking(move || download(&apt, &debs, &status, &sources, &packages))
            .await
            .map_err(|e| format!("downloading the [guest] packages: {e}"))??;
        // The guest's apt installs the local files in an order that keeps
        // every Pre-Depends (one `dpkg -i` of them all does not); they are
        // all it needs (the host resolved against the guest's database),
        // and its network is restricted anyway. No service starts while
        // they are configured.
        let install = format!(
            "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && \
             {{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {dir}/*.deb; rc=$?; rm -f /usr/sbin/policy-rc.d; exit $rc; }}",
            dir = GUEST_DIR
        );
        run(vm, "installing the [guest] packages (the guest's apt-get, from the shared .deb files)", &install, Duration::from_secs(1800)).await?;
    }
    let after = run(vm, "listing the guest's packages", "dpkg-query -W -f '${Package}=${Version}\\n'", minute).await?;
    let added = xdriver_images::added_packages(&before, &after);
    let mut applied = Applied { added_packages: added, disabled_services: Vec::new() };
    if !applied.added_packages.is_empty() {
        let names: Vec<String> = applied.added_packages.iter().map(|p| quote(p.split('=').next().unwrap_or(p))).collect();
        let files = run(vm, "listing the added packages' files", &format!("dpkg-query -L {}", names.join(" ")), minute).await?;
        let files: Vec<String> = files.lines().filter(|l| l.starts_with('/')).map(str::to_string).collect();
        let services = xdriver_images::services_of(&files, &add.boot_services);
        applied.disabled_services = services.names();
        if let Some(cmd) = services.disable_command() {
            run(vm, "disabling the added packages' services", &format!("cd / && {{ {cmd}; }}"), minute).await?;
        }
    }
    prepare_commands(vm, add).await?;
    Ok(applied)
}

async fn prepare_commands(vm: &Vm, add: &GuestAdditions) -> Result<(), String> {
    for (i, c) in add.prepare.iter().enumerate() {
        run(vm, &format!("[guest] prepare command {} (`{c}`)", i + 1), &format!("sh -c {}", quote(c)), Duration::from_secs(1800)).await?;
    }
    Ok(())
}

/// FreeBSD (*unverified*: no image or package repository can be reached
/// here): the host reads the repository's index for the guest's ABI
/// (`$XDRIVER_FREEBSD_PKG_URL`, else `https://pkg.freebsd.org/<ABI>/quarterly`)
/// and fetches the packages and their dependencies the guest lacks, pkg
/// itself first if the guest has only the bootstrap stub; the guest runs
/// `pkg add` on the shared files. FreeBSD's packages start nothing by
/// themselves (rc.conf decides), so nothing is disabled; `boot_services`
/// are enabled with `sysrc NAME_enable=YES`.
async fn apply_pkg(vm: &Vm, add: &GuestAdditions, host_dir: &Path) -> Result<Applied, String> {
    let minute = Duration::from_secs(60);
    let mut applied = Applied::default();
    if !add.packages.is_empty() {
        let abi = run(vm, "reading the guest's ABI", "echo \"FreeBSD:$(freebsd-version -u | cut -d. -f1):$(uname -p)\"", minute).await?.trim().to_string();
        let installed: BTreeSet<String> =
            run(vm, "listing the guest's packages", "if pkg -N >/dev/null 2>&1; then pkg query %n; fi", minute).await?.lines().map(str::to_string).collect();
        let url = std::env::var("XDRIVER_FREEBSD_PKG_URL").unwrap_or_else(|_| format!("https://pkg.freebsd.org/{abi}/quarterly"));
        let mut wanted = add.packages.clone();
        if !installed.contains("pkg") {
            wanted.insert(0, "pkg".into());
        }
        let (dir, want, have) = (host_dir.to_path_buf(), wanted.clone(), installed.clone());
        let files = tokio::task::spawn_blocking(move || fetch_pkgs(&url, &dir, &want, &have))
            .await
            .map_err(|e| format!("fetching the [guest] packages: {e}"))??;
        let mut cmds = Vec::new();
        for w in wanted.iter().filter(|w| !installed.contains(*w)) {
            let (_, file) = files.iter().find(|(n, _)| n == w).ok_or_else(|| format!("{w} was not fetched"))?;
            // pkg add finds the dependencies beside the file.
            cmds.push(format!("env ASSUME_ALWAYS_YES=yes pkg add {}/{}", GUEST_DIR, quote(file)));
        }
        run(vm, "installing the [guest] packages with pkg add", &cmds.join(" && "), Duration::from_secs(1800)).await?;
        applied.added_packages = files.iter().map(|(n, f)| format!("{n}={}", f.trim_end_matches(".pkg").strip_prefix(&format!("{n}-")).unwrap_or(f))).collect();
    }
    for s in &add.boot_services {
        run(vm, &format!("enabling {s} at boot"), &format!("sysrc {}", quote(&format!("{s}_enable=YES"))), minute).await?;
    }
    prepare_commands(vm, add).await?;
    Ok(applied)
}

/// Fetches the repository's index and the closure of `wanted` (but what
/// is `installed`) into `dir`; returns (name, file name) per package.
fn fetch_pkgs(url: &str, dir: &Path, wanted: &[String], installed: &BTreeSet<String>) -> Result<Vec<(String, String)>, String> {
    let get = |what: &str, to: &Path| -> Result<(), String> {
        let out = Command::new("curl").args(["-fsSL", "--retry", "3", "-o"]).arg(to).arg(format!("{url}/{what}")).output().map_err(|e| format!("cannot run curl on the host: {e}"))?;
        if !out.status.success() {
            return Err(format!("fetching {url}/{what} on the host failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    };
    let site = dir.join("packagesite.pkg");
    get("packagesite.pkg", &site)?;
    let bytes = std::fs::read(&site).map_err(|e| format!("{}: {e}", site.display()))?;
    let index = xdriver_images::pkgsite::parse(&xdriver_images::pkgsite::packagesite_yaml(&bytes)?)?;
    let mut out = Vec::new();
    for e in xdriver_images::pkgsite::closure(&index, wanted, installed)? {
        let file = Path::new(&e.repopath).file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| format!("{}: no file name in {}", e.name, e.repopath))?;
        get(&e.repopath, &dir.join(&file))?;
        out.push((e.name.clone(), file));
    }
    Ok(out)
}

/// The host's apt, in a root of its own (`apt_dir`) that holds the guest's
/// sources and dpkg status: resolves `packages` against what the guest has
/// and downloads what it lacks into `debs`.
fn download(apt_dir: &Path, debs: &Path, status: &str, sources: &str, packages: &[String]) -> Result<(), String> {
    // The guest's mirror lists are copied beside the private apt and its
    // sources pointed at the copies (the host has no /etc/apt/mirrors).
    let mirrors = apt_dir.join("mirrors");
    let mut files: Vec<(String, String)> = Vec::new();
    for (path, text) in split_sources(sources) {
        let base = Path::new(&path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if path.starts_with(MIRRORS) {
            std::fs::create_dir_all(&mirrors).map_err(|e| format!("{}: {e}", mirrors.display()))?;
            std::fs::write(mirrors.join(&base), text).map_err(|e| format!("{}: {e}", mirrors.join(&base).display()))?;
            continue;
        }
        let text = text.replace(&format!("mirror+file://{MIRRORS}"), &format!("mirror+file://{}/", mirrors.display()));
        files.push((if base == "sources.list" { "guest.list".to_string() } else { base }, text));
    }
    if files.is_empty() {
        return Err("the guest has no apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d): nothing to fetch its packages from".into());
    }
    let fetch = || {
        let apt = PrivateApt::new(apt_dir, &files, status, "the guest's sources")?;
        apt.update()?;
        apt.download_closure(packages, debs)
    };
    fetch().map_err(|e| format!("the host's apt could not fetch the [guest] packages: {e}"))
}

/// The `== PATH` sections of [`SOURCES`]' output.
fn split_sources(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("== ") {
            out.push((path.to_string(), String::new()));
        } else if let Some((_, t)) = out.last_mut() {
            t.push_str(line);
            t.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_sources_are_split_per_file() {
        let s = split_sources("== /etc/apt/sources.list\ndeb http://deb.debian.org/debian bookworm main\n\n== /etc/apt/sources.list.d/x.sources\nTypes: deb\n\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "/etc/apt/sources.list");
        assert!(s[0].1.starts_with("deb http://deb.debian.org/debian bookworm main\n"));
        assert_eq!(s[1].0, "/etc/apt/sources.list.d/x.sources");
        assert!(split_sources("").is_empty());
    }
}
