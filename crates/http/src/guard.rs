//! The network guard and the audit trail of the HTTP surface.
//!
//! Two layers apply the workspace's [`NetworkPolicy`](cove_workspace::netpolicy::NetworkPolicy): the listener
//! drops connections from outside the private networks before any byte is read, and the request guard
//! checks again with the client address a configured proxy forwarded (proxies are trusted only when
//! listed). The guard also writes the audit log: every mutating call and every refusal.

use super::ApiError;
use crate::AppRef;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cove_api::AuditEntry;
use cove_store as store;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::{TcpListener, TcpStream};

/// The address a request is attributed to, after the guard admitted it.
#[derive(Debug, Clone, Copy)]
pub struct Source(pub IpAddr);

/// The SHA-256 fingerprint of the client certificate a connection presented (mutual TLS), if any.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Option<String>);

/// How long a client may take to send its first byte and finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the router on one listener: connections from outside the admitted networks are dropped
/// before a byte is read; the rest get TLS, each connection in its own task (so a slow handshake
/// holds up no one else). A client that speaks plain HTTP gets a plain-text refusal and is closed.
pub async fn serve(
    listener: TcpListener,
    app: AppRef,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(app.tls.config.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            conn = listener.accept() => conn,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if !admit(&app, &listener, &stream, peer).await {
            continue;
        }
        let per_source = !app.policy.is_trusted_proxy(peer.ip());
        let held = match app.connections.open(peer.ip(), per_source) {
            Ok(held) => held,
            Err(why) => {
                let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                audit(&app, "-".into(), peer.ip(), "connect".into(), local, format!("refused: {why}"), None).await;
                continue;
            }
        };
        let (acceptor, router, app) = (acceptor.clone(), router.clone(), app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // Counted for as long as this task holds the connection.
            let _held = held;
            let Some((tls, cert)) = handshake(&acceptor, stream, &app).await else { return };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(ClientCertificate(cert.clone()));
                tower::ServiceExt::oneshot(router.clone(), req.map(Body::new))
            });
            let io = hyper_util::rt::TokioIo::new(Lingering(Some(tls)));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            if let Err(error) = watcher.watch(conn).await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    // In-flight requests finish (bounded, so a stuck client cannot hold the shutdown).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), graceful.shutdown()).await;
    Ok(())
}

/// Whether the network policy admits a new connection; a refusal is audited and the stream dropped.
async fn admit(app: &AppRef, listener: &TcpListener, stream: &TcpStream, peer: SocketAddr) -> bool {
    // Responses go out in more than one write; with Nagle's algorithm each small request would
    // wait for the peer's delayed ACK (tens of ms), which would dominate a mini-batch's cost.
    let _ = stream.set_nodelay(true);
    let policy = &app.policy;
    if policy.is_trusted_proxy(peer.ip()) {
        return true;
    }
    match policy.admits(peer.ip()) {
        Ok(()) => true,
        Err(why) => {
            let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            audit(app, "-".into(), peer.ip(), "connect".into(), local, format!("refused: {why}"), None).await;
            false
        }
    }
}

/// The TLS handshake, after checking that the client speaks TLS at all: a TLS connection starts with a
/// handshake record (0x16); anything else (an `http://` client) is told to use HTTPS and closed.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    app: &AppRef,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Option<String>)> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            refuse_plaintext(stream, &app.url).await;
            return None;
        }
        _ => return None,
    }
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            return None;
        }
        Err(_) => return None,
    };
    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| cove_tls::fingerprint(c));
    Some((tls, cert))
}

