//! Loading a spec: the file (or a directory's `xdriver.toml`), parsed with
//! positions kept for error messages.

use std::path::{Path, PathBuf};

use super::error::{Locator, SpecError};
use super::schema::SpecFile;

/// The file a spec directory holds.
pub const SPEC_FILE_NAME: &str = "xdriver.toml";

/// A parsed spec.
#[derive(Debug)]
pub struct Spec {
    /// The spec file.
    pub path: PathBuf,
    /// Its directory (relative paths in the spec start here).
    pub dir: PathBuf,
    /// The parsed file.
    pub file: SpecFile,
    /// Error builder with the source text.
    pub loc: Locator,
    /// Every string is final (a spec evaluated from Nix): no templates.
    pub literal: bool,
    /// Steps given per instance (Nix specs) instead of `[tests]`.
    pub instance_steps: Option<InstanceSteps>,
}

/// What one of testService's hooks gave for a group: steps, or Python for
/// the NixOS test driver's `machine` (as nix-processmgmt's hooks give).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum Hook {
    /// Step tables, as in a TOML spec's `[tests]`.
    Steps(Vec<super::schema::StepDef>),
    /// Python source.
    Python(String),
}

impl Default for Hook {
    fn default() -> Self {
        Hook::Steps(Vec::new())
    }
}

impl Hook {
    /// Whether it is Python.
    pub fn is_python(&self) -> bool {
        matches!(self, Hook::Python(_))
    }
}

/// The steps of a Nix spec, computed per instance by Nix.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSteps {
    /// xdriver's own steps before everything (e.g. systemPackages on PATH).
    #[serde(skip)]
    pub setup: Vec<super::schema::StepDef>,
    /// Once, first.
    #[serde(default)]
    pub initial_tests: Hook,
    /// Per instance.
    #[serde(default)]
    pub readiness: std::collections::BTreeMap<String, Hook>,
    /// Per instance.
    #[serde(default)]
    pub tests: std::collections::BTreeMap<String, Hook>,
    /// Once, last.
    #[serde(default)]
    pub post_tests: Hook,
    /// Where each hook was written (`file:line`), for Python tracebacks.
    #[serde(default)]
    pub origins: std::collections::BTreeMap<String, String>,
}

impl InstanceSteps {
    /// Whether any hook gave Python (then the cell runs one Python script).
    pub fn any_python(&self) -> bool {
        self.initial_tests.is_python()
            || self.post_tests.is_python()
            || self.readiness.values().any(Hook::is_python)
            || self.tests.values().any(Hook::is_python)
    }
}

impl Spec {
    /// Loads `path`: a spec file, or a directory holding `xdriver.toml`.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let file_path = if path.is_dir() { path.join(SPEC_FILE_NAME) } else { path.to_path_buf() };
        let source = std::fs::read_to_string(&file_path).map_err(|e| SpecError {
            file: file_path.clone(),
            at: None,
            message: format!("cannot read the spec: {e}"),
            line_text: String::new(),
        })?;
        Spec::parse(&file_path, &source)
    }

    /// Parses spec text that came from `path`.
    pub fn parse(path: &Path, source: &str) -> Result<Spec, SpecError> {
        let loc = Locator::new(path, source);
        let file: SpecFile = toml::from_str(source).map_err(|e| match e.span() {
            Some(span) => loc.at(span, e.message().trim().to_string()),
            None => loc.whole(e.message().trim().to_string()),
        })?;
        file.guest.check(&loc)?;
        super::nodes::check(&file, &loc)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        Ok(Spec { path: path.to_path_buf(), dir, file, loc, literal: false, instance_steps: None })
    }
}

/// Expands `${VAR}` and `${VAR:-default}` from the environment.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (std::env::var(name).ok().filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("environment variable `{name}` is not set (used in `{s}`)")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        std::env::set_var("XDRIVER_TEST_EXPAND", "/x");
        assert_eq!(expand_env("${XDRIVER_TEST_EXPAND}/bin").expect("set"), "/x/bin");
        assert_eq!(expand_env("${XDRIVER_TEST_UNSET_1:-../d}").expect("default"), "../d");
        assert!(expand_env("${XDRIVER_TEST_UNSET_1}").is_err());
        assert!(expand_env("${OOPS").is_err());
    }

    #[test]
    fn syntax_errors_point_at_line_and_column() {
        let e = Spec::parse(Path::new("bad.toml"), "name = \"x\"\n[instances.a]\nport = \n").expect_err("invalid");
        assert_eq!(e.at.map(|a| a.0), Some(3), "{e}");
        let e = Spec::parse(Path::new("bad.toml"), "name = \"x\"\nnmae = 1\n[instances]\n").expect_err("unknown key");
        assert_eq!(e.at, Some((2, 1)), "{e}");
        assert!(e.message.contains("unknown field `nmae`"), "{e}");
    }
}
