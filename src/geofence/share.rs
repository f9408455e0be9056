//! Several instances as one (with `--redis-url`): definitions and state go through Redis.
//!
//! Every change made here (a fence defined, replaced or deleted, a proximity rule set or
//! removed, a device's state against a fence, a pair becoming near or separating, and in
//! groups with a proximity rule each judged fix's place) is one [`Shared`] message. It is written to a hash, so an instance that starts or reconnects loads
//! it, and published on the channel `<prefix>:geofences`, so the running instances apply it at
//! once; both in one transaction, so the hash and the channel see changes in one order.
//! Definitions live in the hash `<prefix>:geofences`, states in `<prefix>:geofence-state`.
//!
//! Applying is idempotent (an instance hears its own messages too) and a device's state is
//! taken only when it is newer (by fix time) than the one held, so instances converge whichever
//! of them a device's fixes reach. Event ids are derived from the event, so two instances that
//! judge the same change make the same event, kept and sent once by the event bus.
//!
//! Publishing goes through a bounded queue ([`QUEUE`]); a full queue drops the message
//! (logged, counted in `beacon_geofence_share_dropped_total`) and the change stays local.

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::fence::Member;
use super::proximity::ProximityRule;

/// Messages waiting to be written to Redis before new ones are dropped.
pub(crate) const QUEUE: usize = 4096;

/// Largest message read from Redis, in bytes (a fence of `--max-geofence-vertices` positions
/// fits in far less); larger ones are ignored.
pub(crate) const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The suffix of the channel and of the definitions hash: `<prefix>:geofences`.
pub(crate) const DEFINITIONS_SUFFIX: &str = "geofences";

/// The suffix of the state hash: `<prefix>:geofence-state`.
pub(crate) const STATE_SUFFIX: &str = "geofence-state";

/// One change, as it travels between instances.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Shared {
    /// A fence defined or replaced: its stored definition.
    Fence {
        group: String,
        id: String,
        def: Value,
        /// The instance's stamp of when the fence was made (0 from older instances).
        #[serde(default)]
        created: i64,
    },
    /// A fence deleted at `at` (ms): the time its `reason: "deleted"` exits carry.
    Delete { group: String, id: String, at: i64 },
    /// A proximity rule set, or removed (`None`).
    Proximity {
        group: String,
        rule: Option<ProximityRule>,
    },
    /// A device's state against a fence.
    Member {
        group: String,
        fence: String,
        device: String,
        state: Member,
    },
    /// A device's state against a deleted fence, removed from the state hash.
    Forget {
        group: String,
        fence: String,
        device: String,
    },
    /// Where a device of a group with a proximity rule was, at fix time `ts`: other
    /// instances measure their devices against it. Published only, not kept in a hash.
    Place {
        group: String,
        device: String,
        lat: f64,
        lon: f64,
        ts: i64,
    },
    /// A device judged at `stamp`, after its group's newest fence was made: the fences it has
    /// no state against and made before are ones it is far outside of.
    Seen {
        group: String,
        device: String,
        stamp: i64,
    },
    /// A device's stamp dropped: its group's last fence was deleted.
    Unseen { group: String, device: String },
    /// A pair became near (`true`) or separated.
    Pair {
        group: String,
        a: String,
        b: String,
        near: bool,
    },
}

/// What a message does to the hashes.
#[derive(Debug, PartialEq)]
pub(crate) enum HashOp {
    /// `HSET hash field message`.
    Set { state: bool, field: String },
    /// `HDEL hash field`.
    Del { state: bool, field: String },
    /// Nothing kept: published only.
    None,
}

impl Shared {
    /// The hash entry this message sets or deletes (`state`: in the state hash).
    pub(crate) fn hash_op(&self) -> HashOp {
        match self {
            Shared::Place { .. } => HashOp::None,
            Shared::Fence { group, id, .. } => HashOp::Set {
                state: false,
                field: format!("f/{group}/{id}"),
            },
            Shared::Delete { group, id, .. } => HashOp::Del {
                state: false,
                field: format!("f/{group}/{id}"),
            },
            Shared::Proximity { group, rule } => {
                let field = format!("p/{group}");
                if rule.is_some() {
                    HashOp::Set {
                        state: false,
                        field,
                    }
                } else {
                    HashOp::Del {
                        state: false,
                        field,
                    }
                }
            }
            Shared::Member {
                group,
                fence,
                device,
                ..
            } => HashOp::Set {
                state: true,
                field: format!("m/{group}/{fence}/{device}"),
            },
            Shared::Forget {
                group,
                fence,
                device,
            } => HashOp::Del {
                state: true,
                field: format!("m/{group}/{fence}/{device}"),
            },
            Shared::Seen { group, device, .. } => HashOp::Set {
                state: true,
                field: format!("s/{group}/{device}"),
            },
            Shared::Unseen { group, device } => HashOp::Del {
                state: true,
                field: format!("s/{group}/{device}"),
            },
            Shared::Pair { group, a, b, near } => {
                let (a, b) = if a <= b { (a, b) } else { (b, a) };
                let field = format!("n/{group}/{a}/{b}");
                if *near {
                    HashOp::Set { state: true, field }
                } else {
                    HashOp::Del { state: true, field }
                }
            }
        }
    }
}

