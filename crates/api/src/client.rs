//! The typed HTTP client for the REST API and the worker protocol.

use crate::ErrorBody;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The control plane answered with an error.
    #[error("{message} ({status}, {code})")]
    Api { status: u16, code: String, message: String },
    /// No answer: the control plane is down or not reachable from here.
    #[error("cannot reach the control plane at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The TLS connection failed: the server is not who this client trusts, or refused this client.
    #[error("cannot connect securely to the control plane at {url}: {why}")]
    Tls { url: String, why: String },
    #[error("unexpected response from {url}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Maps the error to the CLI's documented exit code.
    pub fn exit_code(&self) -> i32 {
        use crate::exit_code::*;
        match self {
            Self::Api { status: 401 | 403, .. } => REFUSED,
            Self::Api { status: 404, .. } => NOT_FOUND,
            Self::Api { .. } => USAGE,
            Self::Unreachable { .. } => UNREACHABLE,
            Self::Tls { .. } => REFUSED,
            Self::Decode { .. } => UNREACHABLE,
        }
    }
}

/// A client for one control plane, authenticated by one bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    /// Shared by every clone, so a new TLS identity (`reconnect`) reaches them all.
    http: std::sync::Arc<std::sync::RwLock<reqwest::Client>>,
}

impl Client {
    /// A client of the control plane at `base` (`https://…`), verifying it with `tls` (which trusts the
    /// workspace's CA, and for a worker presents its compute's certificate).
    pub fn new(base: &str, token: &str, tls: rustls::ClientConfig) -> Self {
        let http = std::sync::Arc::new(std::sync::RwLock::new(Self::http_client(tls)));
        Self { base: base.trim_end_matches('/').to_string(), token: token.to_string(), http }
    }

    fn http_client(tls: rustls::ClientConfig) -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .no_proxy()
            .https_only(true)
            .use_preconfigured_tls(tls)
            .build()
            .expect("a client with a rustls configuration and no proxy always builds")
    }

    /// Makes every clone of this client use `tls` (a renewed client certificate) from the next request
    /// on, on new connections: the pooled ones, made with the old identity, are dropped with their pool.
    pub fn reconnect(&self, tls: rustls::ClientConfig) {
        *self.http.write().unwrap_or_else(|p| p.into_inner()) = Self::http_client(tls);
    }

    fn http(&self) -> reqwest::Client {
        self.http.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None::<&()>, &[]).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.json(Method::POST, path, Some(body), &[]).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.json(Method::PATCH, path, Some(body), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self.json(Method::DELETE, path, None::<&()>, &[]).await?;
        Ok(())
    }

    /// `DELETE` that answers with a JSON body.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::DELETE, path, None::<&()>, &[]).await
    }

    /// Sends a JSON request with extra headers and decodes the JSON answer.
    pub async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        headers: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http().request(method, &url).bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|source| unreachable(&url, source))?;
        let resp = check(resp).await?;
        resp.json().await.map_err(|source| ClientError::Decode { url, source })
    }

    /// Uploads raw bytes with `PUT`.
    pub async fn put_bytes(&self, path: &str, body: Bytes) -> Result<(), ClientError> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http()
            .put(&url)
            .bearer_auth(&self.token)
            .body(body)
            .send()
            .await
            .map_err(|source| unreachable(&url, source))?;
        check(resp).await.map(|_| ())
    }

    /// Posts raw bytes and decodes the JSON answer.
    pub async fn post_bytes<T: DeserializeOwned>(&self, path: &str, body: Bytes) -> Result<T, ClientError> {
        self.post_body(path, body.into()).await
    }

    /// Posts a body made of `chunks`, sent one after another without being joined first.
    pub async fn post_chunks<T: DeserializeOwned>(&self, path: &str, chunks: Vec<Bytes>) -> Result<T, ClientError> {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        self.post_body(path, reqwest::Body::wrap(Chunks { chunks: chunks.into(), remaining })).await
    }

    async fn post_body<T: DeserializeOwned>(&self, path: &str, body: reqwest::Body) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http()
            .post(&url)
            .bearer_auth(&self.token)
            .body(body)
            .send()
            .await
            .map_err(|source| unreachable(&url, source))?;
        let resp = check(resp).await?;
        resp.json().await.map_err(|source| ClientError::Decode { url, source })
    }

    /// Downloads raw bytes with `GET`.
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes, ClientError> {
        let resp = self.get_response(path).await?;
        let url = resp.url().to_string();
        resp.bytes().await.map_err(|source| unreachable(&url, source))
    }

    /// Starts a `GET` whose body the caller streams (large downloads).
    pub async fn get_response(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{}", self.base, path);
        let resp =
            self.http().get(&url).bearer_auth(&self.token).send().await.map_err(|source| unreachable(&url, source))?;
        check(resp).await
    }
}

/// A failed request: a TLS failure says why in words, anything else is "cannot reach".
pub fn unreachable(url: &str, source: reqwest::Error) -> ClientError {
    match cove_tls::explain(&source) {
        Some(why) => {
            let hint = if why.contains("not issued by the CA") {
                " (set COVE_CA_FILE to the workspace's tls/trust.pem)"
            } else if why.contains("expired") {
                " (renew it with `cove workspace rotate-certificates`)"
            } else {
                ""
            };
            ClientError::Tls { url: url.to_string(), why: format!("{why}{hint}") }
        }
        None => ClientError::Unreachable { url: url.to_string(), source },
    }
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (body.code, body.message),
        Err(_) => (reason_code(status), if text.is_empty() { status.to_string() } else { text }),
    };
    Err(ClientError::Api { status: status.as_u16(), code, message })
}

fn reason_code(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_")
}

/// Percent-encodes one path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A request body of chunks sent in order, its length known up front.
struct Chunks {
    chunks: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let next = this.chunks.pop_front().map(|chunk| {
            this.remaining -= chunk.len() as u64;
            Ok(http_body::Frame::data(chunk))
        });
        std::task::Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}
