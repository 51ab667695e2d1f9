//! Quoting for the POSIX shell: every in-guest command is a shell string,
//! so every value spliced into one goes through here.

/// `s` as one shell word (single-quoted unless it is plainly safe).
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// An argument vector as a shell command line.
pub fn join(argv: &[String]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// `s` inside double quotes (for formats that take a double-quoted string,
/// e.g. supervisord's `environment=` and systemd's `Environment=`).
pub fn dquote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("abc-1/x.y"), "abc-1/x.y");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("daemon off;"), "'daemon off;'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(join(&["a b".into(), "c".into()]), "'a b' c");
        assert_eq!(dquote("a\"$b"), "\"a\\\"\\$b\"");
    }
}
