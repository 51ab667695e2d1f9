//! What differs per guest OS, per init system and per process manager: the
//! files xdriver puts into a guest image (backdoor shell, serial getty, SSH
//! settings), the OS commands a deployment needs (users, ports), and the
//! manager backends that render a processes model and control it in the
//! guest. Adding a manager is one file in `managers/` plus its arms in
//! [`Backend`]; adding an OS is one file in `os/` plus its line in
//! [`REGISTRY`].

mod handle;
mod init;
mod managers;
mod model;
mod os;
mod provision;
pub mod shell;

pub use init::{Init, InitSystem, UnknownInit, INITS};
pub use managers::{Backend, GuestFile, Manager, ManagerBackend, RenderError, UnknownManager, MANAGERS};
pub use model::{
    ConfigFile, Credentials, Group, Mode, Process, Profile, ProfileKind, ProfileUser, System, UnknownProfile, User,
};
pub use os::{Family, Firmware, GuestOs, HostPackages, Images, Os, ShareKind, StoreMount, UnknownOs, REGISTRY, STORE_LOWER};
pub use provision::{backdoor_script, provision, FsEntry, BACKDOOR_PATH, BACKDOOR_READY, SSH_PORT};
