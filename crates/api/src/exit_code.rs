//! The documented exit codes of the `cove` command.

/// Success.
pub const OK: i32 = 0;
/// The job (or the quickstart) ended Failed or Canceled.
pub const JOB_FAILED: i32 = 1;
/// A usage, configuration or validation error: nothing was changed.
pub const USAGE: i32 = 2;
/// The control plane could not be reached.
pub const UNREACHABLE: i32 = 3;
/// The control plane refused the call (no token, wrong role or scope, or a refused network).
pub const REFUSED: i32 = 4;
/// The named resource does not exist.
pub const NOT_FOUND: i32 = 5;
