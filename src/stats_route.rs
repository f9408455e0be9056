//! `GET /v1/devices/{id}/stats` and `GET /v1/groups/{group}/stats`: distance, moving time,
//! speeds, trips and stops computed from the stored history (`crate::stats` does the sums;
//! `docs/statistics.md` explains the rules).
//!
//! Query parameters, both routes:
//! - `from`, `to`: fix-time range, inclusive, ms since the epoch or ISO-8601, as the track reads
//!   them. Default: the 24 hours up to `to` (itself defaulting to now); `from` alone means the
//!   24 hours from `from`. At most [`MAX_RANGE_MS`] (31 days).
//! - the rules `stop_min_s`, `stop_radius_m`, `trip_min_m`, `gap_s`, `max_acc_m`, each with a
//!   default and bounds ([`crate::stats::RULES`]); a value out of bounds is a 400.
//!
//! The group route adds `limit` (devices per answer, default [`GROUP_DEFAULT_LIMIT`], at most
//! [`GROUP_MAX_LIMIT`]) and `cursor` (the `next_cursor` of the previous page): devices come in
//! id order, one page at a time, so a group of thousands costs one bounded page per request.
//!
//! Rights are the track's: the history of a device is read through
//! [`crate::track::authorize_track_read`] and the store's one scope rule. The group route first
//! checks that the caller may read the group (403 otherwise), then reads each device's history
//! through the same rule.

use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tracing::{debug, error};

use crate::app::AppState;
use crate::auth::IdentityQuery;
use crate::error::error_response;
use crate::metrics::Metrics;
use crate::model::{DeviceId, Fix, GroupId, now_ms};
use crate::stats::{Rules, Stats, Summary};
use crate::store::{HistoryScope, Store, StoreError};
use crate::track::{authorize_track_read, history_unreadable, no_history, parse_time};

/// Range used when the request names no `from` (or no `to`): 24 hours.
pub(crate) const DEFAULT_RANGE_MS: i64 = 24 * 3_600_000;

/// Longest range accepted: 31 days. With the store's per-device bound on history points, this
/// bounds the work of one device's statistics.
pub(crate) const MAX_RANGE_MS: i64 = 31 * 24 * 3_600_000;

/// Devices per group answer when the request names no `limit`.
pub(crate) const GROUP_DEFAULT_LIMIT: usize = 20;

/// Most devices per group answer: each is one pass over up to a day (or a month) of history.
pub(crate) const GROUP_MAX_LIMIT: usize = 100;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/devices/{id}/stats", get(device_stats))
        .route("/v1/groups/{group}/stats", get(group_stats))
}

/// Query of both routes; every field is read by hand so refusals name it.
#[derive(Debug, Default, Deserialize)]
struct StatsParams {
    from: Option<String>,
    to: Option<String>,
    stop_min_s: Option<String>,
    stop_radius_m: Option<String>,
    trip_min_m: Option<String>,
    gap_s: Option<String>,
    max_acc_m: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    access_token: Option<String>,
    token: Option<String>,
}

fn bad_request(message: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn given(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.trim().is_empty())
}

/// The range of the request (see the module doc), checked against [`MAX_RANGE_MS`].
fn read_range(params: &StatsParams, now: i64) -> Result<(i64, i64), String> {
    let from = given(params.from.as_deref())
        .map(|t| parse_time("from", t))
        .transpose()?;
    let to = given(params.to.as_deref())
        .map(|t| parse_time("to", t))
        .transpose()?;
    let (from, to) = match (from, to) {
        (Some(from), Some(to)) => (from, to),
        (Some(from), None) => (from, from.saturating_add(DEFAULT_RANGE_MS)),
        (None, Some(to)) => (to.saturating_sub(DEFAULT_RANGE_MS), to),
        (None, None) => (now - DEFAULT_RANGE_MS, now),
    };
    if from > to {
        return Err("from must not be after to".into());
    }
    if to.saturating_sub(from) > MAX_RANGE_MS {
        return Err("the range from..to must be at most 31 days".into());
    }
    Ok((from, to))
}

/// The rules of the request: defaults, overridden by the query.
fn read_rules(params: &StatsParams) -> Result<Rules, String> {
    let mut rules = Rules::default();
    for (name, value) in [
        ("stop_min_s", &params.stop_min_s),
        ("stop_radius_m", &params.stop_radius_m),
        ("trip_min_m", &params.trip_min_m),
        ("gap_s", &params.gap_s),
        ("max_acc_m", &params.max_acc_m),
    ] {
        if let Some(text) = value {
            rules.set(name, text)?;
        }
    }
    Ok(rules)
}

