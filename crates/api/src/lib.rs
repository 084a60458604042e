//! Cove's wire contract: the JSON types of the REST API, the typed client the CLI and the worker use, and
//! the CLI's exit codes. Small and stable: it holds no logic beyond (de)serialising and calling.

mod client;
pub mod exit_code;
pub mod pause;
pub mod redact;
mod types;
pub mod worker;

pub use client::{encode, Client, ClientError};
pub use reqwest::Method;
pub use types::*;
