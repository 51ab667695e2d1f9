//! xdriver's engine: QEMU launch and lifecycle, the channels into a guest
//! (QMP, serial console, backdoor shell, SSH), accelerator probing, and the
//! command-line front end built on them.

pub mod accel;
pub mod backdoor;
pub mod cli;
pub mod console;
pub mod exit;
pub mod output;
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
