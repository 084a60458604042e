//! Versioned schema migrations, applied in order and recorded in `PRAGMA user_version`.
//!
//! A migration is never edited once released: a change to the schema is a new entry at the end.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,              -- user | worker
        role TEXT NOT NULL,
        endpoint TEXT,                   -- scope: one endpoint, or all
        compute TEXT,                    -- worker tokens: the compute cluster they serve
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE datastores (name TEXT PRIMARY KEY, kind TEXT NOT NULL, root TEXT NOT NULL);
    CREATE TABLE computes (name TEXT PRIMARY KEY, kind TEXT NOT NULL, max_instances INTEGER NOT NULL);
    CREATE TABLE models (
        name TEXT NOT NULL, version INTEGER NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE endpoints (name TEXT PRIMARY KEY, record TEXT NOT NULL, created_ms INTEGER NOT NULL);
    CREATE TABLE deployments (
        endpoint TEXT NOT NULL, name TEXT NOT NULL, record TEXT NOT NULL, created_ms INTEGER NOT NULL,
        PRIMARY KEY (endpoint, name)
    );
    CREATE TABLE jobs (
        name TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        endpoint TEXT NOT NULL,
        deployment TEXT NOT NULL,
        compute TEXT NOT NULL,
        status TEXT NOT NULL,
        record TEXT NOT NULL,            -- JSON JobRecord: input, output, settings, run spec
        idempotency_key TEXT,
        created_ms INTEGER NOT NULL,
        started_ms INTEGER,
        finished_ms INTEGER,
        error TEXT,
        files_total INTEGER NOT NULL DEFAULT 0,
        batches_total INTEGER NOT NULL DEFAULT 0,
        batches_succeeded INTEGER NOT NULL DEFAULT 0,
        batches_failed INTEGER NOT NULL DEFAULT 0,
        items_ok INTEGER NOT NULL DEFAULT 0,
        items_failed INTEGER NOT NULL DEFAULT 0,
        init_failures INTEGER NOT NULL DEFAULT 0,
        UNIQUE (endpoint, idempotency_key)
    );
    CREATE INDEX jobs_by_status ON jobs (status, seq);
    CREATE TABLE batches (
        job TEXT NOT NULL,
        idx INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        manifest_offset INTEGER NOT NULL,
        manifest_len INTEGER NOT NULL,
        files INTEGER NOT NULL,
        lease_id TEXT,
        lease_deadline_ms INTEGER,
        committed_part TEXT,
        items_ok INTEGER NOT NULL DEFAULT 0,
        items_failed INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        PRIMARY KEY (job, idx)
    );
    CREATE INDEX batches_by_state ON batches (job, state, idx);
    CREATE INDEX batches_by_deadline ON batches (state, lease_deadline_ms);
    CREATE TABLE attempts (
        lease_id TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        idx INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        node TEXT NOT NULL,
        process INTEGER NOT NULL,
        pid INTEGER,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER,
        outcome TEXT,
        reason TEXT,
        items_ok INTEGER NOT NULL DEFAULT 0,
        items_failed INTEGER NOT NULL DEFAULT 0,
        part_uploaded INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX attempts_by_job ON attempts (job, idx, attempt);
    "#,
    // 2: what each attempt ran under (sandbox, file view, limits, network attempts), as JSON.
    "ALTER TABLE attempts ADD COLUMN isolation TEXT;",
    // 3: the append-only audit log. Triggers refuse any change to a written entry.
    r#"
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_ms INTEGER NOT NULL,
        principal TEXT NOT NULL,
        source TEXT NOT NULL,
        action TEXT NOT NULL,
        resource TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX audit_by_time ON audit (ts_ms);
    CREATE TRIGGER audit_is_append_only_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_is_append_only_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    "#,
    // 4: datastores reached over the network name their endpoint.
    "ALTER TABLE datastores ADD COLUMN endpoint TEXT;",
    // 5: compute clusters with a backend definition, and what a job's compute backend holds for it.
    r#"
    ALTER TABLE computes ADD COLUMN spec TEXT;
    ALTER TABLE jobs ADD COLUMN compute_ref TEXT;
    ALTER TABLE jobs ADD COLUMN compute_state TEXT;
    ALTER TABLE jobs ADD COLUMN compute_submissions INTEGER NOT NULL DEFAULT 0;
    "#,
    // 6: who owns which datastore location (uploads, registered files, job outputs); what each job
    // published; the outputs an attempt staged and the compute that ran it.
    r#"
    CREATE TABLE locations (
        datastore TEXT NOT NULL,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        owner TEXT NOT NULL,
        endpoint TEXT,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (datastore, path)
    );
    CREATE TABLE published (
        job TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (job, path)
    );
    ALTER TABLE attempts ADD COLUMN outputs INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN compute TEXT;
    "#,
    // 7: data assets, versioned like models.
    r#"
    CREATE TABLE data_assets (
        name TEXT NOT NULL, version INTEGER NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    "#,
    // 8: registered environments, versioned like data assets.
    r#"
    CREATE TABLE environments (
        name TEXT NOT NULL, version INTEGER NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    "#,
    // 9: the client certificates workers present (mutual TLS), each bound to one compute cluster.
    r#"
    CREATE TABLE worker_certificates (
        fingerprint TEXT PRIMARY KEY,    -- SHA-256 of the certificate's DER, hex
        compute TEXT NOT NULL,
        not_after_ms INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX worker_certificates_by_compute ON worker_certificates (compute);
    "#,
    // 10: small result parts, kept with the attempt that reported them instead of as one file each.
    r#"
    CREATE TABLE part_bodies (
        lease_id TEXT PRIMARY KEY REFERENCES attempts (lease_id),
        body BLOB NOT NULL
    );
    "#,
    // 11: when a worker certificate was renewed (`POST /worker/v1/credential`): each is renewed once.
    r#"
    ALTER TABLE worker_certificates ADD COLUMN renewed_ms INTEGER;
    "#,
    // 12: the bytes of the files an attempt's script wrote, bounded like their number.
    r#"
    ALTER TABLE attempts ADD COLUMN output_bytes INTEGER NOT NULL DEFAULT 0;
    "#,
    // 13: refusals counted and not yet written one by one (`http::refusals`), kept as they are counted,
    // so a control plane killed in the middle of a minute loses none of them.
    r#"
    CREATE TABLE refusal_counts (
        key TEXT PRIMARY KEY,
        summary TEXT NOT NULL
    );
    "#,
];

/// Brings the schema up to date, one transaction per migration.
/// Brings the schema up to this version's; refuses, changing nothing, a schema newer than it knows.
pub fn migrate(conn: &mut Connection) -> crate::StoreResult<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if current > MIGRATIONS.len() {
        return Err(crate::StoreError::NewerSchema { found: current, known: MIGRATIONS.len() });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// A store made by the first schema (the recorded migrations are the older schemas) is migrated to
    /// this version's, keeping its rows; one a newer Cove wrote is refused and left as it was.
    #[test]
    fn an_older_schema_migrates_forward_and_a_newer_one_is_refused() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(super::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute("INSERT INTO meta (key, value) VALUES ('created', '1')", []).unwrap();
        conn.execute(
            "INSERT INTO jobs (name, seq, endpoint, deployment, compute, status, record, created_ms)
             VALUES ('old-job', 1, 'ep', 'blue', 'local', 'Completed', '{}', 1)",
            [],
        )
        .unwrap();
        super::migrate(&mut conn).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v as usize, super::MIGRATIONS.len());
        let kept: (String, String) =
            conn.query_row("SELECT name, status FROM jobs", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!(kept, ("old-job".to_string(), "Completed".to_string()));

        let newer = super::MIGRATIONS.len() as i64 + 1;
        conn.pragma_update(None, "user_version", newer).unwrap();
        let refused = super::migrate(&mut conn).unwrap_err();
        assert!(matches!(refused, crate::StoreError::NewerSchema { .. }), "{refused}");
        assert!(refused.to_string().contains("a newer Cove wrote it"), "{refused}");
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, newer, "the newer store is left as it was");
    }

    /// The audit log is append-only in the schema itself: no statement changes or removes an entry.
    #[test]
    fn the_audit_log_refuses_changes_and_deletions() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO audit (ts_ms, principal, source, action, resource, outcome) VALUES (1, 'p', 's', 'a', 'r', 'ok')",
            [],
        )
        .unwrap();
        for change in ["UPDATE audit SET outcome = 'forged'", "DELETE FROM audit"] {
            let refused = conn.execute(change, []).unwrap_err().to_string();
            assert!(refused.contains("the audit log is append-only"), "{change}: {refused}");
        }
        let kept: String = conn.query_row("SELECT outcome FROM audit", [], |r| r.get(0)).unwrap();
        assert_eq!(kept, "ok");
    }

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::migrate(&mut conn).unwrap();
        super::migrate(&mut conn).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v as usize, super::MIGRATIONS.len());
    }
}
