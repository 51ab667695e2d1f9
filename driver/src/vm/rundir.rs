//! A VM's private run directory (mode 0700): sockets, overlay, logs.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A run directory. It is removed on drop unless [`RunDir::keep`] was
/// called (failed runs keep theirs so the logs survive).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    /// The parent of all run directories: `$XDRIVER_RUN_DIR`, else
    /// `$XDG_RUNTIME_DIR/xdriver`, else `/tmp/xdriver-<uid>`. Short on
    /// purpose: Unix socket paths are limited to 107 bytes.
    pub fn base() -> PathBuf {
        if let Some(p) = std::env::var_os("XDRIVER_RUN_DIR").filter(|v| !v.is_empty()) {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            return PathBuf::from(p).join("xdriver");
        }
        // SAFETY: getuid has no preconditions.
        PathBuf::from(format!("/tmp/xdriver-{}", unsafe { libc::getuid() }))
    }

    /// Creates a fresh directory named after `label`.
    pub fn create(label: &str) -> std::io::Result<RunDir> {
        let base = Self::base();
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&base)?;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))?;
        let prefix = Self::prefix(label);
        for _ in 0..100 {
            let path = base.join(format!("{prefix}-{:08x}", rand::random::<u32>()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(RunDir { path, keep: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("could not create a unique run directory"))
    }

    /// How the names of `label`'s run directories start (each ends in
    /// `-` and 8 random hex digits): the label, made safe for a path, when
    /// it is at most 24 characters long, else its first 15 and 8 hex digits
    /// of its hash, so two labels that differ only past the cut (a cell's
    /// privileged and unprivileged VMs) never share one. Short on purpose:
    /// Unix socket paths in the directory are limited to 107 bytes.
    fn prefix(label: &str) -> String {
        use sha2::{Digest, Sha256};
        let safe: String = label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        if safe.len() <= 24 {
            return safe;
        }
        let hash = Sha256::digest(label.as_bytes());
        format!("{}-{:02x}{:02x}{:02x}{:02x}", &safe[..15], hash[0], hash[1], hash[2], hash[3])
    }

    /// The run directories of `label` there now (a VM that failed to
    /// start keeps its own: compare the lists before and after the start
    /// to find it).
    pub fn existing(label: &str) -> Vec<PathBuf> {
        let prefix = format!("{}-", Self::prefix(label));
        std::fs::read_dir(RunDir::base())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.len() == prefix.len() + 8 && name.starts_with(&prefix) && name[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit())
            })
            .map(|e| e.path())
            .collect()
    }

    /// The run directories for `label` that are there now and were not in
    /// `before` (a list [`RunDir::existing`] gave before a VM started):
    /// those a VM that failed to start kept (two when it booted twice).
    pub fn new_since(label: &str, before: &[PathBuf]) -> Vec<PathBuf> {
        RunDir::existing(label).into_iter().filter(|d| !before.contains(d)).collect()
    }

    /// The first of [`RunDir::new_since`]: the one a VM that failed to
    /// start (once) kept.
    pub fn kept_since(label: &str, before: &[PathBuf]) -> Option<PathBuf> {
        RunDir::new_since(label, before).into_iter().next()
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Keep the directory when this value is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Undoes [`RunDir::keep`]: removed on drop again.
    pub fn release(&mut self) {
        self.keep = false;
    }

    /// Whether it will be kept.
    pub fn kept(&self) -> bool {
        self.keep
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            // Kept for its logs: one that holds nothing (a start that
            // failed before anything was written) goes all the same.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_removed_unless_kept() {
        let base = tempfile::tempdir().expect("tempdir");
        std::env::set_var("XDRIVER_RUN_DIR", base.path());
        let a = RunDir::create("t").expect("create");
        let mode = std::fs::metadata(a.path()).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
        let mut b = RunDir::create("t").expect("create");
        b.keep();
        let p = b.path().to_path_buf();
        std::fs::write(b.join("serial.log"), "boot").expect("write");
        drop(b);
        assert!(p.exists(), "kept with its log");
        let mut c = RunDir::create("t").expect("create");
        c.keep();
        let empty = c.path().to_path_buf();
        drop(c);
        assert!(!empty.exists(), "kept but empty: removed");
        // Labels that differ only past the cut are told apart; a label
        // that starts another one's does not find its directories.
        let long = ["cell-debian-12-sysvinit-privileged", "cell-debian-12-sysvinit-unprivileged"];
        let dirs: Vec<RunDir> = long.iter().chain(&["u", "u-x"]).map(|l| RunDir::create(l).expect("create")).collect();
        assert_ne!(RunDir::prefix(long[0]), RunDir::prefix(long[1]));
        assert_eq!(RunDir::prefix(long[0]).len(), 24);
        for (l, d) in long.iter().chain(&["u", "u-x"]).zip(&dirs) {
            assert_eq!(RunDir::existing(l), vec![d.path().to_path_buf()], "{l}");
        }
    }
}
