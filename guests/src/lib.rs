//! What differs per guest OS and per init system: the files xdriver puts
//! into a guest image (backdoor shell, serial getty, SSH settings) and the
//! commands it runs in a guest (power off). Adding an init system is one
//! variant of [`Init`] plus its arm in each `match`.

mod init;
mod provision;

pub use init::{Init, UnknownInit};
pub use provision::{provision, FsEntry, BACKDOOR_PATH, BACKDOOR_READY};
