//! The API's error type: a closed set of codes, one mapping to HTTP statuses, and a JSON body.
//! Internal details are logged once here and never sent to clients.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cove_api::ErrorBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    Conflict,
    TooLarge,
    Unavailable,
    Internal,
}

impl ErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::InvalidArgument => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict => StatusCode::CONFLICT,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    /// An internal failure: the detail goes to the log, the client gets a generic message.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, context, "request failed");
        Self::new(ErrorCode::Internal, format!("internal error while trying to {context}"))
    }
}

impl From<cove_store::StoreError> for ApiError {
    fn from(err: cove_store::StoreError) -> Self {
        let chain = format!("{:#}", anyhow::Error::from(err));
        Self::internal("use the state store", chain)
    }
}

/// A datastore or a place in one that cannot be used is the caller's to fix.
impl From<cove_datastore::DatastoreError> for ApiError {
    fn from(err: cove_datastore::DatastoreError) -> Self {
        Self::invalid(err.to_string())
    }
}

/// A network configuration (or a CA file it names) that cannot be used is the caller's to fix.
impl From<cove_workspace::netpolicy::ConfigError> for ApiError {
    fn from(err: cove_workspace::netpolicy::ConfigError) -> Self {
        Self::invalid(err.to_string())
    }
}

/// A source the network policy does not admit is refused, whoever it is.
impl From<cove_workspace::netpolicy::Refusal> for ApiError {
    fn from(err: cove_workspace::netpolicy::Refusal) -> Self {
        Self::new(ErrorCode::PermissionDenied, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { code: self.code.as_str().to_string(), message: self.message };
        (self.code.status(), Json(body)).into_response()
    }
}
