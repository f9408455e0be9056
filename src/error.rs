//! The body of every HTTP refusal: `{"error": <kind>, "message": <why>}` with a fitting status.
//!
//! It sits at the bottom of the layers so that every route, the auth checks and the handshake
//! answer errors the same way without importing one another.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A JSON error body with `status`: `kind` is a stable machine-readable word, `message` says
/// why in words.
pub(crate) fn error_response(status: StatusCode, kind: &str, message: String) -> Response {
    (status, Json(json!({ "error": kind, "message": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_body_names_the_kind_and_the_reason() {
        let response = error_response(StatusCode::FORBIDDEN, "forbidden", "not yours".into());
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            json!({ "error": "forbidden", "message": "not yours" })
        );
    }
}
