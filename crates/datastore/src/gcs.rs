//! Google Cloud Storage datastores, over the storage JSON API.
//!
//! The JSON API is Google's primary storage API, and the one every request here can be made through:
//! metadata, listings, ranged reads, deletes, copies and resumable uploads. A resumable upload's object
//! appears only when its last chunk is in, which is the all-or-nothing publish every datastore gives.
//!
//! Requests carry a self-signed JWT made from the service account's key (Google accepts one in place
//! of an OAuth access token), so a private workspace needs no route to Google's token service. The
//! same key signs V4 URLs for one object, which let workers read inputs straight from the store.

use async_trait::async_trait;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attributes, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use std::sync::{Arc, Mutex};

const STORE: &str = "GCS";
/// Every chunk of a resumable upload but the last must be a multiple of this.
const UPLOAD_GRANULE: usize = 256 * 1024;
/// Chunks are sent once this much is buffered (a multiple of the granule).
const UPLOAD_CHUNK: usize = 32 * UPLOAD_GRANULE;
/// How long a self-signed JWT is valid; one is made again in its last five minutes.
const TOKEN_SECS: i64 = 3600;
/// What the JWT is for: the storage API.
const AUDIENCE: &str = "https://storage.googleapis.com/";

/// A service account's key file, as Google issues it (the fields Cove uses).
#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: String,
}

/// A service account that signs for itself.
pub struct ServiceAccount {
    email: String,
    key_id: String,
    pair: ring::signature::RsaKeyPair,
}

impl ServiceAccount {
    /// Reads a service account key file's JSON.
    ///
    /// # Errors
    /// A message naming what is wrong with the key: not JSON, not a service account's, a private key
    /// that is not an RSA key in PEM.
    pub fn from_key_json(text: &str) -> Result<ServiceAccount, String> {
        let key: KeyFile = serde_json::from_str(text).map_err(|e| format!("not a service account key file: {e}"))?;
        if key.kind != "service_account" {
            return Err(format!("`type` is `{}`, not `service_account`", key.kind));
        }
        use cove_tls::rustls::pki_types::PrivateKeyDer;
        let der = cove_tls::private_key("`private_key`", &key.private_key).map_err(|e| e.to_string())?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(k) => ring::signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => ring::signature::RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err("`private_key` is not an RSA private key".into()),
        }
        .map_err(|e| format!("`private_key` is not a usable RSA key: {e}"))?;
        Ok(ServiceAccount { email: key.client_email, key_id: key.private_key_id, pair })
    }

    /// Signs `message` with RSASSA-PKCS1-v1_5 over SHA-256, as JWTs (RS256) and V4 URLs both ask.
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut signature = vec![0; self.pair.public().modulus_len()];
        self.pair
            .sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), message, &mut signature)
            .expect("a buffer of the modulus' length is what RSA signing needs");
        signature
    }

    /// A JWT for the storage API, valid from `now` (Unix seconds) for an hour.
    fn jwt(&self, now: i64) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": self.key_id });
        let claims = serde_json::json!({
            "iss": self.email, "sub": self.email, "aud": AUDIENCE, "iat": now, "exp": now + TOKEN_SECS,
        });
        let signed = format!("{}.{}", b64.encode(header.to_string()), b64.encode(claims.to_string()));
        let signature = b64.encode(self.sign(signed.as_bytes()));
        format!("{signed}.{signature}")
    }
}

/// A bucket, reached at `endpoint` (`https://storage.googleapis.com`, or its private endpoint's address).
pub struct GoogleCloudStorage {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    /// `scheme://host[:port]`, without a path.
    endpoint: String,
    bucket: String,
    account: ServiceAccount,
    /// The JWT in use and the Unix second it expires.
    token: Mutex<Option<(String, i64)>>,
}

impl std::fmt::Display for GoogleCloudStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GoogleCloudStorage({}/{})", self.inner.endpoint, self.inner.bucket)
    }
}