/// The rules as answered, so a client sees what its figures mean.
#[derive(Debug, Serialize)]
struct RulesRecord {
    stop_min_s: f64,
    stop_radius_m: f64,
    trip_min_m: f64,
    gap_s: f64,
    max_acc_m: f64,
    max_speed_mps: f64,
}

impl From<&Rules> for RulesRecord {
    fn from(r: &Rules) -> Self {
        RulesRecord {
            stop_min_s: r.stop_min_s,
            stop_radius_m: r.stop_radius_m,
            trip_min_m: r.trip_min_m,
            gap_s: r.gap_s,
            max_acc_m: r.max_acc_m,
            max_speed_mps: r.max_speed_mps,
        }
    }
}

/// One pass over the range of `device`'s history that `scope` admits.
async fn compute(
    metrics: &Metrics,
    store: &Store,
    device: &DeviceId,
    scope: &HistoryScope,
    (from, to): (i64, i64),
    rules: Rules,
) -> Result<Summary, StoreError> {
    let started = Instant::now();
    let visit: fn(&mut Stats, &Fix) = |stats, fix| stats.push(fix);
    let stats = store
        .scan(device, scope, from, to, Stats::new(rules), visit)
        .await?;
    let summary = stats.finish();
    metrics.stats.computed.inc();
    metrics.stats.points_read.inc_by(summary.points);
    metrics
        .stats
        .seconds
        .observe(started.elapsed().as_secs_f64());
    debug!(
        device = %device,
        points = summary.points,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "statistics computed"
    );
    Ok(summary)
}

/// `{"device", "from", "to", ...the summary..., "rules"}`.
#[derive(Debug, Serialize)]
struct DeviceAnswer<'a> {
    device: &'a str,
    from: i64,
    to: i64,
    #[serde(flatten)]
    summary: Summary,
    rules: RulesRecord,
}

async fn device_stats(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Result<Query<StatsParams>, QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return bad_request("malformed query string".into());
    };
    let device = match DeviceId::parse(&id) {
        Ok(device) => device,
        Err(why) => return bad_request(format!("device id {why}")),
    };
    let (range, rules) = match read_range(&params, now_ms()).and_then(|range| {
        if params.limit.is_some() || params.cursor.is_some() {
            return Err("limit and cursor belong to the group statistics".into());
        }
        Ok((range, read_rules(&params)?))
    }) {
        Ok(read) => read,
        Err(message) => return bad_request(message),
    };
    let token = params.access_token.or(params.token);
    let scope = match authorize_track_read(&state, &headers, token, &device).await {
        Ok(scope) => scope,
        Err(e) => return error_response(e.status(), e.kind(), e.to_string()),
    };
    let Some(store) = &state.store else {
        return no_history();
    };
    match compute(&state.metrics, store, &device, &scope, range, rules).await {
        Ok(summary) => Json(DeviceAnswer {
            device: device.as_str(),
            from: range.0,
            to: range.1,
            summary,
            rules: (&rules).into(),
        })
        .into_response(),
        Err(e) => {
            error!(error = %e, device = %device, "statistics query failed");
            history_unreadable()
        }
    }
}

/// One device of the group answer: the summary without its trips and stops, which are counted.
#[derive(Debug, Serialize)]
struct DeviceLine {
    device: String,
    points: u64,
    outliers: u64,
    distance_m: f64,
    moving_s: f64,
    spd_min: Option<f64>,
    spd_avg: Option<f64>,
    spd_max: Option<f64>,
    breaks: u64,
    trip_count: usize,
    stop_count: usize,
}

impl DeviceLine {
    fn new(device: &DeviceId, s: Summary) -> Self {
        DeviceLine {
            device: device.as_str().to_owned(),
            points: s.points,
            outliers: s.outliers,
            distance_m: s.distance_m,
            moving_s: s.moving_s,
            spd_min: s.spd_min,
            spd_avg: s.spd_avg,
            spd_max: s.spd_max,
            breaks: s.breaks,
            trip_count: s.trips.len(),
            stop_count: s.stops.len(),
        }
    }
}

/// `{"group", "from", "to", "devices": [...], "next_cursor", "rules"}`.
#[derive(Debug, Serialize)]
struct GroupAnswer<'a> {
    group: &'a str,
    from: i64,
    to: i64,
    devices: Vec<DeviceLine>,
    /// The id to pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
    rules: RulesRecord,
}

