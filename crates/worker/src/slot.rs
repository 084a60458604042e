//! One worker slot: a loop that leases a mini-batch, scores it in the slot's scorer process, and reports.

use crate::leftovers;
use crate::scorer::{plain_name, RunResult, Scorer, ScorerHost, ScorerSpec, StartError};
use crate::WorkerConfig;
use anyhow::Context;
use bytes::Bytes;
use cove_api::worker::{
    AssetListing, AttemptReport, Completion, HostCapabilities, Lease, LeaseRequest, LeaseResponse, ReportedOutcome,
    Reports, ReportsAck, RunSpec,
};
use cove_api::{encode, Client, ClientError};
use cove_onnx::OnnxModel;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a worker keeps trying to reach a control plane that does not answer (a restart, say).
const UNREACHABLE_PATIENCE: Duration = Duration::from_secs(120);
/// The largest result part or output file a scorer may leave; the control plane takes no larger upload.
const FILE_LIMIT: u64 = 512 * 1024 * 1024;
/// How much of a log the worker uploads: a longer log keeps its last bytes.
const LOG_LIMIT: u64 = 64 * 1024 * 1024;

pub struct Slot {
    client: Client,
    config: WorkerConfig,
    process: u32,
    driver: PathBuf,
    /// The scorer host this worker's slots share (see [`Hosts`]).
    hosts: Hosts,
    /// The scorer process and the job it was started for.
    scorer: Option<(String, Scorer)>,
    init_failures: u32,
    /// Network attempts observed during the current attempt.
    observed: Vec<String>,
    /// The isolation record of the scorer that ran the current attempt (kept when it dies).
    last_isolation: Option<serde_json::Value>,
    /// How the current attempt's input files came, as the branch that read them says.
    inputs_route: Option<&'static str>,
    /// A no-code deployment's loaded model and the job it was loaded for.
    native: Option<(String, Arc<OnnxModel>)>,
    /// The size of each log file when it was last uploaded, so unchanged logs are not sent again.
    uploaded: std::collections::HashMap<PathBuf, u64>,
    /// The current attempt's result part, sent with its report.
    part: Option<Bytes>,
}

/// The scorer host of the job a worker's slots score, which the first slot to need a scorer starts and
/// the others find; a slot that moves to another job replaces it, and the old host ends when its last
/// scorer does.
pub type Hosts = Arc<tokio::sync::Mutex<Option<Arc<ScorerHost>>>>;

/// The per-process log files of one job, relative to the job's `logs/` folder.
struct LogPaths {
    stdout: String,
    stderr: String,
    error: String,
}

impl Slot {
    pub fn new(client: Client, config: WorkerConfig, process: u32, driver: PathBuf, hosts: Hosts) -> Self {
        Self {
            client,
            config,
            process,
            driver,
            hosts,
            scorer: None,
            init_failures: 0,
            observed: Vec::new(),
            last_isolation: None,
            inputs_route: None,
            native: None,
            uploaded: Default::default(),
            part: None,
        }
    }

    fn logs(&self) -> LogPaths {
        let (node, p) = (&self.config.node, format!("process{:03}", self.process));
        LogPaths {
            stdout: format!("user/stdout/{node}/{p}.stdout.txt"),
            stderr: format!("user/stderr/{node}/{p}.stderr.txt"),
            error: format!("user/error/{node}/{p}.txt"),
        }
    }

    fn job_dir(&self, job: &str) -> PathBuf {
        self.config.work_dir.join("jobs").join(job)
    }

    fn parts_dir(&self, job: &str) -> PathBuf {
        self.job_dir(job).join("parts").join(format!("process{:03}", self.process))
    }

    /// Records network attempts the sandbox saw during a run, for this attempt's isolation record.
    fn note_observed(&mut self, observed: Vec<String>) {
        self.observed = observed;
    }

    /// What the current attempt ran under.
    fn isolation(&self) -> Option<serde_json::Value> {
        let (_, scorer) = self.scorer.as_ref()?;
        let mut record = scorer.isolation().clone();
        record.network_attempts = self.observed.clone();
        serde_json::to_value(record).ok()
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        let result = self.lease_loop().await;
        if let Some((_, mut s)) = self.scorer.take() {
            s.kill().await;
        }
        result
    }

