//! How many refusals the audit log takes one by one. Every refusal is audited, and anyone who can
//! reach a listener can be refused as often as they like: written one row each, a flood of refused
//! connections or bad tokens would grow the store without bound. So the log takes the first
//! [`WRITTEN_PER_WINDOW`] refusals of each minute as they come, and counts the rest, per source, into
//! one summary row per source when the minute ends (and when the control plane stops). Nothing goes
//! unrecorded, and a flood costs at most a few hundred rows a minute.

use cove_api::AuditEntry;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// How often the counted refusals are written out, and the budget renewed.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Refusals written one by one in each window, across all sources.
const WRITTEN_PER_WINDOW: u32 = 100;
/// Sources counted one by one in each window; refusals from any further source share one count.
const SOURCES_COUNTED: usize = 100;

#[derive(Default)]
pub struct RefusalBudget {
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    written: u32,
    /// Per source (none: the sources past [`SOURCES_COUNTED`]), the refusals not written one by one.
    counted: BTreeMap<Option<IpAddr>, Counted>,
}

struct Counted {
    times: u64,
    first_ms: i64,
    last_ms: i64,
    /// The last one counted: what it asked and why it was refused.
    last_action: String,
    last_outcome: String,
}

impl RefusalBudget {
    /// Whether a refusal from `source` is written now; when it is not, it is counted for the summary.
    pub fn admit(&self, source: IpAddr, action: &str, outcome: &str) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.written < WRITTEN_PER_WINDOW {
            w.written += 1;
            return true;
        }
        let key = match w.counted.contains_key(&Some(source)) || w.counted.len() < SOURCES_COUNTED {
            true => Some(source),
            false => None,
        };
        let now = crate::store::now_ms();
        let c = w.counted.entry(key).or_insert_with(|| Counted {
            times: 0,
            first_ms: now,
            last_ms: now,
            last_action: String::new(),
            last_outcome: String::new(),
        });
        c.times += 1;
        c.last_ms = now;
        c.last_action = action.to_string();
        c.last_outcome = outcome.to_string();
        false
    }

    /// Ends the window: the summaries of what was counted, and a new budget.
    pub fn close_window(&self) -> Vec<AuditEntry> {
        let counted = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            w.written = 0;
            std::mem::take(&mut w.counted)
        };
        counted
            .into_iter()
            .map(|(source, c)| AuditEntry {
                time: String::new(),
                principal: "-".into(),
                source: source.map_or_else(|| "(other sources)".to_string(), |s| s.to_string()),
                action: "refusals counted, not written one by one".into(),
                resource: c.last_action,
                outcome: format!(
                    "refused {} times from {} to {}; the last: {}",
                    c.times,
                    crate::logs::timestamp(c.first_ms),
                    crate::logs::timestamp(c.last_ms),
                    c.last_outcome
                ),
                detail: None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_written_up_to_the_budget_and_counted_past_it() {
        let budget = RefusalBudget::default();
        let attacker: IpAddr = "198.18.0.9".parse().unwrap();
        let written = (0..1000).filter(|_| budget.admit(attacker, "GET /api/v1/endpoints", "refused (401)")).count();
        assert_eq!(written, WRITTEN_PER_WINDOW as usize);
        // Many sources: the first ones counted apart, the rest together.
        for i in 0..(SOURCES_COUNTED as u32 + 50) {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0xC612_1000 + i));
            assert!(!budget.admit(source, "connect", "refused: not a private network"));
        }
        let summaries = budget.close_window();
        assert_eq!(summaries.len(), SOURCES_COUNTED + 1, "one row per source counted, and one for the rest");
        let of = |source: &str| summaries.iter().find(|s| s.source == source).unwrap();
        assert!(of("198.18.0.9").outcome.starts_with("refused 900 times from "), "{}", of("198.18.0.9").outcome);
        assert!(of("(other sources)").outcome.starts_with("refused 51 times"), "{}", of("(other sources)").outcome);
        assert!(of("(other sources)").outcome.ends_with("the last: refused: not a private network"));
        // A new window has a new budget, and nothing left to summarize.
        assert!(budget.admit(attacker, "GET /", "refused (401)"));
        assert!(budget.close_window().is_empty());
    }
}
