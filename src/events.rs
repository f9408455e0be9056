//! The event log: the recent events of each group, for `GET /v1/groups/{group}/events`.
//!
//! Without `--data-dir` the log is memory only. With it, every new event is also written to
//! `DIR/events.sqlite3` (its own file, apart from the position store), the log reads from
//! there, ids already stored are not events again (a retry after a restart), each group keeps
//! its last `--events-per-group` there too, and events older than the history retention
//! (`--history-retention-days`, by event time) are deleted every [`PRUNE_EVERY`] inserts. Events are rare, so the insert runs inline (WAL,
//! `synchronous=NORMAL`: tens of microseconds); a failing disk is logged and the memory log
//! still serves.
//!
//! Each group keeps at most `--events-per-group` events (the oldest go first) and at most
//! [`MAX_EVENT_GROUPS`] groups are kept, so no client can grow the log without bound. An event
//! already held (same id: a phone retrying its report) is not added twice; the caller fans out
//! only what [`EventLog::add`] reports as new.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use std::path::Path;

use rusqlite::{Connection, params};

use crate::model::{DeviceId, Event, GroupId, now_ms};

/// File name of the event store inside `--data-dir`.
pub(crate) const EVENTS_FILE: &str = "events.sqlite3";

/// Inserts between two deletions of events past the retention.
pub(crate) const PRUNE_EVERY: u64 = 256;

/// Most groups whose events are kept. Events of further groups are still sent live.
pub(crate) const MAX_EVENT_GROUPS: usize = 10_000;

/// Most events one `GET /v1/groups/{group}/events` returns (also its `limit` ceiling).
pub(crate) const MAX_EVENTS_PER_QUERY: usize = 1000;

/// The id of an event: a hash of what it is (kind, device, group, time, name), so the same
/// event reported twice, or seen on two instances, has the same id. 64-bit FNV-1a, hex.
pub(crate) fn event_id(
    kind: &str,
    device: &DeviceId,
    group: &GroupId,
    ts: i64,
    name: &str,
) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let ts = ts.to_string();
    for part in [kind, device.as_str(), group.as_str(), &ts, name] {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("ev_{hash:016x}")
}

/// What a query asks for.
#[derive(Clone, Debug, Default)]
pub(crate) struct EventQuery<'a> {
    /// Events at or after this fix time, ms.
    pub(crate) from: Option<i64>,
    /// Events at or before this fix time, ms.
    pub(crate) to: Option<i64>,
    /// Only this kind.
    pub(crate) kind: Option<&'a str>,
    /// At most this many (the oldest matching ones first).
    pub(crate) limit: usize,
}

/// The recent events of every group.
#[derive(Debug)]
pub(crate) struct EventLog {
    groups: Mutex<HashMap<GroupId, VecDeque<Event>>>,
    per_group: usize,
    disk: Option<Mutex<Disk>>,
}

/// An event as stored on disk (JSON in the `record` column).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Stored {
    id: String,
    kind: String,
    device: String,
    group: String,
    ts: i64,
    lat: Option<f64>,
    lon: Option<f64>,
    alarm: Option<String>,
    region: Option<String>,
    #[serde(default)]
    geofence: Option<String>,
    #[serde(default)]
    geofence_name: Option<String>,
    #[serde(default)]
    peer: Option<String>,
    #[serde(default)]
    distance_m: Option<f64>,
    #[serde(default)]
    reason: Option<String>,
}

impl From<&Event> for Stored {
    fn from(e: &Event) -> Self {
        Stored {
            id: e.id.clone(),
            kind: e.kind.to_owned(),
            device: e.device.as_str().to_owned(),
            group: e.group.as_str().to_owned(),
            ts: e.ts,
            lat: e.lat,
            lon: e.lon,
            alarm: e.alarm.clone(),
            region: e.region.clone(),
            geofence: e.geofence.clone(),
            geofence_name: e.geofence_name.clone(),
            peer: e.peer.clone(),
            distance_m: e.distance_m,
            reason: e.reason.clone(),
        }
    }
}

impl Stored {
    fn into_event(self) -> Option<Event> {
        Some(Event {
            kind: event_kind(&self.kind)?,
            device: DeviceId::parse(&self.device).ok()?,
            group: GroupId::parse(&self.group).ok()?,
            id: self.id,
            ts: self.ts,
            lat: self.lat,
            lon: self.lon,
            alarm: self.alarm,
            region: self.region,
            geofence: self.geofence,
            geofence_name: self.geofence_name,
            peer: self.peer,
            distance_m: self.distance_m,
            reason: self.reason,
        })
    }
}