impl std::fmt::Debug for GoogleCloudStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl GoogleCloudStorage {
    /// A client of `bucket` at `endpoint`, its requests signed by `account`.
    ///
    /// # Errors
    /// An endpoint that is not `http(s)://host[:port]`, or a CA that is not PEM.
    pub fn new(
        endpoint: &str,
        bucket: &str,
        account: ServiceAccount,
        ca: Option<&str>,
    ) -> Result<GoogleCloudStorage, String> {
        let endpoint = endpoint.trim_end_matches('/');
        let url = url::Url::parse(endpoint).map_err(|e| format!("`{endpoint}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.path() != "/" {
            return Err(format!("`{endpoint}` is not an http(s)://host[:port] address without a path"));
        }
        cove_tls::install_provider();
        // Redirects are not followed: every request goes to the store's endpoint and nowhere else.
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .read_timeout(std::time::Duration::from_secs(15));
        let client = cove_common::trusting(builder, ca).map_err(|e| format!("ca_file: {e}"))?;
        let inner = Inner {
            client,
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            account,
            token: Mutex::new(None),
        };
        Ok(GoogleCloudStorage { inner: Arc::new(inner) })
    }
}

/// Percent-encodes everything but the unreserved characters: an object name as one path segment of
/// the JSON API (`/` included), or a query value.
fn encode(text: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

fn generic(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> object_store::Error {
    object_store::Error::Generic { store: STORE, source: source.into() }
}

/// What the JSON API says of an object.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectResource {
    name: String,
    size: String,
    updated: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    generation: Option<String>,
}

impl ObjectResource {
    fn meta(self) -> object_store::Result<ObjectMeta> {
        let size =
            self.size.parse().map_err(|_| generic(format!("object `{}` has size `{}`", self.name, self.size)))?;
        Ok(ObjectMeta {
            location: crate::object_path_of(&self.name),
            last_modified: self.updated,
            size,
            e_tag: self.etag,
            version: self.generation,
        })
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    #[serde(default)]
    items: Vec<ObjectResource>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    next_page_token: Option<String>,
}

impl Inner {
    fn object_url(&self, location: &Path) -> String {
        format!("{}/storage/v1/b/{}/o/{}", self.endpoint, encode(&self.bucket), encode(location.as_ref()))
    }

    fn bearer(&self) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut token = self.token.lock().unwrap_or_else(|p| p.into_inner());
        match &*token {
            Some((jwt, expires)) if *expires - now > 300 => jwt.clone(),
            _ => {
                let jwt = self.account.jwt(now);
                *token = Some((jwt.clone(), now + TOKEN_SECS));
                jwt
            }
        }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.client.request(method, url).bearer_auth(self.bearer())
    }

    /// Where an object is uploaded to: whole (`media`) or in chunks (`resumable`).
    fn upload_url(&self, upload_type: &str, location: &Path) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o?uploadType={upload_type}&name={}",
            self.endpoint,
            encode(&self.bucket),
            encode(location.as_ref())
        )
    }

    /// Sends `request`; an answer that is not a success becomes the error `object_store` callers expect.
    async fn send(&self, request: reqwest::RequestBuilder, location: &Path) -> object_store::Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| generic(StoreError::request(e)))?;
        let status = response.status();
        if status.is_success() || status.as_u16() == 308 {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let source = Box::new(StoreError(format!("{status}: {}", body.chars().take(300).collect::<String>())));
        let path = location.to_string();
        Err(match status.as_u16() {
            404 => object_store::Error::NotFound { path, source },
            412 => object_store::Error::Precondition { path, source },
            _ => object_store::Error::Generic { store: STORE, source },
        })
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        let response = self.send(self.request(reqwest::Method::GET, &self.object_url(location)), location).await?;
        response.json::<ObjectResource>().await.map_err(|e| generic(StoreError::request(e)))?.meta()
    }

    async fn list_page(
        &self,
        prefix: Option<&Path>,
        delimiter: bool,
        page_token: Option<&str>,
    ) -> object_store::Result<ListPage> {
        let mut url = format!("{}/storage/v1/b/{}/o?maxResults=1000", self.endpoint, encode(&self.bucket));
        if let Some(prefix) = prefix.filter(|p| !p.as_ref().is_empty()) {
            url += &format!("&prefix={}", encode(&format!("{prefix}/")));
        }
        if delimiter {
            url += "&delimiter=%2F";
        }
        if let Some(token) = page_token {
            url += &format!("&pageToken={}", encode(token));
        }
        let at = prefix.cloned().unwrap_or_default();
        let response = self.send(self.request(reqwest::Method::GET, &url), &at).await?;
        response.json().await.map_err(|e| generic(StoreError::request(e)))
    }

    /// An object's generation that `mode` asks for, as the JSON API's `ifGenerationMatch`.
    fn if_generation(mode: &PutMode) -> object_store::Result<Option<String>> {
        match mode {
            PutMode::Overwrite => Ok(None),
            PutMode::Create => Ok(Some("0".into())),
            PutMode::Update(v) => v.version.clone().map(Some).ok_or_else(|| generic("an update needs a generation")),
        }
    }
}

