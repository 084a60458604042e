//! The worker protocol: how a `cove worker` leases mini-batches from the control plane and reports them.
//!
//! Workers only dial out. Everything a scorer needs (model, code, input files) is fetched through the
//! lease that authorises it, and everything it produces (the part, logs) is sent back the same way.

use cove_spec::{Limits, LoggingLevel, OutputAction};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /worker/v1/lease`: ask for mini-batches, waiting up to `wait_ms` for one to appear.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The node (instance) name, as it appears in log paths.
    pub node: String,
    /// The scorer process slot on that node.
    pub process: u32,
    /// Lease only from this job (workers launched for one job), or from any job on the compute.
    pub job: Option<String>,
    pub wait_ms: u64,
    /// What the worker's host can do. A worker that does not say is taken to be unable to sandbox.
    #[serde(default)]
    pub host: HostCapabilities,
    /// How many mini-batches the worker would take at once (one slot works them in turn and reports
    /// them together), so a job of quick mini-batches costs one request per several. The control plane
    /// grants at most [`MAX_BATCHES_PER_GRANT`], and fewer as the job's remaining work shrinks, so
    /// that no slot holds work another one could be doing.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub batches: u32,
    /// How many granted mini-batches the slot still holds: asking while holding some is asking for
    /// work to have in hand when the current runs out, which is granted only while the job has plenty
    /// pending (never at its end, where it would leave another slot idle).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holding: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The most mini-batches one lease request or report is granted.
pub const MAX_BATCHES_PER_GRANT: u32 = 64;

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// What a worker's host can do, checked on that host (not on the control plane's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostCapabilities {
    /// Whether the host can build the scoring sandbox.
    pub sandbox: bool,
    /// Why it cannot, when it cannot.
    #[serde(default)]
    pub sandbox_problem: Option<String>,
    /// The worker's Cove version.
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub lease: Option<Lease>,
    /// Further mini-batches of the same job granted with `lease`, when the worker asked for several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Lease>,
    /// True when the requested job has no work left and never will: a job-bound worker exits.
    pub job_done: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub lease_id: String,
    pub job: String,
    pub batch_index: u64,
    pub attempt: u32,
    /// Milliseconds left until the lease expires, measured by the control plane when it was granted.
    pub expires_in_ms: u64,
    /// The base names of the mini-batch's files, in manifest order; fetch them by position.
    pub files: Vec<String>,
    pub run: RunSpec,
    /// When the worker's host sees the job's input folder (a local datastore on this host, or on a
    /// filesystem every node mounts at the same path): read the files there, in place, instead of
    /// fetching them through the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place: Option<InPlace>,
    /// When the compute's network reaches the input's network datastore through its private endpoint:
    /// a short-lived URL per file (in `files` order), signed for reading that file only, so the worker
    /// reads straight from the store, without the store's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_inputs: Option<Vec<String>>,
    /// The CA (PEM) that signed the store's certificate, when its private endpoint names one: the
    /// worker verifies the store against it (and the system's CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_inputs_ca: Option<String>,
}

/// A mini-batch's files where the worker's host sees them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InPlace {
    /// The local datastore's folder.
    pub root: String,
    /// The files beneath it, in the order of `Lease::files`.
    pub paths: Vec<String>,
}

/// What a scorer process for a job runs: the same for every lease of the job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunSpec {
    /// Identifies the model/code snapshot, so workers cache assets across leases.
    pub snapshot: String,
    pub scoring_script: Option<String>,
    /// A no-code ONNX deployment's model file, relative to `AZUREML_MODEL_DIR`: the worker scores it
    /// itself (no scorer process, no Python).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_model: Option<String>,
    /// The registered model folder or file name, kept as a sub-directory of `AZUREML_MODEL_DIR`.
    pub model_dir_name: String,
    pub python: String,
    pub environment_variables: BTreeMap<String, String>,
    pub logging_level: LoggingLevel,
    pub output_action: OutputAction,
    pub timeout_secs: u64,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub sandbox: SandboxMode,
    /// The only addresses scoring code may reach, each through the worker.
    #[serde(default)]
    pub egress: Vec<EgressTarget>,
    /// The environment `python` belongs to: a worker whose host lacks it builds it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentBuild>,
    /// A scoring script of Cove's own that the worker supplies (`mlflow`: the MLflow no-code driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin_script: Option<String>,
}

/// Everything needed to build one environment on any host: the resolved requirements and the base
/// interpreter. The same request always builds the same environment, under `root/key`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvironmentBuild {
    /// The content address: a digest of the lock, the interpreter and the platform.
    pub key: String,
    /// Fully pinned requirements, one per line, as the resolver wrote them.
    pub lock: String,
    /// The base interpreter the environment is made from.
    pub python: String,
    /// The folder that holds built environments on the worker's host (the compute's environment cache).
    pub root: String,
    pub source: PackageSource,
    #[serde(default)]
    pub allow_source_builds: bool,
}

/// Where environment builds get packages: nothing else is reachable from a build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PackageSource {
    /// A package index (the simple API) reached only through its private endpoint at `address`; over
    /// HTTPS verified against `ca` (PEM), the CA its private endpoint names, when it names one.
    Index {
        url: String,
        address: std::net::SocketAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca: Option<String>,
    },
    /// A folder of wheels on the building host, for hosts with no network at all.
    Wheels { dir: String },
}

impl std::fmt::Display for PackageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackageSource::Index { url, .. } => write!(f, "the package index {url}"),
            PackageSource::Wheels { dir } => write!(f, "the wheel folder {dir}"),
        }
    }
}

/// A private endpoint a deployment allows its scoring code to reach.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressTarget {
    pub name: String,
    pub address: std::net::SocketAddr,
}

/// Whether scorer processes run in the sandbox. `None` is an explicit workspace choice, reported as a
/// warning wherever it shows.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    #[default]
    Namespaces,
    None,
}

impl SandboxMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespaces => "namespaces",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReportedOutcome {
    Succeeded,
    Failed,
    TimedOut,
    InitFailed,
}

/// `POST /worker/v1/leases/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion {
    pub outcome: ReportedOutcome,
    #[serde(default)]
    pub items_ok: u64,
    #[serde(default)]
    pub items_failed: u64,
    #[serde(default)]
    pub reason: Option<String>,
    pub elapsed_ms: u64,
    /// The operating-system pid of the scorer process, for the per-mini-batch report.
    pub pid: u32,
    /// What the attempt ran under: sandbox, file view, limits, and its network attempts.
    #[serde(default)]
    pub isolation: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionAck {
    /// True when this attempt's part became the mini-batch's committed output.
    pub committed: bool,
    /// False once the job is terminal or canceling: the worker stops working on it.
    pub job_active: bool,
}

/// The largest report body: a part beyond this goes first with `PUT part`, streamed.
pub const REPORT_LIMIT: usize = 16 * 1024 * 1024;

/// The most files one attempt may leave in `AZUREML_BI_OUTPUT_PATH`, and their largest total size:
/// what a scorer writes is hostile input, and neither the worker nor the control plane may take it
/// without a bound.
pub const MAX_OUTPUT_FILES: u64 = 10_000;
pub const MAX_OUTPUT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// `POST /worker/v1/credential`: a new client certificate for the caller's compute, which a worker asks
/// for before its own expires; the one it has stays valid until then.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewedCredential {
    pub cert_pem: String,
    pub key_pem: String,
    /// Unix seconds after which the new certificate is no longer valid.
    pub not_after: i64,
}

