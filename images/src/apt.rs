//! The host's apt pointed at other sources: a private apt directory with
//! its own sources, lists and dpkg status, so packages of another Debian
//! release (a built image's kernel and busybox, an imported image's
//! `[guest]` packages) are resolved and fetched without touching the
//! host's own apt state.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An apt command that failed, or a package the sources do not have.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    /// A file of the private apt directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// apt-get or apt-cache exited non-zero (its words follow).
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Command {
        /// The command, short.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
    /// Packages no source offers.
    #[error("{} not in {suite} (the archive of {date}): {}", if missing.len() == 1 { "package is" } else { "packages are" }, missing.join(", "))]
    Missing {
        /// The names asked for that have no candidate.
        missing: Vec<String>,
        /// The suites of the sources.
        suite: String,
        /// The archive's date (its Release file), or "unknown date".
        date: String,
    },
}

/// A private apt directory (see the module's documentation).
#[derive(Debug)]
pub struct PrivateApt {
    dir: PathBuf,
    status: PathBuf,
    suite: String,
    options: Vec<String>,
}

impl PrivateApt {
    /// Sets up `dir` with `sources` (file name, text; `.list` or
    /// `.sources` files) and the dpkg `status` text apt resolves against
    /// (empty: nothing installed). `suite` names the sources in messages.
    pub fn new(dir: &Path, sources: &[(String, String)], status: &str, suite: &str) -> Result<PrivateApt, AptError> {
        for d in ["etc/apt/sources.list.d", "etc/apt/preferences.d", "etc/apt/apt.conf.d", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial"] {
            let p = dir.join(d);
            std::fs::create_dir_all(&p).map_err(|source| AptError::Io { path: p.clone(), source })?;
        }
        let write = |p: PathBuf, text: &str| std::fs::write(&p, text).map_err(|source| AptError::Io { path: p.clone(), source });
        let status_file = dir.join("status");
        write(status_file.clone(), status)?;
        for (name, text) in sources {
            write(dir.join("etc/apt/sources.list.d").join(name), text)?;
        }
        Ok(PrivateApt { dir: dir.to_path_buf(), status: status_file, suite: suite.to_string(), options: Vec::new() })
    }

    /// Adds apt options (`Name=value`) to every command.
    pub fn with_options(mut self, options: &[String]) -> PrivateApt {
        self.options.extend(options.iter().cloned());
        self
    }

    /// `program` (apt-get or apt-cache) with the options that point it here.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("-q")
            .arg(format!("-oDir={}", self.dir.display()))
            .arg(format!("-oDir::State::status={}", self.status.display()))
            .arg("-oDir::Etc::TrustedParts=/etc/apt/trusted.gpg.d")
            .arg("-oDir::Etc::Trusted=/etc/apt/trusted.gpg")
            .arg("-oDebug::NoLocking=1")
            .arg("-oAPT::Sandbox::User=root")
            .arg("-oAcquire::Retries=3")
            .args(self.options.iter().map(|o| format!("-o{o}")))
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    fn run(&self, what: &str, mut cmd: Command) -> Result<String, AptError> {
        let out = cmd.output().map_err(|source| AptError::Io { path: PathBuf::from(cmd.get_program()), source })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(AptError::Command { command: what.to_string(), status: out.status.to_string(), stderr: tail.join("\n") });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Fetches the package lists (apt's warnings stay warnings: a
    /// guest's own sources may warn and still serve).
    pub fn update(&self) -> Result<(), AptError> {
        self.update_with(&[])
    }

    /// Fetches the package lists with warnings as errors, as mmdebstrap
    /// runs apt: a build's expired Release file is told here, with the
    /// suite, not inside the rootfs stage.
    pub fn update_strict(&self) -> Result<(), AptError> {
        self.update_with(&["--error-on=any"])
    }

    fn update_with(&self, extra: &[&str]) -> Result<(), AptError> {
        let mut cmd = self.command("apt-get");
        cmd.arg("update").args(extra);
        self.run(&format!("apt-get update ({})", self.suite), cmd).map(drop)
    }

    /// The newest `Date:` of the Release files fetched by
    /// [`PrivateApt::update`] (RFC 2822, as the archive writes it).
    pub fn archive_date(&self) -> Option<String> {
        let lists = self.dir.join("var/lib/apt/lists");
        std::fs::read_dir(&lists)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with("Release"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|text| text.lines().find_map(|l| l.strip_prefix("Date: ").map(str::to_string)))
            .next()
    }

    /// Fails naming every one of `packages` that no source offers (a
    /// virtual package some real one provides counts as offered).
    pub fn check_available(&self, packages: &[String]) -> Result<(), AptError> {
        if packages.is_empty() {
            return Ok(());
        }
        let mut cmd = self.command("apt-cache");
        cmd.arg("showpkg").args(packages);
        let text = self.run("apt-cache showpkg", cmd)?;
        let missing = missing_from_showpkg(&text, packages);
        if missing.is_empty() {
            return Ok(());
        }
        Err(AptError::Missing { missing, suite: self.suite.clone(), date: self.archive_date().unwrap_or_else(|| "unknown date".into()) })
    }

    /// The packages `package` directly depends on (first alternatives).
    pub fn depends(&self, package: &str) -> Result<Vec<String>, AptError> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["depends", package]);
        let text = self.run(&format!("apt-cache depends {package}"), cmd)?;
        Ok(text.lines().filter_map(|l| l.trim().strip_prefix("Depends: ")).map(|d| d.trim().to_string()).collect())
    }

