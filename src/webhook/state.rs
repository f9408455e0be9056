//! What the webhooks hold: endpoints, the deliveries waiting for an attempt, and the record of
//! recent attempts. Plain data, shared by the file, Redis and the dispatcher.

use serde::{Deserialize, Serialize};

/// Attempts kept per endpoint for `GET .../webhooks/{id}/deliveries` (the oldest go first),
/// in memory and, with Redis, in the endpoint's shared list.
pub(crate) const DELIVERIES_KEPT: usize = 100;

/// One endpoint, as kept on disk and in Redis. Its `secret` leaves the server only in the
/// answer that created it (and in the signatures).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Endpoint {
    /// `wh_` + 128 random bits in hex.
    pub(crate) id: String,
    /// The group whose events it receives.
    pub(crate) group: String,
    /// Where events are POSTed.
    pub(crate) url: String,
    /// Event patterns (`alarm`, `geofence.*`, `*`).
    pub(crate) events: Vec<String>,
    /// `whsec_` + base64 of the signing key.
    pub(crate) secret: String,
    /// Set when the receiver answered 410: nothing more is sent to it.
    #[serde(default)]
    pub(crate) disabled: bool,
    /// When it was created, ms since the epoch.
    pub(crate) created_ms: i64,
}

/// One event waiting to be delivered to one endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Pending {
    /// The `webhook-id`: derived from the event and the endpoint.
    pub(crate) webhook_id: String,
    /// The endpoint's id.
    pub(crate) endpoint: String,
    /// The event's id.
    pub(crate) event: String,
    /// The event's kind.
    pub(crate) kind: String,
    /// The exact body sent on every attempt.
    pub(crate) body: String,
    /// Attempts made so far.
    pub(crate) attempts: u32,
    /// When the next attempt is due, ms since the epoch.
    pub(crate) next_ms: i64,
    /// Whether the event was recorded on this instance (not received from another one): with
    /// Redis unreachable, only such deliveries go ahead unclaimed.
    pub(crate) local: bool,
    /// This instance's claim token for the delivery (with Redis).
    pub(crate) claim: String,
    /// Whether the claim is held.
    #[serde(default)]
    pub(crate) claimed: bool,
}

/// One attempt, as `GET .../deliveries` shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct AttemptRecord {
    /// The `webhook-id` sent.
    pub(crate) webhook_id: String,
    /// The event's id.
    pub(crate) event: String,
    /// The event's kind.
    pub(crate) kind: String,
    /// 1 for the first attempt of the delivery.
    pub(crate) attempt: u32,
    /// When the attempt started (ISO-8601).
    pub(crate) at: String,
    /// `delivered`, `failed`, `timeout`, `error`, `refused`, `gone`.
    pub(crate) outcome: &'static str,
    /// The receiver's status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<u16>,
    /// How long the attempt took.
    pub(crate) duration_ms: u64,
    /// Why it failed, when it did without an answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// The start of the receiver's answer (bounded), when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response: Option<String>,
    /// When the next attempt is due (ISO-8601), when there will be one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_attempt_at: Option<String>,
}
