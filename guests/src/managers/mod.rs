//! Manager backends, one file each, registered in [`MANAGERS`]. Every
//! backend has the same parts ([`ManagerBackend`]): a pure `render` (the
//! files that make up the deployment, from the model) and a control side
//! (`bootstrap`, `activate`, `start`, `stop`, `status`: shell command lines
//! run as root in the guest). [`Backend`] binds one to an OS and profile.

mod bsdrc;
mod deploy;
mod openrc;
mod registry;
mod runit;
mod s6;
mod supervisord;
mod systemd;
mod sysvinit;

pub use deploy::{Backend, GuestFile, RenderError};
pub use registry::{Manager, ManagerBackend, UnknownManager, MANAGERS};
