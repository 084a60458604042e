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
