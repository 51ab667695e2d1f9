//! Spec errors: where (file, line, column) and what.

use std::fmt;
use std::path::{Path, PathBuf};

/// An error in a spec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The spec file.
    pub file: PathBuf,
    /// 1-based line and column, when the error has a place.
    pub at: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// The source line, for context.
    pub line_text: String,
}

impl std::error::Error for SpecError {}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)?;
                if !self.line_text.is_empty() {
                    let gutter = line.to_string().len();
                    write!(f, "\n{:gutter$} |\n{line} | {}\n{:gutter$} | {:>col$}", "", self.line_text, "", "^")?;
                }
                Ok(())
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Line and column (1-based) of byte `offset` in `source`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// Builds errors for one file.
#[derive(Debug, Clone)]
pub struct Locator {
    file: PathBuf,
    source: String,
}

impl Locator {
    /// For `file` with text `source`.
    pub fn new(file: &Path, source: &str) -> Locator {
        Locator { file: file.to_path_buf(), source: source.to_string() }
    }

    /// The line of the first content line of the string value at `offset`:
    /// a TOML multi-line string that opens with a newline starts on the
    /// next line.
    pub fn first_content_line(&self, offset: usize) -> usize {
        let (line, _) = line_col(&self.source, offset);
        let rest = self.source.get(offset..).unwrap_or("");
        line + usize::from(rest.starts_with("'''\n") || rest.starts_with("\"\"\"\n"))
    }

    /// An error at byte span `span` (its start).
    pub fn at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> SpecError {
        let (line, col) = line_col(&self.source, span.start);
        let line_text = self.source.lines().nth(line - 1).unwrap_or("").to_string();
        SpecError { file: self.file.clone(), at: Some((line, col)), message: message.into(), line_text }
    }

    /// An error without a place.
    pub fn whole(&self, message: impl Into<String>) -> SpecError {
        SpecError { file: self.file.clone(), at: None, message: message.into(), line_text: String::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let src = "a = 1\nbb = 'x'\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 11), (2, 6));
        let e = Locator::new(Path::new("s.toml"), src).at(11..12, "bad");
        assert_eq!(e.to_string(), "s.toml:2:6: bad\n  |\n2 | bb = 'x'\n  |      ^");
    }
}
