//! The phone-app routes (Traccar Client / OsmAnd, OwnTracks).

use clap::Args;

use crate::model::GroupId;

/// Settings of the phone-app routes.
#[derive(Clone, Debug, Args)]
pub struct IngestConfig {
    /// Group of devices that report through the phone-app routes (`/v1/ingest/...`) without
    /// naming groups in `?groups=`, under `--auth none`. Default `default`. With tokens, the
    /// token's groups apply instead.
    #[arg(
        long = "ingest-default-group",
        value_name = "GROUP",
        env = "BEACON_INGEST_DEFAULT_GROUP",
        default_value = "default",
        value_parser = parse_group
    )]
    pub default_group: GroupId,

    /// Events (alarms, region changes) kept per group for `GET /v1/groups/{group}/events`,
    /// in memory and, with `--data-dir`, on disk; the oldest go first. Default 1000. Range
    /// 1-100000.
    #[arg(long, env = "BEACON_EVENTS_PER_GROUP", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub events_per_group: u32,
}

fn parse_group(text: &str) -> Result<GroupId, String> {
    GroupId::parse(text).map_err(|why| format!("group id {why}"))
}