/// `POST /worker/v1/reports`: the reports of attempts a worker slot ran in turn and, optionally, the
/// request for its next lease, answered in the same round trip. The body is a [`bundle`]: this as JSON,
/// then the result part of each report that says it has one, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reports {
    pub reports: Vec<AttemptReport>,
    #[serde(default)]
    pub next: Option<LeaseRequest>,
}

/// One attempt's report within [`Reports`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptReport {
    pub lease_id: String,
    pub completion: Completion,
    /// Whether the attempt's result part follows in the bundle.
    #[serde(default)]
    pub part: bool,
}

/// The answer to [`Reports`]: each report's acknowledgement, in order, and, when the worker asked and
/// work was there at once, its next leases (an answer without any says nothing about the job being
/// done: the worker asks again, waiting).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportsAck {
    pub acks: Vec<CompletionAck>,
    #[serde(default)]
    pub next: Vec<Lease>,
}

/// `GET /worker/v1/leases/{id}/assets/{model|code}`: the files of an asset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssetListing {
    pub files: Vec<crate::FileEntry>,
}

/// A lease's input files in one response (`GET /worker/v1/leases/{lease}/files`), so a mini-batch of
/// many small files costs one round trip. Per file, in lease order: a tag byte (0: its contents follow;
/// 1: why it could not be read follows, as UTF-8), a little-endian `u64` length, and that many bytes.
pub mod bundle {
    use bytes::{Buf, Bytes};

