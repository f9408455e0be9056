//! Webhook routes, for admins of the group: `POST` and `GET /v1/groups/{group}/webhooks`,
//! `DELETE /v1/groups/{group}/webhooks/{id}`, `GET /v1/groups/{group}/webhooks/{id}/deliveries`
//! (`docs/webhooks.md`).
//!
//! Every refusal is a JSON body `{"error": <kind>, "message": <why>}`: 400 for a bad group,
//! body, URL, target or pattern, or a bound reached; 401 without a valid identity; 403 for an
//! identity that may not manage the group (with `--auth none`, `?role=admin&groups=...`);
//! 404 for an unknown endpoint. The secret appears only in the answer to `POST`.

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::IdentityQuery;
use crate::error::error_response;
use crate::isotime::format_ms;
use crate::model::GroupId;
use crate::webhook::{CreateError, Endpoint};

/// The routes of this module.
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/groups/{group}/webhooks",
            get(list_webhooks).post(create_webhook),
        )
        .route("/v1/groups/{group}/webhooks/{id}", delete(delete_webhook))
        .route(
            "/v1/groups/{group}/webhooks/{id}/deliveries",
            get(webhook_deliveries),
        )
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
}

type IdentityParams = Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>;

fn bad(message: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// The group of the path, once the caller is known to manage it; otherwise the refusal.
async fn managed_group(
    state: &AppState,
    group: &str,
    headers: &HeaderMap,
    identity: IdentityParams,
) -> Result<GroupId, Response> {
    let group = GroupId::parse(group).map_err(|why| bad(format!("group {why}")))?;
    let query = identity.map(|Query(q)| q).unwrap_or_default();
    let identity = state
        .auth
        .identify(headers, &query)
        .await
        .map_err(IntoResponse::into_response)?;
    if !identity.may_manage(group.as_str()) {
        return Err(error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only admins of the group may manage its webhooks".into(),
        ));
    }
    Ok(group)
}

/// An endpoint as listed: everything but the secret.
fn listed(endpoint: &Endpoint) -> Value {
    json!({
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.events,
        "disabled": endpoint.disabled,
        "created_at": format_ms(endpoint.created_ms),
    })
}

/// The body of `POST /v1/groups/{group}/webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    events: Vec<String>,
}

/// `POST /v1/groups/{group}/webhooks`: 201 with the endpoint and its `secret`.
async fn create_webhook(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    identity: IdentityParams,
    body: axum::body::Bytes,
) -> Response {
    let group = match managed_group(&state, &group, &headers, identity).await {
        Ok(group) => group,
        Err(refusal) => return refusal,
    };
    let body: CreateBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return bad(format!(
                "the body must be {{\"url\": \"https://...\", \"events\": [\"pattern\", ...]}}: {e}"
            ));
        }
    };
    match state.webhooks.create(&group, &body.url, body.events).await {
        Ok(endpoint) => {
            let mut answer = listed(&endpoint);
            answer["secret"] = Value::String(endpoint.secret);
            (StatusCode::CREATED, Json(answer)).into_response()
        }
        Err(e @ (CreateError::Invalid(_) | CreateError::Limit(_))) => bad(e.to_string()),
    }
}

/// `GET /v1/groups/{group}/webhooks`: `{"webhooks": [...]}` without secrets.
async fn list_webhooks(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    identity: IdentityParams,
) -> Response {
    let group = match managed_group(&state, &group, &headers, identity).await {
        Ok(group) => group,
        Err(refusal) => return refusal,
    };
    let list: Vec<Value> = state
        .webhooks
        .list(group.as_str())
        .iter()
        .map(listed)
        .collect();
    Json(json!({ "webhooks": list })).into_response()
}

fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such webhook in this group".into(),
    )
}

/// `DELETE /v1/groups/{group}/webhooks/{id}`: 204, or 404.
async fn delete_webhook(
    State(state): State<AppState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    identity: IdentityParams,
) -> Response {
    let group = match managed_group(&state, &group, &headers, identity).await {
        Ok(group) => group,
        Err(refusal) => return refusal,
    };
    if state.webhooks.delete(group.as_str(), &id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found()
    }
}

/// `GET /v1/groups/{group}/webhooks/{id}/deliveries`: `{"deliveries": [...]}`, the recent
/// attempts, newest first.
async fn webhook_deliveries(
    State(state): State<AppState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    identity: IdentityParams,
) -> Response {
    let group = match managed_group(&state, &group, &headers, identity).await {
        Ok(group) => group,
        Err(refusal) => return refusal,
    };
    match state.webhooks.deliveries(group.as_str(), &id).await {
        Some(list) => Json(json!({ "deliveries": list })).into_response(),
        None => not_found(),
    }
}
