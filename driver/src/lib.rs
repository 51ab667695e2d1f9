//! xdriver's engine: QEMU launch and lifecycle, the channels into a guest
//! (QMP, serial console, backdoor shell, SSH), accelerator probing, and the
//! command-line front end built on them.

pub mod accel;
pub mod backdoor;
pub mod cli;
pub mod error_chain;
pub mod console;
pub mod exit;
pub mod output;
pub mod prepare;
pub mod qemu;
pub mod qmp;
pub mod report;
pub mod rundir;
pub mod runner;
pub mod spec;
pub mod ssh;
pub mod store;
pub mod terminal;
pub mod vm;

/// Logs to stderr at the level XDRIVER_LOG asks for (an `EnvFilter`, e.g.
/// `xdriver=debug`), warnings only by default. For xdriver's binaries.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("XDRIVER_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
}
