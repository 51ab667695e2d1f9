//! Manager backends. Every backend has the same parts: a pure `render`
//! (the files that make up the deployment, from the model) and a control
//! side (`bootstrap`, `activate`, `start`, `stop`, `status`: shell command
//! lines run as root in the guest). [`Backend`] dispatches on [`Manager`].

mod bsdrc;
mod deploy;
mod openrc;
mod runit;
mod s6;
mod supervisord;
mod systemd;
mod sysvinit;

pub use deploy::{Backend, GuestFile, RenderError};
