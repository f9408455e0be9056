//! The hub's side of multi-instance operation: presence of devices whose socket is on another
//! instance, and what local news a merge from elsewhere produces.
//!
//! The ticker runs on paused time: nothing here waits for a real clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use beacon::Config;
use beacon::hub::{Hub, HubObserver, Outlet};
use beacon::metrics::Metrics;
use beacon::model::{DeviceId, Fix, GroupId, Position, now_ms};
use beacon::outbox::Outbox;
use beacon::protocol::{Codec, Frame};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const STALE_MS: i64 = 2_000;

fn hub() -> Arc<Hub> {
    let mut config = Config::default();
    config.hub.stale_secs = (STALE_MS / 1000) as u64;
    config.hub.tick_ms = 20;
    Arc::new(Hub::new(config.hub, Arc::new(Metrics::new())))
}

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

fn group() -> GroupId {
    GroupId::parse("g").unwrap()
}

fn position(device: &str, ts: i64, rts: i64, online: bool) -> Position {
    Position {
        device: id(device),
        fix: Fix::new(1.0, 2.0, ts),
        rts,
        online,
    }
}

fn online(hub: &Hub, device: &str) -> bool {
    hub.positions("g")
        .iter()
        .find(|p| p.device.as_str() == device)
        .is_some_and(|p| p.online)
}

#[test]
fn remote_presence_lasts_a_stale_window_from_the_last_heartbeat() {
    let hub = hub();
    let t0 = 1_763_780_000_000;
    hub.merge_remote(&group(), &[position("far", t0, t0, true)], &[]);
    hub.remote_seen(&group(), &[(id("far"), t0 + 5_000)]);
    hub.sweep(t0 + 5_000 + STALE_MS - 1);
    assert!(online(&hub, "far"), "vouched for recently");
    hub.sweep(t0 + 5_000 + STALE_MS + 1);
    assert!(!online(&hub, "far"), "stale once nobody vouches for it");

    // A later heartbeat from the instance holding its socket brings it back.
    hub.remote_seen(&group(), &[(id("far"), t0 + 9_000)]);
    assert!(online(&hub, "far"));
    // Without a held position a heartbeat has nothing to revive.
    hub.remote_seen(&group(), &[(id("unknown"), t0)]);
    assert!(
        hub.positions("g")
            .iter()
            .all(|p| p.device.as_str() != "unknown")
    );
}

#[test]
fn retention_counts_from_the_last_heartbeat_too() {
    let mut config = Config::default();
    config.hub.retention_secs = 10;
    let hub = Hub::new(config.hub, Arc::new(Metrics::new()));
    let t0 = 1_763_780_000_000;
    hub.merge_remote(&group(), &[position("far", t0, t0, true)], &[]);
    hub.remote_seen(&group(), &[(id("far"), t0 + 8_000)]);
    hub.sweep(t0 + 15_000);
    assert_eq!(hub.positions("g").len(), 1, "seen 7 s ago: kept");
    hub.sweep(t0 + 19_000);
    assert!(hub.positions("g").is_empty(), "past retention: forgotten");
}

#[test]
fn a_socket_in_one_group_keeps_a_device_online_there_only() {
    let mut config = Config::default();
    config.hub.stale_secs = 2;
    config.hub.retention_secs = 10;
    let hub = Hub::new(config.hub, Arc::new(Metrics::new()));
    let (a, b) = (GroupId::parse("a").unwrap(), GroupId::parse("b").unwrap());
    let t0 = 1_763_780_000_000;
    // An old report in `b` (say over HTTP), then a socket in `a` alone.
    hub.publish(
        &id("car"),
        std::slice::from_ref(&b),
        &Fix::new(1.0, 2.0, t0),
        t0,
    );
    hub.device_connected(&id("car"), std::slice::from_ref(&a));
    hub.publish(
        &id("car"),
        std::slice::from_ref(&a),
        &Fix::new(1.0, 2.0, t0),
        t0,
    );
    let state = |group: &str| {
        hub.positions(group)
            .iter()
            .find(|p| p.device.as_str() == "car")
            .map(|p| p.online)
    };
    hub.sweep(t0 + 3_000);
    assert_eq!(state("a"), Some(true), "its socket is in a");
    assert_eq!(state("b"), Some(false), "stale in b: no socket there");
    hub.sweep(t0 + 11_000);
    assert_eq!(
        state("a"),
        Some(true),
        "a connected device is never forgotten"
    );
    assert_eq!(state("b"), None, "past retention in b");
    // Closing the socket takes it offline in a; b is untouched.
    hub.device_disconnected(&id("car"), std::slice::from_ref(&a));
    assert_eq!(state("a"), Some(false));
    assert!(!hub.has_socket("car"));
}

