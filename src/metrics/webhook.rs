//! Metrics of webhook deliveries (`beacon_webhook_*`), registered with the server's others.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Outcomes of a delivery attempt (or of an event offered to an endpoint), as the `outcome`
/// label of `beacon_webhook_deliveries_total`.
pub const WEBHOOK_OUTCOMES: [&str; 8] = [
    // A 2xx answer.
    "delivered",
    // Another answer (not 410): retried.
    "failed",
    // No answer within `--webhook-timeout-ms`: retried.
    "timeout",
    // No connection, a broken answer, an unresolvable host: retried.
    "error",
    // The target resolved to a refused address at delivery time: retried.
    "refused",
    // 410: the endpoint is disabled.
    "gone",
    // The endpoint's queue was full: the event is not delivered to it.
    "queue_full",
    // The last attempt of the schedule failed: the delivery is given up.
    "given_up",
];

/// Metrics of webhooks, registered with the server's others.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    deliveries: Family<Labels, Counter>,
    /// Attempts after the first (each retry counts once).
    pub retries: Counter,
    /// Deliveries waiting for an attempt (first or retry), over every endpoint.
    pub queued: Gauge,
    /// Endpoints disabled by a 410 answer.
    pub disabled: Gauge,
    /// Deliveries another instance claimed first (with Redis): not delivered from here.
    pub claims_lost: Counter,
    /// Retries put off past the schedule's own pause by the receiver's `Retry-After`.
    pub retry_after: Counter,
}

impl WebhookMetrics {
    /// Registers the webhook metrics in `registry` (`beacon_webhook_*`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = WebhookMetrics {
            deliveries: Family::default(),
            retries: Counter::default(),
            queued: Gauge::default(),
            disabled: Gauge::default(),
            claims_lost: Counter::default(),
            retry_after: Counter::default(),
        };
        for outcome in WEBHOOK_OUTCOMES {
            metrics.outcome(outcome);
        }
        let webhook = registry.sub_registry_with_prefix("webhook");
        webhook.register(
            "deliveries",
            "Webhook delivery attempts and dropped deliveries, by outcome",
            metrics.deliveries.clone(),
        );
        webhook.register(
            "retries",
            "Webhook delivery attempts after the first",
            metrics.retries.clone(),
        );
        webhook.register(
            "queue_depth",
            "Webhook deliveries waiting for an attempt, over every endpoint",
            metrics.queued.clone(),
        );
        webhook.register(
            "disabled_endpoints",
            "Webhook endpoints disabled by a 410 answer",
            metrics.disabled.clone(),
        );
        webhook.register(
            "claims_lost",
            "Webhook deliveries left to the instance that claimed them first",
            metrics.claims_lost.clone(),
        );
        webhook.register(
            "retry_after_delays",
            "Webhook retries put off past the schedule by the receiver's Retry-After",
            metrics.retry_after.clone(),
        );
        metrics
    }

    /// The counter of `outcome` (one of [`WEBHOOK_OUTCOMES`]).
    pub fn outcome(&self, outcome: &'static str) -> Counter {
        self.deliveries
            .get_or_create_owned(&vec![("outcome", outcome)])
    }
}
