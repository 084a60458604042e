//! Compute backends: where `cove worker` processes run. Only this crate starts or stops them.
//!
//! Every backend runs the same worker, which leases mini-batches over HTTP, so a backend's whole job is
//! to keep `instance_count` workers alive for a job while it has work and to stop them when it ends.
//! `local` runs them as child processes of the control plane; `slurm` submits them as an array job.

pub mod local;
pub mod slurm;

pub use local::LocalCompute;
pub use slurm::Slurm;

/// Why a backend could not start, reach or stop a job's workers. The message is the user's: it names
/// the command and what it said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError {
    /// The scheduler's command could not be run, or did not answer in time.
    #[error("{0}")]
    Unreachable(String),
    /// The scheduler ran the command and refused it; the last line it wrote says why.
    #[error("{0}")]
    Refused(String),
    /// The cluster's configuration does not fit the scheduler (a partition, a limit).
    #[error("{0}")]
    Invalid(String),
    /// The cluster's worker credential, or the files handed to its workers, could not be prepared.
    #[error("{0}")]
    Credential(String),
}

/// A job's workers, as every backend is asked for them: `instances` workers, each running
/// `concurrency` scorer processes.
#[derive(Debug, Clone, Copy)]
pub struct JobWorkers<'a> {
    pub job: &'a str,
    pub instances: u32,
    pub concurrency: u32,
}

/// What every compute backend does: start a job's workers, and stop them. The lease protocol does the
/// rest, so nothing else differs between backends.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Starts (or submits) the job's workers; returns the scheduler's reference to them, if it has one.
    async fn start(&self, workers: JobWorkers<'_>) -> Result<Option<String>, ComputeError>;
    /// Stops the job's workers (`reference`: what `start` returned) and waits until they are gone, as
    /// far as the backend can tell.
    async fn stop(&self, job: &str, reference: Option<&str>);
}
