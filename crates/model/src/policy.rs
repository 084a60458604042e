//! The job policy: what happens to a mini-batch after an attempt, and whether a job goes on, fails or
//! finalizes. These are the reference system's rules (`max_retries` attempts per mini-batch, a job-wide
//! `error_threshold` over failed items, "no succeeded item", bounded `init()` failures) written as pure
//! functions, so the store applies them inside one transaction and tests can enumerate them.

/// How one attempt at a mini-batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// `run()` returned; `items_ok` rows came back for a mini-batch of `files` files.
    Succeeded { items_ok: u64, items_failed: u64 },
    /// `run()` raised, or the scorer process died while running it.
    Failed { reason: String },
    /// `run()` did not return within `retry_settings.timeout`.
    TimedOut,
    /// The lease deadline passed with no report: the worker is presumed lost.
    LeaseExpired,
    /// `init()` failed before the mini-batch ran: the attempt is not counted against the mini-batch.
    InitFailed { reason: String },
    /// A planned stop of the control plane ended the lease before its worker reported: not the
    /// mini-batch's fault, so it is not counted against it.
    Interrupted,
}

/// What the store does with the mini-batch after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchNext {
    /// The attempt's part becomes the mini-batch's committed output.
    Commit,
    /// Back to pending for another attempt.
    Retry,
    /// Back to pending without spending an attempt (the scorer never ran the mini-batch).
    Release,
    /// Back to pending without spending an attempt or counting an `init()` failure (a planned stop).
    Requeue,
    /// Every allowed attempt was spent: the mini-batch fails and its files count as failed items.
    GiveUp { reason: String },
}

/// Decides a mini-batch's next state after attempt number `attempt` (1-based) with `max_retries`
/// allowed attempts in all, as the reference counts them.
pub fn after_attempt(attempt: u32, max_retries: u32, outcome: &AttemptOutcome) -> BatchNext {
    let reason = match outcome {
        AttemptOutcome::Succeeded { .. } => return BatchNext::Commit,
        AttemptOutcome::InitFailed { .. } => return BatchNext::Release,
        AttemptOutcome::Interrupted => return BatchNext::Requeue,
        AttemptOutcome::Failed { reason } => reason.clone(),
        AttemptOutcome::TimedOut => "run() timed out".to_string(),
        AttemptOutcome::LeaseExpired => "the worker holding the mini-batch was lost (lease expired)".to_string(),
    };
    if attempt >= max_retries.max(1) {
        BatchNext::GiveUp { reason: format!("{reason} (attempt {attempt} of {})", max_retries.max(1)) }
    } else {
        BatchNext::Retry
    }
}

/// The counts a job's verdict depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounters {
    pub batches_total: u64,
    pub batches_succeeded: u64,
    pub batches_failed: u64,
    pub items_ok: u64,
    pub items_failed: u64,
    pub init_failures: u64,
}

/// The job-wide limits, from the deployment's settings and the job's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPolicy {
    /// Failed items allowed over the whole job; -1 ignores failures.
    pub error_threshold: i64,
    /// `init()` failures after which the job fails (the reference: 3 per scorer process).
    pub init_failure_limit: u64,
}

/// Whether a job goes on, fails, or is ready to assemble its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobVerdict {
    Continue,
    Finalize,
    Fail { reason: String },
}

/// Decides a job's fate from its counters.
pub fn job_verdict(c: &JobCounters, policy: &JobPolicy) -> JobVerdict {
    if policy.error_threshold >= 0 && c.items_failed > policy.error_threshold as u64 {
        return JobVerdict::Fail {
            reason: format!(
                "error_threshold exceeded: {} failed items, more than the {} allowed",
                c.items_failed, policy.error_threshold
            ),
        };
    }
    if c.init_failures >= policy.init_failure_limit.max(1) && c.batches_succeeded == 0 {
        return JobVerdict::Fail {
            reason: format!("init() failed {} times, so no scorer process could start", c.init_failures),
        };
    }
    if c.batches_succeeded + c.batches_failed < c.batches_total {
        return JobVerdict::Continue;
    }
    if c.items_ok == 0 {
        return JobVerdict::Fail { reason: "No succeeded mini batch item returned from run()".to_string() };
    }
    JobVerdict::Finalize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> AttemptOutcome {
        AttemptOutcome::Failed { reason: "boom".into() }
    }

    #[test]
    fn attempts_never_exceed_max_retries() {
        for max in 1..6 {
            let mut attempt = 0;
            let next = loop {
                attempt += 1;
                let next = after_attempt(attempt, max, &failed());
                if next != BatchNext::Retry {
                    break next;
                }
            };
            assert_eq!(attempt, max);
            assert_eq!(next, BatchNext::GiveUp { reason: format!("boom (attempt {max} of {max})") });
        }
    }

    #[test]
    fn success_commits_and_init_failure_releases_at_any_attempt() {
        let ok = AttemptOutcome::Succeeded { items_ok: 1, items_failed: 0 };
        assert_eq!(after_attempt(3, 3, &ok), BatchNext::Commit);
        assert_eq!(after_attempt(9, 3, &AttemptOutcome::InitFailed { reason: "x".into() }), BatchNext::Release);
        assert_eq!(after_attempt(1, 1, &AttemptOutcome::Interrupted), BatchNext::Requeue);
        assert_eq!(after_attempt(1, 3, &AttemptOutcome::TimedOut), BatchNext::Retry);
        assert!(matches!(after_attempt(3, 3, &AttemptOutcome::LeaseExpired), BatchNext::GiveUp { .. }));
    }

    #[test]
    fn verdicts_follow_the_reference_rules() {
        let policy = JobPolicy { error_threshold: -1, init_failure_limit: 3 };
        let mut c = JobCounters { batches_total: 2, batches_succeeded: 1, items_ok: 10, ..Default::default() };
        assert_eq!(job_verdict(&c, &policy), JobVerdict::Continue);
        c.batches_failed = 1;
        c.items_failed = 10;
        assert_eq!(job_verdict(&c, &policy), JobVerdict::Finalize, "-1 ignores failures");
        let strict = JobPolicy { error_threshold: 9, ..policy };
        assert!(matches!(job_verdict(&c, &strict), JobVerdict::Fail { reason } if reason.contains("error_threshold")));
        let exact = JobPolicy { error_threshold: 10, ..policy };
        assert_eq!(job_verdict(&c, &exact), JobVerdict::Finalize, "the threshold is exceeded only when passed");
        let none_ok = JobCounters { batches_total: 1, batches_succeeded: 1, ..Default::default() };
        assert!(
            matches!(job_verdict(&none_ok, &policy), JobVerdict::Fail { reason } if reason.contains("No succeeded"))
        );
        let init = JobCounters { batches_total: 1, init_failures: 3, ..Default::default() };
        assert!(matches!(job_verdict(&init, &policy), JobVerdict::Fail { reason } if reason.contains("init()")));
    }
}
