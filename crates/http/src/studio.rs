//! The studio: a web UI served by the control plane under `/`, on the same listeners and behind the
//! same network guard as the API. Its page and script are compiled into the binary (it loads nothing
//! from anywhere else) and it calls the same API routes with the same roles and scopes.
//!
//! Signing in exchanges a token for a session: an HttpOnly, SameSite=Strict cookie naming a session
//! the control plane keeps in memory (so the token never reaches the page's script, and signing out
//! ends the session). A request authenticated by the cookie that changes anything must carry the
//! session's CSRF token in `x-cove-csrf`, which only the studio's own script can read.

use super::{parse_json, ApiError, ApiResult, ErrorCode};
use crate::AppRef;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::HashMap;
use std::sync::Mutex;

const INDEX: &str = include_str!("studio/index.html");
const SCRIPT: &str = include_str!("studio/studio.js");
const STYLE: &str = include_str!("studio/studio.css");

/// The session cookie's name. The `__Host-` prefix makes a browser take it only from this very host,
/// over HTTPS, with `Path=/` and no `Domain`, so a sibling host cannot set one for it.
pub const COOKIE: &str = "__Host-cove_session";
/// The header a cookie-authenticated change must carry.
pub const CSRF_HEADER: &str = "x-cove-csrf";
/// How long a session lasts (the token's own expiry and revocation apply too).
const SESSION_MS: i64 = 12 * 3_600_000;
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 10_000;

/// The content security policy of every response: scripts, styles and requests only from the
/// control plane itself, no inline script, no frames.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

struct Session {
    secret: String,
    csrf: String,
    expires_ms: i64,
}

/// The studio's signed-in sessions, by session id.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    fn insert(&self, secret: String) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = cove_store::now_ms();
        map.retain(|_, s| s.expires_ms > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires_ms).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), Session { secret, csrf: csrf.clone(), expires_ms: now + SESSION_MS });
        (id, csrf)
    }

    /// The token secret and CSRF token of a current session.
    fn get(&self, id: &str) -> Option<(String, String)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).filter(|s| s.expires_ms > cove_store::now_ms()).map(|s| (s.secret.clone(), s.csrf.clone()))
    }

    fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The session id in a request's cookie headers. Two session cookies are refused rather than one
/// chosen: whichever came first could be one planted by another page, signing the user in as someone
/// else.
fn session_id(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let mut ids = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string());
    let first = ids.next();
    if ids.next().is_some() {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "the request carries more than one studio session cookie; sign in again",
        ));
    }
    Ok(first)
}

/// The token secret a request's session stands for, when it has one: a cookie-authenticated change
/// (anything but GET and HEAD) must carry the session's CSRF token, or it is refused.
pub fn session_secret(app: &AppRef, method: &Method, headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(id) = session_id(headers)? else { return Ok(None) };
    let Some((secret, csrf)) = app.sessions.get(&id) else {
        return Err(ApiError::new(ErrorCode::Unauthenticated, "the studio session has ended; sign in again"));
    };
    if method != Method::GET && method != Method::HEAD {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                "a change made with the studio's session needs its CSRF token (x-cove-csrf)",
            ));
        }
    }
    Ok(Some(secret))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[derive(serde::Deserialize)]
pub struct SignIn {
    token: String,
}

/// What the studio knows of its user: who they are and the CSRF token for changes.
#[derive(serde::Serialize)]
pub struct Me {
    token_id: String,
    role: String,
    endpoint: Option<String>,
    csrf: String,
}

/// `POST /studio/session`: signs in with a user token; sets the session cookie. Only a JSON request is
/// taken: a page elsewhere cannot send one without the browser asking first (and being refused), so it
/// cannot sign a visitor in with a token of its choosing.
pub async fn sign_in(State(app): State<AppRef>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(ApiError::invalid(
            "sign in with a JSON body ({\"token\": \"...\"}, Content-Type: application/json)",
        ));
    }
    let req: SignIn = parse_json(&body)?;
    let secret = req.token.trim().to_string();
    let lookup = secret.clone();
    let principal = app.store.call(move |c| cove_store::auth::resolve(c, &lookup)).await?;
    let Some(p) = principal.filter(|p| p.kind == cove_store::auth::TokenKind::User) else {
        return Err(ApiError::new(ErrorCode::Unauthenticated, "the token is not valid (unknown, revoked or expired)"));
    };
    let (id, csrf) = app.sessions.insert(secret);
    let me = Me { token_id: p.token_id, role: p.role.as_str().into(), endpoint: p.endpoint, csrf };
    let mut resp = (StatusCode::CREATED, Json(me)).into_response();
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}", SESSION_MS / 1000);
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ASCII"));
    Ok(resp)
}

/// `GET /studio/session`: the signed-in user, or 401.
pub async fn whoami(State(app): State<AppRef>, headers: HeaderMap) -> ApiResult<Json<Me>> {
    let id = session_id(&headers)?.ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "not signed in"))?;
    let (secret, csrf) = app
        .sessions
        .get(&id)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "the studio session has ended; sign in again"))?;
    let principal = app.store.call(move |c| cove_store::auth::resolve(c, &secret)).await?;
    let p = principal.ok_or_else(|| {
        ApiError::new(ErrorCode::Unauthenticated, "the session's token is no longer valid (revoked or expired)")
    })?;
    Ok(Json(Me { token_id: p.token_id, role: p.role.as_str().into(), endpoint: p.endpoint, csrf }))
}

/// `DELETE /studio/session`: signs out (needs the CSRF token, as every change does).
pub async fn sign_out(State(app): State<AppRef>, method: Method, headers: HeaderMap) -> ApiResult<Response> {
    session_secret(&app, &method, &headers)?;
    if let Some(id) = session_id(&headers)? {
        app.sessions.remove(&id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ASCII"));
    Ok(resp)
}

/// Headers every response carries: the content security policy, and no framing, sniffing or referrer.
pub async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    resp
}
