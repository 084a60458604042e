//! Request bodies that become objects are streamed to their store as they arrive, never held whole in
//! memory: a client can make the control plane buffer at most one multipart chunk per upload.

use super::{ApiError, ApiResult, ErrorCode};
use axum::body::Body;
use futures::StreamExt;
use object_store::{ObjectStore, WriteMultipart};

/// How many multipart chunks of one upload may be in flight to the store at once.
const IN_FLIGHT: usize = 2;
/// How much of a refused upload is read and dropped before the connection is closed.
const DRAIN_LIMIT: u64 = 2 * super::UPLOAD_LIMIT;

/// Streams `body` into `location` of `store`, refusing it with 413 once it passes `limit` bytes. The
/// object appears only when the whole body arrived (a multipart upload that completes at the end), so
/// a refused or broken upload leaves nothing behind. Returns the object's size.
pub async fn stream_to(
    store: &dyn ObjectStore,
    location: &object_store::path::Path,
    body: Body,
    limit: u64,
) -> ApiResult<u64> {
    let unavailable = |e| cannot_store(location, e);
    let upload = store.put_multipart(location).await.map_err(unavailable)?;
    let mut writer = WriteMultipart::new(upload);
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(ApiError::invalid(format!("the upload of `{location}` broke off: {e}")));
            }
        };
        size += chunk.len() as u64;
        if size > limit {
            let _ = writer.abort().await;
            drain(&mut stream, size).await;
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("`{location}` is larger than the limit of {limit} bytes per upload"),
            ));
        }
        if let Err(e) = writer.wait_for_capacity(IN_FLIGHT).await {
            return Err(unavailable(e));
        }
        writer.write(&chunk);
    }
    writer.finish().await.map_err(unavailable)?;
    Ok(size)
}

/// Reads and drops the rest of a refused body (up to a bound), so the client, still sending, reads the
/// answer rather than a reset connection.
async fn drain(stream: &mut axum::body::BodyDataStream, mut size: u64) {
    while size <= DRAIN_LIMIT {
        match stream.next().await {
            Some(Ok(chunk)) => size += chunk.len() as u64,
            _ => break,
        }
    }
}

/// Reads `body` whole, as the chunks it arrived in (nothing is copied into one buffer), refusing it
/// with 413 once it passes `limit` bytes. `what` names the body in errors.
pub async fn chunks_of(body: Body, limit: usize, what: &str) -> ApiResult<Vec<bytes::Bytes>> {
    let mut stream = body.into_data_stream();
    let (mut chunks, mut size) = (Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("the {what} broke off: {e}")))?;
        size += chunk.len();
        if size > limit {
            drain(&mut stream, size as u64).await;
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("the {what} is larger than the limit of {limit} bytes"),
            ));
        }
        chunks.push(chunk);
    }
    Ok(chunks)
}

fn cannot_store(location: &object_store::path::Path, e: object_store::Error) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("cannot store `{location}`: {e}"))
}

/// Why a second, different upload to a write-once location is refused.
pub fn written_once(location: &object_store::path::Path) -> ApiError {
    ApiError::conflict(format!("`{location}` was already stored with other bytes; what was stored there never changes"))
}

/// Stores `payload` at `location` unless something is there already. The same bytes again (a retry of
/// a request whose answer was lost) are taken as stored; other bytes are refused with 409, and the
/// object keeps the bytes first stored.
pub async fn put_once(
    store: &dyn ObjectStore,
    location: &object_store::path::Path,
    payload: object_store::PutPayload,
) -> ApiResult<()> {
    let unavailable = |e| cannot_store(location, e);
    let offered = digest_of_payload(&payload);
    match store.put_opts(location, payload, object_store::PutMode::Create.into()).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            match digest_of(store, location).await.map_err(unavailable)? {
                kept if kept == offered => Ok(()),
                _ => Err(written_once(location)),
            }
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// [`stream_to`] for a write-once location, as [`put_once`]: the body is streamed beside it first, then
/// moved into place only if nothing is there yet.
pub async fn stream_once(
    store: &dyn ObjectStore,
    location: &object_store::path::Path,
    body: Body,
    limit: u64,
) -> ApiResult<u64> {
    let unavailable = |e| cannot_store(location, e);
    let staged = object_store::path::Path::from(format!("{location}.upload-{}", uuid::Uuid::new_v4().simple()));
    let size = stream_to(store, &staged, body, limit).await?;
    let moved = store.rename_if_not_exists(&staged, location).await;
    let outcome = match moved {
        Ok(()) => return Ok(size),
        Err(object_store::Error::AlreadyExists { .. }) => {
            match (digest_of(store, &staged).await, digest_of(store, location).await) {
                (Ok(offered), Ok(kept)) if offered == kept => Ok(size),
                (Ok(_), Ok(_)) => Err(written_once(location)),
                (Err(e), _) | (_, Err(e)) => Err(unavailable(e)),
            }
        }
        Err(e) => Err(unavailable(e)),
    };
    if let Err(e) = store.delete(&staged).await {
        tracing::warn!(error = %e, %staged, "could not delete a staged upload");
    }
    outcome
}

fn digest_of_payload(payload: &object_store::PutPayload) -> [u8; 32] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for chunk in payload.iter() {
        hash.update(chunk);
    }
    hash.finalize().into()
}

/// The sha256 of an object, read as a stream.
async fn digest_of(store: &dyn ObjectStore, location: &object_store::path::Path) -> object_store::Result<[u8; 32]> {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    let mut stream = store.get(location).await?.into_stream();
    while let Some(chunk) = stream.next().await {
        hash.update(chunk?);
    }
    Ok(hash.finalize().into())
}