    async fn lease_loop(&mut self) -> anyhow::Result<()> {
        let sandbox = crate::sandbox::available();
        let ask = LeaseRequest {
            node: self.config.node.clone(),
            process: self.process,
            job: self.config.job.clone(),
            wait_ms: 15_000,
            host: HostCapabilities {
                sandbox: sandbox.is_ok(),
                sandbox_problem: sandbox.err(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            batches: 1,
            holding: 0,
        };
        let mut flow = Flow::default();
        let result = self.flow_loop(&ask, &mut flow).await;
        if let Some(heartbeat) = flow.heartbeat.take() {
            heartbeat.abort();
        }
        result
    }

    /// Works leases one after another. Reports go out while the slot works on: each attempt's report is
    /// sent as soon as the one before it was answered (the reports of attempts that end meanwhile go
    /// together), asking for the next leases while the slot still has one in hand, so a slot waits for
    /// the control plane only when it has nothing left to work.
    async fn flow_loop(&mut self, ask: &LeaseRequest, flow: &mut Flow) -> anyhow::Result<()> {
        loop {
            if flow.held.is_empty() {
                if let Some(sending) = flow.sending.take() {
                    if !self.received(sending.await??, flow).await && self.config.job.is_some() {
                        return Ok(());
                    }
                    continue;
                }
                if !flow.outbox.reports.is_empty() {
                    // One to work now and at least one to hold, so the next report goes out while the
                    // slot works (see below) instead of the slot waiting for its answer.
                    let next = LeaseRequest { batches: flow.pace.batches_kept(), holding: 0, ..ask.clone() };
                    let outbox = std::mem::take(&mut flow.outbox);
                    let sent = send_reports(self.client.clone(), outbox, Some(next)).await?;
                    if !self.received(sent, flow).await && self.config.job.is_some() {
                        return Ok(());
                    }
                    continue;
                }
                let asking = LeaseRequest { batches: flow.pace.batches_kept(), ..ask.clone() };
                let resp: LeaseResponse = retrying(|| self.client.post("/worker/v1/lease", &asking)).await?;
                match resp.lease {
                    Some(lease) => flow.hold(std::iter::once(lease).chain(resp.more)),
                    None if resp.job_done => return Ok(()),
                    None => continue,
                }
            }
            let lease = flow.held.pop_front().expect("checked above");
            if flow.heartbeat.is_none() {
                flow.heartbeat = Some(self.spawn_heartbeat(flow.alive.clone(), lease.expires_in_ms));
            }
            let started = Instant::now();
            let (completion, part) = self.work(&lease).await?;
            flow.pace.observe(started.elapsed());
            if completion.outcome == ReportedOutcome::Succeeded {
                if let Some(pause) = cove_api::pause::pause_at("before-report") {
                    tokio::time::sleep(pause).await;
                }
            }
            flow.outbox.add(lease.lease_id, completion, part);
            // The answer to the reports in flight may hold the next leases: it is taken in once it has
            // come, and waited for when the slot has nothing left in hand or too much to send. (Left
            // until the top of the loop, the slot would work the lease it brings while these reports
            // waited, and then send them with the next ones while it waited for the answer.)
            let must_wait = flow.held.is_empty() || flow.outbox.part_bytes >= FLUSH_BYTES;
            if let Some(sending) = flow.sending.take_if(|s| must_wait || s.is_finished()) {
                if !self.received(sending.await??, flow).await {
                    if self.config.job.is_some() {
                        return Ok(());
                    }
                    continue;
                }
            }
            // Quick mini-batches' reports wait for a few more (half of what the slot asks for at once), so
            // that each request carries several.
            let enough = flow.outbox.reports.len() as u32 >= (flow.pace.batches_wanted() / 2).max(1);
            if flow.held.is_empty() || flow.sending.is_some() || !(enough || flow.outbox.part_bytes >= FLUSH_BYTES) {
                // Sent at the top of the loop (waiting for the answer), or with the next report.
                continue;
            }
            let keep = flow.pace.batches_kept() as usize;
            let next = (flow.held.len() < keep).then(|| LeaseRequest {
                batches: (keep - flow.held.len()) as u32,
                holding: flow.held.len() as u32,
                ..ask.clone()
            });
            let outbox = std::mem::take(&mut flow.outbox);
            flow.sending = Some(tokio::spawn(send_reports(self.client.clone(), outbox, next)));
        }
    }

    /// Takes in the control plane's answer to sent reports; returns whether the job still runs (when
    /// it does not, what the slot still holds is the control plane's to release, and the scorer ends).
    async fn received(&mut self, sent: Sent, flow: &mut Flow) -> bool {
        flow.alive.lock().unwrap_or_else(|p| p.into_inner()).retain(|id| !sent.reported.contains(id));
        if !sent.job_active {
            let held: Vec<Lease> = flow.held.drain(..).collect();
            flow.alive.lock().unwrap_or_else(|p| p.into_inner()).retain(|id| !held.iter().any(|l| &l.lease_id == id));
            if let Some((_, mut s)) = self.scorer.take() {
                s.kill().await;
            }
            return false;
        }
        flow.hold(sent.next);
        true
    }

    /// Works one lease; returns its report and its result part, if any.
    async fn work(&mut self, lease: &Lease) -> anyhow::Result<(Completion, Option<Bytes>)> {
        let started = Instant::now();
        self.part = None;
        self.observed.clear();
        self.last_isolation = None;
        self.inputs_route = None;
        let outcome = self.attempt(lease).await;
        let (outcome, items_ok, items_failed, reason) = match outcome {
            Ok(o) => o,
            Err(e) => (ReportedOutcome::Failed, 0, 0, Some(format!("the worker failed to run the mini-batch: {e:#}"))),
        };
        let pid = self.scorer.as_ref().map_or(0, |(_, s)| s.pid());
        self.upload_logs(lease).await;
        let mut isolation = self.isolation().or(self.last_isolation.take());
        if let Some(serde_json::Value::Object(record)) = isolation.as_mut() {
            if let Some(route) = self.inputs_route {
                record.insert("inputs".into(), route.into());
            }
        }
        let report = Completion {
            outcome,
            items_ok,
            items_failed,
            reason,
            elapsed_ms: started.elapsed().as_millis() as u64,
            pid,
            isolation,
        };
        let mut part = self.part.take();
        if part.as_ref().is_some_and(|p| p.len() + 64 * 1024 > cove_api::worker::REPORT_LIMIT / 2) {
            // Too large to travel whole with the report: streamed on its own first.
            let path = format!("/worker/v1/leases/{}/part", lease.lease_id);
            let bytes = part.take().expect("checked");
            retrying(|| self.client.put_bytes(&path, bytes.clone())).await?;
        }
        let _ = std::fs::remove_dir_all(self.job_dir(&lease.job).join("inputs").join(&lease.lease_id));
        Ok((report, part))
    }

    /// Keeps the leases in `alive` alive while this worker is; if the worker dies, they expire.
    fn spawn_heartbeat(&self, alive: Arc<Mutex<Vec<String>>>, expires_in_ms: u64) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let every = Duration::from_millis((expires_in_ms / 4).clamp(200, 5_000));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let ids = alive.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for id in ids {
                    let path = format!("/worker/v1/leases/{id}/heartbeat");
                    let _: Result<serde_json::Value, _> = client.post(&path, &serde_json::json!({})).await;
                }
            }
        })
    }

    async fn attempt(&mut self, lease: &Lease) -> anyhow::Result<(ReportedOutcome, u64, u64, Option<String>)> {
        let job_dir = self.job_dir(&lease.job);
        let model_dir = job_dir.join("assets").join("model");
        let code_dir = job_dir.join("assets").join("code");
        if let Some(file) = &lease.run.onnx_model {
            self.fetch_asset(lease, "model", &model_dir).await?;
            let model_file = model_dir.join(cove_rel_path(file)?);
            return self.attempt_no_code(lease, &model_file).await;
        }
        if let Some(script) = &lease.run.builtin_script {
            write_builtin_script(&code_dir, script)?;
            self.fetch_asset(lease, "model", &model_dir).await?;
        } else if lease.run.scoring_script.is_some() {
            // Both before the scorer host can start: fetched side by side.
            tokio::try_join!(self.fetch_asset(lease, "model", &model_dir), self.fetch_asset(lease, "code", &code_dir))?;
        } else {
            self.fetch_asset(lease, "model", &model_dir).await?;
        }
        if let Some(build) = &lease.run.environment {
            if let Err(why) = ensure_environment(build, lease.run.sandbox).await {
                self.append_error_log(&lease.job, "the environment build", &why);
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok((ReportedOutcome::InitFailed, 0, 0, Some(why)));
            }
        }
        let output_dir = job_dir.join("outputs").join(format!("process{:03}", self.process));
        if self.scorer.as_ref().is_none_or(|(job, _)| job != &lease.job) {
            if let Some((_, mut old)) = self.scorer.take() {
                old.kill().await;
            }
            match self.start_scorer(lease, &model_dir, &code_dir, &output_dir).await? {
                Ok(s) => {
                    self.init_failures = 0;
                    self.scorer = Some((lease.job.clone(), s));
                }
                Err(traceback) => {
                    self.append_error_log(&lease.job, "init()", &traceback);
                    self.init_failures += 1;
                    // Back off so a script whose init() always fails does not spin.
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(self.init_failures.min(10)))).await;
                    return Ok((ReportedOutcome::InitFailed, 0, 0, Some(last_line(&traceback))));
                }
            }
        }
        // What an earlier `run()` left behind (a failed one's files, say) is not this attempt's output.
        clear_folder(&output_dir).context("failed to clear the scorer's output folder")?;
        let (route, inputs) = self.stage_inputs(lease, &job_dir).await?;
        self.inputs_route = Some(route);
        let part = self.parts_dir(&lease.job).join(format!("{}.part", lease.lease_id));
        let want_part = lease.run.output_action == cove_spec::OutputAction::AppendRow;
        let (_, scorer) = self.scorer.as_mut().expect("started above");
        let result =
            scorer.run(&inputs, want_part.then_some(part.as_path()), Duration::from_secs(lease.run.timeout_secs)).await;
        let files = inputs.len() as u64;
        let outcome = match result {
            RunResult::Done { items, failed, observed } => {
                self.note_observed(observed);
                match self.send_results(lease, want_part.then_some(part.as_path()), &output_dir).await? {
                    Ok(()) => (ReportedOutcome::Succeeded, items, failed.unwrap_or(files.saturating_sub(items)), None),
                    Err(refusal) => {
                        let what = format!("run() on mini-batch {}", lease.batch_index);
                        self.append_error_log(&lease.job, &what, &refusal);
                        (ReportedOutcome::Failed, 0, 0, Some(refusal))
                    }
                }
            }
            RunResult::Raised(traceback, observed) => {
                self.note_observed(observed);
                self.append_error_log(&lease.job, &format!("run() on mini-batch {}", lease.batch_index), &traceback);
                let mut reason = last_line(&traceback);
                if reason.starts_with("MemoryError") {
                    reason =
                        format!("{reason} (the scorer reached its memory limit of {} MB)", lease.run.limits.memory_mb);
                }
                (ReportedOutcome::Failed, 0, 0, Some(reason))
            }
            RunResult::TimedOut => {
                self.last_isolation = self.isolation();
                self.scorer = None;
                (
                    ReportedOutcome::TimedOut,
                    0,
                    0,
                    Some(format!("run() did not return within {} s", lease.run.timeout_secs)),
                )
            }
            RunResult::Died(how) => {
                self.last_isolation = self.isolation();
                if let Some((_, mut s)) = self.scorer.take() {
                    s.kill().await;
                }
                let reason = format!("the scorer process {how} while running the mini-batch");
                self.append_error_log(&lease.job, &format!("run() on mini-batch {}", lease.batch_index), &reason);
                (ReportedOutcome::Failed, 0, 0, Some(reason))
            }
        };
        Ok(outcome)
    }

    /// A no-code ONNX attempt: the worker reads the files and runs the model itself, off the async
    /// threads; a file it cannot read or score is a failed item, logged with its reason.
    async fn attempt_no_code(
        &mut self,
        lease: &Lease,
        model_file: &Path,
    ) -> anyhow::Result<(ReportedOutcome, u64, u64, Option<String>)> {
        let model = match &self.native {
            Some((job, model)) if job == &lease.job => model.clone(),
            _ => {
                let bytes = std::fs::read(model_file)
                    .with_context(|| format!("failed to read the model {}", model_file.display()))?;
                match tokio::task::spawn_blocking(move || OnnxModel::load(&bytes)).await? {
                    Ok(model) => {
                        let model = Arc::new(model);
                        self.native = Some((lease.job.clone(), model.clone()));
                        model
                    }
                    Err(reason) => {
                        self.append_error_log(&lease.job, "loading the ONNX model", &reason);
                        return Ok((ReportedOutcome::InitFailed, 0, 0, Some(reason)));
                    }
                }
            }
        };
        // Files this host sees are read on the same blocking thread that scores them: one hand-off per
        // mini-batch instead of two.
        let (route, fetched) = match lease.in_place.clone() {
            Some(local) => (IN_PLACE, Err(local)),
            None => {
                let (route, contents) = self.fetch_inputs(lease).await?;
                (route, Ok(contents))
            }
        };
        self.inputs_route = Some(route);
        let names = lease.files.clone();
        let scored = tokio::task::spawn_blocking(move || {
            let contents = fetched.unwrap_or_else(|local| read_in_place(&local));
            let mut files = Vec::with_capacity(contents.len());
            let mut unreadable = Vec::new();
            for (name, content) in names.into_iter().zip(contents) {
                match content {
                    Ok(bytes) => files.push((name, bytes)),
                    Err(reason) => unreadable.push((name, reason)),
                }
            }
            let scored = model.score(&files);
            (scored, files, unreadable)
        });
        let (scored, files, unreadable) = scored.await?;
        let mut failures = unreadable;
        for ((name, _), result) in files.iter().zip(&scored.files) {
            if let Err(reason) = result {
                failures.push((name.clone(), reason.clone()));
            }
        }
        for (name, reason) in &failures {
            self.append_error_log(&lease.job, &format!("scoring `{name}` in mini-batch {}", lease.batch_index), reason);
        }
        let succeeded = scored.succeeded();
        if lease.run.output_action == cove_spec::OutputAction::AppendRow {
            self.part = Some(Bytes::from(scored.output));
        }
        let reason = failures.first().map(|(name, reason)| {
            let more = if failures.len() > 1 { format!(" (and {} more)", failures.len() - 1) } else { String::new() };
            format!("`{name}`: {reason}{more}")
        });
        Ok((ReportedOutcome::Succeeded, succeeded, failures.len() as u64, reason))
    }

    /// The lease's files, in one round trip: each file's bytes, or why it could not be read.
    /// Reads a lease's files; returns how they came, for the attempt's record, and their contents.
    async fn fetch_inputs(&self, lease: &Lease) -> anyhow::Result<(&'static str, Vec<Result<Bytes, String>>)> {
        if let Some(local) = lease.in_place.clone() {
            // This host sees the input folder: read the files there, not through the control plane.
            return Ok((IN_PLACE, tokio::task::spawn_blocking(move || read_in_place(&local)).await?));
        }
        if let Some(urls) = &lease.signed_inputs {
            anyhow::ensure!(
                urls.len() == lease.files.len(),
                "the lease signed {} URLs for {} files",
                urls.len(),
                lease.files.len()
            );
            let ca = lease.signed_inputs_ca.as_deref();
            let mut read = read_signed(urls, &lease.files, ca).await?;
            // A URL lives for a lease's life (an hour at most): one reached after a long wait in this
            // slot may have expired, which the store answers with 403. New ones are asked for once.
            let refused: Vec<usize> = (0..read.len()).filter(|&i| matches!(&read[i], Err(f) if f.refused)).collect();
            if !refused.is_empty() {
                let path = format!("/worker/v1/leases/{}/signed-inputs", lease.lease_id);
                let fresh: Vec<String> = self.client.get(&path).await?;
                anyhow::ensure!(
                    fresh.len() == urls.len(),
                    "the lease signed {} URLs for {} files",
                    fresh.len(),
                    urls.len()
                );
                let pick = |of: &[String]| refused.iter().map(|&i| of[i].clone()).collect::<Vec<_>>();
                let again = read_signed(&pick(&fresh), &pick(&lease.files), ca).await?;
                for (i, result) in refused.into_iter().zip(again) {
                    read[i] = result;
                }
            }
            let read = read.into_iter().map(|r| r.map_err(|f| f.reason)).collect();
            return Ok(("direct from the store", read));
        }
        let bundle = self.client.get_bytes(&format!("/worker/v1/leases/{}/files", lease.lease_id)).await?;
        let items = cove_api::worker::bundle::split(bundle).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            items.len() == lease.files.len(),
            "the control plane sent {} files for {}",
            items.len(),
            lease.files.len()
        );
        Ok(("through the control plane", items))
    }

    async fn start_scorer(
        &self,
        lease: &Lease,
        model_dir: &Path,
        code_dir: &Path,
        output_dir: &Path,
    ) -> anyhow::Result<Result<Scorer, String>> {
        let run: &RunSpec = &lease.run;
        let job_dir = self.job_dir(&lease.job);
        let logs = self.logs();
        let local_logs = job_dir.join("logs");
        let slot_dir = job_dir.join("slots").join(format!("process{:03}", self.process));
        std::fs::create_dir_all(&slot_dir)?;
        let script = run.scoring_script.as_deref().context("the deployment has no scoring script")?;
        let spec = ScorerSpec {
            python: &run.python,
            driver: &self.driver,
            code_dir,
            script,
            model_dir,
            output_dir,
            parts_dir: &self.parts_dir(&lease.job),
            inputs_dir: &job_dir.join("inputs"),
            work_dir: &slot_dir,
            stdout_log: &local_logs.join(&logs.stdout),
            stderr_log: &local_logs.join(&logs.stderr),
            logging_level: &run.logging_level.to_string(),
            env: &run.environment_variables,
            sandbox: run.sandbox,
            limits: run.limits,
            egress: &run.egress,
        };
        let host = {
            let mut shared = self.hosts.lock().await;
            match shared.as_ref() {
                Some(host) if host.job == lease.job && host.alive() => host.clone(),
                _ => match ScorerHost::start(&spec, &lease.job) {
                    Ok(host) => shared.insert(Arc::new(host)).clone(),
                    Err(e) => return Ok(Err(format!("{e:#}"))),
                },
            }
        };
        match Scorer::start(&host, &spec).await {
            Ok(s) => Ok(Ok(s)),
            Err(StartError::InitFailed(tb)) => Ok(Err(tb)),
            Err(StartError::Other(e)) => Ok(Err(format!("{e:#}"))),
        }
    }

    /// Fetches the model or code into `dest` once per job.
    async fn fetch_asset(&self, lease: &Lease, kind: &str, dest: &Path) -> anyhow::Result<()> {
        let marker = dest.with_extension("complete");
        if marker.exists() {
            return Ok(());
        }
        let listing: AssetListing =
            self.client.get(&format!("/worker/v1/leases/{}/assets/{kind}", lease.lease_id)).await?;
        let tmp = dest.with_extension(format!("tmp{}", self.process));
        let _ = std::fs::remove_dir_all(&tmp);
        for f in &listing.files {
            let rel = cove_rel_path(&f.path)?;
            let bytes = self
                .client
                .get_bytes(&format!("/worker/v1/leases/{}/assets/{kind}/{}", lease.lease_id, encode_path(&f.path)))
                .await?;
            let target = tmp.join(rel);
            std::fs::create_dir_all(target.parent().expect("joined under tmp"))?;
            std::fs::write(&target, &bytes)?;
        }
        std::fs::create_dir_all(&tmp)?;
        // Slots of one worker may race here: the first rename wins and the others drop their copy.
        match std::fs::rename(&tmp, dest) {
            Ok(()) => {}
            Err(_) if dest.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => return Err(e).context("failed to install the asset"),
        }
        std::fs::write(&marker, b"")?;
        Ok(())
    }

    /// Makes a lease's files visible to the scorer; returns how they came and where they are.
    async fn stage_inputs(&self, lease: &Lease, job_dir: &Path) -> anyhow::Result<(&'static str, Vec<PathBuf>)> {
        let dir = job_dir.join("inputs").join(&lease.lease_id);
        std::fs::create_dir_all(&dir)?;
        if let Some(local) = lease.in_place.clone() {
            // This host sees the input folder: the scorer gets the files themselves (hard links, read-only
            // in its view), copied only when the filesystem cannot link them.
            let names: Vec<PathBuf> =
                lease.files.iter().map(|n| plain_name(n).map(|p| dir.join(p))).collect::<anyhow::Result<_>>()?;
            return tokio::task::spawn_blocking(move || {
                let root = PathBuf::from(&local.root);
                for (rel, path) in local.paths.iter().zip(&names) {
                    crate::beneath::link_or_copy(&root, rel, path)
                        .map_err(|why| anyhow::anyhow!(in_place_error(rel, &why)))?;
                }
                Ok((IN_PLACE, names))
            })
            .await?;
        }
        let (route, contents) = self.fetch_inputs(lease).await?;
        let mut paths = Vec::with_capacity(lease.files.len());
        for (name, bytes) in lease.files.iter().zip(contents) {
            let bytes = bytes.map_err(anyhow::Error::msg)?;
            let path = dir.join(plain_name(name)?);
            std::fs::write(&path, &bytes)?;
            paths.push(path);
        }
        Ok((route, paths))
    }

    /// Sends what `run()` left behind: the result part, then the files the script wrote to
    /// `AZUREML_BI_OUTPUT_PATH`, which the control plane stages with this attempt and publishes only if
    /// the attempt is committed and the job completes. Everything is read as hostile input
    /// (`leftovers`): a file that is not a plain regular file within the limit, or more files or bytes
    /// than an attempt may leave, fails the attempt, naming why, before any of them is sent. They are
    /// then read and sent one at a time, so the worker holds one of them at most.
    async fn send_results(
        &mut self,
        lease: &Lease,
        part: Option<&Path>,
        output_dir: &Path,
    ) -> anyhow::Result<Result<(), String>> {
        use cove_api::worker::{MAX_OUTPUT_BYTES, MAX_OUTPUT_FILES};
        let refused = |name: &str, why: leftovers::Refused| {
            format!("the output file `{name}` that run() left in AZUREML_BI_OUTPUT_PATH was refused: {why}")
        };
        let mut outputs = Vec::new();
        let mut total = 0u64;
        if let Ok(entries) = std::fs::read_dir(output_dir) {
            for entry in entries {
                let entry = entry.context("failed to list the scorer's output folder")?;
                let name = entry.file_name().to_string_lossy().to_string();
                if outputs.len() as u64 == MAX_OUTPUT_FILES {
                    return Ok(Err(format!(
                        "run() left more than {MAX_OUTPUT_FILES} files in AZUREML_BI_OUTPUT_PATH, the most one mini-batch may leave"
                    )));
                }
                match leftovers::checked_size(&entry.path(), FILE_LIMIT) {
                    Ok(size) => total += size,
                    Err(why) => return Ok(Err(refused(&name, why))),
                }
                if total > MAX_OUTPUT_BYTES {
                    return Ok(Err(format!(
                        "the files run() left in AZUREML_BI_OUTPUT_PATH hold more than {MAX_OUTPUT_BYTES} bytes, the most one mini-batch may leave"
                    )));
                }
                outputs.push((entry.path(), name));
            }
        }
        if let Some(part) = part {
            let bytes = match leftovers::read(part, FILE_LIMIT) {
                Ok(bytes) => bytes,
                Err(why) => return Ok(Err(format!("the scorer's result part was refused: {why}"))),
            };
            let _ = std::fs::remove_file(part);
            self.part = Some(Bytes::from(bytes));
        }
        for (file, name) in outputs {
            // Read again as it is now: a file changed since it was counted is held to the same limits.
            let bytes = match leftovers::read(&file, FILE_LIMIT) {
                Ok(bytes) => Bytes::from(bytes),
                Err(why) => return Ok(Err(refused(&name, why))),
            };
            let path = format!("/worker/v1/leases/{}/outputs/{}", lease.lease_id, encode(&name));
            retrying(|| self.client.put_bytes(&path, bytes.clone())).await?;
            std::fs::remove_file(file)?;
        }
        Ok(Ok(()))
    }

    fn append_error_log(&self, job: &str, what: &str, text: &str) {
        let path = self.job_dir(job).join("logs").join(self.logs().error);
        let _ = std::fs::create_dir_all(path.parent().expect("has a parent"));
        if let Ok(mut f) = leftovers::open_append(&path) {
            let _ = writeln!(f, "{} {what} failed:\n{}\n", now(), text.trim_end());
        }
    }

    /// Uploads this slot's log files of a job that changed since their last upload (whole files:
    /// replacing is idempotent), through the current lease, before the attempt is reported, so they are
    /// in place when it ends. The stdout log sits in a folder the sandbox can write, so it is read as
    /// hostile input: a link or a FIFO in its place is not read, and only its last bytes are sent.
    async fn upload_logs(&mut self, lease: &Lease) {
        let logs = self.logs();
        let local = self.job_dir(&lease.job).join("logs");
        for rel in [&logs.stdout, &logs.stderr, &logs.error] {
            let file = local.join(rel);
            let Some(len) = leftovers::plain_size(&file) else {
                continue;
            };
            if self.uploaded.get(&file) == Some(&len) {
                continue;
            }
            let (bytes, size) = match leftovers::read_log(&file, LOG_LIMIT) {
                Ok(read) => read,
                Err(why) => {
                    tracing::warn!(file = %file.display(), %why, "a log file was not uploaded");
                    continue;
                }
            };
            let path = format!("/worker/v1/leases/{}/logs/{}", lease.lease_id, encode_path(rel));
            match self.client.put_bytes(&path, bytes.into()).await {
                Ok(()) => {
                    self.uploaded.insert(file, size);
                }
                Err(error) => tracing::warn!(%error, "failed to upload a log file"),
            }
        }
    }
}

