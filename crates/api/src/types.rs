//! JSON types of the user-facing REST API (`/api/v1/...` and the scoring URIs).

use cove_model::JobStatus;
use cove_spec::{DeploymentSettings, DeploymentSpec, EndpointSpec, ModelType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workspace {
    pub name: String,
    pub api_url: String,
    pub default_datastore: String,
    pub default_python: String,
    /// `namespaces`, or `none` when the workspace explicitly runs scoring code without a sandbox.
    pub sandbox: String,
    pub datastores: Vec<Datastore>,
    pub computes: Vec<Compute>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Datastore {
    pub name: String,
    /// `local` (a folder on the control plane's host) or `s3` (an S3-compatible store).
    pub kind: String,
    /// The folder, or `s3://<bucket>`.
    pub root: String,
    /// Where an `s3` store is reached; in a private workspace, one of its private endpoints.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `POST /api/v1/datastores`: registers a datastore (`s3`, `azure_blob`, `azure_data_lake_gen2`, `gcs`
/// or `local`). Secrets are kept in a file only the workspace's owner can read, and never returned.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDatastore {
    pub name: String,
    /// `s3` (the default) or `local`: a folder on the control plane's host, its path in `path`.
    #[serde(rename = "type", default = "s3", skip_serializing_if = "is_s3")]
    pub kind: String,
    /// A `local` datastore's folder: an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub bucket: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: String,
    /// `azure_blob` and `azure_data_lake_gen2`: the storage account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// `azure_blob`: the container; `azure_data_lake_gen2` calls it `filesystem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// The account's blob service URL (`http://ADDRESS/ACCOUNT` for a private endpoint by address or
    /// an emulator); otherwise `https://ACCOUNT.blob.<endpoint>`, `endpoint` being the storage suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The account key or a SAS token, read by the CLI from a file readable only by its owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sas_token: Option<String>,
    /// `gcs`: the service account's key file (JSON), read by the CLI from a file readable only by its owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_key: Option<String>,
}

fn s3() -> String {
    "s3".to_string()
}

fn is_s3(kind: &String) -> bool {
    kind == "s3"
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compute {
    pub name: String,
    /// `local`, `external` (workers dial in), `amlcompute` (a named cluster on this host) or `slurm`.
    pub kind: String,
    pub max_instances: u32,
    #[serde(default)]
    pub slurm: Option<SlurmSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aml: Option<AmlComputeSpec>,
}

/// `cove compute create -f compute.yml` with the reference's `type: amlcompute`: a named cluster of
/// worker processes on this host, started per job (scale to zero between jobs), at most
/// `max_instances` at a time. `size`, `tier`, `location` and the scale-down time are recorded and shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmlComputeSpec {
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The reference's VM size (`STANDARD_DS3_v2`); this host's processes run whatever it is.
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub min_instances: u32,
    #[serde(default = "one")]
    pub max_instances: u32,
    /// Seconds; recorded (Cove's workers end with their job).
    #[serde(default = "default_idle")]
    pub idle_time_before_scale_down: u64,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn default_idle() -> u64 {
    120
}

/// `cove compute create -f compute.yml` with `type: slurm`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ComputeSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub partition: String,
    #[serde(default = "one")]
    pub max_nodes: u32,
    #[serde(default = "one")]
    pub cpus_per_task: u32,
    #[serde(default = "default_mem")]
    pub mem_per_task_mb: u64,
    /// Slurm's `--time`, e.g. `01:00:00`.
    #[serde(default = "default_time")]
    pub time_limit: String,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub qos: Option<String>,
    /// The private network the cluster's nodes are on; the API endpoint's network by default.
    #[serde(default)]
    pub network: Option<String>,
    /// The `slurm.conf` its clients use, when not the control plane's own (`SLURM_CONF`).
    #[serde(default)]
    pub slurm_conf: Option<String>,
    /// How long, in seconds, a job's workers may wait for nodes that are down, drained or reserved
    /// before the job fails for lack of capacity (30 minutes by default).
    #[serde(default = "default_capacity_wait")]
    pub capacity_wait: u64,
    /// A folder on storage every node mounts at the same path, where workers build the environments
    /// of jobs on this cluster (the first worker that needs one builds it, the others wait for it).
    /// Without it, environments are built on the control plane's host, which the nodes must share.
    #[serde(default)]
    pub environment_cache: Option<String>,
    /// Local datastores whose folder every node mounts at the same path (NFS, Lustre, GPFS): jobs
    /// reading them have their inputs read in place on the nodes, not sent through the control plane.
    #[serde(default)]
    pub shared_datastores: Vec<String>,
}

fn default_capacity_wait() -> u64 {
    1800
}

fn one() -> u32 {
    1
}
fn default_mem() -> u64 {
    1024
}
fn default_time() -> String {
    "01:00:00".to_string()
}

/// A Slurm compute cluster as stored.
pub type SlurmSpec = ComputeSpec;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(flatten)]
    pub spec: EndpointSpec,
    pub scoring_uri: String,
    pub openapi_uri: String,
    pub provisioning_state: String,
    pub created_at: String,
    pub deployments: Vec<String>,
    /// Who can reach the scoring URI: private whenever the workspace is.
    #[serde(default)]
    pub network_access: String,
}

