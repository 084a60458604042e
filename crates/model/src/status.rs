//! Job and mini-batch states, with the reference system's status names.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The status of a batch job, named as the reference system names them.
///
/// Typical order: NotStarted → Preparing (listing inputs, writing the plan) → Queued (waiting for a worker)
/// → Running → Finalizing (assembling the output) → Completed | Failed | Canceled.
/// CancelRequested sits between a cancel call and the moment every worker has let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    NotStarted,
    Preparing,
    Queued,
    Running,
    Finalizing,
    CancelRequested,
    Completed,
    Failed,
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 9] = [
        Self::NotStarted,
        Self::Preparing,
        Self::Queued,
        Self::Running,
        Self::Finalizing,
        Self::CancelRequested,
        Self::Completed,
        Self::Failed,
        Self::Canceled,
    ];

    /// Returns true for the states no transition leaves.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }

    /// Returns true while workers may still lease mini-batches of the job.
    pub fn accepts_leases(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "NotStarted",
            Self::Preparing => "Preparing",
            Self::Queued => "Queued",
            Self::Running => "Running",
            Self::Finalizing => "Finalizing",
            Self::CancelRequested => "CancelRequested",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::Canceled => "Canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one mini-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Waiting for a worker (never tried, or to be retried).
    Pending,
    /// Held by a worker until the lease deadline.
    Leased,
    /// One attempt succeeded and its part is the committed one.
    Succeeded,
    /// Every attempt failed; its items count as failed.
    Failed,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Leased => "leased",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Leased, Self::Succeeded, Self::Failed].into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}
