//! The audit log: append-only rows (the schema's triggers refuse updates and deletes).

use super::{now_ms, StoreResult};
use cove_api::AuditEntry;
use rusqlite::{params, Connection};

pub fn audit_append(conn: &Connection, e: &AuditEntry) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO audit (ts_ms, principal, source, action, resource, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![now_ms(), e.principal, e.source, e.action, e.resource, e.outcome, e.detail],
    )?;
    Ok(())
}

pub fn audit_since(conn: &Connection, since_ms: i64, limit: u32) -> StoreResult<Vec<(i64, AuditEntry)>> {
    let mut stmt = conn.prepare(
        "SELECT ts_ms, principal, source, action, resource, outcome, detail FROM audit WHERE ts_ms >= ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![since_ms, limit], |r| {
        Ok((
            r.get(0)?,
            AuditEntry {
                time: String::new(),
                principal: r.get(1)?,
                source: r.get(2)?,
                action: r.get(3)?,
                resource: r.get(4)?,
                outcome: r.get(5)?,
                detail: r.get(6)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Keeps the current counts of refusals not written one by one (`http::refusals`): each as the summary
/// entry it becomes when its minute ends, replaced as its count grows.
pub fn refusal_counts_put(conn: &mut Connection, counts: &[(String, AuditEntry)]) -> StoreResult<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached("INSERT OR REPLACE INTO refusal_counts (key, summary) VALUES (?1, ?2)")?;
        for (key, summary) in counts {
            stmt.execute(params![key, serde_json::to_string(summary).expect("an audit entry serialises")])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Ends a window of counted refusals: its summaries go into the audit log and the kept counts are
/// cleared, in one transaction. With no summaries given, the counts kept in the store are written
/// (those a control plane killed in the middle of a minute left behind); returns how many were.
pub fn refusal_counts_close(conn: &mut Connection, summaries: Option<&[AuditEntry]>) -> StoreResult<usize> {
    let tx = conn.transaction()?;
    let kept: Vec<AuditEntry> = match summaries {
        Some(s) => s.to_vec(),
        None => {
            let mut stmt = tx.prepare("SELECT summary FROM refusal_counts ORDER BY key")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            rows.iter().filter_map(|text| serde_json::from_str(text).ok()).collect()
        }
    };
    for entry in &kept {
        audit_append(&tx, entry)?;
    }
    tx.execute("DELETE FROM refusal_counts", [])?;
    tx.commit()?;
    Ok(kept.len())
}
