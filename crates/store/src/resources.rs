//! Rows for the workspace's resources: tokens, datastores, computes, models, endpoints, deployments.
//! Resource bodies are stored as JSON documents of their API type; keys and foreign names are columns.

use super::{now_ms, Cached, StoreResult};
use cove_api::{Compute, Datastore, Deployment, Endpoint, Model};
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub kind: String,
    pub role: String,
    pub endpoint: Option<String>,
    pub compute: Option<String>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked: bool,
}

pub fn token_insert(conn: &Connection, hash: &str, row: &TokenRow) -> StoreResult<()> {
    conn.exec(
        "INSERT INTO tokens (id, hash, kind, role, endpoint, compute, created_ms, expires_ms, revoked)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            row.id,
            hash,
            row.kind,
            row.role,
            row.endpoint,
            row.compute,
            row.created_ms,
            row.expires_ms,
            row.revoked
        ],
    )?;
    Ok(())
}

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        role: r.get(2)?,
        endpoint: r.get(3)?,
        compute: r.get(4)?,
        created_ms: r.get(5)?,
        expires_ms: r.get(6)?,
        revoked: r.get(7)?,
    })
}

const TOKEN_COLUMNS: &str = "id, kind, role, endpoint, compute, created_ms, expires_ms, revoked";

pub fn token_by_hash(conn: &Connection, hash: &str) -> StoreResult<Option<TokenRow>> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1");
    Ok(conn.row(&sql, [hash], token_from_row).optional()?)
}

pub fn datastore_upsert(conn: &Connection, ds: &Datastore) -> StoreResult<()> {
    conn.exec(
        "INSERT INTO datastores (name, kind, root, endpoint) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, root = excluded.root, endpoint = excluded.endpoint",
        params![ds.name, ds.kind, ds.root, ds.endpoint],
    )?;
    Ok(())
}