/// A store's answer that was not a success, or a request that got none.
#[derive(Debug)]
struct StoreError(String);

impl StoreError {
    fn request(e: reqwest::Error) -> StoreError {
        // reqwest's own message names only the step; the cause (refused, timed out, a certificate) is
        // in its sources.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text += &format!(": {s}");
            source = s.source();
        }
        StoreError(text)
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

fn put_result(object: ObjectResource) -> PutResult {
    PutResult { e_tag: object.etag, version: object.generation }
}

#[async_trait]
impl object_store::ObjectStore for GoogleCloudStorage {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let s = &self.inner;
        let mut url = s.upload_url("media", location);
        if let Some(generation) = Inner::if_generation(&opts.mode)? {
            url += &format!("&ifGenerationMatch={generation}");
        }
        let request = s.request(reqwest::Method::POST, &url).body(Bytes::from(payload));
        let object = match s.send(request, location).await {
            Err(object_store::Error::Precondition { path, source }) if matches!(opts.mode, PutMode::Create) => {
                return Err(object_store::Error::AlreadyExists { path, source })
            }
            other => other?,
        };
        Ok(put_result(object.json().await.map_err(|e| generic(StoreError::request(e)))?))
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let s = &self.inner;
        let url = s.upload_url("resumable", location);
        let response = s.send(s.request(reqwest::Method::POST, &url), location).await?;
        let session = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| generic("the store started a resumable upload without saying where to send it"))?
            .to_string();
        // The chunks carry the service account's token: they go to the store's own endpoint (its private
        // endpoint), never to wherever an answer points.
        if !session.starts_with(&format!("{}/", s.endpoint)) {
            return Err(generic(format!(
                "the store sent the upload to `{session}`, away from its endpoint {}",
                s.endpoint
            )));
        }
        Ok(Box::new(ResumableUpload {
            inner: s.clone(),
            location: location.clone(),
            session: Arc::new(tokio::sync::Mutex::new(Session { url: session, sent: 0 })),
            pending: Arc::new(Mutex::new(BytesMut::new())),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        if options.if_match.is_some()
            || options.if_none_match.is_some()
            || options.if_modified_since.is_some()
            || options.if_unmodified_since.is_some()
            || options.version.is_some()
        {
            return Err(object_store::Error::NotImplemented);
        }
        let s = &self.inner;
        let meta = s.head(location).await?;
        let range = match &options.range {
            Some(r) => r.as_range(meta.size).map_err(|e| generic(e.to_string()))?,
            None => 0..meta.size,
        };
        if options.head || range.is_empty() {
            let payload = GetResultPayload::Stream(futures::stream::empty().boxed());
            return Ok(GetResult { payload, meta, range, attributes: Attributes::default() });
        }
        // The generation just read pins the bytes to the object the metadata describes.
        let url = format!(
            "{}/download/storage/v1/b/{}/o/{}?alt=media&generation={}",
            s.endpoint,
            encode(&s.bucket),
            encode(location.as_ref()),
            meta.version.as_deref().unwrap_or_default()
        );
        let mut request = s.request(reqwest::Method::GET, &url);
        if range != (0..meta.size) || matches!(options.range, Some(GetRange::Suffix(_))) {
            request = request.header(reqwest::header::RANGE, format!("bytes={}-{}", range.start, range.end - 1));
        }
        let response = s.send(request, location).await?;
        let body = futures::stream::try_unfold(response, |mut response| async move {
            match response.chunk().await {
                Ok(Some(chunk)) => Ok(Some((chunk, response))),
                Ok(None) => Ok(None),
                Err(e) => Err(generic(StoreError::request(e))),
            }
        });
        Ok(GetResult {
            payload: GetResultPayload::Stream(body.boxed()),
            meta,
            range,
            attributes: Attributes::default(),
        })
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        let s = &self.inner;
        s.send(s.request(reqwest::Method::DELETE, &s.object_url(location)), location).await?;
        Ok(())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = prefix.cloned();
        // (the next page's token; whether the last page was read)
        futures::stream::try_unfold((None::<String>, false), move |(token, done)| {
            let (inner, prefix) = (inner.clone(), prefix.clone());
            async move {
                if done {
                    return Ok::<_, object_store::Error>(None);
                }
                let page = inner.list_page(prefix.as_ref(), false, token.as_deref()).await?;
                let items: Vec<ObjectMeta> =
                    page.items.into_iter().map(ObjectResource::meta).collect::<Result<_, _>>()?;
                let done = page.next_page_token.is_none();
                Ok(Some((futures::stream::iter(items.into_iter().map(Ok)), (page.next_page_token, done))))
            }
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut result = ListResult { common_prefixes: Vec::new(), objects: Vec::new() };
        let mut token = None;
        loop {
            let page = self.inner.list_page(prefix, true, token.as_deref()).await?;
            result.common_prefixes.extend(page.prefixes.iter().map(|p| crate::object_path_of(p.trim_end_matches('/'))));
            for item in page.items {
                result.objects.push(item.meta()?);
            }
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => return Ok(result),
            }
        }
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.copy_to(from, to, false).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.copy_to(from, to, true).await
    }
}

impl GoogleCloudStorage {
    async fn copy_to(&self, from: &Path, to: &Path, if_not_exists: bool) -> object_store::Result<()> {
        let s = &self.inner;
        let mut url = format!("{}/copyTo/b/{}/o/{}", s.object_url(from), encode(&s.bucket), encode(to.as_ref()));
        if if_not_exists {
            url += "?ifGenerationMatch=0";
        }
        match s.send(s.request(reqwest::Method::POST, &url), from).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::Precondition { source, .. }) => {
                Err(object_store::Error::AlreadyExists { path: to.to_string(), source })
            }
            Err(e) => Err(e),
        }
    }
}

/// Where a resumable upload is, and how much of it the store has.
struct Session {
    url: String,
    sent: u64,
}

/// A resumable upload: parts are buffered in order and sent as chunks of whole granules, the rest with
/// the last; the object appears only when that last chunk is in.
struct ResumableUpload {
    inner: Arc<Inner>,
    location: Path,
    session: Arc<tokio::sync::Mutex<Session>>,
    /// Bytes given to `put_part` and not yet sent. Parts join it when given, so their order is kept
    /// however their futures are polled.
    pending: Arc<Mutex<BytesMut>>,
}

impl std::fmt::Debug for ResumableUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResumableUpload({})", self.location)
    }
}

