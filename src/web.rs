//! The map page: static assets built from `web/` into `web/dist/` and embedded in the binary.
//!
//! Release builds carry the files inside the executable, so one binary serves the page. When
//! the assets were never built (no `npm` on the build machine) the page says how to build them.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

use crate::app::AppState;

#[derive(RustEmbed)]
#[folder = "web/dist"]
#[allow_missing = true]
struct Assets;

const MISSING: &str = "<!doctype html><title>Beacon</title><h1>Beacon is running</h1>\
<p>The map page was not built. Install Node.js and npm, then rebuild \
(<code>cargo build</code> builds <code>web/</code> automatically).</p>";

/// Routes serving the page and its assets.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/{*path}", get(asset))
}

async fn index() -> Response {
    match Assets::get("index.html") {
        Some(file) => serve(file, "index.html"),
        None => Html(MISSING).into_response(),
    }
}

async fn asset(Path(path): Path<String>) -> Response {
    match Assets::get(&path) {
        Some(file) => serve(file, &path),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

fn serve(file: rust_embed::EmbeddedFile, path: &str) -> Response {
    let mime = HeaderValue::from_str(file.metadata.mimetype())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let cache = if path == "index.html" {
        HeaderValue::from_static("no-cache")
    } else {
        // Every other asset's name carries a hash of its content (the bundler's doing).
        HeaderValue::from_static("public, max-age=31536000, immutable")
    };
    (
        [(header::CONTENT_TYPE, mime), (header::CACHE_CONTROL, cache)],
        file.data,
    )
        .into_response()
}
