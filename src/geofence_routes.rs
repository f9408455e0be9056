//! Geofences and proximity rules of a group, over HTTP:
//!
//! | route | who | answer |
//! |---|---|---|
//! | `GET /v1/groups/{group}/geofences` | readers of the group | `{"geofences": [...]}` |
//! | `POST /v1/groups/{group}/geofences` | admins of the group | 201, the stored fence with its `id` |
//! | `GET /v1/groups/{group}/geofences/{id}` | readers | the fence, or 404 |
//! | `PUT /v1/groups/{group}/geofences/{id}` | admins | the replaced fence, or 404 |
//! | `DELETE /v1/groups/{group}/geofences/{id}` | admins | 204 (exits with `reason: "deleted"`), or 404 |
//! | `GET /v1/groups/{group}/proximity` | readers | `{"enter_m", "exit_m"}`, or 404 |
//! | `PUT /v1/groups/{group}/proximity` | admins | the rule |
//! | `DELETE /v1/groups/{group}/proximity` | admins | 204 |
//!
//! Readers are identities holding the group (anyone with `--auth none`, like the group's
//! positions); admins are identities of role `admin` holding it (403 otherwise). A bad body is a
//! 400 naming the field or the geometry's problem; a bound reached is a 409.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Bytes};
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::auth::IdentityQuery;
use crate::error::error_response;
use crate::geofence::{FenceBody, ProximityRule, RuleError};
use crate::model::{GroupId, now_ms};

/// The routes of this module.
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/groups/{group}/geofences",
            axum::routing::get(list).post(create),
        )
        .route(
            "/v1/groups/{group}/geofences/{id}",
            axum::routing::get(read).put(replace).delete(delete),
        )
        .route(
            "/v1/groups/{group}/proximity",
            axum::routing::get(read_proximity)
                .put(put_proximity)
                .delete(delete_proximity),
        )
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
}

type IdentityParams = Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>;

fn bad(message: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn group_id(group: &str) -> Result<GroupId, Box<Response>> {
    GroupId::parse(group).map_err(|why| Box::new(bad(format!("group {why}"))))
}

/// Checks that the caller may read `group`.
async fn reader(
    state: &AppState,
    headers: &HeaderMap,
    identity: IdentityParams,
    group: &str,
) -> Result<GroupId, Box<Response>> {
    let group = group_id(group)?;
    let query = identity.map(|Query(q)| q).unwrap_or_default();
    state
        .auth
        .authorize_group_read(headers, &query, group.as_str())
        .await
        .map_err(|e| Box::new(e.into_response()))?;
    Ok(group)
}

/// Checks that the caller is an admin of `group`.
async fn admin(
    state: &AppState,
    headers: &HeaderMap,
    identity: IdentityParams,
    group: &str,
) -> Result<GroupId, Box<Response>> {
    let group = group_id(group)?;
    let query = identity.map(|Query(q)| q).unwrap_or_default();
    let identity = state
        .auth
        .identify(headers, &query)
        .await
        .map_err(|e| Box::new(e.into_response()))?;
    if !identity.may_manage(group.as_str()) {
        return Err(Box::new(error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("only admins of group {group} may change its geofences and proximity rule"),
        )));
    }
    Ok(group)
}

/// Decodes a JSON body, naming the field at fault.
fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Box<Response>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at {path}")
        };
        Box::new(bad(format!("{what}{at}: {}", e.into_inner())))
    })
}

fn refused(e: RuleError) -> Response {
    let status = match e {
        RuleError::Invalid(_) => StatusCode::BAD_REQUEST,
        RuleError::NotFound(_) => StatusCode::NOT_FOUND,
        RuleError::Full(_) => StatusCode::CONFLICT,
    };
    let kind = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        _ => "full",
    };
    error_response(status, kind, e.to_string())
}

async fn list(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    identity: IdentityParams,
) -> Response {
    match reader(&state, &headers, identity, &group).await {
        Ok(group) => Json(state.geofences.list(group.as_str())).into_response(),
        Err(response) => *response,
    }
}

async fn create(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    identity: IdentityParams,
    body: Bytes,
) -> Response {
    let group = match admin(&state, &headers, identity, &group).await {
        Ok(group) => group,
        Err(response) => return *response,
    };
    let body: FenceBody = match decode(&body, "geofence") {
        Ok(body) => body,
        Err(response) => return *response,
    };
    match state.geofences.create(&group, body) {
        Ok(fence) => (StatusCode::CREATED, Json(fence)).into_response(),
        Err(e) => refused(e),
    }
}

async fn read(
    State(state): State<AppState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    identity: IdentityParams,
) -> Response {
    let group = match reader(&state, &headers, identity, &group).await {
        Ok(group) => group,
        Err(response) => return *response,
    };
    match state.geofences.get(group.as_str(), &id) {
        Ok(fence) => Json(fence).into_response(),
        Err(e) => refused(e),
    }
}

async fn replace(
    State(state): State<AppState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    identity: IdentityParams,
    body: Bytes,
) -> Response {
    let group = match admin(&state, &headers, identity, &group).await {
        Ok(group) => group,
        Err(response) => return *response,
    };
    let body: FenceBody = match decode(&body, "geofence") {
        Ok(body) => body,
        Err(response) => return *response,
    };
    match state.geofences.replace(&group, &id, body) {
        Ok(fence) => Json(fence).into_response(),
        Err(e) => refused(e),
    }
}

async fn delete(
    State(state): State<AppState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    identity: IdentityParams,
) -> Response {
    let group = match admin(&state, &headers, identity, &group).await {
        Ok(group) => group,
        Err(response) => return *response,
    };
    match state.geofences.delete(&group, &id, now_ms()) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refused(e),
    }
}

async fn read_proximity(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    identity: IdentityParams,
) -> Response {
    let group = match reader(&state, &headers, identity, &group).await {
        Ok(group) => group,
        Err(response) => return *response,
    };
    match state.geofences.proximity(group.as_str()) {
        Some(rule) => Json(rule).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("group {group} has no proximity rule"),
        ),
    }
}

async fn put_proximity(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    identity: IdentityParams,
    body: Bytes,
) -> Response {
    let group = match admin(&state, &headers, identity, &group).await {
        Ok(group) => group,
        Err(response) => return *response,
    };
    let rule: ProximityRule = match decode(&body, "proximity rule") {
        Ok(rule) => rule,
        Err(response) => return *response,
    };
    match state.geofences.set_proximity(&group, rule) {
        Ok(rule) => Json(rule).into_response(),
        Err(e) => refused(e),
    }
}

async fn delete_proximity(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    identity: IdentityParams,
) -> Response {
    let group = match admin(&state, &headers, identity, &group).await {
        Ok(group) => group,
        Err(response) => return *response,
    };
    state.geofences.clear_proximity(&group);
    StatusCode::NO_CONTENT.into_response()
}
