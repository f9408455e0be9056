//! Events to every subscriber, on every instance: [`EventBus::record`] keeps a new event in the
//! log, sends it to this instance's subscribers of its group, and (with `--redis-url`)
//! publishes it on `<prefix>:events` ([`EVENTS_CHANNEL_SUFFIX`]); [`EventBus::run`] receives the other instances' events
//! there and does the same for them. An event already in the log (same id: its own echo, or a
//! retry reported to two instances) is dropped, so each subscriber gets each event once.
//!
//! Device profiles travel the same way: [`EventBus::profile_changed`] announces a new name to
//! this instance's subscribers and, with Redis, writes the profile to the hash
//! `<prefix>:profiles` and publishes it on `<prefix>:profiles` in one transaction; every
//! instance (the sender included) applies what arrives on that channel, in the order Redis
//! delivers it, so all converge on the last change, and an instance loads the hash whenever it
//! (re)connects.
//!
//! Events are rare (an alarm, a region change), so one channel for all groups costs little and
//! needs no subscription bookkeeping. Publishing goes through a bounded queue
//! ([`EVENT_QUEUE`]); when Redis is down events still reach local subscribers and the log.
//!
//! Every new event, recorded here or received from another instance, is also handed to the
//! [`EventSink`] the wiring sets (the webhooks), which must not wait.
//!
//! Errors: Redis failures are logged here, where they are handled, and retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::events::{EventLog, event_kind};
use crate::hub::Hub;
use crate::model::{DeviceId, Event, GroupId};
use crate::outbox::Prepared;
use crate::profiles::{MAX_PROFILES, Profile, Profiles};
use crate::protocol::{Codec, EventRecord, ServerMessage};

/// The suffix of the Redis channel events travel on between instances: the channel is
/// `<--redis-prefix>:events`, so deployments sharing one Redis never see each other's events.
pub(crate) const EVENTS_CHANNEL_SUFFIX: &str = "events";

/// The suffix of the Redis channel, and of the hash, that carry device profiles.
pub(crate) const PROFILES_SUFFIX: &str = "profiles";

/// Largest profile message read from Redis, in bytes; larger ones are ignored.
const MAX_PROFILE_BYTES: usize = 1024;

/// What waits to be written to Redis.
#[derive(Debug)]
enum Outgoing {
    /// An event record (JSON) for the events channel.
    Event(Vec<u8>),
    /// A device's profile: stored in the hash and published.
    Profile { device: String, json: Vec<u8> },
}

/// A profile as it travels between instances.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ProfileMessage {
    device: String,
    profile: Profile,
}

/// Events waiting to be published to Redis before new ones are not published (they still
/// reach this instance's subscribers).
pub(crate) const EVENT_QUEUE: usize = 1024;

/// Longest wait between two attempts to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Largest event message read from Redis, in bytes; larger ones are ignored.
const MAX_EVENT_BYTES: usize = 4096;

/// The event log plus its fan-out, locally and across instances.
#[derive(Debug)]
pub(crate) struct EventBus {
    log: EventLog,
    hub: Arc<Hub>,
    profiles: Arc<Profiles>,
    /// `<--redis-prefix>:events`.
    channel: String,
    /// `<--redis-prefix>:profiles`: the channel and the hash of profiles.
    profiles_key: String,
    outgoing: Option<mpsc::Sender<Outgoing>>,
    incoming: std::sync::Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// Where every new event goes besides the log and the subscribers (webhooks), once set.
    sink: std::sync::OnceLock<EventSink>,
}

/// A receiver of every new event (recorded here: `true`; received from another instance:
/// `false`), set once by the wiring. It must not wait: it runs on the event's path.
pub(crate) struct EventSink(pub(crate) Box<SinkFn>);

/// What an [`EventSink`] calls: the event, and whether it was recorded here.
pub(crate) type SinkFn = dyn Fn(&Event, bool) + Send + Sync;

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

