//! Documented exit codes of the `xdriver` binary (docs/cli.md).

/// Everything worked (for `run`: the command exited 0).
pub const SUCCESS: i32 = 0;
/// Usage error: bad flags, unknown image name, invalid `--share` (clap
/// uses 2 for its own parse errors too).
pub const USAGE: i32 = 2;
/// `xdriver test` ran no cell: every selected cell was skipped (or the
/// selection was empty). Nothing that ran nothing is a pass; the same code
/// as nextest's "no tests to run".
pub const NO_CELLS_RUN: i32 = 4;
/// Tests failed (reserved for `xdriver test`, as nextest's 100).
pub const TESTS_FAILED: i32 = 100;
/// Infrastructure failure: an image could not be built, QEMU failed or
/// died, the guest did not come up, a channel broke. Same code as
/// `docker run`/`podman run` use for their own failures.
pub const INFRA: i32 = 125;
/// Interrupted by SIGINT/SIGTERM; VMs were shut down first.
pub const INTERRUPTED: i32 = 130;