impl ResumableUpload {
    /// Sends `chunk` at the session's offset; `total` is the object's size when this is the last chunk.
    /// The store may keep less of a chunk than it was sent (its 308 answer's `Range` says how much it
    /// holds): the rest is sent again, a few times at most.
    async fn send_chunk(
        inner: &Inner,
        location: &Path,
        session: &mut Session,
        mut chunk: Bytes,
        total: Option<u64>,
    ) -> object_store::Result<reqwest::Response> {
        let total_text = total.map_or("*".to_string(), |t| t.to_string());
        for _ in 0..4 {
            let len = chunk.len() as u64;
            let range = match len {
                0 => format!("bytes */{total_text}"),
                _ => format!("bytes {}-{}/{total_text}", session.sent, session.sent + len - 1),
            };
            let request =
                inner.request(reqwest::Method::PUT, &session.url).header(reqwest::header::CONTENT_RANGE, range);
            let response = inner.send(request.body(chunk.clone()), location).await?;
            if response.status().is_success() {
                if total.is_none() {
                    return Err(generic(format!("the store answered {} to a middle chunk", response.status())));
                }
                session.sent += len;
                return Ok(response);
            }
            // 308: the store holds bytes 0..held of the object (none without a `Range`).
            let held = response.headers().get(reqwest::header::RANGE).and_then(|v| v.to_str().ok());
            let held_end = match held.map(|h| h.strip_prefix("bytes=0-").and_then(|n| n.parse::<u64>().ok())) {
                None => 0,
                Some(Some(last)) => last + 1,
                Some(None) => return Err(generic(format!("the store answered Range `{}`", held.unwrap_or_default()))),
            };
            if held_end < session.sent || held_end > session.sent + len {
                return Err(generic(format!(
                    "the store holds {held_end} bytes of the upload, sent {} and then {len} more",
                    session.sent
                )));
            }
            chunk = chunk.slice((held_end - session.sent) as usize..);
            session.sent = held_end;
            if chunk.is_empty() && total.is_none() {
                return Ok(response);
            }
        }
        Err(generic(format!(
            "the store kept less of the upload than it was sent, four times, at byte {}",
            session.sent
        )))
    }
}