    /// A bundle of `items`, as the chunks to send one after another: each item's frame header, then
    /// the item itself, not copied (a result part is megabytes).
    pub fn chunks(items: impl IntoIterator<Item = Bytes>) -> Vec<Bytes> {
        let mut out = Vec::new();
        for item in items {
            out.push(Bytes::copy_from_slice(&header(0, item.len())));
            out.push(item);
        }
        out
    }

    /// An item's frame header: its tag (0 for content, 1 for a reason it is missing), then its length.
    fn header(tag: u8, len: usize) -> [u8; 9] {
        let mut h = [tag; 9];
        h[1..].copy_from_slice(&(len as u64).to_le_bytes());
        h
    }

    pub fn push(out: &mut Vec<u8>, item: Result<&[u8], &str>) {
        let (tag, body) = match item {
            Ok(b) => (0u8, b),
            Err(reason) => (1u8, reason.as_bytes()),
        };
        out.extend_from_slice(&header(tag, body.len()));
        out.extend_from_slice(body);
    }

    /// Splits a bundle without copying the file contents.
    ///
    /// # Errors
    /// When the bytes are not a well-formed bundle (truncated, or an unknown tag).
    pub fn split(data: Bytes) -> Result<Vec<Result<Bytes, String>>, String> {
        Ok(split_chunks(vec![data])?.into_iter().map(|item| item.map(|pieces| pieces.to_bytes())).collect())
    }

    /// One item of a bundle that arrived as chunks: the pieces of the chunks it spans, not copied.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Pieces(pub Vec<Bytes>);

    impl Pieces {
        pub fn len(&self) -> usize {
            self.0.iter().map(Bytes::len).sum()
        }

        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        /// The item as one buffer, copied only when it spans chunks.
        pub fn to_bytes(&self) -> Bytes {
            match self.0.as_slice() {
                [] => Bytes::new(),
                [one] => one.clone(),
                many => Bytes::from(many.concat()),
            }
        }
    }

    /// Splits a bundle that arrived as `chunks` (a request body as it was read) without copying: a
    /// result part of megabytes stays the pieces it came in.
    ///
    /// # Errors
    /// When the bytes are not a well-formed bundle (truncated, or an unknown tag).
    pub fn split_chunks(chunks: Vec<Bytes>) -> Result<Vec<Result<Pieces, String>>, String> {
        let mut rest: std::collections::VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let mut left = rest.iter().map(Bytes::len).sum::<usize>();
        let mut items = Vec::new();
        while left > 0 {
            let head = take(&mut rest, &mut left, 9).ok_or("truncated file bundle")?.to_bytes();
            let mut head = &head[..];
            let tag = head.get_u8();
            let len = usize::try_from(head.get_u64_le()).map_err(|_| "oversized entry in file bundle")?;
            let body = take(&mut rest, &mut left, len).ok_or("truncated file bundle")?;
            items.push(match tag {
                0 => Ok(body),
                1 => Err(String::from_utf8_lossy(&body.to_bytes()).into_owned()),
                t => return Err(format!("unknown tag {t} in file bundle")),
            });
        }
        Ok(items)
    }

