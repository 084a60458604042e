//! The `cove` command: the control plane (`cove up`), the worker (`cove worker`), the quickstart, and
//! the client for everything else. It is glue: it parses, calls `cove_server`, `cove_worker` or
//! `cove_api::Client`, and renders. It holds no scheduling logic.

mod admin;
mod connect;
mod data;
mod environment;
mod jobs;
mod quickstart;
mod render;
mod resources;
mod upload;

use clap::{Parser, Subcommand};
use cove_api::exit_code;
use cove_spec::ModelType;
use std::net::SocketAddr;
use std::path::PathBuf;

/// mimalloc keeps the memory of a freed result part for the next one; glibc's allocator gave the
/// megabytes back to the kernel, and each part then paid to fault them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cove",
    version,
    about = "Private batch endpoints: deploy a model, invoke it on a folder of files, get predictions"
)]
struct Cli {
    #[command(flatten)]
    target: connect::Target,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// How log lines are written to stderr: `json` (one object per line) or `text`; by default JSON
    /// when stdout is not a terminal (a service, a pipe), else text. `RUST_LOG` filters them.
    #[arg(long, global = true, value_enum, env = "COVE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// A resource's name, given as `az ml` takes it (`-n/--name NAME`) or as a plain argument.
#[derive(clap::Args)]
struct NameArg {
    /// The name.
    #[arg(value_name = "NAME", required_unless_present = "name_flag", conflicts_with = "name_flag")]
    positional: Option<String>,
    /// The name, as `az ml` takes it.
    #[arg(short = 'n', long = "name", id = "name_flag", value_name = "NAME")]
    flag: Option<String>,
}

impl NameArg {
    fn get(self) -> String {
        self.positional.or(self.flag).expect("clap requires one of them")
    }
}

/// Asks a yes/no question on a terminal; elsewhere (a script, CI) there is nobody to ask, so the
/// command must say --yes.
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question} Nobody can answer here: add --yes");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