pub fn datastore_list(conn: &Connection) -> StoreResult<Vec<Datastore>> {
    let mut stmt = conn.prepare_cached("SELECT name, kind, root, endpoint FROM datastores ORDER BY name")?;
    let rows = stmt
        .query_map([], |r| Ok(Datastore { name: r.get(0)?, kind: r.get(1)?, root: r.get(2)?, endpoint: r.get(3)? }))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes a datastore nothing references: no upload, registered file, data asset or job output is
/// on it, and no unfinished job reads it. `Err` says what references it.
pub fn datastore_delete(conn: &mut Connection, name: &str) -> StoreResult<Result<bool, String>> {
    let tx = conn.transaction()?;
    let held: i64 = tx.query_row("SELECT COUNT(*) FROM locations WHERE datastore = ?1", [name], |r| r.get(0))?;
    if held > 0 {
        return Ok(Err(format!("{held} upload(s), registered model, code or data files, or job outputs are on it")));
    }
    let prefix = format!("azureml://datastores/{name}/paths/%");
    let reading: i64 = tx.query_row(
        "SELECT COUNT(*) FROM jobs WHERE status NOT IN ('Completed', 'Failed', 'Canceled')
         AND json_extract(record, '$.input.uri') LIKE ?1",
        [&prefix],
        |r| r.get(0),
    )?;
    if reading > 0 {
        return Ok(Err(format!("{reading} unfinished job(s) read it")));
    }
    let deleted = tx.execute("DELETE FROM datastores WHERE name = ?1", [name])? > 0;
    tx.commit()?;
    Ok(Ok(deleted))
}

pub fn compute_upsert(conn: &Connection, c: &Compute) -> StoreResult<()> {
    let spec = match (&c.slurm, &c.aml) {
        (Some(slurm), _) => Some(serde_json::to_string(slurm)?),
        (None, Some(aml)) => Some(serde_json::to_string(aml)?),
        (None, None) => None,
    };
    conn.exec(
        "INSERT INTO computes (name, kind, max_instances, spec) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, max_instances = excluded.max_instances, spec = excluded.spec",
        params![c.name, c.kind, c.max_instances, spec],
    )?;
    Ok(())
}

pub fn compute_list(conn: &Connection) -> StoreResult<Vec<Compute>> {
    let mut stmt = conn.prepare_cached("SELECT name, kind, max_instances, spec FROM computes ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, Option<String>>(3)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (name, kind, max_instances, spec): (String, String, u32, Option<String>) = row?;
        let (slurm, aml) = match (kind.as_str(), spec) {
            ("amlcompute", Some(s)) => (None, Some(serde_json::from_str(&s)?)),
            (_, Some(s)) => (Some(serde_json::from_str(&s)?), None),
            (_, None) => (None, None),
        };
        out.push(Compute { name, kind, max_instances, slurm, aml });
    }
    Ok(out)
}

pub fn compute_get(conn: &Connection, name: &str) -> StoreResult<Option<Compute>> {
    Ok(compute_list(conn)?.into_iter().find(|c| c.name == name))
}

/// Deletes a compute cluster that no deployment and no unfinished job uses; `Err` names what uses it.
pub fn compute_delete(conn: &mut Connection, name: &str) -> StoreResult<Result<bool, String>> {
    let tx = conn.transaction()?;
    let deployments: Vec<String> = {
        let mut stmt = tx.prepare(
            "SELECT endpoint || '/' || name FROM deployments WHERE json_extract(record, '$.compute') = ?1 ORDER BY 1",
        )?;
        let rows = stmt.query_map([name], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    if !deployments.is_empty() {
        return Ok(Err(format!("deployments use it: {}", deployments.join(", "))));
    }
    let running: i64 = tx.query_row(
        "SELECT COUNT(*) FROM jobs WHERE compute = ?1 AND status NOT IN ('Completed', 'Failed', 'Canceled')",
        [name],
        |r| r.get(0),
    )?;
    if running > 0 {
        return Ok(Err(format!("{running} unfinished job(s) run on it")));
    }
    let deleted = tx.execute("DELETE FROM computes WHERE name = ?1", [name])? > 0;
    tx.commit()?;
    Ok(Ok(deleted))
}

/// Tables of versioned assets whose whole record is one JSON value: data assets and environments.
#[derive(Clone, Copy)]
pub enum Versioned {
    Data,
    Environment,
}

impl Versioned {
    fn table(self) -> &'static str {
        match self {
            Versioned::Data => "data_assets",
            Versioned::Environment => "environments",
        }
    }
}

/// Registers version `version` of `name` (the next one when it is 0); `None` when that version exists
/// already. Returns the version registered.
pub fn versioned_create<T: serde::Serialize>(
    conn: &Connection,
    kind: Versioned,
    name: &str,
    version: u32,
    record: impl FnOnce(u32) -> T,
) -> StoreResult<Option<T>> {
    let table = kind.table();
    let version = if version == 0 {
        let last: Option<u32> =
            conn.row(&format!("SELECT MAX(version) FROM {table} WHERE name = ?1"), [name], |r| r.get(0))?;
        last.unwrap_or(0) + 1
    } else {
        version
    };
    let record = record(version);
    let inserted = conn.exec(
        &format!(
            "INSERT INTO {table} (name, version, record) VALUES (?1, ?2, ?3) ON CONFLICT (name, version) DO NOTHING"
        ),
        params![name, version, serde_json::to_string(&record)?],
    )?;
    Ok((inserted == 1).then_some(record))
}

/// Finds a version; `None` as the version means the latest.
pub fn versioned_get<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    kind: Versioned,
    name: &str,
    version: Option<u32>,
) -> StoreResult<Option<T>> {
    let table = kind.table();
    let record: Option<String> = match version {
        Some(v) => conn
            .row(&format!("SELECT record FROM {table} WHERE name = ?1 AND version = ?2"), params![name, v], |r| {
                r.get(0)
            })
            .optional()?,
        None => conn
            .row(&format!("SELECT record FROM {table} WHERE name = ?1 ORDER BY version DESC LIMIT 1"), [name], |r| {
                r.get(0)
            })
            .optional()?,
    };
    Ok(record.map(|r| serde_json::from_str(&r)).transpose()?)
}

pub fn versioned_list<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    kind: Versioned,
    name: Option<&str>,
) -> StoreResult<Vec<T>> {
    let table = kind.table();
    let mut stmt = conn
        .prepare_cached(&format!("SELECT record FROM {table} WHERE ?1 IS NULL OR name = ?1 ORDER BY name, version"))?;
    let rows = stmt.query_map([name], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(serde_json::from_str(&row?)?);
    }
    Ok(out)
}