/// Sends the reports in `outbox`, with the request for the next leases when given.
async fn send_reports(client: Client, outbox: Outbox, next: Option<LeaseRequest>) -> anyhow::Result<Sent> {
    let reported = outbox.reports.iter().map(|r| r.lease_id.clone()).collect();
    let head = Bytes::from(serde_json::to_vec(&Reports { reports: outbox.reports, next })?);
    let body = cove_api::worker::bundle::chunks(std::iter::once(head).chain(outbox.parts));
    let ack: ReportsAck = retrying(|| client.post_chunks("/worker/v1/reports", body.clone())).await?;
    Ok(Sent { job_active: ack.acks.iter().all(|a| a.job_active), next: ack.next, reported })
}

/// A slot's leases on their way: granted and not yet worked, worked and not yet reported, reported and
/// not yet answered.
#[derive(Default)]
struct Flow {
    /// Granted and not yet worked, in the order granted.
    held: VecDeque<Lease>,
    /// Every lease granted and not yet answered for, which the heartbeat keeps alive.
    alive: Arc<Mutex<Vec<String>>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// Worked, waiting to be sent.
    outbox: Outbox,
    /// Sent, waiting for the answer.
    sending: Option<tokio::task::JoinHandle<anyhow::Result<Sent>>>,
    pace: Pace,
}