impl EventBus {
    /// A bus over `log`; `redis` says whether events are published (see [`EventBus::run`]) and
    /// `prefix` is the deployment's `--redis-prefix`.
    pub(crate) fn new(
        log: EventLog,
        hub: Arc<Hub>,
        profiles: Arc<Profiles>,
        redis: bool,
        prefix: &str,
    ) -> Self {
        let (outgoing, incoming) = if redis {
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        EventBus {
            log,
            hub,
            profiles,
            channel: format!("{prefix}:{EVENTS_CHANNEL_SUFFIX}"),
            profiles_key: format!("{prefix}:{PROFILES_SUFFIX}"),
            outgoing,
            incoming: std::sync::Mutex::new(incoming),
            sink: std::sync::OnceLock::new(),
        }
    }

    /// Sends every new event from now on to `sink` too (once; a second sink is ignored).
    pub(crate) fn set_sink(&self, sink: EventSink) {
        let _ = self.sink.set(sink);
    }

    /// Hands a new event to the sink, when one is set.
    fn forward(&self, event: &Event, local: bool) {
        if let Some(sink) = self.sink.get() {
            (sink.0)(event, local);
        }
    }

    /// The log, for queries.
    pub(crate) fn log(&self) -> &EventLog {
        &self.log
    }

    /// Records an event that happened here: kept, sent to local subscribers, published.
    /// Returns whether it was new.
    pub(crate) fn record(&self, event: &Event) -> bool {
        if !self.deliver(event) {
            return false;
        }
        self.forward(event, true);
        if let Some(tx) = &self.outgoing {
            // Serializing a record of strings and numbers cannot fail.
            if let Ok(bytes) = serde_json::to_vec(&EventRecord::from(event))
                && tx.try_send(Outgoing::Event(bytes)).is_err()
            {
                warn!(id = %event.id, "event queue to Redis full; event not published");
            }
        }
        true
    }

    /// `device`'s profile changed here (already kept in the profiles): its name goes to this
    /// instance's subscribers, and with Redis the profile goes to the other instances.
    pub(crate) fn profile_changed(&self, device: &DeviceId, profile: &Profile) {
        if let Some(name) = &profile.name {
            self.hub.announce_name_everywhere(device.as_str(), name);
        }
        if let Some(tx) = &self.outgoing {
            let message = ProfileMessage {
                device: device.as_str().to_owned(),
                profile: profile.clone(),
            };
            // Serializing strings cannot fail.
            if let Ok(json) = serde_json::to_vec(&message)
                && tx
                    .try_send(Outgoing::Profile {
                        device: message.device,
                        json,
                    })
                    .is_err()
            {
                warn!(device = %device, "queue to Redis full; profile change not shared");
            }
        }
    }

    /// A profile from Redis (another instance's change, our own echo, or the stored hash).
    fn profile_received(&self, payload: &[u8]) {
        if payload.len() > MAX_PROFILE_BYTES {
            return;
        }
        let Ok(message) = serde_json::from_slice::<ProfileMessage>(payload) else {
            debug!("unreadable profile message ignored");
            return;
        };
        let Ok(device) = DeviceId::parse(&message.device) else {
            return;
        };
        let name = message.profile.name.clone();
        if self.profiles.replace(&device, message.profile)
            && let Some(name) = name
        {
            self.hub.announce_name_everywhere(device.as_str(), &name);
        }
    }

    /// Keeps `event` and sends it to this instance's subscribers, unless already held.
    fn deliver(&self, event: &Event) -> bool {
        if !self.log.add(event) {
            return false;
        }
        let records = [EventRecord::from(event)];
        let message = ServerMessage::Event {
            group: event.group.as_str(),
            events: &records,
        };
        let in_use = self.hub.codecs_in_use(event.group.as_str());
        let frames = Codec::ALL
            .map(|codec| (in_use[codec.index()] > 0).then(|| Prepared::new(message.encode(codec))));
        self.hub.send_to_group(event.group.as_str(), &frames);
        true
    }

    /// An event another instance published.
    fn received(&self, payload: &[u8]) {
        if payload.len() > MAX_EVENT_BYTES {
            return;
        }
        let Ok(record) = serde_json::from_slice::<EventRecord<'_>>(payload) else {
            debug!("unreadable event message ignored");
            return;
        };
        if let Some(event) = event_of(&record)
            && self.deliver(&event)
        {
            self.forward(&event, false);
        }
    }