/// The environments deployments and unfinished jobs run in: what must not be removed.
pub fn environment_keys_in_use(conn: &Connection) -> StoreResult<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT json_extract(record, '$.environment.key') FROM deployments WHERE json_extract(record, '$.environment.key') IS NOT NULL
         UNION SELECT json_extract(record, '$.run.environment.key') FROM jobs
         WHERE status NOT IN ('Completed', 'Failed', 'Canceled') AND json_extract(record, '$.run.environment.key') IS NOT NULL",
    )?;
    let keys = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(keys)
}

/// Registers the next version of a model and returns it. Callers needing atomicity with other writes
/// pass a transaction; the single connection makes the read-then-insert safe either way.
pub fn model_create(conn: &Connection, mut model: Model) -> StoreResult<Model> {
    let last: Option<u32> = conn.row("SELECT MAX(version) FROM models WHERE name = ?1", [&model.name], |r| r.get(0))?;
    model.version = last.unwrap_or(0) + 1;
    conn.exec(
        "INSERT INTO models (name, version, record) VALUES (?1, ?2, ?3)",
        params![model.name, model.version, serde_json::to_string(&model)?],
    )?;
    Ok(model)
}

/// Registers a model at the version it names; `None` when that version exists already.
pub fn model_create_at(conn: &Connection, model: Model) -> StoreResult<Option<Model>> {
    let inserted = conn.exec(
        "INSERT INTO models (name, version, record) VALUES (?1, ?2, ?3) ON CONFLICT (name, version) DO NOTHING",
        params![model.name, model.version, serde_json::to_string(&model)?],
    )?;
    Ok((inserted == 1).then_some(model))
}

/// Archives a model version (or restores it); `false` when it does not exist.
pub fn model_set_archived(conn: &Connection, name: &str, version: u32, archived: bool) -> StoreResult<bool> {
    let Some(mut model) = model_get(conn, name, Some(version))? else { return Ok(false) };
    model.archived = archived;
    conn.exec(
        "UPDATE models SET record = ?3 WHERE name = ?1 AND version = ?2",
        params![name, version, serde_json::to_string(&model)?],
    )?;
    Ok(true)
}

/// Deletes a model version no deployment uses; `Err` names the deployments that do.
pub fn model_delete(conn: &Connection, name: &str, version: u32) -> StoreResult<Result<bool, String>> {
    let mut stmt = conn.prepare(
        "SELECT endpoint || '/' || name FROM deployments
         WHERE json_extract(record, '$.model.name') = ?1 AND json_extract(record, '$.model.version') = ?2 ORDER BY 1",
    )?;
    let users: Vec<String> = stmt.query_map(params![name, version], |r| r.get(0))?.collect::<Result<_, _>>()?;
    if !users.is_empty() {
        return Ok(Err(users.join(", ")));
    }
    Ok(Ok(conn.exec("DELETE FROM models WHERE name = ?1 AND version = ?2", params![name, version])? > 0))
}

/// Finds a model version; `None` as the version means the latest.
pub fn model_get(conn: &Connection, name: &str, version: Option<u32>) -> StoreResult<Option<Model>> {
    let record: Option<String> = match version {
        Some(v) => conn
            .query_row("SELECT record FROM models WHERE name = ?1 AND version = ?2", params![name, v], |r| r.get(0))
            .optional()?,
        None => conn
            .query_row(
                "SELECT record FROM models WHERE name = ?1 AND NOT COALESCE(json_extract(record, '$.archived'), 0)
                 ORDER BY version DESC LIMIT 1",
                [name],
                |r| r.get(0),
            )
            .optional()?,
    };
    Ok(record.map(|r| serde_json::from_str(&r)).transpose()?)
}

pub fn model_list(conn: &Connection, name: Option<&str>) -> StoreResult<Vec<Model>> {
    let mut stmt =
        conn.prepare_cached("SELECT record FROM models WHERE ?1 IS NULL OR name = ?1 ORDER BY name, version")?;
    let rows = stmt.query_map([name], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(serde_json::from_str(&row?)?);
    }
    Ok(out)
}

/// Inserts an endpoint; returns false when the name is taken.
pub fn endpoint_insert(conn: &Connection, ep: &Endpoint) -> StoreResult<bool> {
    let n = conn.exec(
        "INSERT INTO endpoints (name, record, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
        params![ep.spec.name, serde_json::to_string(ep)?, now_ms()],
    )?;
    Ok(n == 1)
}