/// `PATCH /api/v1/endpoints/{name}`: the updatable fields, as `--set key=value` pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateEndpoint {
    pub set: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateDeployment {
    /// The spec with local paths already uploaded: an inline model is registered first and referenced
    /// by name and version, and `code_configuration.code` is a datastore URI.
    pub spec: DeploymentSpec,
    /// The contents of the environment's conda file, when it has one.
    #[serde(default)]
    pub conda_file: Option<String>,
    /// The contents of the environment's pip requirements file, when it has one.
    #[serde(default)]
    pub pip_file: Option<String>,
    /// For an inline model: the datastore URI its files were uploaded to. The control plane registers
    /// it as the next version of the model in the same step that creates the deployment.
    #[serde(default)]
    pub model_upload: Option<String>,
    #[serde(default)]
    pub set_default: bool,
    #[serde(default)]
    pub skip_script_validation: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    pub name: String,
    pub endpoint_name: String,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub model: ModelVersionRef,
    pub code_uri: Option<String>,
    pub scoring_script: Option<String>,
    /// A no-code ONNX deployment's model file, relative to the model's folder: scored natively by the
    /// worker, with no scoring script and no Python.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_model: Option<String>,
    /// A scoring script of Cove's own (`mlflow`: the driver of an MLflow model deployed with no script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin_script: Option<String>,
    pub python: String,
    /// The environment Cove built for it; none means the workspace's default interpreter (or no Python).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<DeploymentEnvironment>,
    pub compute: String,
    /// How its scoring code runs: `namespaces`, or `none` (a warning) by the workspace's explicit choice.
    #[serde(default)]
    pub sandbox: String,
    /// Private endpoints its scoring code may reach from the sandbox.
    #[serde(default)]
    pub egress: Vec<String>,
    pub settings: DeploymentSettings,
    pub provisioning_state: String,
    pub is_default: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModelVersionRef {
    pub name: String,
    pub version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateModel {
    pub name: String,
    /// A datastore URI of the uploaded file or folder.
    pub path: String,
    pub model_type: ModelType,
    #[serde(default)]
    pub description: Option<String>,
    /// A new version number; the next one when left out.
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Model {
    pub name: String,
    pub version: u32,
    pub path: String,
    pub model_type: ModelType,
    pub description: Option<String>,
    pub created_at: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Archived versions stay usable by name and version but are never `latest`.
    #[serde(default)]
    pub archived: bool,
    /// The digest of its files when registered (`sha256:` over each file's path, size and sha256): a
    /// job of a version whose files no longer match is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A data asset: a named, versioned datastore location, as the reference's `az ml data` registers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataAsset {
    pub name: String,
    pub version: u32,
    #[serde(rename = "type")]
    pub kind: InputType,
    /// The datastore URI of the file or folder.
    pub path: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub created_at: String,
    /// The digest of its files when registered, as a model version's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A registered environment: the reference's environment YAML with its files' contents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Environment {
    pub name: String,
    pub version: u32,
    #[serde(default)]
    pub description: Option<String>,
    /// The image the reference would run; Cove builds from the conda and pip files instead.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub conda_file: Option<String>,
    #[serde(default)]
    pub pip_file: Option<String>,
    #[serde(default)]
    pub overrides: Vec<String>,
    #[serde(default)]
    pub allow_source_builds: bool,
    pub created_at: String,
}

/// `POST /api/v1/environments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    pub definition: cove_spec::EnvironmentDefinition,
    #[serde(default)]
    pub conda_file: Option<String>,
    #[serde(default)]
    pub pip_file: Option<String>,
}

/// `GET /api/v1/environments/{name}/versions/{version}`: the environment and the builds made from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvironmentDetail {
    pub environment: Environment,
    pub builds: Vec<EnvironmentBuildInfo>,
}

/// One built environment, as the deployments using it see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvironmentBuildInfo {
    pub key: String,
    pub deployments: Vec<String>,
    pub log: String,
    /// The end of the build log.
    pub log_tail: String,
}

/// What a deployment runs in, when Cove built its environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeploymentEnvironment {
    /// Where the specification came from: `inline`, `azureml:name:3`, or the MLflow model's files.
    pub source: String,
    /// The content address of the build, shared by every deployment asking for the same thing.
    pub key: String,
    /// The base interpreter and its version.
    pub interpreter: String,
    /// The conda file's `python` entry, when it has one.
    #[serde(default)]
    pub python_pin: Option<String>,
    /// The image the YAML names, which Cove does not run.
    #[serde(default)]
    pub image_not_used: Option<String>,
    /// Overrides that replaced a pin of a package in this environment.
    #[serde(default)]
    pub overrides_applied: Vec<String>,
    /// Entries of the files that were mapped or left out, and why.
    #[serde(default)]
    pub notes: Vec<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The build log, on the host that built it.
    pub log: String,
    /// What any host needs to build the same environment (the lock lists every installed package).
    pub build: crate::worker::EnvironmentBuild,
}

