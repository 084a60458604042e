//! How many refusals the audit log takes one by one. Every refusal is audited, and anyone who can
//! reach a listener can be refused as often as they like: written one row each, a flood of refused
//! connections or bad tokens would grow the store without bound. So each principal (a token the
//! workspace issued) and each source address without one has a budget of [`WRITTEN_PER_KEY`] refusals a
//! minute written as they come; the rest are counted, and each count becomes one summary row when the
//! minute ends (and when the control plane stops). A noisy principal spends only its own budget, so it
//! cannot hide another's refusals.
//!
//! A count is durable before the refusal is answered: counts are kept in the store as they grow
//! (`store::refusal_counts_put`, one transaction for every refusal counted while the last one was
//! written), and a refused caller waits for the write that holds its refusal ([`RefusalBudget::durable`]).
//! A start writes the counts a killed control plane left as their summaries.

use cove_api::AuditEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// How often the counted refusals are written out, and the budgets renewed.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Refusals written one by one in each window, per principal or source.
pub const WRITTEN_PER_KEY: u32 = 20;
/// Sources without a principal counted one by one in each window; refusals from any further source
/// share one key (and one budget).
pub const SOURCES_COUNTED: usize = 100;

/// Whom a refusal is charged to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Principal(String),
    Source(IpAddr),
    OtherSources,
}

impl Key {
    fn name(&self) -> String {
        match self {
            Key::Principal(p) => format!("principal {p}"),
            Key::Source(s) => format!("source {s}"),
            Key::OtherSources => "(other sources)".into(),
        }
    }
}

#[derive(Default)]
pub struct RefusalBudget {
    window: Mutex<Window>,
    /// Set when a count changed that the store does not hold yet.
    dirty: tokio::sync::Notify,
    /// The sequence number of the last count the store holds.
    flushed: tokio::sync::watch::Sender<u64>,
    /// Held while counts are written, so a window's end and a write of its counts never interleave.
    pub writing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Window {
    written: BTreeMap<Key, u32>,
    counted: BTreeMap<Key, Counted>,
    /// Keys whose counts changed since they were last taken for the store.
    changed: BTreeSet<Key>,
    sources: usize,
    /// Numbers every count, across windows.
    seq: u64,
}

struct Counted {
    principal: String,
    source: IpAddr,
    times: u64,
    first_ms: i64,
    last_ms: i64,
    /// The last one counted: what it asked and why it was refused.
    last_action: String,
    last_outcome: String,
}

/// What becomes of one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Written as its own row now.
    Written,
    /// Counted: durable once the store holds this sequence number.
    Counted(u64),
}

impl RefusalBudget {
    /// Whether a refusal of `principal` (`-…` when there is none) from `source` is written now; when it
    /// is not, it is counted for the summary.
    pub fn admit(&self, principal: &str, source: IpAddr, action: &str, outcome: &str) -> Admission {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let key = if principal.starts_with('-') {
            if w.counted.contains_key(&Key::Source(source)) || w.written.contains_key(&Key::Source(source)) {
                Key::Source(source)
            } else if w.sources < SOURCES_COUNTED {
                w.sources += 1;
                Key::Source(source)
            } else {
                Key::OtherSources
            }
        } else {
            Key::Principal(principal.to_string())
        };
        let written = w.written.entry(key.clone()).or_default();
        if *written < WRITTEN_PER_KEY {
            *written += 1;
            return Admission::Written;
        }
        let now = cove_store::now_ms();
        let c = w.counted.entry(key.clone()).or_insert_with(|| Counted {
            principal: if principal.starts_with('-') { "-".into() } else { principal.to_string() },
            source,
            times: 0,
            first_ms: now,
            last_ms: now,
            last_action: String::new(),
            last_outcome: String::new(),
        });
        c.times += 1;
        c.last_ms = now;
        c.source = source;
        c.last_action = action.to_string();
        c.last_outcome = outcome.to_string();
        w.changed.insert(key);
        w.seq += 1;
        let seq = w.seq;
        drop(w);
        self.dirty.notify_one();
        Admission::Counted(seq)
    }

    /// Waits until a count of [`Admission::Counted`] is held by the store.
    pub async fn durable(&self, seq: u64) {
        let mut flushed = self.flushed.subscribe();
        let _ = flushed.wait_for(|f| *f >= seq).await;
    }

