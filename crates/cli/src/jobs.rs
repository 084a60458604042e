//! `cove endpoint invoke` and `cove job ...`: start jobs, watch them, fetch what they produced.

use crate::render::{display_mode, plural, table, DisplayMode};
use crate::resources::parse_sets;
use crate::{print_json, upload, Output};
use anyhow::{bail, Context};
use cove_api::{encode, Client, ClientError, FileEntry, InputType, Invoke, Job, JobInput, Method, Workspace};
use cove_model::JobStatus;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct InvokeArgs {
    /// The endpoint.
    #[arg(value_name = "NAME", required_unless_present = "endpoint_flag", conflicts_with = "endpoint_flag")]
    pub endpoint: Option<String>,
    /// The endpoint, as `az ml` takes it.
    #[arg(short = 'n', long = "name", id = "endpoint_flag", value_name = "NAME")]
    pub endpoint_flag: Option<String>,
    /// A local file or folder (uploaded first), a datastore URI, or a data asset (azureml:NAME@latest).
    #[arg(long, required_unless_present_any = ["file", "inputs"], conflicts_with = "file")]
    pub input: Option<String>,
    /// The reference's invocation YAML: `inputs:` (one, for a model deployment) and `outputs:`
    /// (`score`), each with `type` and `path`.
    #[arg(short = 'f', long, conflicts_with = "inputs")]
    pub file: Option<std::path::PathBuf>,
    /// The inputs as JSON, as the reference's CLI takes them: `{"NAME": {"type": "uri_folder", "path": "..."}}`.
    #[arg(long, conflicts_with = "input")]
    pub inputs: Option<String>,
    /// The outputs as JSON: `{"score": {"type": "uri_folder", "path": "azureml://datastores/DS/paths/P"}}`.
    #[arg(long)]
    pub outputs: Option<String>,
    #[arg(long, value_parser = parse_input_type)]
    pub input_type: Option<InputType>,
    #[arg(short = 'd', long)]
    pub deployment_name: Option<String>,
    /// Where the `score` output goes (a datastore URI).
    #[arg(long)]
    pub output_path: Option<String>,
    #[arg(short = 'm', long)]
    pub mini_batch_size: Option<u32>,
    #[arg(short = 'c', long)]
    pub instance_count: Option<u32>,
    #[arg(long)]
    pub job_name: Option<String>,
    /// Per-job overrides: mini_batch_size, max_retries, timeout, error_threshold, output_file_name, ...
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Follow the job until it ends; exit non-zero unless it completes.
    #[arg(long)]
    pub stream: bool,
}

fn parse_input_type(s: &str) -> Result<InputType, String> {
    match s {
        "uri_folder" => Ok(InputType::UriFolder),
        "uri_file" => Ok(InputType::UriFile),
        other => Err(format!("`{other}` is not an input type (uri_folder, uri_file)")),
    }
}

/// Whether `--input` names a datastore (or other) URI rather than a local path.
fn is_uri(s: &str) -> bool {
    s.contains("://") || s.starts_with("azureml:")
}

/// Invokes an endpoint; returns the job, streamed to its end when asked.
/// The reference's `--file inputs.yml` for a batch endpoint.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InvocationYaml {
    #[serde(rename = "$schema", default)]
    _schema: Option<String>,
    #[serde(default)]
    inputs: BTreeMap<String, NamedData>,
    #[serde(default)]
    outputs: BTreeMap<String, NamedData>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedData {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    path: String,
    /// `ro_mount`, `download`...: how the reference hands files over; Cove stages them its own way.
    #[serde(default, rename = "mode")]
    _mode: Option<String>,
}

/// Reads `--file`: its one input (a local path is relative to the file) and its `score` output.
fn read_invocation(file: &Path, args: &mut InvokeArgs) -> anyhow::Result<()> {
    let text = crate::resources::read_yaml(file)?;
    cove_spec::check_untrusted_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let y: InvocationYaml = serde_norway::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    apply_named(&file.display().to_string(), y.inputs, y.outputs, &base, args)
}

