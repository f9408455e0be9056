//! Webhooks: the bounds of endpoints and deliveries, and which targets are allowed.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Settings of webhook endpoints and their deliveries (`docs/webhooks.md`).
#[derive(Clone, Debug, Args)]
pub struct WebhookConfig {
    /// Allow webhook targets on loopback, private, link-local or unspecified addresses (checked
    /// when an endpoint is created and again, after DNS resolution, at every delivery). Default
    /// off: such targets are refused, so a group admin cannot make the server reach into the
    /// network it runs in.
    #[arg(long, env = "BEACON_WEBHOOK_ALLOW_PRIVATE", default_value_t = false)]
    pub webhook_allow_private: bool,

    /// Most webhook endpoints one group may have. Default 10. Range 1-1000.
    #[arg(long, env = "BEACON_WEBHOOKS_PER_GROUP", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub webhooks_per_group: u32,

    /// Deliveries waiting (first attempt or retry) per endpoint before new events for it are
    /// dropped and counted in `beacon_webhook_deliveries_total{outcome="queue_full"}`. Default
    /// 1000. Range 1-100000.
    #[arg(long, env = "BEACON_WEBHOOK_QUEUE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub webhook_queue: u32,

    /// Longest time one delivery attempt may take, in ms: resolving the target, connecting,
    /// sending and reading the answer. A slower attempt counts as a timeout and is retried.
    /// Default 10000. Range 100-60000.
    #[arg(long, env = "BEACON_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub webhook_timeout_ms: u64,

    /// Unit of the retry schedule, in ms. Retries come 5, 30, 300, 1800, 7200, 18000, 36000
    /// and 36000 units after the previous attempt (nine attempts over about 27.6 hours with the
    /// default). Default 1000 (one second). Range 1-60000; small values are for tests.
    #[arg(long, env = "BEACON_WEBHOOK_RETRY_UNIT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub webhook_retry_unit_ms: u64,

    /// File holding the key that seals webhook secrets at rest: the base64 of 32 random bytes
    /// (`openssl rand -base64 32 > FILE`). With it, secrets are stored sealed
    /// (ChaCha20-Poly1305) in `DIR/webhooks.json` and in Redis, so a copy of either alone
    /// cannot forge signatures; every instance must be given the same key, and the server
    /// refuses to start when stored secrets were sealed with another key or none is given.
    /// Default none: secrets are stored as they are (`docs/webhooks.md`, "Secrets at rest").
    #[arg(long, env = "BEACON_WEBHOOK_SECRET_KEY_FILE")]
    pub webhook_secret_key_file: Option<PathBuf>,
}

impl WebhookConfig {
    /// The bound on one attempt.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms)
    }

    /// The unit of the retry schedule.
    pub fn retry_unit(&self) -> Duration {
        Duration::from_millis(self.webhook_retry_unit_ms)
    }
}