    /// Waits until some count changed that the store does not hold.
    pub async fn changed(&self) {
        self.dirty.notified().await;
    }

    /// The counts that changed since last taken, as their summaries keyed for the store, and the
    /// sequence number they bring the store to.
    pub fn take_changed(&self) -> (u64, Vec<(String, AuditEntry)>) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let changed = std::mem::take(&mut w.changed);
        let rows = changed.into_iter().map(|k| (k.name(), summary(&k, &w.counted[&k]))).collect();
        (w.seq, rows)
    }

    /// Records that the store holds every count up to `seq`.
    pub fn mark_durable(&self, seq: u64) {
        self.flushed.send_if_modified(|f| {
            let newer = seq > *f;
            *f = (*f).max(seq);
            newer
        });
    }

    /// Ends the window: the summaries of what was counted, the sequence number they cover, and new
    /// budgets.
    pub fn close_window(&self) -> (u64, Vec<AuditEntry>) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let seq = w.seq;
        let counted = std::mem::take(&mut w.counted);
        *w = Window { seq, ..Window::default() };
        (seq, counted.iter().map(|(k, c)| summary(k, c)).collect())
    }
}

/// The summary row of one key's counted refusals.
fn summary(key: &Key, c: &Counted) -> AuditEntry {
    AuditEntry {
        time: String::new(),
        principal: c.principal.clone(),
        source: match key {
            Key::OtherSources => "(other sources)".into(),
            _ => c.source.to_string(),
        },
        action: "refusals counted, not written one by one".into(),
        resource: c.last_action.clone(),
        outcome: format!(
            "refused {} times from {} to {}; the last: {}",
            c.times,
            cove_store::timestamp(c.first_ms),
            cove_store::timestamp(c.last_ms),
            c.last_outcome
        ),
        detail: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(a: Admission) -> bool {
        a == Admission::Written
    }

    #[test]
    fn a_flood_is_written_up_to_each_budget_and_counted_past_it() {
        let budget = RefusalBudget::default();
        let attacker: IpAddr = "198.18.0.9".parse().unwrap();
        let n = (0..1000)
            .filter(|_| written(budget.admit("-", attacker, "GET /api/v1/endpoints", "refused (401)")))
            .count();
        assert_eq!(n, WRITTEN_PER_KEY as usize);
        // A noisy principal spends its own budget only: another principal's refusals are still written,
        // from the same address too.
        let noisy =
            (0..500).filter(|_| written(budget.admit("tok-a (reader)", attacker, "POST /x", "refused (403)"))).count();
        assert_eq!(noisy, WRITTEN_PER_KEY as usize);
        assert!(written(budget.admit("tok-b (worker of local)", attacker, "POST /w", "refused (409)")));
        // Many sources: the first ones counted apart, the rest together, with one budget between them.
        for i in 0..(SOURCES_COUNTED as u32 + 50) {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0xC612_1000 + i));
            for _ in 0..=WRITTEN_PER_KEY {
                budget.admit("-", source, "connect", "refused: not a private network");
            }
        }
        let (seq, changed) = budget.take_changed();
        assert_eq!(seq, 980 + 480 + (SOURCES_COUNTED as u64 - 1) + 51 * 21 - 20, "every count is numbered");
        assert!(budget.take_changed().1.is_empty(), "taken once");
        assert_eq!(changed.len(), 2 + (SOURCES_COUNTED - 1) + 1, "the two floods, each source and the rest");
        let (closed_at, summaries) = budget.close_window();
        assert_eq!(closed_at, seq);
        let of = |source: &str, principal: &str| {
            summaries.iter().find(|s| s.source == source && s.principal == principal).unwrap().outcome.clone()
        };
        assert!(of("198.18.0.9", "-").starts_with("refused 980 times from "));
        assert!(of("198.18.0.9", "tok-a (reader)").starts_with("refused 480 times from "));
        let rest = of("(other sources)", "-");
        assert!(rest.starts_with(&format!("refused {} times", 51 * 21 - 20)), "{rest}");
        assert!(rest.ends_with("the last: refused: not a private network"));
        // A new window has new budgets, and nothing left to summarize.
        assert!(written(budget.admit("-", attacker, "GET /", "refused (401)")));
        assert!(budget.close_window().1.is_empty());
    }
}
