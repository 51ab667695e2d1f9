//! The `xdriver` binary: parses arguments, installs logging and signal
//! handling, runs the command and maps failures to documented exit codes.

use clap::Parser;
use xdriver::cli::{self, Cli};
use xdriver::exit;

fn main() {
    let cli = Cli::parse();
    xdriver::init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xdriver: cannot start the runtime: {e}");
            std::process::exit(exit::INFRA);
        }
    };
    let code = rt.block_on(async {
        tokio::spawn(async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
                if !xdriver::cli::handles_signals() {
                    xdriver::vm::kill_all();
                    // Not eprintln!: a closed stderr must not turn 130 into a panic.
                    let _ = std::io::Write::write_all(&mut std::io::stderr(), b"xdriver: interrupted; VMs stopped\n");
                    std::process::exit(exit::INTERRUPTED);
                }
            }
        });
        match cli::main(cli).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("xdriver: error: {}", e.message);
                e.code
            }
        }
    });
    drop(rt);
    std::process::exit(code);
}