/// The kinds phones report, as the static names events carry.
/// The server's rules (geofences, proximity) make the `geofence.*` and `proximity.*` kinds.
pub(crate) fn event_kind(kind: &str) -> Option<&'static str> {
    match kind {
        "alarm" => Some("alarm"),
        "region.enter" => Some("region.enter"),
        "region.exit" => Some("region.exit"),
        "geofence.enter" => Some("geofence.enter"),
        "geofence.exit" => Some("geofence.exit"),
        "geofence.dwell" => Some("geofence.dwell"),
        "proximity.enter" => Some("proximity.enter"),
        "proximity.exit" => Some("proximity.exit"),
        _ => None,
    }
}

/// The durable part, with `--data-dir`.
#[derive(Debug)]
struct Disk {
    conn: Connection,
    retention_ms: i64,
    inserts: u64,
}

/// Opens (and creates) the event store in `dir`.
fn open(dir: &Path) -> rusqlite::Result<Connection> {
    std::fs::create_dir_all(dir)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let conn = Connection::open(dir.join(EVENTS_FILE))?;
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS events (
             id TEXT PRIMARY KEY, grp TEXT NOT NULL, kind TEXT NOT NULL, ts INTEGER NOT NULL,
             record TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS events_by_group ON events (grp, ts);",
    )?;
    Ok(conn)
}

impl EventLog {
    /// An empty log keeping `per_group` events per group.
    pub(crate) fn new(per_group: usize) -> Self {
        EventLog {
            groups: Mutex::new(HashMap::new()),
            per_group: per_group.max(1),
            disk: None,
        }
    }

    /// A log kept in `dir` as well, events older than `retention_ms` deleted. When the file
    /// cannot be opened the log is memory only (logged).
    pub(crate) fn with_dir(per_group: usize, dir: &Path, retention_ms: i64) -> Self {
        let mut log = EventLog::new(per_group);
        match open(dir) {
            Ok(conn) => {
                log.disk = Some(Mutex::new(Disk {
                    conn,
                    retention_ms,
                    inserts: 0,
                }));
            }
            Err(e) => {
                tracing::warn!(error = %e, "event store unusable; events kept in memory only");
            }
        }
        log
    }

