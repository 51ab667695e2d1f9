//! A CLI failure: a message and the documented exit code it maps to.

use crate::error_chain::chain_error as chain;
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