/// Reads `--inputs` and `--outputs`, JSON in the shape of the invocation YAML's sections.
fn read_named_json(args: &mut InvokeArgs) -> anyhow::Result<()> {
    let parse = |flag: &str, text: &Option<String>| -> anyhow::Result<BTreeMap<String, NamedData>> {
        match text {
            None => Ok(BTreeMap::new()),
            Some(t) => serde_json::from_str(t).map_err(|e| anyhow::anyhow!("{flag}: {e}")),
        }
    };
    let inputs = parse("--inputs", &args.inputs)?;
    let outputs = parse("--outputs", &args.outputs)?;
    if inputs.is_empty() && args.input.is_some() {
        // --input with --outputs: only the outputs come from JSON.
        return apply_outputs("--outputs", outputs, args);
    }
    apply_named("--inputs", inputs, outputs, Path::new("."), args)
}

fn apply_named(
    source: &str,
    inputs: BTreeMap<String, NamedData>,
    outputs: BTreeMap<String, NamedData>,
    base: &Path,
    args: &mut InvokeArgs,
) -> anyhow::Result<()> {
    let file = Path::new(source);
    let mut inputs = inputs.into_iter();
    let (name, input) = match (inputs.next(), inputs.next()) {
        (Some(one), None) => one,
        (None, _) => {
            bail!("{}: field `inputs`: a model deployment takes exactly one input; none is given", file.display())
        }
        (Some((a, _)), Some((b, _))) => bail!(
            "{}: field `inputs`: a model deployment takes exactly one input, got `{a}`, `{b}`, ...",
            file.display()
        ),
    };
    args.input_type = match input.kind.as_deref() {
        None | Some("uri_folder") => Some(InputType::UriFolder),
        Some("uri_file") => Some(InputType::UriFile),
        Some(other) => bail!(
            "{}: field `inputs.{name}.type`: `{other}` is not an input of a model deployment (uri_folder, uri_file)",
            file.display()
        ),
    };
    args.input = Some(if is_uri(&input.path) { input.path } else { base.join(&input.path).display().to_string() });
    apply_outputs(source, outputs, args)
}

fn apply_outputs(source: &str, outputs: BTreeMap<String, NamedData>, args: &mut InvokeArgs) -> anyhow::Result<()> {
    let file = Path::new(source);
    for (name, output) in outputs {
        if name != "score" {
            bail!("{}: field `outputs.{name}`: a model deployment has one output, `score`", file.display());
        }
        if !output.path.contains("://") {
            bail!(
                "{}: field `outputs.score.path`: expected a datastore URI (azureml://datastores/DS/paths/P)",
                file.display()
            );
        }
        args.output_path = Some(output.path);
    }
    Ok(())
}

