//! xdriver: the VM engine (`vm`: QEMU, its channels, shares, the shared
//! store, image preparation), specs and their matrix (`spec`), the runner
//! that deploys and tests cells (`runner`), reports (`report`) and the
//! command-line front end (`cli`).

pub mod cli;
pub mod error_chain;
pub mod exit;
pub mod report;
pub mod runner;
pub mod spec;
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
