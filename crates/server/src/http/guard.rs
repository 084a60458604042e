//! The network guard and the audit trail of the HTTP surface.
//!
//! Two layers apply the workspace's [`NetworkPolicy`](crate::netpolicy::NetworkPolicy): the listener
//! drops connections from outside the private networks before any byte is read, and the request guard
//! checks again with the client address a configured proxy forwarded (proxies are trusted only when
//! listed). The guard also writes the audit log: every mutating call and every refusal.

use super::ApiError;
use crate::store;
use crate::AppRef;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cove_api::AuditEntry;
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpListener, TcpStream};

/// The address a request is attributed to, after the guard admitted it.
#[derive(Debug, Clone, Copy)]
pub struct Source(pub IpAddr);

/// A TCP listener that accepts connections only from admitted networks.
pub struct GuardedListener {
    pub inner: TcpListener,
    pub app: AppRef,
}

impl axum::serve::Listener for GuardedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Responses go out in more than one write; with Nagle's algorithm each small request would
            // wait for the peer's delayed ACK (tens of ms), which would dominate a mini-batch's cost.
            let _ = stream.set_nodelay(true);
            let policy = &self.app.policy;
            if policy.is_trusted_proxy(peer.ip()) {
                return (stream, peer);
            }
            match policy.admits(peer.ip()) {
                Ok(()) => return (stream, peer),
                Err(why) => {
                    drop(stream);
                    let local = self.inner.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    audit(&self.app, "-".into(), peer.ip(), "connect".into(), local, format!("refused: {why}"), None)
                        .await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

pub async fn audit(
    app: &AppRef,
    principal: String,
    source: IpAddr,
    action: String,
    resource: String,
    outcome: String,
    detail: Option<String>,
) {
    let entry =
        AuditEntry { time: String::new(), principal, source: source.to_string(), action, resource, outcome, detail };
    if let Err(error) = app.store.call(move |c| store::audit_append(c, &entry)).await {
        tracing::error!(%error, "failed to write the audit log");
    }
}

/// The client a trusted proxy forwarded: the right-most address in `X-Forwarded-For` that is not
/// itself a trusted proxy.
fn forwarded_client(app: &AppRef, req: &Request) -> Option<IpAddr> {
    let header = req.headers().get("x-forwarded-for")?.to_str().ok()?;
    header.split(',').rev().filter_map(|a| a.trim().parse::<IpAddr>().ok()).find(|ip| !app.policy.is_trusted_proxy(*ip))
}

pub async fn guard(
    State(app): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let source = if app.policy.is_trusted_proxy(peer.ip()) {
        forwarded_client(&app, &req).unwrap_or(peer.ip())
    } else {
        peer.ip()
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let action = format!("{method} {path}");
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    if let Err(why) = app.policy.admits(source) {
        audit(&app, "-".into(), source, action, path, format!("refused: {why}"), None).await;
        return ApiError::new(super::ErrorCode::PermissionDenied, format!("refused by network policy: {why}"))
            .into_response();
    }
    req.extensions_mut().insert(Source(source));
    let resp = next.run(req).await;
    let status = resp.status();
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    let should_audit = if path.starts_with("/worker/") {
        refused
    } else {
        method != Method::GET || refused || matches!(status, StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE)
    };
    if !should_audit {
        return resp;
    }
    let principal = match token {
        Some(secret) => app
            .store
            .call(move |c| crate::auth::resolve(c, &secret))
            .await
            .ok()
            .flatten()
            .map_or("- (invalid token)".to_string(), |p| format!("{} ({})", p.token_id, p.role.as_str())),
        None => "-".to_string(),
    };
    let (resp, message) = if status.is_success() { (resp, None) } else { error_message(resp).await };
    let outcome = match (status.is_success(), refused) {
        (true, _) => format!("ok ({})", status.as_u16()),
        (false, true) => format!("refused ({}): {}", status.as_u16(), message.clone().unwrap_or_default()),
        (false, false) => format!("failed ({}): {}", status.as_u16(), message.clone().unwrap_or_default()),
    };
    audit(&app, principal, source, action, path, outcome, None).await;
    resp
}

/// Reads an error response's message, giving back an equivalent response.
async fn error_message(resp: Response) -> (Response, Option<String>) {
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (Response::from_parts(parts, Body::empty()), None);
    };
    let message = serde_json::from_slice::<cove_api::ErrorBody>(&bytes)
        .map(|b| b.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
    (Response::from_parts(parts, Body::from(bytes)), Some(message))
}
