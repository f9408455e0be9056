//! Refusals: [`AuthError`] for a request, [`SetupError`] for settings the server cannot start
//! with.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::jwks;
use super::token_error::TokenError;
use crate::error::error_response;

/// Why a client was refused before it got in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The query is malformed (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or bad credentials (HTTP 401).
    #[error("{0}")]
    Unauthorized(String),
    /// The identity may not do this (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// The token was missing or failed a check (HTTP 401).
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl AuthError {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::Unauthorized(_) | AuthError::Token(_) => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// A short machine-readable name for the refusal (the `error` field of the JSON body).
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::BadRequest(_) => "bad_request",
            AuthError::Unauthorized(_) | AuthError::Token(_) => "unauthorized",
            AuthError::Forbidden(_) => "forbidden",
        }
    }

    /// The finer reason, for metrics and logs (`expired`, `bad_signature`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Token(e) => e.reason(),
            other => other.kind(),
        }
    }
}

impl IntoResponse for AuthError {
    /// The JSON refusal body every route uses; a 401 also carries `WWW-Authenticate`.
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = error_response(status, self.kind(), self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Why the server cannot start with its authentication settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting is missing, malformed or unsafe.
    #[error("{0}")]
    Config(String),
    /// The key set could not be loaded.
    #[error("loading the JSON Web Key Set: {0}")]
    Jwks(#[from] jwks::JwksError),
}