/// `POST /api/v1/data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDataAsset {
    pub name: String,
    /// A new version number; the next one when left out.
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(rename = "type")]
    pub kind: InputType,
    /// A datastore URI (a local path is uploaded by the CLI first).
    pub path: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputType {
    UriFolder,
    UriFile,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInput {
    pub uri: String,
    #[serde(rename = "type")]
    pub input_type: InputType,
}

/// Cove's own invocation body (`POST /endpoints/{name}/jobs`); the Azure ML body is accepted too.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Invoke {
    pub input: Option<JobInput>,
    #[serde(default)]
    pub deployment_name: Option<String>,
    #[serde(default)]
    pub output_path: Option<String>,
    /// Per-job overrides such as `mini_batch_size=5` (see `DeploymentSettings::apply_override`).
    #[serde(default)]
    pub overrides: BTreeMap<String, String>,
    #[serde(default)]
    pub job_name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    pub files_total: u64,
    pub batches_total: u64,
    pub batches_pending: u64,
    pub batches_running: u64,
    pub batches_succeeded: u64,
    pub batches_failed: u64,
    /// Mini-batches of an ended job that did not run to the end (canceled, or the job failed first).
    #[serde(default)]
    pub batches_not_run: u64,
    pub items_ok: u64,
    pub items_failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedBatch {
    pub index: u64,
    pub first_file: String,
    pub files: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub name: String,
    pub endpoint_name: String,
    pub deployment_name: String,
    pub status: JobStatus,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub input: JobInput,
    /// The `score` output folder, as a datastore URI.
    pub output_uri: String,
    pub output_file_name: Option<String>,
    pub settings: DeploymentSettings,
    pub compute: String,
    pub progress: Progress,
    /// Why the job failed or was canceled, in one sentence.
    pub error: Option<String>,
    /// The mini-batches that were given up, with their last reason.
    pub failed_batches: Vec<FailedBatch>,
    pub idempotency_key: Option<String>,
    /// What the compute backend says about the job's workers (e.g. the Slurm job and its tasks' states).
    #[serde(default)]
    pub compute_state: Option<String>,
    /// Every attempt with what it ran under (only in `cove job show`, at most the first 1,000).
    #[serde(default)]
    pub attempts: Vec<AttemptInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptInfo {
    pub mini_batch: u64,
    pub attempt: u32,
    pub node: String,
    pub process: u32,
    #[serde(default)]
    pub started_at: String,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// Sandbox, namespaces, file view, limits, allowed egress, and network attempts.
    pub isolation: Option<serde_json::Value>,
}

impl Job {
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

/// One entry of the append-only audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub time: String,
    /// The token id and role (`a1b2c3d4 (owner)`), or `-` when no valid token was presented.
    pub principal: String,
    pub source: String,
    pub action: String,
    pub resource: String,
    /// `ok`, or `refused: <why>` / `failed: <why>` with the HTTP status.
    pub outcome: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateToken {
    pub role: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Seconds until the token expires; none means never.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    pub kind: String,
    pub role: String,
    pub endpoint: Option<String>,
    pub compute: Option<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked: bool,
    /// The secret, shown once when the token is created; never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// What a worker host needs to serve a compute cluster (`cove compute credential`): a worker token and
/// a client certificate bound to the cluster, with the CA that verifies the control plane. Shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerCredential {
    pub compute: String,
    pub token_id: String,
    pub token: String,
    pub certificate: String,
    pub key: String,
    pub ca: String,
    pub expires_at: String,
}

/// What `cove compute revoke-credential` took away.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialRevoked {
    pub compute: String,
    pub certificates: usize,
    pub tokens: usize,
}

/// What `cove workspace rotate-certificates` renewed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotatedCertificates {
    /// When the listeners' new certificate expires.
    pub server_expires_at: String,
    /// The file the listeners' certificate was read again from, when the user brings it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate_from: Option<String>,
    /// The compute clusters on this host whose workers got new certificates.
    pub computes: Vec<String>,
}

/// `GET /readyz`: whether the control plane can do its work now, check by check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<ReadinessCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadinessCheck {
    pub name: String,
    pub ready: bool,
    pub detail: String,
}

/// One line of `cove workspace diagnose`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    /// `ok`, `warn` or `fail`.
    pub status: String,
    pub detail: String,
    /// How to fix a failing check.
    pub fix: Option<String>,
}

/// One file of a stored folder, for downloads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
}
