//! Compute backends: where `cove worker` processes run. Only this crate starts or stops them.
//!
//! Every backend runs the same worker, which leases mini-batches over HTTP, so a backend's whole job is
//! to keep `instance_count` workers alive for a job while it has work and to stop them when it ends.
//! `local` runs them as child processes of the control plane; `slurm` submits them as an array job.

pub mod local;
pub mod slurm;

pub use local::LocalCompute;
