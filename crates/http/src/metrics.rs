//! `GET /metrics`: the Prometheus exposition (text format 0.0.4), for a workspace-wide token of any
//! user role (a reader's is enough; an endpoint-scoped one is refused), and the request counting that feeds `cove_http_requests_total`.

use crate::{ApiResult, AppRef, User};
use axum::extract::State;
use cove_store::auth::Role;

pub async fn metrics(
    State(app): State<AppRef>,
    user: User,
) -> ApiResult<([(axum::http::HeaderName, &'static str); 1], String)> {
    user.require(Role::Reader, None)?;
    // Labels name every endpoint's deployments and computes: workspace-wide, as the audit log is.
    if user.0.endpoint.is_some() {
        return Err(crate::ApiError::new(
            crate::ErrorCode::PermissionDenied,
            "an endpoint-scoped token cannot read the workspace's metrics",
        ));
    }
    let snapshot = app.store.call(|c| cove_store::metrics_snapshot(c)).await?;
    let body = app.metrics.render(&snapshot).map_err(|e| crate::ApiError::internal("render the metrics", e))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body))
}

/// Counts an answered request under its route's template (never the raw path: a label value per job
/// or file would grow without bound).
pub fn count_request(app: &AppRef, method: &str, route: Option<&str>, status: u16) {
    let status = status.to_string();
    app.metrics.http_requests.with_label_values(&[method, route.unwrap_or("unmatched"), &status]).inc();
}