pub async fn invoke(client: &Client, mut args: InvokeArgs, out: Output) -> anyhow::Result<Job> {
    if let Some(file) = args.file.clone() {
        read_invocation(&file, &mut args)?;
    } else if args.inputs.is_some() || args.outputs.is_some() {
        read_named_json(&mut args)?;
    }
    let input_arg = args.input.clone().expect("clap requires --input or --file");
    let mut overrides: BTreeMap<String, String> = parse_sets(&args.sets)?;
    if let Some(n) = args.mini_batch_size {
        overrides.insert("mini_batch_size".into(), n.to_string());
    }
    if let Some(n) = args.instance_count {
        overrides.insert("instance_count".into(), n.to_string());
    }
    let endpoint =
        args.endpoint.clone().or(args.endpoint_flag.clone()).expect("clap requires one").to_ascii_lowercase();
    // Everything the control plane would refuse is checked before anything is uploaded, so a wrong
    // endpoint, deployment or override leaves no orphan upload behind.
    let ep: cove_api::Endpoint = client.get(&format!("/api/v1/endpoints/{}", encode(&endpoint))).await?;
    let deployment = args.deployment_name.clone().or(ep.spec.default_deployment.clone()).with_context(|| {
        format!(
            "No valid deployments to route to: endpoint `{endpoint}` has no default deployment. Set one \
             (cove endpoint update {endpoint} --set defaults.deployment_name=NAME) or name one with --deployment-name"
        )
    })?;
    let dep: cove_api::Deployment =
        client.get(&format!("/api/v1/endpoints/{}/deployments/{}", encode(&endpoint), encode(&deployment))).await?;
    let mut settings = dep.settings.clone();
    for (k, v) in &overrides {
        settings.apply_override(k, v).map_err(|e| anyhow::anyhow!("--set {k}: {e}"))?;
    }
    let input = if is_uri(&input_arg) {
        JobInput { uri: input_arg.clone(), input_type: args.input_type.unwrap_or(InputType::UriFolder) }
    } else {
        let path = Path::new(&input_arg);
        let meta = std::fs::metadata(path).with_context(|| format!("--input: `{}` does not exist", path.display()))?;
        let kind = if meta.is_dir() { InputType::UriFolder } else { InputType::UriFile };
        if let Some(t) = args.input_type {
            if t != kind {
                bail!("--input-type: `{}` is a {}", path.display(), if meta.is_dir() { "folder" } else { "file" });
            }
        }
        let ws: Workspace = client.get("/api/v1/workspace").await?;
        if !out.json {
            eprintln!("Uploading {} to datastore {}", path.display(), ws.default_datastore);
        }
        // Cove scores a folder's top-level files, as the reference does: only those are uploaded.
        let uploaded = upload::upload_input(client, &ws.default_datastore, path).await?;
        if uploaded.left_out > 0 {
            eprintln!(
                "warning: {} file(s) in subfolders of {} are left out: a job scores the top-level files of its input folder",
                uploaded.left_out,
                path.display()
            );
        }
        JobInput { uri: uploaded.uri, input_type: kind }
    };
    let body = Invoke {
        input: Some(input),
        deployment_name: args.deployment_name,
        output_path: args.output_path,
        overrides,
        job_name: args.job_name,
    };
    // One key per invocation: a retried POST after a lost answer returns the same job, never a second.
    let key = uuid::Uuid::new_v4().to_string();
    let path = format!("/endpoints/{}/jobs", encode(&endpoint));
    let mut tries = 0;
    let job: Job = loop {
        tries += 1;
        match client.json(Method::POST, &path, Some(&body), &[("repeatability-request-id", &key)]).await {
            Err(ClientError::Unreachable { .. }) if tries < 4 => {
                tokio::time::sleep(Duration::from_millis(300 * tries)).await
            }
            other => break other?,
        }
    };
    if args.stream {
        if !out.json {
            eprintln!("Started job {}", job.name);
        }
        return stream(client, &job.name, out).await;
    }
    if out.json {
        print_json(&job)?;
    } else {
        println!("{}", job.name);
        eprintln!("Started job {} ({}); follow it with: cove job stream {}", job.name, job.status, job.name);
    }
    Ok(job)
}

/// What `cove job list` asks for.
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub endpoint: Option<String>,
    pub deployment: Option<String>,
    pub status: Option<String>,
    pub since: Option<String>,
    pub max_results: u32,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter { endpoint: None, deployment: None, status: None, since: None, max_results: 100 }
    }
}

