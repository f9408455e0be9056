//! What the ingest routes share: reading parameters and numbers, the device's identity, the
//! answer to a refusal, and publishing through the hub.

use std::borrow::Cow;
use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use serde_json::{Map, Value};

use crate::app::AppState;
use crate::auth::{AuthError, IdentityQuery};
use crate::error::error_response;
use crate::events::event_id;
use crate::model::{Event, Fix, Identity};
use crate::protocol::{RawMessage, validate_fix};

/// Why an app's request could not be turned into fixes.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub(crate) enum IngestError {
    /// A field is missing or unreadable (HTTP 400, `bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// The fix breaks the protocol's ranges (HTTP 400, `invalid_position`).
    #[error("{0}")]
    InvalidPosition(String),
}

impl IngestError {
    /// The 400 answer for this refusal.
    pub(crate) fn response(&self) -> Response {
        let kind = match self {
            IngestError::BadRequest(_) => "bad_request",
            IngestError::InvalidPosition(_) => "invalid_position",
        };
        error_response(StatusCode::BAD_REQUEST, kind, self.to_string())
    }
}

/// Key-value parameters of a query string or a urlencoded form. The last value of a repeated
/// key wins; empty values count as absent.
#[derive(Clone, Debug, Default)]
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    /// Reads `application/x-www-form-urlencoded` text (a query string has the same syntax).
    pub(crate) fn parse(encoded: &[u8]) -> Result<Self, IngestError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(encoded)
            .map_err(|e| IngestError::BadRequest(format!("malformed parameters: {e}")))?;
        Ok(Params(pairs.into_iter().collect()))
    }

    /// Adds `other`'s parameters, replacing those of the same name.
    pub(crate) fn merge(&mut self, other: Params) {
        self.0.extend(other.0);
    }

    /// The trimmed value of `key`, unless absent or empty.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// `key` read as a number; absent or empty is `None`.
    pub(crate) fn number(&self, key: &str) -> Result<Option<f64>, IngestError> {
        self.get(key).map(|v| parse_number(key, v)).transpose()
    }
}

/// Reads `text` as a number, naming `field` when it is not one.
pub(super) fn parse_number(field: &str, text: &str) -> Result<f64, IngestError> {
    text.trim().parse::<f64>().map_err(|_| {
        IngestError::BadRequest(format!(
            "{field} must be a number, not {:?}",
            truncate(text, 32)
        ))
    })
}

/// `obj[key]` read as a number: JSON numbers, and numeric strings (some clients quote them).
/// Missing or `null` is `None`; `path` names the field in refusals.
pub(super) fn json_number(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<f64>, IngestError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => parse_number(path, s).map(Some),
        Some(_) => Err(IngestError::BadRequest(format!("{path} must be a number"))),
    }
}

/// Apps report `-1` for a speed, heading or accuracy they do not know: treat any negative value
/// (and NaN) as absent rather than refusing the whole fix.
pub(super) fn known(value: Option<f64>) -> Option<f64> {
    value.filter(|v| *v >= 0.0)
}

/// Epoch seconds or epoch milliseconds, told apart by size: anything from 1e11 up is taken as
/// ms (1e11 s is the year 5138; 1e11 ms is 1973).
pub(super) fn epoch_to_ms(value: f64) -> f64 {
    if value.abs() >= 1e11 {
        value
    } else {
        value * 1000.0
    }
}

