//! A CLI failure: a message and the documented exit code it maps to.

use crate::exit;

/// A failure the binary reports and exits with.
#[derive(Debug)]
pub struct CliError {
    /// Exit code (see [`crate::exit`]).
    pub code: i32,
    /// What to print (the full cause chain).
    pub message: String,
}

impl CliError {
    /// A usage error (exit 2).
    pub fn usage(msg: impl Into<String>) -> CliError {
        CliError { code: exit::USAGE, message: msg.into() }
    }

    /// An infrastructure failure (exit 125), with the error's source chain.
    pub fn infra(err: &(dyn std::error::Error + 'static)) -> CliError {
        CliError { code: exit::INFRA, message: chain(err) }
    }
}

/// An error and its sources, one per line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let t = e.to_string();
        if !s.contains(&t) {
            s.push_str("\n  caused by: ");
            s.push_str(&t);
        }
        cur = e.source();
    }
    s
}
