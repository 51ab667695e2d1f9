//! Init systems: the [`InitSystem`] trait, the registry, and one file per
//! init (the four a Debian image can be built with, and FreeBSD's own init
//! for imported images).

mod bsdinit;
mod early;
mod openrc;
mod registry;
mod runit;
mod systemd;
mod sysvinit;

pub use registry::{Init, InitSystem, UnknownInit, INITS};
