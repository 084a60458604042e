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
    let unavailable =
        |e: object_store::Error| ApiError::new(ErrorCode::Unavailable, format!("cannot store `{location}`: {e}"));
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