#[derive(clap::Args)]
struct UpArgs {
    /// The workspace directory (created if needed).
    #[arg(long)]
    dir: PathBuf,
    /// The address to listen on (127.0.0.1:8470 by default; port 0 picks a free port). A private
    /// workspace listens only on its API private endpoints.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The network configuration: private networks, peerings, private endpoints, computes.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The default Python interpreter for deployments.
    #[arg(long, default_value = "python3")]
    python: String,
    /// `namespaces` runs scoring code in the sandbox (no network, its own file view); `none` runs it
    /// without one, which every deployment and `cove workspace show` then report as a warning.
    #[arg(long, default_value = "namespaces", value_parser = parse_sandbox)]
    sandbox: cove_api::worker::SandboxMode,
    /// The package index environment builds use (its simple API, at a private endpoint's address).
    #[arg(long, value_name = "URL", conflicts_with = "wheels")]
    package_index: Option<String>,
    /// The CA (PEM) that issued an HTTPS index's certificate, when its private endpoint does not name
    /// one with ca_file (a workspace on loopback has no private endpoints to name it on).
    #[arg(long, value_name = "FILE", requires = "package_index")]
    package_index_ca: Option<PathBuf>,
    /// A folder of wheels environment builds use instead of an index, for hosts with no network.
    #[arg(long, value_name = "DIR")]
    wheels: Option<PathBuf>,
    /// Another interpreter a deployment's `python=X.Y` pin may pick (repeatable).
    #[arg(long = "interpreter", value_name = "PATH")]
    interpreters: Vec<String>,
    /// A requirement that replaces any pin of the same package in every environment (repeatable).
    #[arg(long = "environment-override", value_name = "REQUIREMENT")]
    overrides: Vec<String>,
    /// Refuse a deployment whose `python` pin no interpreter matches (the default warns and uses
    /// the default interpreter).
    #[arg(long)]
    strict_python: bool,
    /// On SIGTERM or SIGINT, how long (seconds) to wait for workers to report the mini-batches they
    /// hold before the leases still open are ended (without spending an attempt) and Cove stops.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, env = "COVE_SHUTDOWN_GRACE")]
    shutdown_grace: u64,
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// The compute cluster's worker credential.
    #[arg(long = "worker-token", env = "COVE_WORKER_TOKEN", hide_env_values = true)]
    worker_token: String,
    /// The compute's client certificate (PEM), which the control plane requires of workers.
    #[arg(long, env = "COVE_CLIENT_CERT")]
    client_cert: PathBuf,
    /// The key of that certificate (PEM).
    #[arg(long, env = "COVE_CLIENT_KEY")]
    client_key: PathBuf,
    /// Work only on this job and exit when it has no more work.
    #[arg(long)]
    job: Option<String>,
    /// This instance's name, as it appears in log paths.
    #[arg(long, default_value = "node-0")]
    node: String,
    /// Scorer processes on this instance (max_concurrency_per_instance).
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    #[arg(long)]
    work_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Start a workspace's control plane and serve until stopped.
    Up(UpArgs),
    /// Run a worker that leases mini-batches from a control plane.
    /// The control plane is given by the global --url (or COVE_URL).
    Worker(WorkerArgs),
    /// Score the bundled sample data with the bundled model in a throwaway workspace.
    Quickstart {
        /// Keep the workspace here instead of a new temporary folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show the workspace.
    Workspace {
        #[command(subcommand)]
        command: WorkspaceCommand,
    },
    /// Batch endpoints.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// Batch deployments.
    Deployment {
        #[command(subcommand)]
        command: DeploymentCommand,
    },
    /// Registered models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Environments: conda and pip specifications Cove builds for deployments.
    Environment {
        #[command(subcommand)]
        command: EnvironmentCommand,
    },
    /// Data assets: named, versioned files or folders that jobs take as input.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Batch jobs.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Bearer tokens with roles and scopes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Datastores: where inputs are read and outputs written.
    Datastore {
        #[command(subcommand)]
        command: DatastoreCommand,
    },
    /// Compute clusters.
    Compute {
        #[command(subcommand)]
        command: ComputeCommand,
    },
    /// The append-only audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum WorkspaceCommand {
    Show,
    /// Check the workspace's isolation: one line per check, with the fix; exits 1 when any check fails.
    Diagnose,
    /// Renew the listeners' certificate and the client certificates of the clusters on this host,
    /// without stopping running jobs.
    RotateCertificates,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; its secret is shown once.
    Create {
        #[arg(long)]
        role: String,
        /// Scope the token to one endpoint.
        #[arg(long)]
        endpoint_name: Option<String>,
        /// For example 30m, 12h, 7d.
        #[arg(long)]
        expires_in: Option<String>,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
enum DatastoreCommand {
    /// Register a datastore from its YAML (`-f`: `type: local` with a folder `path`, or `type: s3`), or
    /// an S3-compatible one from flags (in a private workspace, only through its private endpoint).
    Create {
        #[arg(short, long, conflicts_with_all = ["name", "endpoint"])]
        file: Option<PathBuf>,
        #[arg(long, required_unless_present = "file")]
        name: Option<String>,
        /// The store's URL, e.g. http://198.18.3.10:9000.
        #[arg(long, required_unless_present = "file")]
        endpoint: Option<String>,
        #[arg(long, required_unless_present = "file")]
        bucket: Option<String>,
        #[arg(long)]
        region: Option<String>,
        #[arg(long, required_unless_present = "file")]
        access_key_id: Option<String>,
        /// A file holding the secret access key, readable only by its owner.
        #[arg(long, required_unless_present = "file")]
        secret_access_key_file: Option<PathBuf>,
    },
    List,
    Show {
        #[arg(short, long)]
        name: String,
    },
    /// Delete a datastore nothing references (its files stay where they are).
    Delete {
        #[arg(short, long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum ComputeCommand {
    /// Create (or update) a compute cluster from its YAML: the reference's `type: amlcompute` (workers
    /// on this host) or `type: slurm`.
    Create {
        #[arg(short, long)]
        file: PathBuf,
    },
    List,
    /// Show a compute cluster.
    Show {
        #[arg(short, long)]
        name: String,
    },
    /// Delete a compute cluster that no deployment and no unfinished job uses.
    Delete {
        #[arg(short, long)]
        name: String,
    },
    /// Mint a worker token for a compute cluster (accepted only from its network, and only with the
    /// cluster's client certificate: see `credential`).
    Token {
        name: String,
    },
    /// Write what a worker host needs to serve a compute cluster: a worker token, the cluster's client
    /// certificate and key, and the workspace CA, as files in a new folder only you can read.
    Credential {
        name: String,
        /// The folder to write (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke every worker token and client certificate of a compute cluster, at once.
    RevokeCredential {
        name: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// List audit entries, oldest first.
    List {
        /// RFC 3339 time, e.g. 2026-01-31T12:00:00Z.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Create an endpoint from its Azure ML YAML.
    Create {
        #[arg(short, long)]
        file: PathBuf,
        #[arg(short, long)]
        name: Option<String>,
    },
    List,
    Show {
        #[command(flatten)]
        name: NameArg,
    },
    /// The endpoint's jobs (`cove job list --endpoint-name NAME`).
    ListJobs {
        #[command(flatten)]
        name: NameArg,
    },
    /// Change description, tags or the default deployment (`--set defaults.deployment_name=X`).
    Update {
        name: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Delete an endpoint and its deployments (its jobs are kept); asks first on a terminal.
    Delete {
        #[command(flatten)]
        name: NameArg,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// Start a batch job.
    Invoke {
        #[command(flatten)]
        args: jobs::InvokeArgs,
    },
}

fn parse_sandbox(s: &str) -> Result<cove_api::worker::SandboxMode, String> {
    match s {
        "namespaces" => Ok(cove_api::worker::SandboxMode::Namespaces),
        "none" => Ok(cove_api::worker::SandboxMode::None),
        other => Err(format!("`{other}` is not a sandbox mode (namespaces, none)")),
    }
}

#[derive(Subcommand)]
enum DeploymentCommand {
    /// Create or replace a deployment from its Azure ML YAML.
    Create {
        #[arg(short, long)]
        file: PathBuf,
        #[arg(short, long)]
        endpoint_name: Option<String>,
        #[arg(short, long)]
        name: Option<String>,
        #[arg(long)]
        set_default: bool,
        #[arg(long)]
        skip_script_validation: bool,
    },
    /// Update a deployment: from its YAML (`-f`, as create does), or in place (`--set KEY=VALUE`:
    /// settings such as `mini_batch_size` or `environment_variables.NAME`, `description`, `tags.KEY`).
    Update {
        #[arg(short, long, conflicts_with = "sets")]
        file: Option<PathBuf>,
        #[arg(short, long, required_unless_present = "file")]
        name: Option<String>,
        #[arg(short, long, required_unless_present = "file")]
        endpoint_name: Option<String>,
        #[arg(long = "set", value_name = "KEY=VALUE", required_unless_present = "file")]
        sets: Vec<String>,
    },
    List {
        #[arg(short, long)]
        endpoint_name: String,
    },
    Show {
        #[command(flatten)]
        name: NameArg,
        #[arg(short, long)]
        endpoint_name: String,
    },
    Delete {
        #[command(flatten)]
        name: NameArg,
        #[arg(short, long)]
        endpoint_name: String,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum EnvironmentCommand {
    /// Register an environment version from the reference's environment YAML (`-f env.yml`).
    Create {
        #[arg(short, long)]
        file: PathBuf,
    },
    List {
        #[arg(short, long)]
        name: Option<String>,
    },
    /// An environment version (the latest by default), and its builds with their logs.
    Show {
        #[command(flatten)]
        name: NameArg,
        #[arg(short, long)]
        version: Option<String>,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Register a data asset version from the reference's data YAML (`-f data.yml`), or from flags.
    Create {
        #[arg(short, long, conflicts_with_all = ["name", "path"])]
        file: Option<PathBuf>,
        #[arg(short, long, required_unless_present = "file")]
        name: Option<String>,
        /// A local file or folder (uploaded first) or a datastore URI.
        #[arg(short, long, required_unless_present = "file")]
        path: Option<String>,
        #[arg(short = 't', long = "type", default_value = "uri_folder")]
        kind: String,
        #[arg(short, long)]
        version: Option<u32>,
        #[arg(short, long)]
        description: Option<String>,
    },
    List {
        #[arg(short, long)]
        name: Option<String>,
    },
    Show {
        #[arg(short, long)]
        name: String,
        /// A version number or `latest` (the default).
        #[arg(short, long)]
        version: Option<String>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Register a model version from the reference's model YAML (`-f model.yml`), or a file or folder
    /// from flags (the next version unless --version says which).
    Create {
        #[arg(short, long, conflicts_with_all = ["name", "path"])]
        file: Option<PathBuf>,
        #[arg(short, long, required_unless_present = "file")]
        name: Option<String>,
        /// A local file or folder (uploaded first) or a datastore URI.
        #[arg(short, long, required_unless_present = "file")]
        path: Option<String>,
        #[arg(long = "type", default_value = "custom_model")]
        model_type: ModelType,
        #[arg(short, long)]
        version: Option<u32>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Archive a model version: usable by number, never `latest` (--restore undoes it).
    Archive {
        #[arg(short, long)]
        name: String,
        #[arg(short, long)]
        version: u32,
        #[arg(long)]
        restore: bool,
    },
    /// Delete a model version that no deployment uses.
    Delete {
        #[arg(short, long)]
        name: String,
        #[arg(short, long)]
        version: u32,
    },
    List {
        #[arg(long)]
        name: Option<String>,
    },
    Show {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    List {
        #[arg(short, long)]
        endpoint_name: Option<String>,
        #[arg(short, long)]
        deployment_name: Option<String>,
        /// Only jobs with this status (Completed, Failed, Canceled, Running, ...).
        #[arg(long)]
        status: Option<String>,
        /// Only jobs created at or after this time (RFC 3339, or milliseconds since the epoch).
        #[arg(long)]
        since: Option<String>,
        /// At most this many jobs, newest first, read page by page.
        #[arg(long, default_value_t = 100)]
        max_results: u32,
    },
    Show {
        #[command(flatten)]
        name: NameArg,
    },
    /// Follow a job until it ends; exit non-zero unless it completes.
    Stream {
        #[command(flatten)]
        name: NameArg,
    },
    Cancel {
        #[command(flatten)]
        name: NameArg,
    },
    /// Start a new job over the same inputs; with --failed-only, over the files that failed.
    Rerun {
        name: String,
        #[arg(long)]
        failed_only: bool,
        /// Follow the new job until it ends.
        #[arg(long)]
        stream: bool,
    },
    /// Download an output: `score` into PATH/named-outputs/score, `logs` into PATH/artifacts/logs.
    Download {
        #[command(flatten)]
        name: NameArg,
        #[arg(long, default_value = "score")]
        output_name: String,
        /// Download every output.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value = ".")]
        download_path: PathBuf,
    },
    /// Print what the job's scoring script wrote to stdout and stderr, file by file.
    Logs {
        #[command(flatten)]
        name: NameArg,
        /// Keep printing what the workers upload until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
}

fn main() {
    // The model-checking child: before anything else, so it runs with no runtime and no threads.
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == cove_common::children::model_check::ARG {
        std::process::exit(cove_worker::children::model_check_main(&args[2]));
    }
    // The environment child: builds with the worker's toolchain on the control plane's behalf.
    if args.len() == 2 && args[1] == cove_common::children::ENVIRONMENT_ARG {
        cove_tls::install_provider();
        std::process::exit(cove_worker::children::environment_main());
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format, matches!(cli.command, Command::Up(_) | Command::Worker(_)));
    // Every TLS client and server in the process uses ring (no OpenSSL, no second provider).
    cove_tls::install_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a Tokio runtime starts");
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                exit_code::OK
            } else {
                eprintln!("error: {err:#}");
                error_code(&err)
            }
        }
    };
    std::process::exit(code);
}

/// A client command whose reader went away ends quietly, as `ls | head` does: by SIGPIPE's default
/// action rather than a write error. Servers keep Rust's default (ignored), where a peer that hangs
/// up must not end the process.
#[allow(unsafe_code)]
fn end_quietly_on_a_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: restoring a signal's default disposition installs no handler; it runs before any other
    // thread of ours writes to stdout.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// A path made absolute against the current directory (without resolving links).
fn absolute(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).map_err(|e| anyhow::anyhow!("cannot make {} absolute: {e}", path.display()))
}

/// Logs go to stderr. Services (`cove up`, `cove worker`) log their lifecycle at info level, client
/// commands only warnings; `RUST_LOG` overrides either. Colour codes only ever go to a terminal.
fn init_tracing(format: Option<LogFormat>, service: bool) {
    use std::io::IsTerminal;
    let default = if service { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| default.into());
    let format = format.unwrap_or(if std::io::stdout().is_terminal() { LogFormat::Text } else { LogFormat::Json });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn error_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.downcast_ref::<jobs::NothingToDownload>().is_some() {
            return exit_code::NOT_FOUND;
        }
        if let Some(c) = cause.downcast_ref::<cove_api::ClientError>() {
            return c.exit_code();
        }
    }
    exit_code::USAGE
}

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn job_exit(job: &cove_api::Job) -> i32 {
    if job.status == cove_model::JobStatus::Completed {
        exit_code::OK
    } else {
        exit_code::JOB_FAILED
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let out = Output { json: cli.json };
    if !matches!(cli.command, Command::Up(_) | Command::Worker(_) | Command::Quickstart { .. }) {
        end_quietly_on_a_closed_pipe();
    }
    let target = cli.target;
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Worker(args) => worker(args, target).await,
        Command::Quickstart { dir } => quickstart::run(dir.as_deref().map(absolute).transpose()?, out).await,
        Command::Workspace { command } => workspace_command(&target.client()?, command, out).await,
        Command::Token { command } => token_command(&target.client()?, command, out).await,
        Command::Datastore { command } => datastore_command(&target.client()?, command, out).await,
        Command::Compute { command } => compute_command(&target.client()?, command, out).await,
        Command::Audit { command: AuditCommand::List { since } } => {
            admin::audit_list(&target.client()?, since.as_deref(), out).await?;
            Ok(exit_code::OK)
        }
        Command::Endpoint { command } => endpoint_command(&target.client()?, command, out).await,
        Command::Deployment { command } => deployment_command(&target.client()?, command, out).await,
        Command::Model { command } => model_command(&target.client()?, command, out).await,
        Command::Environment { command } => environment_command(&target.client()?, command, out).await,
        Command::Data { command } => data_command(&target.client()?, command, out).await,
        Command::Job { command } => job_command(&target.client()?, command, out).await,
    }
}

/// `cove up`: serves the workspace until SIGINT or SIGTERM.
async fn up(args: UpArgs) -> anyhow::Result<i32> {
    let UpArgs {
        dir,
        listen,
        config,
        python,
        sandbox,
        package_index,
        package_index_ca,
        wheels,
        interpreters,
        overrides,
        strict_python,
        shutdown_grace,
    } = args;
    let worker_exe = std::env::current_exe()?;
    // Paths given here end up in other processes that change directory (workers, sandboxes),
    // so they are made absolute once, now.
    let dir = absolute(&dir)?;
    let config = config.as_deref().map(absolute).transpose()?;
    let python =
        if python.contains('/') { absolute(std::path::Path::new(&python))?.display().to_string() } else { python };
    let config = cove_server::ServerConfig {
        dir: dir.clone(),
        listen,
        network_config: config,
        python,
        worker_exe,
        sandbox,
        environments: cove_server::EnvironmentSettings {
            package_index,
            package_index_ca: package_index_ca.map(|f| absolute(&f)).transpose()?,
            wheels: wheels.map(|w| absolute(&w)).transpose()?,
            interpreters,
            overrides,
            strict_python,
        },
        shutdown_grace: std::time::Duration::from_secs(shutdown_grace),
    };
    for o in &config.environments.overrides {
        cove_spec::check_requirement(o).map_err(|e| anyhow::anyhow!("--environment-override: {e}"))?;
    }
    let running = cove_server::start(config).await?;
    println!("Cove workspace {} is up", dir.display());
    println!("API and scoring URIs: {}", running.url);
    println!("Owner token: {}", cove_server::layout::owner_token(&dir).display());
    running.wait_for_signal().await?;
    Ok(exit_code::OK)
}

/// `cove worker`: leases and scores mini-batches until stopped (or, with `--job`, until the job has no
/// more work).
async fn worker(args: WorkerArgs, target: connect::Target) -> anyhow::Result<i32> {
    let WorkerArgs { worker_token, client_cert, client_key, job, node, concurrency, work_dir } = args;
    let work_dir = absolute(&work_dir)?;
    let control_plane = target.url.clone().ok_or_else(|| anyhow::anyhow!("cove worker needs --url (or COVE_URL)"))?;
    let ca_file = target
        .ca_file
        .clone()
        .ok_or_else(|| anyhow::anyhow!("cove worker needs --ca-file (or COVE_CA_FILE): the workspace CA"))?;
    let ended = cove_worker::run(cove_worker::WorkerConfig {
        url: control_plane,
        token: worker_token,
        job,
        node,
        concurrency,
        work_dir,
        ca_file,
        client_cert,
        client_key,
    })
    .await?;
    // A stopped worker exits as a process ended by SIGTERM would, so schedulers see it was stopped.
    Ok(match ended {
        cove_worker::Ended::Finished => exit_code::OK,
        cove_worker::Ended::Stopped => 128 + 15,
    })
}

async fn workspace_command(client: &cove_api::Client, command: WorkspaceCommand, out: Output) -> anyhow::Result<i32> {
    match command {
        WorkspaceCommand::Show => resources::workspace_show(client, out).await?,
        WorkspaceCommand::Diagnose => return admin::diagnose(client, out).await,
        WorkspaceCommand::RotateCertificates => admin::rotate_certificates(client, out).await?,
    }
    Ok(exit_code::OK)
}

async fn token_command(client: &cove_api::Client, command: TokenCommand, out: Output) -> anyhow::Result<i32> {
    match command {
        TokenCommand::Create { role, endpoint_name, expires_in } => {
            admin::token_create(client, role, endpoint_name, expires_in, out).await?
        }
        TokenCommand::List => admin::token_list(client, out).await?,
        TokenCommand::Revoke { id } => admin::token_revoke(client, &id).await?,
    }
    Ok(exit_code::OK)
}

async fn datastore_command(client: &cove_api::Client, command: DatastoreCommand, out: Output) -> anyhow::Result<i32> {
    match command {
        DatastoreCommand::Create {
            file: None,
            name: Some(name),
            endpoint: Some(endpoint),
            bucket: Some(bucket),
            region,
            access_key_id: Some(access_key_id),
            secret_access_key_file: Some(secret_file),
        } => {
            let secret_access_key = admin::read_secret_file(&secret_file)?;
            let req = cove_api::CreateDatastore {
                name,
                kind: "s3".into(),
                path: None,
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key,
                ..Default::default()
            };
            admin::datastore_create(client, &req, out).await?
        }
        DatastoreCommand::Create { file: Some(file), .. } => {
            let req = admin::datastore_from_yaml(&file)?;
            admin::datastore_create(client, &req, out).await?
        }
        DatastoreCommand::Create { .. } => unreachable!("clap requires --file or every S3 flag"),
        DatastoreCommand::List => admin::datastore_list(client, out).await?,
        DatastoreCommand::Show { name } => {
            let ds: cove_api::Datastore =
                client.get(&format!("/api/v1/datastores/{}", cove_api::encode(&name))).await?;
            if out.json {
                print_json(&ds)?;
            } else {
                println!("Name:      {}\nKind:      {}\nRoot:      {}", ds.name, ds.kind, ds.root);
                if let Some(e) = &ds.endpoint {
                    println!("Endpoint:  {e}");
                }
            }
        }
        DatastoreCommand::Delete { name } => {
            let path = format!("/api/v1/datastores/{}", cove_api::encode(&name));
            let _: serde_json::Value = client.json(cove_api::Method::DELETE, &path, None::<&()>, &[]).await?;
            println!("Deleted datastore {name}");
        }
    }
    Ok(exit_code::OK)
}

async fn compute_command(client: &cove_api::Client, command: ComputeCommand, out: Output) -> anyhow::Result<i32> {
    match command {
        ComputeCommand::List => admin::compute_list(client, out).await?,
        ComputeCommand::Create { file } => admin::compute_create(client, &file, out).await?,
        ComputeCommand::Show { name } => admin::compute_show(client, &name, out).await?,
        ComputeCommand::Delete { name } => admin::compute_delete(client, &name, out).await?,
        ComputeCommand::Token { name } => admin::compute_token(client, &name, out).await?,
        ComputeCommand::Credential { name, out: folder } => {
            admin::compute_credential(client, &name, &folder, out).await?
        }
        ComputeCommand::RevokeCredential { name } => admin::revoke_credential(client, &name, out).await?,
    }
    Ok(exit_code::OK)
}

async fn endpoint_command(client: &cove_api::Client, command: EndpointCommand, out: Output) -> anyhow::Result<i32> {
    match command {
        EndpointCommand::Create { file, name } => resources::endpoint_create(client, &file, name, out).await?,
        EndpointCommand::List => resources::endpoint_list(client, out).await?,
        EndpointCommand::Show { name } => resources::endpoint_show(client, &name.get(), out).await?,
        EndpointCommand::ListJobs { name } => {
            jobs::list(client, &jobs::ListFilter { endpoint: Some(name.get()), ..Default::default() }, out).await?
        }
        EndpointCommand::Update { name, sets } => resources::endpoint_update(client, &name, &sets, out).await?,
        EndpointCommand::Delete { name, yes } => {
            let name = name.get();
            if !yes && !confirm(&format!("Delete endpoint {name} and its deployments (its jobs are kept)?"))? {
                eprintln!("Kept endpoint {name}");
                return Ok(exit_code::OK);
            }
            resources::endpoint_delete(client, &name).await?
        }
        EndpointCommand::Invoke { args } => {
            let stream = args.stream;
            let job = jobs::invoke(client, args, out).await?;
            if stream {
                return Ok(job_exit(&job));
            }
        }
    }
    Ok(exit_code::OK)
}

async fn deployment_command(client: &cove_api::Client, command: DeploymentCommand, out: Output) -> anyhow::Result<i32> {
    match command {
        DeploymentCommand::Create { file, endpoint_name, name, set_default, skip_script_validation } => {
            let args = resources::DeploymentCreate { file, endpoint_name, name, set_default, skip_script_validation };
            resources::deployment_create(client, args, out).await?
        }
        DeploymentCommand::Update { file: Some(file), endpoint_name, name, .. } => {
            let args = resources::DeploymentCreate {
                file,
                endpoint_name,
                name,
                set_default: false,
                skip_script_validation: false,
            };
            resources::deployment_create(client, args, out).await?
        }
        DeploymentCommand::Update { file: None, name, endpoint_name, sets } => {
            let (name, endpoint) = (name.expect("clap requires it"), endpoint_name.expect("clap requires it"));
            resources::deployment_update(client, &endpoint, &name, &sets, out).await?
        }
        DeploymentCommand::List { endpoint_name } => resources::deployment_list(client, &endpoint_name, out).await?,
        DeploymentCommand::Show { name, endpoint_name } => {
            resources::deployment_show(client, &endpoint_name, &name.get(), out).await?
        }
        DeploymentCommand::Delete { name, endpoint_name, yes: _ } => {
            resources::deployment_delete(client, &endpoint_name, &name.get()).await?
        }
    }
    Ok(exit_code::OK)
}

async fn model_command(client: &cove_api::Client, command: ModelCommand, out: Output) -> anyhow::Result<i32> {
    match command {
        ModelCommand::Create { file, name, path, model_type, version, description } => {
            let req = match file {
                Some(file) => resources::ModelCreate::from_yaml(&file)?,
                None => resources::ModelCreate {
                    name: name.expect("clap requires it"),
                    version,
                    path: path.expect("clap requires it"),
                    model_type,
                    description,
                    tags: Default::default(),
                },
            };
            resources::model_create(client, req, out).await?
        }
        ModelCommand::Archive { name, version, restore } => {
            resources::model_archive(client, &name, version, !restore, out).await?
        }
        ModelCommand::Delete { name, version } => resources::model_delete(client, &name, version, out).await?,
        ModelCommand::List { name } => resources::model_list(client, name.as_deref(), out).await?,
        ModelCommand::Show { name, version } => resources::model_show(client, &name, version, out).await?,
    }
    Ok(exit_code::OK)
}

async fn environment_command(
    client: &cove_api::Client,
    command: EnvironmentCommand,
    out: Output,
) -> anyhow::Result<i32> {
    match command {
        EnvironmentCommand::Create { file } => environment::create(client, &absolute(&file)?, out).await?,
        EnvironmentCommand::List { name } => environment::list(client, name.as_deref(), out).await?,
        EnvironmentCommand::Show { name, version } => {
            environment::show(client, &name.get(), version.as_deref(), out).await?
        }
    }
    Ok(exit_code::OK)
}

async fn data_command(client: &cove_api::Client, command: DataCommand, out: Output) -> anyhow::Result<i32> {
    match command {
        DataCommand::Create { file, name, path, kind, version, description } => {
            let req = match file {
                Some(file) => data::DataCreate::from_yaml(&file)?,
                None => data::DataCreate {
                    name: name.expect("clap requires it"),
                    version,
                    kind,
                    path: path.expect("clap requires it"),
                    base: PathBuf::from("."),
                    description,
                    tags: Default::default(),
                },
            };
            data::create(client, req, out).await?
        }
        DataCommand::List { name } => data::list(client, name.as_deref(), out).await?,
        DataCommand::Show { name, version } => data::show(client, &name, version.as_deref(), out).await?,
    }
    Ok(exit_code::OK)
}

async fn job_command(client: &cove_api::Client, command: JobCommand, out: Output) -> anyhow::Result<i32> {
    match command {
        JobCommand::List { endpoint_name, deployment_name, status, since, max_results } => {
            let filter =
                jobs::ListFilter { endpoint: endpoint_name, deployment: deployment_name, status, since, max_results };
            jobs::list(client, &filter, out).await?
        }
        JobCommand::Show { name } => {
            jobs::show(client, &name.get(), out).await?;
        }
        JobCommand::Stream { name } => {
            let job = jobs::stream(client, &name.get(), out).await?;
            return Ok(job_exit(&job));
        }
        JobCommand::Cancel { name } => jobs::cancel(client, &name.get(), out).await?,
        JobCommand::Rerun { name, failed_only, stream } => {
            let job = jobs::rerun(client, &name, failed_only, stream, out).await?;
            if stream {
                return Ok(job_exit(&job));
            }
        }
        JobCommand::Download { name, output_name, all, download_path } => {
            let outputs: Vec<&str> = if all { vec!["score", "logs"] } else { vec![output_name.as_str()] };
            jobs::download(client, &name.get(), &outputs, &download_path, out).await?;
        }
        JobCommand::Logs { name, follow } => jobs::logs(client, &name.get(), follow).await?,
    }
    Ok(exit_code::OK)
}