#[async_trait]
impl MultipartUpload for ResumableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for piece in data.iter() {
                pending.extend_from_slice(piece);
            }
        }
        let (inner, location, session, pending) =
            (self.inner.clone(), self.location.clone(), self.session.clone(), self.pending.clone());
        Box::pin(async move {
            let mut session = session.lock().await;
            loop {
                let chunk = {
                    let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
                    if pending.len() < UPLOAD_CHUNK {
                        return Ok(());
                    }
                    pending.split_to(UPLOAD_CHUNK).freeze()
                };
                Self::send_chunk(&inner, &location, &mut session, chunk, None).await?;
            }
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let mut session = self.session.lock().await;
        let rest = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner())).freeze();
        let total = session.sent + rest.len() as u64;
        let response = Self::send_chunk(&self.inner, &self.location, &mut session, rest, Some(total)).await?;
        Ok(put_result(response.json().await.map_err(|e| generic(StoreError::request(e)))?))
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let session = self.session.lock().await;
        // The store answers 499 to a cancelled session; one it no longer knows is as good as cancelled.
        let response = self.inner.request(reqwest::Method::DELETE, &session.url).send().await;
        match response.map(|r| r.status().as_u16()) {
            Ok(200..=299 | 404 | 410 | 499) => Ok(()),
            Ok(status) => Err(generic(format!("the store answered {status} to cancelling an upload"))),
            Err(e) => Err(generic(StoreError::request(e))),
        }
    }
}

#[async_trait]
impl object_store::signer::Signer for GoogleCloudStorage {
    /// A V4 signed URL (`GOOG4-RSA-SHA256`) for one object, at the store's own XML API path.
    async fn signed_url(
        &self,
        method: reqwest::Method,
        path: &Path,
        expires_in: std::time::Duration,
    ) -> object_store::Result<url::Url> {
        let s = &self.inner;
        let now = chrono::Utc::now();
        let url = signed_url(s, method.as_str(), path, expires_in.as_secs().clamp(1, 604_800), now);
        url::Url::parse(&url).map_err(|e| generic(e.to_string()))
    }
}