/// The jobs a filter selects, newest first, read a page at a time (each page continues after the last
/// job of the one before) until `max_results` or the end.
async fn list_pages(client: &Client, f: &ListFilter) -> anyhow::Result<Vec<Job>> {
    const PAGE: u32 = 1000;
    let mut query = Vec::new();
    for (key, value) in
        [("endpoint", &f.endpoint), ("deployment", &f.deployment), ("status", &f.status), ("since", &f.since)]
    {
        if let Some(v) = value {
            query.push(format!("{key}={}", encode(v)));
        }
    }
    let mut list: Vec<Job> = Vec::new();
    loop {
        let want = (f.max_results as usize - list.len()).min(PAGE as usize);
        if want == 0 {
            return Ok(list);
        }
        let mut page_query = query.clone();
        page_query.push(format!("limit={want}"));
        if let Some(last) = list.last() {
            page_query.push(format!("before={}", encode(&last.name)));
        }
        let page: Vec<Job> = client.get(&format!("/api/v1/jobs?{}", page_query.join("&"))).await?;
        let ended = page.len() < want;
        list.extend(page);
        if ended {
            return Ok(list);
        }
    }
}

pub async fn list(client: &Client, filter: &ListFilter, out: Output) -> anyhow::Result<()> {
    let list = list_pages(client, filter).await?;
    if out.json {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|j| {
            let p = &j.progress;
            vec![
                j.name.clone(),
                j.endpoint_name.clone(),
                j.deployment_name.clone(),
                j.status.to_string(),
                format!("{}/{}", p.batches_succeeded + p.batches_failed, p.batches_total),
                p.batches_failed.to_string(),
                j.created_at.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["NAME", "ENDPOINT", "DEPLOYMENT", "STATUS", "BATCHES", "FAILED", "CREATED"], &rows));
    Ok(())
}

pub async fn get(client: &Client, name: &str) -> Result<Job, ClientError> {
    client.get(&format!("/api/v1/jobs/{}", encode(name))).await
}

pub async fn show(client: &Client, name: &str, out: Output) -> anyhow::Result<Job> {
    let job = get(client, name).await?;
    if out.json {
        print_json(&job)?;
    } else {
        print!("{}", describe(&job));
    }
    Ok(job)
}

fn describe(j: &Job) -> String {
    let p = &j.progress;
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<14}{v}\n"));
    line("Name:", j.name.clone());
    line("Endpoint:", format!("{} (deployment {})", j.endpoint_name, j.deployment_name));
    line("Status:", j.status.to_string());
    if let Some(e) = &j.error {
        line("Reason:", e.clone());
    }
    line("Input:", j.input.uri.clone());
    line(
        "Output:",
        match &j.output_file_name {
            Some(f) => format!("{}/{f}", j.output_uri),
            None => format!("{} (summary_only)", j.output_uri),
        },
    );
    let batches = if j.status.is_terminal() {
        let not_run = match p.batches_not_run {
            0 => String::new(),
            n => format!(", {n} not run (the job ended first)"),
        };
        format!("{} total, {} succeeded, {} failed{not_run}", p.batches_total, p.batches_succeeded, p.batches_failed)
    } else {
        format!(
            "{} total, {} succeeded, {} failed, {} running, {} pending",
            p.batches_total, p.batches_succeeded, p.batches_failed, p.batches_running, p.batches_pending
        )
    };
    line("Mini-batches:", batches);
    line("Items:", format!("{} files, {} succeeded, {} failed", p.files_total, p.items_ok, p.items_failed));
    if let Some(state) = &j.compute_state {
        line("Compute:", format!("{} ({state})", j.compute));
    }
    line("Created:", j.created_at.clone());
    if let Some(f) = &j.finished_at {
        line("Finished:", f.clone());
    }
    let mut configs: Vec<String> = Vec::new();
    for a in &j.attempts {
        let Some(iso) = &a.isolation else { continue };
        let summary = format!(
            "sandbox {} ({}); memory {} MB, CPU {} s; egress: {}",
            iso["sandbox"].as_str().unwrap_or("?"),
            iso["namespaces"].as_str().filter(|n| !n.is_empty()).unwrap_or("no namespaces"),
            iso["memory_mb"],
            iso["cpu_seconds"],
            iso["egress"].as_array().filter(|e| !e.is_empty()).map_or("none".to_string(), |e| format!("{e:?}"))
        );
        if !configs.contains(&summary) {
            configs.push(summary);
        }
    }
    for c in &configs {
        s.push_str(&format!("Isolation:    {c}\n"));
    }
    for a in &j.attempts {
        let tried = a
            .isolation
            .as_ref()
            .and_then(|i| i.get("network_attempts").or(i.get("refused_network")))
            .and_then(|r| r.as_array())
            .filter(|r| !r.is_empty());
        if let Some(r) = tried {
            let list: Vec<&str> = r.iter().filter_map(|x| x.as_str()).collect();
            s.push_str(&format!(
                "  mini-batch {} attempt {}: network attempts: {}\n",
                a.mini_batch,
                a.attempt,
                list.join("; ")
            ));
        }
    }
    for b in &j.failed_batches {
        s.push_str(&format!(
            "  mini-batch {} ({}, first file {}) failed: {}\n",
            b.index,
            plural(b.files, "file", "files"),
            b.first_file,
            b.reason
        ));
    }
    s
}

