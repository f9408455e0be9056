//! `POST /v1/positions`: Beacon's own HTTP ingest, for devices that report without a socket.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::common::publish;
use crate::app::AppState;
use crate::auth::{IdentityQuery, check_publish};
use crate::error::error_response;
use crate::model::{Fix, now_ms};
use crate::protocol::{Codec, RawMessage, check_fix_age, decode_raw, validate_fix};

/// `POST /v1/positions`: one `pos` object or a list. All-or-nothing: when any fix is invalid,
/// none is applied and the answer names the first bad one.
pub(super) async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Response {
    let Ok(Query(query)) = query else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "malformed query string".into(),
        );
    };
    let identity = match state.auth.identify(&headers, &query).await {
        Ok(identity) => identity,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_publish(&identity) {
        state.metrics.security.auth_refused(e.reason()).inc();
        return e.into_response();
    }
    let now = now_ms();
    let limits = FixLimits {
        now,
        oldest: state.config.oldest_fix_ms(now),
        max: state.config.limits.max_batch_fixes,
    };
    let fixes = match parse_fixes(&body, &limits) {
        Ok(fixes) => fixes,
        Err((kind, message)) => return error_response(StatusCode::BAD_REQUEST, kind, message),
    };
    publish(&state, &identity, &fixes, now);
    Json(json!({ "accepted": fixes.len() })).into_response()
}

/// What a request's fixes are judged against.
#[derive(Clone, Copy)]
struct FixLimits {
    /// The receive time, ms since the epoch.
    now: i64,
    /// The oldest fix time kept ([`crate::config::Config::oldest_fix_ms`]).
    oldest: i64,
    /// Most fixes in one request.
    max: usize,
}

/// Parses a body holding one `pos` object or a list of them, validating every fix.
fn parse_fixes(body: &[u8], limits: &FixLimits) -> Result<Vec<Fix>, (&'static str, String)> {
    let FixLimits { now, oldest, max } = *limits;
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let raws: Vec<RawMessage<'_>> = if first == Some(&b'[') {
        let mut de = serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| ("bad_message", format!("{}: {}", e.path(), e.inner())))?
    } else {
        vec![decode_raw(Codec::Json, body).map_err(|r| ("bad_message", r.message.into_owned()))?]
    };
    if raws.is_empty() {
        return Err(("bad_message", "the list holds no fix".into()));
    }
    if raws.len() > max {
        return Err(("bad_message", format!("at most {max} fixes per request")));
    }
    let many = raws.len() > 1 || first == Some(&b'[');
    raws.iter()
        .enumerate()
        .map(|(i, raw)| {
            let at = |m: &str| {
                if many {
                    format!("[{i}]: {m}")
                } else {
                    m.to_owned()
                }
            };
            if let Some(kind) = raw.kind.as_deref()
                && kind != "pos"
            {
                return Err((
                    "bad_message",
                    at(&format!("type must be \"pos\", not {kind:?}")),
                ));
            }
            validate_fix(raw, now)
                .and_then(|fix| check_fix_age(&fix, oldest).map(|()| fix))
                .map_err(|r| ("invalid_position", at(&r.message)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_780_000_000;

    fn parse_fixes(body: &[u8], now: i64, max: usize) -> Result<Vec<Fix>, (&'static str, String)> {
        let oldest = now - 86_400_000;
        super::parse_fixes(body, &FixLimits { now, oldest, max })
    }

    #[test]
    fn parses_one_or_many() {
        let one = parse_fixes(br#"{"lat":1,"lon":2}"#, NOW, 5).unwrap();
        assert_eq!(one.len(), 1);
        let many = parse_fixes(
            br#" [{"type":"pos","lat":1,"lon":2},{"lat":3,"lon":4,"ts":1763779000000}]"#,
            NOW,
            5,
        )
        .unwrap();
        assert_eq!(many[1].ts, 1_763_779_000_000);
    }

    #[test]
    fn refuses_unset_clocks_and_fixes_past_retention() {
        let (kind, msg) = parse_fixes(br#"{"lat":1,"lon":2,"ts":0}"#, NOW, 5).unwrap_err();
        assert_eq!(kind, "invalid_position");
        assert!(msg.starts_with("ts must not be before 2000"), "{msg}");
        let two_days_ago = format!(
            r#"[{{"lat":1,"lon":2}},{{"lat":1,"lon":2,"ts":{}}}]"#,
            NOW - 2 * 86_400_000
        );
        let (kind, msg) = parse_fixes(two_days_ago.as_bytes(), NOW, 5).unwrap_err();
        assert_eq!(kind, "invalid_position");
        assert!(
            msg.starts_with("[1]: ts is older than the history retention"),
            "{msg}"
        );
    }

    #[test]
    fn names_the_bad_one() {
        let (kind, msg) =
            parse_fixes(br#"[{"lat":1,"lon":2},{"lat":100,"lon":4}]"#, NOW, 5).unwrap_err();
        assert_eq!(kind, "invalid_position");
        assert!(msg.starts_with("[1]: lat must"), "{msg}");
        let (kind, msg) = parse_fixes(br#"[{"lat":1,"lon":"x"}]"#, NOW, 5).unwrap_err();
        assert_eq!(kind, "bad_message");
        assert!(msg.contains("[0].lon"), "{msg}");
        let (_, msg) = parse_fixes(b"[]", NOW, 5).unwrap_err();
        assert!(msg.contains("no fix"));
        let (_, msg) =
            parse_fixes(br#"[{"lat":1,"lon":2},{"lat":1,"lon":2}]"#, NOW, 1).unwrap_err();
        assert!(msg.contains("at most 1"));
        let (_, msg) = parse_fixes(br#"{"type":"sub","lat":1,"lon":2}"#, NOW, 5).unwrap_err();
        assert!(msg.contains("type must be"));
    }
}
