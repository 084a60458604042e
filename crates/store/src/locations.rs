//! Who owns which datastore location. A location is a folder (or file) path in one datastore, held by
//! one owner: an upload (the token that made it), a registered asset (a model's or a deployment's code
//! files, which never change), or a job's output (reserved when the job is created, so two jobs can
//! never publish to one place). Locations never nest: a new one may not lie inside or around another,
//! except that an asset may be registered from inside an upload.

use super::{now_ms, Cached, StoreResult};
use rusqlite::{params, Connection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationKind {
    Upload,
    Asset,
    Output,
    /// A registered data asset: readable by every scope, never written again.
    Data,
}

impl LocationKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Asset => "asset",
            Self::Output => "output",
            Self::Data => "data",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "upload" => Self::Upload,
            "asset" => Self::Asset,
            "data" => Self::Data,
            _ => Self::Output,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub datastore: String,
    pub path: String,
    pub kind: LocationKind,
    /// The upload's token id, the asset's name, or the job's name.
    pub owner: String,
    /// The endpoint whose scope holds it; `None` for the workspace as a whole.
    pub endpoint: Option<String>,
}

impl Location {
    /// How a refusal names it.
    pub fn describe(&self) -> String {
        match self.kind {
            LocationKind::Upload => format!("`{}` is an upload of another token", self.path),
            LocationKind::Asset => format!("`{}` holds the registered files of {}", self.path, self.owner),
            LocationKind::Output => format!("`{}` is the output location of job `{}`", self.path, self.owner),
            LocationKind::Data => format!("`{}` holds the registered files of {}", self.path, self.owner),
        }
    }
}

/// Every location that is `path`, lies inside it, or holds it (the datastore root holds all), the
/// deepest first: the most specific holder names a refusal best.
pub fn locations_overlapping(conn: &Connection, datastore: &str, path: &str) -> StoreResult<Vec<Location>> {
    let mut stmt = conn.prepare_cached(
        "SELECT datastore, path, kind, owner, endpoint FROM locations WHERE datastore = ?1 AND (
            path = ?2 OR ?2 = '' OR path = ''
            OR substr(?2, 1, length(path) + 1) = path || '/'
            OR substr(path, 1, length(?2) + 1) = ?2 || '/')
         ORDER BY length(path) DESC, path",
    )?;
    let rows = stmt.query_map(params![datastore, path], |r| {
        Ok(Location {
            datastore: r.get(0)?,
            path: r.get(1)?,
            kind: LocationKind::parse(&r.get::<_, String>(2)?),
            owner: r.get(3)?,
            endpoint: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether any location is recorded at all.
pub fn locations_recorded(conn: &Connection) -> StoreResult<bool> {
    Ok(conn.row("SELECT EXISTS (SELECT 1 FROM locations)", [], |r| r.get(0))?)
}

/// Records a location; a location already recorded at the same path is left as it is.
pub fn location_claim(conn: &Connection, l: &Location) -> StoreResult<()> {
    conn.exec(
        "INSERT INTO locations (datastore, path, kind, owner, endpoint, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (datastore, path) DO NOTHING",
        params![l.datastore, l.path, l.kind.as_str(), l.owner, l.endpoint, now_ms()],
    )?;
    Ok(())
}

/// What a completed job published under its output location, in path order.
pub fn published_of(conn: &Connection, job: &str) -> StoreResult<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT path, size FROM published WHERE job = ?1 ORDER BY path")?;
    let rows = stmt.query_map([job], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str) -> Location {
        Location {
            datastore: "ds".into(),
            path: path.into(),
            kind: LocationKind::Output,
            owner: path.into(),
            endpoint: None,
        }
    }

    #[test]
    fn overlap_is_inside_around_or_equal_never_a_sibling_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(&dir.path().join("db")).unwrap();
        store
            .call_now(|c| {
                location_claim(c, &at("a/b"))?;
                let paths = |p: &str| -> Vec<String> {
                    locations_overlapping(c, "ds", p).unwrap().into_iter().map(|l| l.path).collect()
                };
                assert_eq!(paths("a/b"), ["a/b"]);
                assert_eq!(paths("a/b/c"), ["a/b"]);
                assert_eq!(paths("a"), ["a/b"]);
                assert_eq!(paths(""), ["a/b"]);
                assert!(paths("a/bc").is_empty());
                assert!(paths("a/c").is_empty());
                assert!(locations_overlapping(c, "other", "a/b")?.is_empty());
                Ok(())
            })
            .unwrap();
    }
}
