//! What the control plane and the worker side both need, and nothing that runs a model or user code:
//! safe opening of files beneath a folder, the environment's content address and the package index's
//! client, the sandbox probe, the names of model files, and the protocol of the child processes in
//! which the control plane has worker-side code do work for it (checking a model, building an
//! environment). The control plane links this crate, never `cove-worker` or `cove-onnx`.

pub mod beneath;
pub mod children;
pub mod environment;
pub mod sandbox_probe;

/// The file name of Cove's scoring script for MLflow models deployed with no scoring script.
pub const MLFLOW_SCRIPT_NAME: &str = "cove_mlflow_score.py";

/// Builds a client of a service in the private network (a datastore, the package index) that verifies
/// HTTPS against the system's CAs and `ca`, the CA its private endpoint names; it never uses a proxy.
pub fn trusting(builder: reqwest::ClientBuilder, ca: Option<&str>) -> reqwest::Result<reqwest::Client> {
    let mut builder = builder.no_proxy();
    if let Some(pem) = ca {
        for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build()
}

/// The model file inside a registered model: the path itself when it is a `.onnx` file, otherwise the
/// one `.onnx` file directly inside the folder.
///
/// # Errors
/// A message naming the problem when there is no `.onnx` file or more than one.
pub fn find_model_file<'a>(files: impl IntoIterator<Item = &'a str>) -> Result<&'a str, String> {
    let found: Vec<&str> = files.into_iter().filter(|f| is_onnx_file(f)).collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err("the model holds no .onnx file".into()),
        many => Err(format!("the model holds {} .onnx files ({}); keep exactly one", many.len(), many.join(", "))),
    }
}

/// Whether `name`, a file directly in a model folder, is an ONNX model file.
pub fn is_onnx_file(name: &str) -> bool {
    !name.contains('/') && name.to_ascii_lowercase().ends_with(".onnx")
}