/// Validates a fix built from an app's fields. `names` maps the protocol's field names
/// (`lat`, `ts`, `spd`...) to the app's, so the refusal names what the app sent.
pub(super) fn validate(
    raw: &RawMessage<'_>,
    now: i64,
    names: &[(&str, &str)],
) -> Result<Fix, IngestError> {
    validate_fix(raw, now).map_err(|refusal| {
        let message = refusal.message;
        let (field, rest) = message.split_once(' ').unwrap_or((&message, ""));
        let field = names
            .iter()
            .find(|(ours, _)| *ours == field)
            .map_or(field, |(_, theirs)| theirs);
        IngestError::InvalidPosition(format!("{field} {rest}"))
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// User name and password of HTTP Basic auth, when the request carries it.
pub(super) fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
    Some((user.to_owned(), password.to_owned()))
}

/// What an app's request says about who is reporting, besides the device id.
#[derive(Debug, Default)]
pub(super) struct Credentials {
    /// A token from the path, the query or the Basic-auth password.
    pub(crate) token: Option<String>,
    /// `?groups=` (used with `--auth none` only).
    pub(crate) groups: Option<String>,
}

/// The identity of a device reporting through an app protocol, or why it is refused.
///
/// Identity goes through [`crate::auth::Authenticator::identify`] like every other route: with
/// `--auth none` it is `device` in `?groups=` or the default ingest group; with tokens, the token
/// decides. A Basic `Authorization` header is not passed on (its password already is the token),
/// so an authenticator that reads bearer tokens from that header does not trip over it.
pub(crate) async fn identify_device(
    state: &AppState,
    headers: &HeaderMap,
    device: &str,
    credentials: Credentials,
) -> Result<Identity, AuthError> {
    let groups = credentials
        .groups
        .unwrap_or_else(|| state.config.ingest.default_group.to_string());
    // Built field by field with a default rest, so fields other authenticators add later keep
    // their defaults.
    #[allow(clippy::needless_update)]
    let query = IdentityQuery {
        id: Some(device.to_owned()),
        groups: Some(groups),
        role: None,
        access_token: credentials.token.filter(|t| !t.is_empty()),
        ..IdentityQuery::default()
    };
    let headers = match basic_auth(headers) {
        Some(_) => {
            let mut stripped = headers.clone();
            stripped.remove(header::AUTHORIZATION);
            Cow::Owned(stripped)
        }
        None => Cow::Borrowed(headers),
    };
    let identity = state.auth.identify(&headers, &query).await?;
    if !identity.may_publish() {
        return Err(AuthError::Forbidden(format!(
            "{}s may not publish positions",
            identity.role.as_str()
        )));
    }
    Ok(identity)
}

/// The answer to a refused identity.
pub(super) fn refused(e: &AuthError) -> Response {
    error_response(e.status(), e.kind(), e.to_string())
}

/// Publishes the fixes of a phone app, minus those too old for the history retention: the app
/// still gets 200 (so its queue moves on), and each dropped fix is counted in
/// `beacon_ingest_too_old_total` and logged (device and fix time, never a credential).
/// Returns the fixes kept.
pub(super) fn publish_app(
    state: &AppState,
    identity: &Identity,
    app: &'static str,
    fixes: &[Fix],
    now: i64,
) -> Vec<Fix> {
    let oldest = state.config.oldest_fix_ms(now);
    let (kept, dropped): (Vec<Fix>, Vec<Fix>) =
        fixes.iter().cloned().partition(|fix| fix.ts >= oldest);
    if let Some(newest) = dropped.iter().map(|fix| fix.ts).max() {
        state.metrics.ingest_too_old.inc_by(dropped.len() as u64);
        tracing::warn!(
            device = %identity.id,
            app,
            fixes = dropped.len(),
            newest_ts_ms = newest,
            oldest_kept_ms = oldest,
            "phone-app fixes older than the history retention dropped"
        );
    }
    publish(state, identity, &kept, now);
    kept
}

/// Records an event of `kind` caused by `fix` in each of the device's groups; each new one (not
/// a retry) goes to the group's subscribers on every instance ([`crate::event_bus`]).
pub(super) fn record_event(
    state: &AppState,
    identity: &Identity,
    kind: &'static str,
    fix: &Fix,
    name: &str,
) {
    for group in &identity.groups {
        let event = Event {
            id: event_id(kind, &identity.id, group, fix.ts, name),
            kind,
            device: identity.id.clone(),
            group: group.clone(),
            ts: fix.ts,
            lat: Some(fix.lat),
            lon: Some(fix.lon),
            alarm: (kind == "alarm").then(|| name.to_owned()),
            region: kind.starts_with("region.").then(|| name.to_owned()),
            geofence: None,
            geofence_name: None,
            peer: None,
            distance_m: None,
            reason: None,
        };
        if state.events.record(&event) {
            tracing::info!(device = %identity.id, group = %group, kind, name, "event");
        }
    }
}

/// An app's event name (alarm, region) made safe to keep: control characters dropped, at
/// most [`MAX_EVENT_NAME_CHARS`] characters.
pub(super) fn event_name(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_EVENT_NAME_CHARS)
        .collect();
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// Longest alarm or region name kept, in characters.
pub(crate) const MAX_EVENT_NAME_CHARS: usize = 64;

/// Publishes fixes that arrived over HTTP, from any ingest route. Such devices hold no
/// socket: their presence follows the stale window.
pub(super) fn publish(state: &AppState, identity: &Identity, fixes: &[Fix], now: i64) {
    state.metrics.msg_in_http.inc_by(fixes.len() as u64);
    for fix in fixes {
        state.hub.publish(&identity.id, &identity.groups, fix, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn params_last_wins_and_empty_is_absent() {
        let mut p = Params::parse(b"id=a&lat=1&lat=2&alt=&x=%20y%20").unwrap();
        assert_eq!(p.get("id"), Some("a"));
        assert_eq!(p.number("lat"), Ok(Some(2.0)));
        assert_eq!(p.number("alt"), Ok(None));
        assert_eq!(p.get("x"), Some("y"));
        p.merge(Params::parse(b"id=b").unwrap());
        assert_eq!(p.get("id"), Some("b"));
        let err = Params::parse(b"lat=north")
            .unwrap()
            .number("lat")
            .unwrap_err();
        assert_eq!(
            err,
            IngestError::BadRequest("lat must be a number, not \"north\"".into())
        );
    }

    #[test]
    fn epoch_units_are_told_apart() {
        assert_eq!(epoch_to_ms(1_700_000_000.0), 1_700_000_000_000.0);
        assert_eq!(epoch_to_ms(1_700_000_000_123.0), 1_700_000_000_123.0);
    }

    #[test]
    fn refusals_use_the_apps_names() {
        let raw = RawMessage {
            lat: Some(1.0),
            lon: Some(1.0),
            hdg: Some(400.0),
            ..RawMessage::default()
        };
        let err = validate(&raw, 0, &[("hdg", "bearing")]).unwrap_err();
        assert_eq!(
            err,
            IngestError::InvalidPosition("bearing must be a finite number within [0, 360]".into())
        );
    }

    #[test]
    fn basic_auth_is_decoded() {
        let mut headers = HeaderMap::new();
        assert_eq!(basic_auth(&headers), None);
        // "jane:s3cret:x" in base64.
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic amFuZTpzM2NyZXQ6eA=="),
        );
        assert_eq!(
            basic_auth(&headers),
            Some(("jane".into(), "s3cret:x".into()))
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(basic_auth(&headers), None);
    }
}