    /// The next `len` bytes of `rest` (of which `left` remain), as pieces of its chunks; `None` when
    /// fewer remain.
    fn take(rest: &mut std::collections::VecDeque<Bytes>, left: &mut usize, len: usize) -> Option<Pieces> {
        *left = left.checked_sub(len)?;
        let mut pieces = Vec::new();
        let mut wanted = len;
        while wanted > 0 {
            let front = rest.front_mut().expect("enough bytes remain");
            if front.len() <= wanted {
                wanted -= front.len();
                pieces.push(rest.pop_front().expect("checked"));
            } else {
                pieces.push(front.split_to(wanted));
                wanted = 0;
            }
        }
        Some(Pieces(pieces))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn bundles_round_trip_and_truncation_is_refused() {
            let mut out = Vec::new();
            push(&mut out, Ok(b"a,b\n1,2\n"));
            push(&mut out, Err("cannot read"));
            push(&mut out, Ok(b""));
            let items = split(Bytes::from(out.clone())).unwrap();
            assert_eq!(
                items,
                vec![Ok(Bytes::from_static(b"a,b\n1,2\n")), Err("cannot read".to_string()), Ok(Bytes::new())]
            );
            for cut in 1..out.len() - 1 {
                if cut == 17 || cut == 37 {
                    continue; // whole entries
                }
                assert!(split(Bytes::from(out[..cut].to_vec())).is_err(), "cut at {cut}");
            }
        }

        #[test]
        fn a_bundle_sent_as_chunks_is_the_bundle_pushed_whole() {
            let items = [Bytes::from_static(b"{\"reports\":[]}"), Bytes::new(), Bytes::from(vec![7u8; 100_000])];
            let mut whole = Vec::new();
            for item in &items {
                push(&mut whole, Ok(item));
            }
            let chunks = chunks(items.clone());
            assert!(chunks.iter().any(|c| c.as_ptr() == items[2].as_ptr()), "the large item is sent as it is");
            assert_eq!(chunks.concat(), whole);
            assert_eq!(split(Bytes::from(chunks.concat())).unwrap(), items.clone().map(Ok).to_vec());
        }

        #[test]
        fn a_bundle_split_as_it_arrived_is_the_bundle_split_whole() {
            let mut whole = Vec::new();
            push(&mut whole, Ok(b"{\"reports\":[]}"));
            push(&mut whole, Err("cannot read"));
            push(&mut whole, Ok(b""));
            push(&mut whole, Ok(&[7u8; 1000]));
            let expected = split(Bytes::from(whole.clone())).unwrap();
            // Every way of cutting it into chunks of one size, headers and bodies cut anywhere.
            for size in [1, 2, 5, 9, 10, 17, 64, 999, whole.len()] {
                let chunks: Vec<Bytes> = whole.chunks(size).map(Bytes::copy_from_slice).collect();
                let items = split_chunks(chunks.clone()).unwrap();
                let joined: Vec<Result<Bytes, String>> =
                    items.iter().map(|i| i.clone().map(|p| p.to_bytes())).collect();
                assert_eq!(joined, expected, "chunks of {size}");
                // The large item is the chunks themselves, not a copy of them.
                let Ok(large) = &items[3] else { panic!("the large item is content") };
                assert!(large.0.iter().all(|p| chunks.iter().any(|c| c.as_ptr_range().contains(&p.as_ptr()))));
                for cut in 1..chunks.len() {
                    let cut_at = chunks[..cut].iter().map(Bytes::len).sum::<usize>();
                    if [0, 23, 43, 52, whole.len()].contains(&cut_at) {
                        continue; // whole entries
                    }
                    assert!(split_chunks(chunks[..cut].to_vec()).is_err(), "chunks of {size}, cut at {cut_at}");
                }
            }
        }
    }
}
