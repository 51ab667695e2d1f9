//! Running cells: deploy a spec's system into a fresh VM per cell and run
//! its steps through the Machine API, keeping every artifact.

mod cell;
mod deploy;
pub mod fault;
pub mod event;
mod machine;
pub mod python;
pub mod schedule;
pub mod progress;
mod transcript;

pub use cell::{
    configs_of, prepare, profile, run, shares, warm, write_configs, Attempt, CellResult, ConfigFile, NodeReport, Shown, GroupResult, NodePrepared, Outcome, Prepared, RunOptions, Span, StepResult, StepStatus, DEADLINE, INTERACTIVE,
};
pub use deploy::{plan, tar, DeployCommand, DeployPlan};
pub use machine::{describe, Machine, StepError};
pub use transcript::{Record, Transcript};