    /// Publishes this instance's events and receives the others' on the events channel until
    /// `shutdown`, reconnecting with backoff. Returns at once without `--redis-url`.
    pub(crate) async fn run(self: Arc<Self>, url: String, shutdown: CancellationToken) {
        let taken = self.incoming.lock().map(|mut rx| rx.take()).ok().flatten();
        let Some(mut outgoing) = taken else {
            return;
        };
        let client = match redis::Client::open(url.as_str()) {
            Ok(client) => client,
            Err(e) => {
                warn!(error = %e, "events: unusable Redis URL; events stay on this instance");
                return;
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let session = self.session(&client, &mut outgoing);
            tokio::select! {
                () = shutdown.cancelled() => return,
                result = session => {
                    if let Err(e) = result {
                        warn!(error = %e, "events: Redis connection lost; retrying");
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: subscribe, then publish and receive until it fails.
    async fn session(
        &self,
        client: &redis::Client,
        outgoing: &mut mpsc::Receiver<Outgoing>,
    ) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&self.channel).await?;
        pubsub.subscribe(&self.profiles_key).await?;
        let mut publisher = client.get_multiplexed_async_connection().await?;
        // Subscribed first, then loaded: a change made meanwhile arrives on the channel too.
        let stored: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(&self.profiles_key)
            .query_async(&mut publisher)
            .await?;
        for payload in stored.iter().take(MAX_PROFILES) {
            self.profile_received(payload);
        }
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) if message.get_channel_name() == self.profiles_key => {
                        self.profile_received(message.get_payload_bytes());
                    }
                    Some(message) => self.received(message.get_payload_bytes()),
                    None => return Ok(()),
                },
                next = outgoing.recv() => match next {
                    Some(Outgoing::Event(bytes)) => {
                        redis::cmd("PUBLISH")
                            .arg(&self.channel)
                            .arg(bytes)
                            .query_async::<i64>(&mut publisher)
                            .await?;
                    }
                    Some(Outgoing::Profile { device, json }) => {
                        // One transaction: the hash and the channel see changes in one order.
                        redis::pipe()
                            .atomic()
                            .hset(&self.profiles_key, device, &json)
                            .ignore()
                            .publish(&self.profiles_key, &json)
                            .ignore()
                            .query_async::<()>(&mut publisher)
                            .await?;
                    }
                    None => return Ok(()),
                },
            }
        }
    }
}

/// The domain event of a record read from another instance, when it is well-formed.
fn event_of(record: &EventRecord<'_>) -> Option<Event> {
    let kind = event_kind(&record.kind)?;
    Some(Event {
        id: record.id.clone().into_owned(),
        kind,
        device: DeviceId::parse(&record.device).ok()?,
        group: GroupId::parse(&record.group).ok()?,
        ts: record.ts,
        lat: record.lat,
        lon: record.lon,
        alarm: record.alarm.as_ref().map(|a| a.clone().into_owned()),
        region: record.region.as_ref().map(|r| r.clone().into_owned()),
        geofence: record.geofence.as_ref().map(|g| g.clone().into_owned()),
        geofence_name: record
            .geofence_name
            .as_ref()
            .map(|g| g.clone().into_owned()),
        peer: record.peer.as_ref().map(|p| p.clone().into_owned()),
        distance_m: record.distance_m,
        reason: record.reason.as_ref().map(|r| r.clone().into_owned()),
    })
}