    /// Writes `event` to disk; `Some(false)` when its id is stored already.
    fn store(&self, event: &Event) -> Option<bool> {
        let disk = self.disk.as_ref()?;
        let mut disk = disk.lock().unwrap_or_else(|e| e.into_inner());
        let record = serde_json::to_string(&Stored::from(event)).ok()?;
        let result = disk.conn.execute(
            "INSERT OR IGNORE INTO events (id, grp, kind, ts, record) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![event.id, event.group.as_str(), event.kind, event.ts, record],
        );
        let inserted = match result {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::warn!(error = %e, "event not stored");
                return None;
            }
        };
        if inserted {
            // The group's bound holds on disk too: its oldest beyond `per_group` go.
            let trimmed = disk.conn.execute(
                "DELETE FROM events WHERE grp = ?1 AND ts < (SELECT ts FROM events WHERE grp = ?1
                 ORDER BY ts DESC LIMIT 1 OFFSET ?2)",
                params![event.group.as_str(), self.per_group as i64 - 1],
            );
            if let Err(e) = trimmed {
                tracing::warn!(error = %e, "events beyond the group's bound not deleted");
            }
        }
        disk.inserts += 1;
        if disk.inserts % PRUNE_EVERY == 0 {
            let oldest = now_ms().saturating_sub(disk.retention_ms);
            if let Err(e) = disk
                .conn
                .execute("DELETE FROM events WHERE ts < ?1", [oldest])
            {
                tracing::warn!(error = %e, "old events not pruned");
            }
        }
        Some(inserted)
    }

    /// The stored events of `group` matching `query`, oldest first.
    fn stored(&self, group: &str, query: &EventQuery<'_>) -> Option<Vec<Event>> {
        let disk = self.disk.as_ref()?;
        let disk = disk.lock().unwrap_or_else(|e| e.into_inner());
        let limit = query.limit.min(MAX_EVENTS_PER_QUERY) as i64;
        let read = || -> rusqlite::Result<Vec<String>> {
            let mut statement = disk.conn.prepare_cached(
                "SELECT record FROM events WHERE grp = ?1 AND ts >= ?2 AND ts <= ?3
                 AND (?4 IS NULL OR kind = ?4) ORDER BY ts, id LIMIT ?5",
            )?;
            let rows = statement.query_map(
                params![
                    group,
                    query.from.unwrap_or(i64::MIN),
                    query.to.unwrap_or(i64::MAX),
                    query.kind,
                    limit
                ],
                |row| row.get::<_, String>(0),
            )?;
            rows.collect()
        };
        match read() {
            Ok(records) => Some(
                records
                    .iter()
                    .filter_map(|r| serde_json::from_str::<Stored>(r).ok())
                    .filter_map(|r| r.into_event())
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "stored events unreadable; answering from memory");
                None
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<GroupId, VecDeque<Event>>> {
        // Only collection operations run under the lock; a poisoned log is still consistent.
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `event` unless one with its id is held; returns whether it is new. Kept in fix-time
    /// order.
    pub(crate) fn add(&self, event: &Event) -> bool {
        if self.store(event) == Some(false) {
            return false;
        }
        let mut groups = self.lock();
        if !groups.contains_key(&event.group) && groups.len() >= MAX_EVENT_GROUPS {
            return true;
        }
        let list = groups.entry(event.group.clone()).or_default();
        if list.iter().any(|e| e.id == event.id) {
            return false;
        }
        let at = list.partition_point(|e| e.ts <= event.ts);
        list.insert(at, event.clone());
        while list.len() > self.per_group {
            list.pop_front();
        }
        true
    }

    /// The events of `group` matching `query`, oldest first.
    pub(crate) fn query(&self, group: &str, query: &EventQuery<'_>) -> Vec<Event> {
        if let Some(events) = self.stored(group, query) {
            return events;
        }
        let groups = self.lock();
        let Some(list) = groups.get(group) else {
            return Vec::new();
        };
        list.iter()
            .filter(|e| query.from.is_none_or(|from| e.ts >= from))
            .filter(|e| query.to.is_none_or(|to| e.ts <= to))
            .filter(|e| query.kind.is_none_or(|kind| e.kind == kind))
            .take(query.limit.min(MAX_EVENTS_PER_QUERY))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(group: &str, ts: i64, name: &str) -> Event {
        let (device, group) = (
            DeviceId::parse("d").unwrap(),
            GroupId::parse(group).unwrap(),
        );
        Event {
            id: event_id("alarm", &device, &group, ts, name),
            kind: "alarm",
            device,
            group,
            ts,
            lat: None,
            lon: None,
            alarm: Some(name.into()),
            region: None,
            geofence: None,
            geofence_name: None,
            peer: None,
            distance_m: None,
            reason: None,
        }
    }

    #[test]
    fn bounded_deduplicated_and_in_time_order() {
        let log = EventLog::new(2);
        assert!(log.add(&event("g", 20, "sos")));
        assert!(
            !log.add(&event("g", 20, "sos")),
            "a retry is the same event"
        );
        assert!(log.add(&event("g", 10, "sos")));
        assert!(log.add(&event("g", 30, "sos")));
        let all = log.query(
            "g",
            &EventQuery {
                limit: 10,
                ..EventQuery::default()
            },
        );
        let times: Vec<i64> = all.iter().map(|e| e.ts).collect();
        assert_eq!(times, [20, 30], "the oldest went first");
        let q = EventQuery {
            from: Some(25),
            limit: 10,
            ..EventQuery::default()
        };
        assert_eq!(log.query("g", &q).len(), 1);
        assert_ne!(event("g", 20, "sos").id, event("h", 20, "sos").id);
    }

    #[test]
    fn the_disk_keeps_the_same_bound_and_dedupes_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::with_dir(2, dir.path(), 365 * 86_400_000);
        let now = now_ms();
        for ts in [now - 3000, now - 2000, now - 1000] {
            assert!(log.add(&event("g", ts, "sos")));
        }
        drop(log);
        let log = EventLog::with_dir(2, dir.path(), 365 * 86_400_000);
        assert!(
            !log.add(&event("g", now - 1000, "sos")),
            "stored before the reopening"
        );
        let q = EventQuery {
            limit: 10,
            ..EventQuery::default()
        };
        let times: Vec<i64> = log.query("g", &q).iter().map(|e| e.ts).collect();
        assert_eq!(times, [now - 2000, now - 1000]);
    }
}
