//! Guest operating systems: the [`GuestOs`] trait, the registry, and one
//! file per OS.

mod debian12;
mod debian12_cloud;
mod debian12_nix;
mod debian13;
mod debian13_cloud;
mod debian14;
mod freebsd;
mod linux;
mod nixos;
mod profile;

pub use linux::STORE_LOWER;
pub use profile::{Family, Firmware, GuestOs, HostPackages, Images, Os, ShareKind, StoreMount, UnknownOs, REGISTRY};