/// Follows a job to its end: a bar on a terminal, a line per change otherwise, JSON Lines with --json.
pub async fn stream(client: &Client, name: &str, out: Output) -> anyhow::Result<Job> {
    let mode = display_mode(std::io::stderr().is_terminal(), std::env::var_os("CI").is_some(), out.json);
    let bar = (mode == DisplayMode::Bar).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} mini-batches")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        b
    });
    let mut last: Option<(JobStatus, cove_api::Progress)> = None;
    let job = loop {
        // The control plane answers at once when the status changes, and otherwise with the progress
        // after a quarter second: the end of a job is seen when it happens.
        let path = match &last {
            Some((status, _)) => format!("/api/v1/jobs/{}?attempts=false&wait_ms=250&status={status}", encode(name)),
            None => format!("/api/v1/jobs/{}?attempts=false", encode(name)),
        };
        let job: Job = client.get(&path).await?;
        let now = (job.status, job.progress.clone());
        if last.as_ref() != Some(&now) {
            let p = &job.progress;
            let done = p.batches_succeeded + p.batches_failed;
            match (&bar, mode) {
                (Some(b), _) => {
                    b.set_length(p.batches_total);
                    b.set_position(done);
                    b.set_message(job.status.to_string());
                }
                (None, DisplayMode::Json) => {
                    println!(
                        "{}",
                        serde_json::json!({ "type": "progress", "job": job.name, "status": job.status, "progress": p })
                    );
                }
                (None, _) => eprintln!(
                    "{}: {}/{} mini-batches done ({} succeeded, {} failed), {} items succeeded, {} failed",
                    job.status,
                    done,
                    p.batches_total,
                    p.batches_succeeded,
                    p.batches_failed,
                    p.items_ok,
                    p.items_failed
                ),
            }
            last = Some(now);
        }
        if job.is_terminal() {
            // The whole record, attempts included, for the summary.
            break get(client, name).await?;
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if out.json {
        println!("{}", serde_json::json!({ "type": "result", "job": job }));
    } else {
        print!("{}", describe(&job));
    }
    Ok(job)
}

pub async fn cancel(client: &Client, name: &str, out: Output) -> anyhow::Result<()> {
    let job: Job = client.post(&format!("/api/v1/jobs/{}/cancel", encode(name)), &serde_json::json!({})).await?;
    if out.json {
        return print_json(&job);
    }
    println!("Job {} is {}", job.name, job.status);
    Ok(())
}

/// Downloads `score` to `<path>/named-outputs/score/` and `logs` to `<path>/artifacts/logs/`.
pub async fn download(
    client: &Client,
    name: &str,
    outputs: &[&str],
    dest: &Path,
    out: Output,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for output in outputs {
        let files: Vec<FileEntry> = client.get(&format!("/api/v1/jobs/{}/outputs/{output}", encode(name))).await?;
        if files.is_empty() && outputs.len() == 1 {
            let job = get(client, name).await?;
            return Err(NothingToDownload(nothing_in(&job, output)).into());
        }
        let root = match *output {
            "logs" => dest.join("artifacts").join("logs"),
            other => dest.join("named-outputs").join(other),
        };
        for f in files {
            let rel: PathBuf = f.path.split('/').filter(|s| !s.is_empty() && *s != "." && *s != "..").collect();
            let target = root.join(rel);
            let bytes = client.get_bytes(&output_file_url(name, output, &f.path)).await?;
            std::fs::create_dir_all(target.parent().expect("under root"))?;
            std::fs::write(&target, &bytes).with_context(|| format!("failed to write {}", target.display()))?;
            written.push(target);
        }
    }
    if out.json {
        print_json(&written)?;
    } else {
        for w in &written {
            println!("{}", w.display());
        }
    }
    Ok(written)
}

/// A requested output holds nothing: exits with the not-found code, saying what there is instead.
#[derive(Debug)]
pub struct NothingToDownload(String);

impl std::fmt::Display for NothingToDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NothingToDownload {}

fn nothing_in(job: &Job, output: &str) -> String {
    let why = match (job.status, &job.output_file_name) {
        (JobStatus::Completed, None) => {
            "it completed, but its deployment's output_action is summary_only and its script wrote no files".to_string()
        }
        (JobStatus::Completed, Some(_)) => "it completed and published nothing".to_string(),
        (status, _) => format!("it is {status}, and a job that did not complete publishes nothing"),
    };
    format!(
        "job {} has nothing in output `{output}`: {why}; its logs can be downloaded: cove job download {} --output-name logs",
        job.name, job.name
    )
}

pub async fn rerun(client: &Client, name: &str, failed_only: bool, follow: bool, out: Output) -> anyhow::Result<Job> {
    let job: Job = client
        .post(&format!("/api/v1/jobs/{}/rerun", encode(name)), &serde_json::json!({ "failed_only": failed_only }))
        .await?;
    if follow {
        return stream(client, &job.name, out).await;
    }
    if out.json {
        print_json(&job)?;
    } else {
        println!("{}", job.name);
        eprintln!(
            "Started job {} over {} of job {name}",
            job.name,
            if failed_only { "the failed files" } else { "the inputs" }
        );
    }
    Ok(job)
}

/// The API path of one file of a job's output, each segment encoded.
fn output_file_url(job: &str, output: &str, path: &str) -> String {
    let segments: Vec<String> = path.split('/').map(encode).collect();
    format!("/api/v1/jobs/{}/outputs/{output}/{}", encode(job), segments.join("/"))
}

/// Prints the user logs of a job (`user/stdout/...`, `user/stderr/...`), each file under a header the
/// first time it has something; with `follow`, polls until the job ends and prints only what is new.
pub async fn logs(client: &Client, name: &str, follow: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut printed: std::collections::BTreeMap<String, usize> = Default::default();
    loop {
        // Whether the job had ended before this pass looked: then this pass sees everything there is.
        let ended = get(client, name).await?.status.is_terminal();
        let files: Vec<FileEntry> = client.get(&format!("/api/v1/jobs/{}/outputs/logs", encode(name))).await?;
        for f in files.iter().filter(|f| f.path.starts_with("user/stdout/") || f.path.starts_with("user/stderr/")) {
            let done = printed.get(&f.path).copied().unwrap_or(0);
            if f.size as usize <= done {
                continue;
            }
            let bytes = client.get_bytes(&output_file_url(name, "logs", &f.path)).await?;
            let mut stdout = std::io::stdout().lock();
            if done == 0 {
                writeln!(stdout, "==> {} <==", f.path)?;
            }
            stdout.write_all(bytes.get(done..).unwrap_or_default())?;
            stdout.flush()?;
            printed.insert(f.path.clone(), bytes.len());
        }
        if !follow || ended {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
