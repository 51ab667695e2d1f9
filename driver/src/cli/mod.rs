//! The `xdriver` command line.

mod args;
mod doctor;
mod error;
mod image;
mod list;
mod plan;
mod report;
mod run;
mod test;

pub use args::{Cli, Command, DEFAULT_CPUS, DEFAULT_MEM_MIB};
pub use crate::error_chain::chain_error;
pub use error::CliError;
pub use plan::render_text as plan_text;
pub use test::{cell_line, exit_code};

pub use crate::terminal::{handles_signals, HANDLES_SIGNALS};

/// Runs a parsed command line and returns the process exit code.
pub async fn main(cli: Cli) -> Result<i32, CliError> {
    if matches!(cli.command, Command::Plan(_) | Command::List(_)) {
        // Commands that only print (no sockets, no VMs) end quietly when
        // their reader goes away (`xdriver list | head`).
        // SAFETY: setting a signal disposition has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Image(cmd) => image::main(cmd).await,
        Command::Run(args) => run::main(args).await,
        Command::Doctor(args) => doctor::main(args).await,
        Command::Test(args) => test::main(args).await,
        Command::Plan(args) => plan::main(args),
        Command::List(args) => list::main(args),
        Command::Report(cmd) => report::main(cmd),
    }
}