/// Longest wait between two attempts to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where messages go and come from.
#[derive(Debug)]
pub(crate) struct Keys {
    /// `<prefix>:geofences`: the channel and the definitions hash.
    pub(crate) definitions: String,
    /// `<prefix>:geofence-state`.
    pub(crate) state: String,
}

impl Keys {
    /// The keys under `--redis-prefix`.
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            definitions: format!("{prefix}:{DEFINITIONS_SUFFIX}"),
            state: format!("{prefix}:{STATE_SUFFIX}"),
        }
    }
}

/// Writes `outgoing` to Redis and hands every message heard (the stored ones at each
/// (re)connection first: definitions, then states) to `apply`, until `shutdown`, reconnecting
/// with backoff. Failures are logged here.
pub(crate) async fn run(
    url: String,
    keys: Keys,
    mut outgoing: mpsc::Receiver<Shared>,
    apply: impl Fn(Shared),
    shutdown: CancellationToken,
) {
    let client = match redis::Client::open(url.as_str()) {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %e, "geofences: unusable Redis URL; rules stay on this instance");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = session(&client, &keys, &mut outgoing, &apply) => {
                if let Err(e) = result {
                    warn!(error = %e, "geofences: Redis connection lost; retrying");
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

/// Decodes one message; `None` (logged) when it is too large or unreadable.
fn decode(payload: &[u8]) -> Option<Shared> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    match serde_json::from_slice(payload) {
        Ok(message) => Some(message),
        Err(e) => {
            debug!(error = %e, "unreadable geofence message ignored");
            None
        }
    }
}

/// One connection's life: subscribe, load the hashes, then publish and receive until it fails.
async fn session(
    client: &redis::Client,
    keys: &Keys,
    outgoing: &mut mpsc::Receiver<Shared>,
    apply: &impl Fn(Shared),
) -> redis::RedisResult<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&keys.definitions).await?;
    let mut publisher = client.get_multiplexed_async_connection().await?;
    // Subscribed first, then loaded: a change made meanwhile arrives on the channel too.
    for hash in [&keys.definitions, &keys.state] {
        let stored: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(hash)
            .query_async(&mut publisher)
            .await?;
        for message in stored.iter().filter_map(|p| decode(p)) {
            apply(message);
        }
    }
    let mut messages = pubsub.on_message();
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => {
                    if let Some(message) = decode(message.get_payload_bytes()) {
                        apply(message);
                    }
                }
                None => return Ok(()),
            },
            next = outgoing.recv() => match next {
                Some(message) => {
                    // Serializing strings, numbers and JSON values cannot fail.
                    let json = serde_json::to_vec(&message).unwrap_or_default();
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    match message.hash_op() {
                        HashOp::Set { state, field } => {
                            let hash = if state { &keys.state } else { &keys.definitions };
                            pipe.hset(hash, field, &json).ignore();
                        }
                        HashOp::Del { state, field } => {
                            let hash = if state { &keys.state } else { &keys.definitions };
                            pipe.hdel(hash, field).ignore();
                        }
                        HashOp::None => {}
                    }
                    pipe.publish(&keys.definitions, &json).ignore();
                    pipe.query_async::<()>(&mut publisher).await?;
                }
                None => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_name_their_hash_entry() {
        let pair = Shared::Pair {
            group: "g".into(),
            a: "z".into(),
            b: "a".into(),
            near: true,
        };
        let json = serde_json::to_string(&pair).unwrap();
        assert!(json.contains(r#""op":"pair""#), "{json}");
        assert_eq!(serde_json::from_str::<Shared>(&json).unwrap(), pair);
        assert_eq!(
            pair.hash_op(),
            HashOp::Set {
                state: true,
                field: "n/g/a/z".into()
            },
            "one entry per pair, whichever way round"
        );
        let gone = Shared::Proximity {
            group: "g".into(),
            rule: None,
        };
        assert_eq!(
            gone.hash_op(),
            HashOp::Del {
                state: false,
                field: "p/g".into()
            }
        );
    }
}
