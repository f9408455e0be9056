//! Events to every subscriber, on every instance: [`EventBus::record`] keeps a new event in the
//! log, sends it to this instance's subscribers of its group, and (with `--redis-url`)
//! publishes it on `<prefix>:events` ([`EVENTS_CHANNEL_SUFFIX`]); [`EventBus::run`] receives the other instances' events
//! there and does the same for them. An event already in the log (same id: its own echo, or a
//! retry reported to two instances) is dropped, so each subscriber gets each event once.
//!
//! Events are rare (an alarm, a region change), so one channel for all groups costs little and
//! needs no subscription bookkeeping. Publishing goes through a bounded queue
//! ([`EVENT_QUEUE`]); when Redis is down events still reach local subscribers and the log.
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
use crate::protocol::{Codec, EventRecord, ServerMessage};

/// The suffix of the Redis channel events travel on between instances: the channel is
/// `<--redis-prefix>:events`, so deployments sharing one Redis never see each other's events.
pub(crate) const EVENTS_CHANNEL_SUFFIX: &str = "events";

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
    /// `<--redis-prefix>:events`.
    channel: String,
    outgoing: Option<mpsc::Sender<Vec<u8>>>,
    incoming: std::sync::Mutex<Option<mpsc::Receiver<Vec<u8>>>>,
}

impl EventBus {
    /// A bus over `log`; `redis` says whether events are published (see [`EventBus::run`]) and
    /// `prefix` is the deployment's `--redis-prefix`.
    pub(crate) fn new(log: EventLog, hub: Arc<Hub>, redis: bool, prefix: &str) -> Self {
        let (outgoing, incoming) = if redis {
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        EventBus {
            log,
            hub,
            channel: format!("{prefix}:{EVENTS_CHANNEL_SUFFIX}"),
            outgoing,
            incoming: std::sync::Mutex::new(incoming),
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
        if let Some(tx) = &self.outgoing {
            // Serializing a record of strings and numbers cannot fail.
            if let Ok(bytes) = serde_json::to_vec(&EventRecord::from(event))
                && tx.try_send(bytes).is_err()
            {
                warn!(id = %event.id, "event queue to Redis full; event not published");
            }
        }
        true
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
        if let Some(event) = event_of(&record) {
            self.deliver(&event);
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
        outgoing: &mut mpsc::Receiver<Vec<u8>>,
    ) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&self.channel).await?;
        let mut publisher = client.get_multiplexed_async_connection().await?;
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => self.received(message.get_payload_bytes()),
                    None => return Ok(()),
                },
                bytes = outgoing.recv() => match bytes {
                    Some(bytes) => {
                        redis::cmd("PUBLISH")
                            .arg(&self.channel)
                            .arg(bytes)
                            .query_async::<i64>(&mut publisher)
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
    })
}
