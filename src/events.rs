//! The event log: the recent events of each group, in memory, for
//! `GET /v1/groups/{group}/events`.
//!
//! Each group keeps at most `--events-per-group` events (the oldest go first) and at most
//! [`MAX_EVENT_GROUPS`] groups are kept, so no client can grow the log without bound. An event
//! already held (same id: a phone retrying its report) is not added twice; the caller fans out
//! only what [`EventLog::add`] reports as new.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::model::{DeviceId, Event, GroupId};

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
}

impl EventLog {
    /// An empty log keeping `per_group` events per group.
    pub(crate) fn new(per_group: usize) -> Self {
        EventLog {
            groups: Mutex::new(HashMap::new()),
            per_group: per_group.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<GroupId, VecDeque<Event>>> {
        // Only collection operations run under the lock; a poisoned log is still consistent.
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `event` unless one with its id is held; returns whether it is new. Kept in fix-time
    /// order.
    pub(crate) fn add(&self, event: &Event) -> bool {
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
}