impl Flow {
    fn hold(&mut self, leases: impl IntoIterator<Item = Lease>) {
        for lease in leases {
            self.alive.lock().unwrap_or_else(|p| p.into_inner()).push(lease.lease_id.clone());
            self.held.push_back(lease);
        }
    }
}

/// Reports waiting to be sent together, with their parts.
#[derive(Default)]
struct Outbox {
    reports: Vec<AttemptReport>,
    parts: Vec<Bytes>,
    part_bytes: usize,
}

impl Outbox {
    fn add(&mut self, lease_id: String, completion: Completion, part: Option<Bytes>) {
        self.reports.push(AttemptReport { lease_id, completion, part: part.is_some() });
        if let Some(part) = part {
            self.part_bytes += part.len();
            self.parts.push(part);
        }
    }
}

/// What the control plane answered to sent reports.
struct Sent {
    job_active: bool,
    next: Vec<Lease>,
    reported: Vec<String>,
}

/// Parts held for one report at most: past this, the reports so far are sent before the next attempt.
const FLUSH_BYTES: usize = 4 * 1024 * 1024;

/// How much work a slot asks for at once: about [`GRANT_WORK`] of mini-batches at the pace seen so far
/// (one until the first has been timed), so that quick mini-batches share a request and slow ones
/// never wait behind each other.
#[derive(Default)]
struct Pace {
    /// A moving average of one mini-batch's time, in microseconds.
    average_us: Option<f64>,
}