pub fn endpoint_put(conn: &Connection, ep: &Endpoint) -> StoreResult<()> {
    conn.exec("UPDATE endpoints SET record = ?2 WHERE name = ?1", params![ep.spec.name, serde_json::to_string(ep)?])?;
    Ok(())
}

pub fn endpoint_get(conn: &Connection, name: &str) -> StoreResult<Option<Endpoint>> {
    let record: Option<String> =
        conn.row("SELECT record FROM endpoints WHERE name = ?1", [name], |r| r.get(0)).optional()?;
    let Some(record) = record else {
        return Ok(None);
    };
    let mut ep: Endpoint = serde_json::from_str(&record)?;
    ep.deployments = deployment_names(conn, name)?;
    Ok(Some(ep))
}

pub fn endpoint_list(conn: &Connection) -> StoreResult<Vec<Endpoint>> {
    let names: Vec<String> = {
        let mut stmt = conn.prepare_cached("SELECT name FROM endpoints ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for name in names {
        out.extend(endpoint_get(conn, &name)?);
    }
    Ok(out)
}

/// Deletes an endpoint and its deployments (never its jobs); returns false when it did not exist.
pub fn endpoint_delete(conn: &mut Connection, name: &str) -> StoreResult<bool> {
    let tx = conn.transaction()?;
    tx.exec("DELETE FROM deployments WHERE endpoint = ?1", [name])?;
    let n = tx.exec("DELETE FROM endpoints WHERE name = ?1", [name])?;
    tx.commit()?;
    Ok(n == 1)
}

fn deployment_names(conn: &Connection, endpoint: &str) -> StoreResult<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT name FROM deployments WHERE endpoint = ?1 ORDER BY name")?;
    let rows = stmt.query_map([endpoint], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Inserts or replaces a deployment (create is idempotent per name, like `az ml batch-deployment create`).
pub fn deployment_put(conn: &Connection, dep: &Deployment) -> StoreResult<()> {
    conn.exec(
        "INSERT INTO deployments (endpoint, name, record, created_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (endpoint, name) DO UPDATE SET record = excluded.record",
        params![dep.endpoint_name, dep.name, serde_json::to_string(dep)?, now_ms()],
    )?;
    Ok(())
}

pub fn deployment_get(conn: &Connection, endpoint: &str, name: &str) -> StoreResult<Option<Deployment>> {
    let record: Option<String> = conn
        .query_row("SELECT record FROM deployments WHERE endpoint = ?1 AND name = ?2", [endpoint, name], |r| r.get(0))
        .optional()?;
    Ok(record.map(|r| serde_json::from_str(&r)).transpose()?)
}

pub fn deployment_list(conn: &Connection, endpoint: &str) -> StoreResult<Vec<Deployment>> {
    deployments_where(conn, Some(endpoint))
}

/// Every deployment of every endpoint.
pub fn deployment_list_all(conn: &Connection) -> StoreResult<Vec<Deployment>> {
    deployments_where(conn, None)
}

fn deployments_where(conn: &Connection, endpoint: Option<&str>) -> StoreResult<Vec<Deployment>> {
    let mut stmt = conn
        .prepare_cached("SELECT record FROM deployments WHERE ?1 IS NULL OR endpoint = ?1 ORDER BY endpoint, name")?;
    let rows = stmt.query_map([endpoint], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(serde_json::from_str(&row?)?);
    }
    Ok(out)
}

pub fn deployment_delete(conn: &Connection, endpoint: &str, name: &str) -> StoreResult<bool> {
    Ok(conn.exec("DELETE FROM deployments WHERE endpoint = ?1 AND name = ?2", [endpoint, name])? == 1)
}

pub fn token_list(conn: &Connection) -> StoreResult<Vec<TokenRow>> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_ms, id");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], token_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revokes every worker token of a compute cluster; returns how many were current.
pub fn worker_tokens_revoke(conn: &Connection, compute: &str) -> StoreResult<usize> {
    Ok(conn.exec("UPDATE tokens SET revoked = 1 WHERE kind = 'worker' AND compute = ?1 AND revoked = 0", [compute])?)
}

/// Revokes a token; returns false when no such token exists.
pub fn token_revoke(conn: &Connection, id: &str) -> StoreResult<bool> {
    Ok(conn.exec("UPDATE tokens SET revoked = 1 WHERE id = ?1", [id])? == 1)
}
