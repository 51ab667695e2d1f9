//! Test specs: the TOML file (docs/spec.md), its processes model resolved
//! per cell, the matrix of cells and the rendered test steps. Pure code:
//! no runtime, no guest.

mod error;
mod guest;
mod load;
mod matrix;
pub mod nix;
mod nodes;
mod resolve;
mod schema;
mod steps;
mod template;

pub use error::{line_col, Locator, SpecError};
pub use guest::GuestDef;
pub use load::{expand_env, Hook, InstanceSteps, Spec, SPEC_FILE_NAME};
pub use matrix::{image_for, Cell, Selection};
pub use nodes::{node_of, Node, MAX_VLAN};
pub use resolve::{base_params, conflicts, CellCtx, Resolved};
pub use schema::SpecFile;
pub use steps::{Action, PyScript, PySegment, Step};

#[cfg(test)]
mod tests;
