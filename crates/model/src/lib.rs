//! Cove's core vocabulary, shared by the control plane, the worker and the CLI.
//!
//! Owns the job status set, the mini-batch plan arithmetic and the job policy (what happens after an
//! attempt, when a job fails or is ready to finalize). Everything here is pure: no IO, no async, no SQL,
//! so the rules that decide a job's fate can be tested exhaustively on their own.

mod plan;
mod policy;
mod status;

pub use plan::{batch_count, batch_range};
pub use policy::{after_attempt, job_verdict, AttemptOutcome, BatchNext, JobCounters, JobPolicy, JobVerdict};
pub use status::{BatchState, JobStatus};
