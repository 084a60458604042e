//! Integration tests: each starts a real control plane (`cove up`) on an ephemeral loopback port and
//! drives it through the `cove` CLI and its HTTP API.

mod access;
mod attacks;
mod azure;
mod blobstores;
mod crash;
mod datastores;
mod diagnose;
mod ended;
mod environments;
mod faults;
mod firstrun;
mod fuzz;
mod gcs;
mod invoke;
mod isolation;
mod load;
mod onnx;
mod quickstart;
mod resources;
mod sandbox;
mod scoring;
mod service;
mod slurm;
mod studio;
mod support;
mod testbed;
mod tidy;
mod tls;