    /// The versioned package a meta package (e.g. `linux-image-amd64`)
    /// depends on; the name itself where it is not a meta package.
    pub fn resolve_meta(&self, meta: &str) -> Result<String, AptError> {
        Ok(self
            .depends(meta)?
            .into_iter()
            .find(|dep| dep.starts_with("linux-image-") || dep.starts_with("busybox"))
            .unwrap_or_else(|| meta.to_string()))
    }

    /// Downloads one package's `.deb` (no dependencies) into `into`.
    pub fn download(&self, package: &str, into: &Path) -> Result<(), AptError> {
        let mut cmd = self.command("apt-get");
        cmd.args(["download", package]).current_dir(into);
        self.run(&format!("apt-get download {package} ({})", self.suite), cmd).map(drop)
    }

    /// Downloads `packages` and whatever they need that the status lacks
    /// into `into` (no Recommends).
    pub fn download_closure(&self, packages: &[String], into: &Path) -> Result<(), AptError> {
        let partial = into.join("partial");
        std::fs::create_dir_all(&partial).map_err(|source| AptError::Io { path: partial.clone(), source })?;
        let mut cmd = self.command("apt-get");
        cmd.arg(format!("-oDir::Cache::archives={}", into.display()))
            .args(["install", "-y", "--download-only", "--no-install-recommends"])
            .args(packages);
        self.run(&format!("apt-get install --download-only ({})", self.suite), cmd).map(drop)
    }
}

/// The names of `asked` that `apt-cache showpkg` found neither as a real
/// package with versions nor as a virtual one with providers.
fn missing_from_showpkg(text: &str, asked: &[String]) -> Vec<String> {
    // showpkg prints, per package it knows, "Package: NAME" then
    // "Versions:" lines and "Reverse Provides:" lines; unknown names get
    // only a warning on stderr.
    let mut offered = std::collections::HashSet::new();
    let mut current: Option<&str> = None;
    let mut section = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("Package: ") {
            current = Some(name.trim());
            section = "";
        } else if line.trim_end().ends_with(':') && !line.starts_with(' ') {
            section = line.trim_end();
        } else if let Some(name) = current {
            let entry = !line.trim().is_empty() && !line.starts_with(' ');
            if entry && (section == "Versions:" || section == "Reverse Provides:") {
                offered.insert(name.to_string());
            }
        }
    }
    asked.iter().filter(|p| !offered.contains(p.as_str())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_without_versions_or_providers_are_missing() {
        let text = "Package: nginx\nVersions: \n1.26.3-3 (/var/lib/apt/lists/x_Packages)\n Description Language: \n\nReverse Depends: \n  foo,nginx\nDependencies: \n\
                    Package: mail-transport-agent\nVersions: \nReverse Depends: \n  bsd-mailx,mail-transport-agent\nDependencies: \nProvides: \nReverse Provides: \nexim4-daemon-light 4.96 (= )\n\
                    Package: gone\nVersions: \nReverse Depends: \n  x,gone\nDependencies: \nProvides: \nReverse Provides: \n";
        let asked: Vec<String> = ["nginx", "mail-transport-agent", "gone", "unheard-of"].map(String::from).to_vec();
        assert_eq!(missing_from_showpkg(text, &asked), ["gone", "unheard-of"]);
    }
}
