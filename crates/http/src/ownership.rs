//! Who may name which datastore location (see `store::locations`): an invoker can read and write only
//! what its scope owns, registered files never change, and an output location belongs to one job.
//!
//! - Reading (a job's input, a model or code folder being registered): registered files are never a
//!   job's input; an endpoint-scoped caller reads only locations of its own endpoint (its uploads, its
//!   jobs' outputs) besides data nobody holds.
//! - Writing (an upload, a job's output): never into or around a location someone else holds; an
//!   endpoint-scoped caller writes only under `LocalUpload/` and, for job outputs, under
//!   `endpoints/<its endpoint>/` or the default `azureml/<job>/` location.

use super::{ApiError, ApiResult, ErrorCode, User};
use crate::AppRef;
use cove_datastore::DataPath;
use cove_store::{self as store, Location, LocationKind};

/// Why the caller may not read `at` (as `field`), if it may not; `inputs` refuses registered files too.
pub async fn check_read(app: &AppRef, user: &User, field: &str, at: &DataPath, inputs: bool) -> ApiResult<()> {
    let (ds, path) = (at.datastore.clone(), at.path.clone());
    let held = app.store.call(move |c| store::locations_overlapping(c, &ds, &path)).await?;
    if let Some(l) = held.iter().find(|l| inputs && l.kind == LocationKind::Asset) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!("{field}: `{}` reaches {}; registered files are never a job's input", at.uri(), l.describe()),
        ));
    }
    // A registered data asset is the workspace's to read, whoever uploaded its files.
    let within_data = held
        .iter()
        .any(|l| l.kind == LocationKind::Data && (at.path == l.path || at.path.starts_with(&format!("{}/", l.path))));
    for l in held.iter().filter(|_| !within_data) {
        if let Some(scope) = &user.0.endpoint {
            let own = match l.kind {
                LocationKind::Upload => l.owner == user.0.token_id || l.endpoint.as_deref() == Some(scope),
                LocationKind::Output => l.endpoint.as_deref() == Some(scope),
                LocationKind::Asset | LocationKind::Data => true,
            };
            if !own {
                return Err(ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "{field}: `{}` reaches `{}` ({}), which a token scoped to endpoint `{scope}` does not own",
                        at.uri(),
                        l.path,
                        kind_name(l.kind)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn kind_name(kind: LocationKind) -> &'static str {
    match kind {
        LocationKind::Upload => "another scope's upload",
        LocationKind::Asset => "registered files",
        LocationKind::Output => "another endpoint's job output",
        LocationKind::Data => "a data asset",
    }
}

/// The folder an upload path belongs to: `LocalUpload/<id>` for the CLI's uploads, else none.
pub fn upload_folder(path: &str) -> Option<String> {
    let mut parts = path.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("LocalUpload"), Some(id), Some(rest)) if !id.is_empty() && !rest.is_empty() => {
            Some(format!("LocalUpload/{id}"))
        }
        _ => None,
    }
}

/// Checks that the caller may write `path` of `datastore` by upload, and records the upload folder as
/// the caller's on its first file.
pub async fn claim_upload(app: &AppRef, user: &User, datastore: &str, path: &str) -> ApiResult<()> {
    let folder = upload_folder(path);
    let (ds, p) = (datastore.to_string(), path.to_string());
    let (token, scope) = (user.0.token_id.clone(), user.0.endpoint.clone());
    let refused = app
        .store
        .call(move |c| {
            let held = store::locations_overlapping(c, &ds, &p)?;
            let foreign = held
                .iter()
                .find(|l| !(l.kind == LocationKind::Upload && l.owner == token && Some(&l.path) == folder.as_ref()));
            if let Some(l) = foreign {
                return Ok(Some(l.clone()));
            }
            if let Some(folder) = folder.filter(|_| held.is_empty()) {
                let claim =
                    Location { datastore: ds, path: folder, kind: LocationKind::Upload, owner: token, endpoint: scope };
                store::location_claim(c, &claim)?;
            }
            Ok(None)
        })
        .await?;
    match refused {
        Some(l) => Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!("path: {}; an upload may not write into it", l.describe()),
        )),
        None => Ok(()),
    }
}

/// Whether an upload folder lies at, in or around `at`: its uploader may write there for as long as
/// it is theirs, so files registered from it must first be taken out of reach.
pub async fn within_an_upload(app: &AppRef, at: &DataPath) -> ApiResult<bool> {
    let (ds, path) = (at.datastore.clone(), at.path.clone());
    let held = app.store.call(move |c| store::locations_overlapping(c, &ds, &path)).await?;
    Ok(held.iter().any(|l| l.kind == LocationKind::Upload))
}

/// Records that `at` holds registered files (a model version, a deployment's code), which no upload
/// or job may change from now on.
pub async fn claim_asset(app: &AppRef, at: &DataPath, owner: String) -> ApiResult<()> {
    claim_registered(app, at, owner, LocationKind::Asset).await
}

/// Records that `at` holds a data asset's files: any scope may read them, nothing may change them.
pub async fn claim_data(app: &AppRef, at: &DataPath, owner: String) -> ApiResult<()> {
    claim_registered(app, at, owner, LocationKind::Data).await
}

async fn claim_registered(app: &AppRef, at: &DataPath, owner: String, kind: LocationKind) -> ApiResult<()> {
    let claim = Location { datastore: at.datastore.clone(), path: at.path.clone(), kind, owner, endpoint: None };
    app.store.call(move |c| store::location_claim(c, &claim)).await?;
    Ok(())
}

/// Refuses a per-job output location the caller's scope does not own: an endpoint-scoped caller
/// names only locations under `endpoints/<endpoint>/`.
pub fn check_output_scope(user: &User, at: &DataPath) -> ApiResult<()> {
    if at.path.is_empty() {
        return Err(ApiError::invalid(format!(
            "output_path: `{}` is a datastore's root; a job's output location is a new folder",
            at.uri()
        )));
    }
    if let Some(scope) = &user.0.endpoint {
        let prefix = format!("endpoints/{scope}/");
        if !at.path.starts_with(&prefix) {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "output_path: a token scoped to endpoint `{scope}` writes job outputs only under \
                     azureml://datastores/{}/paths/{prefix}…",
                    at.datastore
                ),
            ));
        }
    }
    Ok(())
}