const GRANT_WORK: Duration = Duration::from_millis(50);

impl Pace {
    fn observe(&mut self, took: Duration) {
        let us = took.as_micros() as f64;
        self.average_us = Some(match self.average_us {
            None => us,
            Some(avg) => 0.7 * avg + 0.3 * us,
        });
    }

    /// How many a slot keeps granted while it works: what it asks for at once, and never fewer than
    /// two, so that one is in hand while the report of the one before it travels.
    fn batches_kept(&self) -> u32 {
        self.batches_wanted().max(2)
    }

    fn batches_wanted(&self) -> u32 {
        match self.average_us {
            None => 1,
            Some(avg) => {
                let n = GRANT_WORK.as_micros() as f64 / avg.max(1.0);
                (n as u32).clamp(1, cove_api::worker::MAX_BATCHES_PER_GRANT)
            }
        }
    }
}

/// Empties a folder the sandbox can write, without following any link left in it.
fn clear_folder(dir: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn now() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", t.as_secs(), t.subsec_millis())
}

fn last_line(text: &str) -> String {
    text.trim_end().lines().last().unwrap_or("").to_string()
}

fn encode_path(path: &str) -> String {
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// A relative path from the control plane, checked so it cannot leave the folder it is joined to.
fn cove_rel_path(path: &str) -> anyhow::Result<PathBuf> {
    let mut out = PathBuf::new();
    for seg in path.split('/') {
        out.push(plain_name(seg)?);
    }
    Ok(out)
}

/// Calls the control plane, retrying while it is unreachable (it may be restarting) for a while.
async fn retrying<T, F, Fut>(mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e @ ClientError::Unreachable { .. }) if start.elapsed() < UNREACHABLE_PATIENCE => {
                tracing::warn!(error = %e, "control plane unreachable, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Builds the lease's environment on this host when it is not there yet (a compute's environment cache
/// on storage its nodes share: the first worker builds, the others wait for it).
async fn ensure_environment(
    build: &cove_api::worker::EnvironmentBuild,
    sandbox: cove_api::worker::SandboxMode,
) -> Result<(), String> {
    if crate::environment::is_built(build) {
        return Ok(());
    }
    let tools = crate::environment::Toolchain::find(&build.python, sandbox)?;
    tools.ensure(build).await.map(|_| ()).map_err(|f| {
        format!("the environment {} could not be built: {} (log: {})", build.key, f.message, f.log.display())
    })
}

/// Supplies one of Cove's own scoring scripts in place of a code asset.
fn write_builtin_script(code_dir: &Path, name: &str) -> anyhow::Result<()> {
    let (file, text) = match name {
        "mlflow" => (crate::MLFLOW_SCRIPT_NAME, crate::MLFLOW_SCRIPT),
        other => anyhow::bail!("unknown built-in scoring script `{other}`"),
    };
    std::fs::create_dir_all(code_dir)?;
    std::fs::write(code_dir.join(file), text)?;
    Ok(())
}

/// Reads a mini-batch's files where this host sees them, beneath their folder (opened once). Blocking.
fn read_in_place(local: &cove_api::worker::InPlace) -> Vec<Result<Bytes, String>> {
    let folder = crate::beneath::Folder::open(Path::new(&local.root));
    let read = |rel: &String| match &folder {
        Ok(folder) => folder.read(rel).map_err(|why| in_place_error(rel, &why)),
        Err(why) => Err(in_place_error(rel, why)),
    };
    local.paths.iter().map(read).collect()
}

/// Why an input file read in place failed, as the control plane would say it.
fn in_place_error(rel: &str, why: &str) -> String {
    format!("cannot read input file `{rel}`: {why}")
}

/// The route of inputs read where the worker's host sees them.
const IN_PLACE: &str = "in place";

/// Reads each file from the store itself, through the URL the control plane signed for it, verifying
/// an HTTPS store against the system's CAs and `ca`, its private endpoint's.
/// Why a signed URL could not be read.
struct ReadFailure {
    /// The store refused the URL (403): its signature expired, or was never good.
    refused: bool,
    reason: String,
}

async fn read_signed(
    urls: &[String],
    names: &[String],
    ca: Option<&str>,
) -> anyhow::Result<Vec<Result<Bytes, ReadFailure>>> {
    use futures::StreamExt;
    // One client (and its pooled connections) per CA, for the worker's life.
    static CLIENTS: Mutex<Option<HashMap<Option<String>, reqwest::Client>>> = Mutex::new(None);
    let client = {
        let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
        let clients = clients.get_or_insert_with(HashMap::new);
        match clients.get(&ca.map(str::to_string)) {
            Some(c) => c.clone(),
            None => {
                let builder =
                    reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(60));
                let c = crate::trusting(builder, ca).context("a client for the store with the lease's CA")?;
                clients.insert(ca.map(str::to_string), c.clone());
                c
            }
        }
    };
    let pairs: Vec<(String, String)> = urls.iter().cloned().zip(names.iter().cloned()).collect();
    let reads = pairs.into_iter().map(|(url, name)| {
        let client = client.clone();
        read_one(client, url, name)
    });
    Ok(futures::stream::iter(reads).buffered(8).collect().await)
}

/// Reads one signed URL. Its failure names the file and the store's address, never the URL's query:
/// that is the signature, and the reason reaches the job's status and logs, which any reader sees.
async fn read_one(client: reqwest::Client, url: String, name: String) -> Result<Bytes, ReadFailure> {
    let fail = |why: String, refused: bool| {
        let why = cove_api::redact::url_queries(&why);
        ReadFailure { refused, reason: format!("cannot read input file `{name}` from the store: {why}") }
    };
    let response = client.get(&url).send().await.map_err(|e| fail(e.without_url().to_string(), false))?;
    let status = response.status();
    if !status.is_success() {
        let refused = status == reqwest::StatusCode::FORBIDDEN;
        return Err(fail(format!("HTTP {status} from {}", cove_api::redact::url_queries(&url)), refused));
    }
    response.bytes().await.map_err(|e| fail(e.without_url().to_string(), false))
}
