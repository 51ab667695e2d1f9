//! The VM engine: the QEMU command line, the accelerator, the run
//! directory, the channels into a guest (QMP, serial console, backdoor
//! shell, SSH), shares and the shared Nix store, the preparation of
//! imported images, and [`Vm`], a running guest built on them.

pub mod accel;
pub mod backdoor;
pub mod console;
mod instance;
pub mod nix_store;
pub mod output;
pub mod packages;
pub mod prepare;
pub mod qemu;
pub mod qmp;
pub mod rundir;
pub mod snapshot;
pub mod ssh;
pub mod vlan;

pub use instance::{find_panic, panic_excerpt, kill_all, Channel, DiskUse, Stopped, Vm, VmConfig, VmError, DEFAULT_CPUS, DEFAULT_MEM_MIB};