fn signed_url(s: &Inner, method: &str, path: &Path, expires_secs: u64, now: chrono::DateTime<chrono::Utc>) -> String {
    use sha2::Digest;
    let host = s.endpoint.split_once("://").map_or(s.endpoint.as_str(), |(_, h)| h);
    let resource =
        std::iter::once(s.bucket.as_str()).chain(path.as_ref().split('/')).map(encode).collect::<Vec<_>>().join("/");
    let datetime = now.format("%Y%m%dT%H%M%SZ").to_string();
    let scope = format!("{}/auto/storage/goog4_request", now.format("%Y%m%d"));
    // Already in the sorted order the canonical request needs.
    let query = format!(
        "X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential={}&X-Goog-Date={datetime}&X-Goog-Expires={expires_secs}&X-Goog-SignedHeaders=host",
        encode(&format!("{}/{scope}", s.account.email))
    );
    let canonical = format!("{method}\n/{resource}\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD");
    let to_sign =
        format!("GOOG4-RSA-SHA256\n{datetime}\n{scope}\n{}", hex(&sha2::Sha256::digest(canonical.as_bytes())));
    let signature = hex(&s.account.sign(to_sign.as_bytes()));
    format!("{}/{resource}?{query}&X-Goog-Signature={signature}", s.endpoint)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service account key file with a fresh 2048-bit key (made by `openssl`, as Google's own are
    /// RSA keys in PKCS#8).
    fn key_file() -> String {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::json!({
            "type": "service_account",
            "client_email": "scorer@project.iam.gserviceaccount.com",
            "private_key_id": "k1",
            "private_key": String::from_utf8(out.stdout).unwrap(),
        })
        .to_string()
    }

    fn account() -> ServiceAccount {
        ServiceAccount::from_key_json(&key_file()).unwrap()
    }

    fn store_at(endpoint: &str, bucket: &str) -> GoogleCloudStorage {
        GoogleCloudStorage::new(endpoint, bucket, account(), None).unwrap()
    }

    fn verify(account: &ServiceAccount, message: &[u8], signature: &[u8]) -> bool {
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            account.pair.public().as_ref(),
        );
        public.verify(message, signature).is_ok()
    }

    #[test]
    fn a_jwt_is_signed_by_the_service_account_for_the_storage_api() {
        let account = ServiceAccount::from_key_json(&key_file()).unwrap();
        let jwt = account.jwt(1_800_000_000);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "{jwt}");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": "k1" }));
        assert_eq!(claims["iss"], "scorer@project.iam.gserviceaccount.com");
        assert_eq!(claims["aud"], AUDIENCE);
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);
        let signature = b64.decode(parts[2]).unwrap();
        assert!(verify(&account, format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature));
        assert!(!verify(&account, format!("{}.{}x", parts[0], parts[1]).as_bytes(), &signature), "the check can fail");
    }

    #[test]
    fn a_v4_url_signs_its_canonical_request() {
        let s = store_at("https://storage.googleapis.com", "my-bucket");
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T05:06:07Z").unwrap().with_timezone(&chrono::Utc);
        let url = signed_url(&s.inner, "GET", &Path::from("in/a b+c.csv"), 900, now);
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "https://storage.googleapis.com/my-bucket/in/a%20b%2Bc.csv");
        let (unsigned, signature) = query.rsplit_once("&X-Goog-Signature=").unwrap();
        assert_eq!(
            unsigned,
            "X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=scorer%40project.iam.gserviceaccount.com%2F20261128%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Date=20261128T050607Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host"
        );
        use sha2::Digest;
        let canonical = format!(
            "GET\n/my-bucket/in/a%20b%2Bc.csv\n{unsigned}\nhost:storage.googleapis.com\n\nhost\nUNSIGNED-PAYLOAD"
        );
        let to_sign = format!(
            "GOOG4-RSA-SHA256\n20261128T050607Z\n20261128/auto/storage/goog4_request\n{}",
            hex(&sha2::Sha256::digest(canonical.as_bytes()))
        );
        let signature: Vec<u8> =
            (0..signature.len()).step_by(2).map(|i| u8::from_str_radix(&signature[i..i + 2], 16).unwrap()).collect();
        assert!(verify(&s.inner.account, to_sign.as_bytes(), &signature));
    }

    /// gcp-storage-emulator (`scripts/setup` installs it) on a loopback port, with `bucket` made.
    struct Emulator {
        child: std::process::Child,
        endpoint: String,
    }

    impl Emulator {
        fn start(bucket: &str) -> Emulator {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = std::process::Command::new("python3")
                .args(["-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--in-memory", "-q"])
                .args(["--port", &port.to_string(), "--default-bucket", bucket])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("python3 runs");
            let started = std::time::Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(started.elapsed().as_secs() < 30, "gcp-storage-emulator did not start: run scripts/setup");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Emulator { child, endpoint: format!("http://127.0.0.1:{port}") }
        }
    }

    impl Drop for Emulator {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Every call Cove makes of a store, against a real GCS API server: a resumable upload of parts of
    /// odd sizes, sent as whole granules, appears only when complete and whole; reads by range, listings
    /// with and without a delimiter, copies that refuse to overwrite, deletes, and an aborted upload
    /// that leaves nothing.
    #[tokio::test]
    async fn the_store_speaks_to_a_gcs_server() {
        use object_store::ObjectStore;
        let emulator = Emulator::start("bkt");
        let store = store_at(&emulator.endpoint, "bkt");

        let parts: Vec<Vec<u8>> = [UPLOAD_CHUNK + 1000, 3 * UPLOAD_GRANULE + 7, UPLOAD_CHUNK - 5, 12345]
            .iter()
            .enumerate()
            .map(|(i, n)| (0..*n).map(|j| ((i * 7 + j) % 251) as u8).collect())
            .collect();
        let whole: Vec<u8> = parts.concat();
        let out = Path::from("out/all parts+1.bin");
        let mut upload = store.put_multipart(&out).await.unwrap();
        for part in &parts {
            upload.put_part(PutPayload::from(part.clone())).await.unwrap();
        }
        assert!(store.head(&out).await.is_err(), "an upload's object does not appear before it is complete");
        upload.complete().await.unwrap();
        assert_eq!(store.head(&out).await.unwrap().size, whole.len() as u64);
        assert_eq!(store.get(&out).await.unwrap().bytes().await.unwrap(), Bytes::from(whole.clone()));
        assert_eq!(store.get_range(&out, 100..5000).await.unwrap(), Bytes::copy_from_slice(&whole[100..5000]));

        let mut aborted = store.put_multipart(&Path::from("out/aborted.bin")).await.unwrap();
        aborted.put_part(PutPayload::from(vec![1u8; UPLOAD_CHUNK + 1])).await.unwrap();
        let _ = aborted.abort().await;
        assert!(store.head(&Path::from("out/aborted.bin")).await.is_err(), "an aborted upload leaves nothing");

        store.put(&Path::from("in/a.csv"), PutPayload::from("a\n")).await.unwrap();
        store.put(&Path::from("in/sub/b.csv"), PutPayload::from("b\n")).await.unwrap();
        store.put(&Path::from("inside.csv"), PutPayload::from("c\n")).await.unwrap();
        let mut under_in: Vec<String> =
            store.list(Some(&Path::from("in"))).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        under_in.sort();
        assert_eq!(under_in, ["in/a.csv", "in/sub/b.csv"], "a prefix is a folder, not the start of a name");
        let level = store.list_with_delimiter(Some(&Path::from("in"))).await.unwrap();
        assert_eq!(level.common_prefixes, [Path::from("in/sub")]);
        assert_eq!(level.objects.iter().map(|m| m.location.to_string()).collect::<Vec<_>>(), ["in/a.csv"]);
        assert_eq!(level.objects[0].size, 2);

        store.copy(&Path::from("in/a.csv"), &Path::from("copied.csv")).await.unwrap();
        assert_eq!(store.get(&Path::from("copied.csv")).await.unwrap().bytes().await.unwrap(), "a\n");
        store.delete(&Path::from("copied.csv")).await.unwrap();
        match store.head(&Path::from("copied.csv")).await {
            Err(object_store::Error::NotFound { .. }) => {}
            other => panic!("a deleted object is not found: {other:?}"),
        }
        // Listed names are the objects' own: one with `#` or `[` is found again under what the listing says.
        let odd = crate::object_path_of("odd/report #3 [1]/x.csv");
        store.put(&odd, PutPayload::from("x\n")).await.unwrap();
        let listed: Vec<Path> =
            store.list(Some(&Path::from("odd"))).map_ok(|m| m.location).try_collect().await.unwrap();
        assert_eq!(listed.iter().map(|p| p.as_ref()).collect::<Vec<_>>(), ["odd/report #3 [1]/x.csv"]);
        assert_eq!(store.get(&listed[0]).await.unwrap().bytes().await.unwrap(), "x\n");
        let level = store.list_with_delimiter(Some(&Path::from("odd"))).await.unwrap();
        assert_eq!(level.common_prefixes.iter().map(|p| p.as_ref()).collect::<Vec<_>>(), ["odd/report #3 [1]"]);
        match store.get(&Path::from("never.csv")).await {
            Err(object_store::Error::NotFound { path, .. }) => assert_eq!(path, "never.csv"),
            other => panic!("a missing object is not found: {other:?}"),
        }
    }

    /// A store (or whatever answers at its address) that points a resumable upload elsewhere gets no
    /// chunk, and so no token, sent there.
    #[tokio::test]
    async fn an_upload_is_never_sent_away_from_the_endpoint() {
        use object_store::ObjectStore;
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        elsewhere.set_nonblocking(true).unwrap();
        let away = format!("http://{}/upload?upload_id=1", elsewhere.local_addr().unwrap());
        let (endpoint, served) = scripted_store(vec![format!("HTTP/1.1 200 OK\r\nLocation: {away}\r\n")]);
        let store = store_at(&endpoint, "b");
        let refused = store.put_multipart(&Path::from("out/p.csv")).await.err().expect("refused");
        assert!(refused.to_string().contains("away from its endpoint"), "{refused}");
        let asked = served.join().unwrap();
        assert!(
            asked[0].starts_with("POST /upload/storage/v1/b/b/o?uploadType=resumable"),
            "the store was asked: {asked:?}"
        );
        assert!(elsewhere.accept().is_err(), "nothing reached the address the answer pointed at");
    }

    /// A store run by the test that answers each request with the next of `answers` (`{session}` stands
    /// for the upload session's URL); returns its endpoint and, when done, each request's first line and
    /// `content-range`.
    fn scripted_store(answers: Vec<String>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let session = format!("{endpoint}/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=1");
        let served = std::thread::spawn(move || {
            let mut asked = Vec::new();
            for answer in answers {
                let (mut conn, _) = listener.accept().unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let header = |name: &str| {
                    head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix(name).map(|v| v.trim().to_string()))
                };
                let mut body = vec![0u8; header("content-length:").map_or(0, |v| v.parse().unwrap())];
                conn.read_exact(&mut body).unwrap();
                let reply = answer.replace("{session}", &session);
                conn.write_all(format!("{reply}Content-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
                asked.push(format!(
                    "{} | {}",
                    head.lines().next().unwrap_or_default(),
                    header("content-range:").unwrap_or_default()
                ));
            }
            asked
        });
        (endpoint, served)
    }

    /// A store that keeps less of a chunk than it was sent gets the rest again, from where it stopped;
    /// one that claims to hold what it was never sent fails the upload.
    #[tokio::test]
    async fn a_chunk_the_store_kept_part_of_is_sent_again_from_where_it_stopped() {
        use object_store::ObjectStore;
        let last = UPLOAD_CHUNK - 1;
        let (endpoint, served) = scripted_store(vec![
            "HTTP/1.1 200 OK\r\nLocation: {session}\r\n".into(),
            "HTTP/1.1 308 Resume Incomplete\r\nRange: bytes=0-262143\r\n".into(),
            format!("HTTP/1.1 308 Resume Incomplete\r\nRange: bytes=0-{last}\r\n"),
        ]);
        let store = store_at(&endpoint, "b");
        let mut upload = store.put_multipart(&Path::from("out/p.csv")).await.unwrap();
        upload.put_part(PutPayload::from(vec![7u8; UPLOAD_CHUNK])).await.unwrap();
        let asked = served.join().unwrap();
        assert!(asked[1].ends_with(&format!("| bytes 0-{last}/*")), "{asked:?}");
        assert!(asked[2].ends_with(&format!("| bytes 262144-{last}/*")), "the rest, again: {asked:?}");

        let (endpoint, served) = scripted_store(vec![
            "HTTP/1.1 200 OK\r\nLocation: {session}\r\n".into(),
            format!("HTTP/1.1 308 Resume Incomplete\r\nRange: bytes=0-{}\r\n", UPLOAD_CHUNK + 5),
        ]);
        let store = store_at(&endpoint, "b");
        let mut upload = store.put_multipart(&Path::from("out/p.csv")).await.unwrap();
        let failed = upload.put_part(PutPayload::from(vec![7u8; UPLOAD_CHUNK])).await.err().expect("refused");
        assert!(failed.to_string().contains("the store holds"), "{failed}");
        served.join().unwrap();
    }

    #[test]
    fn a_key_that_cannot_sign_is_refused_saying_why() {
        let not_sa = key_file().replace("service_account", "authorized_user");
        assert!(ServiceAccount::from_key_json(&not_sa).err().unwrap().contains("not `service_account`"));
        let mut key: serde_json::Value = serde_json::from_str(&key_file()).unwrap();
        key["private_key"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        assert!(ServiceAccount::from_key_json(&key.to_string()).err().unwrap().contains("not a usable RSA key"));
        assert!(ServiceAccount::from_key_json("{").err().unwrap().contains("not a service account key file"));
        for bad in ["ftp://h", "http://h/path", "nonsense"] {
            assert!(GoogleCloudStorage::new(bad, "b", account(), None).is_err(), "{bad}");
        }
    }
}
