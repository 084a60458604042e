//! Prometheus metrics: what an operator of a batch system watches, in the 0.0.4 text format.
//!
//! Two sources: counters this process keeps (HTTP requests, refusals, datastore bytes, environment
//! builds), and what the state store knows, read once per scrape (jobs by status, attempts by outcome,
//! retries, the queue, workers holding leases, mini-batch durations), which holds across restarts.
//! Labels take only bounded values: statuses, outcomes, routes, computes and deployments (which the
//! workspace's owner creates), never jobs, leases or workers.

use cove_store::{MetricsSnapshot, DURATION_BUCKETS};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Why a request was refused, as `cove_refusals_total` counts it.
pub const REFUSAL_REASONS: [&str; 4] = ["network", "unauthenticated", "forbidden", "worker_protocol"];

pub struct Metrics {
    registry: Registry,
    /// `cove_http_requests_total{method, route, status}`: `route` is the route's template.
    pub http_requests: IntCounterVec,
    /// `cove_refusals_total{reason}`, one of [`REFUSAL_REASONS`].
    pub refusals: IntCounterVec,
    /// `cove_datastore_bytes_total{direction}`: `read` (files served to workers and callers) and
    /// `written` (uploads, parts, outputs) through the control plane.
    pub datastore_bytes: IntCounterVec,
    /// `cove_environment_build_duration_seconds{outcome}`.
    pub environment_builds: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("cove_http_requests_total", "HTTP requests answered, by method, route template and status"),
            &["method", "route", "status"],
        )
        .expect("a valid metric");
        let refusals = IntCounterVec::new(Opts::new("cove_refusals_total", "Requests refused, by reason"), &["reason"])
            .expect("valid");
        let datastore_bytes = IntCounterVec::new(
            Opts::new("cove_datastore_bytes_total", "Bytes of datastore files the control plane read or wrote"),
            &["direction"],
        )
        .expect("a valid metric");
        let environment_builds = HistogramVec::new(
            HistogramOpts::new(
                "cove_environment_build_duration_seconds",
                "Time to resolve and build a deployment's environment",
            )
            .buckets(vec![0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]),
            &["outcome"],
        )
        .expect("a valid metric");
        registry.register(Box::new(http_requests.clone())).expect("registered once");
        registry.register(Box::new(refusals.clone())).expect("registered once");
        registry.register(Box::new(datastore_bytes.clone())).expect("registered once");
        registry.register(Box::new(environment_builds.clone())).expect("registered once");
        // Every known label value exists from the first scrape.
        for reason in REFUSAL_REASONS {
            refusals.with_label_values(&[reason]);
        }
        for direction in ["read", "written"] {
            datastore_bytes.with_label_values(&[direction]);
        }
        Metrics { registry, http_requests, refusals, datastore_bytes, environment_builds }
    }

    /// The exposition: this process's counters and the store's snapshot.
    pub fn render(&self, snapshot: &MetricsSnapshot) -> Result<String, String> {
        let mut families = self.registry.gather();
        // A family with no series yet (no worker holds a lease) is left out, as the encoder requires.
        families.extend(store_families(snapshot).into_iter().filter(|f| !f.get_metric().is_empty()));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        prometheus::TextEncoder::new().encode_to_string(&families).map_err(|e| e.to_string())
    }
}

/// Every job status, so each series exists while no job has it.
const JOB_STATUSES: [&str; 9] = [
    "NotStarted",
    "Preparing",
    "Queued",
    "Running",
    "Finalizing",
    "CancelRequested",
    "Completed",
    "Failed",
    "Canceled",
];

fn store_families(s: &MetricsSnapshot) -> Vec<MetricFamily> {
    let mut jobs: Vec<(Vec<(&str, String)>, f64)> =
        JOB_STATUSES.iter().map(|st| (vec![("status", st.to_string())], 0.0)).collect();
    for (status, n) in &s.jobs_by_status {
        match jobs.iter_mut().find(|(l, _)| l[0].1 == *status) {
            Some(entry) => entry.1 = *n as f64,
            None => jobs.push((vec![("status", status.clone())], *n as f64)),
        }
    }
    let by_outcome = s
        .attempts_by_outcome
        .iter()
        .map(|(c, o, n)| (vec![("compute", c.clone()), ("outcome", o.clone())], *n as f64))
        .collect();
    let expired = s
        .attempts_by_outcome
        .iter()
        .filter(|(_, o, _)| o == "lease_expired")
        .map(|(c, _, n)| (vec![("compute", c.clone())], *n as f64))
        .collect();
    let retries = s.retries.iter().map(|(c, n)| (vec![("compute", c.clone())], *n as f64)).collect();
    let queue =
        s.queue.iter().map(|(c, d, n)| (vec![("compute", c.clone()), ("deployment", d.clone())], *n as f64)).collect();
    let workers = s.workers.iter().map(|(c, n)| (vec![("compute", c.clone())], *n as f64)).collect();
    vec![
        family("cove_jobs", "Jobs by status", MetricType::GAUGE, jobs),
        family(
            "cove_minibatch_attempts_total",
            "Attempts at mini-batches that ended, by compute and outcome",
            MetricType::COUNTER,
            by_outcome,
        ),
        family(
            "cove_lease_expirations_total",
            "Leases that expired with no report (the worker was lost)",
            MetricType::COUNTER,
            expired,
        ),
        family("cove_minibatch_retries_total", "Attempts after a mini-batch's first", MetricType::COUNTER, retries),
        family("cove_queue_minibatches", "Mini-batches of running jobs waiting for a lease", MetricType::GAUGE, queue),
        family("cove_workers", "Workers holding a lease now", MetricType::GAUGE, workers),
        durations(s),
    ]
}

fn labels(pairs: &[(&str, String)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut l = LabelPair::default();
            l.set_name(name.to_string());
            l.set_value(value.clone());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, samples: Vec<(Vec<(&str, String)>, f64)>) -> MetricFamily {
    let metrics = samples
        .into_iter()
        .map(|(pairs, value)| {
            let mut m = Metric::default();
            m.set_label(labels(&pairs));
            if kind == MetricType::COUNTER {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            } else {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
            m
        })
        .collect();
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn durations(s: &MetricsSnapshot) -> MetricFamily {
    let metrics = s
        .durations
        .iter()
        .map(|(compute, counts, count, sum)| {
            let buckets = DURATION_BUCKETS
                .iter()
                .zip(counts)
                .map(|(bound, n)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(*bound);
                    b.set_cumulative_count(*n);
                    b
                })
                .collect();
            let mut h = Histogram::default();
            h.set_sample_count(*count);
            h.set_sample_sum(*sum);
            h.set_bucket(buckets);
            let mut m = Metric::default();
            m.set_label(labels(&[("compute", compute.clone())]));
            m.set_histogram(h);
            m
        })
        .collect();
    let mut f = MetricFamily::default();
    f.set_name("cove_minibatch_duration_seconds".into());
    f.set_help("Time from a mini-batch's lease to its attempt's end".into());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(metrics);
    f
}