fn read_page(params: &StatsParams) -> Result<(usize, Option<DeviceId>), String> {
    let limit = match given(params.limit.as_deref()) {
        None => GROUP_DEFAULT_LIMIT,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=GROUP_MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(format!(
                    "limit must be a whole number from 1 to {GROUP_MAX_LIMIT}"
                ));
            }
        },
    };
    let cursor = given(params.cursor.as_deref())
        .map(|c| DeviceId::parse(c.trim()).map_err(|why| format!("cursor {why}")))
        .transpose()?;
    Ok((limit, cursor))
}

async fn group_stats(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    params: Result<Query<StatsParams>, QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return bad_request("malformed query string".into());
    };
    let group = match GroupId::parse(&group) {
        Ok(group) => group,
        Err(why) => return bad_request(format!("group {why}")),
    };
    let read = read_range(&params, now_ms())
        .and_then(|range| Ok((range, read_rules(&params)?, read_page(&params)?)));
    let (range, rules, (limit, cursor)) = match read {
        Ok(read) => read,
        Err(message) => return bad_request(message),
    };
    let query = IdentityQuery {
        access_token: params.access_token.or(params.token),
        ..IdentityQuery::default()
    };
    let reader = match state
        .auth
        .authorize_group_read(&headers, &query, group.as_str())
        .await
    {
        Ok(reader) => reader,
        Err(e) => return e.into_response(),
    };
    let Some(store) = &state.store else {
        return no_history();
    };
    let mut devices = match store
        .group_devices(&group, cursor.as_ref(), limit.saturating_add(1))
        .await
    {
        Ok(devices) => devices,
        Err(e) => {
            error!(error = %e, group = %group, "group statistics: devices not listed");
            return history_unreadable();
        }
    };
    let next_cursor = if devices.len() > limit {
        devices.truncate(limit);
        devices.last().map(|d| d.as_str().to_owned())
    } else {
        None
    };
    let mut lines = Vec::with_capacity(devices.len());
    for device in &devices {
        // The track's rule, for the identity already checked against the group.
        let scope = HistoryScope::for_reader(reader.as_ref(), device);
        match compute(&state.metrics, store, device, &scope, range, rules).await {
            Ok(summary) => lines.push(DeviceLine::new(device, summary)),
            Err(e) => {
                error!(error = %e, device = %device, "statistics query failed");
                return history_unreadable();
            }
        }
    }
    Json(GroupAnswer {
        group: group.as_str(),
        from: range.0,
        to: range.1,
        devices: lines,
        next_cursor,
        rules: (&rules).into(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> StatsParams {
        serde_urlencoded::from_str(query).unwrap()
    }

    #[test]
    fn ranges_default_to_a_day_and_are_bounded() {
        let now = 1_763_780_000_000;
        assert_eq!(
            read_range(&params(""), now),
            Ok((now - DEFAULT_RANGE_MS, now))
        );
        assert_eq!(
            read_range(&params("from=1000"), now),
            Ok((1000, 1000 + DEFAULT_RANGE_MS))
        );
        assert_eq!(
            read_range(&params("to=2025-11-22T00:00:00Z"), now),
            Ok((1_763_769_600_000 - DEFAULT_RANGE_MS, 1_763_769_600_000))
        );
        assert_eq!(
            read_range(&params(&format!("from=0&to={MAX_RANGE_MS}")), now),
            Ok((0, MAX_RANGE_MS))
        );
        for (query, needle) in [
            ("from=soon", "from must be"),
            ("to=1e3", "to must be"),
            ("from=5&to=4", "after"),
            ("from=0&to=2678400001", "31 days"),
            (
                "from=-9223372036854775808&to=9223372036854775807",
                "31 days",
            ),
        ] {
            let err = read_range(&params(query), now).unwrap_err();
            assert!(err.contains(needle), "{query}: {err}");
        }
    }

    #[test]
    fn rules_and_pages_are_read_with_bounds() {
        let rules = read_rules(&params("stop_min_s=60&trip_min_m=0")).unwrap();
        assert_eq!((rules.stop_min_s, rules.trip_min_m), (60.0, 0.0));
        assert_eq!(read_rules(&params("")).unwrap(), Rules::default());
        let err = read_rules(&params("stop_radius_m=0")).unwrap_err();
        assert!(err.starts_with("stop_radius_m must be"), "{err}");
        assert_eq!(read_page(&params("")), Ok((GROUP_DEFAULT_LIMIT, None)));
        let (limit, cursor) = read_page(&params("limit=100&cursor=car-7")).unwrap();
        assert_eq!((limit, cursor.unwrap().as_str()), (100, "car-7"));
        for query in ["limit=0", "limit=101", "limit=x", "cursor=a%20b"] {
            assert!(read_page(&params(query)).is_err(), "{query}");
        }
    }
}