/// Marks the answer to a request whose body was not read to its end with `Connection: close`. hyper
/// closes such a connection after the answer (the rest of the body is still on its way), but says so
/// in the answer only when it knew before writing it; a client that was not told reuses the closed
/// connection, and its next request fails (a large upload refused for its token, then anything).
pub async fn close_unread(req: Request, next: Next) -> Response {
    use hyper::body::Body as _;
    let body = req.body();
    if body.is_end_stream() || body.size_hint().exact() == Some(0) {
        return next.run(req).await;
    }
    let read = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let req = req.map(|inner| Body::new(Watched { inner, read: read.clone() }));
    let mut resp = next.run(req).await;
    if !read.load(std::sync::atomic::Ordering::Relaxed) {
        resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    resp
}

/// A request body that records when it has been read to its end.
struct Watched {
    inner: Body,
    read: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl hyper::body::Body for Watched {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's stream that, once hyper is done with it, still reads (and discards) what the client
/// sends for a moment before closing. hyper answers some requests without reading their whole body (a
/// refusal before the body is read, say) and then ends the connection: closing a socket with unread
/// data in it sends a reset, which can make the client lose the answer it has not read yet.
struct Lingering(Option<tokio_rustls::server::TlsStream<TcpStream>>);

impl Lingering {
    fn stream(&mut self) -> Pin<&mut tokio_rustls::server::TlsStream<TcpStream>> {
        Pin::new(self.0.as_mut().expect("present until dropped"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(tls) = self.0.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut tcp, _) = tls.into_inner();
            let _ = tcp.shutdown().await;
            drain(&mut tcp).await;
        });
    }
}

impl tokio::io::AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Lingering {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

async fn refuse_plaintext(mut stream: TcpStream, url: &str) {
    use tokio::io::AsyncWriteExt;
    let body = format!("this Cove listener speaks only HTTPS; use {url}\n");
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
    drain(&mut stream).await;
}

/// Reads what the client is still sending (a little, briefly) before the socket is closed, so the close
/// does not reset the connection under an answer the client has not read yet.
async fn drain(stream: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 16 * 1024];
    let mut drained = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while drained < 4 * 1024 * 1024 {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
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
    // Refusals past the minute's budget of their principal (or source) are counted, and written as
    // one summary each; the refused caller waits until the store holds its count.
    if !outcome.starts_with("ok") {
        if let super::refusals::Admission::Counted(seq) = app.refusals.admit(&principal, source, &action, &outcome) {
            app.refusals.durable(seq).await;
            return;
        }
    }
    let entry =
        AuditEntry { time: String::new(), principal, source: source.to_string(), action, resource, outcome, detail };
    if let Err(error) = app.store.call(move |c| store::audit_append(c, &entry)).await {
        tracing::error!(%error, "failed to write the audit log");
    }
}

/// Writes the refusals counted in each window, for as long as the control plane runs: the counts as
/// they grow, and their summaries when the window ends.
pub async fn write_counted_refusals(app: AppRef) {
    let keeper = tokio::spawn(keep_refusal_counts(app.clone()));
    let mut shutdown = app.shutdown.clone();
    loop {
        let stopping = async {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        };
        tokio::select! {
            _ = tokio::time::sleep(super::refusals::WINDOW) => close_refusal_window(&app).await,
            _ = stopping => break,
        }
    }
    keeper.abort();
}

/// Keeps the counts of refusals in the store as they grow: one transaction takes every count that
/// changed while the one before it was written.
async fn keep_refusal_counts(app: AppRef) {
    loop {
        app.refusals.changed().await;
        let _writing = app.refusals.writing.lock().await;
        let (seq, counts) = app.refusals.take_changed();
        if !counts.is_empty() {
            if let Err(error) = app.store.call(move |c| store::refusal_counts_put(c, &counts)).await {
                tracing::error!(%error, "failed to keep the counts of refusals");
            }
        }
        app.refusals.mark_durable(seq);
    }
}

/// Ends the refusal window: its summaries go into the audit log, and the counts kept for it are
/// cleared, in one transaction.
pub async fn close_refusal_window(app: &AppRef) {
    let _writing = app.refusals.writing.lock().await;
    let (seq, summaries) = app.refusals.close_window();
    if !summaries.is_empty() {
        let written = app.store.call(move |c| store::refusal_counts_close(c, Some(&summaries))).await;
        if let Err(error) = written {
            tracing::error!(%error, "failed to write the audit log");
        }
    }
    app.refusals.mark_durable(seq);
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
        .map(|t| t.trim().to_string())
        .or_else(|| super::studio::session_secret(&app, &Method::GET, req.headers()).ok().flatten());
    let route = req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_string());
    if let Err(why) = app.policy.admits(source) {
        app.metrics.refusals.with_label_values(&["network"]).inc();
        super::metrics::count_request(&app, method.as_str(), route.as_deref(), 403);
        audit(&app, "-".into(), source, action, path, format!("refused: {why}"), None).await;
        return ApiError::new(super::ErrorCode::PermissionDenied, format!("refused by network policy: {why}"))
            .into_response();
    }
    req.extensions_mut().insert(Source(source));
    let resp = next.run(req).await;
    let status = resp.status();
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        || (path.starts_with("/worker/") && status.is_client_error());
    super::metrics::count_request(&app, method.as_str(), route.as_deref(), status.as_u16());
    if refused {
        let reason = match status {
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            _ => "worker_protocol",
        };
        app.metrics.refusals.with_label_values(&[reason]).inc();
    }
    // Every refusal is audited, the worker protocol's included (a replayed report, a lease that is not
    // current, a body over its limit); a worker's successful calls are too many to write one by one,
    // and those that upload what a job may publish write their own entries.
    let should_audit = if path.starts_with("/worker/") {
        status.is_client_error()
    } else {
        method != Method::GET || refused || matches!(status, StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE)
    };
    if !should_audit {
        return resp;
    }
    let principal = match token {
        Some(secret) => app
            .store
            .call(move |c| cove_store::auth::resolve(c, &secret))
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