/// Records what the hub reports as local news.
#[derive(Debug, Default)]
struct Recorder {
    updates: Mutex<Vec<Position>>,
}

impl HubObserver for Recorder {
    fn flushed(&self, _group: &GroupId, updates: &[Position], _offline: &[DeviceId]) {
        self.updates.lock().unwrap().extend_from_slice(updates);
    }
}

/// Subscribes a JSON outlet to `g` and runs the ticker; returns the outlet's queue.
fn watch(hub: &Arc<Hub>, stop: &CancellationToken) -> Arc<Outbox> {
    let outbox = Arc::new(Outbox::new(64));
    let outlet = Outlet {
        id: hub.next_outlet_id(),
        codec: Codec::Json,
        outbox: outbox.clone(),
    };
    hub.subscribe(&group(), &outlet);
    tokio::spawn(hub.clone().run_ticker(stop.clone()));
    outbox
}

async fn next_batch(rx: &mut Arc<Outbox>) -> Value {
    tokio::time::timeout(Duration::from_secs(10), rx.ready())
        .await
        .expect("a batch in time");
    let frame = rx.pop().expect("a queued frame");
    match frame {
        Frame::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        Frame::Binary(_) => panic!("binary frame on a JSON outlet"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_remote_record_going_offline_is_listed_offline() {
    let hub = hub();
    let stop = CancellationToken::new();
    let mut rx = watch(&hub, &stop);
    let now = now_ms();
    hub.merge_remote(&group(), &[position("far", now, now, true)], &[]);
    assert_eq!(next_batch(&mut rx).await["updates"][0]["online"], true);

    // The same fix, now offline (a republished or loaded record).
    hub.merge_remote(&group(), &[position("far", now, now, false)], &[]);
    let batch = next_batch(&mut rx).await;
    assert_eq!(batch["updates"][0]["online"], false);
    assert_eq!(batch["offline"], serde_json::json!(["far"]));
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_device_with_a_socket_here_stays_online_and_that_is_local_news() {
    let hub = hub();
    let recorder = Arc::new(Recorder::default());
    hub.add_observer(recorder.clone());
    let stop = CancellationToken::new();
    let mut rx = watch(&hub, &stop);
    hub.device_connected(&id("here"), &[group()]);
    let now = now_ms();

    // Another instance says it went offline; its socket is here, so it is online.
    hub.merge_remote(&group(), &[position("here", now, now, false)], &[]);
    let batch = next_batch(&mut rx).await;
    assert_eq!(batch["updates"][0]["online"], true);
    assert_eq!(batch["offline"], serde_json::json!([]));
    let reported = recorder.updates.lock().unwrap().clone();
    assert_eq!(reported.len(), 1, "reported for the relay to publish");
    assert!(reported[0].online);

    // A plain remote update is not local news.
    hub.merge_remote(&group(), &[position("far", now, now, true)], &[]);
    next_batch(&mut rx).await;
    assert_eq!(recorder.updates.lock().unwrap().len(), 1);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn remote_changes_go_out_at_once_and_local_ones_wait_for_the_tick() {
    let mut config = Config::default();
    config.hub.tick_ms = 10_000;
    let hub = Arc::new(Hub::new(config.hub, Arc::new(Metrics::new())));
    let stop = CancellationToken::new();
    let mut rx = watch(&hub, &stop);
    let here = id("here");
    let now = now_ms();
    // The first local fix of a quiet group goes out at once; the next one waits for the tick.
    hub.publish(
        &here,
        &[group()],
        &position("here", now, now, true).fix,
        now,
    );
    assert_eq!(next_batch(&mut rx).await["updates"][0]["id"], "here");
    hub.publish(
        &here,
        &[group()],
        &position("here", now + 1, now, true).fix,
        now,
    );

    // A remote update does not wait ten seconds for the tick, and does not take the pending
    // local change with it.
    let merged = Instant::now();
    hub.merge_remote(&group(), &[position("far", now, now, true)], &[]);
    let batch = next_batch(&mut rx).await;
    assert_eq!(Instant::now(), merged, "no wait at all");
    let ids: Vec<&str> = batch["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["far"]);
    stop.cancel();
}
